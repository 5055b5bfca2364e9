"""The CPU engine's score products through numpy's BLAS (dynametric.metrics.blas, engine._grid_product)."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from dynametric.metrics.blas import blas_threads
from dynametric.metrics.engine import SCORE_ROW_BLOCK, _grid_product, gallery_for_products


def _data(nq=300, ng=517, d=48, seed=0):
    rng = np.random.default_rng(seed)
    return (torch.from_numpy(rng.standard_normal((nq, d)).astype(np.float32)),
            torch.from_numpy(rng.standard_normal((ng, d)).astype(np.float32)))


def test_numpy_products_do_not_depend_on_chunks_threads_or_the_transposed_copy():
    q, g = _data()
    nq, ng = q.shape[0], g.shape[0]
    whole = torch.empty(nq, ng)
    with blas_threads(1):
        _grid_product(q, g, 0, nq, whole, gallery_for_products(g, None))
        strided = torch.empty(nq, ng)
        _grid_product(q, g, 0, nq, strided, gallery_for_products(g, memory_budget_bytes=1))  # no copy fits
        assert not gallery_for_products(g, memory_budget_bytes=1).flags.c_contiguous
        assert torch.equal(whole, strided)
        with ThreadPoolExecutor(3) as pool:
            # chunks that cut grid blocks: each block is still computed whole, so every bit is the same
            for start, stop in [(0, 5), (5, SCORE_ROW_BLOCK + 7), (SCORE_ROW_BLOCK + 7, 250), (250, nq)]:
                out = torch.empty(stop - start, ng)
                _grid_product(q, g, start, stop, out, gallery_for_products(g, None), pool, threads=3)
                assert torch.equal(out, whole[start:stop]), (start, stop)
    # the same products as torch's BLAS, up to rounding (and the float64 truth)
    torch_out = torch.empty(nq, ng)
    _grid_product(q, g, 0, nq, torch_out)
    truth = q.double() @ g.double().T
    assert torch.allclose(whole.double(), truth, atol=1e-4) and torch.allclose(whole, torch_out, atol=1e-4)


def test_blas_threads_limits_and_restores():
    from threadpoolctl import threadpool_info

    def blas_counts():
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]

    np.ones((2, 2)) @ np.ones((2, 2))  # numpy's BLAS is loaded
    before = blas_counts()
    assert before
    with blas_threads(1):
        assert set(blas_counts()) == {1}
    assert blas_counts() == before
