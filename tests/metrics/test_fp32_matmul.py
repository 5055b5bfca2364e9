"""Ranking runs with full-precision float32 matmuls whichever of torch's two precision APIs the user set (the legacy
``torch.set_float32_matmul_precision`` or the per-backend ``torch.backends.*.fp32_precision``), and the user's
settings come back exactly."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
import torch

from dynametric.metrics import evaluate_embeddings
from dynametric.metrics.torch_engine import _FP32_MATMULS, _FP32_PARENTS, _stored_fp32_precisions, full_fp32_matmul

pytestmark = pytest.mark.skipif(not hasattr(torch._C, "_get_fp32_precision_getter"),
                                reason="torch without the per-backend fp32_precision API")

METRICS = ["recall@K", "map@r", "fnmr@fmr=10"]


def _reset_to(legacy: str, stored: dict[tuple[str, str], str]) -> None:
    torch.set_float32_matmul_precision(legacy)
    for node in (*_FP32_PARENTS, *_FP32_MATMULS):
        torch._C._set_fp32_precision_setter(*node, stored[node])


@pytest.fixture(autouse=True)
def _restore_precision() -> Iterator[None]:
    """Put every precision setting back as it was before the test (they are process-wide)."""
    stored = _stored_fp32_precisions()
    legacy = torch.get_float32_matmul_precision()
    yield
    _reset_to(legacy, stored)


def _reset_to_defaults() -> None:
    """torch's defaults: legacy "highest", every per-backend setting "none" (inherit)."""
    _reset_to("highest", {node: "none" for node in (*_FP32_PARENTS, *_FP32_MATMULS)})


def _data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.standard_normal((120, 24)).astype(np.float32), rng.integers(0, 12, 120)


def _public_state() -> dict[str, object]:
    """What a user reads back through the public getters (the legacy getter's error message where it raises)."""
    b = torch.backends
    out: dict[str, object] = {"generic": b.fp32_precision, "cudnn": b.cudnn.fp32_precision,
                              "cuda.matmul": b.cuda.matmul.fp32_precision, "mkldnn": b.mkldnn.fp32_precision,
                              "mkldnn.matmul": b.mkldnn.matmul.fp32_precision}
    for name, read in (("legacy", torch.get_float32_matmul_precision),
                       ("allow_tf32", lambda: b.cuda.matmul.allow_tf32)):
        try:
            out[name] = read()
        except RuntimeError as e:
            out[name] = f"raises: {str(e)[:60]}"
    return out


def _set_new_cuda() -> None:
    torch.backends.cuda.matmul.fp32_precision = "tf32"


def _set_new_generic() -> None:
    torch.backends.fp32_precision = "tf32"


def _set_new_cudnn_and_onednn() -> None:
    torch.backends.cudnn.fp32_precision = "tf32"  # the CUDA backend's parent setting: cuda.matmul inherits it
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"


def _set_legacy_high() -> None:
    torch.set_float32_matmul_precision("high")


def _set_legacy_medium() -> None:
    torch.set_float32_matmul_precision("medium")


def _set_legacy_allow_tf32() -> None:
    torch.backends.cuda.matmul.allow_tf32 = True


SETTINGS: list[Callable[[], None]] = [_set_new_cuda, _set_new_generic, _set_new_cudnn_and_onednn, _set_legacy_high,
                                      _set_legacy_medium, _set_legacy_allow_tf32]


