"""Embeddings far from the origin, of extreme magnitude or of wide dynamic range: every metric family against a small
float64 brute force written here (direct differences, no cancellation), and the k-means guards.

The cases came from a numerical QA review: float64 input was rounded to float32 before its float64 centring, k-means
ran on the raw float32 rows (``nmi`` 0.02 at an offset of 1e4, 0.0 at a magnitude of 1e-30, and an uncaught faiss
exception that aborted the process at 1e19), and rows far below the largest one were ranked wrongly without a word.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from dynametric.errors import InputError
from dynametric.metrics import evaluate_embeddings, kmeans_assign
from dynametric.metrics.kmeans import lloyd_kmeans

ENGINES = [dict(ranking_engine="cpu"), dict(ranking_engine="torch", device="cpu")]


# --- the float64 brute force ------------------------------------------------------------------------------------

def _sq_dist64(q: np.ndarray, g: np.ndarray, distance: str) -> np.ndarray:
    """``[Nq, Ng]`` squared distances in float64 by direct differences; cosine: of the unit rows (each row divided
    by its largest coordinate first), which rank as the cosines do."""
    q, g = np.asarray(q, dtype=np.float64), np.asarray(g, dtype=np.float64)
    if distance == "cosine":
        q, g = (y / np.abs(y).max(1, keepdims=True) for y in (q, g))
        q, g = (y / np.linalg.norm(y, axis=1, keepdims=True) for y in (q, g))
    return np.stack([((row - g) ** 2).sum(1) for row in q])


def _bf_ranking(x: np.ndarray, labels: np.ndarray, distance: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Leave-one-out per-query ``recall@1`` and ``map@r`` (ties by ascending index) and whether the query's two
    nearest candidates are within 1e-6 (relative) of each other (a near-tie float32 may order either way)."""
    d = _sq_dist64(x, x, distance)
    n = len(x)
    recall, map_r, near_tie = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n, dtype=bool)
    for i in range(n):
        cand = np.delete(np.arange(n), i)
        order = cand[np.lexsort((cand, d[i, cand]))]
        rel = labels[order] == labels[i]
        r = int(rel.sum())
        top = d[i, order[:2]]
        near_tie[i] = top[1] - top[0] <= 1e-6 * top[1]
        if r == 0:
            continue
        recall[i] = float(rel[0])
        hits = np.cumsum(rel[:r])
        map_r[i] = float((rel[:r] * hits / np.arange(1, r + 1)).sum() / r)
    return recall, map_r, near_tie


def _bf_fnmr(x: np.ndarray, labels: np.ndarray, distance: str, p: float) -> float:
    """Pooled leave-one-out FNMR at the ``p``-th percentile of the negative pairs' distances."""
    d = np.sqrt(_sq_dist64(x, x, distance))
    off = ~np.eye(len(x), dtype=bool)
    same = labels[:, None] == labels[None, :]
    threshold = np.percentile(d[off & ~same], p)
    return float((d[off & same] >= threshold).mean())


def _clusters(rng: np.random.Generator, n_per: int = 40, k: int = 5, dim: int = 8, spread: float = 0.01):
    """``k`` well separated classes (centres ~ 10 N(0, 1), within-class noise ``spread``) and their labels."""
    labels = np.repeat(np.arange(k), n_per)
    x = (10 * rng.standard_normal((k, dim)))[labels] + spread * rng.standard_normal((k * n_per, dim))
    return x, labels


def _nearest_centre_partition(x: np.ndarray, labels: np.ndarray, distance: str) -> np.ndarray:
    """The float64 partition k-means must find on well separated classes: each row's nearest class mean."""
    xs = np.asarray(x, dtype=np.float64)
    if distance == "cosine":
        xs = xs / np.abs(xs).max(1, keepdims=True)
        xs = xs / np.linalg.norm(xs, axis=1, keepdims=True)
    centres = np.stack([xs[labels == c].mean(0) for c in np.unique(labels)])
    return _sq_dist64(xs, centres, "euclidean").argmin(1)


# --- finding 3: float64 (and int64) embeddings keep their precision until prepared -------------------------------

