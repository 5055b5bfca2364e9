"""Distance-weighted sampling (Wu, Manmatha, Smola, Krähenbühl, "Sampling Matters in Deep Embedding Learning",
ICCV 2017).

For points uniform on the unit sphere in ``R^D`` pairwise distances have density
``q(d) ∝ d^(D-2) (1 - d^2/4)^((D-3)/2)``. A negative is drawn with probability ``∝ 1/q(max(d, cutoff))``.
This module works in log space:

``log w = (2 - D) log d~ - (D - 3)/2 log(1 - d~^2/4)``, ``d~ = clamp(d, lower_cutoff, 2 - 1e-4)``.

Callers mask non-candidates (e.g. set them to ``-inf``), subtract the row maximum, exponentiate and normalise.
"""

from __future__ import annotations

import numbers

import torch

from dynametric.distances import Distance, LpDistance, as_distance
from dynametric.errors import ConfigError, InputError
from dynametric.miners.base import IndicesTuple, Miner, logger
from dynametric.tuples import match_masks

#: Largest distance used inside the log (distances between unit vectors are at most 2; ``1 - d^2/4`` must stay > 0).
MAX_UNIT_SPHERE_DISTANCE = 2.0 - 1e-4


def inverse_q_log_weights(
    dist: torch.Tensor,
    dim: int,
    lower_cutoff: float = 0.5,
    upper_cutoff: float | None = None,
) -> torch.Tensor:
    """Return ``log(1 / q(d~))`` elementwise for Euclidean distances ``dist`` between unit vectors in ``R^dim``.

    ``q`` is the density of pairwise distances of points uniform on the unit sphere (Wu et al. 2017, eq. 1).
    Distances are clamped to ``[lower_cutoff, 2 - 1e-4]`` (the lower cutoff of 0.5 is the paper's). With
    ``upper_cutoff`` (the paper's optional 1.4, off by default), entries with ``d > upper_cutoff`` get ``-inf``
    (probability 0). Computed in float32 (or float64 for float64 input); not normalised, not masked otherwise.
    """
    if dim < 2:
        raise InputError(f"embedding dimension must be >= 2 for distance-weighted sampling, got {dim}", key="dim")
    if not 0.0 <= lower_cutoff < 2.0:
        raise InputError(f"lower_cutoff must be in [0, 2), got {lower_cutoff}", key="lower_cutoff")
    if upper_cutoff is not None and upper_cutoff <= lower_cutoff:
        raise InputError(
            f"upper_cutoff ({upper_cutoff}) must be larger than lower_cutoff ({lower_cutoff})", key="upper_cutoff"
        )
    work = dist if dist.dtype == torch.float64 else dist.float()
    d = work.clamp(min=max(lower_cutoff, 1e-12), max=MAX_UNIT_SPHERE_DISTANCE)
    log_w = (2.0 - float(dim)) * torch.log(d) - (float(dim) - 3.0) / 2.0 * torch.log1p(-0.25 * d * d)
    if upper_cutoff is not None:
        log_w = log_w.masked_fill(work > upper_cutoff, float("-inf"))
    return log_w


def unit_sphere_l2(distance: Distance | None, owner: str) -> LpDistance:
    """``distance`` (default ``LpDistance()``) if it is the Euclidean distance between L2-normalised embeddings,
    which the sphere-density weights assume; a :class:`ConfigError` naming ``owner`` otherwise."""
    d = as_distance(distance) or LpDistance()
    if not (isinstance(d, LpDistance) and d.p == 2 and d.power == 1 and d.normalize_embeddings):
        raise ConfigError(f"{owner} needs LpDistance(p=2, power=1, normalize_embeddings=True), got {d!r}",
                          key="distance")
    return d


