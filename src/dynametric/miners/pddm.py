"""Hard quadruplet mining by PDDM score (Huang, Loy, Tang, "Local Similarity-Aware Deep Feature Embedding",
NIPS 2016).

Given the all-pairs PDDM scores ``S`` of a batch (higher = more similar) and its labels:

* ``faithful_one_per_batch`` (the paper's, default): the least similar positive pair
  ``(i*, j*) = argmin_{y_i = y_j, i < j} S_ij``, then the most similar negative of each end,
  ``k* = argmax_{y_k != y_i*} S_i*k`` and ``l* = argmax_{y_l != y_j*} S_j*l``. One quadruplet.
* ``per_positive_pair`` (library option, **not** the paper's procedure): every positive pair ``i < j``
  with the row-wise hardest negatives ``k*(i)``, ``l*(j)``.

Selection is index-only (no gradients); ties go to the lowest index (pairs in row-major ``(i, j)`` order).
A batch with no positive pair or no negative gives empty index tensors.
"""

from __future__ import annotations

import torch

from dynametric.errors import ConfigError, InputError
from dynametric.labels import as_label_matrix

__all__ = ["MINING_MODES", "hardest_negatives", "mine_hard_quadruplets"]

MINING_MODES = ("faithful_one_per_batch", "per_positive_pair")

NAN_SCORES = "PDDM scores contain NaN off the diagonal"  # the error of mining (and of PDDMLoss.stats)

Quadruplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def _check(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if scores.dim() != 2 or scores.shape[0] != scores.shape[1]:
        raise InputError(f"scores must be a square [m, m] matrix, got shape {tuple(scores.shape)}", key="scores")
    lab = as_label_matrix(labels, name="labels", num_rows=scores.shape[0])
    if lab.shape[1] != 1:
        raise InputError(
            f"mine_hard_quadruplets takes one label scale ([m] or [m, 1]), got {lab.shape[1]} scales; "
            "select the scale first", key="labels",
        )
    return lab[:, 0].to(scores.device)


def hardest_negatives(scores: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise most similar negative: ``(index [m], has_negative [m] bool)``; ties to the lowest index."""
    labels = _check(scores, labels)
    neg = labels[:, None] != labels[None, :]
    if scores.shape[0] == 0:  # argmax over an empty row would raise; an empty batch has no negative
        return torch.zeros(0, dtype=torch.long, device=scores.device), neg.any(dim=1)
    masked = scores.detach().masked_fill(~neg, float("-inf"))
    best = masked.argmax(dim=1)
    # a row whose negatives all score -inf ties with its masked entries: its first negative, not the first entry
    first_neg = neg.to(torch.uint8).argmax(dim=1)
    best = torch.where(masked.gather(1, best[:, None]).squeeze(1) == float("-inf"), first_neg, best)
    return best, neg.any(dim=1)


def _nan_off_diagonal(s: torch.Tensor) -> torch.Tensor:
    """0-dim bool: a NaN anywhere but on the diagonal (on the device, no host read)."""
    return (torch.isnan(s) & ~torch.eye(s.shape[0], dtype=torch.bool, device=s.device)).any()


def _positive_pairs(labels: torch.Tensor) -> torch.Tensor:
    """``[m, m]`` bool: ``y_i = y_j`` and ``i < j``."""
    m = labels.shape[0]
    upper = torch.ones(m, m, dtype=torch.bool, device=labels.device).triu(diagonal=1)
    return (labels[:, None] == labels[None, :]) & upper


def _faithful_quadruplet(scores: torch.Tensor, labels: torch.Tensor) -> tuple[Quadruplets, torch.Tensor, torch.Tensor]:
    """The faithful mode's quadruplet without a host read (for the loss's training step): ``((i, j, k, l), valid,
    nan)``, each index a ``LongTensor[1]``, ``valid`` a 0-dim bool (the batch has a positive pair and a negative;
    where not, the indices are placeholders, all 0) and ``nan`` a 0-dim bool (a NaN off the diagonal of ``scores``,
    which :func:`mine_hard_quadruplets` refuses). The same quadruplet as :func:`mine_hard_quadruplets` where
    ``valid`` and not ``nan``. Needs ``m >= 1`` rows."""
    labels = _check(scores, labels)
    s = scores.detach()
    m = s.shape[0]
    if m == 0:
        raise InputError("the faithful quadruplet needs a batch of at least one row, got 0", key="scores")
    pos = _positive_pairs(labels)
    hard_neg, has_neg = hardest_negatives(s, labels)
    # the least similar positive pair, ties to the lowest (i, j) in row-major order: the first positive entry equal
    # to the positive minimum (two steps, so that a positive score of +inf never ties with the masked entries)
    low = s.masked_fill(~pos, float("inf")).amin()
    first = (pos & (s == low)).flatten().to(torch.uint8).argmax()
    i, j = (first // m).reshape(1), (first % m).reshape(1)
    valid = pos.any() & has_neg.any()  # one row with a negative: two labels, so every row has one
    return (i, j, hard_neg[i], hard_neg[j]), valid, _nan_off_diagonal(s)


def mine_hard_quadruplets(
    scores: torch.Tensor, labels: torch.Tensor, mode: str = "faithful_one_per_batch"
) -> Quadruplets:
    """Hard quadruplets ``(i, j, k, l)`` from PDDM scores: ``(i, j)`` positive, ``k`` negative of ``i``,
    ``l`` negative of ``j``; each a ``LongTensor[Q]`` (``Q = 1`` faithful, ``Q = #positive pairs`` per-pair,
    ``Q = 0`` when the batch has no positive pair or no negative).

    Only the off-diagonal entries of ``scores`` are read, so the diagonal may hold anything (``-inf``,
    ``nan``); a NaN elsewhere raises :class:`InputError` (a NaN would otherwise win every argmax).

    Host reads: per-pair, one (``Q``, a shape), and a second only where ``Q = 0`` (a NaN, or a degenerate
    batch?); faithful, two (a NaN? degenerate?). :class:`~dynametric.losses.PDDMLoss` mines the faithful quadruplet
    with :func:`_faithful_quadruplet` instead, which reads nothing.
    """
    if mode not in MINING_MODES:
        raise ConfigError(f"unknown PDDM mining mode {mode!r}; expected one of {MINING_MODES}", key="mode")
    labels = _check(scores, labels)
    s = scores.detach()
    empty = torch.zeros(0, dtype=torch.long, device=s.device)
    if mode == "faithful_one_per_batch":
        if s.shape[0] == 0:
            return empty, empty, empty, empty
        quad, valid, nan = _faithful_quadruplet(s, labels)
        if bool(nan):
            raise InputError(NAN_SCORES, key="scores")
        return quad if bool(valid) else (empty, empty, empty, empty)
    hard_neg, has_neg = hardest_negatives(s, labels)
    nan = _nan_off_diagonal(s)
    # one read, the pair count (a shape): a NaN or a batch without a negative leaves no pair to find, and only then
    # does the host look at why
    i, j = (_positive_pairs(labels) & has_neg.any() & ~nan).nonzero(as_tuple=True)  # row-major (i, j) order
    if i.numel() == 0:
        if bool(nan):
            raise InputError(NAN_SCORES, key="scores")
        return empty, empty, empty, empty
    return i, j, hard_neg[i], hard_neg[j]
