"""nmi_score / pairwise_f1 / contingency with [N, 1] and [N, S] labels (scale= picks the column, as the losses'
scale= does; [N, S > 1] without it is one InputError), tensors that require grad, bad lengths as InputError; and
kmeans_assign with numpy points (as the other metrics take) and 1-D points refused in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score

from dynametric.errors import InputError
from dynametric.metrics import contingency, kmeans_assign, nmi_score, pairwise_f1


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 6, 80)
    c = rng.integers(0, 5, 80)
    return y, np.stack([y, y // 2, y // 3], 1), c


def test_n1_labels_and_clusters_are_the_1d_case() -> None:
    y, _, c = _data()
    want = normalized_mutual_info_score(y, c)
    assert nmi_score(y[:, None], c) == pytest.approx(want, abs=1e-12)
    assert nmi_score(y, c[:, None]) == pytest.approx(want, abs=1e-12)
    assert pairwise_f1(torch.from_numpy(y)[:, None], c) == pairwise_f1(y, c)
    np.testing.assert_array_equal(contingency(y[:, None], c[:, None]), contingency(y, c))


def test_multi_scale_labels_need_a_scale_and_score_that_column() -> None:
    _, y3, c = _data()
    for fn in (nmi_score, pairwise_f1, contingency):
        with pytest.raises(InputError, match="key 'labels'.*3 columns.*scale="):
            fn(y3, c)
    for s in range(3):  # each column, as sklearn scores it on its own
        want = normalized_mutual_info_score(y3[:, s], c)
        assert nmi_score(y3, c, scale=s) == pytest.approx(want, abs=1e-12)
        assert nmi_score(torch.from_numpy(y3), c, "geometric", scale=s) == pytest.approx(
            normalized_mutual_info_score(y3[:, s], c, average_method="geometric"), abs=1e-12)
        assert pairwise_f1(y3, c, scale=s) == pairwise_f1(y3[:, s], c)
        np.testing.assert_array_equal(contingency(y3, c, scale=s), contingency(y3[:, s], c))
    assert nmi_score(y3, c, scale=-1) == nmi_score(y3[:, 2], c)
    with pytest.raises(InputError, match="key 'labels'.*scale 3 out of range for 3"):
        nmi_score(y3, c, scale=3)
    for kwargs in ({}, {"scale": 0}):  # scale= picks a labels column; the advice must not name it for clusters
        with pytest.raises(InputError, match=r"key 'clusters': clusters must be \[N\] or \[N, 1\].*\[80, 2\]"):
            nmi_score(y3 if kwargs else y3[:, 0], y3[:, :2], **kwargs)  # clusters are one labelling


def test_bad_shapes_lengths_and_nan_are_input_errors() -> None:
    y, y3, c = _data()
    with pytest.raises(InputError, match="key 'clusters'.*80 vs 79 rows"):
        nmi_score(y, c[:-1])
    with pytest.raises(InputError, match=r"key 'labels'.*\[N\] or \[N, S\].*\[2, 80, 3\]"):
        pairwise_f1(np.stack([y3, y3]), c)
    with pytest.raises(InputError, match="key 'labels'.*NaN at row 1"):
        nmi_score(np.array([0.0, np.nan, 1.0]), np.array([0, 1, 1]))


def test_labels_requiring_grad_are_detached() -> None:
    y, _, c = _data()
    t = torch.tensor(y, dtype=torch.float64, requires_grad=True)
    assert nmi_score(t, c) == pytest.approx(normalized_mutual_info_score(y, c), abs=1e-12)
    assert pairwise_f1(t, torch.from_numpy(c).float().requires_grad_()) == pairwise_f1(y, c)
    assert pairwise_f1(t.bfloat16(), c) == pairwise_f1(y, c)  # small integers are exact in bf16


def test_kmeans_assign_takes_numpy_and_refuses_1d() -> None:
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(4), 15)
    x = (8 * np.eye(4, 6)[labels] + 0.1 * rng.standard_normal((60, 6))).astype(np.float32)
    for backend in ("torch", "faiss"):
        a, used = kmeans_assign(x, 4, seed=0, restarts=2, backend=backend)
        b, _ = kmeans_assign(torch.from_numpy(x), 4, seed=0, restarts=2, backend=backend)
        assert used == backend
        np.testing.assert_array_equal(a, b)
        assert nmi_score(labels, a) == pytest.approx(1.0)
    a64, _ = kmeans_assign(x.astype(np.float64), 4, seed=0, restarts=2, backend="torch")
    assert nmi_score(labels, a64) == pytest.approx(1.0)
    for bad in (x[0], torch.from_numpy(x)[0], x[None]):
        with pytest.raises(InputError, match=r"key 'x'.*must be \[N, D\]"):
            kmeans_assign(bad, 4)
    with pytest.raises(InputError, match="key 'x'.*numbers"):
        kmeans_assign(np.array([["a", "b"], ["c", "d"]]), 2)
