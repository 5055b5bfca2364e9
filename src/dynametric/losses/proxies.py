"""Proxy and classification losses with pytorch-metric-learning's (PML 2.9) names, keyword arguments and defaults.

Every loss here owns learnable class weights (proxies, class vectors, centres) of shape and layout identical to
PML's, so weights can be copied between the two libraries and the same call gives the same value:

=========================  ==========================  ===========================================
loss                       parameter (layout)          PML default initialisation
=========================  ==========================  ===========================================
:class:`ProxyNCALoss`      ``proxies`` ``[C, D]``      ``normal_``
:class:`ProxyAnchorLoss`   ``proxies`` ``[C, D]``      ``kaiming_normal_(mode="fan_out")``
:class:`NormalizedSoftmaxLoss` ``W`` ``[D, C]``        ``normal_``
:class:`CosFaceLoss`       ``W`` ``[D, C]``            ``normal_``
:class:`ArcFaceLoss`       ``W`` ``[D, C]``            ``normal_``
:class:`SoftTripleLoss`    ``fc`` ``[D, C*K]``         ``kaiming_uniform_(a=sqrt(5))``
=========================  ==========================  ===========================================

The parameters are returned by :meth:`MetricLoss.loss_parameters` so the engine gives them their own optimizer
group. Labels are ``[B]`` or ``[B, S]`` (column ``scale``; for :class:`CosFaceLoss`/:class:`ArcFaceLoss` the
keyword ``scale`` is PML's logit scale, stored as ``logit_scale``, and the column is given as ``label_scale``; the
attribute ``.scale`` is the label column for every loss) and must lie in ``[0, num_classes)``.

Differences from PML (documented, deliberate):

* the maths always runs in float32 (float64 for float64 inputs) with autocast disabled; the result is float32
  for fp16/bf16 inputs, which keeps them finite. The class weights are used through a copy converted to that
  dtype (their gradient reaching them in their own dtype); unlike PML, a call never converts the parameters
  themselves in place (a float64 call followed by a float32 one left float64 weights, and Adam's state in
  float32: a crash);
* ``ProxyNCALoss`` keeps every sample, PML drops samples whose own-class probability underflows to exactly 0;
* ``ArcFaceLoss`` computes ``cos(theta + m)`` as ``cos(theta) cos(m) - sin(theta) sin(m)`` with a clamped
  ``sin``, so the gradient stays finite at ``cos(theta) = +-1`` (same value and gradient elsewhere);
* ``ref_emb``/``ref_labels`` are rejected with an :class:`InputError` (PML raises a ``ValueError``), except the
  batch's own objects (``ref_emb=embeddings, ref_labels=labels``), which are the plain call, as in PML.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dynametric.distances import CosineSimilarity, Distance, LpDistance, SquaredL2Distance, as_distance
from dynametric.errors import ConfigError, InputError
from dynametric.losses.base import IndicesTuple, MetricLoss, check_count, check_positive
from dynametric.losses.reducers import DivisorReducer, MeanReducer, apply_reducer, zero_entry
from dynametric.tuples import check_indices_tuple

WeightInit = Callable[[torch.Tensor], Any]
WeightRegularizer = Callable[[torch.Tensor], torch.Tensor]

__all__ = [
    "ArcFaceLoss",
    "CosFaceLoss",
    "NormalizedSoftmaxLoss",
    "ProxyAnchorLoss",
    "ProxyNCALoss",
    "SoftTripleLoss",
    "masked_log1p_sum_exp",
    "miner_weights",
    "sparse_centers_regularizer",
]


def miner_weights(
    indices_tuple: IndicesTuple | None,
    num_rows: int,
    *,
    device: torch.device,
    anchors_only: bool = False,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Per-sample weight ``count_i / max_j count_j`` of how often sample ``i`` occurs in a miner's output.

    PML's ``convert_to_weights``: all ones when there is no (or an empty) ``indices_tuple``; with
    ``anchors_only`` only the anchors (``a`` of a triplet, ``a1`` and ``a2`` of pairs) are counted. The tuple is
    validated as the tuple losses validate it (:func:`dynametric.tuples.check_indices_tuple`: 1-D integer
    tensors, equal lengths, every entry in ``[0, num_rows)``, the positives and negatives too), else a one-line
    :class:`InputError` keyed ``indices_tuple``.
    """
    if indices_tuple is None:
        return torch.ones(num_rows, device=device, dtype=dtype)
    indices_tuple = check_indices_tuple(indices_tuple, num_rows, num_rows)
    if all(len(x) == 0 for x in indices_tuple):
        return torch.ones(num_rows, device=device, dtype=dtype)
    if anchors_only:
        parts = [indices_tuple[0]] if len(indices_tuple) == 3 else [indices_tuple[0], indices_tuple[2]]
    else:
        parts = list(indices_tuple)
    idx = torch.cat([p.to(device) for p in parts])
    if idx.numel() == 0:
        return torch.zeros(num_rows, device=device, dtype=dtype)
    counts = torch.bincount(idx, minlength=num_rows).to(dtype)
    return counts / counts.max()


