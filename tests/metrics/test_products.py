"""The engines' one CPU product library (``dynametric.metrics.products``): a pair's score has the same bits whatever
block, tile, column slice or orientation computes it, on the library this machine picks and on torch's BLAS."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynametric.errors import InputError
from dynametric.metrics import products
from dynametric.metrics.engine import SCORE_ROW_BLOCK, _grid_product
from dynametric.metrics.products import CPU_MATMUL_ENV, PAD_ROWS, GalleryProducts, cpu_matmul_library


@pytest.fixture
def fresh_library(monkeypatch):
    """Decide the library again under the test's environment, and again after it (the choice is cached)."""
    monkeypatch.delenv(CPU_MATMUL_ENV, raising=False)
    cpu_matmul_library.cache_clear()
    yield monkeypatch
    cpu_matmul_library.cache_clear()


def _data(n: int, d: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen) * 3 + 1  # off-centre: long sums, last bits matter


@pytest.mark.parametrize("library", ["auto", "blas"])
def test_products_match_float64(fresh_library, library):
    fresh_library.setenv(CPU_MATMUL_ENV, library)
    x = _data(300, 96)
    got = GalleryProducts(x[100:])(x[:70])
    want = x[:70].double() @ x[100:].double().T
    assert got.shape == (70, 200) and got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), want.numpy(), rtol=1e-5, atol=1e-3)
    out = torch.full((70, 200), float("nan"))
    assert GalleryProducts(x[100:])(x[:70], out=out) is out
    assert torch.equal(out, got)


@pytest.mark.parametrize("d", [17, 128, 512])
def test_a_pairs_bits_do_not_depend_on_the_block_on_onednn(fresh_library, d):
    if cpu_matmul_library() != "onednn":  # auto falls back to BLAS only where oneDNN's product does not work
        assert not products._onednn_works()
        return
    x = _data(1200, d, seed=d)
    whole = GalleryProducts(x)(x)  # one product of every row against every item
    # 64-row blocks, blocks of fewer rows (padded), one row, a 1,000-row tile
    for a, b in ((0, 64), (64, 128), (130, 131), (1199, 1200), (7, 40), (100, 1100)):
        assert torch.equal(GalleryProducts(x)(x[a:b]), whole[a:b]), (a, b)
    # column slices of the gallery, down to one item (padded), and the transposed product (tiles of the symmetric
    # path offer a tile's scores to its columns' rows too)
    for c0, c1 in ((0, 1), (5, 9), (64, 700), (1150, 1200)):
        assert torch.equal(GalleryProducts(x[c0:c1])(x[:64]), whole[:64, c0:c1]), (c0, c1)
        assert torch.equal(GalleryProducts(x[:64])(x[c0:c1]), whole[c0:c1, :64]), (c0, c1)
    assert torch.equal(whole, whole.T)
    # thread count
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = GalleryProducts(x)(x[:256])
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, whole[:256])


def test_slabs_of_the_packed_gallery_change_no_bits(fresh_library, monkeypatch):
    # large galleries are packed (and multiplied) in slabs of SLAB_ITEMS items; a short last slab is padded
    if cpu_matmul_library() != "onednn":
        assert GalleryProducts(_data(10, 4)).library == "matmul"
        return
    x = _data(1234, 300, seed=3)
    whole = GalleryProducts(x)(x[:200])
    monkeypatch.setattr(products, "SLAB_ITEMS", 100)
    slabbed = GalleryProducts(x)
    assert len(slabbed._slabs) == 13 and slabbed._slabs[-1][:2] == (1200, 1234)
    assert torch.equal(slabbed(x[:200]), whole)
    out = torch.full((70, 1234), float("nan"))
    assert slabbed(x[130:200], out=out) is out and torch.equal(out, whole[130:])
    assert torch.equal(slabbed(x[:1]), whole[:1])


