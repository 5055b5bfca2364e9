"""The one torch k-means (``dynametric.metrics.kmeans.lloyd_kmeans``) gives the same results as the two it replaced.

``_ref_metrics_kmeans`` and ``_ref_mic_kmeans`` below are FROZEN COPIES OF THE PRE-REFACTOR REFERENCE
implementations (``metrics/clustering.py::_kmeans_torch`` and ``methods/mic/clustering.py::_kmeans_torch`` before
issue #17 merged them); do not edit them. The public wrappers ``kmeans_assign`` and ``methods.mic.kmeans`` (torch
backend) must reproduce them exactly: the same assignments (and, for MIC, the same centres) for every case here.

One documented difference (MIC only): the old MIC seeding computed k-means++ weights as ``|x|^2 - 2 x.c + |c|^2``
clamped at 0 over all centres at every step and drew uniformly with ``multinomial`` when they summed to 0; the one
implementation keeps the running minimum of ``||x - c||^2`` (summed differences) and draws with ``randint`` then. The
draws agree except at rounding level, and when ``k`` exceeds the number of distinct points (then the old draws
followed the rounding noise of duplicates' weights); the MIC cases below therefore have ``k <=`` distinct points.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynametric.methods.mic import kmeans
from dynametric.metrics import kmeans_assign
from dynametric.metrics.kmeans import lloyd_kmeans


# ---- pre-refactor reference: metrics/clustering.py::_kmeans_torch (frozen copy) ----
def _ref_metrics_kmeans(x: torch.Tensor, k: int, seed: int, iters: int, restarts: int) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    x = x.to(torch.float32)
    x_sq = (x * x).sum(1)
    best, best_inertia = None, float("inf")
    chunk = max(1, min(n, (64 * 2**20) // max(4 * k, 1)))

    def assign(centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c_sq = (centers * centers).sum(1)
        labels = torch.empty(n, dtype=torch.long)
        dist = torch.empty(n, dtype=torch.float32)
        for a in range(0, n, chunk):
            d = x_sq[a:a + chunk, None] - 2 * x[a:a + chunk] @ centers.T + c_sq[None, :]
            m = d.min(1)
            labels[a:a + chunk], dist[a:a + chunk] = m.indices, m.values.clamp_min(0)
        return labels, dist

    for _ in range(max(1, restarts)):
        first = int(torch.randint(n, (1,), generator=gen))
        centers = x[first:first + 1].clone()
        closest = ((x - centers[0]) ** 2).sum(1)
        for _c in range(1, k):
            total = float(closest.sum())
            if total <= 0:
                idx = int(torch.randint(n, (1,), generator=gen))
            else:
                idx = int(torch.multinomial(closest / total, 1, generator=gen))
            centers = torch.cat([centers, x[idx:idx + 1]])
            closest = torch.minimum(closest, ((x - x[idx]) ** 2).sum(1))
        labels, dist = assign(centers)
        for _it in range(iters):
            sums = torch.zeros_like(centers).index_add_(0, labels, x)
            counts = torch.bincount(labels, minlength=k).to(torch.float32)
            nonempty = counts > 0
            centers = torch.where(nonempty[:, None], sums / counts.clamp_min(1)[:, None], centers)
            new_labels, dist = assign(centers)
            if torch.equal(new_labels, labels):
                break
            labels = new_labels
        inertia = float(dist.sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best.numpy()


# ---- pre-refactor reference: methods/mic/clustering.py::_kmeans_torch (frozen copy) ----
def _ref_mic_kmeans(x: torch.Tensor, k: int, n_iter: int, seed: int, n_init: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    best: tuple[float, torch.Tensor, torch.Tensor] | None = None
    x2 = (x * x).sum(1, keepdim=True)
    for _ in range(n_init):
        centres = x[torch.randint(x.shape[0], (1,), generator=gen)]
        for _ in range(1, k):
            d = (x2 - 2 * x @ centres.T + (centres * centres).sum(1)).clamp_min(0).min(1).values
            probs = d / d.sum() if float(d.sum()) > 0 else torch.full_like(d, 1.0 / d.numel())
            centres = torch.cat([centres, x[torch.multinomial(probs, 1, generator=gen)]])
        for _ in range(n_iter):
            dist = x2 - 2 * x @ centres.T + (centres * centres).sum(1)
            assign = dist.argmin(1)
            sums = torch.zeros_like(centres).index_add_(0, assign, x)
            counts = torch.bincount(assign, minlength=k).to(x.dtype)
            empty = counts == 0
            new = sums / counts.clamp_min(1).unsqueeze(1)
            if bool(empty.any()):
                far = dist.gather(1, assign.unsqueeze(1)).squeeze(1).topk(int(empty.sum())).indices
                new[empty] = x[far]
            if torch.allclose(new, centres):
                centres = new
                break
            centres = new
        dist = x2 - 2 * x @ centres.T + (centres * centres).sum(1)
        assign = dist.argmin(1)
        inertia = float(dist.gather(1, assign.unsqueeze(1)).sum())
        if best is None or inertia < best[0]:
            best = (inertia, assign, centres)
    assert best is not None
    return best[1], best[2]


def _data(kind: str, n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "gauss":
        return torch.randn(n, d, generator=g)
    if kind == "blobs":  # separated blobs: restarts reach the same partition under other cluster ids
        centres = 6 * torch.randn(5, d, generator=g)
        return centres[torch.randint(5, (n,), generator=g)] + 0.3 * torch.randn(n, d, generator=g)
    if kind == "duplicates":  # ties: every point repeated, some several times
        base = torch.randn(max(2, n // 3), d, generator=g)
        return base[torch.randint(base.shape[0], (n,), generator=g)]
    if kind == "grid":  # integer coordinates: exact ties between centres
        return torch.randint(0, 3, (n, d), generator=g).float()
    if kind == "normalised":
        return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)
    raise AssertionError(kind)


def _distinct(x: torch.Tensor) -> int:
    return int(torch.unique(x, dim=0).shape[0])


CASES = [(kind, n, d, k, restarts, seed)
         for kind in ("gauss", "blobs", "duplicates", "grid", "normalised")
         for n, d, k in ((7, 2, 3), (40, 3, 5), (150, 8, 12), (300, 16, 7))
         for restarts in (1, 3)
         for seed in (0, 5)]


@pytest.mark.parametrize(("kind", "n", "d", "k", "restarts", "seed"), CASES)
def test_kmeans_assign_matches_the_pre_refactor_float32_kmeans(kind, n, d, k, restarts, seed):
    x = _data(kind, n, d, seed)
    for iters in (1, 20):  # iters=0 (seeding only) is refused by kmeans_assign (its backends read it differently)
        got, used = kmeans_assign(x, k, seed=seed, iters=iters, restarts=restarts, backend="torch")
        assert used == "torch"
        np.testing.assert_array_equal(got, _ref_metrics_kmeans(x, k, seed, iters, restarts))


@pytest.mark.parametrize(("kind", "n", "d", "k", "restarts", "seed"), CASES)
def test_mic_kmeans_matches_the_pre_refactor_float64_kmeans(kind, n, d, k, restarts, seed):
    x = _data(kind, n, d, seed)
    k = min(k, _distinct(x))  # see the module docstring
    for n_iter in (0, 2, 50):
        got, centres = kmeans(x, k, n_iter=n_iter, seed=seed, n_init=restarts, backend="torch")
        ref, ref_centres = _ref_mic_kmeans(x.float().double(), k, n_iter, seed, restarts)
        assert torch.equal(got, ref)
        assert torch.equal(centres, ref_centres.float())


def test_kmeans_assign_keeps_an_empty_cluster_as_before():
    """Two distinct points, four copies each, k = 3: the third k-means++ draw has no weight left, lands on a
    duplicate of a centre, and its cluster is empty (ties go to the lower id) and stays empty (``keep``)."""
    x = torch.tensor([[0.0, 1.0]] * 4 + [[5.0, -2.0]] * 4)
    for seed in range(10):
        for restarts in (1, 3):
            got = kmeans_assign(x, 3, seed=seed, iters=20, restarts=restarts, backend="torch")[0]
            np.testing.assert_array_equal(got, _ref_metrics_kmeans(x, 3, seed, 20, restarts))
            assert len(np.unique(got)) == 2


def test_the_empty_cluster_policies_on_a_hand_computed_case(monkeypatch):
    """1-D points 0, 0, 10, 11, 30 with the seeds forced to 0, 0, 30: cluster 1 (a duplicate centre) is empty after
    the first assignment. ``keep``: centres 5.25, 0, 30 -> labels 1 1 0 0 2 -> centres 10.5, 0, 30, unchanged.
    ``reseed``: cluster 1 takes the point farthest from its centre (11, distance 121 from 0) -> centres 5.25, 11, 30
    -> labels 0 0 1 1 2 -> centres 0, 10.5, 30, then allclose. Both: inertia 0.25 + 0.25."""
    import dynametric.metrics.kmeans as km

    x = torch.tensor([[0.0], [0.0], [10.0], [11.0], [30.0]], dtype=torch.float64)
    monkeypatch.setattr(km, "_seed", lambda x, k, gen: x[[0, 1, 4]].clone())
    labels, centres, inertia = km.lloyd_kmeans(x, 3, seed=0, iters=10, restarts=1, dtype=torch.float64)
    assert labels.tolist() == [1, 1, 0, 0, 2] and centres[:, 0].tolist() == [10.5, 0.0, 30.0]
    assert inertia == 0.5
    labels, centres, inertia = km.lloyd_kmeans(x, 3, seed=0, iters=10, restarts=1, dtype=torch.float64,
                                               empty="reseed", stop="centres", clamp_inertia=False)
    assert labels.tolist() == [0, 0, 1, 1, 2] and centres[:, 0].tolist() == [0.0, 10.5, 30.0]
    assert inertia == 0.5
    # one update only: the reseeded centre sits on the farthest point
    _, centres, _ = km.lloyd_kmeans(x, 3, seed=0, iters=1, restarts=1, dtype=torch.float64, empty="reseed",
                                    stop="centres", clamp_inertia=False)
    assert centres[:, 0].tolist() == [5.25, 11.0, 30.0]


def test_chunked_assignment_equals_one_chunk():
    x = _data("gauss", 500, 6, 3)
    whole = lloyd_kmeans(x, 9, seed=1, iters=20, restarts=2)
    for chunk_bytes in (1, 4 * 9 * 7, 4 * 9 * 100):
        parts = lloyd_kmeans(x, 9, seed=1, iters=20, restarts=2, chunk_bytes=chunk_bytes)
        assert torch.equal(parts[0], whole[0])


def test_bad_policy_names_are_refused():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="empty-cluster policy 'drop'"):
        lloyd_kmeans(x, 2, seed=0, iters=1, restarts=1, empty="drop")
    with pytest.raises(ValueError, match="stopping rule 'never'"):
        lloyd_kmeans(x, 2, seed=0, iters=1, restarts=1, stop="never")


def test_the_stopping_rules_on_a_hand_computed_case(monkeypatch):
    """1-D points 1e6 + (0, 1, 2, 3, 20), seeds forced to the first two. Assignment 0 | 1 2 3 20 -> centres
    1e6 + (0, 6.5): within ``allclose``'s relative tolerance (1e-5 * 1e6 = 10) of the seeds, so ``centres`` stops
    there (labels 0 0 0 0 1 from the new centres); ``labels`` goes on to centres 1e6 + (1.5, 20), where the
    assignment no longer changes."""
    import dynametric.metrics.kmeans as km

    x = 1e6 + torch.tensor([[0.0], [1.0], [2.0], [3.0], [20.0]], dtype=torch.float64)
    monkeypatch.setattr(km, "_seed", lambda x, k, gen: x[[0, 1]].clone())
    labels, centres, _ = km.lloyd_kmeans(x, 2, seed=0, iters=10, restarts=1, dtype=torch.float64, stop="centres")
    assert labels.tolist() == [0, 0, 0, 0, 1] and (centres[:, 0] - 1e6).tolist() == [0.0, 6.5]
    labels, centres, _ = km.lloyd_kmeans(x, 2, seed=0, iters=10, restarts=1, dtype=torch.float64, stop="labels")
    assert labels.tolist() == [0, 0, 0, 0, 1] and (centres[:, 0] - 1e6).tolist() == [1.5, 20.0]
