"""Contrastive loss (Hadsell, Chopra, LeCun, "Dimensionality Reduction by Learning an Invariant Mapping", CVPR 2006).

``L = avg_nonzero_{(a,p)} [d_ap - m_pos]_+ + avg_nonzero_{(a,n)} [m_neg - d_an]_+`` (for similarities the signs
flip). Same keyword arguments, defaults and reduction as pytorch-metric-learning's ``ContrastiveLoss``
(``pos_margin=0``, ``neg_margin=1``, Euclidean distance of L2-normalised embeddings, each term averaged over its
non-zero entries). The original paper squares both terms: use ``distance=SquaredL2Distance()`` and squared margins
for the ``d^2`` form of the positive term.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dynametric.distances import Distance
from dynametric.losses.base import IndicesTuple
from dynametric.losses.pair import TOO_FEW_PAIRS, PairLoss
from dynametric.losses.reducers import avg_nonzero_reduce, zero_entry
from dynametric.tuples import check_miner_output, convert_to_pairs, distance_matrix, few_pairs, match_masks


class ContrastiveLoss(PairLoss):
    """Pair loss with a positive and a negative margin (PML-compatible; see module docstring)."""

    def __init__(
        self, pos_margin: float = 0.0, neg_margin: float = 1.0, distance: Distance | None = None, scale: int = 0,
        **options,
    ) -> None:
        super().__init__(distance, scale, **options)
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin

    def compute_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: IndicesTuple | None,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        indices_tuple, _ = check_miner_output(indices_tuple, embeddings, ref_emb)
        if indices_tuple is None:
            pos_mask, neg_mask = match_masks(labels, ref_labels)
            too_few = few_pairs(pos_mask, neg_mask)  # no host read unless the batch has at most two pairs
        else:
            a1, p, a2, n = convert_to_pairs(indices_tuple, labels, ref_labels)
            too_few = a1.numel() <= 1 and a2.numel() <= 1
        if too_few:  # pytorch-metric-learning's GenericPairLoss rule
            return self.zero_loss(embeddings, TOO_FEW_PAIRS)
        mat = distance_matrix(self.distance, embeddings, ref_emb)
        if indices_tuple is None:
            pos_d = mat[pos_mask]  # few positives: gather them; the many negatives stay dense
            pos_loss = F.relu(self.distance.margin(pos_d, self.pos_margin))
            neg_loss = F.relu(self.distance.margin(self.neg_margin, mat))
            return avg_nonzero_reduce(pos_loss, mat) + avg_nonzero_reduce(neg_loss, mat, neg_mask)
        pos_d, neg_d = mat[a1, p], mat[a2, n]
        pos_loss = F.relu(self.distance.margin(pos_d, torch.full_like(pos_d, self.pos_margin)))
        neg_loss = F.relu(self.distance.margin(torch.full_like(neg_d, self.neg_margin), neg_d))
        return avg_nonzero_reduce(pos_loss, mat) + avg_nonzero_reduce(neg_loss, mat)

    def compute_loss_dict(self, embeddings, labels, indices_tuple, ref_emb, ref_labels) -> dict:
        (a1, p, a2, n), _ = self.pair_indices(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if a1.numel() <= 1 and a2.numel() <= 1:
            return {"pos_loss": zero_entry(), "neg_loss": zero_entry()}
        mat = distance_matrix(self.distance, embeddings, ref_emb)
        pos_loss = F.relu(self.distance.margin(mat[a1, p], self.pos_margin)) if a1.numel() else 0
        neg_loss = F.relu(self.distance.margin(self.neg_margin, mat[a2, n])) if a2.numel() else 0
        return {
            "pos_loss": {"losses": pos_loss, "indices": (a1, p), "reduction_type": "pos_pair"},
            "neg_loss": {"losses": neg_loss, "indices": (a2, n), "reduction_type": "neg_pair"},
        }