@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("engine", ENGINES, ids=["cpu", "torch"])
def test_float64_embeddings_far_from_the_origin_rank_as_a_float64_brute_force(distance, engine):
    # distinct only in float64: rounded to float32 first, every row became one of a few points (recall@1 0.008)
    rng = np.random.default_rng(0)
    n = 300
    labels = rng.integers(0, 30, n)
    x = 1e6 + 1e-3 * (rng.standard_normal((30, 16))[labels] + 0.7 * rng.standard_normal((n, 16)))
    recall, map_r, near_tie = _bf_ranking(x, labels, distance)
    assert not near_tie.any()
    assert np.nanmean(recall) > 0.85  # meaningful data (cosine drops the offset direction: 0.89)
    for data in (x, torch.from_numpy(x)):
        out, per_query = evaluate_embeddings(data, labels, distance=distance, metrics=["recall@1", "map@r"],
                                             k_values=(1,), per_query=True, **engine)
        np.testing.assert_array_equal(per_query["fine"]["recall@1"], recall)
        np.testing.assert_allclose(per_query["fine"]["map@r"], map_r, rtol=0, atol=1e-12)
        assert out["fine"]["recall@1"] == pytest.approx(np.nanmean(recall), abs=1e-12)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("engine", ENGINES, ids=["cpu", "torch"])
def test_fnmr_of_float64_embeddings_far_from_the_origin_matches_a_float64_brute_force(distance, engine):
    rng = np.random.default_rng(1)
    n = 200
    labels = rng.integers(0, 20, n)
    x = 1e6 + 1e-3 * (rng.standard_normal((20, 8))[labels] + 0.5 * rng.standard_normal((n, 8)))
    out = evaluate_embeddings(x, labels, distance=distance, metrics=["fnmr@fmr=1", "fnmr@fmr=10"], **engine)
    num_pos = int((labels[:, None] == labels[None, :]).sum() - n)
    for p in (1, 10):
        # a positive within float32 rounding of the threshold may count either way: one pair at most here
        assert abs(out["fine"][f"fnmr@fmr={p}"] - _bf_fnmr(x, labels, distance, p)) <= 1.5 / num_pos


@pytest.mark.parametrize("engine", ENGINES, ids=["cpu", "torch"])
def test_int64_embeddings_far_from_the_origin_rank_exactly(engine):
    # 2**30 + small integers: float32 rounds them to multiples of 64 or 128; float64 holds them exactly, and their
    # centred float32 scores are exact integers (exact ties, ordered by index as the brute force orders them)
    rng = np.random.default_rng(2)
    n = 200
    labels = rng.integers(0, 20, n)
    x = 2**30 + 16 * rng.integers(-10, 11, (20, 6))[labels] + rng.integers(-20, 21, (n, 6))
    recall, map_r, _ = _bf_ranking(x, labels, "euclidean")
    _, per_query = evaluate_embeddings(x.astype(np.int64), labels, distance="euclidean",
                                       metrics=["recall@1", "map@r"], k_values=(1,), per_query=True, **engine)
    np.testing.assert_array_equal(per_query["fine"]["recall@1"], recall)
    np.testing.assert_allclose(per_query["fine"]["map@r"], map_r, rtol=0, atol=1e-12)


def test_float64_clustering_far_from_the_origin():
    rng = np.random.default_rng(3)
    x, labels = _clusters(rng, spread=0.1)
    x = 1e7 + 1e-4 * x  # separated only in float64 (float32's spacing at 1e7 is 1)
    truth = _nearest_centre_partition(x, labels, "euclidean")
    np.testing.assert_array_equal(truth, labels)
    for distance in ("euclidean", "cosine"):
        out = evaluate_embeddings(x, labels, distance=distance, metrics=["nmi", "f1"], kmeans_backend="torch",
                                  kmeans_restarts=3)
        assert out["fine"]["nmi"] == pytest.approx(1.0, abs=1e-12) and out["fine"]["f1"] == 1.0, distance


# --- findings 1 and 2: k-means at any magnitude and offset --------------------------------------------------------

@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
@pytest.mark.parametrize("case", ["x*1e19", "x*1e-30", "1e4+x/10", "1e3+x/100"])
def test_kmeans_finds_well_separated_classes_at_any_magnitude_and_offset(distance, case):
    # was (torch backend): 1e19 euclidean a raw RuntimeError from torch.multinomial, 1e-30 euclidean nmi 0.0,
    # 1e4 + x/10 nmi 0.02-0.03 (both distances), while recall@1 was 1.0
    rng = np.random.default_rng(0)
    x, labels = _clusters(rng)
    data = {"x*1e19": x * 1e19, "x*1e-30": x * 1e-30, "1e4+x/10": 1e4 + x / 10, "1e3+x/100": 1e3 + x / 100}[case]
    data = data.astype(np.float32)
    np.testing.assert_array_equal(_nearest_centre_partition(data, labels, distance), labels)
    out = evaluate_embeddings(data, labels, distance=distance, metrics=["nmi", "f1", "recall@1"],
                              kmeans_backend="torch", kmeans_restarts=3)
    assert out["fine"]["recall@1"] == 1.0
    assert out["fine"]["nmi"] == pytest.approx(1.0, abs=1e-12) and out["fine"]["f1"] == 1.0


