"""Retrieval metrics as functions of the ranks of a query's relevant items (pure tensor maths).

For a query ``q`` with candidate set ``G_q`` ranked best first, let ``rank_1 < rank_2 < ... < rank_R`` be the
1-based ranks of its ``R = R_q`` relevant items. Every retrieval metric of dynametric is a function of these ranks:

* ``recall@K``  = 1[rank_1 <= K]                                         (hit rate, DML "Recall@K")
* ``r_precision`` = |{j : rank_j <= R}| / R                              (P@R)
* ``map@r``     = (1/R) * sum_{j : rank_j <= R} j / rank_j                (MAP@R, Musgrave et al., ECCV 2020)
* ``map``       = (1/R) * sum_j j / rank_j                                (AP over the full ranking)
* ``asi``       = (1/N) * sum_{n <= N} hits(n) / n  with N = R (default) or a fixed int
                = (1/N) * sum_{j : rank_j <= N} (H_N - H_{rank_j - 1})    (H = harmonic numbers)
* ``precision@k`` = |{j : rank_j <= k}| / min(k, R)                       (open-metric-learning's precision@k)
* ``map@k``     = (1/min(k, R)) * sum_{j : rank_j <= k} j / rank_j        (open-metric-learning's map@k)

because ``hits(n) = |{j : rank_j <= n}|`` and ``sum_{n=r}^{N} 1/n = H_N - H_{r-1}``.

The functions here take *unordered* padded rank rows plus per-scale relevance flags, as the chunked engine
produces them, and return per-query values.
"""

from __future__ import annotations

import numpy as np
import torch

RETRIEVAL_METRICS = ("r_precision", "map@r", "map", "asi")
AT_K_FAMILIES = ("precision", "map")
"""Metrics with a cut-off ``k`` in their name (``precision@5``, ``map@10``), besides ``recall@k``."""


def at_k(name: str) -> tuple[str, int] | None:
    """``("precision", 5)`` for ``"precision@5"``, ``("map", 10)`` for ``"map@10"``; None for any other name."""
    family, _, tail = name.partition("@")
    if family in AT_K_FAMILIES and tail.isdigit() and int(tail) >= 1:
        return family, int(tail)
    return None


def max_rank_needed(k_values: tuple[int, ...], metrics: tuple[str, ...], asi_cutoff: int | None) -> int:
    """The largest rank a cut-off metric reads besides ``R_q``: max of the recall ks, the ``@k`` metrics' ks and the
    fixed ASI cut-off (at least 1)."""
    ks = [k for k in k_values] + [p[1] for p in map(at_k, metrics) if p is not None]
    return max([1, asi_cutoff or 0, *ks])


def harmonic_numbers(n: int) -> torch.Tensor:
    """``H[0..n]`` in float64 with ``H[0] = 0`` and ``H[k] = sum_{i<=k} 1/i``."""
    h = torch.zeros(n + 1, dtype=torch.float64)
    if n > 0:
        h[1:] = torch.cumsum(1.0 / torch.arange(1, n + 1, dtype=torch.float64), 0)
    return h


def metrics_from_flat_ranks(
    rows: torch.Tensor | np.ndarray,
    ranks: torch.Tensor | np.ndarray,
    num_rows: int,
    *,
    k_values: tuple[int, ...] = (),
    metrics: tuple[str, ...] = RETRIEVAL_METRICS,
    asi_cutoff: int | None = None,
    harmonic: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-query metric values from the relevant items' ranks, flattened and sorted by ``(row, rank)``.

    ``rows``/``ranks``: ``int64[M]``, one entry per relevant item, grouped by query row (ascending) and, within a
    row, by ascending 1-based rank. Returns ``(R[num_rows], {name: float64[num_rows]})`` as tensors; values are 0
    where ``R == 0`` (undefined there; the caller excludes such queries or counts them as zero).
    ``asi_cutoff=None`` means ``N = R_q``. (Vectorised numpy: segment sums by ``bincount``, no per-query loop.)
    """
    rows = np.asarray(rows, dtype=np.int64)
    rk = np.asarray(ranks, dtype=np.int64)
    r_count = np.bincount(rows, minlength=num_rows)
    out: dict[str, torch.Tensor] = {}
    start = np.cumsum(r_count) - r_count
    has = r_count > 0
    first = np.full(num_rows, np.iinfo(np.int64).max, dtype=np.int64)
    first[has] = rk[start[has]]
    for k in k_values:
        out[f"recall@{k}"] = torch.from_numpy((first <= k).astype(np.float64))
    if metrics:
        denom = np.maximum(r_count, 1).astype(np.float64)
        seg = start[has]

        def per_row(weights: np.ndarray) -> np.ndarray:
            # segment sums over each row's contiguous run (a row's sum never depends on the other rows)
            total = np.zeros(num_rows, dtype=np.float64)
            if weights.size:
                total[has] = np.add.reduceat(weights, seg)
            return total

        r_row = np.repeat(r_count, r_count)
        j = np.arange(1, rows.size + 1, dtype=np.int64)
        j -= np.repeat(start, r_count)
        prec = j / rk
        within_r = rk <= r_row  # a prefix of each row: ranks ascend and rank_j >= j

        def count_per_row(mask: np.ndarray) -> np.ndarray:
            total = np.zeros(num_rows, dtype=np.int64)
            if mask.size:
                total[has] = np.add.reduceat(mask.view(np.int8), seg, dtype=np.int64)
            return total

        if "r_precision" in metrics:
            out["r_precision"] = torch.from_numpy(count_per_row(within_r) / denom)
        if "map@r" in metrics:
            out["map@r"] = torch.from_numpy(per_row(prec * within_r) / denom)
        if "map" in metrics:
            out["map"] = torch.from_numpy(per_row(prec) / denom)
        if "asi" in metrics:
            top = max(int(rk.max()) if rk.size else 0, asi_cutoff or 0, int(r_count.max()) if num_rows else 0, 1)
            h = harmonic.numpy() if harmonic is not None and harmonic.numel() > top else \
                harmonic_numbers(top).numpy()
            # sum_{rank_j <= N} (H_N - H_{rank_j - 1}) = |{j : rank_j <= N}| * H_N - sum_{rank_j <= N} H_{rank_j - 1}
            inside = within_r if asi_cutoff is None else rk <= asi_cutoff
            cut = r_count if asi_cutoff is None else np.full(num_rows, asi_cutoff, dtype=np.int64)
            h_prev = np.concatenate(([0.0], h[:-1]))  # h_prev[r] = H_{r-1}
            h_before = h_prev[rk]
            sums = count_per_row(inside) * h[cut] - per_row(h_before * inside)
            cut_den = denom if asi_cutoff is None else np.full(num_rows, float(asi_cutoff))
            out["asi"] = torch.from_numpy(sums / cut_den)
        for name in metrics:
            spec = at_k(name)
            if spec is None:
                continue
            family, k = spec
            top_k = rk <= k  # a prefix of each row
            den = np.maximum(np.minimum(r_count, k), 1).astype(np.float64)
            if family == "precision":
                out[name] = torch.from_numpy(count_per_row(top_k) / den)
            else:
                out[name] = torch.from_numpy(per_row(prec * top_k) / den)
    return torch.from_numpy(r_count), out


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
