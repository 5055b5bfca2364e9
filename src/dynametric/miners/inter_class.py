"""Inter-class triplets t* (Milbich, Roth, Brattoli, Ommer, "Sharing Matters for Generalization in Deep Metric
Learning", TPAMI 2020).

Every batch element is an anchor ``a`` with one triplet ``(a, p, n)``:

* ``standard``: ``n ~ 1/q(d_an)`` over ``{y_n != y_a}`` (distance-weighted, Wu et al. 2017), ``p`` uniform over
  ``{y_p != y_a, y_p != y_n}`` (a third class);
* ``full``: as ``standard`` but ``p ~ 1/q(d_ap)`` over the same third-class set;
* ``random``: permute the batch labels (``y~ = y[pi]``), ``n ~ 1/q(d_an)`` over ``{y~_n != y~_a}``, ``p`` uniform over
  ``{p != a : y~_p = y~_a}`` (the authors' DiVA default; does not keep the anchor's true class out of negatives);
* ``random_groups``: shuffle the batch into groups of ``group_size``; ``p`` uniform over the anchor's group,
  ``n ~ 1/q`` over samples outside the group and outside the anchor's true class.

``q(d) ∝ d^(D-2) (1 - d^2/4)^((D-3)/2)`` is the density of distances between points uniform on the unit sphere in
``R^D``; the weights come from :func:`dynametric.miners.distance_weighted.inverse_q_log_weights` (lower cutoff 0.5,
upper cutoff off by default). Anchors with an empty candidate set are skipped and counted
(:attr:`InterClassTripletMiner.last_skipped`, :attr:`InterClassTripletMiner.total_skipped`). The output feeds any
triplet-consuming loss (``TripletMarginLoss``, ``MarginLoss``); the loss receives the true labels, so a per-class
``beta`` is indexed by the anchor's true class, as in DiVA. The totals count every call, also calls from several
threads at once (they are updated under a lock); ``last_skipped`` is the last call's, which under concurrent calls
may be another thread's.
"""

from __future__ import annotations

import threading

import torch

from dynametric.distances import Distance
from dynametric.errors import ConfigError, InputError
from dynametric.miners.base import IndicesTuple, Miner
from dynametric.miners.distance_weighted import inverse_q_log_weights, unit_sphere_l2

VARIANTS = ("standard", "full", "random", "random_groups")


