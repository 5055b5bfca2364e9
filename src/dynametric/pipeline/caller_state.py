"""What :func:`~dynametric.pipeline.run.run_training` puts back as the caller left it when it returns or raises: the
global random state (:func:`callers_random_state`: Python's, NumPy's, torch's CPU and CUDA generators, the seed
variables Lightning sets) and torch's algorithm switches (:func:`callers_torch_flags`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

#: what Lightning's ``seed_everything`` sets in ``os.environ`` (the seed for processes started later, and whether
#: the data loaders' workers are seeded from it)
SEED_ENVIRONMENT = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")


#: what Lightning's ``Trainer(deterministic=True)`` sets in ``os.environ`` (cuBLAS's reproducible workspace)
DETERMINISM_ENVIRONMENT = ("CUBLAS_WORKSPACE_CONFIG",)


#: the seed of a CUDA generator before anything seeds it (torch's ``default_rng_seed_val``)
_CUDA_DEFAULT_SEED = 67280421310721


@contextlib.contextmanager
def callers_random_state() -> Iterator[None]:
    """Around :func:`run_training`: the global random state as the caller left it is put back on the way out (a
    return or an exception): Python's ``random``, NumPy's global ``np.random`` state, torch's CPU generator, the
    CUDA generators, and the environment variables of :data:`SEED_ENVIRONMENT`. CUDA not started yet on entry: the
    seeds torch keeps for it until it starts are put back (the run's replaced them), and where the run started it,
    its generators are set as they would have started (torch's default seed, then the caller's queued seeds)."""
    import random

    import numpy as np

    py_state, np_state, cpu_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    environment = {name: os.environ.get(name) for name in SEED_ENVIRONMENT}
    cuda_started = torch.cuda.is_available() and torch.cuda.is_initialized()
    cuda_states = torch.cuda.get_rng_state_all() if cuda_started else None
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)  # CUDA's seeds queued until it starts
    queued = None if cuda_started else _queued_cuda_seeds(tracker)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu_state)
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        elif queued is not None:
            _put_back_queued_cuda_seeds(tracker, queued)


@contextlib.contextmanager
def callers_torch_flags() -> Iterator[None]:
    """Around :func:`run_training`: torch's algorithm switches as the caller left them are put back on the way out (a
    return or an exception). Lightning's ``Trainer(deterministic=...)`` calls ``torch.use_deterministic_algorithms``
    with the config's value (a caller's deterministic mode was switched off by a run with ``trainer.deterministic``
    false, and a run with it true left it on), sets ``torch.backends.cudnn.benchmark`` off and sets the variables of
    :data:`DETERMINISM_ENVIRONMENT`. Put back: deterministic algorithms and their warn-only mode,
    ``cudnn.benchmark``, ``cudnn.deterministic`` and those variables (an unset one unset)."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark, cudnn_deterministic = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    environment = {name: os.environ.get(name) for name in DETERMINISM_ENVIRONMENT}
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = cudnn_deterministic
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _queued_cuda_seeds(tracker: Any) -> dict[str, Any] | None:
    """The seeds torch keeps for CUDA until it starts (``torch.manual_seed`` before CUDA is used), ``None`` where
    this torch keeps them otherwise."""
    names = ("manual_seed_all_cb", "manual_seed_cb", "call_order")
    if tracker is None or not all(hasattr(tracker, name) for name in names):
        return None
    return {name: list(getattr(tracker, name)) if name == "call_order" else getattr(tracker, name) for name in names}


def _put_back_queued_cuda_seeds(tracker: Any, queued: dict[str, Any]) -> None:
    """After a run that found CUDA not started: its queued seeds as they were, or, where the run started CUDA (and
    applied the run's seed), each generator as it would have started: torch's default seed, then the caller's
    queued seeds in their order."""
    if not torch.cuda.is_initialized():
        for name, value in queued.items():
            setattr(tracker, name, value)
        return
    for index in range(torch.cuda.device_count()):
        torch.cuda.default_generators[index].manual_seed(_CUDA_DEFAULT_SEED)
    for call in queued["call_order"]:
        if isinstance(call, tuple) and call and callable(call[0]):
            call[0]()  # (callback, traceback): the seeding the caller asked for, made now
        # another shape (another torch version): the generators keep the default seed (the run has finished: a
        # best-effort restore must not turn it into an error)
