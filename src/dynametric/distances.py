"""Distances as objects that know whether a larger value means closer (PML's ``is_inverted``).

``LpDistance(p=2, power=1)`` is the plain Euclidean distance, ``LpDistance(power=2)`` the squared one,
``CosineSimilarity()`` the dot product of L2-normalised vectors (larger = closer). All of them normalise
embeddings first by default (``normalize_embeddings=True``), as pytorch-metric-learning does, with the
distance's own ``p``-norm (``LpDistance(p=1)`` normalises to unit L1 norm, as PML). ``power`` raises the matrix
elementwise, for distances and similarities alike.

The objects also answer to pytorch-metric-learning's names (``is_inverted``, ``margin``, ``smallest_dist``,
``largest_dist``, ``normalize``, ``maybe_normalize``, ``get_norm``, ``compute_mat``, ``pairwise_distance``), so they
can be handed to PML code; :func:`as_distance` turns a PML distance object into the equivalent dynametric one (by
its attributes; PML is never imported here). :func:`build_distance` makes one from a name in :data:`DISTANCES`
(``"l2"``, ``"cosine"``, ...), a ``{"name": ..., **kwargs}`` mapping (configs) or an object; losses and miners
both use it (it is re-exported from :mod:`dynametric.losses`).
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F

from dynametric.errors import ConfigError
from dynametric.utils.registry import build_registered


class Distance:
    """Base class. ``d(query, ref=None)`` gives the ``[Nq, Nr]`` matrix; ``d.pairwise(a, b)`` row-aligned values."""

    higher_is_closer: bool = False
    p: float = 2

    def __init__(self, normalize_embeddings: bool = True, power: float = 1) -> None:
        self.normalize_embeddings = normalize_embeddings
        self.power = power

    @property
    def is_inverted(self) -> bool:
        """PML's name of :attr:`higher_is_closer`."""
        return self.higher_is_closer

    def normalize(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return F.normalize(x, p=self.p, dim=dim)

    def maybe_normalize(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        return self.normalize(x, dim=dim) if self.normalize_embeddings else x

    def get_norm(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        return torch.linalg.vector_norm(x, ord=self.p, dim=dim)

    def __call__(self, query: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        q = self.maybe_normalize(query)
        r = q if ref is None else self.maybe_normalize(ref)
        mat = self.matrix(q, r)
        return mat**self.power if self.power != 1 else mat

    def matrix(self, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """The ``[Nq, Nr]`` matrix of already normalised inputs, before ``power``."""
        raise NotImplementedError

    def compute_mat(self, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """PML's name of :meth:`matrix`."""
        return self.matrix(q, r)

    def pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Distance between ``a[i]`` and ``b[i]`` for every row ``i`` (inputs already normalised if needed), with
        ``power`` applied as in the matrix."""
        d = self.pairwise_distance(a, b)
        return d**self.power if self.power != 1 else d

    def pairwise_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """PML's ``pairwise_distance``: :meth:`pairwise` without ``power``, as in PML."""
        raise NotImplementedError

    def margin(self, closer: torch.Tensor | float, farther: torch.Tensor | float) -> torch.Tensor:
        """How much ``closer`` is *worse* than ``farther``: ``closer - farther`` for distances,
        ``farther - closer`` for similarities (so ``margin(d_ap, d_an) + m > 0`` is a triplet violation). One of
        the two may be a number (a margin)."""
        return cast(torch.Tensor, farther - closer if self.higher_is_closer else closer - farther)

    def smallest_dist(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Elementwise the value meaning "closer" of ``a`` and ``b``."""
        return torch.maximum(a, b) if self.higher_is_closer else torch.minimum(a, b)

    def largest_dist(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Elementwise the value meaning "farther" of ``a`` and ``b``."""
        return torch.minimum(a, b) if self.higher_is_closer else torch.maximum(a, b)

    def _extra_repr(self) -> str:
        return "" if self.power == 1 else f", power={self.power}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(normalize_embeddings={self.normalize_embeddings}{self._extra_repr()})"


class LpDistance(Distance):
    """``||x - y||_p ** power``; ``power=2`` with ``p=2`` is the squared Euclidean distance."""

    def __init__(self, p: float = 2, power: float = 1, normalize_embeddings: bool = True) -> None:
        super().__init__(normalize_embeddings, power)
        self.p = p

    def __call__(self, query: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        dtype = query.dtype
        if dtype in (torch.float16, torch.bfloat16):  # cdist has no half-precision kernel on every device
            query = query.float()
            ref = None if ref is None else ref.float()
        return super().__call__(query, ref).to(dtype)

    def matrix(self, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return torch.cdist(q, r, p=self.p)

    def pairwise(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        d = torch.linalg.vector_norm((a - b).float(), ord=self.p, dim=-1)
        return (d**self.power if self.power != 1 else d).to(a.dtype)

    def pairwise_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        # PML's value exactly: torch's pairwise_distance, which adds its eps=1e-6 to the difference (pairwise does
        # not, to equal the matrix)
        return F.pairwise_distance(a, b, p=self.p)

    def __repr__(self) -> str:
        return f"LpDistance(p={self.p}, power={self.power}, normalize_embeddings={self.normalize_embeddings})"


class SquaredL2Distance(LpDistance):
    """Squared Euclidean distance ``||x - y||^2``."""

    def __init__(self, normalize_embeddings: bool = True) -> None:
        super().__init__(p=2, power=2, normalize_embeddings=normalize_embeddings)


class DotProductSimilarity(Distance):
    """``<x, y> ** power``; larger means closer. Unlike PML, embeddings are *not* normalised by default
    (``normalize_embeddings=True`` gives the cosine)."""

    higher_is_closer = True

    def __init__(self, normalize_embeddings: bool = False, power: float = 1) -> None:
        super().__init__(normalize_embeddings, power)

    def matrix(self, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return q @ r.t()

    def pairwise_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * b).sum(-1)


class CosineSimilarity(DotProductSimilarity):
    """``<x, y>`` of L2-normalised vectors; larger means closer."""

    def __init__(self, normalize_embeddings: bool = True, power: float = 1) -> None:
        super().__init__(normalize_embeddings, power)


class ForeignDistance(Distance):
    """A distance object of another library (PML's interface: ``obj(query, ref)``, ``is_inverted``,
    ``normalize_embeddings``) used as it is: its own ``__call__`` computes the matrix."""

    def __init__(self, obj: Any) -> None:
        super().__init__(bool(getattr(obj, "normalize_embeddings", False)), getattr(obj, "power", 1))
        self.obj = obj
        self.higher_is_closer = bool(obj.is_inverted)
        self.p = getattr(obj, "p", 2)

    def __call__(self, query: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        return self.obj(query, ref)

    def matrix(self, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return self.obj.compute_mat(q, r)

    def pairwise_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.obj.pairwise_distance(a, b))

    def __repr__(self) -> str:
        return f"ForeignDistance({self.obj!r})"


#: PML distance classes with an exact dynametric equivalent (matched by class name and module, never imported).
_PML_EQUIVALENTS = {"LpDistance": "lp", "DotProductSimilarity": "dot", "CosineSimilarity": "dot"}


def as_distance(obj: Any, key: str = "distance") -> Distance | None:
    """``obj`` as a dynametric :class:`Distance` (``None`` passes through).

    A pytorch-metric-learning distance (duck-typed: it has ``is_inverted``, ``normalize_embeddings`` and is callable)
    becomes the equivalent dynametric object when it is one of PML's ``LpDistance``, ``DotProductSimilarity`` or
    ``CosineSimilarity`` (same ``p``, ``power`` and ``normalize_embeddings``, so the same values), and is wrapped as a
    :class:`ForeignDistance` otherwise (e.g. ``SNRDistance`` or a user's subclass). Anything else is a
    :class:`ConfigError` naming ``key``.
    """
    if obj is None or isinstance(obj, Distance):
        return obj
    if callable(obj) and hasattr(obj, "is_inverted") and hasattr(obj, "normalize_embeddings"):
        cls = type(obj)
        kind = _PML_EQUIVALENTS.get(cls.__name__) if cls.__module__.startswith("pytorch_metric_learning.") else None
        power = getattr(obj, "power", 1)
        p = getattr(obj, "p", 2)
        if kind == "lp" and not obj.is_inverted:
            return LpDistance(p=p, power=power, normalize_embeddings=bool(obj.normalize_embeddings))
        if kind == "dot" and obj.is_inverted and p == 2:
            if obj.normalize_embeddings:
                return CosineSimilarity(power=power)
            return DotProductSimilarity(power=power)
        return ForeignDistance(obj)
    raise ConfigError(f"{key} must be a dynametric or pytorch-metric-learning distance object, got {obj!r}", key=key)


DISTANCES: dict[str, type[Distance]] = {
    "LpDistance": LpDistance,
    "l2": LpDistance,
    "SquaredL2Distance": SquaredL2Distance,
    "squared_l2": SquaredL2Distance,
    "CosineSimilarity": CosineSimilarity,
    "cosine": CosineSimilarity,
    "DotProductSimilarity": DotProductSimilarity,
    "dot": DotProductSimilarity,
}


def build_distance(spec: Any, key: str = "distance") -> Distance | None:
    """A distance object from an object, a registry name or ``{"name": ..., **kwargs}`` (``None`` passes)."""
    if spec is None or isinstance(spec, Distance):
        return spec
    if hasattr(spec, "is_inverted"):  # a pytorch-metric-learning distance object
        return as_distance(spec, key=key)
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, dict) and "name" in spec:
        kwargs = dict(spec)
        name = kwargs.pop("name")
    else:
        raise ConfigError(f"distance must be a name, a {{'name': ...}} mapping or a Distance, got {spec!r}", key=key)
    return build_registered(DISTANCES, "distance", name, kwargs, name_key=key, args_key=key)