def _draw(log_w: torch.Tensor, candidates: torch.Tensor,
          generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw per row with probability ``∝ exp(log_w)`` over ``candidates`` (``[B, R]`` bool).

    Rows whose candidates all have weight 0 (``-inf``, e.g. beyond an upper cutoff) fall back to a uniform draw over
    the candidates. Returns ``(index [B], valid [B])``; ``valid`` is false for rows without a candidate."""
    valid = candidates.any(1)
    lw = log_w.masked_fill(~candidates, float("-inf"))
    dead = valid & ~torch.isfinite(lw).any(1)
    lw = torch.where(dead.unsqueeze(1) & candidates, torch.zeros_like(lw), lw)
    lw = torch.where(valid.unsqueeze(1), lw, torch.zeros_like(lw))  # rows without candidates: any index, dropped
    probs = torch.softmax(lw, dim=1)
    if generator is not None:
        idx = torch.multinomial(probs.cpu(), 1, generator=generator).to(log_w.device)
    else:
        idx = torch.multinomial(probs, 1)
    return idx.squeeze(1), valid


_COUNT_LOCK = threading.Lock()
"""Guards the skip counters of every :class:`InterClassTripletMiner` (a module-level lock: a miner stays picklable
and deep-copyable)."""


class InterClassTripletMiner(Miner, vouched_mine=True):
    """t* miner of Sharing Matters: one inter-class triplet per anchor (see the module docstring).

    Args:
        variant: ``standard`` (default), ``full``, ``random`` or ``random_groups``.
        lower_cutoff / upper_cutoff: cutoffs of the distance weighting (0.5 and off, as in the authors' runs).
        group_size: images per surrogate group for ``random_groups`` (4 in the first author's code).
        distance: must be the Euclidean distance of L2-normalised embeddings (the default).
        seed: seed of a private generator (``None``: the global torch RNG).
        scale: label column used as "class".
    """

    def __init__(
        self,
        variant: str = "standard",
        lower_cutoff: float = 0.5,
        upper_cutoff: float | None = None,
        group_size: int = 4,
        distance: Distance | None = None,
        seed: int | None = None,
        scale: int = 0,
        collect_stats: bool = False,
    ) -> None:
        super().__init__(scale, collect_stats=collect_stats)
        if variant not in VARIANTS:
            raise ConfigError(f"unknown t* variant {variant!r}; expected one of {list(VARIANTS)}", key="variant")
        if isinstance(group_size, bool) or int(group_size) < 2:
            raise ConfigError(f"group_size must be an integer >= 2, got {group_size!r}", key="group_size")
        self.distance = unit_sphere_l2(distance, "InterClassTripletMiner")
        inverse_q_log_weights(torch.zeros(1), 3, lower_cutoff, upper_cutoff)  # validates the cutoffs
        self.variant = variant
        self.lower_cutoff = float(lower_cutoff)
        self.upper_cutoff = None if upper_cutoff is None else float(upper_cutoff)
        self.group_size = int(group_size)
        self.generator: torch.Generator | None = None
        if seed is not None:
            self.generator = torch.Generator().manual_seed(int(seed))
        self.last_skipped = 0
        self.total_skipped = 0
        self.total_anchors = 0

    def _perm(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.randperm(n, generator=self.generator).to(device)

    def log_weights(self, embeddings: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        """``log 1/q(d~)`` for every anchor/reference pair (``D`` = the embedding width)."""
        dist = self.distance(embeddings, ref_emb)
        return inverse_q_log_weights(dist, embeddings.shape[1], self.lower_cutoff, self.upper_cutoff)

    def mine(
        self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor, ref_labels: torch.Tensor
    ) -> IndicesTuple:
        in_batch = ref_emb is embeddings
        if not in_batch and self.variant in ("random", "random_groups"):
            raise InputError(f"t* variant {self.variant!r} permutes the batch and needs ref_emb=None", key="ref_emb")
        b, r = embeddings.shape[0], ref_emb.shape[0]
        device = labels.device
        if b == 0 or r == 0:  # nothing to draw from: every anchor (if any) is skipped, as other miners do
            self._count(b, b)
            empty = torch.zeros(0, dtype=torch.long, device=device)
            return empty, empty.clone(), empty.clone()
        log_w = self.log_weights(embeddings, ref_emb)
        not_self = ~torch.eye(b, r, dtype=torch.bool, device=device) if in_batch else torch.ones(
            b, r, dtype=torch.bool, device=device)
        if self.variant in ("standard", "full"):
            neg_cand = labels.unsqueeze(1) != ref_labels.unsqueeze(0)
            n, has_n = _draw(log_w, neg_cand, self.generator)
            pos_cand = neg_cand & (ref_labels.unsqueeze(0) != ref_labels[n].unsqueeze(1))
            pos_w = log_w if self.variant == "full" else torch.zeros_like(log_w)
            p, has_p = _draw(pos_w, pos_cand, self.generator)
        elif self.variant == "random":
            surrogate = labels[self._perm(b, device)]
            same = surrogate.unsqueeze(1) == surrogate.unsqueeze(0)
            n, has_n = _draw(log_w, ~same, self.generator)
            p, has_p = _draw(torch.zeros_like(log_w), same & not_self, self.generator)
        else:  # random_groups
            group = torch.empty(b, dtype=torch.long, device=device)
            group[self._perm(b, device)] = torch.arange(b, device=device) // self.group_size
            same_group = group.unsqueeze(1) == group.unsqueeze(0)
            same_class = labels.unsqueeze(1) == labels.unsqueeze(0)
            n, has_n = _draw(log_w, ~same_group & ~same_class, self.generator)
            p, has_p = _draw(torch.zeros_like(log_w), same_group & not_self, self.generator)
        keep = has_n & has_p
        self._count(int((~keep).sum()), b)
        a = torch.nonzero(keep).flatten()
        return a, p[a], n[a]

    def _count(self, skipped: int, anchors: int) -> None:
        """Record one call's skipped anchors and anchors, as one update (concurrent calls lose no count)."""
        with _COUNT_LOCK:
            self.last_skipped = skipped
            self.total_skipped += skipped
            self.total_anchors += anchors

    def extra_repr(self) -> str:
        return f"variant={self.variant!r}, lower_cutoff={self.lower_cutoff}, upper_cutoff={self.upper_cutoff}"
