"""A faiss nearest-neighbour index with its metadata (``dynametric index build`` / ``dynametric search``).

Index folder ``INDEX/``: ``index.faiss`` (the faiss index), ``items.csv`` (``index,id,path``), ``labels.npy``
(``[N, S]`` int64, when the embeddings carry labels) and ``index.json``: kind and parameters, metric, dimension,
count, scale names, class names of text labels, the image roots, and the producing model's identity (checkpoint,
config hash, weights hash, head). While a build runs (and after one was killed) the folder also holds
``index.build.json``, the build's marker: written first, removed once ``index.json`` is written, and the lock file
``dynametric.lock`` (:func:`folder_lock`; ``embed`` and ``merge-embeddings`` hold it in their folders too).

Metrics: ``cosine`` (vectors L2-normalised, inner product; reported distance ``1 - cos``), ``l2`` (reported
distance: the Euclidean distance) and ``ip`` (inner product; reported distance ``-<q, x>``). Smaller is closer
for every reported distance. The items are stored transformed (:class:`InputTransform`, decided at build time in
float64 and recorded in ``index.json``; queries alike): faiss finds candidates in float32, their distances are
computed again in float64 with the transform undone, equal distances ordered by item position.

Kinds: ``flat`` (exact), ``ivf`` (``IndexIVFFlat``: ``nlist`` k-means cells, ``nprobe`` visited per query;
Jégou et al. 2011), ``hnsw`` (``IndexHNSWFlat``: ``M`` links, ``ef_construction``, ``ef_search``; Malkov &
Yashunin 2018).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import socket
import sys
import threading
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dynametric.cpu_kernels import outside_package_level
from dynametric.errors import ConfigError, DynametricError, InputError, first_sentence
from dynametric.utils.io import (
    StagedFiles,
    holds_only_own_files,
    is_stale_temp,
    json_text,
    remove_stale_temps,
    replacement_mode,
    require_new_folder,
    save_npy,
)
from dynametric.utils.locks import Holder, LockBusy, LockContended, LockForeign, LockUnreadable, acquire_lock
from dynametric.utils.readers import (
    beyond_float32,
    beyond_float32_text,
    check_format_version,
    open_regular,
    read_plain_npy,
    read_regular_bytes,
    refuse_zero_rows,
    require_regular,
)

KINDS = ("flat", "ivf", "hnsw")
METRICS = ("cosine", "l2", "ip")
INDEX_FORMAT = "dynametric-index"
INDEX_VERSION = 2

TIE_CANDIDATES = 4096
"""A flat search grows its candidate list until the ``k``-th result is settled (no item beyond the list can tie with
it or come before it), but not past ``max(16 x the first list, TIE_CANDIDATES)`` candidates once every query has its
results: a tie group larger than that (thousands of items on one point: a collapsed model) is settled by position
among the candidates found, so such data cost at most that many float64 distances per query."""
"""2: ``index.json`` records the input transform (``transform``, :class:`InputTransform`); an index of version 1
(none) is searched as it was built."""
QUERY_CHUNK = 64
INDEX_FILES = ("index.faiss", "items.csv", "labels.npy", "index.json")
BUILD_MARKER = "index.build.json"
"""Written first by every build (``format: dynametric-index-build``, the files it writes) and removed once
``index.json`` is written: a folder a build was killed in is recognised by it, and built into again."""
BUILD_FORMAT = "dynametric-index-build"


LOCK_NAME = "dynametric.lock"
"""The lock file an ``embed``, ``merge-embeddings`` or ``index build`` holds in its output folder while it writes there
(:func:`folder_lock`; created whole at once: ``format: dynametric-lock``, the command, its process id and host, a
token); removed when the command ends."""
LOCK_FORMAT = "dynametric-lock"


def make_output_folder(out: Path, key: str) -> Path:
    """Create the output folder ``out`` (and the folders above it); a folder that cannot be made is one line naming
    it and ``key``: ``ro/emb key '--out': cannot create the folder (Permission denied)``."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        folder = Path(exc.filename) if exc.filename is not None else out
        raise InputError(f"cannot create the folder ({exc.strerror or exc})", file=folder, key=key) from None
    return out


def other_entries(folder: Path) -> list[Path]:
    """The entries of ``folder`` but the lock file (:data:`LOCK_NAME`) and what a kill while it was taken may leave
    beside it (the temporary file it is made from, ``.dynametric.lock.<8 characters>.tmp``)."""
    return [p for p in folder.iterdir() if p.name != LOCK_NAME and not is_stale_temp(p, LOCK_NAME.__eq__)]


def _dynametric_lock(data: Any) -> Holder | None:
    """The process a :data:`LOCK_NAME` names, where its JSON is a lock of dynametric (:data:`LOCK_FORMAT`, an integer
    ``pid``)."""
    if not (isinstance(data, dict) and data.get("format") == LOCK_FORMAT and isinstance(data.get("pid"), int)):
        return None
    return Holder(data["pid"], str(data.get("host")))


@contextmanager
def folder_lock(out: Path, command: str, key: str = "--out") -> Iterator[None]:
    """Hold the lock file of the folder ``out`` (it exists) while ``command`` (``embed``, ``index build``) writes
    there (:func:`~dynametric.utils.locks.acquire_lock`). Another command holding it (a process still running on this
    host, or one on another host, which cannot be asked) is one line keyed ``key``: ``<out> key '--out': the folder is
    being written by another embed (process N); ...``. A lock left by a process that ended (killed) is taken over; a
    file of that name that is no lock of dynametric is refused, never removed."""
    lock = out / LOCK_NAME
    record = json.dumps({"format": LOCK_FORMAT, "command": command, "pid": os.getpid(),
                         "host": socket.gethostname(), "token": uuid.uuid4().hex}).encode()
    try:
        held = acquire_lock(lock, record, recognise=_dynametric_lock, unaskable="live", foreign="refuse", attempts=5)
    except LockBusy as exc:
        host = exc.holder.host
        where = "" if host == socket.gethostname() else f" on host {host}"
        raise InputError(f"the folder is being written by another {exc.lock.fields.get('command', 'command')} "
                         f"(process {exc.holder.pid}{where}); wait for it to finish or use another {key}"
                         + (f" (if that process is gone, remove {lock})" if where else ""), file=out, key=key) from None
    except LockForeign as exc:
        if exc.being_written:  # perhaps an O_EXCL file whose process is writing it this moment
            raise InputError(f"the folder is being written by another command (its {LOCK_NAME} was just created); "
                             f"wait for it to finish or use another {key}", file=out, key=key) from None
        raise InputError(f"is not a lock file of dynametric ({LOCK_FORMAT}); it is not removed: move it away or use "
                         f"another {key}", file=lock, key=key) from None
    except LockContended:
        raise InputError(f"cannot take the folder's lock {LOCK_NAME}: other commands keep taking it; wait for them "
                         f"to finish or use another {key}", file=out, key=key) from None
    except LockUnreadable as exc:
        raise InputError(f"cannot read the lock file ({exc.error.strerror or exc.error})", file=lock,
                         key=key) from None
    except OSError as exc:
        raise InputError(f"cannot create the lock file {LOCK_NAME} ({exc.strerror or exc})", file=out,
                         key=key) from None
    with held:
        yield


