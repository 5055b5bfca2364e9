"""Findings of a QA pass on `dynametric search` and the explorer's HTTP server (`dynametric explore`): each test
fails on the code before its fix."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dynametric.cli import main
from dynametric.retrieval.embed import EmbeddingSet
from dynametric.retrieval.index import RetrievalIndex

pytest.importorskip("faiss")


def _set(n: int = 12, d: int = 6, paths: list[str] | None = None, roots: list[str] | None = None) -> EmbeddingSet:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, d)).astype(np.float32)
    fine = np.arange(n) % 4
    return EmbeddingSet(x, [f"i{j}" for j in range(n)], paths if paths is not None else [""] * n,
                        np.stack([fine, fine // 2], axis=1), ["fine", "coarse"], None, roots or [], {}, Path("mem"))


# ------------------------------------------------------------------------------------------- HIGH 1: -k capped
@pytest.mark.parametrize("mode", [{}, {"scale": "coarse"}, {"same": "fine"}])
def test_a_k_beyond_the_index_size_is_capped_at_it(mode: dict) -> None:
    """k = 10**6 for 12 items: arrays [Q, 12] (were [Q, 10**6]; 10**9 died of a MemoryError), the same results as
    k = 12, in every mode and with an excluded item."""
    s = _set()
    idx = RetrievalIndex.build(s, "flat", "cosine")
    q = s.embeddings[:3] + 0.01
    for k in (10**6, 10**12):
        res = idx.search(q, k, **mode)
        ref = idx.search(q, 12, **mode)
        assert res.ids.shape == res.distances.shape == (3, 12)
        np.testing.assert_array_equal(res.ids, ref.ids)
        assert res.short_queries == ref.short_queries == 0
    res = idx.search(q, 10**6, exclude=np.array([0, 1, 2]))
    assert res.ids.shape == (3, 12) and (res.ids[:, :11] >= 0).all() and (res.ids[:, 11] == -1).all()


def test_search_cli_with_a_huge_k_prints_every_item_once(tmp_path: Path, capsys) -> None:
    """-k 10**7 for 12 items and 2 queries: every item once, and no array of 10**7 columns (numpy's allocations,
    traced: were about 480 MB; -k 10**9 died of a MemoryError)."""
    import tracemalloc

    s = _set()
    RetrievalIndex.build(s, "flat", "cosine").save(tmp_path / "idx")
    np.save(tmp_path / "q.npy", s.embeddings[:2])
    capsys.readouterr()
    tracemalloc.start()
    try:
        assert main(["search", "--index", str(tmp_path / "idx"), "--embeddings", str(tmp_path / "q.npy"),
                     "-k", "10000000", "--json"]) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000, peak
    out = json.loads(capsys.readouterr().out)
    assert out["k"] == 10000000  # as asked; the results are every item, nearest first
    for q in out["queries"]:
        assert sorted(h["index"] for h in q["results"]) == list(range(12))
        assert [h["rank"] for h in q["results"]] == list(range(1, 13))
