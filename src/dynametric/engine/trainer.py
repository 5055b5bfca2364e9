"""Lightning ``Trainer`` construction from :class:`TrainerSettings` (checkpoints, precision, DDP, seeds)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from dynametric.config.schema import OptimConfig, TrainerConfig, check_precision
from dynametric.engine.callbacks import ResumeState
from dynametric.engine.checkpoint import SafeCheckpointIO
from dynametric.engine.data import MetricDataModule
from dynametric.errors import ConfigError

_T, _O = TrainerConfig(), OptimConfig()  # the defaults below are the schema's: one default per choice


@dataclass
class TrainerSettings:
    """Training-loop options, resolved from the ``trainer`` config section (and ``optim.grad_clip``) by
    :func:`dynametric.engine.builders.trainer_settings`. Defaults are the schema's; ``max_steps`` and
    ``checkpoint_every_n_steps`` use Lightning's "off" values (``-1``, ``0``) where the schema says ``None``, and
    ``monitor`` holds the resolved scale name (``finest`` -> ``fine`` for the default data)."""

    max_epochs: int = _T.max_epochs
    max_steps: int = -1 if _T.max_steps is None else _T.max_steps
    precision: str = str(_T.precision)
    accumulate_grad_batches: int = _T.accumulate_grad_batches
    gradient_clip_val: float | None = _O.grad_clip
    accelerator: str = _T.accelerator
    devices: int | str | list[int] = _T.devices  # type: ignore[assignment]
    num_nodes: int = _T.num_nodes
    strategy: str = _T.strategy
    seed: int = _T.seed
    deterministic: bool = _T.deterministic
    val_every_n_epochs: int = _T.val_every
    checkpoint_every_n_steps: int = _T.checkpoint_every_n_steps or 0
    monitor: str = "fine/map@r"
    monitor_mode: str = _T.monitor_mode
    nonfinite: str = _T.nonfinite
    progress_bar: bool = _T.progress_bar
    log_every_n_steps: int = _T.log_every_n_steps
    patience: int | None = _T.patience


def validate_settings(s: TrainerSettings) -> None:
    """The checks of settings built without a config (a config's were made when it loaded), with the schema's
    own rules (:func:`dynametric.config.schema.check_precision`)."""
    s.precision = check_precision(s.precision, "trainer.precision")
    if s.accumulate_grad_batches < 1:
        raise ConfigError("must be >= 1", key="trainer.accumulate_grad_batches")
    if s.monitor_mode not in ("max", "min"):
        raise ConfigError(f"expected 'max' or 'min', got {s.monitor_mode!r}", key="trainer.monitor_mode")
    if s.nonfinite not in ("stop", "skip"):
        raise ConfigError(f"expected 'stop' or 'skip', got {s.nonfinite!r}", key="trainer.nonfinite")
    if s.max_epochs < 1 and s.max_steps < 1:
        raise ConfigError("set trainer.max_epochs or trainer.max_steps to a positive value", key="trainer.max_epochs")


def build_trainer(
    settings: TrainerSettings,
    datamodule: MetricDataModule,
    run_dir: str | Path | None,
    *,
    callbacks: Sequence[L.Callback] = (),
    logger: Any = None,
    enable_validation: bool = True,
) -> L.Trainer:
    """A Trainer writing ``run_dir/last.ckpt`` (every N steps and every epoch) and ``run_dir/best.ckpt``
    (best ``val/<monitor>``), atomically, with exact-resume state; the batch sampler shards data itself."""
    validate_settings(settings)
    cbs: list[L.Callback] = list(callbacks)
    run_dir = None if run_dir is None else Path(run_dir)
    cbs.append(ResumeState(datamodule, None if run_dir is None else run_dir / "last.ckpt",
                           settings.checkpoint_every_n_steps))
    if run_dir is not None and enable_validation:
        cbs.append(ModelCheckpoint(dirpath=run_dir, filename="best", monitor=f"val/{settings.monitor}",
                                   mode=settings.monitor_mode, save_top_k=1, save_last=False,
                                   auto_insert_metric_name=False, enable_version_counter=False))
    if settings.patience is not None and enable_validation:
        cbs.append(EarlyStopping(monitor=f"val/{settings.monitor}", mode=settings.monitor_mode,
                                 patience=settings.patience, check_on_train_epoch_end=False))
    if logger is None and run_dir is not None:
        logger = CSVLogger(save_dir=run_dir, name="", version="logs")
    if settings.progress_bar:
        from dynametric.engine.loggers import MetricProgressBar

        cbs.append(MetricProgressBar())
    return L.Trainer(
        max_epochs=settings.max_epochs if settings.max_steps < 1 else -1,
        max_steps=settings.max_steps,
        precision=settings.precision,  # type: ignore[arg-type]
        accumulate_grad_batches=settings.accumulate_grad_batches,
        gradient_clip_val=settings.gradient_clip_val,
        accelerator=settings.accelerator,
        devices=settings.devices,
        num_nodes=settings.num_nodes,
        strategy=settings.strategy,
        deterministic=settings.deterministic,
        check_val_every_n_epoch=settings.val_every_n_epochs,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        enable_checkpointing=run_dir is not None and enable_validation,
        enable_progress_bar=settings.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=settings.log_every_n_steps,
        logger=logger if logger is not None else False,
        callbacks=cbs,
        plugins=[SafeCheckpointIO()],
        default_root_dir=None if run_dir is None else str(run_dir),
        limit_val_batches=None if enable_validation else 0,
    )