def require_faiss() -> Any:
    """Import faiss or raise a clear error naming the extra to install."""
    try:
        import faiss
    except ImportError:
        raise DynametricError("faiss is not installed; install it with `pip install 'dynametric[faiss]'` "
                              "(or `pip install faiss-cpu`)") from None
    return faiss


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
        factor of its own instead (:meth:`RetrievalIndex._prepare_queries`)."""
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


IVF_MIN_POINTS_PER_CELL = 39  # faiss's k-means default ``min_points_per_centroid``


class IndexBuildWarning(UserWarning):
    """An index was built as asked, but in a way that may search worse (an ``ivf`` index trained on fewer vectors
    than faiss's k-means wants per cell)."""


def default_nlist(n: int) -> int:
    """``round(4 sqrt(N))`` cells, at most ``N / 39`` (faiss wants >= 39 training points per cell), at least 1."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // IVF_MIN_POINTS_PER_CELL))


def build_faiss_index(x: np.ndarray, kind: str = "flat", metric: str = "cosine", *, nlist: int | None = None,
                      nprobe: int = 8, m: int = 32, ef_construction: int = 80, ef_search: int = 64,
                      train_size: int | None = None, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Build a faiss index over ``x`` ``[N, D]`` (already prepared for ``metric``); returns it and its params."""
    faiss = require_faiss()
    if kind not in KINDS:
        raise ConfigError(f"unknown index kind {kind!r}; expected one of {list(KINDS)}", key="--kind")
    if metric not in METRICS:
        raise ConfigError(f"unknown metric {metric!r}; expected one of {list(METRICS)}", key="--metric")
    n, d = x.shape
    fmetric = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    params: dict[str, Any] = {}
    if kind == "flat":
        index = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
        index.add(x)
    elif kind == "ivf":
        nl = default_nlist(n) if nlist is None else int(nlist)
        if nl < 1 or nl > n:
            raise ConfigError(f"nlist must be in [1, {n}] (the number of vectors), got {nl}", key="--nlist")
        if nprobe < 1:
            raise ConfigError(f"nprobe must be >= 1, got {nprobe}", key="--nprobe")
        quantizer = faiss.IndexFlatL2(d) if metric == "l2" else faiss.IndexFlatIP(d)
        index = faiss.IndexIVFFlat(quantizer, d, nl, fmetric)
        if train_size is not None and train_size < nl:
            raise ConfigError(f"train_size must be at least nlist ({nl}: k-means needs a vector per cell), got "
                              f"{train_size}", key="train_size")
        ts = min(n, train_size if train_size is not None else max(nl * 64, 10_000))
        rng = np.random.default_rng(seed)
        sample = x if ts >= n else x[np.sort(rng.choice(n, ts, replace=False))]
        index.cp.seed = seed
        if ts < IVF_MIN_POINTS_PER_CELL * nl:
            # faiss would print its own line on stderr (not a Python warning: no filter, no traceback line)
            warnings.warn(f"ivf: {nl} cells trained on {ts} vectors, fewer than faiss's k-means wants "
                          f"({IVF_MIN_POINTS_PER_CELL} per cell: {IVF_MIN_POINTS_PER_CELL * nl}); the cells may be "
                          f"uneven and searches slower or less accurate: fewer cells (nlist <= "
                          f"{max(1, ts // IVF_MIN_POINTS_PER_CELL)})"
                          + (" or a larger train_size" if ts < min(n, IVF_MIN_POINTS_PER_CELL * nl) else "")
                          + " train better", IndexBuildWarning,
                          stacklevel=outside_package_level())
            index.cp.min_points_per_centroid = 1
        index.train(sample)
        index.add(x)
        index.nprobe = min(nprobe, nl)
        params = {"nlist": nl, "nprobe": int(index.nprobe), "train_size": int(len(sample))}
    else:
        if m < 2 or ef_construction < 1 or ef_search < 1:
            raise ConfigError(f"need M >= 2, ef_construction >= 1, ef_search >= 1; got {m}, {ef_construction}, "
                              f"{ef_search}", key="--m")
        index = faiss.IndexHNSWFlat(d, m, fmetric)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
        index.add(x)
        params = {"m": m, "ef_construction": ef_construction, "ef_search": ef_search}
    return index, params


def faiss_search(index: Any, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Raw faiss search ``(scores [Q, k], ids [Q, k])`` with ``k`` clipped to the index size (``-1`` pads).

    An ``hnsw`` index is searched with a beam of ``max(efSearch, k)`` passed as this call's search parameters:
    the index itself is never written, so one index may be searched from several threads at once (faiss releases
    the GIL while it searches; setting ``index.hnsw.efSearch`` around the call let threads see each other's value,
    and restore the wrong one)."""
    k = max(1, min(int(k), int(index.ntotal)))
    hnsw = getattr(index, "hnsw", None)
    if hnsw is not None and hnsw.efSearch < k:
        faiss = require_faiss()
        # faiss.contrib.torch_utils (imported by pytorch-metric-learning's faiss kNN, for one) replaces every index's
        # search with one that takes no params, and keeps faiss's own numpy search as search_numpy
        search = getattr(index, "search_numpy", index.search)
        return search(q, k, params=faiss.SearchParametersHNSW(efSearch=k))
    return index.search(q, k)


def to_distance(scores: np.ndarray, metric: str) -> np.ndarray:
    """faiss scores -> reported distances (smaller is closer): ``1 - cos``, Euclidean, ``-ip``.

    ``1 - cos`` and the Euclidean distance cannot be negative: float rounding below 0 (a query's own item at about
    ``-1e-7``) is clamped to 0, which keeps the order (the clamp is monotone); ``-ip`` keeps its sign."""
    if metric == "cosine":
        return np.maximum(1.0 - scores, 0.0)
    if metric == "l2":
        return np.sqrt(np.maximum(scores, 0.0))
    return -scores


def first_per_group(groups: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Mask of the first occurrence (leftmost column) of each group value in every row, among ``valid`` cells.

    Vectorised over rows: a stable argsort of the row's group values puts equal values next to each other in
    column order, so the first of each run is the first occurrence.
    """
    g = np.where(valid, groups, np.iinfo(np.int64).min)
    order = np.argsort(g, axis=1, kind="stable")
    sg = np.take_along_axis(g, order, axis=1)
    first_sorted = np.ones_like(sg, dtype=bool)
    first_sorted[:, 1:] = sg[:, 1:] != sg[:, :-1]
    mask = np.zeros_like(first_sorted)
    np.put_along_axis(mask, order, first_sorted, axis=1)
    return mask & valid


def take_first_k(keep: np.ndarray, k: int) -> np.ndarray:
    """Column positions ``[Q, k]`` of the first ``k`` True cells of every row (``-1`` where a row has fewer)."""
    rank = np.cumsum(keep, axis=1)
    sel = keep & (rank <= k)
    q = keep.shape[0]
    pos = np.full((q, k), -1, dtype=np.int64)
    rows, cols = np.nonzero(sel)
    pos[rows, rank[rows, cols] - 1] = cols
    return pos


_META_TYPES: dict[str, tuple[type, ...]] = {"kind": (str,), "metric": (str,), "dim": (int,), "count": (int,)}


def _is_build_file(name: str) -> bool:
    """A file a build writes atomically: the index's own files and its marker."""
    return name in INDEX_FILES or name == BUILD_MARKER


def _is_build_or_lock_file(name: str) -> bool:
    """A build's file (:func:`_is_build_file`) or the folder's lock file: a folder is the build's also while it
    holds the temporary file another build's lock attempt makes (``.dynametric.lock.<8 characters>.tmp``, there
    between its creation and its removal, or left by a kill at that moment). Only recognised, never removed by a
    build: it may be another process's lock being taken."""
    return _is_build_file(name) or name == LOCK_NAME


def _build_files(out: Path) -> set[str]:
    """The files of an interrupted build in ``out`` by its marker (:data:`BUILD_MARKER`, a regular file saying
    ``format: dynametric-index-build``): the marker and the index files it lists; empty without one."""
    marker = out / BUILD_MARKER
    if marker.is_symlink() or not marker.is_file():
        return set()
    try:
        meta = json.loads(read_regular_bytes(marker).decode("utf-8"))
    except (OSError, ValueError, RecursionError, InputError):
        return set()
    if not isinstance(meta, dict) or meta.get("format") != BUILD_FORMAT or not isinstance(meta.get("files"), list):
        return set()
    return {BUILD_MARKER, *(name for name in meta["files"] if name in INDEX_FILES)}


def check_build_folder(out: Path, key: str = "--out") -> None:
    """Whether a build may write into the existing folder ``out``, asked before anything is written there (by
    ``index build`` before the embeddings are read, and again under the folder's lock): an earlier index is replaced,
    and a folder holding only what a first build killed before ``index.json`` left (its marker and the files it
    names, the temporary files of its atomic writes); any other non-empty folder is refused (the lock file and the
    temporary files of lock attempts aside: :func:`_is_build_or_lock_file`), so is a :data:`BUILD_MARKER` that is
    not a build's. Every file the build replaces or removes (:data:`INDEX_FILES`, the marker) must be one it may
    replace: a read-only one (``chmod 444``) is one line keyed ``key`` (:func:`~dynametric.utils.io.replacement_mode`),
    the folder left as it was."""
    if not out.is_dir():
        return
    if not _is_index_folder(out) and not holds_only_own_files(out, {*_build_files(out), LOCK_NAME},
                                                              _is_build_or_lock_file):
        require_new_folder(out, key, "dynametric index (index.json)")
    marker = out / BUILD_MARKER
    if (marker.exists() or marker.is_symlink()) and not _build_files(out):  # beside an earlier index
        raise InputError(f"is not the marker of a dynametric index build (format {BUILD_FORMAT!r}), and it is not "
                         f"overwritten: move it away or use another {key}", file=marker, key=key)
    for name in (BUILD_MARKER, *INDEX_FILES):  # the marker and index.faiss are written first, labels.npy may go
        replacement_mode(out / name, key)


def _is_index_folder(out: Path) -> bool:
    try:  # an index.json that is a FIFO or a device (/dev/zero) is no index's, and is not read
        return json.loads(read_regular_bytes(out / "index.json").decode("utf-8")).get("format") == INDEX_FORMAT
    except (OSError, ValueError, AttributeError, RecursionError, InputError):
        return False


def _read_meta(meta_path: Path, data: bytes | None = None) -> dict[str, Any]:
    """``index.json`` (``data``: its content, already read), with every field the loader relies on present and of
    the right type."""
    try:
        meta = json.loads(read_regular_bytes(meta_path) if data is None else data)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"unreadable index metadata ({exc})", file=meta_path) from None
    except RecursionError:  # arrays or objects nested thousands deep: no index.json holds them
        raise InputError("unreadable index metadata (RecursionError: nested too deeply)", file=meta_path) from None
    if not isinstance(meta, dict) or meta.get("format") != INDEX_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise InputError(f"not a dynametric index (format {found!r})", file=meta_path, key="format")
    check_format_version(meta, meta_path, newest=INDEX_VERSION, what="index format")
    for key, types in _META_TYPES.items():
        value = meta.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise InputError(f"expected {types[0].__name__}, found {value!r}", file=meta_path, key=key)
    if meta["kind"] not in KINDS or meta["metric"] not in METRICS:
        raise InputError(f"unknown kind/metric {meta['kind']!r}/{meta['metric']!r}; expected one of {list(KINDS)} / "
                         f"{list(METRICS)}", file=meta_path, key="kind")
    return meta


def _check_kind(index: Any, meta: dict[str, Any], fpath: Path, faiss: Any) -> None:
    """The faiss file must be the kind and metric ``index.json`` names (a swapped file is not searched as another)."""
    if isinstance(index, faiss.IndexHNSW):
        found = "hnsw"
    elif isinstance(index, faiss.IndexIVF):
        found = "ivf"
    elif isinstance(index, faiss.IndexFlat):
        found = "flat"
    else:
        found = type(index).__name__
    metric = "l2" if index.metric_type == faiss.METRIC_L2 else "ip"
    transform = meta.get("transform")
    want_metric = ("l2" if meta["metric"] == "l2" else "ip") if not isinstance(transform, dict) else \
        ("l2" if transform.get("kind") in ("l2", "cosine-l2") else "ip")
    if found != meta["kind"] or metric != want_metric:
        raise InputError(f"index.faiss holds a {found} index ({metric}), but index.json says {meta['kind']} "
                         f"({meta['metric']})", file=fpath)


def csv_line(fields: Iterable[Any]) -> str:
    """One CSV record ending in ``\n``, as ``csv.reader`` reads it back field for field: a field holding a comma, a
    double quote, ``\n`` or ``\r`` is quoted (its quotes doubled). ``csv.writer(lineterminator="\n")`` leaves a
    field with a ``\r`` unquoted, and a reader ends the record there (a file name with a carriage return split
    its row of ``items.csv`` in two)."""
    out = []
    for value in fields:
        text = str(value)
        if any(c in text for c in _CSV_SPECIAL):
            text = '"' + text.replace('"', '""') + '"'
        out.append(text)
    return ",".join(out) + "\n"


_CSV_SPECIAL = (",", '"', "\n", "\r")


def csv_records(text: str, path: Path, what: str) -> Iterator[tuple[int, list[str]]]:
    """The records after the header of an ``items.csv`` (``text``), each with the line it starts on; every record
    must have as many fields as the header (``what`` names them in the error: one line naming ``path`` and the
    line, e.g. a row split by a bare carriage return in a file an older dynametric wrote)."""
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        width = len(header or [])
        start = reader.line_num + 1
        for row in reader:
            if len(row) != width:
                raise InputError(f"expected {width} fields ({what}), got {len(row)}: the file is damaged (a row "
                                 "split or cut); write it again (embed again / rebuild the index)", file=path,
                                 line=start)
            yield start, row
            start = reader.line_num + 1
    except csv.Error as exc:
        raise InputError(f"unreadable CSV ({exc})", file=path, line=reader.line_num) from None


def _read_items(path: Path, text: str | None = None) -> tuple[list[str], list[str]]:
    """``items.csv``: header ``index,id,path``, then one row of three fields per item (``text``: the file's
    content, already read)."""
    if text is None:
        data = read_regular_bytes(path, missing="items.csv missing (the index folder is incomplete)")
        text = utf8_text(data, path)
    if not text.startswith("index,id,path"):
        raise InputError(f"expected the header index,id,path, found {text.partition(chr(10))[0][:60]!r}", file=path,
                         line=1)
    ids, paths = [], []
    for _, row in csv_records(text, path, "index,id,path"):
        ids.append(row[1])
        paths.append(row[2])
    return ids, paths


def utf8_text(data: bytes, path: Path) -> str:
    """The text of a file this tool wrote, line ends as written (a ``\r`` inside a quoted CSV field stays one)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=path) from None


LOAD_TRIES = 3
"""How many times :meth:`RetrievalIndex.load` reads a folder whose ``index.json`` a build replaced meanwhile."""
_CHANGING = ("the index changed while it was read: a `dynametric index build` into this folder is running (or was "
             f"stopped before it finished: its {BUILD_MARKER} is there); try again once the build finished, or run "
             "the build again")


class IndexChangedError(InputError):
    """:meth:`RetrievalIndex.load` of a folder that a ``dynametric index build`` rewrote while it was read, more
    often than :data:`LOAD_TRIES` times, or that a build is writing (or was stopped in): try again later."""


def _read_index_json(path: Path) -> tuple[bytes, tuple[int, ...]]:
    """``index.json``'s bytes and the identity of the file they were read from (inode, size, modification time):
    a build replaces the file by a new one, so a rebuild of the same index is another file with the same bytes."""
    with open_regular(path, missing="not an index folder: no index.json (was `dynametric index build` "
                      "interrupted?)") as fh:  # a FIFO or a device (/dev/zero): refused, never read
        st = os.fstat(fh.fileno())
        return fh.read(), (st.st_ino, st.st_size, st.st_mtime_ns)


def _change_during_load(path: Path, seen: tuple[bytes, tuple[int, ...]]) -> str | None:
    """Whether the folder changed since its ``index.json`` was read (``seen``: :func:`_read_index_json`):
    ``"built"`` (another ``index.json`` now), ``"building"`` (a build's marker there: a build running or one
    stopped), ``None``.

    The marker is looked at first: when there was none and ``index.json`` is still the file read, no build ran when
    the marker was looked for, and none had finished since ``index.json`` was read (each writes a new one).
    (``index.json`` first would miss a build that wrote it and removed its marker in between.)"""
    marker = path / BUILD_MARKER
    building = marker.exists() or marker.is_symlink()
    try:
        if _read_index_json(path / "index.json") != seen:
            return "built"
    except InputError:  # gone (as OSError before), or no regular file now: read again, and refused then
        return "built" if (path / "index.json").exists() else "building"
    except OSError:
        return "building"
    return "building" if building else None


def _labels_sha256(labels: np.ndarray | None) -> str:
    """The digest ``index.json`` records of the labels: SHA-256 of their int64 values, row by row."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()


def _read_labels(path: Path, n: int) -> np.ndarray:
    """``labels.npy``: an ``[N, S]`` integer array (never unpickled)."""
    require_regular(path, missing="labels.npy missing, but index.json says the index has labels")
    labels = read_plain_npy(path, "an [N, S] integer array")
    if labels.ndim != 2 or labels.dtype.kind not in "iu":
        raise InputError(f"expected an [N, S] integer array, found {labels.dtype} {labels.shape}", file=path)
    return labels.astype(np.int64, copy=False)


#: the most names a short repr lists (scale names), and the most characters of one value it shows
REPR_NAMES, REPR_TEXT = 6, 60


def repr_text(value: Any, limit: int = REPR_TEXT) -> str:
    """``repr(str(value))`` cut to about ``limit`` characters (``...`` in the middle: a path keeps its file name)."""
    text = str(value)
    if len(text) > limit:
        half = (limit - 3) // 2
        text = f"{text[:half]}...{text[-half:]}"
    return repr(text)


def repr_names(names: Sequence[Any] | None) -> str:
    """The first :data:`REPR_NAMES` of ``names``, each cut (:func:`repr_text`), then how many more: a bounded list."""
    names = [] if names is None else list(names)  # a numpy array of names has no truth value
    shown = ", ".join(repr_text(n, 30) for n in names[:REPR_NAMES])
    return f"[{shown}{f', ... +{len(names) - REPR_NAMES} more' if len(names) > REPR_NAMES else ''}]"


def repr_model(model: Mapping[str, Any] | None) -> str:
    """The producing model's identity in a repr: its checkpoint and head (what names it), cut; ``-`` when unknown."""
    if not model:
        return "-"
    head = model.get("head")
    return repr_text(model.get("checkpoint", "?")) + (f" head {repr_text(head, 30)}" if head else "")


@dataclass
class SearchResult:
    """Ranked results per query: item positions ``[Q, k]`` (``-1``: no result) and distances (``nan`` there)."""

    ids: np.ndarray
    distances: np.ndarray
    mode: str = "items"
    scale: str | None = None
    query_groups: np.ndarray | None = None
    short_queries: int = 0
    """Queries with fewer results than the index holds for them (an ``ivf`` index ranks only the items of the
    ``nprobe`` cells it visits; ``hnsw`` only what its beam reaches)."""


def _refuse_beyond_float32(x: np.ndarray, metric: str, what: str, action: str, file: str | Path | None) -> None:
    """Refuse finite values beyond float32's range (:func:`~dynametric.utils.readers.beyond_float32`) for an
    ``l2`` / ``ip`` index, which is built and searched in float32 (the cast made them Inf: "NaN or Inf"); a cosine
    index normalises the rows in float64 first and takes them. ``action``: what the index does in float32."""
    beyond = beyond_float32(x) if metric != "cosine" else None
    if beyond is not None:
        raise InputError(f"{what} hold {beyond_float32_text(beyond)}); an {metric} index {action} in float32",
                         file=file)


def _query_array(q: Any) -> np.ndarray:
    """Queries as a numpy array: a torch tensor detached (one that requires grad) and moved to the CPU, bf16 and
    fp16 (which numpy cannot hold, or holds with too little range) as float32."""
    torch = sys.modules.get("torch")  # a tensor exists only where torch was imported: not imported for it here
    if torch is not None and isinstance(q, torch.Tensor):
        t = q.detach()
        if t.is_floating_point() and t.element_size() < 4:
            t = t.float()
        q = t.cpu().numpy()
    return np.asarray(q)


def _build_items(emb: Any, rows: int) -> tuple[list[str], list[str], np.ndarray | None, list[str]]:
    """:meth:`RetrievalIndex.build`'s ids, paths, ``[N, S]`` int64 labels (or ``None``) and scale names of ``emb``
    for ``rows`` embeddings, checked: one id and one path per row, labels through
    :func:`~dynametric.labels.as_label_matrix` (``[S, N]`` labels, NaN or fractional class ids, another row count are
    one line keyed ``labels``), one scale name per label column (an empty list takes the default names)."""
    from dynametric.labels import as_label_matrix, check_scale_names, default_scale_names

    ids, paths = list(emb.ids), list(emb.paths)
    for what, values in (("ids", ids), ("paths", paths)):
        if len(values) != rows:
            raise InputError(f"{len(values)} {what} for {rows} embeddings (one per embedding row)", key=what)
    names = list(emb.scale_names)
    if emb.labels is None:
        return ids, paths, None, names
    torch = sys.modules.get("torch")
    given = emb.labels.detach() if torch is not None and isinstance(emb.labels, torch.Tensor) else emb.labels
    shape = tuple(getattr(given, "shape", ()))
    if len(shape) == 2 and shape[0] != rows and shape[1] == rows:
        raise InputError(f"labels have shape {list(shape)}: {shape[0]} rows for {rows} embeddings; they look "
                         "[S, N] (one row per scale): give [N, S], one row per embedding (transpose them)",
                         key="labels")
    labels = as_label_matrix(given, num_rows=rows).cpu().numpy()
    if not names:
        names = default_scale_names(labels.shape[1])
    elif len(names) != labels.shape[1]:
        raise InputError(f"{len(names)} scale names {[str(n) for n in names]} for {labels.shape[1]} label "
                         "column(s) (one name per column, finest first)", key="scale_names")
    return ids, paths, labels, list(check_scale_names(names, reserved=()))


@dataclass
class RetrievalIndex:
    """A faiss index plus the item metadata it answers with."""

    index: Any
    kind: str
    metric: str
    dim: int
    ids: list[str]
    paths: list[str]
    labels: np.ndarray | None
    scale_names: list[str]
    class_names: list[list[str]] | None = None
    image_roots: list[str] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    _direct_map: bool = field(default=False, repr=False)
    _map_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    digest: str = field(default="", compare=False)
    """SHA-256 of the ``index.json`` :meth:`load` read and checked every file against (it holds the digests of
    ``index.faiss``, ``items.csv`` and the labels, so it names the build), or :meth:`save` wrote; ``""`` for an
    index neither loaded nor saved."""
    loaded_from: Path | None = field(default=None, compare=False)
    """The folder :meth:`load` read or :meth:`save` wrote (``None`` for an index neither loaded nor saved)."""
    transform: InputTransform | None = field(default=None, compare=False)
    """How the items are stored and the queries transformed (:class:`InputTransform`); ``None`` for an index of
    an older dynametric (``index.json`` without ``transform``), searched exactly as that version did."""

    @property
    def size(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        """Short whatever the size (the generated one listed every id and path: megabytes at 100k items)."""
        labels = f"labels {repr_names(self.scale_names)}" if self.labels is not None else "no labels"
        where = f", loaded from {repr_text(self.loaded_from)}" if self.loaded_from is not None else \
            (f", source {repr_text(self.source)}" if self.source else "")
        params = f", params {repr_text(self.params)}" if self.params else ""
        return (f"RetrievalIndex(kind {repr_text(self.kind, 20)}, metric {repr_text(self.metric, 20)}, "
                f"{self.size} items, dim {self.dim}, {labels}, model {repr_model(self.model)}{params}{where})")

    # ------------------------------------------------------------------------------------------ building, IO
    @classmethod
    def build(cls, emb: Any, kind: str = "flat", metric: str = "cosine", **kwargs: Any) -> RetrievalIndex:
        """Index an :class:`~dynametric.retrieval.embed.EmbeddingSet` (``kwargs``: :func:`build_faiss_index`).
        Raises :class:`~dynametric.errors.InputError` for embeddings that cannot be indexed (none, non-finite, an
        all-zero row under cosine) and :class:`~dynametric.errors.ConfigError` for an unknown kind, metric or
        option; faiss missing is one line naming the extra to install. The embeddings are read as queries are (a
        torch tensor detached and moved to the CPU, bf16 / fp16 as float32); the labels as every loss and metric
        reads them (:func:`~dynametric.labels.as_label_matrix`: ``[N]`` or ``[N, S]`` integer class ids, one row per
        embedding); ``ids`` and ``paths`` must have one entry per embedding and ``scale_names`` one name per label
        column (none: the default names) - each refused with one line otherwise."""
        raw = _query_array(emb.embeddings)
        if raw.ndim != 2 or raw.shape[0] == 0 or raw.shape[1] == 0:  # as the command line refuses such a file
            raise InputError(f"no embeddings (shape {raw.shape})" if raw.ndim == 2 else
                             f"expected a 2-D [N, D] array of embeddings, got shape {raw.shape}", file=emb.source)
        if metric == "cosine":
            src = Path(emb.source)
            refuse_zero_rows(raw, src / "embeddings.npy" if src.is_dir() else src)
        _refuse_beyond_float32(raw, metric, "embeddings", "is built", emb.source)
        if raw.dtype.kind not in "fiub" or not all(np.isfinite(b).all() for _, b in _rows_of(raw, False)):
            raise InputError("embeddings contain NaN or Inf" if raw.dtype.kind in "fiub" else
                             f"embeddings must be numbers, got dtype {raw.dtype}", file=emb.source)
        if metric not in METRICS:  # before the transform is planned for it
            raise ConfigError(f"unknown metric {metric!r}; expected one of {list(METRICS)}", key="--metric")
        ids, paths, labels, names = _build_items(emb, len(raw))
        plan = InputTransform.plan(raw, metric)
        x = plan.apply(raw)
        if not np.isfinite(x).all():
            raise InputError("embeddings contain NaN or Inf", file=emb.source)
        norm = max((float(np.linalg.norm(np.asarray(x[lo:lo + _PREPARE_ROWS], np.float64), axis=1).max())
                    for lo in range(0, len(x), _PREPARE_ROWS)), default=0.0)
        plan = InputTransform(plan.kind, plan.factor, plan.centre, norm)
        index, params = build_faiss_index(x, kind, plan.faiss_metric, **kwargs)
        return cls(index, kind, metric, int(x.shape[1]), ids, paths, labels, names,
                   emb.class_names, list(emb.image_roots), dict(emb.model), params, str(emb.source), transform=plan)

    def save(self, out: str | Path) -> Path:
        """Write the index folder: every file is first written to a temporary file beside its target (the build's
        marker :data:`BUILD_MARKER`, the index files, ``index.json``), and only once all are written are they renamed
        into place: the marker first, ``index.json`` last (it marks a complete index), then the marker is removed. A
        failed write (a full disk, a file size limit) leaves an earlier index in the folder as it was, usable, and no
        temporary file; a build killed between its renames leaves its marker, which the next build knows."""
        faiss = require_faiss()
        out = Path(out)
        if out.exists() and not out.is_dir():
            require_new_folder(out, "--out", "dynametric index (index.json)")  # refused
        make_output_folder(out, "--out")
        with folder_lock(out, "index build"):  # one build at a time in a folder
            return self._save(out, faiss)

    def _save(self, out: Path, faiss: Any) -> Path:
        check_build_folder(out)  # before anything is written: the folder as it was when refused
        marker = out / BUILD_MARKER
        remove_stale_temps(out, _is_build_file)  # left by a killed build of this index
        with StagedFiles() as staged:  # what a failed write left unrenamed is removed
            # the marker says that a build is under way and which files it writes (labels.npy: or removes), so a
            # build killed between the renames leaves a folder the next build knows as its own
            staged.write(BUILD_MARKER, marker, json_text(
                {"format": BUILD_FORMAT, "version": INDEX_VERSION, "files": list(INDEX_FILES)}).encode("utf-8"))
            digest = hashlib.sha256()

            def write(data: Any) -> int:  # the bytes written are the bytes hashed (never another build's file)
                digest.update(data)
                return fh.write(data)

            with staged.open("index.faiss", out / "index.faiss") as fh:  # Python's file IO: a full disk is an OSError
                faiss.write_index(self.index, faiss.PyCallbackIOWriter(write))  # (faiss's own: a RuntimeError)
            items_text = csv_line(["index", "id", "path"]) + "".join(
                csv_line([i, item_id, p]) for i, (item_id, p) in enumerate(zip(self.ids, self.paths)))
            items_bytes = items_text.encode("utf-8")
            staged.write("items.csv", out / "items.csv", items_bytes)
            hashes = {"faiss_sha256": digest.hexdigest(), "items_sha256": hashlib.sha256(items_bytes).hexdigest()}
            if self.labels is not None:
                labels = np.ascontiguousarray(self.labels, dtype=np.int64)
                with staged.open("labels.npy", out / "labels.npy") as fh:
                    save_npy(fh, labels)
                hashes["labels_sha256"] = _labels_sha256(labels)
            meta_bytes = json_text({
                "format": INDEX_FORMAT, "version": INDEX_VERSION, "kind": self.kind, "metric": self.metric,
                "dim": self.dim, "count": self.size, "params": self.params, "scale_names": self.scale_names,
                "has_labels": self.labels is not None, "class_names": self.class_names,
                "image_roots": self.image_roots, "model": self.model, "source": self.source, **hashes,
                **({"transform": self.transform.to_json()} if self.transform is not None else {})}).encode("utf-8")
            staged.write("index.json", out / "index.json", meta_bytes)

            def absent(name: str) -> None:
                if name == "labels.npy" and (out / name).exists():  # an earlier index's labels: this one has none
                    (out / name).unlink()

            # every file written: the renames (they need no space), the marker first, index.json last
            staged.commit((BUILD_MARKER, "index.faiss", "items.csv", "labels.npy", "index.json"), absent=absent)
        marker.unlink(missing_ok=True)  # the index is complete
        # this object is now the folder's index, as if loaded from it (its index.json, written under the folder's
        # lock: no other build can have replaced it): a service that builds and saves can poll changed_on_disk() as
        # after load()
        self.digest = hashlib.sha256(meta_bytes).hexdigest()
        self.loaded_from = out
        return out

    @classmethod
    def load(cls, path: str | Path) -> RetrievalIndex:
        """Open an index folder; errors (:class:`~dynametric.errors.InputError`) name the missing or inconsistent
        file.

        The files are those ``index.json`` describes or the load is refused: each file is opened once and what was
        read from it is checked against ``index.json``'s digests (``faiss_sha256``, ``items_sha256``,
        ``labels_sha256``), so a ``dynametric index build`` rewriting the folder meanwhile cannot pair one build's
        ``items.csv`` with another's ``index.faiss`` (wrong ids). When a check fails and ``index.json`` changed
        while the files were read, the new index is read again (up to :data:`LOAD_TRIES` times); while a build's
        marker is there (a build running, or one stopped before it finished) the error says so."""
        path = Path(path)
        if not path.exists():
            raise InputError("index not found", file=path)
        if not path.is_dir():
            raise InputError("not an index folder (expected the --out folder of `dynametric index build`)", file=path)
        meta_path = path / "index.json"
        for _ in range(LOAD_TRIES):
            try:
                seen = _read_index_json(meta_path)
            except InputError as exc:
                if meta_path.exists() or meta_path.is_symlink():  # a folder, a FIFO, a device there: said as such
                    raise
                raise InputError(exc.message, file=path) from None
            try:
                loaded = cls._load_files(path, seen[0])
            except InputError:
                change = _change_during_load(path, seen)
                if change is None:
                    raise
                if change == "built":
                    continue  # a build finished meanwhile: read its index
                raise IndexChangedError(_CHANGING, file=path) from None
            loaded[0].digest = hashlib.sha256(seen[0]).hexdigest()
            loaded[0].loaded_from = path
            if "items_sha256" in loaded[1]:
                return loaded[0]  # every file checked against the index.json it was read with: consistent
            # an index.json of an older dynametric has no digest of items.csv and labels.npy: the folder must not
            # have changed meanwhile
            change = _change_during_load(path, seen)
            if change is None:
                return loaded[0]
            if change == "building":
                raise IndexChangedError(_CHANGING, file=path)
        raise IndexChangedError(_CHANGING, file=path)

    def changed_on_disk(self) -> bool:
        """Whether the folder this index was loaded from now holds another build: its ``index.json`` is no longer
        the one :meth:`load` checked the files against (:attr:`digest`), or is gone. Cheap (reads ``index.json``
        only), for a long-running service to poll and then :meth:`load` again; a build still writing the folder
        is not a change until it wrote its ``index.json``, its last file."""
        if self.loaded_from is None:
            raise DynametricError("changed_on_disk(): this index was not loaded from a folder (RetrievalIndex.load)")
        try:
            data = read_regular_bytes(self.loaded_from / "index.json")
        except (OSError, InputError):  # removed, a folder, a FIFO, unreadable: not the index that was loaded
            return True
        return hashlib.sha256(data).hexdigest() != self.digest

    @classmethod
    def _load_files(cls, path: Path, meta_bytes: bytes) -> tuple[RetrievalIndex, dict[str, Any]]:
        """One reading of the folder against the ``index.json`` content ``meta_bytes``; the index and its meta."""
        meta_path = path / "index.json"
        meta = _read_meta(meta_path, meta_bytes)
        faiss = require_faiss()
        fpath = path / "index.faiss"
        if fpath.is_dir():
            raise InputError("is a folder; expected the faiss index file", file=fpath)
        # one open file: what is hashed is what is read (a FIFO or a device: refused, never read)
        with open_regular(fpath, missing="index file missing") as fh:
            digest = hashlib.sha256()
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
            faiss_sha256 = digest.hexdigest()
            want = meta.get("faiss_sha256")
            if want is not None and faiss_sha256 != want:
                raise InputError("index.faiss is not the file this index was built with (its SHA-256 differs from "
                                 "index.json's faiss_sha256); rebuild the index", file=fpath)
            fh.seek(0)
            try:
                index = faiss.read_index(faiss.PyCallbackIOReader(fh.read))
            except RuntimeError as exc:
                raise InputError(f"cannot read the faiss index ({first_sentence(exc)})", file=fpath) from None
        # the transform first (a damaged one is said as such, not as a swapped faiss file); an index.json of format 2
        # or newer with items always records one (one without it would search transformed rows with raw queries)
        if "transform" not in meta and isinstance(meta.get("version"), int) and meta["version"] >= 2 \
                and int(meta["count"]) > 0:  # (an index of no items has nothing to transform)
            raise InputError(f"has no 'transform' although its format version is {meta['version']}; the file is "
                             "damaged: rebuild the index", file=meta_path, key="transform")
        transform = None if "transform" not in meta else \
            InputTransform.from_json(meta["transform"], meta["metric"], int(meta["dim"]), meta_path)
        _check_kind(index, meta, fpath, faiss)
        ipath = path / "items.csv"
        items_bytes = read_regular_bytes(ipath, missing="items.csv missing (the index folder is incomplete)")
        ids, paths = _read_items(ipath, utf8_text(items_bytes, ipath))
        labels = _read_labels(path / "labels.npy", len(ids)) if meta.get("has_labels") else None
        n = int(meta["count"])
        counts = {"index.faiss": int(index.ntotal), "items.csv": len(ids)}
        if labels is not None:
            counts["labels.npy"] = len(labels)
        wrong = [name for name, c in counts.items() if c != n]
        if wrong:
            found = ", ".join(f"{name} {c}" for name, c in counts.items())
            raise InputError(f"inconsistent index: index.json says {n} items; {found} ({' and '.join(wrong)} "
                             f"{'does' if len(wrong) == 1 else 'do'} not match)", file=path / wrong[0])
        names = list(meta.get("scale_names") or [])
        if labels is not None and labels.shape[1] != len(names):
            raise InputError(f"has {labels.shape[1]} label column(s), but index.json names {len(names)} scale(s) "
                             f"{names}", file=path / "labels.npy")
        if index.d != int(meta["dim"]):
            raise InputError(f"index.faiss has dimension {index.d}, index.json says {meta['dim']}", file=path)
        # an index.json of an older dynametric records no digest of items.csv / labels.npy: those are not checked
        for name, key, got in (("items.csv", "items_sha256", lambda: hashlib.sha256(items_bytes).hexdigest()),
                               ("labels.npy", "labels_sha256", lambda: _labels_sha256(labels))):
            want = meta.get(key)
            if want is not None and (name == "items.csv" or labels is not None) and got() != want:
                raise InputError(f"{name} is not the file this index was built with (its SHA-256 differs from "
                                 f"index.json's {key}); rebuild the index", file=path / name)
        params = dict(meta.get("params") or {})
        if meta["kind"] == "ivf" and "nprobe" in params:
            index.nprobe = int(params["nprobe"])
        if meta["kind"] == "hnsw" and "ef_search" in params:
            index.hnsw.efSearch = int(params["ef_search"])
        return cls(index, meta["kind"], meta["metric"], int(meta["dim"]), ids, paths, labels,
                   list(meta.get("scale_names") or []), meta.get("class_names"), list(meta.get("image_roots") or []),
                   dict(meta.get("model") or {}), params, str(meta.get("source", "")), transform=transform), meta

    # ------------------------------------------------------------------------------------------------ search
    def scale_index(self, name: str | None) -> int | None:
        """Column of the scale ``name`` (``None`` -> ``None``); unknown names are an error listing the choices."""
        if name is None:
            return None
        if self.labels is None:
            raise InputError(f"scale {name!r} asked for, but this index has no labels (embed with a CSV that has "
                             "label columns)", key="--scale")
        if name not in self.scale_names:
            raise InputError(f"unknown scale {name!r}; this index has scales {self.scale_names}", key="--scale")
        return self.scale_names.index(name)

    def check_queries(self, q: np.ndarray, what: str = "queries", *, source: str | Path | None = None) -> np.ndarray:
        """``q`` (``[Q, D]`` or one ``[D]`` row) checked and prepared for this index's metric (rows L2-normalised
        for cosine). Refused with one line: another dimension, a non-numeric array, NaN or Inf, and for a cosine
        index all-zero rows (a zero vector has no direction, so its neighbours would be arbitrary; counted, with
        the first one, as ``index build`` and ``evaluate`` refuse them). ``what`` names the queries in the errors,
        ``source`` the file they came from (the command line's ``--embeddings``), named by the zero-row error as
        ``index build`` names its file. A torch tensor is detached and moved to the CPU, bf16 / fp16 read as
        float32; booleans and integers are refused (embeddings are floats: a mask ``q > 0`` or integer codes are
        a mistake, searched as 0/1 they gave neighbours of something else). An index with an
        :class:`InputTransform` returns the queries transformed as its items (float32)."""
        q = self._checked_queries(q, what, source)
        if self.transform is None:
            return _prepare(q, self.metric)
        return self._prepare_queries(q, what, source).faiss

    def _checked_queries(self, q: Any, what: str, source: str | Path | None) -> np.ndarray:
        """:meth:`check_queries`' checks; the queries as given (a ``[Q, D]`` float array)."""
        q = _query_array(q)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InputError(f"{what} have dimension {q.shape[-1] if q.ndim else 'scalar'} (shape {q.shape}), but "
                             f"the index has dimension {self.dim}")
        if q.dtype.kind != "f":
            raise InputError(f"{what} must be a floating-point array (embeddings), got dtype {q.dtype}")
        if not np.isfinite(q).all():
            raise InputError(f"{what} contain NaN or Inf")
        _refuse_beyond_float32(q, self.metric, what, "searches", source)
        if self.metric == "cosine":
            zero = ~q.any(axis=1)
            if zero.any():
                raise InputError(f"{'' if source is not None else what + ': '}{int(zero.sum())} all-zero row(s), "
                                 f"first at row {int(np.flatnonzero(zero)[0])} (0-based): a zero vector has no "
                                 "direction for cosine; fix the embeddings or search an index built with --metric l2",
                                 file=source)
        return q

    def _prepare_queries(self, q: np.ndarray, what: str = "queries",
                         source: str | Path | None = None) -> _Queries:
        """Checked queries (:meth:`check_queries`' checks done) transformed as the items were
        (:class:`InputTransform`), in float64 and rounded to float32. An ``l2`` query so far from the items that its
        float32 squared distances could overflow (:data:`QUERY_REACH`) is one line."""
        tr = self.transform
        assert tr is not None
        exact = np.empty(q.shape, dtype=np.float64)
        for lo in range(0, len(q), _PREPARE_ROWS):
            block = q[lo:lo + _PREPARE_ROWS]  # ip: the query's own factor below, not the items'
            exact[lo:lo + _PREPARE_ROWS] = block if tr.kind == "ip" else tr.rows64(block)
        if tr.kind == "ip":  # each query scaled by its own power of two: its ranking does not change
            peak = np.abs(exact).max(axis=1) if self.dim else np.zeros(len(exact))
            own = np.ldexp(1.0, -np.frexp(peak)[1])  # 1 for an all-zero row
            exact *= own[:, None]
            divisor = own * tr.factor
        else:
            # (factor ** 2 only for cosine-l2, whose factor is at most 2^40: an l2 factor may exceed 2^512)
            divisor = np.full(len(exact), tr.factor if tr.kind == "l2" else
                              2.0 * tr.factor ** 2 if tr.kind == "cosine-l2" else 1.0)
        if tr.kind == "l2" and len(exact) and self.dim:
            far = np.abs(exact).max(axis=1) > QUERY_REACH / math.sqrt(self.dim)
            if far.any():
                raise InputError(f"{'' if source is not None else what + ': '}{int(far.sum())} row(s), first at row "
                                 f"{int(np.flatnonzero(far)[0])} (0-based), lie more than "
                                 f"{QUERY_REACH / math.sqrt(self.dim) / 2:.3g} times farther from the indexed "
                                 "items' centre than the farthest item does: their float32 distances would overflow",
                                 file=source)
        rounded = exact.astype(np.float32)
        exact = rounded.astype(np.float64)  # rounded once, as the items are: an item's own vector is at 0
        if tr.kind == "cosine":  # renormalised, as the items' rows are (:meth:`_exact_keys`)
            norms = np.linalg.norm(exact, axis=1, keepdims=True)
            exact /= np.where(norms > 0, norms, 1.0)
        return _Queries(rounded, exact, divisor)

    def _ensure_direct_map(self) -> None:
        """An ``ivf`` index builds faiss's id map on the first reconstruction, under a lock (threads that came first
        wait for it, then all read)."""
        if self.kind == "ivf" and not self._direct_map:
            with self._map_lock:
                if not self._direct_map:
                    self.index.make_direct_map()
                    self._direct_map = True

    def _stored(self, ids: np.ndarray) -> np.ndarray:
        """The stored float32 rows of the items ``ids`` (valid positions), ``[len(ids), D]``: a view of a ``flat``
        or ``hnsw`` index's vectors (no copy of the index), ``ivf`` rows through faiss's id map."""
        if self.kind == "ivf":
            self._ensure_direct_map()
            uniq, inverse = np.unique(ids, return_inverse=True)
            return np.asarray(self.index.reconstruct_batch(uniq.astype(np.int64)))[inverse.reshape(-1)]
        faiss = require_faiss()
        flat = self.index if self.kind == "flat" else faiss.downcast_index(self.index.storage)
        xb = faiss.rev_swig_ptr(flat.get_xb(), int(flat.ntotal) * self.dim).reshape(int(flat.ntotal), self.dim)
        return xb[ids]

    def reconstruct(self, i: int) -> np.ndarray:
        """The vector of item ``i`` (an integer in ``[0, size)``; anything else is an
        :class:`~dynametric.errors.InputError` keyed ``i``: faiss reads outside its arrays for a negative one): the
        stored row with the index's :class:`InputTransform` undone, float64 (for ``cosine`` the unit row; an index
        of an older dynametric: its stored float32 row, unit for cosine). Searching it finds the item itself. Safe
        from several threads: an ``ivf`` index builds faiss's id map on the first call, under a lock (threads that
        came first wait for it, then all read)."""
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise InputError(f"expected an item position (an integer), got {i!r} ({type(i).__name__})", key="i")
        if not 0 <= int(i) < self.size:
            raise InputError(f"item {int(i)} out of range [0, {self.size})", key="i")
        if self.transform is not None:
            return self.transform.undo(self._stored(np.array([int(i)], dtype=np.int64)))[0]
        self._ensure_direct_map()
        return self.index.reconstruct(int(i))

    def search(self, q: Any, k: int = 10, *, scale: str | None = None, same: str | None = None,
               query_labels: np.ndarray | None = None, exclude: np.ndarray | None = None) -> SearchResult:
        """Top-``k`` results for every query row (``q``: ``[Q, D]`` or one ``[D]`` query, a numpy array or a torch
        tensor, any float dtype; returns a :class:`SearchResult`; bad input is one
        :class:`~dynametric.errors.InputError` keyed by the argument).

        * plain: the ``k`` nearest items;
        * ``scale=NAME``: the ``k`` nearest *classes* at that scale, each represented by its nearest item
          ("which product / category / family is this?");
        * ``same=NAME``: the ``k`` nearest items whose label at that scale equals the query's ("more from the same
          category"); the query's label is ``query_labels[:, scale]`` when given, else the label of its nearest
          item (the predicted class).
        ``exclude`` (``[Q]`` item positions, ``-1`` for none) drops one item per query (the query itself).
        Queries go in chunks of ``QUERY_CHUNK``; per chunk the candidate list grows 4x at a time until every row
        has ``k`` results, or as many as it can have (the number of classes at the scale, the size of its class),
        or the whole index is searched: the results are exact for a ``flat`` index. A ``k`` above the index size
        is taken as the index size (the result arrays are ``[Q, min(k, size)]``).
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
            raise InputError(f"k must be an integer >= 1, got {k!r}", key="k")
        # no query can have more results than the index has items: the result arrays ([Q, k]) are as wide as the
        # index at most (a k of 10**9 allocated [Q, 10**9] arrays and died of a MemoryError)
        k = min(int(k), self.size)
        if scale is not None and same is not None:
            raise InputError("give either --scale (group by class) or --same (filter to the query's class), not both",
                             key="--same")
        qs: Any = self.check_queries(q) if self.transform is None else \
            self._prepare_queries(self._checked_queries(q, "queries", None))
        ql = None if query_labels is None else self._check_query_labels(query_labels, len(qs))
        si = self.scale_index(scale)
        sa = self.scale_index(same) if same is not None else None
        ex = None if exclude is None else np.asarray(exclude).reshape(-1)
        if ex is not None:
            if len(ex) != len(qs):
                raise InputError(f"exclude has {len(ex)} entries for {len(qs)} queries", key="exclude")
            if ex.dtype.kind not in "iu":
                raise InputError(f"exclude must hold integer item positions, got dtype {ex.dtype}", key="exclude")
            # checked before the cast to int64: an unsigned value >= 2**63 would wrap to a negative one (2**64 - 1 to
            # -1, "none")
            wrong = (ex >= self.size) if ex.dtype.kind == "u" else (ex < -1) | (ex >= self.size)
            if wrong.any():
                at = int(np.flatnonzero(wrong)[0])
                raise InputError(f"exclude[{at}] is {int(ex[at])}: expected an item position 0..{self.size - 1} or "
                                 f"-1 for none ({int(wrong.sum())} such entries)", key="exclude")
            exclude = ex.astype(np.int64)
        if k == 0:  # an index of no items (an older build could write one): [Q, 0] results
            groups = None if same is None else (ql[:, sa] if ql is not None else np.full(len(qs), -1, np.int64))
            return SearchResult(np.empty((len(qs), 0), np.int64), np.empty((len(qs), 0), np.float64),
                                "classes" if si is not None else "same" if same is not None else "items",
                                scale if si is not None else same, groups)
        if same is not None:
            sa_idx = int(sa)  # type: ignore[arg-type]
            if ql is not None:
                target = ql[:, sa_idx]
            elif self.transform is not None:  # the nearest item by the same rule as the results (ties by id)
                excl = None if ex is None else np.asarray(exclude, dtype=np.int64)
                one = np.minimum(1, self.size - (0 if excl is None else (excl >= 0).astype(np.int64)))
                one = np.broadcast_to(one, (len(qs),))
                pick = np.concatenate([self._search_block(
                    qs[lo:lo + QUERY_CHUNK], 1, one[lo:lo + QUERY_CHUNK], None, None, None,
                    None if excl is None else excl[lo:lo + QUERY_CHUNK])[0][:, 0]
                    for lo in range(0, len(qs), QUERY_CHUNK)])
                target = np.where(pick >= 0, self.labels[np.maximum(pick, 0), sa_idx], -1)  # type: ignore[index]
            else:
                _, nn = faiss_search(self.index, qs, 2 if exclude is not None else 1)
                pick = nn[:, 0] if exclude is None else np.where(nn[:, 0] == exclude, nn[:, -1], nn[:, 0])
                target = np.where(pick >= 0, self.labels[np.maximum(pick, 0), sa_idx], -1)  # type: ignore[index]
        # the most results a query can have: classes at the scale / items of its class (minus an excluded item)
        achievable = np.full(len(qs), self.size - (0 if ex is None else 1), dtype=np.int64)
        if si is not None or same is not None:
            col = self.labels[:, si if si is not None else sa_idx]  # type: ignore[index]
            uniq, inverse, counts = np.unique(col, return_inverse=True, return_counts=True)
            ex_ok = None if ex is None else ex >= 0
            ex_group = None if ex is None else inverse[np.maximum(ex, 0)]
            if si is not None:
                achievable[:] = len(uniq)
                if ex is not None:
                    achievable -= (ex_ok & (counts[ex_group] == 1)).astype(np.int64)
            else:
                where = np.searchsorted(uniq, target)
                found = (where < len(uniq)) & (uniq[np.minimum(where, len(uniq) - 1)] == target)
                achievable = np.where(found, counts[np.minimum(where, len(uniq) - 1)], 0).astype(np.int64)
                if ex is not None:
                    achievable -= (ex_ok & found & (col[np.maximum(ex, 0)] == target)).astype(np.int64)
        ids = np.full((len(qs), k), -1, dtype=np.int64)
        dist = np.full((len(qs), k), np.nan, dtype=np.float64)
        for lo in range(0, len(qs), QUERY_CHUNK):  # bounded memory: chunk x candidates
            sl = slice(lo, lo + QUERY_CHUNK)
            ids[sl], dist[sl] = self._search_block(
                qs[sl], k, np.minimum(achievable[sl], k), si, sa_idx if same is not None else None,
                None if same is None else target[sl], None if ex is None else ex[sl])
        bad = (ids >= 0) & ~np.isfinite(dist)
        if bad.any():  # never into JSON (-Infinity is no JSON) or a table
            rows_bad = bad.any(axis=1)
            raise InputError(f"{int(rows_bad.sum())} queries, first at row {int(np.flatnonzero(rows_bad)[0])} "
                             f"(0-based), have distances beyond float range ({float(dist[bad][0])})"
                             + (": this index was built by an earlier dynametric, which searched in float32 "
                                "as given; build it again with `dynametric index build`" if self.transform is None
                                else ""), key="queries")
        mode = "classes" if si is not None else "same" if same is not None else "items"
        short = int(((ids >= 0).sum(axis=1) < np.minimum(achievable, k)).sum())
        return SearchResult(ids, dist, mode, scale if si is not None else same, target if same is not None else None,
                            short)

    def _check_query_labels(self, query_labels: Any, rows: int) -> np.ndarray:
        """``search``'s ``query_labels`` as ``[Q, S]`` int64: ``[Q]`` (one scale) or ``[Q, S]`` integer class ids
        (floats with integral values too), one row per query and one column per scale of the index; anything else
        is one line keyed ``query_labels``."""
        ql = _query_array(query_labels)
        if ql.ndim == 1:
            ql = ql[:, None]
        if ql.ndim != 2 or ql.shape[0] != rows:
            raise InputError(f"query_labels must be [Q] or [Q, S] with one row per query: got shape {ql.shape} for "
                             f"{rows} queries", key="query_labels")
        if ql.shape[1] != len(self.scale_names):
            raise InputError(f"query labels have {ql.shape[1]} scales, the index {len(self.scale_names)}",
                             key="query_labels")
        if ql.dtype.kind == "f":
            if not (np.isfinite(ql) & (ql == np.round(ql))).all():
                raise InputError("query_labels must be integer class ids (floats only with integral values)",
                                 key="query_labels")
        elif ql.dtype.kind not in "iu":
            raise InputError(f"query_labels must be integer class ids, got dtype {ql.dtype}", key="query_labels")
        return ql.astype(np.int64)

    def query_class_ids(self, labels: np.ndarray, class_names: list[list[str]] | None,
                        what: str) -> tuple[np.ndarray, list[list[str]]]:
        """Labels of queries from another embed job (``labels`` ``[Q, S]`` in that job's ids, ``class_names`` its
        ``embed.json`` class names, ``what`` its ``labels.npy``, named in errors) in this index's ids, and each
        query's class at every scale as text (``names[s][q]``).

        Each embed job numbers the text classes of a scale by sorted name within its own list, so the same id can be
        another class in another job: text classes are matched by name. A query class the index does not hold gets
        id ``-1`` (no item has it: ``same=`` finds nothing for it, never another class). Integer scales are their
        values on both sides; a scale of text on one side and integers on the other cannot be matched (one line)."""
        labels = np.asarray(labels)
        if labels.ndim != 2 or labels.shape[1] != len(self.scale_names):
            raise InputError(f"expected [Q, {len(self.scale_names)}] labels, found shape {labels.shape}", file=what)
        out = labels.astype(np.int64, copy=True)
        names: list[list[str]] = []
        for s, scale in enumerate(self.scale_names):
            qc = [str(c) for c in class_names[s]] if class_names and s < len(class_names) else []
            ic = [str(c) for c in self.class_names[s]] if self.class_names and s < len(self.class_names) else []
            col = out[:, s]
            if not qc and not ic:
                names.append([str(int(v)) for v in col])
                continue
            if not qc or not ic:
                raise InputError(f"scale {scale!r}: the labels of "
                                 f"{'the queries' if qc else 'the index'} are ids of text class names, those of "
                                 f"{'the index' if qc else 'the queries'} are integers; they cannot be matched",
                                 file=what)
            if len(col) and (col.min() < 0 or col.max() >= len(qc)):
                raise InputError(f"scale {scale!r}: label ids outside the {len(qc)} class names of the queries' "
                                 "embed.json", file=what)
            pos = {c: i for i, c in enumerate(ic)}
            mapping = np.array([pos.get(c, -1) for c in qc], dtype=np.int64)
            names.append([qc[int(v)] for v in col])
            out[:, s] = mapping[col] if len(col) else col
        return out, names

    def _search_block(self, qs: np.ndarray, k: int, need: np.ndarray, si: int | None, sa: int | None,
                      target: np.ndarray | None, ex: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Grow the candidate list 4x at a time until every row has ``need`` kept results (or all items).

        With an :class:`InputTransform` (``qs``: :class:`_Queries`) the candidates' distances are computed again in
        float64 from the stored rows, each row is ordered by (distance, item position), and the list also grows
        until the ``need``-th kept result lies closer than faiss's last candidate by more than faiss's float32
        rounding bound (:meth:`_settled`): every item the search did not return is then farther, so ties at the
        ``k``-th place are decided by position, as ``evaluate`` decides them."""
        if self.transform is not None:
            return self._search_block_exact(qs, k, need, si, sa, target, ex)  # type: ignore[arg-type]
        n = self.size
        cand = min(n, max(4 * k, 32))
        while True:
            scores, nn = faiss_search(self.index, qs, cand)
            keep = self._kept(nn, si, sa, target, ex)
            if (keep.sum(axis=1) >= need).all() or cand >= n:
                break
            cand = min(n, cand * 4)
        pos = take_first_k(keep, k)
        rows = np.arange(len(qs))[:, None]
        got = pos >= 0
        ids = np.where(got, nn[rows, np.maximum(pos, 0)], -1)
        dist = np.where(got, to_distance(scores[rows, np.maximum(pos, 0)], self.metric), np.nan)
        return ids, dist

    def _kept(self, nn: np.ndarray, si: int | None, sa: int | None, target: np.ndarray | None,
              ex: np.ndarray | None) -> np.ndarray:
        """Which candidates ``nn`` (``[Q, C]`` item positions, -1 for none) a search keeps: not missing, not the
        excluded item ``ex``; with a scale ``si`` the first of each class, with ``sa`` those of class ``target``."""
        valid = nn >= 0
        if ex is not None:
            valid &= nn != ex[:, None]
        safe = np.maximum(nn, 0)
        if si is not None:
            return first_per_group(self.labels[safe, si], valid)  # type: ignore[index]
        if sa is not None:
            return valid & (self.labels[safe, sa] == target[:, None])  # type: ignore[index]
        return valid

    def _search_block_exact(self, qs: _Queries, k: int, need: np.ndarray, si: int | None, sa: int | None,
                            target: np.ndarray | None, ex: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        n = self.size
        # a plain search needs k results (k + 1 with an excluded item) and a margin to see the k-th settled; grouping
        # by class or filtering by one needs more candidates per result. The float64 keys of every candidate are
        # computed, so the list starts short
        first = k + max(16, k // 8) + (ex is not None) if si is None and sa is None else 4 * k
        cand = min(n, max(first, 32))
        cap = max(16 * cand, TIE_CANDIDATES)  # beyond it a tie group is settled among the candidates already found
        rows = np.arange(len(qs))[:, None]
        while True:
            scores, found = faiss_search(self.index, qs.faiss, cand)
            keys = self._exact_keys(qs, found)
            order = np.lexsort((found, keys), axis=-1)  # by key, equal keys by item position (-1: key inf, last)
            nn = np.take_along_axis(found, order, axis=1)
            keys = np.take_along_axis(keys, order, axis=1)
            keep = self._kept(nn, si, sa, target, ex)
            enough = keep.sum(axis=1) >= need
            if cand >= n or (enough & (cand >= cap)).all() or \
                    (enough & self._settled(qs, scores, found, keys, keep, need)).all():
                break
            cand = min(n, cand * 4 if cand >= cap else min(cand * 4, cap))  # past the cap only for missing results
        pos = take_first_k(keep, k)
        got = pos >= 0
        ids = np.where(got, nn[rows, np.maximum(pos, 0)], -1)
        dist = np.where(got, self._key_distance(keys[rows, np.maximum(pos, 0)], qs.divisor), np.nan)
        return ids, dist

    def _exact_keys(self, qs: _Queries, nn: np.ndarray) -> np.ndarray:
        """float64 keys ``[Q, C]`` of the candidates ``nn`` (``inf`` at ``-1``), smaller is closer, from the float64
        queries and the stored float32 rows: the squared distance (``l2``, ``cosine-l2``), ``1 - cos`` as
        ``||u - w||^2 / 2`` with ``w`` the stored row renormalised (``cosine``; no cancellation near 1), ``-<q', x'>``
        (``ip``). In blocks of candidates (a bounded float64 gather)."""
        tr = self.transform
        assert tr is not None
        b, c = nn.shape
        keys = np.full((b, c), np.inf)
        step = max(1, (1 << 22) // max(1, b * self.dim))  # about 32 MiB of float64 rows at a time
        for a in range(0, c, step):
            part = nn[:, a:a + step]
            x = self._stored(np.maximum(part, 0).reshape(-1)).astype(np.float64).reshape(b, part.shape[1], self.dim)
            if tr.kind == "ip":
                key = -np.einsum("bd,bcd->bc", qs.exact, x)
            else:
                if tr.kind == "cosine":
                    norms = np.linalg.norm(x, axis=2, keepdims=True)
                    x /= np.where(norms > 0, norms, 1.0)
                diff = qs.exact[:, None, :] - x
                key = np.einsum("bcd,bcd->bc", diff, diff)
                if tr.kind == "cosine":
                    key *= 0.5
            keys[:, a:a + step] = np.where(part >= 0, key, np.inf)
        return keys

    def _settled(self, qs: _Queries, scores: np.ndarray, found: np.ndarray, keys: np.ndarray, keep: np.ndarray,
                 need: np.ndarray) -> np.ndarray:
        """Per row: whether no item beyond faiss's candidates can come before or tie with the ``need``-th kept one:
        faiss returned fewer than asked (all it reaches), or that result's float64 key is below the key of faiss's
        last candidate by more than a bound of faiss's float32 rounding (``(D + 8) 2^-22`` times the squared norms,
        about four times the worst-case bound of a length-``D`` float32 sum), so every item faiss ranked later is
        farther in float64 too."""
        tr = self.transform
        assert tr is not None
        last = scores[:, -1].astype(np.float64)
        qn = np.linalg.norm(qs.exact, axis=1)
        bound = (self.dim + 8) * 2.0 ** -22
        if tr.kind in ("l2", "cosine-l2"):
            last_key, tol = last, bound * (qn ** 2 + tr.max_norm ** 2 + 1.0)
        elif tr.kind == "cosine":
            last_key, tol = 1.0 - last, np.full(len(last), 2.0 * bound)
        else:
            last_key, tol = -last, bound * (qn * tr.max_norm + 1e-30)
        reach = (np.cumsum(keep, axis=1) >= need[:, None]) & (need[:, None] > 0)
        at = reach.argmax(axis=1)
        key_at = keys[np.arange(len(keys)), at]
        return (need <= 0) | (found[:, -1] < 0) | (reach.any(axis=1) & (key_at < last_key - tol))

    def _key_distance(self, keys: np.ndarray, divisor: np.ndarray) -> np.ndarray:
        """:meth:`_exact_keys`' keys as reported distances (the transform undone): ``sqrt(key) / factor``
        (``l2``), ``key / (2 factor^2)`` (``cosine-l2``: ``1 - cos = d^2 / 2`` for unit rows), ``key``
        (``cosine``), ``key / (query factor x item factor)`` (``ip``). ``1 - cos`` is at most 2: a narrow-cone
        index's scaled query, rounded to float32, could come out a few roundings beyond it for an opposite query."""
        tr = self.transform
        assert tr is not None
        if tr.kind == "l2":
            return np.sqrt(np.maximum(keys, 0.0)) / divisor[:, None]
        if tr.kind == "cosine-l2":
            return np.minimum(keys / divisor[:, None], 2.0)
        return keys / divisor[:, None]

    def label_name(self, scale: int, label: int) -> str:
        names = self.class_names[scale] if self.class_names and scale < len(self.class_names) else []
        return str(names[label]) if names and 0 <= label < len(names) else str(label)

    def label_value(self, scale: int, label: int) -> int | str:
        """A label as results report it: the class name (a string) on a scale of text classes, else the integer
        label itself (an ``int``, as ``items.csv`` and ``labels.npy`` hold it)."""
        names = self.class_names[scale] if self.class_names and scale < len(self.class_names) else []
        return str(names[label]) if names and 0 <= label < len(names) else int(label)

    def describe(self, result: SearchResult, queries: list[str]) -> list[dict[str, Any]]:
        """JSON-ready results: one entry per query with its ranked hits (rank, id, path, distance, labels)."""
        out = []
        for qi, qname in enumerate(queries):
            hits = []
            for r, (i, d) in enumerate(zip(result.ids[qi], result.distances[qi]), start=1):
                if i < 0:
                    continue
                hit: dict[str, Any] = {"rank": r, "index": int(i), "id": self.ids[i], "path": self.paths[i],
                                       "distance": float(d)}
                if self.labels is not None:
                    hit["labels"] = {s: self.label_value(j, int(self.labels[i, j]))
                                     for j, s in enumerate(self.scale_names)}
                hits.append(hit)
            # every key in every mode: scale null for plain items, query_label null unless --same
            entry: dict[str, Any] = {"query": qname, "mode": result.mode, "scale": result.scale,
                                     "query_label": None, "results": hits}
            if result.query_groups is not None and result.scale is not None:
                j = self.scale_names.index(result.scale)
                entry["query_label"] = self.label_value(j, int(result.query_groups[qi]))
            out.append(entry)
        return out


def self_items(index: RetrievalIndex, query_paths: list[str], what: str) -> tuple[np.ndarray, int]:
    """``search --exclude-self``: for each query the indexed item with the same file (``-1`` for none) and how many
    queries have none (``exclude=`` of :meth:`RetrievalIndex.search`). ``what`` names the queries in errors.

    ``embed`` records absolute paths (resolved for ``--csv`` items; under the resolved folder for ``--images``), so
    a query file matches by its absolute path (``..`` removed) or its resolved path (links followed); the index's
    paths are taken as recorded (no file-system call per indexed item)."""
    if not any(index.paths):
        raise InputError("queries are matched to indexed items by file path, but this index records no "
                         "paths (built from a bare .npy)", key="--exclude-self")
    if not all(query_paths):
        raise InputError(f"queries are matched to indexed items by file path, but {what} name no files "
                         "(a bare .npy); use --image files or a `dynametric embed` folder", key="--exclude-self")
    pos: dict[str, int] = {}
    for i, p in enumerate(index.paths):
        if p:
            pos.setdefault(p, i)
    found = []
    for p in query_paths:
        hit = pos.get(p, pos.get(os.path.abspath(p), -1))
        found.append(hit if hit >= 0 else pos.get(str(Path(p).resolve()), -1))
    exclude = np.array(found, dtype=np.int64)
    return exclude, int((exclude < 0).sum())


def read_query_labels(path: Path, index: RetrievalIndex, rows: int) -> tuple[np.ndarray, list[list[str]]]:
    """``search --query-labels``: the labels ``[rows, S]`` of the queries (in the index's class ids) and each
    query's class as text (``names[s][q]``), from a CSV whose header is the index's scale names, one row per query.

    A cell of a scale with text class names (``index.json``'s ``class_names``) is a class name of the index, or
    else an integer class id (``0..C-1``, as ``labels.npy`` holds them); a cell of an integer scale is an integer.
    Anything else is one line naming the file, line and column."""
    from dynametric.data.base import LoadReport, raise_problems
    from dynametric.data.readers import parse_csv
    from dynametric.utils.readers import check_file, decode_utf8, integer_label

    names = list(index.scale_names)
    path = Path(path)
    check_file(path)
    text = decode_utf8(path.read_bytes(), path)
    if "\0" in text:
        raise InputError("contains NUL bytes: not a text CSV", file=path)
    report = LoadReport(split="*")
    records = parse_csv(text, path, report)
    raise_problems(list(report.problems), f"the labels CSV {path.name}")
    records = [(n, r) for n, r in records if any(c.strip() for c in r)]
    # rows are positional (row q is query q): a blank line between them (parse_csv skips it; a gap in the records'
    # first lines beyond the lines a record spans) is no row, and refused rather than skipped
    for (n, row), (following, _) in zip(records, records[1:]):
        if following > n + 1 + sum(c.count("\n") for c in row):
            raise InputError("blank line between rows: the file has one row per query, in the queries' order "
                             "(trailing blank lines are ignored)", file=path,
                             line=n + 1 + sum(c.count("\n") for c in row))
    if not records:
        raise InputError(f"file is empty; expected a header of the index's scales {names}", file=path)
    header_line, header = records[0]
    cols = [c.strip() for c in header]
    if cols != names:
        raise InputError(f"columns {cols} differ from the index's scales {names}", file=path, line=header_line)
    classes = [[str(c) for c in index.class_names[s]] if index.class_names and s < len(index.class_names) else []
               for s in range(len(names))]
    pos = [{c: i for i, c in enumerate(cl)} for cl in classes]
    body = records[1:]
    if len(body) != rows:
        raise InputError(f"{len(body)} label rows for {rows} queries", file=path)
    out = np.zeros((rows, len(names)), dtype=np.int64)
    shown: list[list[str]] = [[] for _ in names]
    for r, (lineno, row) in enumerate(body):
        if len(row) != len(names):
            raise InputError(f"expected {len(names)} fields, got {len(row)}", file=path, line=lineno)
        for s, cell in enumerate(row):
            value = cell.strip()
            if classes[s] and value in pos[s]:
                out[r, s] = pos[s][value]
                shown[s].append(value)
                continue
            number = integer_label(value)
            if number is None or (classes[s] and not 0 <= number < len(classes[s])):
                known = ", ".join(classes[s][:8]) + (", ..." if len(classes[s]) > 8 else "")
                expected = (f"one of the index's {len(classes[s])} {names[s]} classes ({known}) or a class id "
                            f"0..{len(classes[s]) - 1}" if classes[s] else "an integer label")
                raise InputError(f"column {names[s]!r}: expected {expected}, got {value[:60]!r}", file=path,
                                 line=lineno)
            out[r, s] = number
            shown[s].append(classes[s][number] if classes[s] else str(number))
    return out, shown
