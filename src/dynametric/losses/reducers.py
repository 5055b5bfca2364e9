"""Reductions of per-element losses to a scalar (the semantics of pytorch-metric-learning's reducers).

* ``mean``: plain mean (PML ``MeanReducer``).
* ``avg_nonzero``: mean over strictly positive entries, zero if there are none (PML ``AvgNonZeroReducer``).
* ``divisor``: ``sum / divisor``, zero if the divisor is 0 (PML ``DivisorReducer``).

Zero results stay connected to the graph through ``like`` so backward always works. A loss given ``reducer=``
passes as the reducer's ``embeddings`` its embeddings plus a zero connected to its ``ref_emb`` and learnable
parameters (:meth:`dynametric.losses.MetricLoss.forward`), so a reducer's zero reaches those too. No reduction
reads a count back to the host (a synchronisation on an accelerator): "zero if there is nothing to average" is a
``torch.where`` on the device, whose other branch divides by a count clamped to at least 1, so neither the value nor
the gradient is ever NaN.
"""

from __future__ import annotations

import sys

import torch

from dynametric.errors import ConfigError, InputError
from dynametric.pml import ReducerObject


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
    total = torch.where(positive, losses, torch.zeros_like(losses)).sum()
    return torch.where(count > 0, total / count.clamp_min(1), graph_zero(like))


