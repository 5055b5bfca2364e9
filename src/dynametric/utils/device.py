"""Devices and inference precision, resolved once for every command that runs a model or ranks on a device.

``resolve_device("auto" | "cpu" | "cuda" | "cuda:1" | "mps" | torch.device | None)`` returns a
:class:`torch.device` or raises a one-line :class:`~dynametric.errors.ConfigError` naming the option (``key``:
the Python argument ``device`` by default; the commands pass their flag ``--device``, configs their dotted key):
``auto`` (and ``None``) is the first CUDA device when CUDA is available, else the CPU; ``cuda`` without a usable
CUDA device, or ``cuda:N`` past the device count, is an error, never a silent fallback to the CPU.

``resolve_precision("fp32" | "bf16" | "fp16")`` names the autocast dtype of inference (``None`` for fp32);
:func:`autocast` is the matching context manager (a no-op for fp32). fp16 autocast needs a CUDA device; bf16 runs
on CPU and CUDA.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from dynametric.errors import ConfigError

if TYPE_CHECKING:
    import torch

# torch is imported inside the functions that use it, not here: the command-line parsers import this module for its
# constants (PRECISIONS, MAX_WORKERS, check_workers), and `dynametric --help` or an argument error must not wait
# seconds for torch (tests/test_cli_imports.py)

PRECISIONS = ("fp32", "bf16", "fp16")

INFERENCE_BATCH_SIZE = 64
"""Images per forward pass when running a trained model over images (``embed``, ``search --image``, explorer
uploads, :class:`~dynametric.engine.inference.InferenceOptions`, :func:`~dynametric.engine.inference.embed_dataset`)
unless a batch size is given; ``evaluate --checkpoint`` takes the config's ``data.eval_batch_size`` instead."""
_PRECISION_ALIASES = {"fp32": "fp32", "32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16",
                      "fp16": "fp16", "16": "fp16", "float16": "fp16", "half": "fp16"}


def choice_hint(key: str, *values: str) -> str:
    """How to set option ``key`` to one of ``values``, in the words of where it comes from: a flag (``--device cpu
    or auto``), a Python argument (``device='cpu' or 'auto'``) or a config key (``eval.device: cpu or auto``)."""
    if key.startswith("-"):
        return f"{key} {' or '.join(values)}"
    if key.isidentifier():
        return f"{key}={' or '.join(repr(v) for v in values)}"
    return f"{key}: {' or '.join(values)}"


def resolve_device(spec: str | torch.device | None = "auto", *, key: str = "device") -> torch.device:
    """The :class:`torch.device` for ``spec``; a one-line ConfigError (naming ``key``) when it cannot be used."""
    import torch

    if isinstance(spec, torch.device):
        text = str(spec)
    else:
        text = "auto" if spec is None else str(spec).strip().lower()
    if text == "auto":
        text = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(f"unknown device {spec!r}; expected auto, cpu, cuda, cuda:N or mps (Apple GPUs)",
                          key=key) from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type == "cuda":
        require_cuda(f"device {text!r}", key=key)
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device {text!r} asked for, but only {count} CUDA device(s) are visible "
                              f"(cuda:0..cuda:{count - 1})", key=key)
        return torch.device("cuda", dev.index if dev.index is not None else torch.cuda.current_device())
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError(f"device {text!r} asked for, but MPS is not available here", key=key)
        return dev
    raise ConfigError(f"unsupported device {text!r}; expected auto, cpu, cuda, cuda:N or mps (Apple GPUs)", key=key)


