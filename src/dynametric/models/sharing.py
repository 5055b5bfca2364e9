"""Decorrelation of the class and shared heads with gradient reversal (Sharing Matters, Milbich et al.,
TPAMI 2020; MIC).

``L_adv = -1/(B D) sum_{b,k} (c^[b,k] * normalise(R(s^))[b,k])^2`` with ``x^ = normalise(GRL(x))``.

``GRL`` is the identity forward and multiplies the gradient by ``-scale`` backward (Ganin & Lempitsky, ICML 2015).
``R`` (Linear(D_s, 512) -> ReLU -> Linear(512, D_c)) learns to predict one embedding from the other (minimising
``L_adv`` maximises the squared element-wise correlation), while the reversed gradient makes the heads and the
backbone remove that correlation. Direction ``shared_to_class`` (default, R maps shared -> class) or
``class_to_shared``.

The same term in the loss contract is :class:`dynametric.losses.decorrelation.DecorrelationLoss` (registered as
``DecorrelationLoss``); it wraps :class:`Decorrelation` (models never import losses).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dynametric.errors import ConfigError, InputError

DIRECTIONS = ("shared_to_class", "class_to_shared")


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad.neg() * ctx.scale, None


def grad_reverse(x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity forward; gradient multiplied by ``-scale`` backward."""
    return _ReverseGrad.apply(x, float(scale))


class GradientReversal(nn.Module):
    """Gradient-reversal layer (module form of :func:`grad_reverse`)."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        if scale < 0:
            raise ConfigError(f"gradient reversal scale must be >= 0, got {scale}", key="grl_scale")
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return grad_reverse(x, self.scale)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def _normalise(x: torch.Tensor) -> torch.Tensor:
    # half precision in float32, back in x's dtype: a float16 norm (CPU autocast) has eps 1e-12 = 0, and a zero row
    # would be NaN; float32 and float64 in their own dtype (float64 keeps its exact gradient)
    if x.dtype in (torch.float16, torch.bfloat16):
        return F.normalize(x.float(), p=2, dim=1, eps=1e-12).to(x.dtype)
    return F.normalize(x, p=2, dim=1, eps=1e-12)


class Decorrelation(nn.Module):
    """``R`` plus the adversarial term ``L_adv`` between a class and a shared embedding.

    Args:
        class_dim / shared_dim: widths of the two heads (128 each in the papers).
        hidden: width of R's hidden layer (512).
        direction: ``shared_to_class`` (R predicts the class embedding from the shared one) or ``class_to_shared``.
        grl_scale: gradient-reversal scale (1).
    """

    def __init__(self, class_dim: int = 128, shared_dim: int = 128, hidden: int = 512,
                 direction: str = "shared_to_class", grl_scale: float = 1.0) -> None:
        super().__init__()
        if direction not in DIRECTIONS:
            raise ConfigError(f"unknown direction {direction!r}; expected one of {list(DIRECTIONS)}", key="direction")
        for name, v in (("class_dim", class_dim), ("shared_dim", shared_dim), ("hidden", hidden)):
            if isinstance(v, bool) or int(v) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {v!r}", key=name)
        self.direction = direction
        src, dst = (shared_dim, class_dim) if direction == "shared_to_class" else (class_dim, shared_dim)
        self.class_dim, self.shared_dim = int(class_dim), int(shared_dim)
        self.grl = GradientReversal(grl_scale)
        self.regressor = nn.Sequential(nn.Linear(src, hidden), nn.ReLU(), nn.Linear(hidden, dst))

    def forward(self, class_emb: torch.Tensor, shared_emb: torch.Tensor) -> torch.Tensor:
        """``L_adv`` (a scalar; more negative = more correlated; 0, graph-connected, for an empty batch)."""
        if class_emb.dim() != 2 or shared_emb.dim() != 2 or class_emb.shape[0] != shared_emb.shape[0]:
            raise InputError(f"expected [B, D_c] and [B, D_s] embeddings, got {tuple(class_emb.shape)} and "
                             f"{tuple(shared_emb.shape)}", key="embeddings")
        if class_emb.shape[1] != self.class_dim or shared_emb.shape[1] != self.shared_dim:
            raise InputError(f"Decorrelation was built for widths ({self.class_dim}, {self.shared_dim}), got "
                             f"({class_emb.shape[1]}, {shared_emb.shape[1]})", key="embeddings")
        c = _normalise(self.grl(class_emb))
        s = _normalise(self.grl(shared_emb))
        if self.direction == "shared_to_class":
            target, pred = c, _normalise(self.regressor(s))
        else:
            target, pred = s, _normalise(self.regressor(c))
        sq = (target * pred).pow(2)
        if sq.numel() == 0:  # empty batch: a zero still connected to the graph (the mean would be NaN)
            return sq.sum()
        return -sq.mean()
