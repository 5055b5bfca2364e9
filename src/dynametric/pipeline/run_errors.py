"""How a training run that stopped before it finished says so, in one line with how to go on (in the words of the
caller, :data:`~dynametric.pipeline.run_folder.PYTHON_FOLDER_KEY`): Ctrl-C or SIGTERM (:func:`_interrupted`: the
validation done so far written to ``metrics.json``), the logger's package failing, a GPU out of memory
(:class:`RunOutOfMemory`, where in the run and what lowers the memory), another process of the run lost
(:func:`peer_lost`), a file system error once the run has a checkpoint (:class:`RunFileError`). Used by
:mod:`dynametric.pipeline.run`."""

from __future__ import annotations

import re
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import lightning as L
import torch
from lightning.pytorch.trainer.states import RunningStage

from dynametric.engine.loggers import LoggerFailure
from dynametric.engine.module import MetricLearningModule
from dynametric.engine.trainer import end_launched_ranks, signal_launched_ranks
from dynametric.errors import DynametricError, Interrupted
from dynametric.pipeline.run_folder import PYTHON_FOLDER_KEY, _resume_call, _start_call
from dynametric.utils.io import atomic_write_json, nan_to_null
from dynametric.utils.limits import gpu_memory_detail

if TYPE_CHECKING:
    from dynametric.config import Config


class _RunSoFar(Protocol):
    """What the stop handlers read of a run (:class:`~dynametric.pipeline.run._RunParts`): its metrics once there are
    any, its module (the validation history) and its trainer (whether this process is rank 0)."""

    @property
    def metrics(self) -> dict[str, Any] | None: ...

    @property
    def module(self) -> MetricLearningModule: ...

    @property
    def trainer(self) -> L.Trainer: ...


def _interrupted(run_dir: Path, metrics: dict[str, Any] | None, history: list[dict[str, Any]],
                 write: bool, folder_key: str, sigterm: bool = False) -> Interrupted:
    """A run stopped by Ctrl-C (or SIGTERM) before it finished: ``metrics.json`` (once written) gets the validation
    done so far and keeps ``"test": {}`` (the run was not tested); ``last.ckpt`` and ``best.ckpt`` stay as they were.
    The returned exception says how to go on: resume from ``last.ckpt``, or start again without one, in the words
    of the caller ``folder_key`` names (the command line's, or a Python call's: :func:`_resume_call`)."""
    if write and metrics is not None:
        atomic_write_json(run_dir / "metrics.json", nan_to_null({**metrics, "validation": list(history), "test": {}}))
    if (run_dir / "last.ckpt").is_file():
        return Interrupted(f"resume with: {_resume_call(run_dir, folder_key)}", sigterm=sigterm)
    if (run_dir / "config.yaml").is_file():
        return Interrupted(f"no checkpoint yet; start again with: "
                           f"{_start_call(run_dir / 'config.yaml', run_dir, folder_key)}", sigterm=sigterm)
    return Interrupted(sigterm=sigterm)


def _interruption(run_dir: Path, parts: _RunSoFar, folder_key: str, *, sigterm: bool) -> Interrupted:
    """A run stopped by Ctrl-C or SIGTERM: :func:`_interrupted` (rank 0 writes the validation done so far), once
    the other ranks a SIGTERM was passed on to stopped."""
    interrupted = _interrupted(run_dir, parts.metrics, parts.module.validation_history,
                               write=parts.trainer.is_global_zero, folder_key=folder_key, sigterm=sigterm)
    end_launched_ranks()  # the other ranks a SIGTERM was passed on to: stopped before this process says so
    return interrupted


def _logger_stopped(exc: LoggerFailure, run_dir: Path, parts: _RunSoFar, folder_key: str) -> LoggerFailure:
    """The logger's package raised as the run wrote to it: the other ranks stopped, the validation done so far
    written (:func:`_interrupted`), and the logger's line with how to go on."""
    signal_launched_ranks(signal.SIGTERM)  # the other ranks would wait for this one
    how = _interrupted(run_dir, parts.metrics, parts.module.validation_history,
                       write=parts.trainer.is_global_zero, folder_key=folder_key).next_step
    end_launched_ranks()
    return LoggerFailure(exc.message + (f"; {how}" if how else ""), key=exc.key)


class RunFileError(DynametricError, OSError):
    """An error of the file system once a run had begun (a full disk at a checkpoint), still the ``OSError`` it was
    (its ``errno``, ``strerror`` and ``filename``), whose message adds how to go on (:func:`_file_error`)."""

    def __init__(self, exc: OSError, line: str) -> None:
        super().__init__(exc.errno, exc.strerror, exc.filename)
        self.line = line

    def __str__(self) -> str:
        return self.line


def _file_error(exc: OSError, run_dir: Path, folder_key: str) -> RunFileError | None:
    """A write of the run failed once it had its first ``last.ckpt`` (a full disk at a later checkpoint): the
    command line's line for the error (``RUN/best.ckpt: No space left on device (...)``) with how to go on, as after
    a logger's failure: ``resume with: dynametric train --resume RUN`` (a Python call, ``folder_key``
    :data:`PYTHON_FOLDER_KEY`: ``resume with: run_training(..., resume=True)``); ``None`` before the first ``last.ckpt``
    (the error is raised as it was). The files written so far are kept as
    they are: nothing more is written on a disk that is full."""
    from dynametric.errors import os_error_line

    if not (run_dir / "last.ckpt").is_file():
        return None
    return RunFileError(exc, f"{os_error_line(exc)}; resume with: {_resume_call(run_dir, folder_key)}")


