"""Score products ``query @ gallery.T`` for the evaluation engines: one CPU library per process, the same bits for
a pair whatever block it is computed in.

Exact ranking needs every path of the engines (the row chunks, the symmetric path's tiles, a row recomputed alone,
the torch engine and the verification metrics on the CPU) to give a pair the same float32 score, or near-tied
rankings would depend on the path. :class:`GalleryProducts` is the one place where CPU scores are multiplied.

Two libraries, chosen once per process (:func:`cpu_matmul_library`):

* ``"onednn"`` (the default where torch has it): oneDNN's matrix product with the gallery packed once in oneDNN's
  blocked layout, the operator torch's own compiler uses for linear layers on the CPU. On an AMD EPYC (Zen 4) CPU it
  multiplies the engine's 64-row blocks about twice as fast as torch's default BLAS (MKL in torch's wheels, which
  takes a slower code path on AMD CPUs): 88 against 42-44 GFLOP/s on one thread, 177 against 82-84 on two
  (docs/benchmarks.md). Its result for a pair does not depend on the block: a 64-row block, a 2,048-row tile, a
  column slice of the gallery or the transposed product give the same bits, at any thread count, once blocks with
  fewer than 64 rows (or galleries with fewer than 64 items) are padded with zero rows to 64, which
  :class:`GalleryProducts` does (tests/metrics/test_products.py checks all of it on the machine that runs them).
* ``"blas"``: ``torch.matmul`` (torch's BLAS), where oneDNN is missing or ``DYNAMETRIC_CPU_MATMUL=blas`` is set. Its
  products with few rows, or against fewer than 12 items, sum in another order: the engine's fixed 64-row grid
  (:data:`~dynametric.metrics.engine.SCORE_ROW_BLOCK`) keeps the first out of the scores, and galleries (or the
  symmetric path's tiles) of fewer than 64 items are padded with zero rows to 64 on either library.

The two libraries agree bit for bit up to 129 dimensions on the machine above and differ in the last bits from 256
(another summation order); the choice holds for the whole process, so results never mix them. Products on other
devices (CUDA) are ``torch.matmul``.

The packed gallery is a copy of the gallery (same size), held while an evaluation runs, beside the embeddings
themselves (which the engine's memory budget does not count either).
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable

import torch

from dynametric.errors import InputError

CPU_MATMUL_ENV = "DYNAMETRIC_CPU_MATMUL"
"""``auto`` (default: oneDNN where it works, else BLAS), ``onednn`` (required: an error where it does not work) or
``blas``; read once per process."""

PAD_ROWS = 64
"""Blocks (and galleries) with fewer rows are padded with zero rows to this many: oneDNN's kernels for fewer rows
(a single query, a one-item gallery) sum in another order."""


_Ops = tuple[Callable[..., torch.Tensor], Callable[..., torch.Tensor]]


def _onednn_ops() -> _Ops | None:
    """torch's oneDNN linear operators (pack the weight once, multiply), None where this torch has none."""
    if not torch.backends.mkldnn.is_available():
        return None
    ops = getattr(torch.ops, "mkldnn", None)
    try:
        return ops._reorder_linear_weight, ops._linear_pointwise  # type: ignore[union-attr,return-value]
    except (AttributeError, RuntimeError):
        return None


