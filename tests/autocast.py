"""Which low-precision dtypes the installed torch's CPU autocast runs in, asked of torch itself (not of its version
string): torch 2.1's ``AutocastCPU`` takes bfloat16 only (``torch.autocast("cpu", dtype=torch.float16)`` raises
``Currently, AutocastCPU only support Bfloat16``); later releases take float16 too."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch


@functools.cache
def cpu_autocast_runs_in(dtype: torch.dtype) -> bool:
    """Whether a matmul under ``torch.autocast("cpu", dtype=dtype)`` gives ``dtype`` (a release that refuses the
    dtype raises, one that only warns and disables autocast gives float32)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.autocast("cpu", dtype=dtype):
                out = torch.ones(2, 2) @ torch.ones(2, 2)
    except RuntimeError:
        return False
    return out.dtype == dtype


def cpu_autocast_dtypes(*dtypes: torch.dtype) -> list:
    """``dtypes`` as ``pytest.param`` values, each skipped where this torch's CPU autocast does not run in it."""
    return [pytest.param(d, marks=pytest.mark.skipif(not cpu_autocast_runs_in(d),
                                                     reason=f"the CPU autocast of torch {torch.__version__} does not "
                                                            f"run in {d}"))
            for d in dtypes]
