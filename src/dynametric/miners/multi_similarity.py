"""Multi-similarity pair miner (Wang et al., "Multi-Similarity Loss with General Pair Weighting", CVPR 2019).

With similarities ``S`` (default cosine): keep a positive pair ``(i, p)`` if ``S_ip - epsilon < max_n S_in`` and a
negative pair ``(i, n)`` if ``S_in + epsilon > min_p S_ip`` (for distances the inequalities flip). Arguments and
defaults as pytorch-metric-learning's ``MultiSimilarityMiner`` (``epsilon=0.1``). Output pairs are in row-major
order (PML returns them sorted by similarity within a row; the set is the same).
"""

from __future__ import annotations

import torch

from dynametric.distances import CosineSimilarity, Distance, as_distance
from dynametric.miners.base import IndicesTuple, Miner
from dynametric.miners.triplet_margin import mining_matrix
from dynametric.tuples import match_masks


class MultiSimilarityMiner(Miner, vouched_mine=True):
    """Hard positive/negative pairs relative to the hardest pair of the other kind (see module docstring)."""

    def __init__(self, epsilon: float = 0.1, distance: Distance | None = None, scale: int = 0,
        collect_stats: bool = False
    ) -> None:
        super().__init__(scale, collect_stats=collect_stats)
        self.epsilon = epsilon
        self.distance = as_distance(distance) or CosineSimilarity()

    def mine(
        self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor, ref_labels: torch.Tensor
    ) -> IndicesTuple:
        pos, neg = match_masks(labels, ref_labels)  # no positive (i, i) when ref_labels is labels
        if ref_emb is embeddings and ref_labels is not labels:
            # the batch against itself with other (equal) label objects: like PML's miner, which tests
            # ``embeddings is ref_emb`` here, no item is mined with itself
            not_self = ~torch.eye(*pos.shape, dtype=torch.bool, device=pos.device)
            pos, neg = pos & not_self, neg & not_self
        if pos.numel() == 0:  # no rows or no reference rows (a shape, not a read): nothing to mine
            empty = torch.empty(0, dtype=torch.long, device=labels.device)
            return empty, empty.clone(), empty.clone(), empty.clone()
        # No host read of "is there a positive and a negative at all" (PML returns nothing without both): the
        # masks below are simply emptied on the device in that case.
        both = pos.any() & neg.any()
        mat = mining_matrix(self.distance, embeddings, ref_emb)
        s = mat if self.distance.higher_is_closer else -mat  # larger = closer from here on
        eps = self.epsilon
        big = torch.finfo(s.dtype).max
        hardest_neg = s.masked_fill(~neg, -big).amax(1, keepdim=True)  # most similar negative
        hardest_pos = s.masked_fill(~pos, big).amin(1, keepdim=True)  # least similar positive
        hard_pos = pos & (s - eps < hardest_neg) & both
        hard_neg = neg & (s + eps > hardest_pos) & both
        a1, p = torch.nonzero(hard_pos, as_tuple=True)
        a2, n = torch.nonzero(hard_neg, as_tuple=True)
        return a1, p, a2, n
