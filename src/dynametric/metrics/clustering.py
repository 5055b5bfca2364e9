"""Clustering metrics: NMI and pairwise F1 of a k-means partition against the class labels.

k-means uses faiss when it is importable and the seeded torch implementation of :mod:`dynametric.metrics.kmeans`
(k-means++ seeding, Lloyd iterations, chunked distance computation; float32) otherwise; both are seeded and the
seed/restarts are recorded by the caller.
NMI and F1 are computed from the non-zero cells of the contingency table (memory linear in the items, never the dense
class x cluster table), never by enumerating pairs (docs/metrics.md).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from dynametric.errors import ConfigError, InputError
from dynametric.metrics.kmeans import lloyd_kmeans


def _column(x: Any, name: str, scale: int | None) -> np.ndarray:
    """One labelling of ``name`` (``labels`` or ``clusters``) as a 1-D array: ``[N]``, or the column ``scale`` of
    ``[N, S]`` (``None``: the only column of ``[N, 1]``), as the losses' ``scale=`` picks a label column. A torch
    tensor is detached and moved to the CPU. Another rank, ``[N, S > 1]`` without ``scale``, a ``scale`` out of
    range or NaN values are one :class:`InputError` line keyed ``name``."""
    if isinstance(x, torch.Tensor):
        t = x.detach().cpu()
        arr = (t.float() if t.is_floating_point() and t.element_size() < 4 else t).numpy()
    else:
        arr = np.asarray(x)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise InputError(f"expected [N] or [N, S], got shape {list(arr.shape)}", key=name)
    columns = arr.shape[1]
    if scale is None:
        if columns != 1 and name == "clusters":
            raise InputError(f"clusters must be [N] or [N, 1] (one cluster id per item), got shape {list(arr.shape)}",
                             key=name)
        if columns != 1:
            raise InputError(f"got {columns} columns ([N, S] labels, shape {list(arr.shape)}): pass scale=s (0 = the "
                             "finest column) to score one scale, or give [N]", key=name)
        scale = 0
    elif not -columns <= scale < columns:
        raise InputError(f"scale {scale} out of range for {columns} column(s)", key=name)
    col = arr[:, scale]
    if col.dtype.kind in "fc" and np.isnan(col).any():
        raise InputError(f"NaN at row {int(np.flatnonzero(np.isnan(col))[0])} (0-based): not a class id", key=name)
    return col


def _codes(x: np.ndarray) -> np.ndarray:
    return np.unique(x, return_inverse=True)[1].reshape(-1)


def contingency(labels: np.ndarray | torch.Tensor, clusters: np.ndarray | torch.Tensor, *,
                scale: int | None = None) -> np.ndarray:
    """Dense contingency counts ``n[y, c]`` (int64) of two labelings of the same items (:func:`contingency_cells`
    laid out as a table: memory grows with classes x clusters)."""
    counts, y, c, rows, cols = contingency_cells(labels, clusters, scale=scale)
    table = np.zeros((len(rows), len(cols)), dtype=np.int64)
    table[y, c] = counts
    return table


def contingency_cells(labels: np.ndarray | torch.Tensor, clusters: np.ndarray | torch.Tensor, *,
                      scale: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The non-zero cells of the contingency table of two labelings, without the dense ``K x C`` table (which
    grows with the square of the class count: 2 GB for 11,316 classes): ``(counts, y, c, row_sums, col_sums)``,
    ``counts[i]`` items of class ``y[i]`` in cluster ``c[i]`` (int64, at most one cell per item).

    ``labels``: ``[N]`` or ``[N, S]`` (one column per scale, finest first: ``scale`` picks the column scored, and is
    required when ``S > 1``); ``clusters``: ``[N]`` or ``[N, 1]``. Tensors (requiring grad too) or arrays."""
    y, c = _codes(_column(labels, "labels", scale)), _codes(_column(clusters, "clusters", None))
    if y.shape != c.shape:
        raise InputError(f"labels and clusters differ in length: {y.shape[0]} vs {c.shape[0]} rows", key="clusters")
    if not y.size:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty, empty
    nc = int(c.max()) + 1
    cells, counts = np.unique(y.astype(np.int64) * nc + c, return_counts=True)
    return (counts.astype(np.int64), cells // nc, cells % nc, np.bincount(y).astype(np.int64),
            np.bincount(c).astype(np.int64))


