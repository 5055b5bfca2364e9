"""fnmr@fmr=<p> (open-metric-learning's definition) on both engines: a hand-computed case and a numpy reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dynametric.errors import ConfigError
from dynametric.metrics import evaluate_embeddings


def test_fnmr_hand_computed():
    # one query at 0; positive distances 0 0 1 1 2 2 5 5 9 9, negative distances 3 3 4 4 6 6 7 7 8 8:
    # the 10th percentile of the negatives is 3 (4 of 10 positives >= 3), the 50th is 6 (2 of 10)
    pos = [0, 0, 1, 1, 2, 2, 5, 5, 9, 9]
    neg = [3, 3, 4, 4, 6, 6, 7, 7, 8, 8]
    g = np.array(pos + neg, dtype=np.float32)[:, None]
    gl = np.array([1] * 10 + [0] * 10)
    for engine in ("cpu", "torch"):
        out = evaluate_embeddings(np.zeros((1, 1), np.float32), np.array([1]), g, gl, distance="euclidean",
                                  metrics=["fnmr@fmr=10", "fnmr@fmr=50"], ranking_engine=engine)["fine"]
        assert out["fnmr@fmr=10"] == pytest.approx(0.4) and out["fnmr@fmr=50"] == pytest.approx(0.2), engine


def _reference(q, ql, g, gl, distance, fmr, loo, qids=None, gids=None):
    if distance == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
    d = np.sqrt(((q[:, None, :].astype(np.float64) - g[None, :, :]) ** 2).sum(-1))
    keep = np.ones(d.shape, dtype=bool)
    if loo:
        np.fill_diagonal(keep, False)
    if qids is not None:
        keep &= np.asarray(qids)[:, None] != np.asarray(gids)[None, :]
    same = ql[:, None] == gl[None, :]
    pos, neg = d[same & keep], d[~same & keep]
    return {p: float((pos >= np.percentile(neg, p)).mean()) for p in fmr}


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
@pytest.mark.parametrize("loo", [True, False])
def test_fnmr_matches_numpy_reference(distance, loo):
    rng = np.random.default_rng(4)
    fine = rng.integers(0, 8, 150)
    x = (rng.standard_normal((8, 5))[fine] + 0.9 * rng.standard_normal((150, 5)) + 3.0).astype(np.float32)
    labels = np.stack([fine, fine % 3], 1)
    fmr = [0.1, 1, 10, 50, 100]
    names = [f"fnmr@fmr={p:g}" for p in fmr]
    if loo:
        args, kw = (x, labels), {}
        refs = [_reference(x, labels[:, s], x, labels[:, s], distance, fmr, True) for s in range(2)]
    else:
        qids, gids = list(rng.integers(0, 30, 50)), list(rng.integers(0, 30, 100))
        args, kw = (x[:50], labels[:50], x[50:], labels[50:]), {"query_ids": qids, "gallery_ids": gids}
        refs = [_reference(x[:50], labels[:50, s], x[50:], labels[50:, s], distance, fmr, False, qids, gids)
                for s in range(2)]
    for engine in ("cpu", "torch"):
        out = evaluate_embeddings(*args, **kw, distance=distance, metrics=["recall@1", *names],
                                  ranking_engine=engine, memory_budget_bytes=200_000)
        for s, scale in enumerate(("fine", "coarse")):
            for p, name in zip(fmr, names):
                assert out[scale][name] == pytest.approx(refs[s][p], abs=1e-12), (engine, scale, name)
    assert not math.isnan(out["mean"][names[0]])


def test_fnmr_bad_percentage():
    with pytest.raises(ConfigError, match="percentage"):
        evaluate_embeddings(np.eye(3, dtype=np.float32), [0, 0, 1], metrics=["fnmr@fmr=120"])


@pytest.mark.parametrize("engine", ["cpu", "torch"])
def test_positive_at_exactly_the_threshold_counts_as_at_or_above(engine):
    # two identical queries: the positive pair (q0, g0) and the negative pair (q1, g0) have bit-identical scores, and
    # T at fmr 0 is the smallest negative distance, that negative's own: d_pos >= T, so fnmr = 1. The threshold's
    # square root (math.sqrt) and the positives' (torch's vectorised sqrt) differed in the last bit for this value,
    # which counted the positive below T
    t = np.float32(0.519841730594635)
    q = np.array([[0.0], [0.0]], np.float32)
    g = np.array([[t], [5.0]], np.float32)
    out = evaluate_embeddings(q, np.array([0, 1]), g, np.array([0, 2]), metrics=["fnmr@fmr=0", "fnmr@fmr=100"],
                              distance="euclidean", ranking_engine=engine)["fine"]
    assert out["fnmr@fmr=0"] == 1.0
    assert out["fnmr@fmr=100"] == 0.0  # T = the largest negative distance (5): the positive (0.52) is below it


def test_zero_embedding_is_at_sqrt2_under_cosine():
    # documented: cosine d = sqrt(2 - 2 cos); an all-zero row has cosine 0 with anything, so d = sqrt(2) = the
    # negative (0, 1)'s distance: at fmr 0, T = sqrt(2) (the smallest negative), the zero positive is >= T
    q = np.array([[1.0, 0.0]], np.float32)
    g = np.array([[0.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)
    for engine in ("cpu", "torch"):
        out = evaluate_embeddings(q, np.array([0]), g, np.array([0, 1, 1]), metrics=["fnmr@fmr=0", "fnmr@fmr=100"],
                                  distance="cosine", ranking_engine=engine)["fine"]
        assert out["fnmr@fmr=0"] == 1.0 and out["fnmr@fmr=100"] == 0.0  # T at 100: the largest negative, 2


@pytest.mark.parametrize("engine", ["cpu", "torch"])
@pytest.mark.parametrize("case", ["euclidean", "cosine_cone"])
def test_a_pair_and_its_mirror_get_the_same_distance(engine, case):
    """Leave-one-out scores every pair twice, (i, j) and (j, i). Item 1 duplicates item 0 under another label, so the
    positive pair (0, 2) is exactly as far as the negative (1, 2): at fmr 100 the threshold is that distance and both
    directions of the positive count as ``d >= T`` (expected 1.0). The squared distance summed as
    ``(-2<q, g> + ||g||^2) + ||q||^2`` rounded the two directions differently (0.5 in some draws; the cosine case is a
    narrow cone, which is scored as centred Euclidean distances)."""
    rng = np.random.default_rng(11)
    for _ in range(60):
        if case == "euclidean":
            a, b = rng.standard_normal((2, 3)).astype(np.float32)
            x, labels, distance = np.stack([a, a, b]), np.array([0, 1, 0]), "euclidean"
        else:
            a, b = (100 + 0.05 * rng.standard_normal((2, 4))).astype(np.float32)
            x, labels, distance = np.stack([a, a, b]), np.array([0, 1, 0]), "cosine"
        want = _reference(x.astype(np.float64), labels, x.astype(np.float64), labels, distance, [100], True)[100]
        got = evaluate_embeddings(x, labels, metrics=["fnmr@fmr=100"], k_values=(), distance=distance,
                                  ranking_engine=engine)["fine"]["fnmr@fmr=100"]
        assert got == want == 1.0, (x.tolist(), got)


@pytest.mark.parametrize("cosine", [True, False])
def test_the_pair_value_bound_counts_what_the_distances_count(cosine):
    # the positives at or above a threshold are counted by one comparison of their float32 pair values with a bound:
    # the same count as computing every positive's float64 distance, for thresholds at, between and beyond the
    # distances (the threshold of an interpolated percentile is another float64 value)
    from dynametric.metrics.verification import _distance, _near_limits, _pair_value_bound

    rng = np.random.default_rng(3)
    floor = _near_limits(16, cosine).floor
    if cosine:  # below -1: recomputed pairs nearer than sqrt(floor) (-floor / s), -inf: a pair at distance 0
        v = np.concatenate([rng.uniform(-1.0, 1.0, 4000), -np.ones(5), np.ones(5), rng.uniform(-1e-6, 1e-6, 20),
                            -1.0 + floor / 2 + rng.uniform(0.0, 1e-4, 20), -np.exp(rng.uniform(0.0, 80.0, 200)),
                            [-np.inf, -np.inf, -3e38, np.nextafter(np.float32(-1.0), np.float32(-2.0))]])
    else:
        v = np.concatenate([rng.uniform(0.0, 50.0, 4000), np.zeros(5), rng.uniform(0, 1e-30, 20), [1e30, 3e38],
                            [1e-45, 1e-40]])
    v = torch.from_numpy(v.astype(np.float32))
    d = _distance(v, cosine, floor)
    order = torch.argsort(v)
    assert bool((torch.diff(d[order]) >= 0).all())  # d is non-decreasing in the pair value
    assert all(_distance(float(x), cosine, floor) == float(y) for x, y in zip(v[::50], d[::50]))
    ts = [float(x) for x in d[::97]] + [float(np.nextafter(float(x), np.inf)) for x in d[::89]]
    ts += [float(np.nextafter(float(x), -np.inf)) for x in d[::83]] + [0.0, -1.0, 1e-300, 1e-20, 1.5, 7.0, 1e19, 1e200]
    ts += [math.sqrt(floor), float(np.nextafter(math.sqrt(floor), 0.0)), 1e-22, 1e-3]
    for t in ts:
        bound = _pair_value_bound(t, cosine, torch.device("cpu"), floor)
        assert int((v >= bound).sum()) == int((d >= t).sum()), (t, bound)
