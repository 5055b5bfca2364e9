"""Circle loss, pair-label form (Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity
Optimization", CVPR 2020).

With cosine similarities ``s``, ``O_p = 1 + m``, ``O_n = -m``, ``Delta_p = 1 - m``, ``Delta_n = m`` and the
self-paced weights ``alpha_p = [O_p - s_p]_+``, ``alpha_n = [s_n - O_n]_+`` (treated as constants):
``L_i = softplus( logsumexp_n gamma alpha_n (s_n - Delta_n) + logsumexp_p -gamma alpha_p (s_p - Delta_p) )``,
averaged over anchors with a non-zero loss (anchors without a positive or a negative give 0). Keyword arguments,
defaults and reduction as pytorch-metric-learning's ``CircleLoss``: ``m=0.4``, ``gamma=80`` (the paper's
fine-grained retrieval setting; face recognition uses ``m=0.25, gamma=256``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from dynametric.distances import CosineSimilarity, Distance, as_distance
from dynametric.errors import ConfigError
from dynametric.losses.base import IndicesTuple, MetricLoss
from dynametric.losses.reducers import avg_nonzero_reduce, masked_logsumexp, zero_entry
from dynametric.losses.tuples import check_miner_output, distance_matrix, pair_masks


class CircleLoss(MetricLoss):
    """Circle loss on cosine similarities (needs a normalising similarity such as :class:`CosineSimilarity`)."""

    works_without_labels = True

    def __init__(self, m: float = 0.4, gamma: float = 80.0, distance: Distance | None = None, scale: int = 0,
        *,
        reducer: Any = None,
        embedding_regularizer: Any = None,
        embedding_reg_weight: float = 1.0,
        collect_stats: bool = False,
    ) -> None:
        super().__init__(scale, reducer=reducer, embedding_regularizer=embedding_regularizer,
                         embedding_reg_weight=embedding_reg_weight, collect_stats=collect_stats)
        self.distance = as_distance(distance) or CosineSimilarity()
        if not (self.distance.higher_is_closer and self.distance.normalize_embeddings):
            raise ConfigError(f"CircleLoss needs cosine similarity, got {self.distance!r}", key="distance")
        self.m = m
        self.gamma = gamma

    def _per_anchor(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        """``(losses [B], similarity matrix)`` or ``(None, reason)`` when the loss is zero."""
        indices_tuple, num_refs = check_miner_output(indices_tuple, embeddings, ref_emb)
        pos, neg, num_pos, num_neg = pair_masks(indices_tuple, labels, ref_labels, num_refs)
        if num_pos <= 1 and num_neg <= 1:
            return None, "fewer than two positive and two negative pairs"
        has_both = pos.any(1) & neg.any(1)
        if not bool(has_both.any()):
            return None, "no anchor with both a positive and a negative pair"
        s = distance_matrix(self.distance, embeddings, ref_emb)
        sd = s.detach()
        logit_p = -self.gamma * torch.relu(1 + self.m - sd) * (s - (1 - self.m))
        logit_n = self.gamma * torch.relu(sd + self.m) * (s - self.m)
        losses = F.softplus(masked_logsumexp(logit_p, pos) + masked_logsumexp(logit_n, neg))
        return torch.where(has_both, losses, torch.zeros_like(losses)), s

    def compute_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: IndicesTuple | None,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        losses, s = self._per_anchor(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if losses is None:
            return self.zero_loss(embeddings, s)
        return avg_nonzero_reduce(losses, s)

    def compute_loss_dict(self, embeddings, labels, indices_tuple, ref_emb, ref_labels) -> dict:
        losses, _ = self._per_anchor(embeddings, labels, indices_tuple, ref_emb, ref_labels)
        if losses is None:
            return {"loss": zero_entry()}
        rows = torch.arange(losses.shape[0], device=losses.device)
        return {"loss": {"losses": losses, "indices": rows, "reduction_type": "element"}}