def require_cuda(asked: str, *, key: str) -> None:
    """A one-line ConfigError naming ``key`` unless a usable CUDA GPU is here: the one check behind ``--device cuda``
    and ``trainer.accelerator: cuda`` / ``gpu``. ``asked`` says what asked for it (``"device 'cuda'"``)."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"{asked} asked for, but no CUDA GPU is available here (torch {torch.__version__}, CUDA "
                          f"build {torch.version.cuda or 'none'}); use {choice_hint(key, 'cpu', 'auto')}", key=key)


def precision_name(spec: str | None, *, key: str = "precision") -> str:
    """The canonical name (``fp32``, ``bf16``, ``fp16``) of a precision or one of its aliases (``None`` = fp32)."""
    name = _PRECISION_ALIASES.get("fp32" if spec is None else str(spec).strip().lower())
    if name is None:
        raise ConfigError(f"unknown precision {spec!r}; expected one of {list(PRECISIONS)}", key=key)
    return name


def resolve_precision(spec: str | None, device: torch.device | None = None, *,
                      key: str = "precision") -> torch.dtype | None:
    """The autocast dtype of inference precision ``spec`` (``None`` = fp32, no autocast) on ``device``."""
    import torch

    name = precision_name(spec, key=key)
    if name == "fp32":
        return None
    if name == "fp16" and device is not None and device.type == "cpu":
        raise ConfigError(f"fp16 autocast needs a CUDA device; on the CPU use {choice_hint(key, 'bf16', 'fp32')}",
                          key=key)
    return torch.bfloat16 if name == "bf16" else torch.float16


def default_precision_on(precision: str, device: torch.device) -> str:
    """A precision chosen by default (the one a run trained in, or an index was built in) as ``device`` can run it:
    fp16 autocast needs CUDA, so ``fp32`` elsewhere. An fp16 asked for explicitly stays an error on the CPU
    (:func:`resolve_precision`)."""
    return "fp32" if precision == "fp16" and device.type != "cuda" else precision


@contextlib.contextmanager
def autocast(device: torch.device, dtype: torch.dtype | None) -> Iterator[None]:
    """``torch.autocast(device.type, dtype)`` when ``dtype`` is set, else nothing."""
    import torch

    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield


MAX_WORKERS = 128
"""The most data-loading workers one loader may start (``data.workers``, ``--workers``, ``InferenceOptions``). A
fixed ceiling, not one of this machine: a run config travels (``--resume`` and ``evaluate --checkpoint`` on another
machine read the ``data.workers`` it trained with), so a value valid where it was written stays valid everywhere.
``auto`` resolves to at most 16 (:func:`auto_workers`)."""


def check_workers(value: Any, key: str, *, auto: bool = True) -> int | str:
    """A worker count: an integer from 0 to :data:`MAX_WORKERS`, or (with ``auto``) ``"auto"`` in any case, returned
    as ``"auto"``. The one check of ``data.workers``, the commands' ``--workers`` and ``InferenceOptions.workers``;
    anything else (a bool, a float, a negative or larger number, another word) is a one-line ConfigError naming
    ``key``, the value and what is allowed: ``key '--workers': expected an integer from 0 to 128 or 'auto', got
    100000``."""
    import operator

    if auto and isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    count = None
    if not isinstance(value, (bool, str)):
        try:
            count = operator.index(value)
        except TypeError:
            pass
    if count is not None and 0 <= count <= MAX_WORKERS:
        return int(count)
    kind = "" if count is not None or isinstance(value, str) else f" ({type(value).__name__})"
    raise ConfigError(f"expected an integer from 0 to {MAX_WORKERS}{' or ' + repr('auto') if auto else ''}, got "
                      f"{value!r}{kind}", key=key)


def check_loader_options(batch_size: int, workers: int, *, batch_key: str = "batch_size",
                         workers_key: str = "workers") -> None:
    """One-line errors for a batch size below 1 or a worker count :func:`check_workers` refuses."""
    if int(batch_size) < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}", key=batch_key)
    check_workers(workers, workers_key, auto=False)


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask where the OS reports one (e.g. under ``taskset`` or a
    container's CPU set), else the machine's CPU count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_workers(device: torch.device | str | None = None, processes: int = 1) -> int:
    """Data-loading worker processes for ``workers: auto``.

    On a CUDA device: ``min(16, CPUs // processes - 1)`` — JPEG decoding and augmentation must keep up with a GPU
    (a ResNet-50 step in bf16 consumes thousands of images per second), one core is left to the main process, and
    ``processes`` (the training processes on this machine, e.g. one per GPU under DDP) share the cores. On the CPU:
    0 (the model's own threads use the cores and worker processes only compete with them; a laptop starts no extra
    processes). The CPU count is the process's affinity where the OS reports it.
    """
    import torch

    cpus = usable_cpus()
    if device is None:
        cuda = torch.cuda.is_available()
    else:
        cuda = torch.device(device).type == "cuda"
    return max(0, min(16, cpus // max(1, int(processes)) - 1)) if cuda else 0