def _onednn_product(ops: _Ops, query: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    _, linear = ops
    return linear(query, packed, None, "none", [None], "")


def _onednn_works() -> bool:
    """Whether oneDNN's product runs here and gives the right numbers (a small product against float64)."""
    ops = _onednn_ops()
    if ops is None:
        return False
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(PAD_ROWS, 24, generator=gen)
    b = torch.randn(PAD_ROWS + 5, 24, generator=gen)
    try:
        with torch.no_grad():
            got = _onednn_product(ops, a, ops[0](b, None))
    except Exception:  # noqa: BLE001 - any failure of a private operator means: do not use it
        return False
    want = a.double() @ b.double().T
    return tuple(got.shape) == tuple(want.shape) and bool(torch.allclose(got.double(), want, rtol=1e-5, atol=1e-4))


@functools.cache
def cpu_matmul_library() -> str:
    """``"onednn"`` or ``"blas"``: the library of every CPU score product in this process (decided once, from
    ``DYNAMETRIC_CPU_MATMUL`` and whether oneDNN works here)."""
    choice = os.environ.get(CPU_MATMUL_ENV, "").strip().lower() or "auto"
    if choice not in ("auto", "onednn", "blas"):
        raise InputError(f"got {choice!r}; expected auto, onednn or blas (environment variable)",
                         key=CPU_MATMUL_ENV)
    if choice == "blas":
        return "blas"
    if _onednn_works():
        return "onednn"
    if choice == "onednn":
        raise InputError(f"onednn required, but torch's oneDNN matrix product does not work in this torch build "
                         f"({torch.__version__}); use auto or blas (environment variable)", key=CPU_MATMUL_ENV)
    return "blas"


def _no_autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Scores are float32 products even inside a caller's autocast region (validation under bf16-mixed training):
    autocast would multiply ``torch.matmul`` in bfloat16."""
    if device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _pad_rows(x: torch.Tensor) -> torch.Tensor:
    if x.shape[0] >= PAD_ROWS:
        return x.contiguous()
    out = x.new_zeros((PAD_ROWS, x.shape[1]))
    out[:x.shape[0]] = x
    return out


SLAB_ITEMS = 1 << 16
"""oneDNN packs the gallery in slabs of this many items, and each product writes one slab's columns at a time: a
block's transient output is at most ``64 x SLAB_ITEMS`` floats (16 MiB) whatever the gallery's size (a pair's bits
do not depend on the slab: column slices give the same bits)."""


class GalleryProducts:
    """``query_rows @ gallery.T`` for one gallery (float32 ``[Ng, D]``), on the gallery's device.

    On the CPU with oneDNN (:func:`cpu_matmul_library`) the gallery is packed once, at construction, in slabs of
    :data:`SLAB_ITEMS` items; any block of query rows then gets the same bits per pair as any other block
    containing them."""

    def __init__(self, gallery: torch.Tensor) -> None:
        self.gallery = gallery
        self.num_items = gallery.shape[0]
        self._ops: _Ops | None = None
        self._slabs: list[tuple[int, int, torch.Tensor]] = []  # (first item, end, packed slab)
        # a gallery of fewer than PAD_ROWS items is padded on either library (torch's BLAS on the CPU also sums
        # products against fewer than 12 items in another order; a narrow last tile of the symmetric path is one)
        self._padded = _pad_rows(gallery.detach()) if self.num_items < PAD_ROWS else gallery.detach()
        if gallery.device.type == "cpu" and gallery.dtype == torch.float32 and gallery.shape[1] > 0 \
                and cpu_matmul_library() == "onednn":
            ops = self._ops = _onednn_ops()
            if ops is None:  # pragma: no cover - cpu_matmul_library() found them a moment ago
                raise RuntimeError("torch's oneDNN operators disappeared")
            g = gallery.detach()
            with torch.no_grad():
                for c0 in range(0, max(self.num_items, 1), SLAB_ITEMS):
                    c1 = min(self.num_items, c0 + SLAB_ITEMS)
                    self._slabs.append((c0, c1, ops[0](_pad_rows(g[c0:c1]), None)))

    @property
    def library(self) -> str:
        """``"onednn"`` or ``"matmul"`` (torch's BLAS on the CPU, or the device's)."""
        return "onednn" if self._ops is not None else "matmul"

    def __call__(self, query_rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``query_rows @ gallery.T`` as float32 ``[m, Ng]``, written into ``out`` when given (and returned)."""
        m = query_rows.shape[0]
        with torch.no_grad(), _no_autocast(self.gallery.device):
            if self._ops is not None and query_rows.dtype == torch.float32:
                q = _pad_rows(query_rows.detach())
                if len(self._slabs) == 1 and out is None:  # one slab: oneDNN's own block is the result
                    res = _onednn_product(self._ops, q, self._slabs[0][2])[:m, :self.num_items]
                    return res if res.is_contiguous() else res.contiguous()
                if out is None:
                    out = torch.empty((m, self.num_items), dtype=torch.float32)
                for c0, c1, packed in self._slabs:
                    out[:, c0:c1] = _onednn_product(self._ops, q, packed)[:m, :c1 - c0]
                return out
            if self.num_items >= PAD_ROWS:  # self._padded is the gallery
                if out is not None:
                    return torch.matmul(query_rows.detach(), self._padded.T, out=out)
                return torch.matmul(query_rows.detach(), self._padded.T)
            full = torch.matmul(query_rows.detach(), self._padded.T)
        res = full[:m, :self.num_items]
        if out is None:
            return res if res.is_contiguous() else res.contiguous()
        out.copy_(res)
        return out
