"""Retrieval metrics as functions of the ranks of a query's relevant items (pure tensor maths).

For a query ``q`` with candidate set ``G_q`` ranked best first, let ``rank_1 < rank_2 < ... < rank_R`` be the
1-based ranks of its ``R = R_q`` relevant items. Every retrieval metric of dynametric is a function of these ranks:

* ``recall@K``  = 1[rank_1 <= K]                                         (hit rate, DML "Recall@K")
* ``r_precision`` = |{j : rank_j <= R}| / R                              (P@R)
* ``map@r``     = (1/R) * sum_{j : rank_j <= R} j / rank_j                (MAP@R, Musgrave et al., ECCV 2020)
* ``map``       = (1/R) * sum_j j / rank_j                                (AP over the full ranking)
* ``asi``       = (1/N) * sum_{n <= N} hits(n) / n  with N = R (default) or a fixed int
                = (1/N) * sum_{j : rank_j <= N} (H_N - H_{rank_j - 1})    (H = harmonic numbers)

because ``hits(n) = |{j : rank_j <= n}|`` and ``sum_{n=r}^{N} 1/n = H_N - H_{r-1}``.

The functions here take *unordered* padded rank rows plus per-scale relevance flags, as the chunked engine
produces them, and return per-query values.
"""

from __future__ import annotations

import torch

RETRIEVAL_METRICS = ("r_precision", "map@r", "map", "asi")


def harmonic_numbers(n: int) -> torch.Tensor:
    """``H[0..n]`` in float64 with ``H[0] = 0`` and ``H[k] = sum_{i<=k} 1/i``."""
    h = torch.zeros(n + 1, dtype=torch.float64)
    if n > 0:
        h[1:] = torch.cumsum(1.0 / torch.arange(1, n + 1, dtype=torch.float64), 0)
    return h


def metrics_from_flat_ranks(
    rows: torch.Tensor,
    ranks: torch.Tensor,
    num_rows: int,
    *,
    k_values: tuple[int, ...] = (),
    metrics: tuple[str, ...] = RETRIEVAL_METRICS,
    asi_cutoff: int | None = None,
    harmonic: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-query metric values from the relevant items' ranks, flattened and sorted by ``(row, rank)``.

    ``rows``/``ranks``: ``LongTensor[M]``, one entry per relevant item, grouped by query row (ascending) and, within
    a row, by ascending 1-based rank. Returns ``(R[num_rows], {name: float64[num_rows]})``; values are 0 where
    ``R == 0`` (undefined there; the caller excludes such queries or counts them as zero).
    ``asi_cutoff=None`` means ``N = R_q``.
    """
    r_count = torch.bincount(rows, minlength=num_rows)
    out: dict[str, torch.Tensor] = {}
    start = torch.cumsum(r_count, 0) - r_count
    has = r_count > 0
    first = torch.full((num_rows,), torch.iinfo(torch.int64).max, dtype=torch.long)
    if rows.numel():
        first[has] = ranks[start[has]]
    for k in k_values:
        out[f"recall@{k}"] = (first <= k).to(torch.float64)
    if not metrics:
        return r_count, out
    denom = r_count.to(torch.float64).clamp_min(1.0)
    rk = ranks.to(torch.float64)
    j = (torch.arange(rows.numel()) - start[rows] + 1).to(torch.float64)
    r_row = r_count[rows]
    within_r = (ranks <= r_row).to(torch.float64)
    prec = j / rk

    def per_row(weights: torch.Tensor) -> torch.Tensor:
        return torch.bincount(rows, weights=weights, minlength=num_rows).to(torch.float64)

    if "r_precision" in metrics:
        out["r_precision"] = per_row(within_r) / denom
    if "map@r" in metrics:
        out["map@r"] = per_row(prec * within_r) / denom
    if "map" in metrics:
        out["map"] = per_row(prec) / denom
    if "asi" in metrics:
        top = int(ranks.max()) if ranks.numel() else 0
        if harmonic is None or harmonic.numel() <= max(top, asi_cutoff or 0):
            harmonic = harmonic_numbers(max(top, asi_cutoff or 0, int(r_count.max()) if num_rows else 0, 1))
        cut = r_row if asi_cutoff is None else torch.full_like(r_row, asi_cutoff)
        inside = ranks <= cut
        safe = torch.where(inside, ranks, torch.ones_like(ranks))
        terms = (harmonic[cut] - harmonic[safe - 1]) * inside.to(torch.float64)
        cut_den = denom if asi_cutoff is None else torch.full_like(denom, float(asi_cutoff))
        out["asi"] = per_row(terms) / cut_den
    return r_count, out


def metrics_from_sorted_ranks(
    ranks: torch.Tensor,
    relevant: torch.Tensor,
    *,
    k_values: tuple[int, ...] = (),
    metrics: tuple[str, ...] = RETRIEVAL_METRICS,
    asi_cutoff: int | None = None,
    harmonic: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Padded form of :func:`metrics_from_flat_ranks`.

    ``ranks``: ``LongTensor[Q, U]`` of 1-based candidate ranks; ``relevant``: ``BoolTensor[Q, U]`` marking the
    relevant ones (padding and non-relevant slots False). Entries need not be sorted.
    """
    q, _ = ranks.shape
    rows, pos = relevant.nonzero(as_tuple=True)
    rk = ranks[rows, pos]
    if rk.numel():
        base = int(rk.max()) + 1
        key = torch.sort(rows * base + rk).values
        rows, rk = key // base, key % base
    return metrics_from_flat_ranks(rows, rk, q, k_values=k_values, metrics=metrics, asi_cutoff=asi_cutoff,
                                   harmonic=harmonic)
