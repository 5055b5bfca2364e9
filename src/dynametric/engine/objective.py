"""The training objective as a pure function: embeddings + labels -> weighted sum of (miner, loss) terms.

An :class:`Objective` is one term ``weight * loss(emb_head, labels, miner(emb_head, labels))``. A model with
several heads (Sharing Matters: ``{"class": ..., "shared": ...}``) gets one term per head; a plain model has
one term with ``head=None``. Losses receive the full ``[B, S]`` label matrix and pick their scale themselves
(``MetricLoss.scale``) or use all of them (``uses_all_scales``: CSL, ``MultiScaleLoss``).

A term's miner mines the whole batch once, on its own label column, and its output goes to the loss. A loss that
reads every label column cannot take that output (mined at one scale, it would be wrong at the others), so an
:class:`Objective` refuses the pair when it is built: a ``MultiScaleLoss`` mines per scale itself
(``MultiScaleLoss(..., miners=miner)``: each scale on its chunk with its label column; the engine's builders give
it the configured miner that way for ``multiscale: true``), and :func:`term_miners` names the miners of a term
either way.

A loss may name parts of its value (``loss.loss_parts()``, :meth:`dynametric.losses.base.MetricLoss.loss_parts`:
CSL's per-scale terms, ``MultiScaleLoss``'s weighted per-scale losses, PDDM's ``E_m`` / ``E_e`` and its quadruplet
count); :func:`compute_objective` collects them as ``<term name>/<part>``, and the training modules log them as
``train/<term name>/<part>`` next to the term ``train/<term name>``. The engine reads no loss by name: any loss with
the hook gets its parts logged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from dynametric.errors import ConfigError, InputError

Gather = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Objective:
    """One loss term. ``head`` names the model output it applies to (``None``: the single output)."""

    loss: nn.Module
    miner: nn.Module | None = None
    head: str | None = None
    weight: float = 1.0
    name: str = "loss"
    key: str | None = None
    """The config key of the term (``loss``, ``extra_losses[0]``), named by the errors of its loss and miner
    (``None``: a term built in Python, named by ``name``)."""

    def __post_init__(self) -> None:
        refusal = None if self.miner is None else whole_batch_miner_refusal(self.loss)
        if refusal is not None:
            raise ConfigError(refusal, key="miner")


def whole_batch_miner_refusal(
    loss: object,
    name: str | None = None,
    *,
    per_scale: str = "give the miner to the loss instead (MultiScaleLoss(..., miners=miner) mines each scale on its "
                     "own labels)",
    remove: str = "remove the miner",
) -> str | None:
    """Why one whole-batch miner output cannot go to ``loss`` (an object or its class), or ``None`` when it can: a
    loss that reads every label column (``uses_all_scales``: CSL, ``MultiScaleLoss``) would get pairs mined at a
    single scale. The advice is ``per_scale`` for a loss that mines each scale itself (``scale_miners``), else
    ``remove``; ``name`` is the loss's name in the message (default its class name). The one condition and wording
    of :class:`Objective` (Python callers) and of the engine's builders (which name the config keys instead)."""
    if not getattr(loss, "uses_all_scales", False):
        return None
    if name is None:
        name = loss.__name__ if isinstance(loss, type) else type(loss).__name__
    how = per_scale if hasattr(loss, "scale_miners") else remove
    return (f"{name} reads every label column; one miner output for the whole batch would be mined at a single "
            f"scale: {how}")


def term_miners(obj: Objective) -> str | None:
    """The miner(s) of a term, for display: the class name of its miner, ``"<Class> per scale"`` for a loss that
    mines each scale itself (``MultiScaleLoss(..., miners=...)``: several classes joined by ``/``), ``None`` for
    none."""
    if obj.miner is not None:
        return type(obj.miner).__name__
    per_scale = getattr(obj.loss, "scale_miners", None)
    if not per_scale or all(m is None for m in per_scale):
        return None
    names = list(dict.fromkeys(type(m).__name__ if m is not None else "none" for m in per_scale))
    return f"{'/'.join(names)} per scale"


