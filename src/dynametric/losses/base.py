"""The loss and miner contract shared by every loss in dynametric (pytorch-metric-learning compatible).

``loss(embeddings, labels, indices_tuple=None, ref_emb=None, ref_labels=None) -> scalar``

* ``labels`` is ``[B]`` or ``[B, S]`` (finest scale first); a plain loss uses column ``self.scale``
  (default ``0``, the finest). Losses that need every scale (CSL, :class:`MultiScaleLoss`) set
  ``uses_all_scales = True`` and receive the full ``[B, S]`` matrix.
* ``indices_tuple`` is a miner's output: pairs ``(a1, p, a2, n)`` or triplets ``(a, p, n)``.
* ``ref_emb``/``ref_labels``: positives/negatives come from this reference set instead of the batch.
* Losses with learnable parameters are ``nn.Module`` s; :meth:`MetricLoss.loss_parameters` lists them
  so the engine can give them their own optimizer group.
* As in pytorch-metric-learning, every loss takes ``reducer=`` (a dynametric or PML reducer object; the loss then
  builds its dictionary of per-element losses, :meth:`MetricLoss.compute_loss_dict`, and returns
  ``reducer(loss_dict, embeddings, labels)``), ``embedding_regularizer=`` / ``embedding_reg_weight=`` (any callable
  ``embeddings -> scalar``, e.g. PML's ``LpRegularizer()``; its weighted value is added to the loss) and
  ``collect_stats=`` (record counts such as ``num_pairs`` on the object after each call), except the four losses
  that have no PML counterpart: :class:`~dynametric.losses.MultiScaleLoss` (give them to its base losses:
  ``base_kwargs`` or loss objects), :class:`~dynametric.losses.CSLLoss`, :class:`~dynametric.losses.PDDMLoss` and
  :class:`~dynametric.losses.DecorrelationLoss`, which take none of the three (constructed directly: a
  ``TypeError`` naming the keyword; through ``build_loss``: a :class:`ConfigError`). Pair and triplet losses also
  accept ``labels=None`` with an ``indices_tuple`` (the tuple alone defines the loss). Without a reducer the loss
  uses its built-in, memory-bounded reduction, which equals PML's default reducer.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from dynametric.errors import ConfigError, InputError
from dynametric.labels import as_label_matrix, check_scale_names
from dynametric.losses.reducers import apply_reducer, check_reducer
from dynametric.miners.base import Miner, check_embeddings, check_reference_pair, select_label_column
from dynametric.tuples import IndicesTuple
from dynametric.utils.stats import RecordsStats

logger = logging.getLogger("dynametric.losses")

# Miner and check_embeddings: re-exported from dynametric.miners.base
__all__ = ["IndicesTuple", "MetricLoss", "Miner", "check_count", "check_embeddings", "check_positive", "logger"]


def check_count(value: Any, key: str, *, minimum: int = 1) -> int:
    """A size argument of a loss (``num_classes``, ``embedding_size``, ``centers_per_class``, ...) as an ``int``: an
    integer (``bool`` is not one; a float such as ``3.5`` or ``8.0`` is refused rather than truncated) of at least
    ``minimum``, else a one-line :class:`ConfigError` keyed ``key``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value!r} ({type(value).__name__})", key=key)
    if value < minimum:
        raise ConfigError(f"{key} must be an integer >= {minimum}, got {value}", key=key)
    return int(value)


