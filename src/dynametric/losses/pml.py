"""Any pytorch-metric-learning (PML) loss or miner on dynametric's ``[B, S]`` labels.

dynametric implements the losses and miners it needs natively (same names, arguments and values as PML). For the
rest of PML's catalogue this module wraps PML's own objects, so every one of them becomes hierarchy-aware without
a port:

* :class:`PMLLoss` ``(loss, scale=0)``: a PML loss object applied to label column ``scale`` of ``[B, S]`` labels
  (``[B]`` labels work too). It is a :class:`~dynametric.losses.MetricLoss`, so it goes wherever a dynametric loss
  goes (``MultiScaleLoss``, the engine; PML parameters such as proxies are listed by ``loss_parameters()``).
* :class:`PMLMiner` ``(miner, scale=0)``: the same for a PML miner.
* :func:`pml_loss` ``(name_or_loss, scale=0, weights=None, num_classes=None, **kwargs)``: build from a class
  name (``"ArcFaceLoss"``), a class or an object; with ``weights=[w_0, w_1, ...]`` one PML loss per scale, summed
  with those weights (a :class:`~dynametric.losses.MultiScaleLoss`); ``num_classes`` may then be a list with one
  entry per scale, for proxy and classification losses.
* :func:`pml_miner` ``(name_or_miner, scale=0, **kwargs)``.
* Configs: ``loss: {name: "pml:ArcFaceLoss", kwargs: {...}}`` and ``miner: {name: "pml:BatchEasyHardMiner"}``
  (the registries :data:`dynametric.losses.LOSSES` / :data:`dynametric.miners.MINERS` resolve the ``pml:``
  prefix through :func:`pml_registry_entry`). The label column is the keyword ``label_scale`` (PML's ``scale``
  means the logit scale of ArcFace/CosFace); ``num_classes`` and ``embedding_size`` are filled by the engine as
  for native losses; ``multiscale: true`` gives one PML loss per scale. A ``distance`` given by name in a config
  becomes PML's own distance object.

PML is an optional dependency: it is imported only when one of these is used (a :class:`ConfigError` says how to
install it otherwise).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dynametric.errors import ConfigError, InputError
from dynametric.losses.base import IndicesTuple, MetricLoss
from dynametric.miners.pml import PMLMiner, pml_miner
from dynametric.pml import PML_PREFIX, PMLAwareRegistry, _instantiate, pml_class, to_pml_distance
from dynametric.pml import pml_registry_entry as _registry_entry

__all__ = ["PML_PREFIX", "PMLAwareRegistry", "PMLLoss", "PMLMiner", "pml_class", "pml_loss", "pml_miner",
           "pml_registry_entry", "to_pml_distance"]


class PMLLoss(MetricLoss):
    """A pytorch-metric-learning loss object applied to label column ``scale`` (see the module docstring)."""

    def __init__(self, loss: nn.Module, scale: int = 0) -> None:
        super().__init__(scale)
        if not isinstance(loss, nn.Module) or not callable(loss):
            raise ConfigError(f"PMLLoss wraps a pytorch-metric-learning loss object, got {loss!r}", key="loss")
        if isinstance(loss, MetricLoss):
            raise ConfigError(f"{type(loss).__name__} is a dynametric loss already; use it directly", key="loss")
        self.loss: Any = loss  # a PML loss object (PML is untyped)

    def compute_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: IndicesTuple | None,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        return self.loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        if not hasattr(self.loss, "get_logits"):
            raise InputError(f"{type(self.loss).__name__} has no get_logits()", key="loss")
        return self.loss.get_logits(embeddings)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def pml_loss(
    loss: str | type | nn.Module,
    scale: int = 0,
    weights: Sequence[float] | None = None,
    num_classes: int | Sequence[int] | None = None,
    chunks: Any = None,
    miners: Any = None,
    **kwargs: Any,
) -> MetricLoss:
    """A PML loss on dynametric labels: one scale (``scale``) or, with ``weights``, the weighted sum over scales
    ``sum_s weights[s] * L_s(embeddings, labels[:, s])`` with one PML loss per scale (``num_classes`` may be a
    list, one per scale; ``chunks``/``miners`` as in :class:`~dynametric.losses.MultiScaleLoss`)."""
    if weights is None:
        if isinstance(num_classes, Sequence):
            raise ConfigError("a list of num_classes needs weights (one per scale)", key="num_classes")
        kw = dict(kwargs) if num_classes is None else {**kwargs, "num_classes": num_classes}
        if chunks is not None or miners is not None:
            raise ConfigError("chunks/miners are per-scale options: give weights", key="weights")
        return PMLLoss(_instantiate("losses", loss, kw), scale=scale)
    from dynametric.losses.multiscale import MultiScaleLoss

    n = len(weights)
    if isinstance(num_classes, Sequence) and len(num_classes) != n:
        raise ConfigError(f"{len(num_classes)} num_classes for {n} scales", key="num_classes")

    def per_scale(s: int) -> PMLLoss:
        kw = dict(kwargs)
        if num_classes is not None:
            kw["num_classes"] = num_classes[s] if isinstance(num_classes, Sequence) else num_classes
        return PMLLoss(_instantiate("losses", loss, kw))

    if isinstance(loss, nn.Module) and any(True for _ in loss.parameters()):
        raise ConfigError(f"{type(loss).__name__} has parameters; give its class or name so that every scale gets "
                          "its own", key="loss")

    return MultiScaleLoss(per_scale, weights=list(weights), num_scales=n, chunks=chunks, miners=miners)


def pml_registry_entry(kind: str, name: str) -> Callable[..., Any] | None:
    """The ``LOSSES`` / ``MINERS`` factory of a ``pml:<ClassName>`` name (``kind``: ``losses`` or ``miners``);
    see :func:`dynametric.pml.pml_registry_entry`."""
    return _registry_entry(kind, name, PMLLoss if kind == "losses" else PMLMiner)
