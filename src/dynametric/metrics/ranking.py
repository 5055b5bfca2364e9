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


def metrics_from_sorted_ranks(
    ranks: torch.Tensor,
    relevant: torch.Tensor,
    *,
    k_values: tuple[int, ...] = (),
    metrics: tuple[str, ...] = RETRIEVAL_METRICS,
    asi_cutoff: int | None = None,
    harmonic: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-query metric values from candidate ranks sorted ascending along each row.

    ``ranks``: ``LongTensor[Q, U]``, 1-based ranks of some candidates of each query, ascending along the row
    (padding anywhere after the real entries, with ``relevant`` False there). ``relevant``: ``BoolTensor[Q, U]``,
    which of them are relevant at the scale being evaluated. Returns ``(R, values)``: ``R`` the number of relevant
    items per query (``LongTensor[Q]``) and ``values[name]`` a ``float64[Q]`` tensor (undefined where ``R == 0``,
    set to 0 there; the caller decides whether such queries are excluded or counted as zero).
    ``asi_cutoff=None`` means ``N = R_q``.
    """
    rel = relevant
    r_count = rel.sum(1)
    out: dict[str, torch.Tensor] = {}
    if ranks.shape[1] == 0:
        zeros = torch.zeros(ranks.shape[0], dtype=torch.float64)
        for k in k_values:
            out[f"recall@{k}"] = zeros.clone()
        for name in metrics:
            out[name] = zeros.clone()
        return r_count, out
    rk = ranks.to(torch.float64)
    big = torch.iinfo(torch.int64).max
    first = torch.where(rel, ranks, torch.full_like(ranks, big)).min(1).values
    for k in k_values:
        out[f"recall@{k}"] = (first <= k).to(torch.float64)
    if not metrics:
        return r_count, out
    j = torch.cumsum(rel, 1).to(torch.float64)  # j-th relevant item (1-based) at each relevant position
    r_f = r_count.to(torch.float64)
    denom = r_f.clamp_min(1.0)
    within_r = rel & (ranks <= r_count.unsqueeze(1))
    prec_at_hit = torch.where(rel, j / rk, torch.zeros_like(rk))
    if "r_precision" in metrics:
        out["r_precision"] = within_r.sum(1).to(torch.float64) / denom
    if "map@r" in metrics:
        out["map@r"] = torch.where(within_r, prec_at_hit, torch.zeros_like(rk)).sum(1) / denom
    if "map" in metrics:
        out["map"] = prec_at_hit.sum(1) / denom
    if "asi" in metrics:
        if harmonic is None:
            top = int(ranks.max().clamp_min(0)) if asi_cutoff is None else max(int(ranks.max()), asi_cutoff)
            harmonic = harmonic_numbers(max(top, int(r_count.max()) if r_count.numel() else 0, 1))
        if asi_cutoff is None:
            cut = r_count
            cut_f = denom
        else:
            cut = torch.full_like(r_count, asi_cutoff)
            cut_f = torch.full_like(r_f, float(asi_cutoff))
        within_n = rel & (ranks <= cut.unsqueeze(1))
        safe_rank = torch.where(within_n, ranks, torch.ones_like(ranks))
        terms = harmonic[cut].unsqueeze(1) - harmonic[safe_rank - 1]
        out["asi"] = torch.where(within_n, terms, torch.zeros_like(terms)).sum(1) / cut_f
    return r_count, out
