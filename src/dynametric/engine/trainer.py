"""Lightning ``Trainer`` construction from :class:`TrainerSettings` (checkpoints, precision, DDP, seeds)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from dynametric.engine.callbacks import ResumeState
from dynametric.engine.checkpoint import SafeCheckpointIO
from dynametric.engine.data import MetricDataModule
from dynametric.errors import ConfigError

PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")


@dataclass
class TrainerSettings:
    """Training-loop options (the ``trainer`` config section maps onto these)."""

    max_epochs: int = 10
    max_steps: int = -1
    precision: str = "32-true"
    accumulate_grad_batches: int = 1
    gradient_clip_val: float | None = None
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    seed: int = 0
    deterministic: bool = False
    val_every_n_epochs: int = 1
    checkpoint_every_n_steps: int = 0
    monitor: str = "fine/map@r"
    monitor_mode: str = "max"
    nonfinite: str = "stop"
    progress_bar: bool = True
    log_every_n_steps: int = 10
    patience: int | None = None


def validate_settings(s: TrainerSettings) -> None:
    if str(s.precision) not in PRECISIONS:
        raise ConfigError(f"unknown precision {s.precision!r}; expected one of {list(PRECISIONS)}",
                          key="trainer.precision")
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