def divisor_reduce(losses: torch.Tensor, divisor: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """``sum(losses) / divisor``; zero when the divisor is 0 (``int(divisor) == 0``: a float divisor in ``(-1, 1)``
    too). A tensor divisor is not read to the host: both cases are computed and one is picked on the device."""
    if not isinstance(divisor, torch.Tensor):
        if int(divisor) == 0:
            return graph_zero(like)
        return losses.sum() / divisor
    zero = divisor.abs() < 1 if divisor.is_floating_point() else divisor == 0
    safe = torch.where(zero, torch.ones_like(divisor), divisor)
    return torch.where(zero, graph_zero(like), losses.sum() / safe)


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


# ------------------------------------------------------------------------------------------ reducer objects
# A loss given ``reducer=`` returns ``reducer(loss_dict, embeddings, labels)`` instead of its built-in reduction.
# ``loss_dict`` maps each sub-loss name to ``{"losses": tensor | 0, "indices": ..., "reduction_type": ...}`` with
# ``reduction_type`` one of ``element`` (indices: the row of each loss), ``pos_pair`` / ``neg_pair`` (indices
# ``(anchors, others)``), ``triplet`` (``(a, p, n)``) or ``already_reduced`` (a scalar), and for the divisor
# reduction a ``divisor`` entry: the protocol of pytorch-metric-learning's reducers, so theirs and these are
# interchangeable.

REDUCTION_TYPES = ("element", "pos_pair", "neg_pair", "triplet", "already_reduced")


def zero_entry() -> dict:
    """A sub-loss that is exactly zero (PML's ``zero_loss``)."""
    return {"losses": 0, "indices": None, "reduction_type": "already_reduced"}


def is_zero_losses(losses) -> bool:
    return not isinstance(losses, torch.Tensor) and losses == 0


class Reducer(torch.nn.Module):
    """Base class: reduces a one-entry ``loss_dict`` to a scalar (see the protocol above). A subclass that takes the
    whole multi-entry dictionary itself sets ``whole_dict = True`` (:func:`apply_reducer` then hands it all)."""

    whole_dict: bool = False

    def forward(self, loss_dict: dict, embeddings: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        if len(loss_dict) != 1:
            raise InputError(f"{type(self).__name__} reduces one sub-loss, got {sorted(loss_dict)}; "
                             "wrap it in MultipleReducers", key="reducer")
        (info,) = loss_dict.values()
        losses, rtype = info["losses"], info["reduction_type"]
        if rtype not in REDUCTION_TYPES:
            raise InputError(f"unknown reduction_type {rtype!r}; expected one of {REDUCTION_TYPES}", key="reducer")
        if is_zero_losses(losses):
            return graph_zero(embeddings)
        if rtype == "already_reduced":
            return losses.reshape(()) if losses.numel() == 1 else losses
        return self.reduce(losses, info, embeddings, labels)

    def reduce(self, losses: torch.Tensor, info: dict, embeddings: torch.Tensor,
               labels: torch.Tensor | None) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError


ReducerObject.register(Reducer)  # PML argument checks accept dynametric's reducers (dynametric.pml sits below)


class MeanReducer(Reducer):
    """Mean of all per-element losses."""

    def reduce(self, losses, info, embeddings, labels):
        return mean_reduce(losses, embeddings)


class SumReducer(Reducer):
    """Sum of all per-element losses."""

    def reduce(self, losses, info, embeddings, labels):
        return losses.sum() if losses.numel() else graph_zero(embeddings)


class ThresholdReducer(Reducer):
    """Mean over the losses with ``low < loss < high`` (either bound may be omitted); zero if none is left."""

    def __init__(self, low: float | None = None, high: float | None = None) -> None:
        super().__init__()
        if low is None and high is None:
            raise ConfigError("ThresholdReducer needs low or high", key="reducer")
        self.low, self.high = low, high

    def reduce(self, losses, info, embeddings, labels):
        if self.low is not None:
            losses = losses[losses > self.low]
        if self.high is not None:
            losses = losses[losses < self.high]
        return losses.mean() if losses.numel() else graph_zero(embeddings)


class AvgNonZeroReducer(ThresholdReducer):
    """Mean over the strictly positive losses (zero if there are none)."""

    def __init__(self) -> None:
        super().__init__(low=0)


class DivisorReducer(Reducer):
    """``sum(losses) / info["divisor"]`` (zero when the divisor is 0)."""

    def reduce(self, losses, info, embeddings, labels):
        if "divisor" not in info:
            raise InputError("DivisorReducer needs a 'divisor' in the loss dict (this loss does not give one)",
                             key="reducer")
        return divisor_reduce(losses, info["divisor"], embeddings)


class ClassWeightedReducer(Reducer):
    """Mean of ``loss * weights[label of its anchor]`` (the anchor of a pair or triplet, the row of an element)."""

    def __init__(self, weights) -> None:
        super().__init__()
        self.weights = torch.as_tensor(weights)

    def reduce(self, losses, info, embeddings, labels):
        if labels is None:
            raise InputError("ClassWeightedReducer needs labels", key="reducer")
        idx = info["indices"] if info["reduction_type"] == "element" else info["indices"][0]
        w = self.weights.to(device=losses.device, dtype=losses.dtype)
        lab = labels[idx]
        bad = (lab < 0) | (lab >= w.shape[0])
        if bool(bad.any()):  # a negative label would take weights[-1] silently, a large one an IndexError
            raise InputError(f"label {int(lab[bad][0])} has no class weight: ClassWeightedReducer has {w.shape[0]} "
                             f"weights, so labels must lie in [0, {w.shape[0] - 1}]", key="labels")
        return (losses * w[lab]).mean()


class DoNothingReducer(Reducer):
    """Returns the loss dictionary itself (for inspecting per-element losses)."""

    whole_dict = True

    def forward(self, loss_dict, embeddings, labels):
        return loss_dict


class MultipleReducers(Reducer):
    """One reducer per sub-loss name (``default_reducer``, a :class:`MeanReducer` unless given, for the others);
    the sub-loss values are summed."""

    whole_dict = True

    def __init__(self, reducers: dict, default_reducer=None) -> None:
        super().__init__()
        self.reducers = torch.nn.ModuleDict(reducers)
        self.default_reducer = MeanReducer() if default_reducer is None else default_reducer

    def forward(self, loss_dict, embeddings, labels):
        total = graph_zero(embeddings)
        for name, info in loss_dict.items():
            reducer = self.reducers[name] if name in self.reducers else self.default_reducer
            total = total + reducer({name: info}, embeddings, labels)
        return total


#: pytorch-metric-learning's reducer classes that take the whole multi-entry dictionary (subclasses included).
_PML_WHOLE_DICT_REDUCERS = ("MultipleReducers", "DoNothingReducer")


def takes_whole_dict(reducer) -> bool:
    """Whether ``reducer`` reduces a multi-entry loss dictionary itself: a dynametric reducer declaring
    ``whole_dict`` (``MultipleReducers``, ``DoNothingReducer`` and their subclasses), or an instance of PML's
    ``MultipleReducers`` / ``DoNothingReducer`` (or a subclass). PML is not imported for the check: a PML reducer
    object exists only once PML is."""
    if isinstance(reducer, Reducer):
        return bool(reducer.whole_dict)
    pml = sys.modules.get("pytorch_metric_learning.reducers")
    if pml is None:
        return False
    classes = tuple(c for c in (getattr(pml, n, None) for n in _PML_WHOLE_DICT_REDUCERS) if isinstance(c, type))
    return isinstance(reducer, classes)


def check_reducer(reducer, key: str = "reducer"):
    """``reducer`` if it can reduce a loss dictionary (a dynametric or pytorch-metric-learning reducer, or any
    callable ``(loss_dict, embeddings, labels)``); ``None`` passes."""
    if reducer is not None and not callable(reducer):
        raise ConfigError(f"{key} must be a reducer object (e.g. MeanReducer()), got {reducer!r}", key=key)
    return reducer


def apply_reducer(reducer, loss_dict: dict, embeddings: torch.Tensor, labels: torch.Tensor | None):
    """Reduce ``loss_dict`` as pytorch-metric-learning does: a whole-dictionary reducer (:func:`takes_whole_dict`:
    ``MultipleReducers``, ``DoNothingReducer``, ours or PML's, and their subclasses) gets all of it; any other
    reducer reduces each sub-loss separately and the results are summed."""
    if takes_whole_dict(reducer) or len(loss_dict) == 1:
        return reducer(loss_dict, embeddings, labels)
    total = None
    for name, info in loss_dict.items():
        value = reducer({name: info}, embeddings, labels)
        value = value.reshape(()) if value.numel() == 1 else value  # a [1]-shaped already-reduced term
        total = value if total is None else total + value
    return total
