"""N-pair loss (Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective", NeurIPS 2016).

One positive pair per class (the first in the batch); with anchors ``f_i`` and positives ``f_j^+`` of ``N``
distinct classes, ``L = mean_i CE(softmax_j <f_i, f_j^+>, i)``. Keyword arguments and defaults as
pytorch-metric-learning's ``NPairsLoss``: its default ``DotProductSimilarity()`` normalises the embeddings, so the
default here is ``DotProductSimilarity(normalize_embeddings=True)`` (= cosine). Sohn's original uses the raw dot
product with an L2 penalty on the embeddings: pass ``distance=DotProductSimilarity()`` (unnormalised in dynametric)
and regularise separately. ``ref_emb`` is not supported (except the batch's own objects, ``ref_emb=embeddings,
ref_labels=labels``: the plain call, as in PML).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dynametric.distances import Distance, DotProductSimilarity
from dynametric.errors import InputError
from dynametric.losses.base import IndicesTuple
from dynametric.losses.pair import PairLoss
from dynametric.losses.reducers import zero_entry
from dynametric.tuples import check_indices_tuple, distance_matrix, first_positive_pair_per_label


class NPairsLoss(PairLoss):
    """Multi-class N-pair loss (softmax over one positive per class)."""

    works_without_labels = False  # the one positive pair per class is chosen by label

    def __init__(self, distance: Distance | None = None, scale: int = 0, **options) -> None:
        super().__init__(distance, scale, **options)

    def default_distance(self) -> Distance:
        return DotProductSimilarity(normalize_embeddings=True)

    def _logits(self, embeddings, labels, indices_tuple, ref_emb):
        """``(anchor x positive similarity logits, anchors)`` with one positive pair per class."""
        if ref_emb is not None:
            raise InputError("NPairsLoss does not support ref_emb/ref_labels", key="ref_emb")
        if indices_tuple is not None:
            indices_tuple = check_indices_tuple(indices_tuple, embeddings.shape[0], embeddings.shape[0])
        a, p = first_positive_pair_per_label(indices_tuple, labels)
        self.record(num_pairs=int(a.numel()))
        if a.numel() == 0:
            return None, a
        sim = distance_matrix(self.distance, embeddings[a], embeddings[p])
        return (sim if self.distance.higher_is_closer else -sim), a

    def compute_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: IndicesTuple | None,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        sim, a = self._logits(embeddings, labels, indices_tuple, ref_emb)
        if a.numel() <= 1:  # a 1 x 1 softmax is exactly 0
            return self.zero_loss(embeddings, "fewer than two classes with a positive pair")
        return F.cross_entropy(sim, torch.arange(a.numel(), device=embeddings.device))

    def compute_loss_dict(self, embeddings, labels, indices_tuple, ref_emb, ref_labels) -> dict:
        sim, a = self._logits(embeddings, labels, indices_tuple, ref_emb)
        if sim is None:
            return {"loss": zero_entry()}
        target = torch.arange(a.numel(), device=embeddings.device)
        return {"loss": {"losses": F.cross_entropy(sim, target, reduction="none"), "indices": a,
                         "reduction_type": "element"}}
