"""Marks for tests of optional packages that the dev extra installs and a plain ``pip install .`` does not: such a
test is skipped, with the reason, where the package is missing (CI installs the dev extra, where they run)."""

from __future__ import annotations

import importlib.util

import pytest

HAS_PML = importlib.util.find_spec("pytorch_metric_learning") is not None

needs_pml = pytest.mark.skipif(not HAS_PML, reason="needs pytorch-metric-learning (pip install '.[pml]'; the dev extra "
                                                   "installs it)")
"""A test that builds a ``pml:`` loss or miner, or compares with pytorch-metric-learning."""


def pml_case(*values: object, **kwargs: object) -> object:
    """``pytest.param(*values)`` of a parametrised case that needs pytorch-metric-learning (:data:`needs_pml`)."""
    return pytest.param(*values, marks=needs_pml, **kwargs)  # type: ignore[arg-type]


def _timm_reads_local_dir() -> bool:
    from dynametric.models.backbones import timm_reads_local_dir

    return timm_reads_local_dir()


needs_local_dir_timm = pytest.mark.skipif(not _timm_reads_local_dir(),
                                          reason="local-dir: backbones need timm >= 1.0.16 (the installed timm "
                                                 "cannot read them; tests/models/test_timm_versions.py "
                                                 "checks the error it gets)")
"""A test that builds a ``local-dir:`` backbone (timm >= 1.0.16, asked of timm's name parser)."""


HAS_ONNX = all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxscript", "onnxruntime"))

needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="needs onnx, onnxscript and onnxruntime (pip install "
                                                     "'.[export]'; the dev extra installs them)")
"""A test that exports to ONNX or runs an ONNX file."""


def onnx_case(*values: object, **kwargs: object) -> object:
    """``pytest.param(*values)`` of a parametrised case that exports to ONNX (:data:`needs_onnx`)."""
    return pytest.param(*values, marks=needs_onnx, **kwargs)  # type: ignore[arg-type]
