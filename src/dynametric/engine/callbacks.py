"""Callbacks: exact-resume state (sampler position, RNG, the epoch means logged so far), the ``last.ckpt`` writer,
and the ``best.ckpt`` writer that keeps its best score when the run folder was copied or moved."""

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

from dynametric.config.schema import split_monitor
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


_REDUCTIONS = ("mean", "sum", "max", "min")
_SYNC_OP = {"mean": "sum", "sum": "sum", "max": "max", "min": "min"}  # a mean's weighted sum and batch sizes add
# hooks a resumed run calls again in the epoch it resumes into (or after it): what they log is not the batches'
_ONCE_AN_EPOCH = ("on_train_start", "on_train_epoch_start", "on_train_epoch_end")


def _reduction(metric: Any) -> str | None:
    """``mean``, ``sum``, ``max`` or ``min``: how a logged tensor metric reduces its values over an epoch (``None``:
    a torchmetrics ``Metric`` or another kind, which keeps its own state)."""
    if not getattr(metric, "is_tensor", False):
        return None
    return next((name for name in _REDUCTIONS if getattr(metric.meta, f"is_{name}_reduction", False)), None)


def _training_results(trainer: L.Trainer | None) -> dict[str, Any]:
    """Lightning's collection of what the module and the callbacks logged during training (``self.log`` in the
    training step and the training hooks), keyed ``"<hook>.<name>"``; empty outside ``fit``."""
    loop = None if trainer is None else getattr(trainer.fit_loop, "epoch_loop", None)
    results = getattr(loop, "_results", None)
    return results if isinstance(results, dict) else {}


def epoch_sums(trainer: L.Trainer | None) -> dict[str, dict[str, Any]]:
    """The epoch-level training metrics (``on_epoch=True``) of the epoch under way, as Lightning accumulated them in
    this process: ``{key: {"reduce", "value", "count" (``mean`` only), "synced"}}``, CPU tensors. ``value`` is the
    batch-size-weighted sum (``mean``; its ``count`` the summed batch sizes), the sum, the maximum or the minimum of
    the values logged this epoch; ``synced``: logged with ``sync_dist`` (reduced over the processes at the epoch
    end). Reading a GPU tensor waits for the device: for checkpoints only."""
    out: dict[str, dict[str, Any]] = {}
    for key, metric in _training_results(trainer).items():
        reduce = _reduction(metric)
        if reduce is None or metric.has_reset or not metric.meta.on_epoch or metric.meta.fx in _ONCE_AN_EPOCH:
            continue  # not logged this epoch (reset at the last epoch end), not an epoch mean, or not per batch
        entry = {"reduce": reduce, "value": metric.value.detach().cpu().clone(),
                 "synced": bool(metric.meta.sync.should)}
        if reduce == "mean":
            entry["count"] = metric.cumulated_batch_size.detach().cpu().clone()
        out[str(key)] = entry
    return out


