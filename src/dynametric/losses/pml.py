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

import importlib
import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dynametric import distances as _distances
from dynametric.errors import ConfigError, InputError
from dynametric.labels import as_label_matrix
from dynametric.losses.base import IndicesTuple, MetricLoss, Miner

#: Config names with this prefix are looked up in pytorch-metric-learning.
PML_PREFIX = "pml:"


def _pml_module(kind: str):
    try:
        return importlib.import_module(f"pytorch_metric_learning.{kind}")
    except ImportError as exc:
        raise ConfigError(f"PML {kind} need pytorch-metric-learning: pip install pytorch-metric-learning",
                          key=kind) from exc


def pml_class(kind: str, name: str) -> type:
    """The class ``name`` of ``pytorch_metric_learning.<kind>`` (``kind``: ``losses`` or ``miners``)."""
    module = _pml_module(kind)
    cls = getattr(module, name, None)
    if not isinstance(cls, type):
        available = sorted(n for n in dir(module) if n[:1].isupper() and isinstance(getattr(module, n), type))
        raise ConfigError(f"pytorch-metric-learning has no {kind[:-1]} {name!r}; available: {', '.join(available)}",
                          key=f"{kind[:-2]}.name")
    return cls


def to_pml_distance(distance: Any) -> Any:
    """A dynametric distance as the equivalent PML object (PML's losses check distance types with
    ``isinstance``); a PML distance or ``None`` passes through."""
    if not isinstance(distance, _distances.Distance):
        return distance
    if isinstance(distance, _distances.ForeignDistance):
        return distance.obj
    mod = _pml_module("distances")
    norm = distance.normalize_embeddings
    if isinstance(distance, _distances.LpDistance):
        return mod.LpDistance(p=distance.p, power=distance.power, normalize_embeddings=norm)
    if isinstance(distance, _distances.DotProductSimilarity):
        if norm:
            return mod.CosineSimilarity(power=distance.power)
        return mod.DotProductSimilarity(normalize_embeddings=False, power=distance.power)
    raise ConfigError(f"no pytorch-metric-learning equivalent of {distance!r}", key="distance")


def _instantiate(kind: str, spec: Any, kwargs: dict[str, Any]) -> Any:
    if isinstance(spec, str):
        spec = pml_class(kind, spec.removeprefix(PML_PREFIX))
    if isinstance(spec, type):
        if "distance" in kwargs:
            kwargs = {**kwargs, "distance": to_pml_distance(kwargs["distance"])}
        return spec(**kwargs)
    if kwargs:
        raise ConfigError(f"keyword arguments {sorted(kwargs)} given with an already built {kind[:-2]} object",
                          key=kind[:-2])
    return spec


class PMLLoss(MetricLoss):
    """A pytorch-metric-learning loss object applied to label column ``scale`` (see the module docstring)."""

    def __init__(self, loss: nn.Module, scale: int = 0) -> None:
        super().__init__(scale)
        if not isinstance(loss, nn.Module) or not callable(loss):
            raise ConfigError(f"PMLLoss wraps a pytorch-metric-learning loss object, got {loss!r}", key="loss")
        if isinstance(loss, MetricLoss):
            raise ConfigError(f"{type(loss).__name__} is a dynametric loss already; use it directly", key="loss")
        self.loss = loss

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


class PMLMiner(Miner):
    """A pytorch-metric-learning miner object applied to label column ``scale``."""

    def __init__(self, miner: nn.Module, scale: int = 0) -> None:
        super().__init__(scale)
        if not isinstance(miner, nn.Module) or not callable(miner) or isinstance(miner, Miner):
            raise ConfigError(f"PMLMiner wraps a pytorch-metric-learning miner object, got {miner!r}", key="miner")
        self.miner = miner

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> IndicesTuple:
        labels = as_label_matrix(labels, name="labels", num_rows=embeddings.shape[0])[:, self.scale]
        labels = labels.to(embeddings.device)
        if (ref_emb is None) != (ref_labels is None):
            raise InputError("ref_emb and ref_labels must be given together", key="ref_emb")
        if ref_labels is not None:
            ref_labels = as_label_matrix(ref_labels, name="ref_labels", num_rows=ref_emb.shape[0])[:, self.scale]
            ref_labels = ref_labels.to(embeddings.device)
        return self.miner(embeddings, labels, ref_emb, ref_labels)

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


def pml_miner(miner: str | type | nn.Module, scale: int = 0, **kwargs: Any) -> PMLMiner:
    """A PML miner (class name, class or object) on label column ``scale``."""
    return PMLMiner(_instantiate("miners", miner, kwargs), scale=scale)


def _init_parameters(cls: type) -> list[inspect.Parameter]:
    """The named constructor parameters of ``cls`` as keyword-only parameters, including those its ``__init__``
    forwards through ``*args, **kwargs`` to base classes (e.g. ``num_classes`` of ``SubCenterArcFaceLoss``)."""
    out: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = list(inspect.signature(init).parameters.values())[1:]  # drop self
        except (TypeError, ValueError):
            break
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in out:
                out[p.name] = p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        if not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            break
    return list(out.values())


def pml_registry_entry(kind: str, name: str) -> Callable[..., Any] | None:
    """The registry factory of a ``pml:<ClassName>`` name (``None`` for other names or a class PML lacks).

    The factory's signature is the PML class's plus ``label_scale`` (the label column), so config validation sees
    the real arguments (and fills ``num_classes`` / ``embedding_size`` like for native losses)."""
    if not isinstance(name, str) or not name.startswith(PML_PREFIX):
        return None
    try:
        cls = pml_class(kind, name[len(PML_PREFIX):])
    except ConfigError:
        return None
    wrap = PMLLoss if kind == "losses" else PMLMiner

    def factory(*, label_scale: int = 0, **kwargs: Any) -> Any:
        return wrap(_instantiate(kind, cls, kwargs), scale=label_scale)

    extra = [inspect.Parameter("label_scale", inspect.Parameter.KEYWORD_ONLY, default=0),
             inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]
    factory.__signature__ = inspect.Signature(_init_parameters(cls) + extra)  # type: ignore[attr-defined]
    factory.__name__ = name
    return factory


class PMLAwareRegistry(dict):
    """A ``{name: class}`` registry that also answers ``pml:<ClassName>`` with a :class:`PMLLoss` /
    :class:`PMLMiner` factory (looked up lazily, so PML is imported only when such a name is used)."""

    def __init__(self, kind: str, entries: dict[str, Any]) -> None:
        super().__init__(entries)
        self.kind = kind

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name) or (isinstance(name, str) and self._pml_entry(name) is not None)

    def _pml_entry(self, name: str) -> Callable[..., Any] | None:
        return pml_registry_entry(self.kind, name)

    def __missing__(self, name: str) -> Callable[..., Any]:
        entry = self._pml_entry(name)
        if entry is None:
            raise KeyError(name)
        return entry
