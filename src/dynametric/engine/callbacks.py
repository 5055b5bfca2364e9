"""Callbacks: exact-resume state (sampler position + RNG), the ``last.ckpt`` writer, and the ``best.ckpt`` writer
that keeps its best score when the run folder was copied or moved."""

from __future__ import annotations

import math
import os
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path, PurePath
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint, EarlyStopping, ModelCheckpoint
from lightning.pytorch.callbacks.early_stopping import EarlyStoppingReason

from dynametric.engine.data import MetricDataModule


def collect_rng_state() -> dict[str, Any]:
    """torch / numpy / python RNG states as weights_only-loadable values (tensors, lists, ints, strings)."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1]).astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class ResumeState(Checkpoint):
    """Records the sampler position and RNG in every checkpoint and writes ``last.ckpt``.

    * ``state_dict()`` (stored in every checkpoint): the epoch of the batches being drawn, how many of them
      were trained on, and the RNG states the run continues with (at save time; in a resumed run that has not
      trained a batch yet, the restored ones).
    * On resume the sampler restarts at that epoch and batch; the RNG states are restored just before the
      first resumed training batch (after the data loader was created).
    * ``last.ckpt`` is written every ``every_n_steps`` optimizer steps (0: never mid-epoch) and at the end of
      every epoch (after validation); a step that ends an epoch is saved by the end-of-epoch checkpoint only.

    The end-of-epoch ``last.ckpt`` holds the epoch as every other part of the run recorded it: Lightning calls the
    ``on_train_epoch_end`` of its ``Checkpoint`` callbacks after those of all other callbacks and the module's, in
    the order of the callback list, and :func:`dynametric.engine.trainer.build_trainer` puts this one after the
    ``best.ckpt`` writer (:class:`RunCheckpoint`). So the checkpoint holds that epoch's validation score as the
    best so far (written before ``ModelCheckpoint`` recorded it, a resumed run forgot it and replaced ``best.ckpt``
    with the next, worse, epoch), and the ``plateau`` schedule's step of that epoch, which the module takes in its
    own ``on_train_epoch_end`` (:meth:`dynametric.engine.module.MetricLearningModule._step_plateau`; Lightning
    takes it after every callback's hook).

    Under DDP the state of rank 0 is stored (the batch position is the same on every rank; the RNG of the
    other ranks restarts from rank 0's, which only matters for random choices that differ between ranks).

    Every checkpoint also records ``elapsed_s``: the wall time the run has spent so far, from this callback's
    creation in each process (the trainer's construction) to the checkpoint, summed over the processes of a resumed
    run (:attr:`restored_elapsed_s` is what the resumed checkpoint recorded).
    """

    def __init__(self, datamodule: MetricDataModule, last_path: str | Path | None, every_n_steps: int = 0) -> None:
        self.datamodule = datamodule
        self.last_path = None if last_path is None else Path(last_path)
        self.every_n_steps = int(every_n_steps)
        self.epoch = 0
        self.batches_done = 0
        self._pending_rng: dict[str, Any] | None = None
        self._last_saved_step = -1
        self._loop_counts: tuple[int, int, Any] | None = None
        self._created = time.monotonic()
        self.restored_elapsed_s = 0.0

    def state_dict(self) -> dict[str, Any]:
        # restored RNG states not yet in use (a checkpoint written by a resumed run before its first batch, e.g. by
        # Lightning repeating the end of the resumed epoch): the ones the run continues with, not today's
        rng = self._pending_rng if self._pending_rng is not None else collect_rng_state()
        return {"epoch": self.epoch, "batches_done": self.batches_done, "rng": rng,
                "elapsed_s": self.restored_elapsed_s + (time.monotonic() - self._created)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch = int(state_dict["epoch"])
        self.batches_done = int(state_dict["batches_done"])
        self.restored_elapsed_s = float(state_dict.get("elapsed_s", 0.0))  # 0: a checkpoint of an older version
        self._pending_rng = state_dict.get("rng")
        self.datamodule.request_resume(self.epoch, self.batches_done)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        progress: Any = trainer.fit_loop.epoch_progress  # its trackers count processed epochs (typed as not)
        self._loop_counts = (progress.current.processed, progress.total.processed,
                             getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", None))

    def _undo_repeated_epoch_end(self, trainer: L.Trainer) -> None:
        """Lightning's counts of an epoch end it repeats, undone.

        Resumed from an end-of-epoch checkpoint, Lightning's iteration-based loop (``max_steps`` set) ends that
        epoch again before training on: it calls the ``on_train_epoch_end`` hooks once more and counts the epoch as
        processed a second time (and one more step for the loggers). With ``max_epochs`` as well, the resumed run
        stopped an epoch early. The counts go back to those the run resumed with (the epoch's end, counted once)."""
        if self._loop_counts is None:
            return
        current, total, stepped = self._loop_counts
        progress: Any = trainer.fit_loop.epoch_progress
        progress.current.processed, progress.total.processed = current, total
        if stepped is not None:
            trainer.fit_loop.epoch_loop._batches_that_stepped = stepped

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._pending_rng is not None:
            restore_rng_state(self._pending_rng)
            self._pending_rng = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        sampler = self.datamodule.train_batch_sampler
        if sampler is not None:
            self.epoch = sampler.current_epoch
        self.batches_done = batch_idx + 1
        step = trainer.global_step
        # not after the epoch's last batch: the end-of-epoch checkpoint follows its validation, and Lightning resumes
        # a checkpoint written there as a finished epoch (a run killed while validating never validated that epoch)
        if (self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0
                and step != self._last_saved_step and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch):
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending_rng is not None:  # no batch trained since the resume: Lightning repeats an epoch end
            self._undo_repeated_epoch_end(trainer)
        self._save(trainer)

    def _save(self, trainer: L.Trainer) -> None:
        if self.last_path is not None:
            trainer.save_checkpoint(self.last_path, weights_only=False)
            self._last_saved_step = trainer.global_step


def runtime_warning(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def monitor_value(trainer: L.Trainer, monitor: str) -> float | None:
    """The monitored metric of the last validation round as a float, ``None`` when it was not logged."""
    value = trainer.callback_metrics.get(monitor)
    return None if value is None else float(value)


class MonitorWatch(L.Callback):
    """After every validation round of ``fit``: a warning when the monitored metric has no value (not logged, or
    NaN: e.g. no validation query had a relevant item at the monitored scale, 0 queries). Such a round is no
    candidate for ``best.ckpt`` (:class:`RunCheckpoint`) and does not count for early stopping
    (:class:`RunEarlyStopping`); the warning says so. ``warn`` gets the message (default: a ``RuntimeWarning``;
    ``dynametric train`` prints it as a ``warning:`` line)."""

    def __init__(self, monitor: str, warn: Callable[[str], None] | None = None) -> None:
        self.monitor = monitor
        self.warn = warn or runtime_warning
        self.undefined_rounds: list[int] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        value = monitor_value(trainer, self.monitor)
        if value is not None and not math.isnan(value):
            return
        epoch = int(trainer.current_epoch)
        self.undefined_rounds.append(epoch)
        why = "was not logged" if value is None else "is NaN"
        scale = self.monitor.removeprefix("val/").partition("/")[0]
        last = getattr(pl_module, "last_eval", None)
        queries = last.get(scale, {}).get("num_queries") if isinstance(last, dict) else None
        if queries == 0:
            why += f" (0 queries: no validation item has a relevant item at the scale {scale!r})"
        self.warn(f"validation round of epoch {epoch}: the monitored {self.monitor} {why}; this round cannot be "
                  "selected as best.ckpt and does not count for early stopping (trainer.monitor, the validation "
                  "split)")


class RunEarlyStopping(EarlyStopping):
    """Lightning's ``EarlyStopping`` (``trainer.patience``), checked after each validation round, with three
    changes:

    * **Exact resume.** Lightning stores the callback's counts in every checkpoint, but not its decision: the stop
      is ``trainer.should_stop``, which a resumed run starts without. A run killed after the end-of-epoch
      ``last.ckpt`` of the epoch that decided to stop (while it tested) trained on for another epoch when resumed.
      A restored state that had stopped training stops it again before the first resumed batch.
    * **No value, no decision.** A round whose monitored metric is NaN (no validation query counted) neither
      improves nor counts against the patience (Lightning's ``check_finite`` stopped the run at the first NaN, and
      without it a NaN counted as a round without improvement); :class:`MonitorWatch` warns about it.
    * :meth:`summary`: the epoch and reason of a stop, for the run's output and ``run_info.json``.

    Its state is stored under ``EarlyStopping``'s key, so checkpoints of earlier versions resume with it."""

    def __init__(self, monitor: str, mode: str, patience: int) -> None:
        super().__init__(monitor=monitor, mode=mode, patience=patience, check_on_train_epoch_end=False,
                         check_finite=False)
        self.restored_stop = False

    @property
    def state_key(self) -> str:  # EarlyStopping's: checkpoints written before this class resume with it
        return f"EarlyStopping{super().state_key[len(type(self).__qualname__):]}"

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        # a checkpoint of a Lightning without stopping_reason: a spent patience is the stop it had decided
        self.restored_stop = (self.stopping_reason is not EarlyStoppingReason.NOT_STOPPED
                              or self.wait_count >= self.patience)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.restored_stop:  # the fit loop checks trainer.should_stop before its first epoch
            trainer.should_stop = True

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        value = monitor_value(trainer, self.monitor)
        if value is not None and math.isnan(value):
            return  # MonitorWatch says so
        super()._run_early_stopping_check(trainer)

    def summary(self) -> dict[str, Any] | None:
        """``{"epoch": E, "reason": ..., "patience": N, "best_score": S}`` when early stopping ended training
        (E: the last epoch trained), else ``None``."""
        if self.stopping_reason is EarlyStoppingReason.NOT_STOPPED:
            return None
        best = float(self.best_score)
        if self.stopping_reason is EarlyStoppingReason.PATIENCE_EXHAUSTED:
            reason = (f"{self.monitor} did not improve in {self.wait_count} validation round(s) (trainer.patience="
                      f"{self.patience}; best {best:.4f})")
        else:
            reason = self.stopping_reason_message or self.stopping_reason.value
        return {"epoch": int(self.stopped_epoch), "reason": reason, "patience": int(self.patience),
                "best_score": best}


class ValidationToMetrics(L.Callback):
    """After every validation round of ``fit``, the run's ``metrics.json`` (once the run wrote it) gets the validation
    rounds so far, rewritten atomically with its other entries as they were: the folder of a run that is killed
    shows how far it got (the rounds are in ``last.ckpt`` too, and a resumed run writes them again)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or not self.path.is_file():
            return
        import json

        from dynametric.utils.io import atomic_write_json, nan_to_null

        try:
            metrics = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return  # not the run's file as it wrote it: left as it is (the run's end rewrites it)
        if isinstance(metrics, dict):
            history = list(getattr(pl_module, "validation_history", []))
            atomic_write_json(self.path, nan_to_null({**metrics, "validation": history}))  # NaN: null


def _reroot(path: Any, old: str, new: str) -> str | None:
    """``path`` (a file of the folder ``old``) at the same place in the folder ``new``; ``None`` when it is not
    in ``old``."""
    if not isinstance(path, str) or not path:
        return None
    try:
        rel = PurePath(path).relative_to(old)
    except ValueError:
        return None
    return os.path.join(new, rel)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` (``best.ckpt``), resumable in a run folder that was copied or moved.

    Its state in a checkpoint records absolute paths: the folder (``dirpath``), ``best_model_path`` and the
    ``best_k_models`` scores. Lightning restores the best score only when the folder is where the checkpoint was
    written; otherwise it warns ``The dirpath has changed`` and forgets the score, so the next validation round
    of the resumed run replaces ``best.ckpt`` with whatever it scores, a worse model included. Here the state of
    a run whose folder changed is restored with each path taken to the same place in the new folder (the folder's
    own ``best.ckpt``, copied or moved with it); paths outside the old folder are dropped, never followed. The
    state key is ``ModelCheckpoint``'s, so checkpoints written before this class load into it (and the other way
    round)."""

    moved_from: str | None = None
    """The folder the resumed checkpoint was written in, when it is not this one (set by ``load_state_dict``)."""

    @property
    def state_key(self) -> str:
        return f"ModelCheckpoint{super().state_key[len(type(self).__qualname__):]}"

    def check_monitor_top_k(self, trainer: L.Trainer, current: torch.Tensor | None = None) -> bool:
        # a NaN score (no validation query counted) is never the best: Lightning ranks it as the worst score, but
        # takes it while it has no best yet, so best.ckpt was the first epoch whatever came after
        if current is not None and bool(torch.isnan(current).any()):
            return False
        return super().check_monitor_top_k(trainer, current)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old = state_dict.get("dirpath", self.dirpath)
        new = self.dirpath
        if old == new or not isinstance(old, str) or not isinstance(new, str):
            super().load_state_dict(state_dict)
            return
        self.moved_from = old
        best_k: dict[str, Any] = {}
        for path, score in dict(state_dict.get("best_k_models") or {}).items():
            moved = _reroot(path, old, new)
            if moved is not None:
                best_k[moved] = score
        self.best_k_models = best_k
        best = _reroot(state_dict.get("best_model_path"), old, new)
        self.best_model_path = best or ""
        if best is not None:
            self.best_model_score = state_dict.get("best_model_score")
        kth = _reroot(state_dict.get("kth_best_model_path"), old, new)
        if kth is not None and kth in best_k:
            self.kth_best_model_path = kth
            self.kth_value = state_dict.get("kth_value", self.kth_value)
        self.last_model_path = _reroot(state_dict.get("last_model_path"), old, new) or self.last_model_path
