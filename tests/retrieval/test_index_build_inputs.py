"""RetrievalIndex.build from a Python EmbeddingSet: labels, ids, paths and scale names are checked as every other
reader checks them (one InputError naming the key), and torch embeddings (bf16, requiring grad) or labels are read
as queries are, giving the same index as float32 numpy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dynametric.errors import InputError
from dynametric.retrieval.embed import EmbeddingSet
from dynametric.retrieval.index import RetrievalIndex

N, D = 40, 8


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, D)).astype(np.float32)
    y = np.arange(N) % 5
    return x, np.stack([y, y // 2, y // 4], 1)


def _set(emb: Any, labels: Any, names: tuple[str, ...] = ("fine", "middle", "coarse"), n_ids: int = N,
         n_paths: int = N) -> EmbeddingSet:
    return EmbeddingSet(emb, [f"i{i}" for i in range(n_ids)], [f"p{i}.png" for i in range(n_paths)], labels,
                        list(names), None, [], {}, Path("mem"))


def test_transposed_labels_are_refused_naming_the_rows() -> None:
    x, y3 = _data()
    for labels in (y3.T, np.ascontiguousarray(y3.T), torch.from_numpy(y3).T):
        with pytest.raises(InputError, match=r"key 'labels'.*3 rows for 40 embeddings.*\[S, N\]"):
            RetrievalIndex.build(_set(x, labels))


@pytest.mark.parametrize("labels", [
    pytest.param(lambda y: np.where(y == 0, np.nan, y), id="nan"),
    pytest.param(lambda y: y + 0.7, id="fractional"),
    pytest.param(lambda y: y.astype(bool), id="bool"),
])
def test_non_integer_labels_are_refused(labels: Any) -> None:
    x, y3 = _data()
    with pytest.raises(InputError, match="key 'labels'.*integers"):
        RetrievalIndex.build(_set(x, labels(y3)))


def test_label_rows_and_flattened_labels_are_refused() -> None:
    x, y3 = _data()
    with pytest.raises(InputError, match="key 'labels'.*expected 40 label rows, got 39"):
        RetrievalIndex.build(_set(x, y3[:-1]))
    with pytest.raises(InputError, match="key 'labels'.*expected 40 label rows, got 120"):
        RetrievalIndex.build(_set(x, y3.reshape(-1)))


def test_ids_paths_and_scale_names_must_match() -> None:
    x, y3 = _data()
    with pytest.raises(InputError, match="key 'ids'.*30 ids for 40 embeddings"):
        RetrievalIndex.build(_set(x, y3, n_ids=30))
    with pytest.raises(InputError, match="key 'ids'.*41 ids for 40 embeddings"):
        RetrievalIndex.build(_set(x, y3, n_ids=41))
    with pytest.raises(InputError, match="key 'paths'.*39 paths for 40 embeddings"):
        RetrievalIndex.build(_set(x, y3, n_paths=39))
    with pytest.raises(InputError, match=r"key 'scale_names'.*3 scale names .* for 2 label column"):
        RetrievalIndex.build(_set(x, y3[:, :2]))
    with pytest.raises(InputError, match="key 'scale_names'.*distinct"):
        RetrievalIndex.build(_set(x, y3, names=("fine", "fine", "coarse")))
    unnamed = RetrievalIndex.build(_set(x, y3[:, :2], names=()))  # no names: the default ones
    assert unnamed.scale_names == ["fine", "coarse"]


def test_float_integral_and_torch_labels_give_the_int64_matrix() -> None:
    x, y3 = _data()
    for labels in (y3.astype(np.float64), y3.tolist(), torch.from_numpy(y3),
                   torch.from_numpy(y3).double().requires_grad_()):
        idx = RetrievalIndex.build(_set(x, labels))
        assert idx.labels is not None and idx.labels.dtype == np.int64
        np.testing.assert_array_equal(idx.labels, y3)
    one = RetrievalIndex.build(_set(x, y3[:, 0], names=("fine",)))
    assert one.labels is not None and one.labels.shape == (N, 1)


def test_torch_embeddings_build_the_float32_index() -> None:
    x, y3 = _data()
    base = RetrievalIndex.build(_set(x, y3))
    q = np.random.default_rng(1).standard_normal((5, D)).astype(np.float32)
    want = base.search(q, 5)
    want_same = base.search(q, 3, same="coarse", query_labels=y3[:5])
    t = torch.from_numpy(x)
    for emb, exact in ((t, True), (t.clone().requires_grad_(), True), (t.bfloat16(), False), (t.half(), False)):
        idx = RetrievalIndex.build(_set(emb, y3))
        assert idx.size == N and idx.dim == D
        if exact:
            np.testing.assert_array_equal(idx.search(q, 5).ids, want.ids)
        else:  # bf16 / fp16 rows: the index of those rows read as float32
            ref = RetrievalIndex.build(_set(emb.float().numpy(), y3))
            np.testing.assert_array_equal(idx.search(q, 5).ids, ref.search(q, 5).ids)
    # query labels that require grad are read as the numpy ones
    got = base.search(q, 3, same="coarse", query_labels=torch.from_numpy(y3[:5]).double().requires_grad_())
    np.testing.assert_array_equal(got.ids, want_same.ids)