def check_positive(value: Any, key: str) -> float:
    """A hyperparameter a loss divides by (``alpha``, ``beta``, ``temperature``, ``gamma``) as a ``float``: a finite
    number > 0 (``bool`` is not one), else a one-line :class:`ConfigError` keyed ``key`` (0 made the loss inf or
    NaN, silently)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not (math.isfinite(value)
                                                                              and float(value) > 0):
        raise ConfigError(f"{key} must be a finite number > 0 (the loss divides by it), got {value!r}", key=key)
    return float(value)


def labels_on_host(labels: torch.Tensor) -> bool:
    """Whether reading ``labels`` needs no accelerator synchronisation (a CPU tensor)."""
    return labels.device.type == "cpu"


class _LogOnce:
    """Per-instance "say it once" helper for debug messages (no global state)."""

    def __init__(self) -> None:
        self._said: set[str] = set()

    def __call__(self, key: str, message: str) -> None:
        if key not in self._said:
            self._said.add(key)
            logger.debug(message)

    def when(self, key: str, condition: Callable[[], bool], message: Callable[[], str]) -> None:
        """Say ``message()`` once if ``condition()`` holds. ``condition`` is called only while debug logging is on
        and ``key`` has not been said yet, so a condition that reads a device value (a host read) costs nothing
        otherwise."""
        if key not in self._said and logger.isEnabledFor(logging.DEBUG) and condition():
            self(key, message())


class MetricLoss(RecordsStats, nn.Module):
    """Base class of every loss. Subclasses implement :meth:`compute_loss` on 1-D labels.

    ``scale`` (the constructor argument and the attribute, default ``0``): the label column of ``[B, S]`` labels the
    loss reads, ``0`` the finest, a negative value counted from the coarsest end (``-1``). ``ArcFaceLoss`` and
    ``CosFaceLoss`` name it ``label_scale``, their ``scale`` being the logit scale (as in pytorch-metric-learning);
    the losses that read every column (:attr:`uses_all_scales`: ``CSLLoss``, ``MultiScaleLoss``) have none.
    """

    #: Whether the loss reads every label column itself (``[B, S]`` labels; CSL, :class:`MultiScaleLoss`): such a loss
    #: is multi-scale by itself, and a config term of it with ``multiscale: true`` is refused when the config loads.
    uses_all_scales: bool = False

    #: Whether the loss reads the concatenation ``[first head; second head]`` of a two-head model (engine term with
    #: ``head: concat``) and splits it into the two heads (``DecorrelationLoss``): the engine refuses it on any other
    #: head and fills its ``class_dim`` / ``shared_dim`` with the two heads' widths.
    reads_head_pair: bool = False

    #: Whether the loss chooses its own tuples from the batch (``PDDMLoss``): a configured miner would be refused.
    mines_own_tuples: bool = False

    @classmethod
    def pairs_in_batch(cls, kwargs: Mapping[str, Any]) -> bool:
        """Whether the loss, built with the keyword arguments ``kwargs``, compares the batch's embeddings with each
        other (pairs, triplets, tuples), so that a batch of one class gives it no negative and nothing to learn
        (the config refuses such a batch: ``data.batch_size / data.m`` must then be at least 2). ``False`` for a
        loss that compares each embedding with learned class weights (proxies, a classifier) or uses no labels."""
        return True

    @property
    def scale_names(self) -> tuple[str, ...] | None:
        """Names of the label columns, finest first, for the loss's per-scale parts (:meth:`loss_parts`; CSL,
        :class:`MultiScaleLoss`); ``None``: :func:`dynametric.labels.default_scale_names`. The engine's builders set
        the data's scale names on every loss that ``uses_all_scales``. Set to non-empty strings, each once (a
        repeated name would merge two scales' parts, which then no longer add up to the loss): else a
        :class:`~dynametric.errors.ConfigError` keyed ``scale_names``."""
        return self.__dict__.get("_scale_names")

    @scale_names.setter
    def scale_names(self, names: Sequence[str] | None) -> None:
        if names is not None:
            try:
                names = check_scale_names(names, reserved=())
            except InputError as exc:
                raise ConfigError(exc.message, key="scale_names") from None
        self.__dict__["_scale_names"] = names

    def __init__(self, scale: int = 0, *, reducer: Any = None, embedding_regularizer: Any = None,
                 embedding_reg_weight: float = 1.0, collect_stats: bool = False) -> None:
        super().__init__()
        self.scale = scale
        self._log_once = _LogOnce()
        self._device_labels_checked = False
        # (labels on the embeddings' device, the caller's host copy) of the current call: check_label_range reads
        # the host copy, so host labels of accelerator embeddings are still checked at every call without a sync
        self._host_columns: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.reducer = check_reducer(reducer)
        if embedding_regularizer is not None and not callable(embedding_regularizer):
            raise InputError(f"embedding_regularizer must be callable, got {embedding_regularizer!r}",
                             key="embedding_regularizer")
        self.embedding_regularizer = embedding_regularizer
        self.embedding_reg_weight = embedding_reg_weight
        self.collect_stats = bool(collect_stats)
        # the reference embeddings of the call under way (set by forward, cleared when it returns): zero_loss
        # connects them too, so a zero loss still gives ref_emb a (zero) gradient
        self._call_ref_emb: torch.Tensor | None = None

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor | None = None,
        indices_tuple: IndicesTuple | None = None,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The loss of a batch, pytorch-metric-learning's call: ``loss(embeddings, labels, indices_tuple, ref_emb,
        ref_labels)``.

        * ``embeddings``: ``[B, D]`` floating-point tensor; ``labels``: ``[B]`` or ``[B, S]`` integer class ids, one
          column per scale, finest first (the loss reads column :attr:`scale`, or every column for a multi-scale
          loss); ``None`` only with an ``indices_tuple`` (each item is then its own class).
        * ``indices_tuple``: a miner's output (pairs ``(a1, p, a2, n)`` or triplets ``(a, p, n)``) restricting the
          tuples, or ``None`` for all of them.
        * ``ref_emb`` / ``ref_labels``: another reference set to compare the batch with (given together); the batch's
          own label object as ``ref_labels`` means the reference set is the batch (pairs ``(i, i)`` are no positives,
          as in pytorch-metric-learning).

        Returns a 0-dim tensor on the embeddings' device, connected to the graph (0 with zero gradients when the
        batch has no valid tuple). A non-finite (NaN or inf) embedding makes the gradient non-finite; the value is
        NaN too, except for the losses that average only their non-zero pair / triplet terms,
        :class:`~dynametric.losses.ContrastiveLoss` and :class:`~dynametric.losses.TripletMarginLoss` (and a
        :class:`~dynametric.losses.MultiScaleLoss` over them): as in pytorch-metric-learning, a NaN term is not
        "non-zero" and drops out, so the value can stay finite while the gradients are NaN. Check the embeddings
        or the gradients, not only the value (a run's ``trainer.nonfinite`` checks both). Raises
        :class:`~dynametric.errors.InputError` (one line, keyed by the argument) for inputs of the wrong shape, type
        or scale, and :class:`~dynametric.errors.ConfigError` for invalid settings."""
        check_embeddings(embeddings, ref_emb)
        if labels is None:
            labels, ref_labels = self._labels_from_indices(embeddings, indices_tuple, ref_emb, ref_labels)
        else:
            labels, ref_emb, ref_labels = self.prepare_reference(embeddings, labels, ref_emb, ref_labels)
        if ref_emb is not None and ref_emb.dtype != embeddings.dtype:
            # both sides in their promotion (float64 with float32: float64; fp16 with fp32: fp32), so every distance
            # of the loss is computed in one dtype; each gradient flows back in its own tensor's dtype
            common = torch.promote_types(embeddings.dtype, ref_emb.dtype)
            embeddings, ref_emb = embeddings.to(common), ref_emb.to(common)
        if self.reducer is None:
            self._call_ref_emb = ref_emb
            try:
                loss = self.compute_loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)
            finally:
                self._call_ref_emb = None
            if self.embedding_regularizer is not None:
                loss = loss + self.embedding_reg_weight * self.embedding_regularizer(embeddings)
            return loss
        loss_dict = self.compute_loss_dict(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if self.embedding_regularizer is not None:
            loss_dict["embedding_reg_loss"] = {
                "losses": self.embedding_reg_weight * self.embedding_regularizer(embeddings),
                "indices": None,
                "reduction_type": "already_reduced",
            }
        # a reducer's zero (no tuple, nothing above its threshold) is ``sum(embeddings * 0)`` (PML's protocol gives it
        # nothing else): it gets the embeddings plus a zero connected to ref_emb and the loss's parameters, the same
        # values (NaN where one of those is not finite, as zero_loss), so that zero reaches all of them
        anchor = self._zero_anchor(ref_emb)
        like = embeddings if anchor is None else embeddings + anchor.to(embeddings.dtype)
        return apply_reducer(self.reducer, loss_dict, like, labels if labels.dim() == 1 else None)

    def _zero_anchor(self, ref_emb: torch.Tensor | None) -> torch.Tensor | None:
        """``sum(ref_emb * 0) + sum_p sum(p * 0)`` over the loss's parameters that require a gradient (a 0-dim zero
        connected to each of them; NaN when one is not finite), or ``None`` when there is nothing to connect."""
        parts = [p.sum() * 0.0 for p in self.parameters() if p.requires_grad]
        if ref_emb is not None and ref_emb.requires_grad:
            parts.append(ref_emb.sum() * 0.0)
        if not parts:
            return None
        anchor = parts[0]
        for part in parts[1:]:
            anchor = anchor + part.to(anchor.dtype)
        return anchor

    #: Whether the loss is defined by an ``indices_tuple`` alone (``labels=None``), as PML's pair/triplet losses.
    works_without_labels: bool = False

    #: Whether the loss reads labels at all: ``False`` (``DecorrelationLoss``) accepts ``labels=None`` with or
    #: without an ``indices_tuple`` (labels given are still checked for their form and row count).
    reads_labels: bool = True

    def _labels_from_indices(self, embeddings: torch.Tensor, indices_tuple: IndicesTuple | None,
                             ref_emb: torch.Tensor | None, ref_labels: torch.Tensor | None
                             ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stand-in labels for a call with ``labels=None``: allowed, as in PML, when the loss needs only the
        miner's ``indices_tuple`` (the stand-ins are never compared; they only give the batch size)."""
        if indices_tuple is None and self.reads_labels:
            raise InputError(f"{type(self).__name__} needs labels or an indices_tuple", key="labels")
        if not self.works_without_labels and self.reads_labels:
            raise InputError(f"{type(self).__name__} needs labels (an indices_tuple alone is not enough)",
                             key="labels")
        if ref_labels is not None:
            raise InputError("ref_labels without labels", key="ref_labels")
        labels = torch.arange(embeddings.shape[0], device=embeddings.device)
        if ref_emb is not None:
            ref_labels = torch.arange(ref_emb.shape[0], device=embeddings.device)
        return labels, ref_labels

    def prepare_reference(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """``(labels, ref_emb, ref_labels)`` as :meth:`compute_loss` takes them: the labels through
        :meth:`prepare_labels` (checked, their column selected) and the reference set by pytorch-metric-learning's
        rule, decided on the objects the caller passed (before any column is selected): ``ref_labels is labels``
        means the reference set's labels are the batch's, so pairs ``(i, i)`` are no positives (the prepared
        ``ref_labels`` is then the prepared ``labels`` object, which :func:`dynametric.tuples.match_masks` tests);
        with ``ref_emb is embeddings`` as well the call is the plain in-batch one (``ref_emb = ref_labels = None``).
        Equal copies are another reference set, whose item ``i`` pairs with batch item ``i`` (as in PML)."""
        same_labels = ref_labels is labels
        same_emb = ref_emb is embeddings
        self._host_columns = []
        labels = self._on_device(self.prepare_labels(labels, embeddings.shape[0], "labels"), embeddings.device)
        check_reference_pair(ref_emb, ref_labels)
        if ref_emb is None or ref_labels is None:
            return labels, None, None
        ref_labels = self._on_device(self.prepare_labels(ref_labels, ref_emb.shape[0], "ref_labels"),  # rows checked
                                     embeddings.device)
        if not same_labels:
            return labels, ref_emb, ref_labels
        if same_emb:
            return labels, None, None
        return labels, ref_emb, labels

    def prepare_labels(self, labels: torch.Tensor, num_rows: int, name: str) -> torch.Tensor:
        """``labels`` checked (``num_rows`` rows; errors keyed ``name``) as a ``LongTensor``: the ``[N, S]`` matrix
        for a loss that :attr:`uses_all_scales`, else column :attr:`scale`, where the caller's labels are (a numpy
        array or a list: on the CPU); :meth:`prepare_reference` then moves it to the embeddings' device."""
        mat = as_label_matrix(labels, name=name, num_rows=num_rows)
        if self.uses_all_scales:
            return mat
        return select_label_column(mat, self.scale, name, self.scale_hint())

    def _on_device(self, column: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``column`` on ``device`` (the embeddings'), as pytorch-metric-learning moves labels: CPU labels (or a numpy
        array, a list) with accelerator embeddings are accepted. A host column that moves is remembered for
        :meth:`check_label_range` of this call."""
        if column.device == device:
            return column
        moved = column.to(device)
        if labels_on_host(column):
            self._host_columns.append((moved, column))
        return moved

    def scale_hint(self) -> str:
        """Appended to the error of a :attr:`scale` that is no label column of the labels: empty here; losses on
        which ``.scale`` means something else in pytorch-metric-learning (CosFace/ArcFace's logit scale, a wrapped
        PML loss) say where that value lives in dynametric."""
        return ""

    def compute_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: IndicesTuple | None,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_loss_dict(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: IndicesTuple | None,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> dict:
        """The unreduced losses as pytorch-metric-learning's loss dictionary (used when ``reducer`` is given)."""
        raise InputError(f"{type(self).__name__} does not support reducer=", key="reducer")

    def check_label_range(self, labels: torch.Tensor, num_classes: int,
                          message: Callable[[torch.Tensor, int, int], str]) -> None:
        """A one-line :class:`InputError` keyed ``labels`` (``message(labels, min, max)``) when a label lies outside
        ``[0, num_classes)`` (losses with per-class parameters). Labels the caller passed in host memory are checked at
        every call (one read of the CPU tensor, also when :meth:`prepare_reference` moved them to the embeddings'
        device: no read back from the accelerator; a sub-loss of :class:`MultiScaleLoss` gets device columns and is
        checked as below). Labels on an accelerator are checked at the first
        call of the loss object only, so that training steps read nothing back to the host: the engine checks once,
        when it builds the loss, that ``num_classes`` covers every training label (a later out-of-range label on an
        accelerator fails in torch's indexing kernel instead)."""
        if labels.numel() == 0:
            return
        labels = next((host for moved, host in getattr(self, "_host_columns", ()) if moved is labels), labels)
        on_host = labels_on_host(labels)
        if not on_host and self._device_labels_checked:
            return
        low, high = torch.stack([labels.min(), labels.max()]).tolist()
        if low < 0 or high >= num_classes:
            raise InputError(message(labels, int(low), int(high)), key="labels")
        if not on_host:
            self._device_labels_checked = True

    def zero_loss(self, embeddings: torch.Tensor, reason: str) -> torch.Tensor:
        """A zero that is still connected to the graph: backward works and its gradients are 0, never NaN. Its value
        is 0, or NaN when an embedding, a reference embedding or a parameter is not finite (``x * 0.0``), so a
        non-finite batch is still seen by the engine's non-finite-loss policy. Inside a call it is connected to that
        call's ``ref_emb`` too (a zero gradient, not ``None``)."""
        self._log_once(reason, f"{type(self).__name__}: {reason}; returning a zero loss")
        zero = embeddings.sum() * 0.0
        for p in self.parameters():
            zero = zero + p.sum() * 0.0
        ref_emb = getattr(self, "_call_ref_emb", None)
        if ref_emb is not None:
            zero = zero + (ref_emb.sum() * 0.0).to(zero.dtype)
        return zero + 0.0  # -0.0 (a negative sum times 0) + 0.0 is +0.0, as PML's zero; NaN stays NaN

    def loss_parts(self) -> dict[str, torch.Tensor]:
        """Named parts of the value of the last call, for logging: ``{name: detached 0-dim tensor}`` on the loss's
        device (a tensor, not a Python number: the engine logs them every step without reading them on the host).
        The engine logs each part of a loss term as ``train/<term>/<name>``
        (:func:`dynametric.engine.objective.compute_objective`, ``parts=``). A loss documents which of its parts add
        up to its value (CSL and :class:`~dynametric.losses.multiscale.MultiScaleLoss`: all of them, the weighted
        per-scale terms; PDDM: ``E_m + lambda * E_e``) and which are counts (PDDM's ``quadruplets``). Default: no
        parts."""
        return {}

    def loss_parameters(self) -> list[nn.Parameter]:
        """Learnable parameters of the loss itself (proxies, class weights, margins)."""
        return [p for p in self.parameters() if p.requires_grad]
