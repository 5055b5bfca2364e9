"""An index of no items: RetrievalIndex.build refuses it as the command line does; one an older build wrote (it
loads) answers every search with [Q, 0] results, as docs/retrieval.md's [Q, min(k, size)] says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dynametric.errors import InputError
from dynametric.retrieval.embed import EmbeddingSet
from dynametric.retrieval.index import RetrievalIndex, require_faiss


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
@pytest.mark.parametrize("shape", [(0, 128), (5, 0)])
def test_build_refuses_no_embeddings_as_the_command_line_does(kind: str, shape: tuple[int, int]) -> None:
    emb = EmbeddingSet(np.zeros(shape, np.float32), [str(i) for i in range(shape[0])], [""] * shape[0], None, [],
                       None, [], {}, "empty.npy")
    with pytest.raises(InputError) as err:
        RetrievalIndex.build(emb, kind=kind)
    assert str(err.value) == f"empty.npy: no embeddings (shape {shape})"


@pytest.mark.parametrize("labels", [False, True])
def test_a_loaded_index_of_no_items_gives_q_by_0_results(tmp_path: Path, labels: bool) -> None:
    faiss = require_faiss()
    lab = np.zeros((0, 2), np.int64) if labels else None
    names = ["fine", "coarse"] if labels else []
    RetrievalIndex(faiss.IndexFlatIP(8), "flat", "cosine", 8, [], [], lab, names).save(tmp_path / "idx")
    idx = RetrievalIndex.load(tmp_path / "idx")
    assert idx.size == 0
    q = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    for k in (1, 10):
        res = idx.search(q, k)
        assert res.ids.shape == res.distances.shape == (3, 0) and res.short_queries == 0
        assert res.ids.dtype == np.int64
        res = idx.search(q, k, exclude=np.full(3, -1))
        assert res.ids.shape == (3, 0)
    if labels:
        assert idx.search(q, 5, scale="coarse").ids.shape == (3, 0)
        res = idx.search(q, 5, same="fine", query_labels=np.array([[1, 0], [2, 0], [3, 1]]))
        assert res.ids.shape == (3, 0) and res.query_groups.tolist() == [1, 2, 3]
        assert idx.search(q, 5, same="fine").query_groups.tolist() == [-1, -1, -1]
    with pytest.raises(InputError):  # the queries and arguments are still checked
        idx.search(q[:, :4], 5)
    with pytest.raises(InputError):
        idx.search(q, 5, exclude=np.zeros(3, np.int64))  # no item 0 to exclude
