"""Triplet margin loss (Weinberger & Saul, JMLR 2009; Schroff et al., "FaceNet", CVPR 2015).

``L = avg_nonzero_{(a,p,n)} [d_ap - d_an + margin]_+`` (for similarities ``s_an - s_ap + margin``). Keyword
arguments, defaults and reduction as pytorch-metric-learning's ``TripletMarginLoss``: ``margin=0.05``,
``swap=False`` (use ``min(d_an, d_pn)``, Balntas et al. 2016), ``smooth_loss=False`` (``softplus`` instead of the
hinge), ``triplets_per_anchor="all"`` (or an int: that many random triplets per anchor, drawn with torch's
generator in one vectorised draw, so under one seed not the triplets of PML's per-class sampling loop: the value
differs from PML's, and equals it on the same triplets), Euclidean distance of L2-normalised embeddings. Many
papers use squared distances (``distance=SquaredL2Distance()``, margin 0.2 for FaceNet). Difference from PML: with
``swap`` and ``ref_emb`` the positive-negative distance is computed between the two reference embeddings (PML
indexes the query-reference matrix with reference indices).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dynametric.distances import Distance, LpDistance, as_distance
from dynametric.errors import ConfigError
from dynametric.losses.base import IndicesTuple, MetricLoss
from dynametric.losses.reducers import avg_nonzero_reduce, graph_zero, zero_entry
from dynametric.tuples import (
    anchor_chunks,
    check_miner_output,
    convert_to_triplets,
    distance_matrix,
    match_masks,
    padded_positives,
)


def check_triplets_per_anchor(value: int | str) -> int | str:
    """``"all"`` or a positive integer."""
    if value == "all":
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"triplets_per_anchor must be 'all' or a positive integer, got {value!r}",
                          key="triplets_per_anchor")
    return value


class TripletMarginLoss(MetricLoss):
    """Hinge (or softplus) on the triplet margin; PML-compatible (see module docstring)."""

    works_without_labels = True

    def __init__(
        self,
        margin: float = 0.05,
        swap: bool = False,
        smooth_loss: bool = False,
        triplets_per_anchor: int | str = "all",
        distance: Distance | None = None,
        scale: int = 0,
        *,
        reducer: Any = None,
        embedding_regularizer: Any = None,
        embedding_reg_weight: float = 1.0,
        collect_stats: bool = False,
    ) -> None:
        super().__init__(scale, reducer=reducer, embedding_regularizer=embedding_regularizer,
                         embedding_reg_weight=embedding_reg_weight, collect_stats=collect_stats)
        self.margin = margin
        self.swap = swap
        self.smooth_loss = smooth_loss
        self.triplets_per_anchor = check_triplets_per_anchor(triplets_per_anchor)
        self.distance = as_distance(distance) or LpDistance()

    def compute_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: IndicesTuple | None,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        indices_tuple, _ = check_miner_output(indices_tuple, embeddings, ref_emb)
        if indices_tuple is None and self.triplets_per_anchor == "all":
            return self._all_triplets(embeddings, labels, ref_emb, ref_labels)
        a, p, n = convert_to_triplets(indices_tuple, labels, ref_labels, self.triplets_per_anchor)
        if a.numel() == 0:
            return self.zero_loss(embeddings, "no triplets (no positive pair or a single class)")
        mat = distance_matrix(self.distance, embeddings, ref_emb)
        ap = mat[a, p]
        an = mat[a, n]
        if self.swap:
            ref_mat = mat if ref_emb is None else distance_matrix(self.distance, ref_emb, None)
            pn = ref_mat[p, n]
            an = torch.maximum(an, pn) if self.distance.higher_is_closer else torch.minimum(an, pn)
        violation = self.distance.margin(ap, an) + self.margin
        loss = F.softplus(violation) if self.smooth_loss else F.relu(violation)
        return avg_nonzero_reduce(loss, mat)

    def _all_triplets(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        """All triplets without enumerating indices: dense ``[chunk, P_max, R]`` blocks of violations."""
        pos, neg = match_masks(labels, ref_labels)
        # one read to the host for both the "no triplet" exit and the positives' padding (a shape): on a GPU each
        # read waits for the queued work, so one per call instead of one each
        most, has_triplets = torch.stack([pos.sum(1).max(), (pos.any(1) & neg.any(1)).any().long()]).tolist() \
            if pos.numel() else (0, 0)
        if not has_triplets:
            return self.zero_loss(embeddings, "no triplets (no positive pair or a single class)")
        mat = distance_matrix(self.distance, embeddings, ref_emb)
        ref_mat = None
        if self.swap:
            ref_mat = mat if ref_emb is None else distance_matrix(self.distance, ref_emb, None)
        pos_idx, valid = padded_positives(pos, most)
        if ref_mat is None:
            # memory O(B R) whatever the number of triplets: the gradient w.r.t. the distance matrix is recomputed
            # chunk by chunk in backward instead of keeping a [B, P_max, R] graph
            sign = -1.0 if self.distance.higher_is_closer else 1.0
            return _AllTripletsHinge.apply(mat, pos_idx, valid, neg, float(self.margin), sign, self.smooth_loss)
        total = graph_zero(mat)
        count = torch.zeros((), dtype=torch.long, device=mat.device)
        for start, stop in anchor_chunks(mat.shape[0], pos_idx.shape[1] * mat.shape[1]):
            rows = mat[start:stop]
            ap = rows.gather(1, pos_idx[start:stop]).unsqueeze(2)  # [c, P, 1]
            an = rows.unsqueeze(1)  # [c, 1, R]
            if ref_mat is not None:
                pn = ref_mat[pos_idx[start:stop]]  # [c, P, R]
                an = torch.maximum(an, pn) if self.distance.higher_is_closer else torch.minimum(an, pn)
            violation = self.distance.margin(ap, an) + self.margin
            loss = F.softplus(violation) if self.smooth_loss else F.relu(violation)
            keep = valid[start:stop].unsqueeze(2) & neg[start:stop].unsqueeze(1)
            active = keep & (loss > 0)
            count = count + active.sum()
            total = total + torch.where(active, loss, torch.zeros_like(loss)).sum()
        return torch.where(count > 0, total / count.clamp(min=1), graph_zero(mat))

    def compute_loss_dict(self, embeddings, labels, indices_tuple, ref_emb, ref_labels) -> dict:
        indices_tuple, _ = check_miner_output(indices_tuple, embeddings, ref_emb)
        a, p, n = convert_to_triplets(indices_tuple, labels, ref_labels, self.triplets_per_anchor)
        self.record(num_triplets=int(a.numel()))
        if a.numel() == 0:
            return {"loss": zero_entry()}
        mat = distance_matrix(self.distance, embeddings, ref_emb)
        ap, an = mat[a, p], mat[a, n]
        if self.swap:
            ref_mat = mat if ref_emb is None else distance_matrix(self.distance, ref_emb, None)
            an = self.distance.smallest_dist(an, ref_mat[p, n])
        violation = self.distance.margin(ap, an) + self.margin
        loss = F.softplus(violation) if self.smooth_loss else F.relu(violation)
        return {"loss": {"losses": loss, "indices": (a, p, n), "reduction_type": "triplet"}}


def _triplet_blocks(
    mat: torch.Tensor,
    pos_idx: torch.Tensor,
    valid: torch.Tensor,
    neg: torch.Tensor,
    margin: float,
    sign: float,
    smooth: bool,
):
    """Yield ``(start, stop, violation, loss, active)`` per anchor chunk; ``violation[c, j, n] = sign (d_ap - d_an)
    + margin`` for the ``j``-th positive ``p`` of anchor ``c`` (``sign = -1`` for similarities)."""
    for start, stop in anchor_chunks(mat.shape[0], pos_idx.shape[1] * mat.shape[1]):
        rows = mat[start:stop]
        ap = rows.gather(1, pos_idx[start:stop]).unsqueeze(2)
        violation = sign * (ap - rows.unsqueeze(1)) + margin
        loss = F.softplus(violation) if smooth else F.relu(violation)
        active = valid[start:stop].unsqueeze(2) & neg[start:stop].unsqueeze(1) & (loss > 0)
        yield start, stop, violation, loss, active


class _AllTripletsHinge(torch.autograd.Function):
    """``avg_nonzero`` of the (smooth) triplet hinge over all triplets, with a chunked analytic backward.

    With ``g = grad / #active`` and ``w = g * dloss/dviolation`` on active triplets (1 for the hinge, sigmoid for
    softplus): ``dL/dd_ap = sign * sum_n w`` and ``dL/dd_an = -sign * sum_p w``.
    """

    @staticmethod
    def forward(ctx, mat, pos_idx, valid, neg, margin, sign, smooth):
        total = mat.new_zeros(())
        count = torch.zeros((), dtype=torch.long, device=mat.device)  # kept on the device: no host read per call
        for _, _, _, loss, active in _triplet_blocks(mat, pos_idx, valid, neg, margin, sign, smooth):
            count = count + active.sum()
            total = total + torch.where(active, loss, torch.zeros_like(loss)).sum()
        ctx.save_for_backward(mat, pos_idx, valid, neg)
        ctx.margin, ctx.sign, ctx.smooth, ctx.count = margin, sign, smooth, count
        # no active triplet: zero, or NaN when a distance is NaN (as PML; a NaN embedding is never hidden as 0.0)
        return torch.where(count > 0, total / count.clamp(min=1), (mat * 0.0).sum())

    @staticmethod
    def backward(ctx, grad_out):
        mat, pos_idx, valid, neg = ctx.saved_tensors
        grad = torch.zeros_like(mat)
        g = grad_out / ctx.count.clamp(min=1)  # no active triplet: every weight below is 0, the gradient stays 0
        blocks = _triplet_blocks(mat, pos_idx, valid, neg, ctx.margin, ctx.sign, ctx.smooth)
        for start, stop, violation, _, active in blocks:
            w = torch.sigmoid(violation) if ctx.smooth else torch.ones_like(violation)
            w = torch.where(active, w, torch.zeros_like(w)) * g
            grad[start:stop].scatter_add_(1, pos_idx[start:stop], ctx.sign * w.sum(2) * valid[start:stop])
            grad[start:stop] -= ctx.sign * w.sum(1)
        return grad, None, None, None, None, None, None
