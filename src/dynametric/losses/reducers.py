"""Reductions of per-element losses to a scalar (the semantics of pytorch-metric-learning's reducers).

* ``mean``: plain mean (PML ``MeanReducer``).
* ``avg_nonzero``: mean over strictly positive entries, zero if there are none (PML ``AvgNonZeroReducer``).
* ``divisor``: ``sum / divisor``, zero if the divisor is 0 (PML ``DivisorReducer``).

Zero results stay connected to the graph through ``like`` so backward always works.
"""

from __future__ import annotations

import torch


def graph_zero(like: torch.Tensor) -> torch.Tensor:
    """A scalar zero connected to ``like``'s graph (its gradient is zero, never NaN)."""
    return (like * 0.0).sum()


def mean_reduce(losses: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``mean(losses)``; zero for an empty tensor."""
    if losses.numel() == 0:
        return graph_zero(like)
    return losses.mean()


def avg_nonzero_reduce(losses: torch.Tensor, like: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``sum(l) / #{l > 0}`` over entries (where ``mask`` is true); zero when no entry is positive."""
    positive = losses > 0
    if mask is not None:
        positive = positive & mask
    count = positive.sum()
    if int(count) == 0:
        return graph_zero(like)
    return torch.where(positive, losses, torch.zeros_like(losses)).sum() / count


def divisor_reduce(losses: torch.Tensor, divisor: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """``sum(losses) / divisor``; zero when the divisor is 0."""
    if int(divisor) == 0:
        return graph_zero(like)
    return losses.sum() / divisor


def masked_logsumexp(x: torch.Tensor, mask: torch.Tensor, dim: int = 1, add_one: bool = False) -> torch.Tensor:
    """``log(sum_{mask} exp(x))`` along ``dim`` (``log(1 + sum ...)`` with ``add_one``); rows with nothing kept give
    0, as pytorch-metric-learning. Masked entries get no gradient and never produce NaN."""
    filled = x.masked_fill(~mask, torch.finfo(x.dtype).min)
    if add_one:
        shape = list(filled.shape)
        shape[dim] = 1
        filled = torch.cat([filled, torch.zeros(shape, dtype=x.dtype, device=x.device)], dim=dim)
    out = torch.logsumexp(filled, dim=dim)
    return torch.where(mask.any(dim), out, torch.zeros_like(out))


def grouped_logsumexp(values: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
    """``out[g] = log(sum_{i: groups[i] = g} exp(values[i]))``, ``-inf`` for empty groups (vectorised scatter)."""
    neg_inf = torch.full((num_groups,), float("-inf"), dtype=values.dtype, device=values.device)
    if values.numel() == 0:
        return neg_inf
    gmax = neg_inf.scatter_reduce(0, groups, values.detach(), reduce="amax", include_self=True)
    shift = torch.where(torch.isfinite(gmax), gmax, torch.zeros_like(gmax))
    sums = torch.zeros(num_groups, dtype=values.dtype, device=values.device).index_add(
        0, groups, torch.exp(values - shift[groups])
    )
    return torch.log(sums) + shift