def _entropy(counts: np.ndarray, n: int) -> float:
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def nmi_score(labels: np.ndarray | torch.Tensor, clusters: np.ndarray | torch.Tensor,
              normalizer: str = "arithmetic", *, scale: int | None = None) -> float:
    """``NMI = I(Y; W) / norm`` with ``norm = (H(Y) + H(W)) / 2`` (arithmetic) or ``sqrt(H(Y) H(W))`` (geometric).

    Natural logarithms; two single-cluster partitions score 1.0 (scikit-learn's convention). ``labels`` ``[N]`` or
    ``[N, S]`` with ``scale`` naming the column scored (:func:`contingency_cells`).
    """
    if normalizer not in ("arithmetic", "geometric"):
        raise ConfigError(f"unknown NMI normaliser {normalizer!r}; expected 'arithmetic' or 'geometric'",
                          key="nmi_normalizer")
    counts, y, c, rows, cols = contingency_cells(labels, clusters, scale=scale)
    n = int(counts.sum())
    if n == 0:
        return float("nan")
    h_y, h_c = _entropy(rows, n), _entropy(cols, n)
    if h_y == 0.0 and h_c == 0.0:
        return 1.0
    pij, pi, pj = counts / n, rows[y] / n, cols[c] / n  # the non-zero cells only
    mi = float((pij * (np.log(pij) - np.log(pi) - np.log(pj))).sum())
    norm = 0.5 * (h_y + h_c) if normalizer == "arithmetic" else float(np.sqrt(h_y * h_c))
    if norm <= 0.0:
        return 0.0
    return float(min(max(mi / norm, 0.0), 1.0))


def pairwise_f1(labels: np.ndarray | torch.Tensor, clusters: np.ndarray | torch.Tensor, *,
                scale: int | None = None) -> float:
    """Pairwise F1 over unordered pairs: ``TP = sum C(n_yc, 2)``, ``TP+FP = sum_c C(n_.c, 2)``,
    ``TP+FN = sum_y C(n_y., 2)``; ``F1 = 2PR/(P+R)``, 0 when there is no true-positive pair. ``labels`` ``[N]`` or
    ``[N, S]`` with ``scale`` naming the column scored (:func:`contingency_cells`)."""
    counts, _, _, rows, cols = contingency_cells(labels, clusters, scale=scale)

    def pairs(x: np.ndarray) -> float:
        x = x.astype(np.float64)
        return float((x * (x - 1) / 2).sum())

    tp = pairs(counts)  # the non-zero cells: a zero cell has no pair
    pred = pairs(cols)
    true = pairs(rows)
    if tp == 0.0:
        return 0.0
    prec, rec = tp / pred, tp / true
    return float(2 * prec * rec / (prec + rec))


