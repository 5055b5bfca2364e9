"""Triplet and pair miners with pytorch-metric-learning's names, arguments and defaults.

* :class:`TripletMarginMiner` (``margin=0.2``, ``type_of_triplets="all"|"hard"|"semihard"|"easy"``): with the
  triplet margin ``mu = d_an - d_ap`` (``s_ap - s_an`` for similarities), "all" keeps ``mu <= margin``, "hard"
  ``mu <= 0``, "semihard" ``0 < mu <= margin``, "easy" ``mu > margin`` (Schroff et al., FaceNet, CVPR 2015).
* :class:`BatchHardMiner`: per anchor the farthest positive and the closest negative (Hermans, Beyer, Leibe,
  "In Defense of the Triplet Loss", 2017); anchors without a positive or a negative are dropped.
* :class:`PairMarginMiner` (``pos_margin=0.2``, ``neg_margin=0.8``): positive pairs farther than ``pos_margin``,
  negative pairs closer than ``neg_margin``.
"""

from __future__ import annotations

import torch

from dynametric.distances import Distance, LpDistance, as_distance
from dynametric.errors import ConfigError
from dynametric.miners.base import IndicesTuple, Miner
from dynametric.tuples import get_all_pairs_indices, get_all_triplets_indices, match_masks

TRIPLET_TYPES = ("all", "hard", "semihard", "easy")


def mining_matrix(distance: Distance, embeddings: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
    """The distance matrix in the embeddings' dtype (float16/bfloat16 are compared in float32): float64 input is
    mined in float64, so near-ties are decided as pytorch-metric-learning decides them."""
    mat = distance(embeddings, ref_emb)
    return mat.float() if mat.dtype in (torch.float16, torch.bfloat16) else mat


class TripletMarginMiner(Miner, vouched_mine=True):
    """Triplets by their margin: all violating, hard, semihard or easy (see module docstring)."""

    def __init__(
        self, margin: float = 0.2, type_of_triplets: str = "all", distance: Distance | None = None, scale: int = 0,
        collect_stats: bool = False,
    ) -> None:
        super().__init__(scale, collect_stats=collect_stats)
        if type_of_triplets not in TRIPLET_TYPES:
            raise ConfigError(f"type_of_triplets must be one of {TRIPLET_TYPES}, got {type_of_triplets!r}",
                              key="type_of_triplets")
        self.margin = margin
        self.type_of_triplets = type_of_triplets
        self.distance = as_distance(distance) or LpDistance()

    def mine(
        self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor, ref_labels: torch.Tensor
    ) -> IndicesTuple:
        a, p, n = get_all_triplets_indices(labels, ref_labels)
        mat = mining_matrix(self.distance, embeddings, ref_emb)
        ap, an = mat[a, p], mat[a, n]
        mu = ap - an if self.distance.higher_is_closer else an - ap
        if self.collect_stats and a.numel():
            self.record(pos_pair_dist=float(ap.mean()), neg_pair_dist=float(an.mean()),
                        avg_triplet_margin=float(mu.mean()))
        if self.type_of_triplets == "easy":
            keep = mu > self.margin
        else:
            keep = mu <= self.margin
            if self.type_of_triplets == "hard":
                keep &= mu <= 0
            elif self.type_of_triplets == "semihard":
                keep &= mu > 0
        return a[keep], p[keep], n[keep]


class BatchHardMiner(Miner, vouched_mine=True):
    """Hardest positive and hardest negative per anchor (batch-hard triplets)."""

    def __init__(self, distance: Distance | None = None, scale: int = 0,
        collect_stats: bool = False
    ) -> None:
        super().__init__(scale, collect_stats=collect_stats)
        self.distance = as_distance(distance) or LpDistance()

    def mine(
        self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor, ref_labels: torch.Tensor
    ) -> IndicesTuple:
        pos, neg = match_masks(labels, ref_labels)
        mat = mining_matrix(self.distance, embeddings, ref_emb)
        big = torch.finfo(mat.dtype).max
        # "harder" = farther positive / closer negative; flip the sign of similarities to use distances' rule.
        d = -mat if self.distance.higher_is_closer else mat
        if d.shape[1] == 0:  # no reference items (an empty batch): no triplets, as the other miners give
            empty = torch.zeros(0, dtype=torch.long, device=embeddings.device)
            return empty, empty.clone(), empty.clone()
        hard_p = d.masked_fill(~pos, -big).argmax(1)
        hard_n = d.masked_fill(~neg, big).argmin(1)
        keep = pos.any(1) & neg.any(1)
        anchors = torch.nonzero(keep).flatten()
        if self.collect_stats:
            self.record(**self._stats(mat[anchors, hard_p[keep]], mat[anchors, hard_n[keep]]))
        return anchors, hard_p[keep], hard_n[keep]

    #: PML's statistics of a batch-hard miner (``collect_stats=True``), over the mined triplets.
    STATS = ("easiest_triplet", "hardest_triplet", "easiest_pos_pair", "hardest_pos_pair", "easiest_neg_pair",
             "hardest_neg_pair")

    def _stats(self, ap: torch.Tensor, an: torch.Tensor) -> dict[str, float]:
        """PML's :attr:`STATS` from the mined triplets' positive and negative values (all 0 without a triplet, as
        PML leaves them); one read to the host for the six."""
        if ap.numel() == 0:
            return dict.fromkeys(self.STATS, 0.0)
        # the harder extreme of values where larger is farther (distances); the other way round for similarities
        harder, easier = (torch.amin, torch.amax) if self.distance.higher_is_closer else (torch.amax, torch.amin)
        gap = ap - an  # d_ap - d_an: larger is a harder triplet for distances
        values = torch.stack([easier(gap), harder(gap), easier(ap), harder(ap), harder(an), easier(an)]).tolist()
        return dict(zip(self.STATS, values))


class PairMarginMiner(Miner, vouched_mine=True):
    """Positive pairs beyond ``pos_margin`` and negative pairs within ``neg_margin``."""

    def __init__(
        self, pos_margin: float = 0.2, neg_margin: float = 0.8, distance: Distance | None = None, scale: int = 0,
        collect_stats: bool = False,
    ) -> None:
        super().__init__(scale, collect_stats=collect_stats)
        self.pos_margin = pos_margin
        self.neg_margin = neg_margin
        self.distance = as_distance(distance) or LpDistance()

    def mine(
        self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor, ref_labels: torch.Tensor
    ) -> IndicesTuple:
        a1, p, a2, n = get_all_pairs_indices(labels, ref_labels)
        mat = mining_matrix(self.distance, embeddings, ref_emb)
        pd, nd = mat[a1, p], mat[a2, n]
        if self.collect_stats:
            self.record(pos_pair_dist=float(pd.mean()) if pd.numel() else 0.0,
                        neg_pair_dist=float(nd.mean()) if nd.numel() else 0.0)
        if self.distance.higher_is_closer:
            pk, nk = pd < self.pos_margin, nd > self.neg_margin
        else:
            pk, nk = pd > self.pos_margin, nd < self.neg_margin
        return a1[pk], p[pk], a2[nk], n[nk]