def _compute_dtype(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, or float64 if it already is (half precision is never used for the loss maths)."""
    return x if x.dtype == torch.float64 else x.float()


def masked_log1p_sum_exp(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """``log(1 + sum_{mask} exp(x))`` along ``dim``; exactly 0 (and zero gradient) where ``mask`` is empty."""
    filled = x.masked_fill(~mask, torch.finfo(x.dtype).min)
    zeros = torch.zeros_like(filled.narrow(dim, 0, 1))
    out = torch.logsumexp(torch.cat([filled, zeros], dim=dim), dim=dim)
    return torch.where(mask.any(dim=dim), out, torch.zeros_like(out))


def sparse_centers_regularizer(centers: torch.Tensor, num_classes: int, centers_per_class: int) -> torch.Tensor:
    """SoftTriple's centre regulariser (Qian et al., ICCV 2019, eq. 8), PML's ``SparseCentersRegularizer``.

    ``R = sum_c sum_{t < t'} sqrt(2 + eps - 2 <w_ct, w_ct'>) / (C K (K - 1))`` on L2-normalised centres
    ``centers [C*K, D]`` (class-major); small when the centres of a class merge.
    """
    if centers_per_class < 2:
        raise InputError("the centre regulariser needs centers_per_class >= 2", key="centers_per_class")
    w = F.normalize(_compute_dtype(centers), dim=1).view(num_classes, centers_per_class, -1)
    sims = torch.bmm(w, w.transpose(1, 2))
    iu = torch.triu_indices(centers_per_class, centers_per_class, offset=1, device=centers.device)
    s = torch.clamp(2.0 * sims[:, iu[0], iu[1]], max=2.0)
    reg = torch.sqrt(2.0 + torch.finfo(s.dtype).tiny - s)
    return reg.sum() / (num_classes * centers_per_class * (centers_per_class - 1))


class _ClassWeightLoss(MetricLoss):
    """Shared plumbing: label range check, float32 maths without autocast, miner weights, weight regulariser."""

    @classmethod
    def pairs_in_batch(cls, kwargs: Mapping[str, Any]) -> bool:
        return False  # each embedding against the class weights: a batch of one class still has negatives

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        *,
        label_scale: int = 0,
        weight_regularizer: WeightRegularizer | None = None,
        weight_reg_weight: float = 1.0,
        weight_init_func: WeightInit | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(scale=label_scale, **kwargs)
        num_classes = check_count(num_classes, "num_classes")
        embedding_size = check_count(embedding_size, "embedding_size")
        for name, value, example in (("weight_regularizer", weight_regularizer, "LpRegularizer()"),
                                     ("weight_init_func", weight_init_func, "torch.nn.init.normal_")):
            if value is not None and not callable(value):  # else it would fail at the first call (or init)
                raise InputError(f"{name} must be callable (e.g. {example}) or None, got {value!r}", key=name)
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.weight_regularizer = weight_regularizer
        self.weight_reg_weight = weight_reg_weight
        self._weight_init_func = weight_init_func

    def _init_weight(self, weight: torch.Tensor, default: WeightInit) -> None:
        with torch.no_grad():
            (self._weight_init_func or default)(weight)

    def _check_labels(self, labels: torch.Tensor) -> None:
        """Labels in ``[0, num_classes)``: checked where the labels are (no accelerator read for host labels; labels
        on an accelerator at the first call only: :meth:`MetricLoss.check_label_range`)."""
        def message(lab: torch.Tensor, low: int, high: int) -> str:
            value = int(lab[(lab < 0) | (lab >= self.num_classes)][0])  # only on the way to the error
            return (f"label {value} is out of range for {type(self).__name__} with num_classes={self.num_classes} "
                    f"(labels must lie in [0, {self.num_classes - 1}]; remap raw ids first)")

        self.check_label_range(labels, self.num_classes, message)

    def _check_call(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor | None) -> None:
        if ref_emb is not None:
            raise InputError(f"{type(self).__name__} does not support ref_emb/ref_labels", key="ref_emb")
        if embeddings.shape[1] != self.embedding_size:
            raise InputError(f"embeddings have dimension {embeddings.shape[1]}, {type(self).__name__} was built "
                             f"with embedding_size={self.embedding_size}", key="embeddings")
        self._check_labels(labels)

    def compute_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: IndicesTuple | None,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        self._check_call(embeddings, labels, ref_emb)  # labels on the embeddings' device: prepare_reference's
        if embeddings.shape[0] == 0:
            return self.zero_loss(embeddings, "empty batch")
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            emb = _compute_dtype(embeddings)
            loss = apply_reducer(self._default_reducer(), self._loss(emb, labels, indices_tuple), emb, labels)
            if self.weight_regularizer is not None:
                loss = loss + self.weight_reg_weight * self.weight_regularizer(self._regularized_weights(emb.dtype))
        return loss

    def compute_loss_dict(self, embeddings, labels, indices_tuple, ref_emb, ref_labels) -> dict:
        self._check_call(embeddings, labels, ref_emb)
        if embeddings.shape[0] == 0:
            return {"loss": zero_entry()}
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            emb = _compute_dtype(embeddings)
            out = self._loss(emb, labels, indices_tuple)
            if self.weight_regularizer is not None:
                out["weight_reg_loss"] = {
                    "losses": self.weight_reg_weight * self.weight_regularizer(self._regularized_weights(emb.dtype)),
                    "indices": None, "reduction_type": "already_reduced"}
        return out

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The ``[B, C]`` class scores of ``embeddings`` (PML's ``get_logits``: what the loss's softmax or
        proxy terms see, before margins)."""
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            return self._logits(_compute_dtype(embeddings))

    def _logits(self, emb: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def _default_reducer(self):
        """The reduction used without ``reducer=`` (PML's default reducer of the loss)."""
        return MeanReducer()

    def _element(self, losses: torch.Tensor) -> dict:
        rows = torch.arange(losses.shape[0], device=losses.device)
        return {"loss": {"losses": losses, "indices": rows, "reduction_type": "element"}}

    def _loss(self, emb: torch.Tensor, labels: torch.Tensor, indices_tuple: IndicesTuple | None) -> dict:
        """The loss dictionary (PML layout) of ``emb`` (float32/float64, autocast off)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _regularized_weights(self, dtype: torch.dtype) -> torch.Tensor:
        """The class weights in the layout PML hands to its weight regularisers (one row per class/centre), a copy
        in ``dtype`` (the loss's compute dtype; the parameters keep theirs)."""
        raise NotImplementedError  # pragma: no cover - abstract


class ProxyNCALoss(_ClassWeightLoss):
    """ProxyNCA (Movshovitz-Attias et al., "No Fuss Distance Metric Learning using Proxies", ICCV 2017).

    ``L = mean_i w_i * -log softmax_c(-softmax_scale * d(f_i, P_c))[y_i]`` with ``d`` the squared Euclidean
    distance between L2-normalised embeddings and proxies (``distance`` overrides it; a similarity is used with
    a plus sign). Defaults as PML: ``softmax_scale=1``, proxies ``[C, D]`` drawn from ``N(0, 1)``.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        softmax_scale: float = 1.0,
        *,
        distance: Distance | None = None,
        scale: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, embedding_size, label_scale=scale, **kwargs)
        self.softmax_scale = softmax_scale
        self.distance = as_distance(distance) or SquaredL2Distance()
        self.proxies = nn.Parameter(torch.empty(self.num_classes, self.embedding_size))
        self._init_weight(self.proxies, nn.init.normal_)

    def _loss(self, emb: torch.Tensor, labels: torch.Tensor, indices_tuple: IndicesTuple | None) -> dict:
        dist = self.distance
        if isinstance(dist, LpDistance) and dist.p == 2 and dist.power == 2 and dist.normalize_embeddings:
            # unit vectors: ||a - b||^2 = 2 - 2 <a, b>, and softmax ignores the constant, so one matmul suffices
            cos = F.normalize(emb, dim=1) @ F.normalize(self.proxies.to(emb.dtype), dim=1).t()
            logits = (2.0 * self.softmax_scale) * cos
        else:
            mat = dist(emb, self.proxies.to(emb.dtype))
            logits = self.softmax_scale * (mat if dist.higher_is_closer else -mat)
        nll = -F.log_softmax(logits, dim=1).gather(1, labels[:, None]).squeeze(1)
        w = miner_weights(indices_tuple, emb.shape[0], device=emb.device, anchors_only=True, dtype=emb.dtype)
        return self._element(nll * w)

    def _logits(self, emb: torch.Tensor) -> torch.Tensor:
        return self.distance(emb, self.proxies.to(emb.dtype))

    def _regularized_weights(self, dtype: torch.dtype) -> torch.Tensor:
        return self.proxies.to(dtype)


class ProxyAnchorLoss(_ClassWeightLoss):
    """Proxy Anchor (Kim et al., "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020).

    With cosine ``s_ic`` between sample ``i`` and proxy ``c``:
    ``L = 1/|P+| sum_{c in P+} log(1 + sum_{i: y_i=c} e^{-alpha (s_ic - margin)})
    + 1/C sum_c log(1 + sum_{i: y_i != c} e^{alpha (s_ic + margin)})``, ``P+`` the proxies with a positive in
    the batch. Defaults as PML: ``margin=0.1``, ``alpha=32``, proxies ``kaiming_normal_(mode="fan_out")``.
    A miner's weights ``w_i`` enter as PML does, ``+ (w_i - 1)`` inside each exponent.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: float = 0.1,
        alpha: float = 32,
        *,
        distance: Distance | None = None,
        scale: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, embedding_size, label_scale=scale, **kwargs)
        self.margin = margin
        self.alpha = alpha
        self.distance = as_distance(distance) or CosineSimilarity()
        self.proxies = nn.Parameter(torch.empty(self.num_classes, self.embedding_size))
        self._init_weight(self.proxies, lambda t: nn.init.kaiming_normal_(t, mode="fan_out"))

    def _loss(self, emb: torch.Tensor, labels: torch.Tensor, indices_tuple: IndicesTuple | None) -> dict:
        cos = self._logits(emb)
        w = (miner_weights(indices_tuple, emb.shape[0], device=emb.device, dtype=emb.dtype) - 1.0)[:, None]
        pos_mask = F.one_hot(labels, self.num_classes).bool()
        pos_exp = self.distance.margin(cos, torch.full_like(cos, self.margin))  # margin - cos for similarities
        neg_exp = self.distance.margin(torch.full_like(cos, -self.margin), cos)  # cos + margin
        pos = masked_log1p_sum_exp(self.alpha * pos_exp + w, pos_mask, dim=0)
        neg = masked_log1p_sum_exp(self.alpha * neg_exp + w, ~pos_mask, dim=0)
        num_with_pos = pos_mask.any(dim=0).sum()  # a tensor: DivisorReducer divides without reading it
        rows = torch.arange(self.num_classes, device=emb.device)
        return {"pos_loss": {"losses": pos, "indices": rows, "reduction_type": "element", "divisor": num_with_pos},
                "neg_loss": {"losses": neg, "indices": rows, "reduction_type": "element",
                             "divisor": self.num_classes}}

    def _logits(self, emb: torch.Tensor) -> torch.Tensor:
        return self.distance(emb, self.proxies.to(emb.dtype))

    def _default_reducer(self):
        return DivisorReducer()

    def _regularized_weights(self, dtype: torch.dtype) -> torch.Tensor:
        return self.proxies.to(dtype)


class NormalizedSoftmaxLoss(_ClassWeightLoss):
    """Normalised softmax (Zhai & Wu, "Classification is a Strong Baseline for Deep Metric Learning", BMVC 2019).

    ``L = mean_i w_i * CE(cos(f_i, W_c) / temperature, y_i)``; default ``temperature=0.05`` (PML), ``W [D, C]``
    drawn from ``N(0, 1)``.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        temperature: float = 0.05,
        *,
        distance: Distance | None = None,
        scale: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, embedding_size, label_scale=scale, **kwargs)
        self.temperature = check_positive(temperature, "temperature")
        # PML's default DotProductSimilarity() normalises, i.e. the cosine
        self.distance = as_distance(distance) or CosineSimilarity()
        self.W = nn.Parameter(torch.empty(self.embedding_size, self.num_classes))
        self._init_weight(self.W, nn.init.normal_)

    def _loss(self, emb: torch.Tensor, labels: torch.Tensor, indices_tuple: IndicesTuple | None) -> dict:
        logits = self._logits(emb)
        w = miner_weights(indices_tuple, emb.shape[0], device=emb.device, dtype=emb.dtype)
        return self._element(F.cross_entropy(logits, labels, reduction="none") * w)

    def _logits(self, emb: torch.Tensor) -> torch.Tensor:
        # the class vectors are always normalised (with the distance's p-norm), as in PML
        logits = self.distance(emb, self.distance.normalize(self.W.to(emb.dtype), dim=0).t()) / self.temperature
        return logits if self.distance.higher_is_closer else -logits

    def _regularized_weights(self, dtype: torch.dtype) -> torch.Tensor:
        return self.W.to(dtype).t()


class _MarginSoftmaxLoss(_ClassWeightLoss):
    """Cross-entropy on ``scale * cos`` with a modified target cosine (CosFace, ArcFace)."""

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: float,
        scale: float,
        *,
        label_scale: int = 0,
        distance: Distance | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, embedding_size, label_scale=label_scale, **kwargs)
        self.distance = as_distance(distance) or CosineSimilarity()
        if not (self.distance.higher_is_closer and self.distance.normalize_embeddings):
            raise ConfigError(f"{type(self).__name__} needs cosine similarity, got {self.distance!r}", key="distance")
        # ``scale`` is the logit scale (PML's keyword); it is stored as ``logit_scale`` because the attribute
        # ``self.scale`` is the label column of the base contract (set from ``label_scale``).
        self.logit_scale = scale
        self.margin = margin
        self.W = nn.Parameter(torch.empty(self.embedding_size, self.num_classes))
        self._init_weight(self.W, nn.init.normal_)

    def _target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    def scale_hint(self) -> str:
        return (f"; on dynametric's {type(self).__name__} .scale is the label column (the constructor's label_scale), "
                f"PML's .scale (the logit scale) is .logit_scale, now {self.logit_scale}: set "
                f"loss.logit_scale instead")

    def _loss(self, emb: torch.Tensor, labels: torch.Tensor, indices_tuple: IndicesTuple | None) -> dict:
        cos = self.distance(emb, self.W.to(emb.dtype).t())
        target = cos.gather(1, labels[:, None])
        logits = cos.scatter(1, labels[:, None], self._target_logit(target)) * self.logit_scale
        w = miner_weights(indices_tuple, emb.shape[0], device=emb.device, dtype=emb.dtype)
        return self._element(F.cross_entropy(logits, labels, reduction="none") * w)

    def _logits(self, emb: torch.Tensor) -> torch.Tensor:
        return self.distance(emb, self.W.to(emb.dtype).t()) * self.logit_scale

    def _regularized_weights(self, dtype: torch.dtype) -> torch.Tensor:
        return self.W.to(dtype).t()


class CosFaceLoss(_MarginSoftmaxLoss):
    """CosFace / large-margin cosine loss (Wang et al., CVPR 2018).

    ``L = mean_i w_i * CE(scale * (cos(f_i, W_c) - margin * [c = y_i]), y_i)``; defaults ``margin=0.35``,
    ``scale=64`` (PML). The keyword ``scale`` is the logit scale (attribute ``logit_scale``); choose the label
    column with ``label_scale``.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: float = 0.35,
        scale: float = 64,
        *,
        label_scale: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, embedding_size, margin, scale, label_scale=label_scale, **kwargs)

    def _target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        return cos_target - self.margin


class ArcFaceLoss(_MarginSoftmaxLoss):
    """ArcFace / additive angular margin (Deng et al., CVPR 2019).

    Target logit ``cos(theta + m)`` when ``theta <= pi - m``, else ``cos(theta) - m sin(m)`` (keeps it
    monotonic, as PML); ``L = mean_i w_i * CE(scale * logits, y_i)``. ``margin`` is in **degrees** as in PML
    (default 28.6 deg = 0.5 rad), ``scale=64``. ``self.margin`` holds radians (PML does the same).
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        margin: float = 28.6,
        scale: float = 64,
        *,
        label_scale: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, embedding_size, math.radians(margin), scale, label_scale=label_scale, **kwargs)
        self.margin_degrees = margin

    def _target_logit(self, cos_target: torch.Tensor) -> torch.Tensor:
        m = self.margin
        c = cos_target.clamp(-1.0, 1.0)
        # eps**2 under the root: value exact to the dtype's resolution, gradient bounded at cos = +-1
        sin = torch.sqrt((1.0 - c * c).clamp_min(torch.finfo(c.dtype).eps ** 2))
        plus_margin = c * math.cos(m) - sin * math.sin(m)
        return torch.where(c >= math.cos(math.pi - m), plus_margin, c - m * math.sin(m))


class SoftTripleLoss(_ClassWeightLoss):
    """SoftTriple (Qian et al., "SoftTriple Loss: Deep Metric Learning Without Triplet Sampling", ICCV 2019).

    ``K = centers_per_class`` centres per class; with cosine ``s_ick`` to centre ``k`` of class ``c``,
    ``S_ic = sum_k softmax_k(s_ick / gamma) s_ick`` and
    ``L = mean_i w_i * CE(la * (S_ic - margin * [c = y_i]), y_i) + centers_reg_weight * R`` with ``R`` the centre
    regulariser :func:`sparse_centers_regularizer`. Defaults as PML: ``centers_per_class=10``, ``la=20``,
    ``gamma=0.1``, ``margin=0.01``; the regulariser is off by default as in PML (the paper uses
    ``centers_reg_weight = tau = 0.2``; PML's equivalent is ``weight_regularizer=SparseCentersRegularizer``).
    ``fc`` is ``[D, C*K]`` (class-major columns), initialised ``kaiming_uniform_(a=sqrt(5))``.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        centers_per_class: int = 10,
        la: float = 20,
        gamma: float = 0.1,
        margin: float = 0.01,
        *,
        centers_reg_weight: float = 0.0,
        distance: Distance | None = None,
        scale: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes, embedding_size, label_scale=scale, **kwargs)
        self.distance = as_distance(distance) or CosineSimilarity()
        if not self.distance.higher_is_closer:
            raise ConfigError(f"SoftTripleLoss needs a similarity, got {self.distance!r}", key="distance")
        centers_per_class = check_count(centers_per_class, "centers_per_class")
        if centers_reg_weight and centers_per_class < 2:
            raise InputError("centers_reg_weight > 0 needs centers_per_class >= 2", key="centers_reg_weight")
        self.centers_per_class = int(centers_per_class)
        self.la = la
        self.gamma = check_positive(gamma, "gamma")
        self.margin = margin
        self.centers_reg_weight = centers_reg_weight
        self.fc = nn.Parameter(torch.empty(self.embedding_size, self.num_classes * self.centers_per_class))
        self._init_weight(self.fc, lambda t: nn.init.kaiming_uniform_(t, a=math.sqrt(5)))

    def class_similarities(self, emb: torch.Tensor) -> torch.Tensor:
        """``S [B, C]``: the softmax(``1/gamma``)-weighted mix of each class's centre cosines."""
        sim = self.distance(emb, self.fc.to(emb.dtype).t())
        sim = sim.view(-1, self.num_classes, self.centers_per_class)
        prob = F.softmax(sim / self.gamma, dim=2)
        return (prob * sim).sum(dim=2)

    def _loss(self, emb: torch.Tensor, labels: torch.Tensor, indices_tuple: IndicesTuple | None) -> dict:
        sim = self.class_similarities(emb)
        margin = torch.zeros_like(sim).scatter(1, labels[:, None], self.margin)
        w = miner_weights(indices_tuple, emb.shape[0], device=emb.device, dtype=emb.dtype)
        out = self._element(F.cross_entropy(self.la * (sim - margin), labels, reduction="none") * w)
        if self.centers_reg_weight:
            reg = self.centers_reg_weight * sparse_centers_regularizer(
                self.fc.to(emb.dtype).t(), self.num_classes, self.centers_per_class)
            out["centers_reg_loss"] = {"losses": reg, "indices": None, "reduction_type": "already_reduced"}
        return out

    def _logits(self, emb: torch.Tensor) -> torch.Tensor:
        return self.class_similarities(emb)

    def _regularized_weights(self, dtype: torch.dtype) -> torch.Tensor:
        return self.fc.to(dtype).t()
