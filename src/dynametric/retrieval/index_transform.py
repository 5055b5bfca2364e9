"""How an index stores its items and transforms its queries (:class:`InputTransform`), decided at build time in
float64 and recorded in ``index.json``: rows normalised in float64 blocks (:func:`_prepare`), the evaluation
engine's centring and power-of-two scaling (:func:`_centre_and_factor`). The index: :mod:`dynametric.retrieval.index`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dynametric.errors import InputError

_PREPARE_ROWS = 16384  # rows normalised at a time (a float64 copy of one block)


def _prepare(x: np.ndarray, metric: str) -> np.ndarray:
    """``x`` as contiguous float32, rows scaled to unit length for ``cosine``.

    Each row is first divided by its largest absolute value, then by its norm, in float64: a finite row of any
    scale gets its direction (a float32 norm overflows to inf beyond about 1e19 and underflows to 0 below about
    1e-23, which made every such vector 0). An all-zero row stays zero (callers refuse those for cosine).
    Normalised in blocks of :data:`_PREPARE_ROWS` rows, so the float64 copy stays bounded."""
    if metric != "cosine":
        return np.ascontiguousarray(x, dtype=np.float32)
    src = np.asarray(x)
    out = np.empty(src.shape, dtype=np.float32)
    for lo in range(0, len(src), _PREPARE_ROWS):
        out[lo:lo + _PREPARE_ROWS] = _unit_rows64(src[lo:lo + _PREPARE_ROWS])
    return out


def _unit_rows64(block: np.ndarray) -> np.ndarray:
    """Rows of ``block`` L2-normalised in float64, each first divided by its largest absolute value (a finite row of
    any scale gets its direction); an all-zero row stays zero."""
    y = np.array(block, dtype=np.float64)  # a copy: never the caller's array
    peak = np.abs(y).max(axis=1, keepdims=True) if y.shape[1] else np.ones((len(y), 1))
    y /= np.where(peak > 0, peak, 1.0)
    y /= np.where(peak > 0, np.linalg.norm(y, axis=1, keepdims=True), 1.0)
    return y


NARROW_CONE_SPREAD = 2.0 ** -7
"""A cosine index whose items' unit rows spread less than this (root mean square distance from their mean) stores
them centred and scaled in an L2 index (:class:`InputTransform`, kind ``cosine-l2``): the evaluation engine's rule
(``dynametric.metrics.engine.NARROW_CONE_SPREAD``), where float32 cosines of near neighbours round to the same
few values next to 1."""
CONE_FACTOR_MAX = 2.0 ** 40
"""The largest scale factor of a ``cosine-l2`` index: a query (a unit row, anywhere on the sphere, at most 2 from
the centre) stays far inside float32's range whatever the cone's width."""
QUERY_REACH = 2.0 ** 60
"""An ``l2`` index refuses a query whose transformed coordinates (centred and scaled as the items, whose largest
absolute coordinate is below 1) reach ``QUERY_REACH / sqrt(D)``: its float32 squared distances could overflow."""
TRANSFORMS = {"l2": ("l2",), "cosine": ("cosine", "cosine-l2"), "ip": ("ip",)}


def _pow2_below(peak: float) -> float:
    """The power of two ``f`` that brings ``peak`` (> 0, finite) into ``[0.5, 1)``; 1 for 0."""
    return 1.0 if not peak > 0.0 else math.ldexp(1.0, -math.frexp(peak)[1])


def _rows_of(x: np.ndarray, unit: bool) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, float64 block)`` of ``x`` in blocks of :data:`_PREPARE_ROWS` rows (unit rows when ``unit``)."""
    for lo in range(0, len(x), _PREPARE_ROWS):
        block = x[lo:lo + _PREPARE_ROWS]
        yield lo, _unit_rows64(block) if unit else np.asarray(block, dtype=np.float64)


def _centre_and_factor(x: np.ndarray, unit: bool, factor_max: float = math.inf) -> tuple[np.ndarray, float]:
    """The evaluation engine's Euclidean preparation (``_centred_scaled`` in ``dynametric.metrics.engine``), in numpy:
    the float64 mean of the rows rounded to a multiple of ``2**floor(log2(spread))`` (``spread``: the largest
    per-dimension standard deviation; no centring when it is 0), and the power of two that brings the largest
    absolute centred coordinate into ``[0.5, 1)`` (at most ``factor_max``)."""
    n, dim = x.shape
    total = np.zeros(dim, dtype=np.float64)
    for _, block in _rows_of(x, unit):
        total += block.sum(axis=0)
    mean = total / max(1, n)
    sq = np.zeros(dim, dtype=np.float64)
    for _, block in _rows_of(x, unit):
        sq += ((block - mean) ** 2).sum(axis=0)
    spread = math.sqrt(float(sq.max()) / max(1, n)) if dim else 0.0
    if spread > 0.0 and math.isfinite(spread):
        quantum = math.ldexp(1.0, math.frexp(spread)[1] - 1)
        centre = np.round(mean / quantum) * quantum
    else:
        centre = np.zeros(dim, dtype=np.float64)
    peak = 0.0
    for _, block in _rows_of(x, unit):
        peak = max(peak, float(np.abs(block - centre).max(initial=0.0)))
    return centre, min(_pow2_below(peak), factor_max)


