"""Multi-similarity loss (Wang, Han, Huang, Dong, Scott, "Multi-Similarity Loss with General Pair Weighting for
Deep Metric Learning", CVPR 2019).

``L = mean_i [ 1/alpha log(1 + sum_{p in P_i} exp(-alpha (S_ip - base)))
+ 1/beta log(1 + sum_{n in N_i} exp(beta (S_in - base))) ]`` with cosine similarity ``S``. Keyword arguments,
defaults and reduction as pytorch-metric-learning's ``MultiSimilarityLoss``: ``alpha=2``, ``beta=50``,
``base=0.5`` (the paper's lambda), mean over all anchors. The paper's pair mining is
:class:`~dynametric.miners.MultiSimilarityMiner` (``epsilon=0.1``).
"""

from __future__ import annotations

from typing import Any

import torch

from dynametric.distances import CosineSimilarity, Distance, as_distance
from dynametric.losses.base import IndicesTuple, MetricLoss
from dynametric.losses.reducers import masked_logsumexp, zero_entry
from dynametric.losses.tuples import check_miner_output, distance_matrix, pair_masks


class MultiSimilarityLoss(MetricLoss):
    """Soft weighting of positive and negative pairs by self- and relative similarity."""

    works_without_labels = True

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 0.5,
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
        self.alpha = alpha
        self.beta = beta
        self.base = base
        self.distance = as_distance(distance) or CosineSimilarity()

    def compute_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: IndicesTuple | None,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        indices_tuple, num_refs = check_miner_output(indices_tuple, embeddings, ref_emb)
        pos, neg, num_pos, num_neg = pair_masks(indices_tuple, labels, ref_labels, num_refs)
        if num_pos <= 1 and num_neg <= 1:
            return self.zero_loss(embeddings, "fewer than two positive and two negative pairs")
        mat = distance_matrix(self.distance, embeddings, ref_emb)
        base = torch.full_like(mat, self.base)
        pos_loss = masked_logsumexp(self.alpha * self.distance.margin(mat, base), pos, add_one=True) / self.alpha
        neg_loss = masked_logsumexp(self.beta * self.distance.margin(base, mat), neg, add_one=True) / self.beta
        return (pos_loss + neg_loss).mean()

    def compute_loss_dict(self, embeddings, labels, indices_tuple, ref_emb, ref_labels) -> dict:
        indices_tuple, num_refs = check_miner_output(indices_tuple, embeddings, ref_emb)
        pos, neg, num_pos, num_neg = pair_masks(indices_tuple, labels, ref_labels, num_refs)
        if num_pos <= 1 and num_neg <= 1:
            return {"loss": zero_entry()}
        mat = distance_matrix(self.distance, embeddings, ref_emb)
        base = torch.full_like(mat, self.base)
        pos_loss = masked_logsumexp(self.alpha * self.distance.margin(mat, base), pos, add_one=True) / self.alpha
        neg_loss = masked_logsumexp(self.beta * self.distance.margin(base, mat), neg, add_one=True) / self.beta
        rows = torch.arange(mat.shape[0], device=mat.device)
        return {"loss": {"losses": pos_loss + neg_loss, "indices": rows, "reduction_type": "element"}}