class _StageAtError(L.Callback):
    """Where the fit was when an error ended it: the trainer's stage (training, validating, ...), step and epoch,
    read in Lightning's ``on_exception`` (Lightning resets the stage before the error reaches the caller)."""

    def __init__(self) -> None:
        self.stage: RunningStage | None = None
        self.step = 0
        self.epoch = 0

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.stage, self.step, self.epoch = trainer.state.stage, int(trainer.global_step), int(trainer.current_epoch)


class RunOutOfMemory(DynametricError, torch.cuda.OutOfMemoryError):
    """A GPU ran out of memory during a run (:func:`_gpu_memory_error`): one line saying where, what lowers the
    memory and how to go on; still the ``torch.OutOfMemoryError`` it was for a Python caller that catches that."""


_FULL_PRECISIONS = ("32", "32-true", "64", "64-true")


def _gpu_memory_error(exc: RuntimeError, cfg: Config, run_dir: Path, parts: _RunSoFar, phase: str,
                      watch: _StageAtError, folder_key: str) -> RunOutOfMemory:
    """A GPU ran out of memory in the run (``phase``: ``untrained`` evaluation, ``fit``, ``test``; ``watch`` says
    whether the fit was training or validating): the validation done so far written as after Ctrl-C
    (:func:`_interrupted`), the other ranks stopped, and the line: where (step and epoch), the allocation, the keys
    that lower the memory (``data.batch_size`` in training; ``data.eval_batch_size`` / ``eval.memory_budget_bytes``
    in an evaluation; ``trainer.precision=bf16-mixed`` from a full precision) and how to go on: a resumed run keeps
    its config, so resume once the GPU's memory is free, or start a new run with the lower value (before the first
    ``last.ckpt``: start again in the same folder), in the words of the caller ``folder_key`` names."""
    signal_launched_ranks(signal.SIGTERM)  # the other ranks would wait for this one
    _interrupted(run_dir, parts.metrics, parts.module.validation_history, write=parts.trainer.is_global_zero,
                 folder_key=folder_key)
    end_launched_ranks()
    if phase == "fit" and watch.stage not in (RunningStage.VALIDATING, RunningStage.SANITY_CHECKING):
        # steps and epochs counted as the non-finite messages count them; outside a step: restoring a checkpoint
        where = (f"training at global step {watch.step} (epoch {watch.epoch})" if watch.stage == RunningStage.TRAINING
                 else f"in the fit at global step {watch.step} (epoch {watch.epoch}), outside a training step")
        key, now = "data.batch_size", cfg.data.batch_size
        lower = (f"data.batch_size (now {now}; trainer.accumulate_grad_batches=K makes a step of K batches, "
                 "with the loss of each batch alone)")
    else:
        where = {"untrained": "evaluating the untrained model", "test": "testing the trained model"}.get(
            phase, f"validating in epoch {watch.epoch}")
        key, now = "data.eval_batch_size", cfg.data.eval_batch_size
        lower = f"data.eval_batch_size (now {now}) or eval.memory_budget_bytes (the ranking's working memory)"
    if str(cfg.trainer.precision) in _FULL_PRECISIONS:
        lower += f", or set trainer.precision=bf16-mixed (now {cfg.trainer.precision})"
    detail = gpu_memory_detail(exc)
    config, override = run_dir / "config.yaml", f"{key}=B"
    if (run_dir / "last.ckpt").is_file():
        how = (f"free the GPU's memory (other processes on it) and resume with: {_resume_call(run_dir, folder_key)}; "
               f"or lower {lower} in a new run (a resumed run keeps its config; B < {now}): "
               f"{_start_with(config, None, folder_key, override)}")
    elif config.is_file():
        how = (f"no checkpoint yet; lower {lower} and start again (B < {now}): "
               f"{_start_with(config, run_dir, folder_key, override)}")
    else:
        how = f"lower {lower}"
    return RunOutOfMemory(f"out of GPU memory {where}{f' ({detail})' if detail else ''}: {how}")


def _start_with(config: Path, run_dir: Path | None, folder_key: str, override: str) -> str:
    """:func:`_start_call` with one ``KEY=VALUE`` override: the command line's word after the call, a Python
    call's ``load_config(CONFIG, [OVERRIDE])``."""
    if folder_key == PYTHON_FOLDER_KEY:
        where = "NEW" if run_dir is None else repr(str(run_dir))
        return f"run_training(load_config({str(config)!r}, [{override!r}]), {where})"
    return f"{_start_call(config, run_dir, folder_key)} {override}"


def _peer_lost_error(exc: RuntimeError, run_dir: Path, parts: _RunSoFar, world: int,
                     folder_key: str) -> DynametricError:
    """Another process of a several-process run ended (:func:`peer_lost`): the processes this one started
    stopped too, the validation done so far written (:func:`_interrupted`), and one line with the collective's
    reason and how to go on."""
    signal_launched_ranks(signal.SIGTERM)  # the others this process started, if any: stopped too
    how = _interrupted(run_dir, parts.metrics, parts.module.validation_history,
                       write=parts.trainer.is_global_zero, folder_key=folder_key).next_step
    end_launched_ranks()
    reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    reason = re.sub(r"^\[[^\]]*\]\s*", "", reason).split(". ")[0]  # gloo's source location and advice
    return DynametricError(f"another process of this {world}-process run ended while this one waited for it "
                           f"({reason}): killed, out of memory, or stopped on an error of its own (its "
                           "'error (rank N):' line, above)" + (f"; {how}" if how else ""))


#: What gloo's collectives say when the process at the other end of a connection ended.
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")


def peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective's error saying that another process of the run ended (gloo's ``Connection
    reset by peer``): rank 0 printed it as a multi-page ``[rank0]`` traceback, exit status 1, with no word on how to
    go on."""
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in _PEER_GONE)
