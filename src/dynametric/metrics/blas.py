"""numpy's BLAS for the CPU engine's score products, and a limit on its threads.

numpy's wheels ship OpenBLAS and torch's CPU wheels ship MKL. For the engine's products (64 query rows against the
whole gallery) MKL's single-precision kernels run at about half of OpenBLAS's speed on AMD CPUs (measured on a
Zen 4 machine, one thread: 42 against 72 GFLOP/s; docs/benchmarks.md), so the CPU ranking engine multiplies with
numpy. It holds OpenBLAS at one thread and runs the blocks in its own ranking threads: OpenBLAS's own workers keep
spinning for a while after each product and then slow down the sorting threads that share the cores. The two
libraries gave the same bits for these block products of 64- and 128-dimensional embeddings on the machine we
measured, but not all of them at 512 dimensions (last-bit differences, enough to flip near-tied rankings), so the
torch engine on the CPU multiplies with numpy too and both CPU engines rank the same scores (on a GPU, torch's
products are used). A product's bits never depend on how a run is chunked: every block of the fixed grid is
computed whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def blas_threads(threads: int | None = None) -> Iterator[None]:
    """Limit numpy's BLAS to ``threads`` threads (default: torch's setting, ``torch.get_num_threads()``) for the
    duration; restored on exit."""
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - a declared dependency; without it numpy's BLAS keeps its own setting
        yield
        return
    n = torch.get_num_threads() if threads is None else threads
    with threadpool_limits(limits=max(1, int(n)), user_api="blas"):
        yield
