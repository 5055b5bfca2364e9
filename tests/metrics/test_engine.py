"""The ranking engine's two exact paths, tie-break, chunk planning and memory-budget invariance."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynametric.errors import InputError
from dynametric.metrics import evaluate_embeddings, plan_chunk_rows
from dynametric.metrics.engine import rank_candidates


def _brute_ranks(scores, cols):
    out = np.zeros(cols.shape, dtype=np.int64)
    n = scores.shape[1]
    for r in range(scores.shape[0]):
        order = np.lexsort((np.arange(n), -scores[r].astype(np.float64)))
        pos = np.empty(n, dtype=np.int64)
        pos[order] = np.arange(1, n + 1)
        out[r] = pos[cols[r]]
    return out


@pytest.mark.parametrize("path", ["search", "tagged", "auto"])
def test_rank_paths_are_exact_with_many_ties(path):
    rng = np.random.default_rng(0)
    scores = (rng.integers(-4, 5, (13, 50)) / 4.0).astype(np.float32)  # heavy ties, incl. -0.0 below
    scores[0, :5] = -0.0
    scores[1, 3] = -np.inf  # an excluded item
    cols = np.stack([rng.permutation(50)[:20] for _ in range(13)])
    valid = rng.random((13, 20)) < 0.9
    got = rank_candidates(torch.from_numpy(scores), torch.from_numpy(cols), torch.from_numpy(valid), path=path)
    want = _brute_ranks(scores + 0.0, cols)  # +0.0: -0.0 and 0.0 are the same score
    assert np.array_equal(got.numpy(), np.where(valid, want, 0))


def test_overflowing_scores_raise():
    scores = torch.tensor([[1.0, float("inf"), 0.5]])
    for path in ("search", "tagged"):
        with pytest.raises(InputError, match="overflow"):
            rank_candidates(scores, torch.tensor([[0]]), torch.tensor([[True]]), path=path)


def test_plan_chunk_rows_respects_budget():
    assert plan_chunk_rows(60502, 60502) * 10 * 60502 <= 768 * 2**20
    assert plan_chunk_rows(100, 60502, memory_budget_bytes=1) == 1
    assert plan_chunk_rows(5, 10, memory_budget_bytes=10**9) == 5
    big_u = plan_chunk_rows(60502, 60502, max_candidates=7000, num_scales=3)
    assert big_u < plan_chunk_rows(60502, 60502, max_candidates=10, num_scales=3)


def test_memory_budget_does_not_change_results():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((150, 4)).astype(np.float32)
    x[10] = x[20]  # exact duplicates
    fine = rng.integers(0, 30, 150)
    labels = np.stack([fine, fine % 5, fine % 2], 1)
    ref = evaluate_embeddings(x, labels)
    for budget in (1, 5000, 123457, 10**8):
        out = evaluate_embeddings(x, labels, memory_budget_bytes=budget)
        assert out == ref  # bit-identical: per-query values are summed exactly (math.fsum)


@pytest.mark.parametrize("cap", [1, 3, 7])
def test_top_path_is_exact_up_to_the_cap_with_many_ties(cap):
    rng = np.random.default_rng(cap)
    scores = (rng.integers(-4, 5, (13, 50)) / 4.0).astype(np.float32)  # heavy ties at the top-k boundary
    scores[1, 3] = -np.inf
    cols = np.stack([rng.permutation(50)[:20] for _ in range(13)])
    valid = rng.random((13, 20)) < 0.9
    got = rank_candidates(torch.from_numpy(scores), torch.from_numpy(cols), torch.from_numpy(valid), path="top",
                          rank_cap=cap)
    want = np.minimum(_brute_ranks(scores + 0.0, cols), cap + 1)
    assert np.array_equal(got.numpy(), np.where(valid, want, 0))


def test_metrics_without_full_map_use_the_top_path_and_agree():
    rng = np.random.default_rng(3)
    x = np.round(rng.standard_normal((120, 4)), 1).astype(np.float32)  # rounded: tied scores
    labels = np.stack([rng.integers(0, 40, 120), rng.integers(0, 40, 120) // 10], 1)
    fast_metrics = ["recall@1", "recall@4", "r_precision", "map@r", "asi"]
    fast = evaluate_embeddings(x, labels, metrics=fast_metrics + [], k_values=(1, 4))
    full = evaluate_embeddings(x, labels, metrics=fast_metrics + ["map"], k_values=(1, 4))
    for scale in ("fine", "coarse", "mean"):
        for m in fast_metrics:
            assert fast[scale][m] == full[scale][m], (scale, m)