def test_kmeans_results_do_not_change_under_power_of_two_scaling():
    # a power of two scales float32 rows exactly, so the prepared points are the same bits: the same clusters on
    # classes k-means cannot separate perfectly (nmi < 1), whatever the magnitude (2**-100: products underflowed)
    rng = np.random.default_rng(4)
    x, labels = _clusters(rng, n_per=30, k=6, dim=4, spread=4.0)
    x = x.astype(np.float32)
    base = evaluate_embeddings(x, labels, distance="euclidean", metrics=["nmi", "f1"], kmeans_backend="torch")
    assert 0.3 < base["fine"]["nmi"] < 0.99
    for e in (-100, -60, 40, 64):
        scaled = evaluate_embeddings(x * np.float32(2.0**e), labels, distance="euclidean", metrics=["nmi", "f1"],
                                     kmeans_backend="torch")
        assert scaled["fine"] == base["fine"], e


def test_faiss_kmeans_at_magnitude_1e19_does_not_abort_the_process():
    # faiss met float32 squared distances that overflowed, threw a C++ exception inside its OpenMP loop and
    # aborted Python (SIGABRT, rc 134); run in a child so that a regression fails this test, not the test run
    script = textwrap.dedent("""
        import numpy as np
        from dynametric.metrics import evaluate_embeddings
        rng = np.random.default_rng(0)
        lab = np.repeat(np.arange(5), 40)
        x = ((10 * rng.standard_normal((5, 8)))[lab] + 0.01 * rng.standard_normal((200, 8))).astype("float32")
        for scale in (1.0, 2.0 ** 64, 2.0 ** -100):
            r = evaluate_embeddings(x * np.float32(scale), lab, distance="euclidean", metrics=["nmi", "f1"])
            print(repr(r["fine"]["nmi"]), repr(r["fine"]["f1"]))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.split("\n")[:3]
    assert len(set(lines)) == 1, lines  # faiss (or the torch fallback) sees the same points at every scale


def test_kmeans_assign_scales_its_points_and_refuses_non_finite_ones():
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.standard_normal((120, 6)).astype(np.float32))
    base, _ = kmeans_assign(x, 7, seed=1, restarts=2, backend="torch")
    for scale in (2.0**64, 2.0**-120):  # exact float32 scalings: the same assignment (was a multinomial error)
        np.testing.assert_array_equal(kmeans_assign(x * scale, 7, seed=1, restarts=2, backend="torch")[0], base)
    bad = x.clone()
    bad[17, 2] = float("nan")
    with pytest.raises(InputError, match=r"NaN or Inf \(first at row 17, 1 bad rows\)"):
        kmeans_assign(bad, 3, backend="torch")


def test_lloyd_kmeans_refuses_points_whose_squared_distances_overflow():
    x = torch.randn(50, 4) * 1e19  # was: RuntimeError "probability tensor contains either inf, nan or element < 0"
    with pytest.raises(ValueError, match="too large for float32") as info:
        lloyd_kmeans(x, 3, seed=0, iters=5, restarts=1)
    assert "\n" not in str(info.value)
    lloyd_kmeans(x.double(), 3, seed=0, iters=5, restarts=1, dtype=torch.float64)  # float64 holds them


# --- finding 5: rows far below the largest one ----------------------------------------------------------------------

def _dynamic_range_case():
    rng = np.random.default_rng(6)
    small = rng.standard_normal((100, 4)) * 1e-15
    labels = rng.integers(0, 10, 100)
    return small.astype(np.float32), labels


def test_rows_2_to_the_48_below_the_largest_coordinate_are_named_in_a_warning():
    small, labels = _dynamic_range_case()
    recall, _, _ = _bf_ranking(small, labels, "euclidean")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # alone, the small rows scale up and rank exactly: no warning
        out = evaluate_embeddings(small, labels, distance="euclidean", metrics=["recall@1"], k_values=(1,))
    assert out["fine"]["recall@1"] == pytest.approx(np.nanmean(recall), abs=1e-12)
    x = np.concatenate([small, np.full((1, 4), 1e10, dtype=np.float32)])
    lab = np.concatenate([labels, [99]])
    for engine in ENGINES:
        with pytest.warns(RuntimeWarning, match=r"^100 row\(s\) of the embeddings \(first: row 0\) lie more than "
                                                r"2\^48 times closer") as record:
            evaluate_embeddings(x, lab, distance="euclidean", metrics=["recall@1"], k_values=(1,), **engine)
        assert all("\n" not in str(w.message) for w in record)
        assert record[0].filename == __file__  # the user's line
    with pytest.warns(RuntimeWarning, match=r"^3 row\(s\) of query \(first: row 0\) and 100 row\(s\) of gallery "
                                            r"\(first: row 0\)"):
        evaluate_embeddings(small[:3], labels[:3], x, lab, distance="euclidean", metrics=["recall@1"],
                            k_values=(1,))
    with pytest.warns(RuntimeWarning, match=r"^100 row\(s\) of the embeddings"):
        evaluate_embeddings(x, lab, distance="euclidean", metrics=["nmi"], kmeans_backend="torch")


def test_ordinary_and_zero_rows_raise_no_precision_warning():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((80, 5)).astype(np.float32)
    x[::9] = 0  # zero rows score exactly: not tiny
    labels = rng.integers(0, 8, 80)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for distance in ("euclidean", "cosine"):
            evaluate_embeddings(x * np.float32(1e-30), labels, distance=distance, metrics=["recall@1", "nmi"],
                                kmeans_backend="torch")
            evaluate_embeddings(1000 + x, labels, distance=distance, metrics=["recall@1", "nmi"],
                                kmeans_backend="torch")


# --- finding 6: the docstring's all-zero rule -------------------------------------------------------------------

def test_an_all_zero_row_under_cosine_is_accepted_as_the_docstring_says():
    x = np.eye(4, dtype=np.float32)
    x[2] = 0
    out = evaluate_embeddings(x, [0, 0, 1, 1], metrics=["recall@1"], k_values=(1,))
    assert out["fine"]["num_queries"] == 4
    doc = " ".join(evaluate_embeddings.__doc__.split())
    assert "an all-zero row under cosine is accepted" in doc
    assert "or an all-zero row under cosine, and" not in doc


# --- review: the caller's float64 embeddings are never written to --------------------------------------------------

@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("engine", ["cpu", "torch"])
def test_float64_inputs_are_left_as_they_were(distance, engine):
    """float64 arrays and tensors are passed on uncopied; the cosine preparation normalised them in place (the
    caller's array held unit rows afterwards)."""
    rng = np.random.default_rng(3)
    q = rng.standard_normal((60, 6)) + 5
    g = rng.standard_normal((40, 6)) + 5
    ql, gl = rng.integers(0, 5, 60), rng.integers(0, 5, 40)
    metrics = ["recall@1", "map@r", "fnmr@fmr=1", "nmi"]
    for make in (lambda a: a, torch.from_numpy):
        qi, gi = make(q.copy()), make(g.copy())
        evaluate_embeddings(qi, ql, distance=distance, metrics=metrics, k_values=(1,), ranking_engine=engine,
                            kmeans_backend="torch")
        evaluate_embeddings(qi, ql, gi, gl, distance=distance, metrics=metrics, k_values=(1,),
                            ranking_engine=engine, kmeans_backend="torch")
        assert np.array_equal(np.asarray(qi), q) and np.array_equal(np.asarray(gi), g)


@pytest.mark.parametrize("names, message", [
    (["", "coarse"], "scale names must be non-empty strings (not blank), got ['', 'coarse']"),
    (["fine", "  "], "scale names must be non-empty strings (not blank), got ['fine', '  ']"),
    (["fine", 7], "scale names must be non-empty strings, got ['fine', 7]"),
    (["fine", "fine"], "scale names must be distinct (one per label column), got ['fine', 'fine']: 'fine' repeats"),
    (["fine", "by_category"], "'by_category' cannot be a scale name (an evaluation reports the per-category results "
                              "under it), got ['fine', 'by_category']"),
    (["fine"], "need 2 scale names (one per label column), got 1: ['fine']"),
])
def test_evaluate_embeddings_refuses_the_scale_names_the_readers_refuse(names, message):
    # an empty name was accepted and reported a scale under the key '' (the CSV, folder and embed readers refuse it)
    x = np.random.default_rng(0).standard_normal((8, 3))
    labels = np.stack([np.arange(8) % 4, np.arange(8) % 2], 1)
    with pytest.raises(InputError) as info:
        evaluate_embeddings(x, labels, scale_names=names, metrics=["recall@1"])
    assert str(info.value) == f"key 'scale_names': {message}"
    assert list(evaluate_embeddings(x, labels, scale_names=["fine", "coarse"], metrics=["recall@1"])) == [
        "fine", "coarse", "mean"]
