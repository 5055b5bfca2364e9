"""The one torch k-means: seeded k-means++ seeding, Lloyd iterations, assignment in chunks of bounded memory.

Both k-means entry points wrap it: :func:`dynametric.metrics.kmeans_assign` (NMI / pairwise F1; float32, an emptied
cluster keeps its centre, stops when the assignment stops changing) and :func:`dynametric.methods.mic.kmeans` (MIC's
surrogate classes; float64, emptied clusters re-seeded, stops when the centres stop moving, returns the centres).
The faiss paths stay in the wrappers.
"""

from __future__ import annotations

import math

import torch

CHUNK_BYTES = 64 * 2**20
"""Bytes of one chunk of the point-to-centre distance matrix (the assignment step's working memory)."""

EMPTY_POLICIES = ("keep", "reseed")
STOP_RULES = ("labels", "centres")


def _assign(x: torch.Tensor, x_sq: torch.Tensor, centres: torch.Tensor,
            chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centre of every point (first on ties) and its squared distance ``|x|^2 - 2 x.c + |c|^2`` (not
    clamped; rounding can make it slightly negative), computed ``chunk`` points at a time."""
    n = x.shape[0]
    c_sq = (centres * centres).sum(1)
    labels = torch.empty(n, dtype=torch.long)
    dist = torch.empty(n, dtype=x.dtype)
    for a in range(0, n, chunk):
        d = x_sq[a:a + chunk, None] - 2 * x[a:a + chunk] @ centres.T + c_sq[None, :]
        m = d.min(1)
        labels[a:a + chunk], dist[a:a + chunk] = m.indices, m.values
    return labels, dist


def _check_range(x_sq: torch.Tensor, dtype: torch.dtype) -> None:
    """A one-line ValueError unless every squared distance k-means can meet is finite in ``dtype``: between points
    and means of points it is at most ``4 max |x|^2`` (was: ``torch.multinomial``'s "probability tensor contains
    either inf, nan or element < 0" from the k-means++ seeding of float32 points of magnitude ``1e19``)."""
    top = float(x_sq.max()) if x_sq.numel() else 0.0
    if not (math.isfinite(top) and math.isfinite(4.0 * top) and 4.0 * top <= torch.finfo(dtype).max):
        raise ValueError(f"k-means: the points are too large for {str(dtype).removeprefix('torch.')} (largest "
                         f"squared norm {top:.3g}; squared distances would overflow); scale them down first, e.g. "
                         f"by a power of two (dynametric.metrics.kmeans_assign does)")


def _seed(x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++ seeding, one new centre per step from the running minimum of ``||x - c||^2`` (summed differences,
    so a duplicate of a centre weighs exactly 0): k steps of O(N D). With no weight left (every point coincides
    with a centre) the next centre is a uniform draw."""
    n = x.shape[0]
    first = int(torch.randint(n, (1,), generator=gen))
    rows = [first]
    closest = ((x - x[first]) ** 2).sum(1)
    for _ in range(1, k):
        total = float(closest.sum())
        if total <= 0:
            idx = int(torch.randint(n, (1,), generator=gen))
        else:
            idx = int(torch.multinomial(closest / total, 1, generator=gen))
        rows.append(idx)
        closest = torch.minimum(closest, ((x - x[idx]) ** 2).sum(1))
    return x[rows].clone()


def lloyd_kmeans(x: torch.Tensor, k: int, *, seed: int, iters: int, restarts: int,
                 dtype: torch.dtype = torch.float32, empty: str = "keep", stop: str = "labels",
                 clamp_inertia: bool = True,
                 chunk_bytes: int = CHUNK_BYTES) -> tuple[torch.Tensor, torch.Tensor, float]:
    """k-means of ``x [N, D]`` (``1 <= k <= N``, checked by the callers) -> ``(labels LongTensor[N], centres [k, D]
    in dtype, inertia)`` of the restart with the lowest inertia (the first one on ties).

    Each of the ``restarts`` restarts (one ``torch.Generator`` seeded with ``seed`` for all of them) seeds with
    k-means++ (:func:`_seed`), assigns, then runs at most ``iters`` Lloyd updates, each followed by an assignment.

    * ``dtype``: the precision of every computation (``x`` is converted).
    * ``empty``: ``"keep"`` (an emptied cluster keeps its centre) or ``"reseed"`` (the emptied clusters, in id
      order, take the points farthest from their current centres, farthest first).
    * ``stop``: ``"labels"`` (stop after an update that leaves the assignment unchanged) or ``"centres"`` (stop after
      an update whose centres are ``torch.allclose`` to the previous ones).
    * ``clamp_inertia``: sum the distances clamped at 0 (True) or as computed.
    * ``chunk_bytes``: memory of one chunk of the distance matrix (``chunk_bytes // (itemsize * k)`` points).
    """
    if empty not in EMPTY_POLICIES:
        raise ValueError(f"unknown empty-cluster policy {empty!r}; expected one of {list(EMPTY_POLICIES)}")
    if stop not in STOP_RULES:
        raise ValueError(f"unknown stopping rule {stop!r}; expected one of {list(STOP_RULES)}")
    gen = torch.Generator().manual_seed(seed)
    x = x.to(dtype)
    n = x.shape[0]
    x_sq = (x * x).sum(1)
    _check_range(x_sq, dtype)
    chunk = max(1, min(n, chunk_bytes // max(x.element_size() * k, 1)))
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    for _ in range(restarts):
        centres = _seed(x, k, gen)
        labels, dist = _assign(x, x_sq, centres, chunk)
        for _it in range(iters):
            sums = torch.zeros_like(centres).index_add_(0, labels, x)
            counts = torch.bincount(labels, minlength=k).to(dtype)
            new = sums / counts.clamp_min(1)[:, None]
            emptied = counts == 0
            if empty == "keep":
                new = torch.where(emptied[:, None], centres, new)
            elif bool(emptied.any()):
                new[emptied] = x[dist.topk(int(emptied.sum())).indices]
            settled = stop == "centres" and torch.allclose(new, centres)
            centres = new
            new_labels, dist = _assign(x, x_sq, centres, chunk)
            unchanged = torch.equal(new_labels, labels)
            labels = new_labels
            if settled or (stop == "labels" and unchanged):
                break
        inertia = float(dist.clamp_min(0).sum() if clamp_inertia else dist.sum())
        if best is None or inertia < best[0]:
            best = (inertia, labels, centres)
    assert best is not None
    return best[1], best[2], best[0]
