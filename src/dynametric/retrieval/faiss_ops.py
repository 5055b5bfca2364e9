"""faiss itself: the import (:func:`require_faiss`), building an index of a kind (``flat``, ``ivf``, ``hnsw``:
:func:`build_faiss_index`), a raw search that never writes the index (:func:`faiss_search`) and faiss's scores as
reported distances (:func:`to_distance`). The index with its metadata folder: :mod:`dynametric.retrieval.index`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from dynametric.cpu_kernels import outside_package_level
from dynametric.errors import ConfigError, DynametricError

KINDS = ("flat", "ivf", "hnsw")
METRICS = ("cosine", "l2", "ip")


def require_faiss() -> Any:
    """Import faiss or raise a clear error naming the extra to install."""
    try:
        import faiss
    except ImportError:
        raise DynametricError("faiss is not installed; install it with `pip install 'dynametric[faiss]'` "
                              "(or `pip install faiss-cpu`)") from None
    return faiss


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

