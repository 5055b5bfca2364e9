"""fnmr@fmr at (near-)zero distances: exact duplicates (and duplicate directions under cosine) are at distance exactly
0, as a float64 brute force says, whatever the protocol, engine or memory budget. The float32 products put them at
+-1e-7 (euclidean) or resolved d only to ~3e-4 near 0 (cosine), which moved the threshold off 0."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dynametric.metrics import evaluate_embeddings

FMR = [0, 0.1, 1, 1.1, 10, 50, 100]


def _brute_force(q, ql, g, gl, distance, loo=False, qids=None, gids=None, at_zeros=True):
    """Per pair d in float64 from the rows (cosine: rows L2-normalised in float64, a positive multiple of a row at
    distance exactly 0 from it), T = numpy.percentile of the
    negatives (linear interpolation), the fraction of positives with d >= T; ``at_zeros``: also at the fmr whose
    threshold is the last but a few of the negatives at distance 0 (where the float32 products' rounding of exact
    duplicates, +-1e-7, put a tiny positive threshold)."""
    q, g = np.asarray(q, np.float64), np.asarray(g, np.float64)
    if distance == "cosine":  # by the largest coordinate first: c * x (exact in float32) becomes x's very row
        q, g = (x / np.abs(x).max(1, keepdims=True) for x in (q, g))
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
    d = np.sqrt(np.array([[np.sum((a - b) ** 2) for b in g] for a in q]))
    keep = np.ones(d.shape, bool)
    if loo:
        keep[np.arange(len(q)), np.arange(len(q))] = False
    if qids is not None:
        keep &= np.asarray(qids)[:, None] != np.asarray(gids)[None, :]
    same = np.asarray(ql)[:, None] == np.asarray(gl)[None, :]
    pos, neg = d[same & keep], d[~same & keep]
    fmr = list(FMR)
    if at_zeros and (neg == 0).sum() > 4:
        fmr.append(100.0 * ((neg == 0).sum() - 3) / (len(neg) - 1))
    return {f"fnmr@fmr={p:g}": float(np.mean(pos >= np.percentile(neg, float(f"{p:g}")))) for p in fmr}, d[keep]


def _check(args, kwargs, want, budgets=(None, 20_000)):
    for engine in ("cpu", "torch"):
        for budget in budgets:
            got = evaluate_embeddings(*args, **kwargs, metrics=list(want), ranking_engine=engine, device="cpu",
                                      memory_budget_bytes=budget)["fine"]
            assert {n: got[n] for n in want} == want, (engine, budget)


def test_qa_case_duplicates_at_the_threshold():
    # QA's report: 40 rows, three copies, the third under other labels: 160 of the 14,200 negatives are at distance
    # 0, so T = 0 at fmr 1 and 1.1 and every positive (all at d = 0) is >= T. Was 0.15 / 0.10 (euclidean)
    rng = np.random.default_rng(6)
    rng.standard_normal((120, 8))
    rng.integers(0, 6, 120)
    b = rng.standard_normal((40, 8)).astype(np.float32)
    x = np.concatenate([b, b, b])
    labels = np.concatenate([np.arange(40), np.arange(40), np.arange(40) + 100])
    for distance in ("euclidean", "cosine"):
        want, _d = _brute_force(x, labels, x, labels, distance, loo=True)
        assert want["fnmr@fmr=1"] == want["fnmr@fmr=1.1"] == 1.0
        _check((x, labels), {"distance": distance}, want)


def _duplicated(rng, distance, n=30, dim=8, copies=(1, 1, 1)):
    """``n`` random rows repeated once per entry of ``copies`` (a row's copy scaled by that factor: under cosine a
    duplicate direction), some copies under another label. Factors other than powers of two: rows of few significant
    bits, so that 3x is exact too (and a float32 product of such rows is exact: full-precision rows otherwise)."""
    base = rng.standard_normal((n, dim))
    if any(math.frexp(c)[0] != 0.5 for c in copies):
        base = np.round(base * 256) / 256
    labels = rng.integers(0, 6, n)
    x = np.concatenate([base * c for c in copies]).astype(np.float32)
    lab = np.concatenate([labels if k % 2 == 0 else labels + 10 * (rng.random(n) < 0.5) for k in range(len(copies))])
    return x, lab


@pytest.mark.parametrize("distance,copies", [("euclidean", (1, 1, 1)), ("cosine", (1, 1, 1)),
                                             ("cosine", (1, 0.25, 3, 8))])
def test_duplicates_leave_one_out(distance, copies):
    rng = np.random.default_rng(1)
    x, lab = _duplicated(rng, distance, copies=copies)
    want, d = _brute_force(x, lab, x, lab, distance, loo=True)
    assert (d == 0).sum() >= 2 * 30 * (len(copies) - 1)  # the duplicates are exactly at 0 in float64
    _check((x, lab), {"distance": distance}, want)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_duplicates_query_to_gallery_with_ids(distance):
    rng = np.random.default_rng(2)
    x, lab = _duplicated(rng, distance, copies=(1, 1, 2, 1))
    # ten copies of one row under two labels: a row with many pairs near zero (sliced under the small budget)
    x = np.concatenate([x, np.repeat(x[:1] * 2, 10, 0)])
    lab = np.concatenate([lab, np.repeat([lab[0], lab[0] + 50], 5)])
    order = rng.permutation(len(x))
    x, lab = x[order], lab[order]
    qsel = rng.random(len(x)) < 0.4
    ids = rng.integers(0, 40, len(x))
    args = (x[qsel], lab[qsel], x[~qsel], lab[~qsel])
    want, d = _brute_force(*args, distance, qids=ids[qsel], gids=ids[~qsel])
    assert (d == 0).sum() > 20
    _check(args, {"distance": distance, "query_ids": list(ids[qsel]), "gallery_ids": list(ids[~qsel])}, want)


def test_near_duplicates_are_ordered_by_their_float64_distances():
    # copies moved by 1e-4 .. 1e-3 of their norm: squared distances within the float32 products' rounding bound
    # (recomputed) yet all different, mixed with exact duplicates and ordinary pairs
    rng = np.random.default_rng(5)
    b = rng.standard_normal((30, 8))
    x = np.concatenate([b, b, b + rng.uniform(1e-4, 1e-3, (30, 1)) * rng.standard_normal((30, 8))]).astype(np.float32)
    lab = np.concatenate([np.arange(30), np.arange(30) + 100 * (np.arange(30) % 2), np.arange(30)])
    want, d = _brute_force(x, lab, x, lab, "euclidean", loo=True)
    assert len(np.unique(d[(d > 0) & (d < 1e-2)])) >= 25
    _check((x, lab), {"distance": "euclidean"}, want)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_ordinary_data_recomputes_no_pair(distance, monkeypatch):
    # the exact recomputation is for pairs near zero only: random rows never take it (one comparison per chunk)
    import dynametric.metrics.verification as verification

    def refuse(*_a, **_k):
        raise AssertionError("a pair was recomputed")

    monkeypatch.setattr(verification, "_recompute", refuse)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((80, 16)).astype(np.float32)
    lab = rng.integers(0, 5, 80)
    want, _d = _brute_force(x, lab, x, lab, distance, loo=True)
    _check((x, lab), {"distance": distance}, want, budgets=(None, 20_000))
    dup = np.concatenate([x, x[:1]])
    with pytest.raises(AssertionError, match="recomputed"):
        evaluate_embeddings(dup, np.concatenate([lab, [9]]), metrics=["fnmr@fmr=1"], distance=distance)


@pytest.mark.parametrize("cosine", [True, False])
def test_recomputed_values_keep_the_order_and_zero(cosine):
    # the float32 value of a recomputed squared distance s: d(value) = sqrt(s) to float32's precision, non-decreasing
    # in s, 0 exactly for s = 0 and never for s > 0 (also below float32's range); cosine values below the floor are
    # below -1, those above it among the ordinary values (above -1 + floor / 2)
    import torch

    from dynametric.metrics.verification import _distance, _encode_exact, _near_limits

    near = _near_limits(64, cosine)
    s = np.concatenate([[0.0, 1e-300, 1e-60, 1e-46], np.exp(np.linspace(np.log(1e-40), np.log(0.1), 3000)),
                        [near.floor * (1 - 1e-12), near.floor, near.floor * (1 + 1e-12)]])
    s = np.sort(s)
    v = _encode_exact(torch.from_numpy(s), near)
    d = _distance(v, cosine, near.floor).numpy()
    assert d[0] == 0.0 and (d[1:] > 0).all()
    assert (np.diff(v.numpy()) >= 0).all() and (np.diff(d) >= 0).all()
    # float32's normal range (cosine: -floor / s finite, and below the floor: above it a recomputed pair is one of
    # the ordinary values s / 2 - 1, to their resolution)
    ok = s > 1e-38 if not cosine else (s > 1e-40) & (s < near.floor)
    rel = np.abs(d[ok] / np.sqrt(s[ok]) - 1)
    assert rel.max() < 1e-7, rel.max()
    if cosine:
        below = s < near.floor
        assert (v.numpy()[below] <= -1).all() and (v.numpy()[~below] >= -1 + near.floor / 2).all()


@pytest.mark.parametrize("cosine", [True, False])
def test_a_recomputed_pair_has_the_same_bits_in_any_sub_batch_and_mirrored(cosine):
    # the pairwise tree of elementwise additions: a pair's value does not depend on the sub-batch it is in, and
    # (i, j) equals (j, i), so leave-one-out counts both directions of a tie alike
    import torch

    from dynametric.metrics.verification import _exact_squared

    rng = np.random.default_rng(9)
    a = torch.from_numpy(rng.standard_normal((257, 37)).astype(np.float32))
    b = a + torch.from_numpy((1e-4 * rng.standard_normal((257, 37))).astype(np.float32))
    whole = _exact_squared(a, b, cosine)
    assert torch.equal(whole, _exact_squared(b, a, cosine))
    for size in (1, 3, 64):
        parts = torch.cat([_exact_squared(a[i:i + size], b[i:i + size], cosine) for i in range(0, 257, size)])
        assert torch.equal(parts, whole), size
    assert bool((_exact_squared(a, a, cosine) == 0).all()) and bool((whole > 0).all())
    zero = torch.zeros((2, 37))
    # an all-zero row (cosine: at sqrt(2) from everything, as in the products; only reached past ~4e6 dimensions)
    assert _exact_squared(zero, torch.stack([a[0], zero[0]]), cosine).tolist() == \
        ([2.0, 2.0] if cosine else [pytest.approx(float((a[0].double() ** 2).sum()), rel=1e-14), 0.0])


def test_duplicates_in_a_narrow_cone():
    # cosine inputs in a narrow cone are scored as centred Euclidean distances of their unit rows: duplicates there
    # are at exactly 0 too
    rng = np.random.default_rng(0)
    x = (100 + 0.05 * rng.standard_normal((40, 6))).astype(np.float32)
    lab = rng.integers(0, 5, 40)
    xd, ld = np.concatenate([x, x, x]), np.concatenate([lab, lab, lab + 10])
    want, _d = _brute_force(xd, ld, xd, ld, "cosine", loo=True)
    _check((xd, ld), {"distance": "cosine"}, want, budgets=(None,))
