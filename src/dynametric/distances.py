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

Euclidean matrices (``LpDistance`` with ``p=2``, squared or not) come from :func:`euclidean_matrix`: above 25 rows a
matrix product on centred vectors, with the near pairs recomputed from their differences on the CPU (equal rows
exactly 0 apart, every distance within ~1e-4 of float64); on a GPU the centred product alone (no host read), whose
distances below ~1e-3 of the centred norms (float32) are rounding noise (docs/losses.md, *Euclidean distances:
precision*).
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
    """``||x - y||_p ** power``; ``power=2`` with ``p=2`` is the squared Euclidean distance (``p=2``: the matrix of
    :func:`euclidean_matrix`; other ``p``: ``torch.cdist``, one difference per pair)."""

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
        if self.p == 2 and q.dim() == 2 and r.dim() == 2:
            return euclidean_matrix(q, r)
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


#: ``torch.cdist`` computes Euclidean distances exactly (one difference per pair) for up to this many rows on both
#: sides, and through the matrix product ``|x|^2 + |y|^2 - 2 <x, y>`` above (its ``compute_mode`` default).
_CDIST_EXACT_ROWS = 25
#: Up to this many ``Nq * Nr * D`` the exact kernel is used whatever the rows (on the CPU it is then as fast as the
#: product with its repairs: 32 x 32 x 256 took 0.40 ms both, forward + backward; on CUDA its backward's
#: ``Nq x Nr x D`` buffer is then at most 1 MiB of float32).
_EXACT_SIZE = 2**18
#: On the CPU, a pair whose product-path squared distance is at most ``_NEAR_EPS`` machine epsilons times
#: ``|x - c|^2 + |y - c|^2`` is recomputed from its difference (float32: below ~3.5 % of the centred norms).
_NEAR_EPS = 1e4
#: Near pairs are recomputed by gathering their rows while there are at most this many per row on average
#: (``count <= 4 max(Nq, Nr)``: a reference set equal to the batch, a row's few duplicates); beyond that (a
#: collapsed batch: many equal or nearly equal rows) they keep the product's rounding: gathering and its backward
#: cost about 3 ms per 1,000 pairs of 128 values on one core (32 copies of each of 32 rows took 8x the product).
_NEAR_PER_ROW = 4
#: Both sets are centred on the coordinate-wise median of this many first rows of ``q``.
_CENTRE_ROWS = 8


