"""N-pair loss (Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective", NeurIPS 2016).

One positive pair per class (the first in the batch); with anchors ``f_i`` and positives ``f_j^+`` of ``N``
distinct classes, ``L = mean_i CE(softmax_j <f_i, f_j^+>, i)``. Keyword arguments and defaults as
pytorch-metric-learning's ``NPairsLoss``: its default ``DotProductSimilarity()`` normalises the embeddings, so the
default here is ``DotProductSimilarity(normalize_embeddings=True)`` (= cosine). Sohn's original uses the raw dot
product with an L2 penalty on the embeddings: pass ``distance=DotProductSimilarity()`` (unnormalised in dynametric)
and regularise separately. ``ref_emb`` is not supported.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dynametric.distances import Distance, DotProductSimilarity, as_distance
from dynametric.errors import InputError
from dynametric.losses.base import IndicesTuple, MetricLoss
from dynametric.losses.reducers import zero_entry
from dynametric.losses.tuples import check_indices_tuple, distance_matrix, first_positive_pair_per_label


class NPairsLoss(MetricLoss):
    """Multi-class N-pair loss (softmax over one positive per class)."""

    def __init__(self, distance: Distance | None = None, scale: int = 0,
        *,
        reducer: Any = None,
        embedding_regularizer: Any = None,
        embedding_reg_weight: float = 1.0,
        collect_stats: bool = False,
    ) -> None:
        super().__init__(scale, reducer=reducer, embedding_regularizer=embedding_regularizer,
                         embedding_reg_weight=embedding_reg_weight, collect_stats=collect_stats)
        self.distance = as_distance(distance) or DotProductSimilarity(normalize_embeddings=True)

    def compute_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: IndicesTuple | None,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        if ref_emb is not None:
            raise InputError("NPairsLoss does not support ref_emb/ref_labels", key="ref_emb")
        if indices_tuple is not None:
            indices_tuple = check_indices_tuple(indices_tuple, embeddings.shape[0], embeddings.shape[0])
        a, p = first_positive_pair_per_label(indices_tuple, labels)
        self.record(num_pairs=int(a.numel()))
        if a.numel() <= 1:  # a 1 x 1 softmax is exactly 0
            return self.zero_loss(embeddings, "fewer than two classes with a positive pair")
        sim = distance_matrix(self.distance, embeddings[a], embeddings[p])
        if not self.distance.higher_is_closer:
            sim = -sim
        return F.cross_entropy(sim, torch.arange(a.numel(), device=embeddings.device))

    def compute_loss_dict(self, embeddings, labels, indices_tuple, ref_emb, ref_labels) -> dict:
        if ref_emb is not None:
            raise InputError("NPairsLoss does not support ref_emb/ref_labels", key="ref_emb")
        if indices_tuple is not None:
            indices_tuple = check_indices_tuple(indices_tuple, embeddings.shape[0], embeddings.shape[0])
        a, p = first_positive_pair_per_label(indices_tuple, labels)
        self.record(num_pairs=int(a.numel()))
        if a.numel() == 0:
            return {"loss": zero_entry()}
        sim = distance_matrix(self.distance, embeddings[a], embeddings[p])
        if not self.distance.higher_is_closer:
            sim = -sim
        target = torch.arange(a.numel(), device=embeddings.device)
        return {"loss": {"losses": F.cross_entropy(sim, target, reduction="none"), "indices": a,
                         "reduction_type": "element"}}
