"""Cross-Scale Learning (CSL), the loss of Dynamic Metric Learning (Sun et al., "Dynamic Metric Learning: Towards a
Scalable Metric Space to Accommodate Multiple Semantic Scales", CVPR 2021).

The paper's exact equation is not public [U]; this follows the only public implementation, which matches the
stated idea. One learnable proxy ``P_c`` per **fine** training class ``c`` carries the class's full label path
``(y_c^(0), ..., y_c^(S-1))`` (finest first). For an L2-normalised embedding ``f`` with cosine ``s_c = <f, P_c/|P_c|>``:

    L_l(f) = softplus( logsumexp_{c in N_l} gamma s_c + logsumexp_{p in P} (-gamma s_p) + gamma m_l )
           = log(1 + sum_{c in N_l} sum_{p in P} exp(gamma (s_c - s_p + m_l)))

with negatives ``N_l = {c : y_c^(l) != y^(l)(f)}`` at scale ``l`` and positives always fine-level,
``P = {c : y_c^(0) = y^(0)(f)}`` (the own proxy). ``L_CSL = sum_l w_l mean_f L_l(f)``. Defaults [U]: ``gamma=32``,
``margins=(0.25, 0.35, 0.45)`` (fine, middle, coarse), ``w_l = 1``. Because ``N_2 ⊆ N_1 ⊆ N_0`` the space is
graded: other fine classes of the same middle class below ``s_p - m_0``, other middle classes below ``s_p - m_1``,
other coarse classes below ``s_p - m_2``.

``mode="pairs"`` [U] applies the same formula with the other in-batch samples in place of proxies (positives share
the fine label, negatives at scale ``l`` differ at scale ``l``); anchors without a positive are skipped (the mean
is over the anchors with one; zero when none has one) and counted in :attr:`CSLLoss.last_skipped_anchors`.
Its labels must nest (each fine class in one parent per scale): two rows sharing a fine label but differing at a
coarser column are a pair that is positive and, at that scale, negative at once. Without ``class_paths`` nothing
checks that per call (it would need a host read in every training step; the proxy mode's :meth:`from_labels` and
the training data readers refuse such labels before a run): pass ``check_nesting=True`` to check every call's labels
(host reads in every call), or check the label matrix once with :meth:`CSLLoss.check_nesting_of`.
Per-scale terms of the last call are in :attr:`CSLLoss.last_terms`; :meth:`CSLLoss.terms` returns them with
gradient. :meth:`CSLLoss.loss_parts` gives the weighted terms ``w_l mean_f L_l(f)`` of the last call by scale name
(they add up to the loss); a training run logs them as ``train/<term>/<scale>``.

Host reads (each one stalls the CPU until the accelerator's queued work is done): a call makes none, except the
check of the batch labels against ``class_paths`` (two), which :meth:`CSLLoss.trust_labels` turns off after checking
once a label matrix that every batch comes from (the engine does so with the training split's labels). The
skipped-anchor count stays on the device until :attr:`CSLLoss.last_skipped_anchors` is read.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dynametric.errors import InputError
from dynametric.labels import LabelsLike, as_label_matrix
from dynametric.losses.base import IndicesTuple, MetricLoss, check_count, check_embeddings
from dynametric.tuples import compute_dtype

__all__ = ["CSLLoss"]

_MODES = ("proxy", "pairs")


def _masked_logsumexp(x: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    """``logsumexp`` of ``x`` over ``mask`` along ``dim``; rows with an empty mask give ``-inf`` in value only
    (callers select them away with ``torch.where``), never NaN gradients."""
    filled = x.masked_fill(~mask, torch.finfo(x.dtype).min)
    out = torch.logsumexp(filled, dim=dim)
    return torch.where(mask.any(dim=dim), out, torch.full_like(out, -math.inf))


def _csl_term(neg_lse: torch.Tensor, pos_lse: torch.Tensor, gamma_margin: float) -> torch.Tensor:
    """``softplus(neg_lse + pos_lse + gamma m)``, exactly 0 where either set is empty (``-inf``), NaN where either is
    NaN (a non-finite embedding or proxy: never a silent 0, which would hide it from ``trainer.nonfinite``). The
    softplus is ``logaddexp(z, 0)``: ``F.softplus`` returns ``z`` itself above its threshold of 20, dropping
    ``log1p(exp(-z))`` (``2e-9`` at 20: a relative error of ``1e-10`` in float64, below float32's resolution)."""
    empty = -math.inf
    valid = (neg_lse != empty) & (pos_lse != empty)  # NaN compares unequal: kept, so the term is NaN
    z = torch.where(valid, neg_lse + pos_lse + gamma_margin, torch.zeros_like(neg_lse))
    return torch.where(valid, torch.logaddexp(z, torch.zeros_like(z)), torch.zeros_like(z))


def _numbers(values: Any, arg: str, what: str) -> tuple[float, ...]:
    """``values`` as a tuple of floats; anything but a list of numbers is an :class:`InputError` on ``arg``."""
    if not isinstance(values, (Sequence, torch.Tensor)) or isinstance(values, str) or not all(
            isinstance(v, numbers.Real) and not isinstance(v, bool) for v in
            (values.tolist() if isinstance(values, torch.Tensor) else values)):
        raise InputError(f"expected a list of numbers for {arg} ({what}), got {values!r} ({type(values).__name__})",
                         key=arg)
    return tuple(float(v) for v in (values.tolist() if isinstance(values, torch.Tensor) else values))


class CSLLoss(MetricLoss):
    """Cross-Scale Learning loss (DyML, CVPR 2021; METHODS 3.8). ``uses_all_scales``: labels are ``[B, S]``.

    Args:
        class_paths: ``LongTensor[C_fine, S]``, row ``c`` is the label path of fine training class ``c`` (finest
            first, raw ids). Fine ids must be unique. Batch labels are raw ids, mapped to proxies by the fine
            column. May be ``None`` only in ``mode="pairs"`` (then no proxies exist).
        embedding_size: ``D`` of the proxies.
        gamma: scale of the cosine similarities (32; must be > 0).
        margins: one margin per scale, finest first, usually growing ((0.25, 0.35, 0.45)).
        weights: per-scale weights of the summed terms (all 1; non-negative, not all zero).
        mode: ``"proxy"`` (default) or ``"pairs"`` (in-batch samples in place of proxies).
        weight_init_func: initialiser of the ``[C, D]`` proxies (default uniform in ``±1/sqrt(D)``).
        check_nesting: check in every call that the batch's labels (and the reference set's) nest: rows with one
            fine label share their whole label path (else a pair is positive and negative at once). Off by default:
            it reads the device in every call. With ``class_paths`` (and untrusted labels) each row is checked
            against its registered path anyway; ``mode="pairs"`` without them checks nothing else.

    ``labels_trusted`` (False until :meth:`trust_labels`): whether a call skips the check of its labels against
    ``class_paths``.
    """

    class_paths: torch.Tensor | None
    _sorted_fine: torch.Tensor | None
    _sorted_order: torch.Tensor | None
    last_terms: torch.Tensor | None

    uses_all_scales = True

    @classmethod
    def pairs_in_batch(cls, kwargs: Mapping[str, Any]) -> bool:
        return kwargs.get("mode", "proxy") == "pairs"  # the proxy mode compares embeddings with the class proxies

    def __init__(
        self,
        class_paths: LabelsLike | None,
        embedding_size: int,
        gamma: float = 32.0,
        margins: Sequence[float] = (0.25, 0.35, 0.45),
        weights: Sequence[float] | None = None,
        mode: str = "proxy",
        *,
        weight_init_func: Any = None,
        check_nesting: bool = False,
    ) -> None:
        super().__init__(scale=0)
        if not isinstance(check_nesting, bool):
            raise InputError(f"check_nesting must be true or false, got {check_nesting!r}", key="check_nesting")
        self.check_nesting = check_nesting
        if mode not in _MODES:
            raise InputError(f"mode must be one of {list(_MODES)}, got {mode!r}", key="mode")
        self.mode = mode
        if isinstance(gamma, bool) or not (math.isfinite(float(gamma)) and float(gamma) > 0):
            raise InputError(f"gamma (the cosine scale) must be a number > 0, got {gamma!r}", key="gamma")
        self.gamma = float(gamma)
        self.margins = _numbers(margins, "margins", "one margin per scale, finest first")
        if not self.margins:
            raise InputError("margins must name one margin per scale", key="margins")
        num_scales = len(self.margins)
        self.weights = (_numbers(weights, "weights", "one weight per scale, finest first") if weights is not None
                        else (1.0,) * num_scales)
        if len(self.weights) != num_scales:
            raise InputError(f"weights has {len(self.weights)} entries but margins has {num_scales}", key="weights")
        if not all(math.isfinite(w) and w >= 0 for w in self.weights) or not any(w > 0 for w in self.weights):
            raise InputError(f"weights must be non-negative, not all zero, got {list(self.weights)}", key="weights")
        self.embedding_size = check_count(embedding_size, "embedding_size")
        self.num_scales = num_scales
        # on the module's device once (a tensor built from the list every call is a host -> device copy per step)
        self.register_buffer("_weights", torch.tensor(self.weights, dtype=torch.float32), persistent=False)
        self.last_terms: torch.Tensor | None = None
        self._skipped: torch.Tensor | None = None  # anchors without a positive in the last call (pairs), on device
        self.labels_trusted = False
        self._parts: torch.Tensor | None = None  # the weighted per-scale terms of the last compute_loss, detached

        if class_paths is None:
            if mode == "proxy":
                raise InputError("mode='proxy' needs class_paths (one label path per fine training class)",
                                 key="class_paths")
            self.num_classes = 0
            self.register_buffer("class_paths", None)
            self.register_buffer("_sorted_fine", None)
            self.register_buffer("_sorted_order", None)
            self.proxies = None
            return

        paths = as_label_matrix(class_paths, name="class_paths")
        if paths.shape[1] != num_scales:
            raise InputError(f"class_paths has {paths.shape[1]} scale column(s) but {num_scales} margins were "
                             f"given; pass one margin per scale", key="margins")
        sorted_fine, order = torch.sort(paths[:, 0])
        dup = sorted_fine[1:] == sorted_fine[:-1]
        if bool(dup.any()):
            fid = int(sorted_fine[1:][dup][0])
            raise InputError(f"fine id {fid} appears in more than one row of class_paths; fine ids must be unique",
                             key="class_paths")
        self.num_classes = int(paths.shape[0])
        self.register_buffer("class_paths", paths.clone())
        self.register_buffer("_sorted_fine", sorted_fine)
        self.register_buffer("_sorted_order", order)
        if mode == "proxy":
            self.proxies = nn.Parameter(torch.empty(self.num_classes, self.embedding_size))
            with torch.no_grad():
                if weight_init_func is None:
                    bound = 1.0 / math.sqrt(self.embedding_size)
                    nn.init.uniform_(self.proxies, -bound, bound)
                else:
                    weight_init_func(self.proxies)
        else:
            self.proxies = None

    @staticmethod
    def check_nesting_of(labels: LabelsLike, what: str = "labels", key: str = "labels") -> None:
        """Raise an :class:`InputError` (keyed ``key``) when two rows of ``labels`` (``[N, S]``, raw ids, finest
        first) share a fine label but differ at a coarser column: such a pair is a positive (same fine class) and a
        negative at that scale at once. Reads the device (host reads: a sync)."""
        mat = as_label_matrix(labels, name=key)
        if mat.shape[0] < 2 or mat.shape[1] < 2:
            return
        paths = torch.unique(mat, dim=0)  # sorted lexicographically: the paths of one fine id are adjacent
        same = paths[1:, 0] == paths[:-1, 0]
        if not bool(same.any()):
            return
        i = int(torch.nonzero(same)[0])
        first, second = paths[i], paths[i + 1]
        level = int(torch.nonzero(first != second)[0])
        rows = [int(torch.nonzero((mat == p.to(mat.device)).all(dim=1))[0]) for p in (first, second)]
        raise InputError(f"{what} do not nest: rows {min(rows)} and {max(rows)} share fine label {int(first[0])} "
                         f"but differ at scale {level} ({first.tolist()} and {second.tolist()}), a pair that is "
                         f"positive and negative at once; each fine class must belong to one parent per scale",
                         key=key)

    @classmethod
    def from_labels(cls, train_labels: LabelsLike, embedding_size: int, **kwargs: Any) -> CSLLoss:
        """Build the class paths from a training label matrix ``[N, S]`` (one path per distinct fine id).

        Raises :class:`InputError` if one fine id has two different paths (an inconsistent hierarchy).
        """
        mat = as_label_matrix(train_labels, name="train_labels")
        paths = torch.unique(mat, dim=0)
        fine = paths[:, 0]
        same = fine[1:] == fine[:-1]  # torch.unique(dim=0) sorts rows lexicographically
        if bool(same.any()):
            i = int(torch.nonzero(same)[0])
            raise InputError(f"fine id {int(fine[i])} has two label paths {paths[i].tolist()} and "
                             f"{paths[i + 1].tolist()}; each fine class must belong to one parent per scale",
                             key="train_labels")
        return cls(paths, embedding_size, **kwargs)

    def class_index(self, fine_labels: torch.Tensor) -> torch.Tensor:
        """Row of ``class_paths`` (= proxy index) of each raw fine id; unknown ids raise :class:`InputError`."""
        assert self._sorted_fine is not None and self._sorted_order is not None
        sorted_fine = self._sorted_fine.to(fine_labels.device)
        pos = torch.searchsorted(sorted_fine, fine_labels.contiguous()).clamp_max(sorted_fine.numel() - 1)
        found = sorted_fine[pos] == fine_labels
        if not bool(found.all()):
            fid = int(fine_labels[~found][0])
            raise InputError(f"fine label {fid} is not one of the {self.num_classes} fine training classes this "
                             f"CSLLoss was built with", key="labels")
        return self._sorted_order.to(fine_labels.device)[pos]

    @property
    def last_skipped_anchors(self) -> int:
        """Anchors of the last call without an in-batch positive (pairs mode; 0 in proxy mode). Kept on the device
        by the call and read here, on demand (a host read)."""
        return 0 if self._skipped is None else int(self._skipped)

    def trust_labels(self, train_labels: LabelsLike) -> None:
        """Check every row of ``train_labels`` (``[N, S]``, raw ids) against ``class_paths`` once, on the host,
        and from then on skip that check in each call (:attr:`labels_trusted`): it reads the device twice per
        call. For a caller whose batches are all rows of ``train_labels``, as the engine's training batches are
        rows of the training split. A row that does not fit raises the :class:`InputError` a call would raise
        (keyed ``train_labels``), and nothing is trusted. Without ``class_paths`` (pairs mode) there is nothing
        to check. The column count is still checked in every call (a shape, no read)."""
        mat = as_label_matrix(train_labels, name="train_labels").cpu()
        self.labels_trusted = False
        self._check_batch_labels(mat, what="training label row", key="train_labels")
        self.labels_trusted = True

    def _check_batch_labels(self, labels: torch.Tensor, what: str = "batch row", key: str = "labels") -> None:
        if labels.shape[1] != self.num_scales:
            rows = "B" if key == "labels" else "M"
            raise InputError(f"CSLLoss expects {key} [{rows}, {self.num_scales}] (one column per margin), got "
                             f"{labels.shape[1]} column(s)", key=key)
        if self.class_paths is None or self.labels_trusted:
            return
        try:
            idx = self.class_index(labels[:, 0])
        except InputError as err:
            if key == "labels":
                raise
            raise InputError(err.message, key=key) from None
        expected = self.class_paths.to(labels.device)[idx]
        bad = (expected != labels).any(dim=1)
        if bool(bad.any()):
            i = int(torch.nonzero(bad)[0])
            raise InputError(f"{what} {i} has label path {labels[i].tolist()} but fine class {int(labels[i, 0])} "
                             f"was registered with path {expected[i].tolist()}", key=key)

    def compute_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: IndicesTuple | None,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        if indices_tuple is not None:
            raise InputError("CSLLoss uses every proxy (or every in-batch pair) and takes no indices_tuple; "
                             "remove the miner", key="indices_tuple")
        terms, _ = self._terms(embeddings, labels, ref_emb, ref_labels)
        if terms is None:
            self._parts = embeddings.new_zeros(self.num_scales).detach()
            return self.zero_loss(embeddings, "empty batch")
        weights: torch.Tensor = self._weights  # type: ignore[assignment]  # a buffer
        w = weights.to(device=terms.device, dtype=terms.dtype)
        weighted = terms * w
        self._parts = weighted.detach()
        return weighted.sum()

    def loss_parts(self) -> dict[str, torch.Tensor]:
        """The weighted per-scale terms ``w_l mean_f L_l(f)`` of the last call, ``{scale name: 0-dim tensor}``
        (:attr:`scale_names`, else ``fine, middle, coarse`` for three scales); they add up to the loss (without an
        ``embedding_regularizer``). Empty before the first call."""
        if self._parts is None:
            return {}
        from dynametric.labels import default_scale_names

        names = list(self.scale_names) if self.scale_names is not None else []
        if len(names) != self.num_scales:
            names = default_scale_names(self.num_scales)
        return dict(zip(names, self._parts.unbind(), strict=True))

    def terms(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> torch.Tensor | None:
        """Per-scale terms ``[S]`` (``mean_f L_l(f)``, unweighted, with gradient); ``None`` for an empty batch
        and, in ``pairs`` mode, when no anchor has a positive (found by a host read; a loss call gives zeros
        there instead, without one). Also stored, detached, in :attr:`last_terms`."""
        check_embeddings(embeddings)
        labels, ref_emb, ref_labels = self.prepare_reference(embeddings, labels, ref_emb, ref_labels)
        # this call's own skipped count (self's is the last call's: another thread's under concurrent calls)
        out, skipped = self._terms(embeddings, labels, ref_emb, ref_labels)
        if out is not None and skipped is not None and int(skipped) == embeddings.shape[0]:  # pairs: no anchor has one
            self.last_terms = None
            return None
        return out

    def _terms(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(terms, skipped)``: the per-scale terms, or ``None`` for an empty batch (a shape: no host read, but for
        ``check_nesting``), and in pairs mode the count of anchors without a positive (on the device; ``None`` in
        proxy mode and for an empty batch). The count is this call's own; it is also kept for
        :attr:`last_skipped_anchors`. ``ref_labels is labels`` (:meth:`prepare_reference`): the reference set's
        labels are the batch's, so ``(i, i)`` is no positive."""
        same_labels = ref_labels is None or ref_labels is labels
        self._check_batch_labels(labels)  # labels and ref_labels on the embeddings' device: prepare_reference's
        if ref_labels is not None:
            ref_labels = labels if same_labels else ref_labels
            self._check_batch_labels(ref_labels, "ref_labels row", key="ref_labels")
        if self.check_nesting:  # opt-in: a host read per call
            both = labels if ref_labels is None or same_labels else torch.cat([labels, ref_labels])
            self.check_nesting_of(both, "the batch's labels" if both is labels else
                                  "the batch's labels and ref_labels (rows of ref_labels follow the batch's)")
        skipped: torch.Tensor | None = None
        if embeddings.shape[0] == 0:
            self._skipped = None
            self.last_terms = None
            return None, None
        out: torch.Tensor
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            # float64 when the embeddings or the reference set are (their promotion), float32 otherwise
            dtype = torch.float64 if compute_dtype(embeddings, ref_emb) == torch.float64 else torch.float32
            f = F.normalize(embeddings.to(dtype), dim=1)
            if self.mode == "proxy":
                if ref_emb is not None:
                    raise InputError("CSLLoss(mode='proxy') does not use ref_emb/ref_labels", key="ref_emb")
                out = self._proxy_terms(f, labels)
            else:
                if ref_emb is None:
                    r, ref_labels = f, labels
                else:
                    r = F.normalize(ref_emb.to(dtype), dim=1)
                assert ref_labels is not None
                out, skipped = self._pair_terms(f, labels, r, ref_labels, same_labels)
        self._skipped = skipped
        self.last_terms = out.detach()
        return out, skipped

    def _proxy_terms(self, f: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        assert self.proxies is not None and self.class_paths is not None
        if f.shape[1] != self.embedding_size:
            raise InputError(f"embeddings have dimension {f.shape[1]}, CSLLoss was built with embedding_size="
                             f"{self.embedding_size}", key="embeddings")
        sims = self.gamma * (f @ F.normalize(self.proxies.to(f.dtype), dim=1).t())  # [B, C]
        paths = self.class_paths.to(labels.device)
        pos_mask = labels[:, :1] == paths[:, 0][None, :]
        pos_lse = _masked_logsumexp(-sims, pos_mask, dim=1)
        out = []
        for level, margin in enumerate(self.margins):  # loop over the S scales only
            neg_mask = labels[:, level, None] != paths[:, level][None, :]
            neg_lse = _masked_logsumexp(sims, neg_mask, dim=1)
            out.append(_csl_term(neg_lse, pos_lse, self.gamma * margin).mean())
        return torch.stack(out)

    def _pair_terms(
        self, f: torch.Tensor, labels: torch.Tensor, r: torch.Tensor, ref_labels: torch.Tensor, same_set: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-scale means over the anchors with a positive, zeros when none has one, and the count of anchors
        without one (on the device); no host read."""
        sims = self.gamma * (f @ r.t())  # [B, R]
        pos_mask = labels[:, :1] == ref_labels[:, 0][None, :]
        if same_set:
            pos_mask.fill_diagonal_(False)
        has_pos = pos_mask.any(dim=1)
        skipped = (~has_pos).sum()
        # a debug message only: the count is read while debug logging is on, until the first skip is logged
        self._log_once.when("skipped", lambda: int(skipped) > 0,
                            lambda: f"CSLLoss(pairs): anchors without an in-batch positive are skipped "
                                    f"({int(skipped)} in this batch)")
        # _csl_term is exactly 0 (with zero gradients) for an anchor without a positive, so the sum over all anchors
        # is the sum over those with one; dividing by their count (at least 1) is their mean, 0 when there is none
        count = has_pos.sum().clamp(min=1)
        pos_lse = _masked_logsumexp(-sims, pos_mask, dim=1)
        out = []
        for level, margin in enumerate(self.margins):
            neg_mask = labels[:, level, None] != ref_labels[:, level][None, :]
            neg_lse = _masked_logsumexp(sims, neg_mask, dim=1)
            term = _csl_term(neg_lse, pos_lse, self.gamma * margin)
            out.append(term.sum() / count)
        return torch.stack(out), skipped
