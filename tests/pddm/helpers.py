"""Shared builders for the PDDM tests: a hand-set unit whose score depends only on the pair's position."""

from __future__ import annotations

import math

import torch

from dynametric.models.pddm import PDDM


def position_unit() -> PDDM:
    """D = H = 2 unit with ``S(a, b) = g(v_x)``, ``v_x = (a_x + b_x) / 2``, ``g(x) = x / sqrt(x^2 + 1)`` (x > 0).

    The difference stream is switched off (``W_u = 0``, ``b_u = (1, 0)`` so ``u' = (1, 0)``), the position
    stream gives ``v' = normalise((ReLU(v_x), 1))`` and the head reads ``v'_0``. So a pair far to the right is
    "similar" however far apart its ends are: PDDM hardness disagrees with Euclidean hardness.
    """
    unit = PDDM(2, hidden_dim=2, dropout=0.0)
    with torch.no_grad():
        unit.fc_u.weight.zero_()
        unit.fc_u.bias.copy_(torch.tensor([1.0, 0.0]))
        unit.fc_v.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0]]))
        unit.fc_v.bias.copy_(torch.tensor([0.0, 1.0]))
        unit.fc_c.weight.copy_(torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]]))
        unit.fc_c.bias.zero_()
        unit.fc_s.weight.copy_(torch.tensor([[1.0, 0.0]]))
        unit.fc_s.bias.zero_()
    return unit


def g(mid_x: float) -> float:
    """The hand unit's score as a function of the pair's mid-point x coordinate."""
    x = max(mid_x, 0.0)
    return x / math.sqrt(x * x + 1.0)


def points(xs: list[float]) -> torch.Tensor:
    """Embeddings on the x axis: ``[(x, 0) for x in xs]``."""
    return torch.tensor([[x, 0.0] for x in xs], dtype=torch.float64).float()


# Hand-built batch: class 0 is a tight pair near the origin (low PDDM score, tiny Euclidean distance),
# class 1 and class 2 are wide pairs far to the right (high PDDM score, large Euclidean distance).
XS = [0.5, 0.6, 4.0, 6.0, 0.4, 10.0]
LABELS = torch.tensor([0, 0, 1, 1, 2, 2])
