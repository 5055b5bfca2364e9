"""Any pytorch-metric-learning (PML) loss or miner on dynametric's ``[B, S]`` labels.

dynametric implements the losses and miners it needs natively (same names, arguments and values as PML). For the
rest of PML's catalogue this module wraps PML's own objects, so every one of them becomes hierarchy-aware without
a port. Everywhere in this adapter the label column is the keyword ``label_scale``; ``scale`` is never the column
here: it is a PML keyword like any other (the logit scale of ArcFace/CosFace) and goes to PML.

* :class:`PMLLoss` ``(loss, label_scale=0)``: a PML loss object applied to label column ``label_scale`` of
  ``[B, S]`` labels (``[B]`` labels work too). It is a :class:`~dynametric.losses.MetricLoss`, so it goes wherever a
  dynametric loss goes (``MultiScaleLoss``, the engine; PML parameters such as proxies are listed by
  ``loss_parameters()``); its attribute ``scale`` holds the column, as on every dynametric loss. A call passes the
  PML loss only what was given and what its ``forward`` takes (``CrossBatchMemory``'s ``enqueue_mask``,
  ``SelfSupervisedLoss``'s ``ref_emb`` without labels, ...); anything else is an :class:`InputError`.
* :class:`PMLMiner` ``(miner, label_scale=0)``: the same for a PML miner.
* :func:`pml_loss` ``(name_or_loss, label_scale=0, weights=None, num_classes=None, **kwargs)``: build from a class
  name (``"ArcFaceLoss"``), a class or an object; every other keyword goes to the PML class. With
  ``weights=[w_0, w_1, ...]`` it builds one PML loss per scale (scale ``s`` reads column ``s``, so ``label_scale``
  is refused), summed with those weights (a :class:`~dynametric.losses.MultiScaleLoss`): every keyword goes to
  every scale's loss unchanged, except ``num_classes``, which may be a list with one entry per scale, for proxy and
  classification losses.
* :func:`pml_miner` ``(name_or_miner, label_scale=0, **kwargs)``.
* Configs: ``loss: {name: "pml:ArcFaceLoss", kwargs: {...}}`` and ``miner: {name: "pml:BatchEasyHardMiner"}``
  (the registries :data:`dynametric.losses.LOSSES` / :data:`dynametric.miners.MINERS` resolve the ``pml:``
  prefix through :func:`pml_registry_entry`). The label column is ``label_scale`` there too; ``num_classes`` and
  ``embedding_size`` are filled by the engine as for native losses; ``multiscale: true`` gives one PML loss per
  scale. A ``distance`` given by name in a config becomes PML's own distance object.

PML is an optional dependency: it is imported only when one of these is used (a :class:`ConfigError` says how to
install it otherwise).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from dynametric.errors import ConfigError, InputError
from dynametric.losses.base import MetricLoss, check_embeddings
from dynametric.miners.pml import PMLMiner, pml_miner
from dynametric.pml import (
    OBJECT_ARGUMENTS,
    PML_PREFIX,
    PMLAwareRegistry,
    _init_parameters,
    _instantiate,
    check_label_scale,
    check_object_arguments,
    pml_class,
    resolve_class,
    to_pml_distance,
)
from dynametric.pml import pml_registry_entry as _registry_entry

__all__ = ["PML_PREFIX", "PMLAwareRegistry", "PMLLoss", "PMLMiner", "pml_class", "pml_loss", "pml_miner",
           "pml_registry_entry", "to_pml_distance"]


#: The helpers with which a PML loss's ``compute_loss`` refuses arguments its ``forward`` accepts (VICRegLoss takes
#: no labels, NPairsLoss no ref_emb, ...; ``pytorch_metric_learning.utils.common_functions``), and what each refuses.
_PML_REFUSALS = {"labels_not_supported": ("labels", "ref_labels"), "ref_not_supported": ("ref_emb", "ref_labels"),
                 "indices_tuple_not_supported": ("indices_tuple",)}


def _forward_arguments(loss: nn.Module) -> tuple[frozenset[str] | None, frozenset[str]]:
    """What ``loss`` takes after the embeddings: ``(names its forward accepts by keyword less those its
    compute_loss refuses, or None for any (a **kwargs), names it requires)``."""
    try:
        params = list(inspect.signature(loss.forward).parameters.values())[1:]  # the embeddings come first
    except (TypeError, ValueError):  # no signature to read: pass what is given and let the loss decide
        return None, frozenset()
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None, frozenset()
    code = getattr(getattr(type(loss), "compute_loss", None), "__code__", None)
    refused = {arg for helper, args in _PML_REFUSALS.items() if code and helper in code.co_names for arg in args}
    return (frozenset(p.name for p in named) - refused,
            frozenset(p.name for p in named if p.default is p.empty))


#: The positional arguments after the embeddings of every dynametric loss and of PML's losses but one.
_CONTRACT_ORDER = ("labels", "indices_tuple", "ref_emb", "ref_labels")


def _positional_order(loss: nn.Module) -> tuple[str, ...]:
    """The names that positional arguments after the embeddings bind to in a call of ``PMLLoss(loss)``: the
    contract's order (:data:`_CONTRACT_ORDER`), except for a wrapped ``forward`` whose second parameter is not
    ``labels`` (``SelfSupervisedLoss.forward(embeddings, ref_emb)``): its own order, so ``loss(embeddings,
    augmented)`` means what it means in PML."""
    try:
        params = list(inspect.signature(loss.forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return _CONTRACT_ORDER
    positional = tuple(p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
    if not positional or positional[0] == "labels" or any(p.kind is p.VAR_POSITIONAL for p in params):
        return _CONTRACT_ORDER
    return positional


def _check_object_arguments(loss: nn.Module) -> None:
    """Refuse a PML loss object whose reducer, distance or regularizer is not callable (built in Python with a name
    where PML expects an object): :func:`dynametric.pml.check_object_arguments` on its attributes (PML fills a
    reducer or distance left out with its default object, and a regularizer left out is ``None``). The keyword
    arguments of a class or name given to the adapter are checked before PML builds anything."""
    check_object_arguments({attr: getattr(loss, attr, None) for attr in OBJECT_ARGUMENTS})


class PMLLoss(MetricLoss):
    """A pytorch-metric-learning loss object applied to label column ``label_scale`` (see the module docstring).

    A call passes the wrapped loss what its ``forward`` takes (read once, here): the embeddings, then by keyword
    only the arguments given (``labels`` as column ``label_scale``, ``indices_tuple``, ``ref_emb``, ``ref_labels``
    as that column too, and extra keywords such as ``CrossBatchMemory``'s ``enqueue_mask``). So
    ``CrossBatchMemory(emb, labels, indices_tuple=None, enqueue_mask=None)``, ``SelfSupervisedLoss(emb, ref_emb)``
    (``ref_emb`` by position too, as in PML: positional arguments bind in the wrapped ``forward``'s order when its
    second parameter is not ``labels``), ``MultipleLosses(emb, labels, indices_tuple=None)`` and ``VICRegLoss`` (no
    labels: ``loss(emb, ref_emb=...)``) are called as PML calls them. An argument given that the wrapped loss does
    not take (not in its ``forward``, or refused by its ``compute_loss``, as VICReg refuses labels), or a required
    one missing, is an :class:`InputError` naming it."""

    def __init__(self, loss: nn.Module, label_scale: int = 0) -> None:
        super().__init__(check_label_scale(label_scale))
        if not isinstance(loss, nn.Module) or not callable(loss):
            raise ConfigError(f"PMLLoss wraps a pytorch-metric-learning loss object, got {loss!r}", key="loss")
        if isinstance(loss, MetricLoss):
            raise ConfigError(f"{type(loss).__name__} is a dynametric loss already; use it directly", key="loss")
        _check_object_arguments(loss)
        self.loss: Any = loss  # a PML loss object (PML is untyped)
        self._takes, self._needs = _forward_arguments(loss)
        self._order = _positional_order(loss)

    def forward(self, embeddings: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``loss(embeddings, labels=None, indices_tuple=None, ref_emb=None, ref_labels=None, **kwargs)``, PML's
        extra keywords (``enqueue_mask``, ...) passing through; positional arguments after the embeddings bind in
        that order, or in the wrapped ``forward``'s when its second parameter is not ``labels``
        (``SelfSupervisedLoss``: ``loss(embeddings, ref_emb)``)."""
        name = type(self.loss).__name__
        if len(args) > len(self._order):
            raise InputError(f"{name} takes at most {len(self._order)} positional argument(s) after the embeddings "
                             f"({', '.join(self._order)}), got {len(args)}")
        for arg, value in zip(self._order, args):
            if arg in kwargs:
                raise InputError(f"{name} got {arg} twice, by position and by keyword", key=arg)
            kwargs[arg] = value
            if (arg == "ref_emb" and self._order is not _CONTRACT_ORDER and isinstance(value, torch.Tensor)
                    and not value.is_floating_point()):  # loss(embeddings, labels) on SelfSupervisedLoss
                raise InputError(f"{name} takes no labels: its second positional argument is ref_emb (PML's "
                                 f"forward({', '.join(['embeddings', *self._order])})), got a {value.dtype} tensor "
                                 f"of shape {tuple(value.shape)}", key="labels")
        labels = kwargs.pop("labels", None)
        indices_tuple = kwargs.pop("indices_tuple", None)
        ref_emb = kwargs.pop("ref_emb", None)
        ref_labels = kwargs.pop("ref_labels", None)
        check_embeddings(embeddings)
        given = {k: v for k, v in {"labels": labels, "indices_tuple": indices_tuple, "ref_emb": ref_emb,
                                   "ref_labels": ref_labels, **kwargs}.items() if v is not None}
        takes = self._takes
        for arg in {**given, **kwargs}:  # an extra keyword is checked even when None (a misspelt enqueue_mask)
            if takes is not None and arg not in takes:
                raise InputError(f"{name} takes no {arg} (it takes {', '.join(['embeddings', *sorted(takes)])})",
                                 key=arg)
        for arg in sorted(self._needs - given.keys()):
            raise InputError(f"{name} needs {arg}", key=arg)
        check_embeddings(embeddings, ref_emb)
        if ref_labels is not None and ref_emb is None:  # PML would ignore them
            raise InputError("ref_labels without ref_emb", key="ref_labels")
        if labels is not None:
            if ref_emb is not None and ref_labels is None and (takes is None or "ref_labels" in takes):
                raise InputError("ref_emb and ref_labels must be given together", key="ref_emb")
            given["labels"] = self.prepare_labels(labels, embeddings.shape[0], "labels")
        if ref_emb is not None and ref_labels is not None:
            given["ref_labels"] = self.prepare_labels(ref_labels, ref_emb.shape[0], "ref_labels")
            if ref_labels is labels:  # PML's own test (no pair (i, i)), kept through the column selection
                given["ref_labels"] = given["labels"]
        dtype = self._maths_dtype(embeddings)
        if dtype != embeddings.dtype:
            embeddings = embeddings.to(dtype)
            if isinstance(given.get("ref_emb"), torch.Tensor) and given["ref_emb"].is_floating_point():
                given["ref_emb"] = given["ref_emb"].to(dtype)
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            out = self.loss(embeddings, **given)
        # PML's zero loss (no tuple mined) is sum(embeddings * 0): the parameters (a learned beta, proxies) would be
        # left out of the graph, and DDP with find_unused_parameters=False fails at the next step. A zero connected to
        # each of them (NaN when one is not finite, as the native losses' zero), never read on the host.
        anchor = self._zero_anchor(None)
        if anchor is not None and isinstance(out, torch.Tensor) and out.is_floating_point():
            out = out + anchor.to(out.dtype)
        return out

    def _maths_dtype(self, embeddings: torch.Tensor) -> torch.dtype:
        """The dtype PML's maths run in (autocast off). When the wrapped loss holds floating-point parameters
        (proxies, class weights, a learned beta), theirs (their promotion if they differ): PML's ``cast_types``
        would otherwise convert them in place to the embeddings' dtype (float64 embeddings made float32 proxies
        float64, and the optimizer's float32 state then crashed its next step); the embeddings are converted instead,
        their gradient flowing back in their own dtype. Without parameters: float32 for half-precision embeddings
        (autocast's bfloat16 / float16 outputs under a ``*-mixed`` precision, or bfloat16 embeddings of a ``*-true``
        run), unless the wrapped loss holds half-precision buffers, which then set it; otherwise the embeddings'
        own. PML's formulas are not written for 16-bit numbers: ``TupletMarginLoss`` takes ``acos`` of a cosine that
        bfloat16 rounds to exactly 1 for nearby pairs, a finite loss with a NaN gradient."""
        if not embeddings.is_floating_point():
            return embeddings.dtype
        params = {p.dtype for p in self.loss.parameters() if p.is_floating_point()}
        if params:
            dtypes = sorted(params, key=str)  # a fixed order, so the promotion does not depend on set order
            dtype = dtypes[0]
            for other in dtypes[1:]:
                dtype = torch.promote_types(dtype, other)
            return dtype
        if embeddings.dtype not in (torch.float16, torch.bfloat16):
            return embeddings.dtype
        held = {t.dtype for t in self.loss.buffers() if t.is_floating_point()}
        half = held & {torch.float16, torch.bfloat16}
        return next(iter(half)) if half else torch.float32

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        if not hasattr(self.loss, "get_logits"):
            raise InputError(f"{type(self.loss).__name__} has no get_logits()", key="loss")
        return self.loss.get_logits(embeddings)

    def scale_hint(self) -> str:
        if not hasattr(self.loss, "scale"):
            return ""
        return (f"; PMLLoss's .scale is the label column (label_scale), the wrapped {type(self.loss).__name__}'s own "
                f".scale is .loss.scale, now {self.loss.scale}: set loss.loss.scale instead")

    def extra_repr(self) -> str:
        return f"label_scale={self.scale}"


def pml_loss(
    loss: str | type | nn.Module,
    /,
    label_scale: int | None = None,
    weights: Sequence[float] | None = None,
    num_classes: int | Sequence[int] | None = None,
    chunks: Any = None,
    miners: Any = None,
    **kwargs: Any,
) -> MetricLoss:
    """A PML loss on dynametric labels: one loss on label column ``label_scale`` (default 0) or, with ``weights``,
    the weighted sum over scales ``sum_s weights[s] * L_s(embeddings, labels[:, s])`` with one PML loss per scale
    (``num_classes`` may be a list, one per scale; ``chunks``/``miners`` as in
    :class:`~dynametric.losses.MultiScaleLoss`). ``kwargs`` go to the PML class (``scale`` is ArcFace's/CosFace's
    logit scale), in the weighted form to every scale's loss. The first argument is positional-only, so a PML
    keyword named ``loss`` (``CrossBatchMemory``, ``SelfSupervisedLoss``) goes to PML too."""
    if label_scale is not None:
        label_scale = check_label_scale(label_scale)  # before PML builds anything: True is not column 1
    cls = resolve_class("losses", loss, key="loss")
    if isinstance(cls, type):  # a PML keyword of the same name as one of ours would be taken by the adapter
        own = {p.name for p in _init_parameters(cls)}
        clash = [k for k, v in (("weights", weights), ("chunks", chunks), ("miners", miners)) if v is not None
                 and k in own]
        if clash:
            raise ConfigError(f"{cls.__name__} has its own {clash[0]!r}, which pml_loss's {clash[0]}= (one loss per "
                              f"label scale) would take; build the object and pass it: pml_loss({cls.__name__}"
                              f"(..., {clash[0]}=...))", key=clash[0])
    if weights is None:
        if isinstance(num_classes, Sequence):
            raise ConfigError("a list of num_classes needs weights (one per scale)", key="num_classes")
        kw = dict(kwargs) if num_classes is None else {**kwargs, "num_classes": num_classes}
        if chunks is not None or miners is not None:
            raise ConfigError("chunks/miners are per-scale options: give weights", key="weights")
        return PMLLoss(_instantiate("losses", cls, kw), label_scale=0 if label_scale is None else label_scale)
    from dynametric.losses.multiscale import MultiScaleLoss

    if label_scale is not None:
        raise ConfigError(f"label_scale={label_scale} with weights: with weights the loss of scale s reads label "
                          "column s; give one or the other", key="label_scale")
    n = len(weights)
    if isinstance(num_classes, Sequence) and len(num_classes) != n:
        raise ConfigError(f"{len(num_classes)} num_classes for {n} scales", key="num_classes")

    def per_scale(s: int) -> PMLLoss:
        kw = dict(kwargs)
        if num_classes is not None:
            kw["num_classes"] = num_classes[s] if isinstance(num_classes, Sequence) else num_classes
        return PMLLoss(_instantiate("losses", cls, kw))

    if isinstance(cls, nn.Module) and any(True for _ in [*cls.parameters(), *cls.buffers()]):
        raise ConfigError(f"{type(cls).__name__} has parameters or buffers (state); give its class or name so that "
                          "every scale gets its own", key="loss")

    return MultiScaleLoss(per_scale, weights=list(weights), num_scales=n, chunks=chunks, miners=miners)


def pml_registry_entry(kind: str, name: str) -> Callable[..., Any] | None:
    """The ``LOSSES`` / ``MINERS`` factory of a ``pml:<ClassName>`` name (``kind``: ``losses`` or ``miners``);
    see :func:`dynametric.pml.pml_registry_entry`."""
    return _registry_entry(kind, name, PMLLoss if kind == "losses" else PMLMiner)
