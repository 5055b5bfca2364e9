"""The index's input transform (``InputTransform``): results and reported distances against an independent float64
brute force where float32 faiss alone failed (vectors far from the origin under cosine, near-duplicates, row
magnitudes of 1e19 / 1e30 / 1e-30 under l2 and ip, an ivf build at 1e19), ties ordered by item position whatever
``k``, indexes of the previous format searched as before."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("faiss")

from dynametric.errors import InputError  # noqa: E402
from dynametric.retrieval.embed import EmbeddingSet  # noqa: E402
from dynametric.retrieval.faiss_ops import to_distance  # noqa: E402
from dynametric.retrieval.index import RetrievalIndex  # noqa: E402

SRC = Path(__file__).resolve().parents[2] / "src"


def emb(x: np.ndarray, labels: np.ndarray | None = None) -> EmbeddingSet:
    n = len(x)
    names = ["fine", "coarse"][: labels.shape[1]] if labels is not None else []
    return EmbeddingSet(x, [f"i{i}" for i in range(n)], [""] * n, labels, names, None, [], {}, Path("mem"))


def exact(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """float64 reference distances [Q, N]; ``1 - cos`` as ``||u - v||^2 / 2`` (no cancellation near 1), each row
    first divided by its largest absolute value (1e30 rows have no float64 squared norm trouble then either)."""
    x = np.asarray(x, np.float64)
    q = np.asarray(q, np.float64)
    if metric == "cosine":
        def unit(a: np.ndarray) -> np.ndarray:
            a = a / np.abs(a).max(axis=1, keepdims=True)
            return a / np.linalg.norm(a, axis=1, keepdims=True)

        return 0.5 * ((unit(q)[:, None, :] - unit(x)[None, :, :]) ** 2).sum(-1)
    if metric == "l2":
        return np.sqrt(((q[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    return -(q @ x.T)


def ranked(d: np.ndarray, k: int) -> np.ndarray:
    """Reference ids [Q, k]: ascending distance, equal distances by ascending position (evaluate's rule)."""
    pos = np.broadcast_to(np.arange(d.shape[1]), d.shape)
    return np.lexsort((pos, d), axis=-1)[:, :k]


@pytest.mark.parametrize("offset", [100.0, 1e3, 1e4])
def test_cosine_far_from_the_origin_ranks_as_float64(offset: float) -> None:
    """QA: g = 3000 + randn under cosine gave recall@1 0.05 (1e4: 0.0) and every distance 0.0 (float32 cosines next
    to 1 all equal); the unit rows lie in a narrow cone and are now searched centred and scaled in an L2 index."""
    rng = np.random.default_rng(0)
    g = (offset + rng.standard_normal((400, 16))).astype(np.float32)
    q = (g[:60] + 0.3 * rng.standard_normal((60, 16))).astype(np.float32)
    idx = RetrievalIndex.build(emb(g), "flat", "cosine")
    assert idx.transform is not None  # 100: a cone of spread 0.04, searched as ordinary cosine data
    assert idx.transform.kind == ("cosine" if offset == 100 else "cosine-l2")
    res = idx.search(q, 10)
    d = exact(g, q, "cosine")
    np.testing.assert_array_equal(res.ids, ranked(d, 10))  # no ties: the exact order, not just the top 1
    # stored float32 rows: 1 - cos of ordinary cosine data within ~1e-10 (unit rows rounded to float32)
    np.testing.assert_allclose(res.distances, np.take_along_axis(d, res.ids, 1), rtol=1e-5, atol=1e-9)
    assert (res.distances > 0).all()


def test_near_duplicates_keep_their_order_and_distances() -> None:
    """QA: near-duplicates with 1 - cos below 1e-6 came back shuffled and 1 - cos near 1e-7 was reported 38 % off
    (1 - <q, x> of float32 unit rows); candidates are now ranked by float64 distances of the stored rows."""
    rng = np.random.default_rng(11)
    dim = 64
    base = rng.standard_normal((1, dim))
    base /= np.linalg.norm(base)
    dirs = rng.standard_normal((40, dim))
    dirs -= (dirs @ base.T) * base
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    for eps in (1e-3, 3e-4):
        x = np.vstack([base + eps * dirs * rng.uniform(0.5, 1.5, (40, 1)), rng.standard_normal((100, dim))])
        for metric in ("cosine", "l2"):
            idx = RetrievalIndex.build(emb(x), "flat", metric)
            res = idx.search(base, 40)
            d = exact(x, base, metric)
            np.testing.assert_array_equal(res.ids, ranked(d, 40))
            want = np.take_along_axis(d, res.ids, 1)
            np.testing.assert_allclose(res.distances, want, rtol=2e-3 if metric == "cosine" else 1e-4)


@pytest.mark.parametrize("metric", ["l2", "ip"])
@pytest.mark.parametrize("scale", [1e-30, 1e19, 1e30])
def test_extreme_magnitudes_give_every_result_with_finite_distances(metric: str, scale: float) -> None:
    """QA: at 1e19 an l2 flat index dropped results (ids -1) and ip gave -inf (1e30: NaN); at 1e-30 every distance
    was 0 and the results came in index order."""
    rng = np.random.default_rng(9)
    x = (scale * rng.standard_normal((300, 16))).astype(np.float32)
    q = (x[:20] + 0.3 * scale * rng.standard_normal((20, 16))).astype(np.float32)
    res = RetrievalIndex.build(emb(x), "flat", metric).search(q, 5)
    d = exact(x, q, metric)
    np.testing.assert_array_equal(res.ids, ranked(d, 5))
    assert np.isfinite(res.distances).all()
    np.testing.assert_allclose(res.distances, np.take_along_axis(d, res.ids, 1), rtol=1e-5)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
@pytest.mark.parametrize("metric", ["l2", "ip"])
def test_tiny_magnitudes_on_ivf_and_hnsw(kind: str, metric: str) -> None:
    rng = np.random.default_rng(3)
    x = (1e-30 * rng.standard_normal((500, 16))).astype(np.float32)
    idx = RetrievalIndex.build(emb(x), kind, metric, **({"nlist": 4, "nprobe": 4} if kind == "ivf" else {}))
    res = idx.search(x[:20], 5)
    d = exact(x, x[:20], metric)
    got = np.take_along_axis(d, res.ids, 1)
    np.testing.assert_allclose(res.distances, got, rtol=1e-5)
    assert len(np.unique(res.distances)) > 20  # not all 0
    if metric == "l2":
        assert (res.ids[:, 0] == np.arange(20)).all()


def test_one_item_at_1e19_is_found_among_ordinary_ones() -> None:
    """QA: an item at 1e19 in an l2 index was invisible to every query (its float32 squared distance overflowed)."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((100, 16)).astype(np.float32)
    x[7] *= np.float32(1e19)
    idx = RetrievalIndex.build(emb(x), "flat", "l2")
    res = idx.search(x[:5], 100)
    assert (res.ids >= 0).all() and (res.ids[:, -1] == 7).all() and res.short_queries == 0
    assert idx.search(x[7], 1).ids[0, 0] == 7


def test_ivf_build_at_1e19_does_not_abort(tmp_path: Path) -> None:
    """QA: ``index build --kind ivf --metric l2`` at 1e19 died of faiss's C++ exception (SIGABRT, rc 134); the
    ivf is now trained on the transformed rows. In a child process, so a regression cannot kill the test run."""
    code = (
        "import numpy as np\n"
        "from pathlib import Path\n"
        "from dynametric.retrieval.embed import EmbeddingSet\n"
        "from dynametric.retrieval.index import RetrievalIndex\n"
        "x = (1e19 * np.random.default_rng(0).standard_normal((500, 16))).astype(np.float32)\n"
        "e = EmbeddingSet(x, [str(i) for i in range(500)], [''] * 500, None, [], None, [], {}, Path('m'))\n"
        "idx = RetrievalIndex.build(e, 'ivf', 'l2', nlist=8, nprobe=8)\n"
        "r = idx.search(x[:10], 3)\n"
        "assert (r.ids[:, 0] == np.arange(10)).all() and np.isfinite(r.distances).all()\n"
        "print('ok')\n")
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_float64_embeddings_far_from_the_origin_rank_as_float64() -> None:
    """QA (repro_f64): 1e6 + 1e-3 randn in float64 differs only beyond float32's precision; the transform is
    computed in float64 before the rows are rounded, so search ranks as a float64 brute force."""
    rng = np.random.default_rng(0)
    g = 1e6 + 1e-3 * rng.standard_normal((500, 32))
    q = g[:100] + 0.3e-3 * rng.standard_normal((100, 32))
    for metric in ("l2", "cosine"):
        res = RetrievalIndex.build(emb(g), "flat", metric).search(q, 1)
        d = exact(g, q, "l2")  # the cosine ranking of this narrow cone is its l2 ranking to ~1e-12
        truth = d.argmin(axis=1)
        assert (res.ids[:, 0] == truth).mean() >= 0.99, metric
    res = RetrievalIndex.build(emb(g), "flat", "l2").search(q[:5], 3)
    np.testing.assert_allclose(res.distances, np.take_along_axis(exact(g, q[:5], "l2"), res.ids, 1), rtol=1e-4)


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_exact_duplicates_come_by_position_whatever_k(metric: str) -> None:
    """QA: duplicates came as [50, 17, 5, 0] under cosine / ip and [0, 5, 17, 50] under l2, and which of them
    made the k-th place depended on k; evaluate's rule is ties by gallery index."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((400, 8)).astype(np.float32)
    group = [0, 5, 17, 50, 120, 121, 200, 333, 390]
    x[group] = x[0] * np.float32(4.0)  # far out: the group comes first for ip too
    idx = RetrievalIndex.build(emb(x), "flat", metric)
    want = ranked(exact(x, x[:1], metric), 12)[0]
    assert want[:9].tolist() == group
    for nq in (1, 25):
        for k in range(1, 13):
            res = idx.search(np.repeat(x[:1], nq, 0), k)
            assert (res.ids == want[:k]).all(), (nq, k)
    # a tie group (134 items) larger than the first candidate list (32): grown until the k-th place is decided by
    # position, not by where faiss cut its list
    x[::3] = x[1]
    idx = RetrievalIndex.build(emb(x), "flat", metric)
    res = idx.search(x[1], 60)
    want = ranked(exact(x, x[1:2], metric), 60)[0]
    np.testing.assert_array_equal(res.ids[0], want)
    if metric != "ip":
        assert want.tolist() == [0, 1] + list(range(3, 175, 3))


def test_ties_decide_the_class_representative_and_the_predicted_class() -> None:
    """--scale: a class is represented by its nearest item, equal distances by position; --same without query
    labels takes the class of the nearest item, equal distances by position, whatever k."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((300, 8)).astype(np.float32)
    x[[3, 40, 41, 250]] = x[3]
    fine = rng.integers(0, 30, 300)
    coarse = np.zeros(300, np.int64)
    coarse[[3, 250]] = 1
    coarse[[40, 41]] = 2
    labels = np.stack([fine, coarse], 1)
    for metric in ("cosine", "l2"):
        idx = RetrievalIndex.build(emb(x, labels), "flat", metric)
        for k in (1, 2, 5, 40):
            res = idx.search(x[3], k, scale="coarse")
            assert res.ids[0, 0] == 3  # class 1 by item 3, not 250
            if k >= 2:
                assert res.ids[0, 1] == 40  # class 2 by item 40, not 41
            same = idx.search(x[3], k, same="coarse")
            assert same.query_groups is not None and same.query_groups[0] == 1
            same = idx.search(x[3], k, same="coarse", exclude=np.array([3]))
            # the query is item 3: its class is item 3's (not that of the nearest other item, 40 of class 2)
            assert same.query_groups is not None and same.query_groups[0] == 1 and same.ids[0, 0] == 250


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_order_the_ties_they_return_by_position(kind: str) -> None:
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2000, 16)).astype(np.float32)
    x[:1000:7] = x[0]
    idx = RetrievalIndex.build(emb(x), kind, "l2", **({"nlist": 8, "nprobe": 8} if kind == "ivf" else {}))
    res = idx.search(x[0], 20)
    assert res.ids[0].tolist() == list(range(0, 140, 7))  # every cell visited / the beam finds the duplicates


def _old_format_index(tmp_path: Path, x: np.ndarray, metric: str) -> tuple[Path, np.ndarray]:
    """An index folder as the previous version wrote it: float32 rows (unit rows for cosine) in a flat faiss index,
    ``index.json`` of version 1 without ``transform``; returns it and the rows faiss holds."""
    import faiss

    from dynametric.retrieval.index_transform import _prepare

    rows = _prepare(x, metric)
    fi = faiss.IndexFlatL2(x.shape[1]) if metric == "l2" else faiss.IndexFlatIP(x.shape[1])
    fi.add(rows)
    n = len(x)
    old = RetrievalIndex(fi, "flat", metric, x.shape[1], [f"i{i}" for i in range(n)], [""] * n, None, [])
    out = old.save(tmp_path / f"old_{metric}")
    meta = json.loads((out / "index.json").read_text())
    assert "transform" not in meta
    meta["version"] = 1
    (out / "index.json").write_text(json.dumps(meta))
    return out, rows


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_an_index_of_the_previous_format_searches_as_before(tmp_path: Path, metric: str) -> None:
    import faiss

    from dynametric.retrieval.index_transform import _prepare

    rng = np.random.default_rng(2)
    x = rng.standard_normal((200, 8)).astype(np.float32)
    x[[4, 9]] = x[1]
    out, rows = _old_format_index(tmp_path, x, metric)
    idx = RetrievalIndex.load(out)
    assert idx.transform is None
    q = np.vstack([rng.standard_normal((10, 8)).astype(np.float32), x[1:2]])
    res = idx.search(q, 7)
    ref = faiss.IndexFlatL2(8) if metric == "l2" else faiss.IndexFlatIP(8)
    ref.add(rows)
    scores, ids = ref.search(_prepare(q, metric), 7)
    np.testing.assert_array_equal(res.ids, ids)  # faiss's own order, ties included
    np.testing.assert_array_equal(res.distances, to_distance(scores, metric))
    np.testing.assert_array_equal(idx.reconstruct(3), rows[3])


def test_an_old_index_with_distances_beyond_float_range_is_refused_not_printed(tmp_path: Path) -> None:
    """The previous format's ip index at 1e19 gives -inf scores: one line (JSON has no -Infinity), never a result."""
    x = (1e19 * np.random.default_rng(1).standard_normal((50, 8))).astype(np.float32)
    out, _ = _old_format_index(tmp_path, x, "ip")
    with pytest.raises(InputError, match="beyond float range.*build it again"):
        RetrievalIndex.load(out).search(x[:3], 5)


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_the_transform_is_saved_and_loaded(tmp_path: Path, metric: str) -> None:
    rng = np.random.default_rng(5)
    x = (3000 + rng.standard_normal((300, 8))).astype(np.float32)
    idx = RetrievalIndex.build(emb(x), "flat", metric)
    idx.save(tmp_path / "ix")
    meta = json.loads((tmp_path / "ix" / "index.json").read_text())
    assert meta["version"] == 2 and meta["transform"]["kind"] == {"cosine": "cosine-l2"}.get(metric, metric)
    back = RetrievalIndex.load(tmp_path / "ix")
    q = x[:20] + 0.5
    a, b = idx.search(q, 5), back.search(q, 5)
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.distances, b.distances)
    i = 17  # the explorer searches an item's reconstructed vector: it finds the item itself, at 0
    hit = back.search(back.reconstruct(i), 1)
    assert metric == "ip" or (hit.ids[0, 0] == i and hit.distances[0, 0] < 1e-20)
    np.testing.assert_allclose(back.reconstruct(i), x[i] / (np.linalg.norm(x[i]) if metric == "cosine" else 1.0),
                               rtol=1e-6)
    json.dumps(back.describe(a, ["q"] * 20), allow_nan=False)
    meta["transform"]["factor"] = 3.0
    (tmp_path / "ix" / "index.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="key 'transform'.*factor must be a finite power of two"):
        RetrievalIndex.load(tmp_path / "ix")


def test_an_l2_query_beyond_the_transform_s_reach_is_one_line() -> None:
    x = (1e-30 * np.random.default_rng(0).standard_normal((50, 4))).astype(np.float32)
    idx = RetrievalIndex.build(emb(x), "flat", "l2")
    with pytest.raises(InputError, match="1 row\\(s\\), first at row 1 .*farther from the indexed items"):
        idx.search(np.array([[0, 0, 0, 0], [1e5, 0, 0, 0]], np.float32), 3)


@pytest.mark.parametrize("metric", ["cosine", "l2", "ip"])
def test_ordinary_data_matches_the_float64_brute_force(metric: str) -> None:
    rng = np.random.default_rng(12)
    x = rng.standard_normal((1500, 24)).astype(np.float32)
    q = rng.standard_normal((70, 24)).astype(np.float32)
    idx = RetrievalIndex.build(emb(x), "flat", metric)
    assert idx.transform is not None and idx.transform.kind == metric  # cosine: unit rows in an IP index
    res = idx.search(q, 10)
    d = exact(x, q, metric)
    np.testing.assert_array_equal(res.ids, ranked(d, 10))
    np.testing.assert_allclose(res.distances, np.take_along_axis(d, res.ids, 1), rtol=1e-6, atol=1e-7)


def test_the_preparation_is_the_evaluation_engine_s() -> None:
    """The l2 / cone transform reimplements the engine's preparation in numpy: the same rows, the same threshold."""
    import torch

    from dynametric.metrics import engine
    from dynametric.retrieval import index_transform as mod

    assert mod.NARROW_CONE_SPREAD == engine.NARROW_CONE_SPREAD
    rng = np.random.default_rng(7)
    x = 50 + 0.01 * rng.standard_normal((200, 8))
    tr = mod.InputTransform.plan(x, "l2")
    (want,) = engine._centred_scaled([torch.from_numpy(x)], torch.from_numpy(x))
    np.testing.assert_array_equal(tr.apply(x), want.numpy())
    tr = mod.InputTransform.plan(x, "cosine")
    assert tr.kind == "cosine-l2"
    q, g, scoring = engine.prepare_for_ranking("cosine", torch.from_numpy(x[:5]), torch.from_numpy(x))
    assert scoring == "euclidean"
    np.testing.assert_array_equal(tr.apply(x), g.numpy())


def test_damaged_or_missing_transforms_are_said_as_such(tmp_path: Path) -> None:
    """Review: an index.json of format 2 without 'transform' loaded as one of the previous format and searched the
    stored (centred, scaled) rows with raw queries (item01's query found item04); a damaged 'kind' was reported as
    a swapped faiss file ('holds a flat index (l2), but index.json says flat (l2)')."""
    x = np.random.default_rng(3).standard_normal((40, 6)).astype(np.float32) + 5
    RetrievalIndex.build(emb(x), "flat", "l2").save(tmp_path / "ix")
    path = tmp_path / "ix" / "index.json"
    meta = json.loads(path.read_text())
    for change, message in ((lambda m: m.pop("transform"), "has no 'transform' although its format version is 2"),
                            (lambda m: m["transform"].update(kind="cosine"), "kind 'cosine' is not one of"),
                            (lambda m: m["transform"].pop("kind"), "kind None is not one of")):
        damaged = json.loads(json.dumps(meta))
        change(damaged)
        path.write_text(json.dumps(damaged))
        with pytest.raises(InputError, match=f"key 'transform'.*{message}.*rebuild the index"):
            RetrievalIndex.load(tmp_path / "ix")


def test_an_l2_index_of_float64_rows_below_1e_154_searches() -> None:
    """Review: the query divisor computed factor ** 2 for every kind (an OverflowError traceback once the l2
    factor passed 2^512)."""
    x = np.random.default_rng(4).standard_normal((60, 8)) * 1e-200
    idx = RetrievalIndex.build(emb(x), "flat", "l2")
    res = idx.search(x[:5], 3)
    d = exact(x * 1e200, x[:5] * 1e200, "l2") * 1e-200  # (the squares of 1e-200 underflow in float64 itself)
    np.testing.assert_array_equal(res.ids, ranked(d, 3))
    np.testing.assert_allclose(res.distances, np.sort(d, axis=1)[:, :3], rtol=1e-6, atol=1e-215)


def test_a_collapsed_gallery_costs_a_bounded_number_of_float64_distances(monkeypatch) -> None:
    """Review: thousands of items on a few points (a collapsed model) grew the candidate list to the whole index,
    each growth recomputing every candidate's float64 distance (24.8 s against 0.31 s at 300k items); the growth
    for ties stops at max(16 x the first list, TIE_CANDIDATES) candidates, and a plain search starts at about k."""
    from dynametric.retrieval import index as index_module

    rng = np.random.default_rng(5)
    centres = rng.standard_normal((4, 16)).astype(np.float32)
    x = centres[rng.integers(0, 4, 20000)]
    idx = RetrievalIndex.build(emb(x), "flat", "l2")
    widths: list[int] = []
    real = index_module.RetrievalIndex._exact_keys

    def spy(self, qs, nn):
        widths.append(nn.shape[1])
        return real(self, qs, nn)

    monkeypatch.setattr(index_module.RetrievalIndex, "_exact_keys", spy)
    res = idx.search(x[:3], 10)
    assert max(widths) <= max(16 * 32, index_module.TIE_CANDIDATES) < len(x), widths
    assert (res.distances == 0).all()  # every result is a duplicate of its query: within the tie group
    widths.clear()  # an ordinary gallery: a plain search starts at k + max(16, k / 8) candidates and is settled
    plain = RetrievalIndex.build(emb(rng.standard_normal((5000, 16)).astype(np.float32)), "flat", "l2")
    plain.search(rng.standard_normal((3, 16)).astype(np.float32), 200)
    assert widths == [200 + 25], widths


def test_a_narrow_cone_index_reports_at_most_2_for_an_opposite_query() -> None:
    """Review: 1 - cos of 2.00000013 (the scaled query rounded to float32) for a query opposite the cone."""
    rng = np.random.default_rng(6)
    x = (1e4 + 1e-2 * rng.standard_normal((3000, 32))).astype(np.float32)
    idx = RetrievalIndex.build(emb(x), "flat", "cosine")
    assert idx.transform is not None and idx.transform.kind == "cosine-l2"
    res = idx.search(np.full((1, 32), -1e4, np.float32), 3)
    assert (res.distances <= 2.0).all() and (res.distances > 1.999).all(), res.distances