class DistanceWeightedMiner(Miner, vouched_mine=True):
    """Distance-weighted negative sampling (Wu et al. 2017), one negative per positive pair.

    For every positive pair ``(a, p)`` one negative ``n`` is drawn with probability ``∝ 1/q(max(d_an, cutoff))``
    among ``a``'s negatives (``d_an > nonzero_loss_cutoff`` excluded when that upper cutoff is set). Returns
    triplets ``(a, p, n)``. Rows whose every negative is excluded by the upper cutoff fall back to a uniform draw
    over their negatives (the authors' code falls back to a uniform draw over the whole batch).

    Differences from pytorch-metric-learning's ``DistanceWeightedMiner`` (documented in ``docs/losses.md``): PML
    turns the upper cutoff 1.4 on by default (here off, as in the authors' runs), normalises by the
    global rather than the row maximum, and draws ``|class|`` triplets per anchor with random positives instead of
    one per positive pair. Needs the Euclidean distance of L2-normalised embeddings (``LpDistance()``).
    """

    def __init__(
        self,
        cutoff: float = 0.5,
        nonzero_loss_cutoff: float | None = None,
        distance: Distance | None = None,
        seed: int | None = None,
        scale: int = 0,
        collect_stats: bool = False,
    ) -> None:
        super().__init__(scale, collect_stats=collect_stats)
        self.distance = unit_sphere_l2(distance, "DistanceWeightedMiner")
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = None if nonzero_loss_cutoff is None else float(nonzero_loss_cutoff)
        #: ``nonzero_loss_cutoff <= cutoff`` leaves no distance to sample from: the miner returns no triplets
        #: (as pytorch-metric-learning does, e.g. ``DistanceWeightedMiner(0, -0.01)``).
        self.mines_nothing = self.nonzero_loss_cutoff is not None and self.nonzero_loss_cutoff <= self.cutoff
        # validate the cutoffs once, here
        inverse_q_log_weights(torch.zeros(1), 3, cutoff, None if self.mines_nothing else nonzero_loss_cutoff)
        if self.mines_nothing:
            logger.warning("DistanceWeightedMiner: nonzero_loss_cutoff %s <= cutoff %s, so no negative can be "
                           "drawn; every call returns empty triplets", nonzero_loss_cutoff, cutoff)
        self.generator: torch.Generator | None = None
        if seed is not None:
            if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not -(2**63) <= seed < 2**64:
                # int() truncated 1.5 to 1: two different seeds drew the same triplets
                raise ConfigError(f"seed must be an integer in [-2^63, 2^64), got {seed!r}", key="seed")
            self.generator = torch.Generator().manual_seed(int(seed))

    def sampling_probabilities(
        self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor, ref_labels: torch.Tensor | None
    ) -> torch.Tensor:
        """``[B, R]`` row-stochastic probabilities of drawing each reference item as the negative of each anchor
        (all-zero rows for anchors without a negative). ``ref_labels=None``: the reference set is the batch."""
        _, neg = match_masks(labels, ref_labels)
        dist = self.distance(embeddings, ref_emb)
        log_w = inverse_q_log_weights(dist, embeddings.shape[1], self.cutoff, self.nonzero_loss_cutoff)
        log_w = log_w.masked_fill(~neg, float("-inf"))
        dead = ~torch.isfinite(log_w).any(1, keepdim=True) & neg.any(1, keepdim=True)
        log_w = torch.where(dead & neg, torch.zeros_like(log_w), log_w)
        has_neg = neg.any(1, keepdim=True)
        log_w = torch.where(has_neg, log_w, torch.zeros_like(log_w))
        probs = torch.softmax(log_w, dim=1)
        return torch.where(has_neg, probs, torch.zeros_like(probs))

    def mine(
        self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor, ref_labels: torch.Tensor
    ) -> IndicesTuple:
        if self.mines_nothing:
            empty = torch.empty(0, dtype=torch.long, device=labels.device)
            return empty, empty.clone(), empty.clone()
        pos, neg = match_masks(labels, ref_labels)  # no positive (i, i) when ref_labels is labels
        probs = self.sampling_probabilities(embeddings, labels, ref_emb, ref_labels)
        anchors = torch.nonzero(pos.any(1) & neg.any(1)).flatten()
        if anchors.numel() == 0:
            empty = torch.empty(0, dtype=torch.long, device=labels.device)
            return empty, empty.clone(), empty.clone()
        a, p = torch.nonzero(pos[anchors], as_tuple=True)
        num_pos = pos[anchors].sum(1)
        rows = probs[anchors] if self.generator is None else probs[anchors].cpu()
        draws = torch.multinomial(rows, int(num_pos.max()), replacement=True, generator=self.generator)
        draws = draws.to(labels.device)
        rank = torch.arange(a.numel(), device=labels.device) - (torch.cumsum(num_pos, 0) - num_pos)[a]
        n = draws[a, rank]
        return anchors[a], p, n
