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

import torch
import torch.nn.functional as F

from dynametric.distances import CosineSimilarity, Distance
from dynametric.errors import ConfigError
from dynametric.losses.pair import AnchorPairLoss
from dynametric.losses.reducers import avg_nonzero_reduce, masked_logsumexp

NO_ANCHOR = "no anchor with both a positive and a negative pair"


class CircleLoss(AnchorPairLoss):
    """Circle loss on cosine similarities (needs a normalising similarity such as :class:`CosineSimilarity`)."""

    def __init__(self, m: float = 0.4, gamma: float = 80.0, distance: Distance | None = None, scale: int = 0,
                 **options) -> None:
        super().__init__(distance, scale, **options)
        if not (self.distance.higher_is_closer and self.distance.normalize_embeddings):
            raise ConfigError(f"CircleLoss needs cosine similarity, got {self.distance!r}", key="distance")
        self.m = m
        self.gamma = gamma

    def default_distance(self) -> Distance:
        return CosineSimilarity()

    def anchor_losses(self, s: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor | str:
        has_both = pos.any(1) & neg.any(1)
        # No host read of "any anchor with both?": without one every loss below is 0 and the average over non-zero
        # losses gives 0 on the device (a debug message says so only while debug logging is on).
        self._log_once.when(NO_ANCHOR, lambda: not bool(has_both.any()),
                            lambda: f"{type(self).__name__}: {NO_ANCHOR}; the loss is zero")
        sd = s.detach()
        logit_p = -self.gamma * torch.relu(1 + self.m - sd) * (s - (1 - self.m))
        logit_n = self.gamma * torch.relu(sd + self.m) * (s - self.m)
        losses = F.softplus(masked_logsumexp(logit_p, pos) + masked_logsumexp(logit_n, neg))
        return torch.where(has_both, losses, torch.zeros_like(losses))

    def reduce(self, losses: torch.Tensor, mat: torch.Tensor) -> torch.Tensor:
        return avg_nonzero_reduce(losses, mat)
