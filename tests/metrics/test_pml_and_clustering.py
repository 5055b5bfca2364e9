"""Equality with pytorch-metric-learning's AccuracyCalculator (test-only oracle) and the clustering metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from dynametric.metrics import contingency, evaluate_embeddings, kmeans_assign, nmi_score, pairwise_f1

PML_KEYS = {"precision_at_1": "recall@1", "r_precision": "r_precision", "mean_average_precision_at_r": "map@r"}


def _calc():
    accuracy = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    return accuracy.AccuracyCalculator(include=tuple(PML_KEYS), k="max_bin_count", device=torch.device("cpu"))


def _unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_leave_one_out_equals_pml(distance):
    rng = np.random.default_rng(0)
    x = _unit(rng, 400, 8)  # unit vectors: PML's L2 ranking equals cosine ranking
    labels = rng.integers(0, 60, 400)
    ours = evaluate_embeddings(x, labels, metrics=list(PML_KEYS.values()), distance=distance)["fine"]
    theirs = _calc().get_accuracy(x, labels)
    for pk, ok in PML_KEYS.items():
        assert ours[ok] == pytest.approx(theirs[pk], abs=1e-5), pk


def test_query_to_gallery_equals_pml():
    rng = np.random.default_rng(1)
    q, g = _unit(rng, 150, 8), _unit(rng, 500, 8)
    ql, gl = rng.integers(0, 40, 150), rng.integers(0, 40, 500)
    ours = evaluate_embeddings(q, ql, g, gl, metrics=list(PML_KEYS.values()))["fine"]
    theirs = _calc().get_accuracy(q, ql, g, gl)
    for pk, ok in PML_KEYS.items():
        assert ours[ok] == pytest.approx(theirs[pk], abs=1e-5), pk


def test_multi_scale_equals_pml_per_scale():
    rng = np.random.default_rng(2)
    x = _unit(rng, 300, 6)
    fine = rng.integers(0, 50, 300)
    labels = np.stack([fine, fine % 9, fine % 3], 1)
    ours = evaluate_embeddings(x, labels, metrics=list(PML_KEYS.values()))
    for s, name in enumerate(["fine", "middle", "coarse"]):
        theirs = _calc().get_accuracy(x, labels[:, s])
        for pk, ok in PML_KEYS.items():
            assert ours[name][ok] == pytest.approx(theirs[pk], abs=1e-5), (name, pk)


def test_nmi_matches_sklearn_both_normalisers():
    rng = np.random.default_rng(3)
    y, c = rng.integers(0, 7, 500), rng.integers(0, 5, 500)
    for norm in ("arithmetic", "geometric"):
        assert nmi_score(y, c, norm) == pytest.approx(normalized_mutual_info_score(y, c, average_method=norm),
                                                      abs=1e-10)
    assert nmi_score(y, y) == pytest.approx(1.0)
    assert nmi_score(np.zeros(5), np.zeros(5)) == 1.0


def test_pairwise_f1_hand_computed_and_brute_force():
    y = np.array([0, 0, 0, 1, 1, 2])
    c = np.array([0, 0, 1, 1, 1, 1])
    # pairs: same class: (0,1),(0,2),(1,2),(3,4) = 4; same cluster: (0,1),(2,3),(2,4),(2,5),(3,4),(3,5),(4,5) = 7
    # TP: (0,1),(3,4) = 2 -> P = 2/7, R = 2/4
    p, r = 2 / 7, 2 / 4
    assert pairwise_f1(y, c) == pytest.approx(2 * p * r / (p + r))
    rng = np.random.default_rng(4)
    y, c = rng.integers(0, 4, 60), rng.integers(0, 3, 60)
    i, j = np.triu_indices(60, 1)
    same_y, same_c = y[i] == y[j], c[i] == c[j]
    tp, fp, fn = (same_y & same_c).sum(), (~same_y & same_c).sum(), (same_y & ~same_c).sum()
    prec, rec = tp / (tp + fp), tp / (tp + fn)
    assert pairwise_f1(y, c) == pytest.approx(2 * prec * rec / (prec + rec))
    assert contingency(y, c).sum() == 60


def test_nmi_and_f1_use_the_non_zero_cells_only_and_equal_the_dense_table():
    """nmi/f1 built the dense class x cluster table and float64 copies of it: 2-3 GB at 11,316 classes (a Stanford
    Online Products test set), outside any memory budget. They now read the non-zero cells only; values equal a
    float64 computation on the dense table."""
    import tracemalloc

    rng = np.random.default_rng(11)
    for n, k, c in ((50, 3, 4), (600, 40, 25), (3000, 900, 700)):
        y, w = rng.integers(0, k, n), rng.integers(0, c, n)
        table = contingency(y, w).astype(np.float64)
        rows, cols = table.sum(1), table.sum(0)
        nz = table > 0
        pij = table[nz] / n
        mi = (pij * np.log(pij / np.outer(rows / n, cols / n)[nz])).sum()
        h_y = -(rows[rows > 0] / n * np.log(rows[rows > 0] / n)).sum()
        h_c = -(cols[cols > 0] / n * np.log(cols[cols > 0] / n)).sum()
        assert nmi_score(y, w) == pytest.approx(mi / (0.5 * (h_y + h_c)), rel=1e-12)
        assert nmi_score(y, w, "geometric") == pytest.approx(mi / np.sqrt(h_y * h_c), rel=1e-12)
        tp, pred, true = ((x * (x - 1) / 2).sum() for x in (table, cols, rows))
        assert pairwise_f1(y, w) == pytest.approx(2 * (tp / pred) * (tp / true) / (tp / pred + tp / true), rel=1e-12)
    # 6,000 classes x 6,000 clusters over 12,000 items: the dense int64 table alone is 288 MB
    y, w = rng.integers(0, 6000, 12000), rng.integers(0, 6000, 12000)
    tracemalloc.start()
    try:
        nmi_score(y, w)
        pairwise_f1(y, w)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak  # a few arrays of 12,000 items


@pytest.mark.parametrize("backend", ["torch", "faiss"])
def test_kmeans_recovers_separated_clusters(backend):
    rng = np.random.default_rng(5)
    centers = 10 * np.eye(6, dtype=np.float32)
    labels = np.repeat(np.arange(6), 20)
    x = torch.from_numpy(centers[labels] + 0.1 * rng.standard_normal((120, 6)).astype(np.float32))
    assign, used = kmeans_assign(x, 6, seed=0, restarts=3, backend=backend)
    assert used == backend
    assert nmi_score(labels, assign) == pytest.approx(1.0)
    assert pairwise_f1(labels, assign) == pytest.approx(1.0)
    again, _ = kmeans_assign(x, 6, seed=0, restarts=3, backend=backend)
    assert np.array_equal(assign, again)  # seeded: deterministic


def test_evaluate_reports_clustering_metrics_per_scale():
    rng = np.random.default_rng(6)
    fine = np.repeat(np.arange(8), 15)
    centers = 5 * rng.standard_normal((8, 16)).astype(np.float32)
    x = centers[fine] + 0.05 * rng.standard_normal((120, 16)).astype(np.float32)
    labels = np.stack([fine, fine // 4], 1)
    out = evaluate_embeddings(x, labels, metrics=["nmi", "f1", "recall@1"], kmeans_seed=3, kmeans_backend="torch",
                              kmeans_restarts=3)
    assert out["fine"]["nmi"] == pytest.approx(1.0) and out["fine"]["f1"] == pytest.approx(1.0)
    assert 0.0 <= out["coarse"]["nmi"] <= 1.0 and 0.0 <= out["coarse"]["f1"] <= 1.0
    assert out["fine"]["kmeans_seed"] == 3 and out["fine"]["kmeans_restarts"] == 3
    assert list(out["fine"])[:3] == ["recall@1", "nmi", "f1"]
    assert out["mean"]["nmi"] == pytest.approx((out["fine"]["nmi"] + out["coarse"]["nmi"]) / 2)
