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
    return masked.argmax(dim=1), neg.any(dim=1)


def mine_hard_quadruplets(
    scores: torch.Tensor, labels: torch.Tensor, mode: str = "faithful_one_per_batch"
) -> Quadruplets:
    """Hard quadruplets ``(i, j, k, l)`` from PDDM scores: ``(i, j)`` positive, ``k`` negative of ``i``,
    ``l`` negative of ``j``; each a ``LongTensor[Q]`` (``Q = 1`` faithful, ``Q = #positive pairs`` per-pair,
    ``Q = 0`` when the batch has no positive pair or no negative).

    Only the off-diagonal entries of ``scores`` are read, so the diagonal may hold anything (``-inf``,
    ``nan``); a NaN elsewhere raises :class:`InputError` (a NaN would otherwise win every argmax).
    """
    if mode not in MINING_MODES:
        raise ConfigError(f"unknown PDDM mining mode {mode!r}; expected one of {MINING_MODES}", key="mode")
    labels = _check(scores, labels)
    s = scores.detach()
    m = s.shape[0]
    same = labels[:, None] == labels[None, :]
    upper = torch.ones(m, m, dtype=torch.bool, device=s.device).triu(diagonal=1)
    pos = same & upper
    off_diag = ~torch.eye(m, dtype=torch.bool, device=s.device)
    if bool(torch.isnan(s[off_diag]).any()):
        raise InputError("PDDM scores contain NaN off the diagonal", key="scores")
    hard_neg, has_neg = hardest_negatives(s, labels)
    empty = torch.zeros(0, dtype=torch.long, device=s.device)
    if not bool(pos.any()) or not bool(has_neg.any()):
        return empty, empty, empty, empty
    i, j = pos.nonzero(as_tuple=True)  # row-major order, so argmin's first hit is the lowest (i, j)
    if mode == "faithful_one_per_batch":
        best = s[i, j].argmin().reshape(1)
        i, j = i[best], j[best]
    return i, j, hard_neg[i], hard_neg[j]
