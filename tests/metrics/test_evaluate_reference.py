"""evaluate_embeddings against a brute-force full-argsort reference, hand-computed cases and invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynametric.errors import ConfigError, InputError
from dynametric.metrics import default_scale_names, evaluate_embeddings, metrics_from_sorted_ranks
from tests.metrics.reference import brute_force

METRICS = ["recall@1", "recall@2", "recall@4", "recall@8", "r_precision", "map@r", "map", "asi"]


def _labels(rng, n, nested, num_scales):
    fine = rng.integers(0, max(2, n // 4), n)
    if num_scales == 1:
        return fine[:, None]
    cols = [fine]
    for s in range(1, num_scales):
        cols.append(cols[-1] % (7 - 2 * s) if nested else rng.integers(0, 6 - s, n))
    return np.stack(cols, 1)


def _check(out, ref, names):
    for s, name in enumerate(names):
        for m in METRICS:
            assert out[name][m] == pytest.approx(ref[s][m], abs=1e-9), (name, m)
        assert out[name]["empty_queries"] == ref[s]["empty"]
    for m in METRICS:
        assert out["mean"][m] == pytest.approx(np.mean([ref[s][m] for s in range(len(names))]), abs=1e-9)


@pytest.mark.parametrize("num_scales", [1, 2, 3])
@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_leave_one_out_matches_brute_force(num_scales, nested, distance):
    rng = np.random.default_rng(num_scales * 10 + nested * 3 + (distance == "cosine"))
    n = 90
    x = rng.standard_normal((n, 6)).astype(np.float32)
    labels = _labels(rng, n, nested, num_scales)
    ref = brute_force(x, labels, distance=distance)
    for budget in (None, 1):  # one chunk of every row / one query row per chunk
        out = evaluate_embeddings(x, labels, distance=distance, memory_budget_bytes=budget)
        _check(out, ref, default_scale_names(num_scales))


@pytest.mark.parametrize("num_scales", [1, 3])
@pytest.mark.parametrize("nested", [True, False])
def test_query_to_gallery_matches_brute_force(num_scales, nested):
    rng = np.random.default_rng(7 + num_scales + 2 * nested)
    q = rng.standard_normal((40, 5)).astype(np.float32)
    g = rng.standard_normal((70, 5)).astype(np.float32)
    ql, gl = _labels(rng, 40, nested, num_scales), _labels(rng, 70, nested, num_scales)
    ql[:3, 0] = 999  # fine label absent from the gallery: empty queries at the fine scale
    if num_scales > 1 and nested:
        ql[:3, 1:] = ql[3, 1:]
    ref = brute_force(q, ql, g, gl)
    out = evaluate_embeddings(q, ql, g, gl, memory_budget_bytes=3000)
    _check(out, ref, default_scale_names(num_scales))
    assert out["fine"]["excluded_queries"] == ref[0]["empty"] >= 3
    assert out["fine"]["num_queries"] == 40 - ref[0]["empty"]
    ref0 = brute_force(q, ql, g, gl, empty="count_as_zero")
    out0 = evaluate_embeddings(q, ql, g, gl, empty_queries="count_as_zero")
    _check(out0, ref0, default_scale_names(num_scales))
    assert out0["fine"]["num_queries"] == 40 and out0["fine"]["excluded_queries"] == 0


def test_shared_ids_are_excluded_explicitly():
    rng = np.random.default_rng(3)
    g = rng.standard_normal((50, 4)).astype(np.float32)
    gl = rng.integers(0, 8, 50)
    q = g[:20] + 0.0  # the first 20 gallery items are also queries
    ql = gl[:20]
    qids = [f"img{i}" for i in range(20)]
    gids = [f"img{i}" for i in range(50)]
    ref = brute_force(q, ql, g, gl, query_ids=qids, gallery_ids=gids)
    out = evaluate_embeddings(q, ql, g, gl, query_ids=qids, gallery_ids=gids)
    _check(out, ref, ["fine"])
    # without ids the query finds itself at rank 1
    assert evaluate_embeddings(q, ql, g, gl)["fine"]["recall@1"] == 1.0
    assert out["fine"]["recall@1"] < 1.0


def test_leave_one_out_ids_exclude_all_copies_and_duplicates_are_not_self():
    # items 0 and 1 are exact duplicates (same embedding, same label): without ids each finds the other at
    # rank 1 (self is excluded by index, not by dropping rank 1); with a shared id both copies are excluded.
    x = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.8, 0.6]], dtype=np.float32)
    labels = np.array([0, 0, 1, 0, 1])
    out = evaluate_embeddings(x, labels, metrics=["recall@1", "map"])
    ref = brute_force(x, labels, k_values=(1,))
    assert out["fine"]["recall@1"] == pytest.approx(ref[0]["recall@1"])
    assert out["fine"]["map"] == pytest.approx(ref[0]["map"])
    ids = ["a", "a", "b", "c", "d"]
    out_ids = evaluate_embeddings(x, labels, metrics=["recall@1", "map"], query_ids=ids)
    ref_ids = brute_force(x, labels, k_values=(1,), query_ids=ids)
    assert out_ids["fine"]["map"] == pytest.approx(ref_ids[0]["map"])
    assert out_ids["fine"]["recall@1"] == pytest.approx(ref_ids[0]["recall@1"])
    assert out_ids["fine"]["map"] != pytest.approx(out["fine"]["map"])


def test_hand_computed_ties_broken_by_gallery_index():
    # 1-D euclidean, query at 0. Gallery positions: g0=+1 (rel), g1=-1 (non-rel), g2=+1 (non-rel), g3=-2 (rel),
    # g4=3 (rel). Distances 1,1,1,2,3 -> ranking by index among the ties: g0, g1, g2, g3, g4.
    # relevant ranks 1, 4, 5; R = 3.
    q = np.array([[0.0]], dtype=np.float32)
    g = np.array([[1.0], [-1.0], [1.0], [-2.0], [3.0]], dtype=np.float32)
    gl = np.array([5, 6, 6, 5, 5])
    out = evaluate_embeddings(q, np.array([5]), g, gl, distance="euclidean", k_values=(1, 2, 4))["fine"]
    assert out["recall@1"] == 1.0 and out["recall@2"] == 1.0
    assert out["r_precision"] == pytest.approx(1 / 3)
    assert out["map@r"] == pytest.approx((1 / 1) / 3)
    assert out["map"] == pytest.approx((1 / 1 + 2 / 4 + 3 / 5) / 3)
    # ASI, N = R = 3: P@1 = 1, P@2 = 1/2, P@3 = 1/3
    assert out["asi"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)
    # move the tie: relevant g2 (index 2) and non-relevant g0 share distance 1 -> g0 first
    gl2 = np.array([6, 6, 5, 5, 5])
    out2 = evaluate_embeddings(q, np.array([5]), g, gl2, distance="euclidean", k_values=(1, 2, 4))["fine"]
    assert out2["recall@1"] == 0.0 and out2["recall@2"] == 0.0 and out2["recall@4"] == 1.0
    assert out2["map"] == pytest.approx((1 / 3 + 2 / 4 + 3 / 5) / 3)
    assert out2["asi"] == pytest.approx((0 + 0 + 1 / 3) / 3)


def test_negative_zero_ties_with_positive_zero():
    # cosine scores +0.0 and -0.0 are equal: the tie is broken by gallery index (non-relevant index 0 first).
    q = np.array([[1.0, 0.0]], dtype=np.float32)
    g = np.array([[0.0, 1.0], [-0.0, -1.0], [1.0, 0.0]], dtype=np.float32)
    out = evaluate_embeddings(q, np.array([1]), g, np.array([0, 1, 0]), metrics=["map"])["fine"]
    assert out["map"] == pytest.approx(1 / 3)


def test_asi_integer_cutoff_matches_definition():
    rng = np.random.default_rng(11)
    x = rng.standard_normal((60, 4)).astype(np.float32)
    labels = rng.integers(0, 6, 60)
    for cut in (1, 5, 80):
        ref = brute_force(x, labels, asi_cutoff=cut)
        out = evaluate_embeddings(x, labels, metrics=["asi"], asi_cutoff=cut)
        assert out["fine"]["asi"] == pytest.approx(ref[0]["asi"], abs=1e-12)


def test_metrics_from_sorted_ranks_hand_values():
    ranks = torch.tensor([[1, 3, 4, 6, 0]])
    rel = torch.tensor([[True, False, True, True, False]])
    r, vals = metrics_from_sorted_ranks(ranks, rel, k_values=(1, 2))
    assert int(r[0]) == 3
    # relevant ranks 1, 4, 6
    assert float(vals["recall@1"][0]) == 1.0
    assert float(vals["r_precision"][0]) == pytest.approx(1 / 3)
    assert float(vals["map@r"][0]) == pytest.approx(1 / 3)
    assert float(vals["map"][0]) == pytest.approx((1 + 2 / 4 + 3 / 6) / 3)
    assert float(vals["asi"][0]) == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_all_empty_scale_is_nan_and_counted():
    x = np.eye(4, dtype=np.float32)
    labels = np.array([[0, 0], [1, 0], [2, 0], [3, 0]])
    out = evaluate_embeddings(x, labels, metrics=["recall@1", "map"])
    assert math.isnan(out["fine"]["map"]) and out["fine"]["excluded_queries"] == 4
    assert out["coarse"]["recall@1"] == 1.0 and out["coarse"]["num_queries"] == 4
    assert math.isnan(out["mean"]["map"])


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 6), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_perfect_ranking_scores_one(num_classes, per_class, seed):
    rng = np.random.default_rng(seed)
    centers = np.eye(num_classes, dtype=np.float32)
    labels = np.repeat(np.arange(num_classes), per_class + 1)
    x = centers[labels] + 0.01 * rng.standard_normal((len(labels), num_classes)).astype(np.float32)
    out = evaluate_embeddings(x, np.stack([labels, labels // 2], 1), memory_budget_bytes=int(rng.integers(1, 10**6)))
    for m in METRICS:
        assert out["fine"][m] == pytest.approx(1.0)


@settings(max_examples=20, deadline=None)
@given(st.integers(5, 40), st.integers(0, 2**31 - 1))
def test_invariant_to_permuting_items(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    labels = np.stack([rng.integers(0, 5, n), rng.integers(0, 2, n)], 1)
    perm = rng.permutation(n)
    a = evaluate_embeddings(x, labels)
    b = evaluate_embeddings(x[perm], labels[perm])
    for name in ("fine", "coarse", "mean"):
        for m in METRICS:
            assert a[name][m] == pytest.approx(b[name][m], abs=1e-12, nan_ok=True)


def test_bad_arguments_raise_clear_errors():
    x = np.zeros((3, 2), dtype=np.float32)
    with pytest.raises(ConfigError, match="unknown metric 'foo'"):
        evaluate_embeddings(x, [0, 1, 0], metrics=["foo"])
    with pytest.raises(InputError, match="expected 3 label rows, got 2"):
        evaluate_embeddings(x, [0, 1])
    bad = x.copy()
    bad[1, 0] = np.nan
    with pytest.raises(InputError, match="query_emb.*NaN or Inf.*row 1"):
        evaluate_embeddings(bad, [0, 1, 0])
    with pytest.raises(ConfigError, match="distance"):
        evaluate_embeddings(x, [0, 1, 0], distance="manhattan")
    with pytest.raises(InputError, match="gallery dimension"):
        evaluate_embeddings(x, [0, 1, 0], np.zeros((2, 3), np.float32), [0, 1])
    with pytest.raises(ConfigError, match="asi_cutoff"):
        evaluate_embeddings(x, [0, 1, 0], asi_cutoff=0)


def test_default_scale_names():
    assert default_scale_names(1) == ["fine"]
    assert default_scale_names(2) == ["fine", "coarse"]
    assert default_scale_names(3) == ["fine", "middle", "coarse"]
    assert default_scale_names(4) == ["scale0", "scale1", "scale2", "scale3"]
