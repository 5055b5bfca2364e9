"""Multi-similarity loss (Wang, Han, Huang, Dong, Scott, "Multi-Similarity Loss with General Pair Weighting for
Deep Metric Learning", CVPR 2019).

``L = mean_i [ 1/alpha log(1 + sum_{p in P_i} exp(-alpha (S_ip - base)))
+ 1/beta log(1 + sum_{n in N_i} exp(beta (S_in - base))) ]`` with cosine similarity ``S``. Keyword arguments,
defaults and reduction as pytorch-metric-learning's ``MultiSimilarityLoss``: ``alpha=2``, ``beta=50``,
``base=0.5`` (the paper's lambda), mean over all anchors. The paper's pair mining is
:class:`~dynametric.miners.MultiSimilarityMiner` (``epsilon=0.1``).
"""

from __future__ import annotations

import torch

from dynametric.distances import CosineSimilarity, Distance
from dynametric.losses.base import check_positive
from dynametric.losses.pair import AnchorPairLoss
from dynametric.losses.reducers import masked_logsumexp


class MultiSimilarityLoss(AnchorPairLoss):
    """Soft weighting of positive and negative pairs by self- and relative similarity."""

    def __init__(
        self,
        alpha: float = 2.0,
        beta: float = 50.0,
        base: float = 0.5,
        distance: Distance | None = None,
        scale: int = 0,
        **options,
    ) -> None:
        super().__init__(distance, scale, **options)
        self.alpha = check_positive(alpha, "alpha")
        self.beta = check_positive(beta, "beta")
        self.base = base

    def default_distance(self) -> Distance:
        return CosineSimilarity()

    def anchor_losses(self, mat: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        base = torch.full_like(mat, self.base)
        pos_loss = masked_logsumexp(self.alpha * self.distance.margin(mat, base), pos, add_one=True) / self.alpha
        neg_loss = masked_logsumexp(self.beta * self.distance.margin(base, mat), neg, add_one=True) / self.beta
        return pos_loss + neg_loss
