"""One loaded RetrievalIndex searched from several threads (a service): every search gets the results a
sequential search gets, and searching never changes the index (an ``hnsw`` index's ``efSearch``)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch

from dynametric.retrieval.embed import EmbeddingSet
from dynametric.retrieval.index import RetrievalIndex


def embedding_set(n: int = 300, d: int = 32, seed: int = 0) -> EmbeddingSet:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return EmbeddingSet(x, [str(i) for i in range(n)], [""] * n, None, [], None, [], {}, Path("x.npy"))


@pytest.mark.parametrize("kind", ["hnsw", "ivf", "flat"])
def test_threaded_searches_equal_sequential_and_leave_the_index_unchanged(kind: str, tmp_path: Path) -> None:
    RetrievalIndex.build(embedding_set(), kind=kind).save(tmp_path / "index")
    idx = RetrievalIndex.load(tmp_path / "index")
    q = np.random.default_rng(1).standard_normal((64, 32)).astype(np.float32)
    ks = [5, 250, 17, 99, 64, 180]
    ref = {k: idx.search(q, k) for k in ks}

    def same_as_sequential(i: int) -> bool:
        k = ks[i % len(ks)]
        res = idx.search(q, k)
        return bool(np.array_equal(res.ids, ref[k].ids) and np.array_equal(res.distances, ref[k].distances))

    with ThreadPoolExecutor(8) as pool:
        ok = list(pool.map(same_as_sequential, range(600)))
    assert ok.count(False) == 0
    if kind == "hnsw":
        assert idx.index.hnsw.efSearch == idx.params["ef_search"] == 64
    if kind == "ivf":
        assert idx.index.nprobe == idx.params["nprobe"]
    for k in ks:  # and the sequential results are still those of before
        np.testing.assert_array_equal(idx.search(q, k).ids, ref[k].ids)


def mutating_search(index, q, k):  # the sequential behaviour before: efSearch raised to k around the call
    k = max(1, min(int(k), int(index.ntotal)))
    old = index.hnsw.efSearch
    index.hnsw.efSearch = max(old, k)
    try:
        return index.search(q, k)
    finally:
        index.hnsw.efSearch = old


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_hnsw_results_equal_those_of_raising_ef_search_to_k(metric: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The results are those of searching with ``efSearch = max(ef_search, k)`` set on the index (what search did
    before, one thread at a time): a k above ef_search still gets k results."""
    import dynametric.retrieval.index as mod

    idx = RetrievalIndex.build(embedding_set(), kind="hnsw", metric=metric, ef_search=16)
    q = np.random.default_rng(2).standard_normal((40, 32)).astype(np.float32)
    ks = (1, 5, 16, 40, 250, 300)
    ex = np.arange(40)
    now = {k: (idx.search(q, k), idx.search(q, k, exclude=ex)) for k in ks}
    monkeypatch.setattr(mod, "faiss_search", mutating_search)
    for k in ks:
        for res, before in zip(now[k], (idx.search(q, k), idx.search(q, k, exclude=ex))):
            np.testing.assert_array_equal(res.ids, before.ids)
            np.testing.assert_array_equal(res.distances, before.distances)
        assert (now[k][0].ids >= 0).all()
    assert idx.index.hnsw.efSearch == 16


def test_a_loaded_embedder_embeds_alike_from_several_threads(run_ckpt: Path, image_root: Path) -> None:
    """What docs/retrieval.md says a service may do: one loaded embedder (eval mode, no grad) shared by threads."""
    from dynametric.retrieval.model import image_tensor, load_embedder

    loaded = load_embedder(run_ckpt)
    batch = torch.stack([image_tensor(loaded, p) for p in sorted(image_root.rglob("*.png"))[:6]])
    ref = loaded.embed(batch)

    def same(i: int) -> bool:
        return bool(torch.equal(loaded.embed(batch), ref))

    with ThreadPoolExecutor(8) as pool:
        assert all(pool.map(same, range(64)))
    assert not loaded.model.training


def test_hnsw_search_beyond_ef_search_works_after_faiss_torch_utils_is_imported(tmp_path) -> None:
    """pytorch-metric-learning's faiss kNN imports ``faiss.contrib.torch_utils``, which replaces every index's
    ``search`` by one without ``params`` (faiss's own is kept as ``search_numpy``): a process using both libraries
    still searches an hnsw index with k > efSearch, with the results of a process without it. In a subprocess: the
    replacement is process-wide."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import sys
        import numpy as np
        from dynametric.retrieval.embed import EmbeddingSet
        from dynametric.retrieval.index import RetrievalIndex
        rng = np.random.default_rng(0)
        x = rng.standard_normal((300, 16)).astype(np.float32)
        idx = RetrievalIndex.build(EmbeddingSet(x, [str(i) for i in range(300)], [""] * 300, None, [], None, [], {},
                                                "x.npy"), kind="hnsw")
        if sys.argv[1] == "torch_utils":
            import faiss.contrib.torch_utils  # noqa: F401
        res = idx.search(rng.standard_normal((8, 16)).astype(np.float32), 200)
        print(res.ids.tolist())
    """)
    outs = [subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True, check=True).stdout
            for mode in ("plain", "torch_utils")]
    assert outs[0] == outs[1] and outs[0].count(",") > 8 * 150


def test_ivf_reconstruct_builds_the_id_map_once_when_threads_call_it_first(tmp_path: Path) -> None:
    """The first ``reconstruct`` of an ``ivf`` index builds faiss's id map; threads that called it at once each built
    it (the map rebuilt under readers: the docs asked to call it once before sharing). Now one builds, under a lock,
    and every thread reads the stored vectors."""
    import threading
    import time

    RetrievalIndex.build(embedding_set(), kind="ivf").save(tmp_path / "index")
    idx = RetrievalIndex.load(tmp_path / "index")
    faiss_index, builds = idx.index, []

    class Watched:  # the faiss index, its map build made slow enough for the threads to meet in it
        def make_direct_map(self) -> None:
            builds.append(threading.get_ident())
            time.sleep(0.2)
            faiss_index.make_direct_map()

        def __getattr__(self, name: str):
            return getattr(faiss_index, name)

    idx.index = Watched()
    start = threading.Barrier(8)

    def first_call(i: int) -> np.ndarray:
        start.wait()
        return idx.reconstruct(i)

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(first_call, range(8)))
    assert len(builds) == 1
    reference = RetrievalIndex.load(tmp_path / "index")
    for i, v in enumerate(got):
        np.testing.assert_array_equal(v, reference.reconstruct(i))


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_reconstruct_refuses_a_position_outside_the_index(kind: str) -> None:
    """faiss read outside its arrays for a negative position (garbage for -1, a segmentation fault for -10**8) and
    raised a multi-line RuntimeError for one past the end; a float was truncated."""
    from dynametric.errors import InputError

    idx = RetrievalIndex.build(embedding_set(), kind=kind)
    cases = [(-1, "item -1 out of range [0, 300)"), (-10**8, "item -100000000 out of range"),
             (300, "item 300 out of range"), (2.7, "expected an item position (an integer), got 2.7"),
             (True, "expected an item position (an integer), got True (bool)")]
    for bad, why in cases:
        with pytest.raises(InputError, match=r"^key 'i': " + why.replace("[", r"\[").replace("(", r"\(")
                           .replace(")", r"\)")):
            idx.reconstruct(bad)
    np.testing.assert_array_equal(idx.reconstruct(np.int64(299)), idx.reconstruct(299))
