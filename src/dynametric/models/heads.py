"""Global pooling and embedding heads.

Pooling modes (``x`` is ``[B, C, H, W]``, or ``[B, N, C]`` tokens whose first ``num_prefix_tokens`` are
class/register tokens):

* ``avg``: mean over positions (patch tokens only for token inputs);
* ``max``: maximum over positions (the DyML protocol's max pooling);
* ``avgmax``: ``avg + max`` summed, the "average + max" pooling of Proxy Anchor (Kim et al., CVPR 2020);
  output width ``C``;
* ``catavgmax``: ``[avg, max]`` concatenated, output width ``2C``;
* ``token``: the first (class) token of a transformer; token inputs only.

An :class:`EmbeddingHead` maps the pooled feature ``f`` to ``e = W f + b`` (``embedding_dim`` outputs; with
``embedding_dim=None`` it is the identity, useful to evaluate the raw pretrained feature), then L2-normalises it
when ``normalize`` is true: ``e / max(||e||_2, eps)``. Under fp16/bf16 autocast the normalisation runs in float32 (the
output is float32), so reduced-precision embeddings are unit-length to float32 rounding as fp32 ones are (CPU autocast
would otherwise normalise in bfloat16, leaving norms up to ~0.5% off 1).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dynametric.errors import ConfigError

PoolingMode = Literal["avg", "max", "avgmax", "catavgmax", "token"]
POOLING_MODES: tuple[str, ...] = ("avg", "max", "avgmax", "catavgmax", "token")


class GlobalPool(nn.Module):
    """Global pooling of a feature map or token sequence to ``[B, C]`` (``[B, 2C]`` for ``catavgmax``)."""

    def __init__(self, mode: PoolingMode = "avg", num_prefix_tokens: int = 0) -> None:
        super().__init__()
        if mode not in POOLING_MODES:
            raise ConfigError(f"unknown pooling {mode!r}; expected one of {list(POOLING_MODES)}", key="model.pooling")
        self.mode = mode
        self.num_prefix_tokens = int(num_prefix_tokens)

    def extra_repr(self) -> str:
        """``mode='avg', num_prefix_tokens=0``: what a model folder rebuilds (``save_pretrained`` compares it)."""
        return f"mode={self.mode!r}, num_prefix_tokens={self.num_prefix_tokens}"

    def output_dim(self, feature_dim: int) -> int:
        return 2 * feature_dim if self.mode == "catavgmax" else feature_dim

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() == 4:
            if self.mode == "token":
                raise ConfigError("pooling 'token' needs a transformer backbone (token output [B, N, C]); "
                                  "got a feature map", key="model.pooling")
            flat = x.flatten(2)  # [B, C, HW]
            dim = 2
        elif x.dim() == 3:
            if self.mode == "token":
                return x[:, 0]
            flat = x[:, self.num_prefix_tokens:] if x.shape[1] > self.num_prefix_tokens else x
            dim = 1
        elif x.dim() == 2:  # a backbone that pools by itself: only modes that leave a pooled vector unchanged
            if self.mode in ("avgmax", "catavgmax"):
                raise ValueError(f"pooling {self.mode!r} needs unpooled features, got shape {tuple(x.shape)}")
            return x
        else:
            raise ValueError(f"GlobalPool expects a [B, C, H, W] or [B, N, C] tensor, got shape {tuple(x.shape)}")
        if self.mode == "avg":
            return flat.mean(dim)
        if self.mode == "max":
            return flat.amax(dim)
        avg, mx = flat.mean(dim), flat.amax(dim)
        return avg + mx if self.mode == "avgmax" else torch.cat([avg, mx], dim=1)


MAX_EMBEDDING_DIM = 2**31 - 1
"""The widest head: torch sizes a layer with a C ``int`` (a wider one ended in a TypeError traceback)."""


class EmbeddingHead(nn.Module):
    """``e = W f + b`` (or the identity when ``embedding_dim`` is ``None``), optionally L2-normalised."""

    def __init__(self, in_dim: int, embedding_dim: int | None, normalize: bool = True, eps: float = 1e-12) -> None:
        super().__init__()
        if embedding_dim is not None and not 1 <= embedding_dim <= MAX_EMBEDDING_DIM:  # torch takes a C int
            raise ConfigError(f"embedding dimension must be from 1 to {MAX_EMBEDDING_DIM} or null, got {embedding_dim}",
                              key="model.embedding_dim")
        self.proj: nn.Module = nn.Identity() if embedding_dim is None else nn.Linear(in_dim, embedding_dim)
        self.out_dim = in_dim if embedding_dim is None else int(embedding_dim)
        self.normalize = normalize
        self.eps = eps

    def extra_repr(self) -> str:
        """``out_dim=128, normalize=True, eps=1e-12``: what changes its output besides its weights (``save_pretrained``
        compares it with the model its recorded arguments build)."""
        return f"out_dim={self.out_dim}, normalize={self.normalize}, eps={self.eps}"

    def forward(self, pooled: Tensor) -> Tensor:
        e = self.proj(pooled)
        if not self.normalize:
            return e
        if e.dtype in (torch.float16, torch.bfloat16):
            e = e.float()  # normalise in float32: a bfloat16 norm and division leave ||e|| up to ~0.5% off 1
        return F.normalize(e, p=2.0, dim=1, eps=self.eps)
