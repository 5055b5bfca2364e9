"""RetrievalIndex.search's queries as a service passes them: torch tensors of any float dtype (bf16, fp16, one
that requires grad) are searched as float32; booleans and integers are one InputError naming the dtype."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dynametric.errors import InputError
from dynametric.retrieval.embed import EmbeddingSet
from dynametric.retrieval.index import RetrievalIndex

D = 16


@pytest.fixture(scope="module")
def index() -> RetrievalIndex:
    x = np.random.default_rng(0).standard_normal((80, D)).astype(np.float32)
    return RetrievalIndex.build(EmbeddingSet(x, [str(i) for i in range(80)], [""] * 80, None, [], None, [], {},
                                             Path("x.npy")), kind="flat", metric="l2")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_bf16_and_fp16_tensors_are_searched_as_float32(index: RetrievalIndex, dtype: torch.dtype) -> None:
    q = torch.randn(5, D, generator=torch.Generator().manual_seed(1)).to(dtype)
    res = index.search(q, 4)
    ref = index.search(q.float().numpy(), 4)
    np.testing.assert_array_equal(res.ids, ref.ids)
    np.testing.assert_array_equal(res.distances, ref.distances)


def test_a_tensor_that_requires_grad_is_searched(index: RetrievalIndex) -> None:
    q = torch.randn(3, D, generator=torch.Generator().manual_seed(2), requires_grad=True)
    out = q * 2  # a non-leaf result of a computation, as a model gives it outside no_grad
    res = index.search(out, 5)
    np.testing.assert_array_equal(res.ids, index.search(out.detach().numpy(), 5).ids)
    assert res.ids.shape == (3, 5) and (res.ids >= 0).all()


@pytest.mark.parametrize("make", [
    lambda q: q > 0,
    lambda q: torch.from_numpy(q) > 0,
    lambda q: (q * 10).astype(np.int64),
    lambda q: torch.from_numpy((q * 10).astype(np.int32)),
    lambda q: (q * 10).astype(np.uint8),
], ids=["bool", "torch-bool", "int64", "torch-int32", "uint8"])
def test_boolean_and_integer_queries_are_refused(index: RetrievalIndex, make) -> None:
    q = np.random.default_rng(3).standard_normal((4, D)).astype(np.float32)
    bad = make(q)
    with pytest.raises(InputError) as err:
        index.search(bad, 3)
    msg = str(err.value)
    assert "\n" not in msg and "floating-point" in msg
    assert str(np.asarray(bad).dtype) in msg