def _scaled_points(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float32 on the CPU, multiplied by the power of two that brings its largest absolute coordinate into
    ``[0.5, 1)`` (exact for float32 points, so no assignment changes): no squared distance between such points or
    their means can overflow float32 (at most ``4 D``), which faiss would otherwise meet as an invalid assignment
    and abort the whole process on. A non-finite coordinate is a one-line :class:`InputError`."""
    x = x.detach().cpu()
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = ~finite.all(1)
        raise InputError(f"k-means points contain NaN or Inf (first at row {int(bad.nonzero()[0])}, "
                         f"{int(bad.sum())} bad rows)", key="x")
    peak = float(x.abs().max()) if x.numel() else 0.0
    if peak == 0.0 or math.frexp(peak)[1] == 0:  # all zero, or already in [0.5, 1)
        return x.to(torch.float32)
    return (x.to(torch.float64) * math.ldexp(1.0, -math.frexp(peak)[1])).to(torch.float32)


KMEANS_SEED_MAX = 2**31 - 1
"""The largest k-means seed: faiss's k-means takes a C ``int`` (beyond it a raw ``OverflowError``), and takes a
negative one as "a new random start every run" (not reproducible): seeds are 0 .. this."""


def check_kmeans_options(seed: Any, iters: Any, restarts: Any, *, prefix: str = "") -> tuple[int, int, int]:
    """``(seed, iters, restarts)`` of a k-means run as Python ints: ``seed`` an integer from 0 to
    :data:`KMEANS_SEED_MAX` (numpy integers too, not ``bool``), ``iters`` and ``restarts`` integers >= 1; anything
    else is a one-line :class:`ConfigError` keyed by the argument's name, ``prefix`` + ``seed`` / ``iters`` /
    ``restarts`` (``kmeans_`` for :func:`~dynametric.metrics.evaluate_embeddings`'s). (faiss and the torch k-means
    would otherwise differ silently for 0 or negative counts and negative seeds, and refuse a numpy seed or one
    beyond a C int with a raw ``TypeError`` / ``OverflowError``.)"""
    def integer(value: Any, name: str) -> int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{prefix}{name} must be an integer, got {value!r} ({type(value).__name__})",
                              key=prefix + name)
        return int(value)

    seed = integer(seed, "seed")
    if not 0 <= seed <= KMEANS_SEED_MAX:
        raise ConfigError(f"{prefix}seed must be an integer from 0 to {KMEANS_SEED_MAX} (a negative seed is a new "
                          f"random start in every run, a larger one no C int), got {seed}", key=prefix + "seed")
    counts = []
    for value, name in ((iters, "iters"), (restarts, "restarts")):
        n = integer(value, name)
        if n < 1:
            raise ConfigError(f"{prefix}{name} must be a positive integer, got {value!r}", key=prefix + name)
        counts.append(n)
    return seed, counts[0], counts[1]


def kmeans_assign(x: torch.Tensor | np.ndarray, k: int, *, seed: int = 0, iters: int = 20, restarts: int = 1,
                  backend: str = "auto") -> tuple[np.ndarray, str]:
    """Cluster ``x`` into ``k`` clusters; returns ``(assignment[N], backend used)``.

    ``backend``: ``"auto"`` (faiss when importable, else torch), ``"faiss"`` or ``"torch"``. ``x``: ``[N, D]``
    points, a tensor or a numpy array (finite; any float dtype; another rank is one line keyed ``x``), first
    multiplied by a power of two (:func:`_scaled_points`), which changes no assignment and rules out float32
    overflow; it is not centred (:func:`dynametric.metrics.engine.prepare_for_clustering` does that for
    :func:`~dynametric.metrics.evaluate_embeddings`). ``seed``: an integer from 0 to
    :data:`KMEANS_SEED_MAX` (numpy integers too); ``iters`` (Lloyd iterations) and ``restarts`` (runs, the one
    of lowest inertia kept): integers >= 1 (else a :class:`ConfigError` keyed ``seed`` / ``iters`` / ``restarts``).
    """
    seed, iters, restarts = check_kmeans_options(seed, iters, restarts)
    if backend not in ("auto", "faiss", "torch"):
        raise ConfigError(f"unknown k-means backend {backend!r}; expected auto, faiss or torch", key="kmeans_backend")
    if not isinstance(x, torch.Tensor):
        arr = np.asarray(x)
        if arr.dtype.kind not in "fiu":
            raise InputError(f"k-means points must be numbers, got dtype {arr.dtype}", key="x")
        x = torch.from_numpy(np.ascontiguousarray(arr))
    if x.dim() != 2:
        raise InputError(f"k-means points must be [N, D], got shape {list(x.shape)}", key="x")
    n = x.shape[0]
    k = max(1, min(k, n))
    if k == 1:
        return np.zeros(n, dtype=np.int64), "trivial"
    x = _scaled_points(x)
    if backend in ("auto", "faiss"):
        try:
            import faiss
        except ImportError:
            if backend == "faiss":
                raise ConfigError("k-means backend 'faiss' requested but faiss is not installed",
                                  key="kmeans_backend") from None
        else:
            xs = np.ascontiguousarray(x.numpy(), dtype=np.float32)
            km = faiss.Kmeans(xs.shape[1], k, niter=iters, nredo=restarts, seed=seed, verbose=False,
                              min_points_per_centroid=1, max_points_per_centroid=max(256, n))
            km.train(xs)
            _, assign = km.index.search(xs, 1)
            return assign.reshape(-1).astype(np.int64), "faiss"
    labels, _, _ = lloyd_kmeans(x, k, seed=seed, iters=iters, restarts=restarts,
                                dtype=torch.float32, empty="keep", stop="labels", clamp_inertia=True)
    return labels.numpy(), "torch"


CLUSTER_METRIC_TABLE: dict[str, Callable[..., float]] = {
    "nmi": lambda labels, clusters, *, nmi_normalizer="arithmetic", **_: nmi_score(labels, clusters, nmi_normalizer),
    "f1": lambda labels, clusters, **_: pairwise_f1(labels, clusters),
}
"""Every clustering metric: ``{name: f(labels, k-means assignments, **options) -> float}`` (one scale's labels;
options: ``nmi_normalizer``). :func:`dynametric.metrics.evaluate_embeddings` runs k-means once per scale and calls
each requested entry; the order is the order of the results' keys."""