def euclidean_matrix(q: torch.Tensor, r: torch.Tensor, recompute_near: bool | None = None) -> torch.Tensor:
    """The ``[Nq, Nr]`` Euclidean distances of the rows of ``q`` and ``r`` (2-D, same dtype and device).

    Up to 25 rows on both sides (as before), or up to ``Nq * Nr * D = 2^18`` (e.g. 32 x 32 rows of 256), every
    distance is computed from its difference (``torch.cdist``'s exact kernel). Above, ``torch.cdist``'s matrix
    product ``|x|^2 + |y|^2 - 2 <x, y>`` is used (the exact kernel is up to 14x slower on a CPU, and its CUDA
    backward allocates ``Nq x Nr x D`` values); its rounding error is about ``sqrt(8 eps)`` times the norms
    (float32: ~1e-3 |x|), so a distance below that is noise. Two repairs:

    * both sets are first centred on a common point (the coordinate-wise median of the first 8 rows of ``q``, not
      differentiated; non-finite values count as 0): the distances and their gradients do
      not change, the norms that the error is proportional to shrink, so a common offset of the embeddings costs
      no precision (rows 1000 from the origin, unit spread: error 0.01, was 12), and a row far off or NaN moves
      nothing (a mean would carry it into every row). No read to the host: this is all a CUDA device gets;
    * with ``recompute_near`` (default: on the CPU only, where the count of near pairs costs no synchronisation),
      every pair whose product distance is at most ``sqrt(1e4 eps (|x - c|^2 + |y - c|^2))`` (float32:
      ~3.5 % of the centred norms) is recomputed from its difference ``q[i] - r[j]`` (gathered rows,
      differentiable; gradient 0 at distance 0, as ``cdist``'s exact kernel), and a pair of a row with itself
      (``r is q``) is set to 0. Equal rows are then exactly 0 apart, and every other distance is within about
      ``1e-4`` relative of float64 (``k eps / (2e4 eps)`` for the product's error ``k eps |x|^2``; measured up to
      3e-7). More than 4 near pairs per row on average (a collapsed batch: many equal or nearly equal rows) keep
      the product's rounding instead (recomputing them, or the exact kernel for the whole matrix, cost 8-12x the
      product there; rows equal after centring are still exactly 0 apart). A row's distance to itself is 0 where
      the row is finite and NaN where it is not.
    """
    rows_q, rows_r, dim = q.shape[0], r.shape[0], q.shape[1]
    if max(rows_q, rows_r) <= _CDIST_EXACT_ROWS or rows_q * rows_r * dim <= _EXACT_SIZE or q.numel() == 0 \
            or r.numel() == 0:
        return torch.cdist(q, r, compute_mode="donot_use_mm_for_euclid_dist")
    with torch.no_grad():  # a robust common point: one row far off (or NaN, inf) does not move it
        centre = torch.nan_to_num(q[:_CENTRE_ROWS], nan=0.0, posinf=0.0, neginf=0.0).median(0).values
    qc = q - centre
    rc = qc if r is q else r - centre
    mat = torch.cdist(qc, rc, compute_mode="use_mm_for_euclid_dist")
    if not (q.device.type == "cpu" if recompute_near is None else recompute_near):
        return mat
    with torch.no_grad():
        nq = qc.pow(2).sum(1)
        norms_r = nq if r is q else rc.pow(2).sum(1)
        scale = _NEAR_EPS * torch.finfo(mat.dtype).eps
        # at least cdist's floor sqrt(1e-30), so that rows equal after centring (norm 0) count as near
        limit = (scale * (nq + norms_r.max())).sqrt().clamp_min(1e-14)  # a row's largest limit
        found = mat.detach()
        if r is q:  # the diagonal is 0 (set below); find the other near pairs
            found = found.clone().fill_diagonal_(float("inf"))
        # rows that may have a near pair first (a row minimum is much cheaper than a mask of the matrix and its
        # nonzero; a NaN minimum or limit, from a non-finite row, keeps the row), then each pair of them against its
        # own limit (one row far off does not make every pair near)
        i = j = torch.nonzero(~(found.amin(1) > limit)).squeeze(1)
        if i.numel():
            pair_limit = (scale * (nq[i, None] + norms_r)).sqrt().clamp_min(1e-14)
            row_pos, j = torch.nonzero(found[i] <= pair_limit, as_tuple=True)
            i = i[row_pos]
        if i.numel() > _NEAR_PER_ROW * max(rows_q, rows_r):
            # a collapsed batch (many equal or nearly equal rows): its near pairs keep the product's rounding (the
            # exact kernel for the whole matrix cost 8-12x the product there); equal rows after centring (all rows
            # equal) are exactly 0 apart all the same
            i = j = i[:0]
        # a row's own distance is 0 where the row is finite and NaN where not (as the exact kernel gives it)
        own = torch.where(torch.isfinite(nq), 0.0, float("nan")).to(mat.dtype) if r is q else None
    if own is not None:  # the diagonal: distance 0, gradient 0 (as cdist's exact kernel gives at distance 0)
        diagonal = torch.arange(rows_q, device=q.device)
        if i.numel() == 0:
            return torch.diagonal_scatter(mat, own)
    elif i.numel() == 0:
        return mat
    values = torch.linalg.vector_norm(q[i] - r[j], dim=1)
    if own is not None:
        i, j = torch.cat([i, diagonal]), torch.cat([j, diagonal])
        values = torch.cat([values, own])
    return mat.index_put((i, j), values)


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