def _global_sums(trainer: L.Trainer, sums: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``sums`` with the metrics logged with ``sync_dist`` reduced over the processes (the sums and batch sizes
    added, the maxima / minima taken), as Lightning reduces them at the epoch end; the others stay this process's
    own. A collective call: every process of the run calls it (each writes a checkpoint's state, rank 0 the file);
    the keys are rank 0's, and a process that lacks one adds nothing to it."""
    if trainer.world_size <= 1 or not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return sums
    synced = [(k, e["reduce"]) for k, e in sorted(sums.items()) if e["synced"]]
    synced = trainer.strategy.broadcast(synced, src=0)
    device = trainer.strategy.root_device
    out = dict(sums)
    for op in ("sum", "max", "min"):
        keys = [(k, r) for k, r in synced if _SYNC_OP[r] == op]
        if not keys:
            continue
        identity = {"sum": 0.0, "max": -math.inf, "min": math.inf}[op]
        flat: list[torch.Tensor] = []
        for key, reduce in keys:
            entry = sums.get(key)
            ok = entry is not None and entry["reduce"] == reduce
            flat.append(entry["value"] if ok else torch.tensor(identity))
            if reduce == "mean":
                flat.append(entry["count"] if ok else torch.tensor(0.0))
        stacked = torch.stack([v.to(torch.float64).reshape(()) for v in flat]).to(device)
        reduced = trainer.strategy.reduce(stacked, reduce_op=op).cpu()
        i = 0
        for key, reduce in keys:
            entry = sums.get(key)
            value = reduced[i]
            i += 1
            count = None
            if reduce == "mean":
                count = reduced[i]
                i += 1
            if entry is None or entry["reduce"] != reduce:
                continue
            out[key] = {**entry, "value": value.to(entry["value"].dtype)}
            if count is not None:
                out[key]["count"] = count.round().to(entry["count"].dtype)
    return out


def add_epoch_sums(trainer: L.Trainer, saved: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Adds ``saved`` (:func:`epoch_sums` of a checkpoint) into the metrics this process logged in the same epoch
    (after their first update of the epoch); returns the entries whose metric it has not logged yet this epoch. An
    entry whose metric reduces another way now is dropped. Device copies only: no host synchronisation."""
    results = _training_results(trainer)
    left: dict[str, dict[str, Any]] = {}
    for key, entry in saved.items():
        metric = results.get(key)
        if metric is None or metric.has_reset:
            left[key] = entry
            continue
        reduce = _reduction(metric)
        if reduce != entry.get("reduce") or not metric.meta.on_epoch:
            continue
        value = entry["value"].to(device=metric.value.device, dtype=metric.value.dtype)
        if reduce in ("mean", "sum"):
            metric.value = metric.value + value
        else:
            metric.value = torch.maximum(metric.value, value) if reduce == "max" else torch.minimum(metric.value, value)
        if reduce == "mean":
            metric.cumulated_batch_size = metric.cumulated_batch_size + entry["count"].to(
                device=metric.cumulated_batch_size.device, dtype=metric.cumulated_batch_size.dtype)
        metric._computed = None  # no cached epoch value computed before the sums were added
    return left


class ResumeState(Checkpoint):
    """Records the sampler position, the RNG and the epoch means so far in every checkpoint and writes ``last.ckpt``.

    * ``state_dict()`` (stored in every checkpoint): the epoch of the batches being drawn, how many of them
      were trained on, and the RNG states the run continues with (at save time; in a resumed run that has not
      trained a batch yet, the restored ones).
    * On resume the sampler restarts at that epoch and batch; the RNG states are restored just before the
      first resumed training batch (after the data loader was created).
    * ``last.ckpt`` is written every ``every_n_steps`` optimizer steps (0: never mid-epoch), after the batch whose
      step reached or passed a multiple of it (a batch of the alternating methods can take two steps), and at the
      end of every epoch (after validation); a step that ends an epoch is saved by the end-of-epoch checkpoint
      only, and the step a run resumed at is not saved again (with gradient accumulation, inside an accumulation).
    * ``epoch_means`` (in every checkpoint): what the epoch means logged at the end of the epoch under way
      (``train/loss_epoch``, ``train/<term>`` and their parts: every per-batch ``self.log(..., on_epoch=True)`` of
      training) have accumulated so far, Lightning's sums and batch sizes (:func:`epoch_sums`). Lightning keeps
      them in the process only, so a run resumed mid-epoch logged the means of the batches it trained itself. A run
      that resumes into the same epoch, right after the batches the checkpoint counted, adds them into its own once
      its first batch has logged them (:func:`add_epoch_sums`, once per metric); an end-of-epoch checkpoint's are
      never added (the resumed run starts a new epoch). A checkpoint without them (an earlier version) resumes with
      the means of the resumed batches only.

    The end-of-epoch ``last.ckpt`` holds the epoch as every other part of the run recorded it: Lightning calls the
    ``on_train_epoch_end`` of its ``Checkpoint`` callbacks after those of all other callbacks and the module's, in
    the order of the callback list, and :func:`dynametric.engine.trainer.build_trainer` puts this one after the
    ``best.ckpt`` writer (:class:`RunCheckpoint`). So the checkpoint holds that epoch's validation score as the
    best so far (written before ``ModelCheckpoint`` recorded it, a resumed run forgot it and replaced ``best.ckpt``
    with the next, worse, epoch), and the ``plateau`` schedule's step of that epoch, which the module takes in its
    own ``on_train_epoch_end`` (:meth:`dynametric.engine.module.MetricLearningModule._step_plateau`; Lightning
    takes it after every callback's hook).

    Under DDP the state of rank 0 is stored (the batch position is the same on every rank; the RNG of the
    other ranks restarts from rank 0's, which only matters for random choices that differ between ranks). The
    epoch means are those the loggers show, rank 0's: the metrics logged with ``sync_dist`` (``train/loss``) are
    reduced over the processes as the checkpoint is written and restored into rank 0 only (Lightning reduces them
    again at the epoch end), the others (the loss terms) are rank 0's own.

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
        self._trainer: L.Trainer | None = None
        self._pending_means: dict[str, Any] | None = None  # restored, until the first resumed batch
        self._means_left: dict[str, dict[str, Any]] = {}  # restored, for metrics not logged yet this epoch

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        # restored RNG states not yet in use (a checkpoint written by a resumed run before its first batch, e.g. by
        # Lightning repeating the end of the resumed epoch): the ones the run continues with, not today's
        rng = self._pending_rng if self._pending_rng is not None else collect_rng_state()
        return {"epoch": self.epoch, "batches_done": self.batches_done, "rng": rng,
                "elapsed_s": self.restored_elapsed_s + (time.monotonic() - self._created),
                "epoch_means": self._means_state()}

    def _means_state(self) -> dict[str, Any]:
        """The ``epoch_means`` of a checkpoint: the position they were accumulated to and :func:`epoch_sums` (for
        ``sync_dist`` metrics over all processes). Before the first resumed batch, the restored ones."""
        if self._pending_means is not None:
            return self._pending_means
        sums = {} if self._trainer is None else _global_sums(self._trainer, epoch_sums(self._trainer))
        return {"epoch": self.epoch, "batches_done": self.batches_done, "metrics": {**self._means_left, **sums}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.epoch = int(state_dict["epoch"])
        self.batches_done = int(state_dict["batches_done"])
        self.restored_elapsed_s = float(state_dict.get("elapsed_s", 0.0))  # 0: a checkpoint of an older version
        self._pending_rng = state_dict.get("rng")
        means = state_dict.get("epoch_means")  # None: a checkpoint of an earlier version
        self._pending_means = means if isinstance(means, dict) and means.get("metrics") else None
        self._means_left = {}
        self.datamodule.request_resume(self.epoch, self.batches_done)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # a resumed run's step was saved by the checkpoint it resumed from: with gradient accumulation its first
        # batch (no optimizer step) saved it again, in the middle of an accumulation, whose gradient no checkpoint
        # holds (a run killed after that resumed without the batches accumulated so far)
        self._last_saved_step = trainer.global_step
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
        self._restore_means(trainer)
        step = trainer.global_step
        # not after the epoch's last batch: the end-of-epoch checkpoint follows its validation, and Lightning resumes
        # a checkpoint written there as a finished epoch (a run killed while validating never validated that epoch)
        # a multiple of every_n_steps reached or passed since the last save: a batch of the alternating methods takes
        # two optimizer steps, and can step over one
        if (self.every_n_steps > 0 and step > 0
                and step // self.every_n_steps > max(0, self._last_saved_step) // self.every_n_steps
                and not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch):
            self._save(trainer)

    def _restore_means(self, trainer: L.Trainer) -> None:
        """After a batch: at the first resumed one, the checkpoint's epoch sums are added when it continues the
        epoch they were accumulated in, right after them (on rank 0 only under DDP); a metric this process has
        not logged yet is added after a later batch of that epoch."""
        pending, self._pending_means = self._pending_means, None
        if pending is not None:
            same = (int(pending.get("epoch", -1)), int(pending.get("batches_done", -1)) + 1) == \
                (self.epoch, self.batches_done)
            self._means_left = dict(pending["metrics"]) if same and trainer.is_global_zero else {}
        if self._means_left:
            self._means_left = add_epoch_sums(trainer, self._means_left)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending_rng is not None:  # no batch trained since the resume: Lightning repeats an epoch end
            self._undo_repeated_epoch_end(trainer)
        if self._means_left:  # e.g. logged first by the module's on_train_batch_end, which runs after this one's
            add_epoch_sums(trainer, self._means_left)
        self._means_left = {}  # a metric the resumed part of the epoch never logged: its sums end with the epoch
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
        scale = split_monitor(self.monitor.removeprefix("val/"))[0]
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