@pytest.mark.parametrize("library", ["auto", "blas"])
def test_grid_products_do_not_depend_on_the_chunk(fresh_library, library):
    fresh_library.setenv(CPU_MATMUL_ENV, library)
    x = _data(300, 256, seed=5)
    prods = GalleryProducts(x)
    whole = torch.empty(300, 300)
    _grid_product(x, prods, 0, 300, whole)
    for a, b in ((0, 1), (3, 70), (64, 128), (250, 300), (299, 300)):
        part = torch.empty(b - a, 300)
        _grid_product(x, prods, a, b, part)
        assert torch.equal(part, whole[a:b]), (a, b)
    assert SCORE_ROW_BLOCK == PAD_ROWS  # a grid block is one oneDNN block


def test_library_choice_and_its_errors(fresh_library):
    fresh_library.setenv(CPU_MATMUL_ENV, "blas")
    assert cpu_matmul_library() == "blas"
    assert GalleryProducts(_data(10, 4)).library == "matmul"
    cpu_matmul_library.cache_clear()
    fresh_library.setenv(CPU_MATMUL_ENV, "openblas")
    with pytest.raises(InputError, match=rf"key '{CPU_MATMUL_ENV}': got 'openblas'; expected auto, onednn or blas"):
        cpu_matmul_library()
    cpu_matmul_library.cache_clear()
    fresh_library.setenv(CPU_MATMUL_ENV, "onednn")
    fresh_library.setattr(products, "_onednn_works", lambda: False)
    with pytest.raises(InputError, match="oneDNN matrix product does not work"):
        cpu_matmul_library()
    cpu_matmul_library.cache_clear()
    fresh_library.setenv(CPU_MATMUL_ENV, "auto")
    assert cpu_matmul_library() == "blas"  # auto falls back where oneDNN does not work


def test_onednn_probe_rejects_a_wrong_product(fresh_library):
    # a private operator that runs but computes something else must not be used
    real = products._onednn_ops()
    if real is None:  # no oneDNN operators in this torch build: the probe says no
        assert products._onednn_works() is False
        return
    pack, _ = real
    fresh_library.setattr(products, "_onednn_ops", lambda: (pack, lambda q, w, *a: torch.zeros(q.shape[0], 69)))
    assert products._onednn_works() is False
    fresh_library.setattr(products, "_onednn_ops", lambda: (pack, lambda *a: (_ for _ in ()).throw(RuntimeError)))
    assert products._onednn_works() is False
    fresh_library.setattr(products, "_onednn_ops", lambda: None)
    assert products._onednn_works() is False


@pytest.mark.parametrize("library", ["auto", "blas"])
def test_symmetric_tiles_score_a_pair_as_the_row_path_does(fresh_library, library):
    # the symmetric path multiplies 2,048 x 2,048 tiles (the last one 4 rows high) and offers each tile to its
    # columns' rows too; the row path multiplies 64-row blocks against the whole gallery. Same bits required.
    from dynametric.metrics.symmetric import symmetric_top_lists

    fresh_library.setenv(CPU_MATMUL_ENV, library)
    x = _data(4100, 512, seed=9)
    vals, idx = symmetric_top_lists(x, 12)
    rows = torch.empty(4100, 4100)
    _grid_product(x, GalleryProducts(x), 0, 4100, rows)
    assert torch.equal(vals, rows.gather(1, idx))


@pytest.mark.parametrize("library", ["auto", "blas"])
def test_products_stay_float32_inside_autocast(fresh_library, library):
    # validation under bf16-mixed training runs inside an autocast region, where torch.matmul would be bfloat16
    fresh_library.setenv(CPU_MATMUL_ENV, library)
    x = _data(200, 96, seed=11)
    prods = GalleryProducts(x)
    want = prods(x[:70])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = prods(x[:70])
        out = torch.empty(70, 200)
        prods(x[:70], out=out)
        small = GalleryProducts(x[:5])(x[:70])  # a padded gallery (fewer than 64 items)
    assert got.dtype == torch.float32 and torch.equal(got, want) and torch.equal(out, want)
    assert small.dtype == torch.float32 and torch.equal(small, GalleryProducts(x[:5])(x[:70]))