@dataclass(frozen=True)
class InputTransform:
    """How an index (built by this version) stores its items and transforms every query, decided at build time
    from the items and recorded in ``index.json`` (``transform``); the reported distances undo it in float64.

    * ``l2``: rows ``(x - centre) * factor`` (``centre``: the rounded mean, ``factor``: a power of two; the engine's
      Euclidean preparation), distances divided back by ``factor``;
    * ``cosine``: float64 unit rows rounded to float32 in an inner-product index (as before this transform);
    * ``cosine-l2``: the items' unit rows lie in a narrow cone (:data:`NARROW_CONE_SPREAD`): unit rows centred and
      scaled as for ``l2`` in an L2 index, reporting ``1 - cos = d^2 / 2`` (exact for unit rows);
    * ``ip``: rows times ``factor`` (a power of two bringing the largest absolute value into ``[0.5, 1)``), each
      query times its own power of two; scores divided back by both (no centring: inner products are not
      translation invariant).

    ``max_norm``: the largest norm of a stored (float32) row, for the rounding bound of faiss's scores."""

    kind: str
    factor: float = 1.0
    centre: np.ndarray | None = None
    max_norm: float = 1.0

    @property
    def faiss_metric(self) -> str:
        return "l2" if self.kind in ("l2", "cosine-l2") else "ip"

    @property
    def unit(self) -> bool:
        return self.kind in ("cosine", "cosine-l2")

    @classmethod
    def plan(cls, x: np.ndarray, metric: str) -> InputTransform:
        """The transform of an index of ``metric`` over the items ``x`` ``[N, D]`` (any real dtype; finite)."""
        if metric == "l2":
            centre, factor = _centre_and_factor(x, False)
            return cls("l2", factor, centre)
        if metric == "ip":
            peak = max((float(np.abs(b).max(initial=0.0)) for _, b in _rows_of(x, False)), default=0.0)
            return cls("ip", _pow2_below(peak))
        if len(x) > 1:
            total = np.zeros(x.shape[1], dtype=np.float64)
            zero = False
            for _, block in _rows_of(x, True):
                total += block.sum(axis=0)
                zero = zero or bool((block == 0).all(axis=1).any())
            mean = total / len(x)
            spread = math.sqrt(max(0.0, 1.0 - float(mean @ mean)))
            if spread < NARROW_CONE_SPREAD and not zero:
                centre, factor = _centre_and_factor(x, True, CONE_FACTOR_MAX)
                return cls("cosine-l2", factor, centre)
        return cls("cosine")

    def rows64(self, block: np.ndarray) -> np.ndarray:
        """A block of rows transformed in float64 (before the rounding to float32); an ``ip`` query is scaled by a
        factor of its own instead (:meth:`~dynametric.retrieval.index.RetrievalIndex._prepare_queries`)."""
        y = _unit_rows64(block) if self.unit else np.array(block, dtype=np.float64)
        if self.centre is not None:
            y -= self.centre
        if self.factor != 1.0:
            y *= self.factor
        return y

    def apply(self, x: np.ndarray) -> np.ndarray:
        """The stored rows: :meth:`rows64` rounded to contiguous float32, block by block."""
        out = np.empty(x.shape, dtype=np.float32)
        for lo in range(0, len(x), _PREPARE_ROWS):
            out[lo:lo + _PREPARE_ROWS] = self.rows64(x[lo:lo + _PREPARE_ROWS])
        return out

    def undo(self, stored: np.ndarray) -> np.ndarray:
        """Stored rows back in the items' space, float64 (for ``cosine`` / ``cosine-l2`` their unit rows)."""
        y = np.array(stored, dtype=np.float64)
        if self.factor != 1.0:
            y /= self.factor
        if self.centre is not None:
            y += self.centre
        return y

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "factor": self.factor,
                "centre": None if self.centre is None else [float(v) for v in self.centre],
                "max_norm": self.max_norm}

    @classmethod
    def from_json(cls, value: Any, metric: str, dim: int, path: Path) -> InputTransform:
        """``index.json``'s ``transform`` checked: one line keyed ``transform`` for anything else."""
        def bad(why: str) -> InputError:
            return InputError(f"{why}; the file is damaged: rebuild the index", file=path, key="transform")

        if not isinstance(value, dict):
            raise bad(f"expected an object, found {type(value).__name__}")
        kind, factor, centre, norm = (value.get(k) for k in ("kind", "factor", "centre", "max_norm"))
        if kind not in TRANSFORMS[metric]:
            raise bad(f"kind {kind!r} is not one of {list(TRANSFORMS[metric])} (metric {metric})")
        for name, v in (("factor", factor), ("max_norm", norm)):
            if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v < 0 or \
                    (name == "factor" and (v == 0 or math.frexp(v)[0] != 0.5)):
                raise bad(f"{name} must be a finite {'power of two' if name == 'factor' else 'number >= 0'}, "
                          f"found {v!r}")
        if kind in ("l2", "cosine-l2"):
            if not (isinstance(centre, list) and len(centre) == dim and all(
                    isinstance(c, int | float) and not isinstance(c, bool) and math.isfinite(c) for c in centre)):
                raise bad(f"centre must be a list of {dim} finite numbers")
            arr: np.ndarray | None = np.array(centre, dtype=np.float64)
        elif centre is not None:
            raise bad(f"centre must be null for kind {kind!r}")
        else:
            arr = None
        return cls(kind, float(factor), arr, float(norm))  # type: ignore[arg-type]


@dataclass
class _Queries:
    """Queries of an index with an :class:`InputTransform`: ``faiss`` (the float32 rows faiss searches), ``exact``
    (the same rows in float64; for ``cosine`` renormalised in float64) and ``divisor`` (per row: what a float64 key
    is divided by to become the reported distance's scale)."""

    faiss: np.ndarray
    exact: np.ndarray
    divisor: np.ndarray

    def __getitem__(self, sl: slice) -> _Queries:
        return _Queries(self.faiss[sl], self.exact[sl], self.divisor[sl])

    def __len__(self) -> int:
        return len(self.faiss)