def select_head(outputs: torch.Tensor | Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
                head: str | int | None) -> torch.Tensor:
    """Pick one embedding from a model output (tensor, dict of heads or tuple of heads).

    ``head="concat"`` concatenates all heads along the feature axis (Sharing Matters evaluates it).
    """
    if isinstance(outputs, torch.Tensor):
        if head not in (None, 0, "concat"):
            raise ConfigError(f"the model has a single output, but head {head!r} was requested (expected no head, "
                              "or 'concat')", key="head")
        return outputs
    items = list(outputs.values()) if isinstance(outputs, Mapping) else list(outputs)
    if head == "concat":
        return torch.cat(items, dim=1)
    if head is None:
        if len(items) == 1:
            return items[0]
        names = list(outputs.keys()) if isinstance(outputs, Mapping) else list(range(len(items)))
        raise ConfigError(f"the model has several heads {names}; name one (or 'concat')", key="head")
    if isinstance(outputs, Mapping):
        if head not in outputs:
            raise ConfigError(f"unknown head {head!r}; expected one of {[*outputs.keys(), 'concat']} (the model's "
                              "heads, or 'concat' for all of them)", key="head")
        return outputs[head]  # type: ignore[index]
    if not isinstance(head, int) or not 0 <= head < len(items):
        raise ConfigError(f"head {head!r} out of range for {len(items)} heads", key="head")
    return items[head]


def loss_parts(loss: object) -> dict[str, torch.Tensor]:
    """The named parts of ``loss``'s last value (its ``loss_parts()``; ``{}`` for a loss without the hook, e.g. a
    pytorch-metric-learning loss), each detached."""
    get = getattr(loss, "loss_parts", None)
    if not callable(get):
        return {}
    return {str(k): v.detach() if isinstance(v, torch.Tensor) else v for k, v in get().items()}


def miner_output_error(obj: Objective, exc: InputError) -> ConfigError:
    """The loss's refusal of the indices the term's miner returned (:func:`dynametric.tuples.check_indices_tuple`:
    out of the batch's range, not 1-D integer tensors, unequal lengths), keyed by the miner's config key
    (``miner.name``, ``extra_losses[i].miner.name``) and naming the miner's class with its module: a miner written
    by a user, or one that replaced a registered name."""
    miner = type(obj.miner)
    key = None if obj.key is None else ("miner.name" if obj.key == "loss" else f"{obj.key}.miner.name")
    return ConfigError(f"miner {miner.__name__} ({miner.__module__}.{miner.__qualname__}) of loss term {obj.name!r} "
                       f"returned indices the loss cannot take: {exc.message}", key=key)


def check_loss_value(obj: Objective, value: object) -> None:
    """A :class:`ConfigError` keyed by the term's ``<key>.name`` when its loss returned something other than one
    value (a tensor of one element; a 0-dim tensor is what every loss of dynametric returns): a loss written by a
    user that returns a per-sample vector would otherwise train on its sum's gradient but stop at the logging of
    the term (Lightning: ``must have a single element``). The shape is host metadata: no read of the value."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return
    what = f"a tensor of shape {list(value.shape)}" if isinstance(value, torch.Tensor) else \
        f"a {type(value).__name__}"
    key = f"{obj.key}.name" if obj.key is not None else None
    raise ConfigError(f"loss term {obj.name!r} ({type(obj.loss).__name__}) returned {what}; expected a single value "
                      "(0-dim tensor)", key=key)


def compute_objective(
    outputs: torch.Tensor | Mapping[str, torch.Tensor],
    labels: torch.Tensor,
    objectives: Sequence[Objective],
    gather: Gather | None = None,
    parts: dict[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return ``(sum_i w_i * L_i, {name_i: L_i detached})``.

    ``gather`` (e.g. :func:`dynametric.engine.distributed.all_gather_with_grad`) is applied to each head's
    embeddings and to the labels first, so losses and miners see the global batch under DDP.

    ``parts``: a dict that receives the named parts of every term whose loss has them (:func:`loss_parts`), as
    ``{"<name_i>/<part>": detached tensor}``; read right after each loss call (no host read).
    """
    if not objectives:
        raise ConfigError("no loss configured", key="loss")
    if gather is not None:
        labels = gather(labels)
    total: torch.Tensor | None = None
    terms: dict[str, torch.Tensor] = {}
    gathered: dict[object, torch.Tensor] = {}
    for obj in objectives:
        if obj.head not in gathered:
            emb = select_head(outputs, obj.head)
            gathered[obj.head] = gather(emb) if gather is not None else emb
        emb = gathered[obj.head]
        indices = obj.miner(emb, labels) if obj.miner is not None else None
        try:
            value = obj.loss(emb, labels, indices) if indices is not None else obj.loss(emb, labels)
        except InputError as exc:  # the loss's check of the miner's output: the miner is named, not the loss's key
            if obj.miner is None or exc.key != "indices_tuple" or isinstance(exc, ConfigError):
                raise
            raise miner_output_error(obj, exc) from None
        check_loss_value(obj, value)
        terms[obj.name] = value.detach()
        if parts is not None:
            parts.update((f"{obj.name}/{k}", v) for k, v in loss_parts(obj.loss).items())
        weighted = value * obj.weight
        total = weighted if total is None else total + weighted
    assert total is not None
    return total, terms
