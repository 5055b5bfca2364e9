"""The shared device / precision resolver (dynametric.utils.device)."""

from __future__ import annotations

import pytest
import torch

from dynametric.errors import ConfigError
from dynametric.utils import device as D


def test_resolve_device_cpu_and_auto(monkeypatch):
    assert D.resolve_device("cpu") == torch.device("cpu")
    assert D.resolve_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert D.resolve_device("auto") == torch.device("cpu")
    assert D.resolve_device(None) == torch.device("cpu")


def test_resolve_device_cuda_without_gpu_is_one_line_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for spec in ("cuda", "cuda:1", "CUDA"):
        with pytest.raises(ConfigError, match=r"key 'device'.*no CUDA GPU is available") as err:
            D.resolve_device(spec)
        assert "\n" not in str(err.value)
        assert str(err.value).endswith("; use device='cpu' or 'auto'")  # the library names its argument
    with pytest.raises(ConfigError, match="key 'eval.device'.*; use eval.device: cpu or auto$"):
        D.resolve_device("cuda", key="eval.device")
    with pytest.raises(ConfigError, match="key '--device'.*; use --device cpu or auto$"):
        D.resolve_device("cuda", key="--device")


def test_resolve_device_cuda_index_past_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert D.resolve_device("auto") == torch.device("cuda", 0)
    assert D.resolve_device("cuda") == torch.device("cuda", 0)
    assert D.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"only 2 CUDA device\(s\)"):
        D.resolve_device("cuda:2")


@pytest.mark.parametrize("spec", ["gpu", "tpu:0", "cuda:x", ""])
def test_resolve_device_unknown(spec):
    with pytest.raises(ConfigError, match="device"):
        D.resolve_device(spec)


def test_resolve_precision():
    cpu = torch.device("cpu")
    assert D.resolve_precision("fp32", cpu) is None and D.resolve_precision(None) is None
    assert D.resolve_precision("bf16", cpu) is torch.bfloat16
    assert D.resolve_precision("fp16", torch.device("cuda")) is torch.float16
    with pytest.raises(ConfigError, match="key 'precision': fp16 autocast needs a CUDA device; on the CPU use "
                                          "precision='bf16' or 'fp32'$"):
        D.resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="key '--precision': .* use --precision bf16 or fp32$"):
        D.resolve_precision("fp16", cpu, key="--precision")
    with pytest.raises(ConfigError, match=r"key 'precision'.*unknown precision 'int8'"):
        D.resolve_precision("int8", cpu)
    assert [D.precision_name(s) for s in (None, "FP32", "bfloat16", "half")] == ["fp32", "fp32", "bf16", "fp16"]


def test_loader_options_and_auto_workers(monkeypatch):
    D.check_loader_options(1, 0)
    with pytest.raises(ConfigError, match="key 'batch_size'.*>= 1, got 0"):
        D.check_loader_options(0, 0)
    with pytest.raises(ConfigError, match="key 'workers': expected an integer from 0 to 128, got -1"):
        D.check_loader_options(4, -1)
    monkeypatch.setattr(D.os, "sched_getaffinity", lambda _: set(range(16)), raising=False)
    assert D.auto_workers("cuda") == 15 and D.auto_workers("cpu") == 0
    assert D.auto_workers("cuda", processes=4) == 3
    monkeypatch.setattr(D.os, "sched_getaffinity", lambda _: set(range(64)), raising=False)
    assert D.auto_workers("cuda") == 16 and D.auto_workers("cuda", processes=8) == 7
    monkeypatch.setattr(D.os, "sched_getaffinity", lambda _: {0, 1}, raising=False)
    assert D.auto_workers("cuda") == 1 and D.auto_workers("cpu") == 0
    monkeypatch.setattr(D.os, "sched_getaffinity", lambda _: {0}, raising=False)
    assert D.auto_workers("cuda") == 0


def test_usable_cpus_is_the_affinity_where_the_os_reports_one(monkeypatch):
    import dynametric.utils.device as D

    monkeypatch.setattr(D.os, "sched_getaffinity", lambda _: {0, 3, 5}, raising=False)
    assert D.usable_cpus() == 3
    monkeypatch.delattr(D.os, "sched_getaffinity", raising=False)
    monkeypatch.setattr(D.os, "cpu_count", lambda: 7)
    assert D.usable_cpus() == 7
    monkeypatch.setattr(D.os, "cpu_count", lambda: None)
    assert D.usable_cpus() == 1


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"batch_size": 2.5}, r"key 'batch_size': batch size must be an integer >= 1, got 2\.5 \(float\)$"),
    ({"batch_size": True}, r"key 'batch_size': batch size must be an integer >= 1, got True \(bool\)$"),
    ({"batch_size": "4"}, r"key 'batch_size': batch size must be an integer >= 1, got '4' \(str\)$"),
    ({"workers": 1.7}, r"key 'workers': expected an integer from 0 to 128 or 'auto', got 1\.7 \(float\)$"),
    ({"workers": True, "flags": True}, r"key '--workers': expected an integer .* got True \(bool\)$"),
])
def test_inference_options_refuse_non_integer_sizes(kwargs, message):
    # InferenceOptions(batch_size=2.5) used to run with 2 and workers=True with 1 worker, in silence
    from dynametric.engine.inference import InferenceOptions

    with pytest.raises(ConfigError, match=message):
        InferenceOptions(device="cpu", **kwargs).resolve()
    import numpy as np

    assert InferenceOptions(device="cpu", batch_size=np.int64(3), workers=np.int32(0)).resolve().batch_size == 3
