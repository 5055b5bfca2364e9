"""The leave-one-out symmetric path (each pair's score computed once, running top lists) against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import dynametric.metrics.engine as engine
import dynametric.metrics.symmetric as symmetric
from dynametric.metrics import default_scale_names, evaluate_embeddings
from tests.metrics.reference import brute_force

FAST = ["recall@1", "recall@2", "recall@4", "recall@8", "r_precision", "map@r", "asi"]


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of 16 items, so a few dozen items span many tiles (first, dense, sparse and diagonal tiles)."""
    monkeypatch.setattr(symmetric, "TILE", 16)
    calls = {"lists": 0, "recomputed_rows": 0}
    real_lists, real_block = engine.symmetric_top_lists, engine.scores_block

    def spy_lists(*args, **kwargs):
        calls["lists"] += 1
        return real_lists(*args, **kwargs)

    def spy_block(problem, start, stop, **kwargs):
        calls["recomputed_rows"] += stop - start
        return real_block(problem, start, stop, **kwargs)

    monkeypatch.setattr(engine, "symmetric_top_lists", spy_lists)
    monkeypatch.setattr(engine, "scores_block", spy_block)
    return calls


def _check(out, ref, names):
    for s, name in enumerate(names):
        for m in FAST:
            assert out[name][m] == pytest.approx(ref[s][m], abs=1e-9), (name, m)
        assert out[name]["empty_queries"] == ref[s]["empty"]


@pytest.mark.parametrize("num_scales", [1, 2, 3])
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_symmetric_path_matches_brute_force(small_tiles, num_scales, distance):
    rng = np.random.default_rng(num_scales + 5 * (distance == "cosine"))
    n = 83
    x = rng.standard_normal((n, 5)).astype(np.float32)
    fine = rng.integers(0, 25, n)
    labels = np.stack([fine, fine % 6, fine % 2], 1)[:, :num_scales]
    ref = brute_force(x, labels, distance=distance)
    for budget in (None, 1):
        out = evaluate_embeddings(x, labels, metrics=FAST, distance=distance, memory_budget_bytes=budget)
        _check(out, ref, default_scale_names(num_scales))
    assert small_tiles["lists"] == 2  # the symmetric path ran (once per budget)
    assert small_tiles["recomputed_rows"] == 0  # continuous scores: no tie at any row's cap


def test_symmetric_path_is_exact_with_heavy_ties_and_recomputes_tied_rows(small_tiles):
    # integer coordinates + euclidean: every score is exact in float32 and float64, so ties are real and many
    rng = np.random.default_rng(11)
    n = 70
    x = rng.integers(-2, 3, (n, 3)).astype(np.float32)
    x[5] = x[6]  # exact duplicates
    labels = rng.integers(0, 12, n)
    ref = brute_force(x, labels, distance="euclidean")
    out = evaluate_embeddings(x, labels, metrics=FAST, distance="euclidean")
    _check(out, ref, ["fine"])
    assert small_tiles["lists"] == 1
    assert small_tiles["recomputed_rows"] > 0  # ties at the cap were resolved on the row path


def test_symmetric_path_excludes_shared_ids(small_tiles):
    rng = np.random.default_rng(4)
    n = 60
    x = rng.standard_normal((n, 4)).astype(np.float32)
    x[30:] = x[:30] + 1e-3 * rng.standard_normal((30, 4)).astype(np.float32)  # near-copies share an id
    labels = rng.integers(0, 9, n)
    ids = [f"obj{i % 30}" for i in range(n)]
    ref = brute_force(x, labels, query_ids=ids)
    out = evaluate_embeddings(x, labels, metrics=FAST, query_ids=ids)
    _check(out, ref, ["fine"])
    assert small_tiles["lists"] == 1


def test_symmetric_top_lists_hold_each_rows_best_scores(monkeypatch):
    monkeypatch.setattr(symmetric, "TILE", 8)
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.standard_normal((50, 3)).astype(np.float32))
    k1 = 6
    vals, idx = symmetric.symmetric_top_lists(x, k1)
    full = (x.double() @ x.double().T).numpy()
    np.fill_diagonal(full, -np.inf)
    want = -np.sort(-full, axis=1)[:, :k1]
    assert np.allclose(vals.numpy(), want, atol=1e-5)
    got_scores = np.take_along_axis(full, idx.numpy(), axis=1)  # the kept indices carry the kept scores
    assert np.allclose(got_scores, vals.numpy(), atol=1e-5)
    assert not (idx.numpy() == np.arange(50)[:, None]).any()  # self never kept


def test_full_map_or_large_caps_use_the_row_path(small_tiles):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((40, 4)).astype(np.float32)
    labels = rng.integers(0, 5, 40)
    evaluate_embeddings(x, labels, metrics=FAST + ["map"])
    q = rng.standard_normal((10, 4)).astype(np.float32)
    evaluate_embeddings(q, labels[:10], x, labels)  # query -> gallery
    assert small_tiles["lists"] == 0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(2, 40), classes=st.integers(1, 6), seed=st.integers(0, 10**6), dup=st.booleans())
def test_symmetric_path_property_tiny_sets_with_ties(monkeypatch, n, classes, seed, dup):
    # integer coordinates in {-1, 0, 1}^2 + euclidean: exact scores, massive ties, tiny and degenerate sets
    monkeypatch.setattr(symmetric, "TILE", 7)
    rng = np.random.default_rng(seed)
    x = rng.integers(-1, 2, (n, 2)).astype(np.float32)
    if dup:
        x[:] = x[0]  # every item identical: every score ties
    labels = rng.integers(0, classes, n)
    ref = brute_force(x, labels, distance="euclidean")
    out = evaluate_embeddings(x, labels, metrics=FAST, distance="euclidean")
    for m in FAST:
        got, want = out["fine"][m], ref[0][m]
        assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want, abs=1e-9), m
