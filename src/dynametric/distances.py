"""Distances as objects that know whether a larger value means closer (PML's ``is_inverted``).

``LpDistance(p=2, power=1)`` is the plain Euclidean distance, ``LpDistance(power=2)`` the squared one,
``CosineSimilarity()`` the dot product of L2-normalised vectors (larger = closer). All of them normalise
embeddings first by default (``normalize_embeddings=True``), as pytorch-metric-learning does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Distance:
    """Base class. ``d(query, ref=None)`` gives the ``[Nq, Nr]`` matrix; ``d.pairwise(a, b)`` row-aligned values."""

    higher_is_closer: bool = False

    def __init__(self, normalize_embeddings: bool = True) -> None:
        self.normalize_embeddings = normalize_embeddings

    def maybe_normalize(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2, dim=-1) if self.normalize_embeddings else x

    def __call__(self, query: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        q = self.maybe_normalize(query)
        r = q if ref is None else self.maybe_normalize(ref)
        return self.matrix(q, r)

    def matrix(self, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """Distance between ``a[i]`` and ``b[i]`` for every row ``i`` (inputs already normalised if needed)."""
        raise NotImplementedError

    def margin(self, closer: torch.Tensor, farther: torch.Tensor) -> torch.Tensor:
        """How much ``closer`` is *worse* than ``farther``: ``closer - farther`` for distances,
        ``farther - closer`` for similarities (so ``margin(d_ap, d_an) + m > 0`` is a triplet violation)."""
        return farther - closer if self.higher_is_closer else closer - farther

    def __repr__(self) -> str:
        return f"{type(self).__name__}(normalize_embeddings={self.normalize_embeddings})"


class LpDistance(Distance):
    """``||x - y||_p ** power``; ``power=2`` with ``p=2`` is the squared Euclidean distance."""

    def __init__(self, p: float = 2, power: float = 1, normalize_embeddings: bool = True) -> None:
        super().__init__(normalize_embeddings)
        self.p = p
        self.power = power

    def matrix(self, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        dtype = q.dtype
        if dtype in (torch.float16, torch.bfloat16):
            q, r = q.float(), r.float()
        d = torch.cdist(q, r, p=self.p)
        if self.power != 1:
            d = d**self.power
        return d.to(dtype)

    def pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = torch.linalg.vector_norm((a - b).float(), ord=self.p, dim=-1)
        return (d**self.power if self.power != 1 else d).to(a.dtype)

    def __repr__(self) -> str:
        return f"LpDistance(p={self.p}, power={self.power}, normalize_embeddings={self.normalize_embeddings})"


class SquaredL2Distance(LpDistance):
    """Squared Euclidean distance ``||x - y||^2``."""

    def __init__(self, normalize_embeddings: bool = True) -> None:
        super().__init__(p=2, power=2, normalize_embeddings=normalize_embeddings)


class CosineSimilarity(Distance):
    """``<x, y>`` of normalised vectors; larger means closer."""

    higher_is_closer = True

    def matrix(self, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return q @ r.t()

    def pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(-1)


class DotProductSimilarity(CosineSimilarity):
    """``<x, y>`` without normalisation."""

    def __init__(self, normalize_embeddings: bool = False) -> None:
        super().__init__(normalize_embeddings)
