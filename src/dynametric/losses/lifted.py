"""Lifted structured loss (Oh Song, Xiang, Jegelka, Savarese, "Deep Metric Learning via Lifted Structured Feature
Embedding", CVPR 2016) and its generalised form (Hermans, Beyer, Leibe, "In Defense of the Triplet Loss", 2017).

* :class:`LiftedStructureLoss` (the original): for each positive pair ``(i, j)``,
  ``J_ij = [log sum_{(k,l) in N_i ∪ N_j} exp(m_neg - d_kl) + d_ij - m_pos]_+``, ``L = mean_{(i,j)} J_ij^2 / 2``,
  where ``N_i`` are the negative pairs anchored at ``i``. As pytorch-metric-learning's ``LiftedStructureLoss``
  (``neg_margin=1``, ``pos_margin=0``, Euclidean distance of normalised embeddings, mean over positive pairs), but
  computed with per-anchor grouped log-sum-exps instead of a ``#pos x #neg`` mask.
* :class:`GeneralizedLiftedStructureLoss`: per anchor ``[log sum_p exp(d_ap - m_pos) + log sum_n exp(m_neg - d_an)]_+``,
  averaged over all anchors (PML's ``GeneralizedLiftedStructureLoss``).
"""

from __future__ import annotations

import torch

from dynametric.distances import Distance
from dynametric.losses.base import IndicesTuple
from dynametric.losses.pair import AnchorPairLoss, PairLoss
from dynametric.losses.reducers import grouped_logsumexp, masked_logsumexp, zero_entry
from dynametric.tuples import distance_matrix


class LiftedStructureLoss(PairLoss):
    """The original lifted structured loss over positive pairs (see module docstring)."""

    def __init__(
        self, neg_margin: float = 1.0, pos_margin: float = 0.0, distance: Distance | None = None, scale: int = 0,
        **options,
    ) -> None:
        super().__init__(distance, scale, **options)
        self.neg_margin = neg_margin
        self.pos_margin = pos_margin

    def _pair_losses(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        """``(J_ij^2 / 2 per positive pair, (a1, p))``, or ``None`` without a positive or a negative pair."""
        (a1, p, a2, n), num_refs = self.pair_indices(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if (a1.numel() <= 1 and a2.numel() <= 1) or a1.numel() == 0 or a2.numel() == 0:
            return None
        mat = distance_matrix(self.distance, embeddings, ref_emb)
        remaining_neg = self.distance.margin(torch.full_like(mat[a2, n], self.neg_margin), mat[a2, n])
        size = max(embeddings.shape[0], num_refs)
        per_anchor = grouped_logsumexp(remaining_neg, a2, size)  # -inf where an index anchors no negative pair
        both = torch.logaddexp(per_anchor[a1], per_anchor[p])
        neg_term = torch.where(a1 == p, per_anchor[a1], both)
        neg_term = torch.where(torch.isfinite(neg_term), neg_term, torch.zeros_like(neg_term))
        pos_d = mat[a1, p]
        per_pair = torch.relu(neg_term + self.distance.margin(pos_d, torch.full_like(pos_d, self.pos_margin)))
        return per_pair**2 / 2, (a1, p)

    def compute_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: IndicesTuple | None,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        out = self._pair_losses(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if out is None:
            return self.zero_loss(embeddings, "no positive pair or no negative pair")
        return out[0].mean()

    def compute_loss_dict(self, embeddings, labels, indices_tuple, ref_emb, ref_labels) -> dict:
        out = self._pair_losses(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if out is None:
            return {"loss": zero_entry()}
        return {"loss": {"losses": out[0], "indices": out[1], "reduction_type": "pos_pair"}}


class GeneralizedLiftedStructureLoss(AnchorPairLoss):
    """Per-anchor log-sum-exp form of the lifted loss (Hermans et al. 2017, p. 4)."""

    def __init__(
        self, neg_margin: float = 1.0, pos_margin: float = 0.0, distance: Distance | None = None, scale: int = 0,
        **options,
    ) -> None:
        super().__init__(distance, scale, **options)
        self.neg_margin = neg_margin
        self.pos_margin = pos_margin

    def anchor_losses(self, mat: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        pos_term = masked_logsumexp(self.distance.margin(mat, torch.full_like(mat, self.pos_margin)), pos)
        neg_term = masked_logsumexp(self.distance.margin(torch.full_like(mat, self.neg_margin), mat), neg)
        return torch.relu(pos_term + neg_term)