@pytest.mark.parametrize("engine", ["cpu", "torch"])
@pytest.mark.parametrize("setting", SETTINGS, ids=lambda f: f.__name__[5:])
def test_evaluation_under_reduced_matmul_precision(setting, engine):
    """Values equal those of the default settings; every setting reads back the same after (the QA case,
    ``torch.backends.cuda.matmul.fp32_precision = "tf32"``, raised RuntimeError on every evaluation)."""
    x, labels = _data()
    want = evaluate_embeddings(x, labels, metrics=METRICS, ranking_engine=engine)
    _reset_to_defaults()  # the settings as a fresh process has them, whatever that evaluation left
    setting()
    before, stored = _public_state(), _stored_fp32_precisions()
    assert evaluate_embeddings(x, labels, metrics=METRICS, ranking_engine=engine) == want
    assert _public_state() == before
    assert _stored_fp32_precisions() == stored


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda f: f.__name__[5:])
def test_full_precision_inside_and_restored_after_an_exception(setting):
    _reset_to_defaults()
    setting()
    before, stored = _public_state(), _stored_fp32_precisions()
    with pytest.raises(KeyError, match="boom"):
        with full_fp32_matmul():
            b = torch.backends
            assert (b.cuda.matmul.fp32_precision, b.mkldnn.matmul.fp32_precision) == ("ieee", "ieee")
            assert torch.get_float32_matmul_precision() == "highest" and b.cuda.matmul.allow_tf32 is False
            raise KeyError("boom")
    assert _public_state() == before
    assert _stored_fp32_precisions() == stored


def test_inheriting_matmul_settings_still_inherit_after():
    """A matmul setting left at "none" follows its parent; the evaluation must not pin it to the parent's value
    of the moment (restoring the value a getter reads, or the legacy setter, would)."""
    _reset_to_defaults()
    torch.backends.fp32_precision = "tf32"
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"  # inherited
    x, labels = _data()
    evaluate_embeddings(x, labels, metrics=["recall@K"], ranking_engine="torch")
    torch.backends.fp32_precision = "ieee"
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"
    assert torch.backends.mkldnn.matmul.fp32_precision == "ieee"


def test_stored_settings_read_by_hand():
    _reset_to_defaults()
    put = torch._C._set_fp32_precision_setter
    put("generic", "all", "tf32")
    put("cuda", "all", "ieee")
    put("cuda", "matmul", "none")
    put("mkldnn", "matmul", "bf16")
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"  # a getter reads through "none"
    assert _stored_fp32_precisions() == {("generic", "all"): "tf32", ("cuda", "all"): "ieee",
                                         ("mkldnn", "all"): "none", ("cuda", "matmul"): "none",
                                         ("mkldnn", "matmul"): "bf16"}
    assert torch._C._get_fp32_precision_getter("cuda", "all") == "ieee"  # the parents are set back after reading
    assert torch.backends.fp32_precision == "tf32"


def test_torch_without_the_per_backend_api_uses_the_legacy_one(monkeypatch):
    """torch < 2.9 has only ``torch.set_float32_matmul_precision``: set to "highest" inside, restored after."""
    _reset_to_defaults()
    torch.set_float32_matmul_precision("medium")
    monkeypatch.delattr(torch._C, "_get_fp32_precision_getter")
    with pytest.raises(KeyError, match="boom"):
        with full_fp32_matmul():
            assert torch.get_float32_matmul_precision() == "highest"
            raise KeyError("boom")
    assert torch.get_float32_matmul_precision() == "medium"


def test_a_private_api_of_another_shape_falls_back_to_the_legacy_route(monkeypatch):
    """The per-backend route reads torch's private getters; where they answer otherwise (another torch version), the
    context falls back to the legacy API, which still ranks in full precision and restores the legacy value."""
    from dynametric.metrics import torch_engine

    def broken(*args):
        raise RuntimeError("unknown backend")

    stored = torch_engine._stored_fp32_precisions()
    monkeypatch.setattr(torch._C, "_get_fp32_precision_getter", broken)
    torch.set_float32_matmul_precision("high")
    try:
        with torch_engine.full_fp32_matmul():
            assert torch.get_float32_matmul_precision() == "highest"
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        monkeypatch.undo()
        for node in reversed(list(stored)):  # children before parents: every setting back as it was stored
            torch._C._set_fp32_precision_setter(*node, stored[node])
        assert torch_engine._stored_fp32_precisions() == stored
