"""The run configuration's schema: one dataclass per section, each checking its own values (``_validate``).

Every key and default is listed in ``docs/config.md``. Reading YAML files and overrides into these classes is
:mod:`dynametric.config.loader`; turning a :class:`Config` into components is :mod:`dynametric.engine.builders`.
The engine's runtime settings take their defaults from these sections (one default and one check per choice).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import typing
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from dynametric import evaluation_defaults
from dynametric.errors import ConfigError, InputError
from dynametric.utils.arguments import short_repr
from dynametric.utils.seeds import check_seed

# --------------------------------------------------------------------------------------------------- schema


@dataclass
class DataConfig:
    """Dataset, transforms, sampler, validation split and loader settings."""

    _named_options = (("format", "options"), ("sampler", "sampler_options"))  # see named_options()

    format: str = "synthetic"
    """Dataset format for ``dynametric.data.build_dataset`` (``synthetic``, ``cub``, ``cars``, ``sop``, ``inshop``,
    ``csv``, ``folder``, ``dyml``, … as the data layer registers them)."""
    root: str | None = None
    """Dataset root directory (not needed for ``synthetic``)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Format-specific keyword arguments for ``build_dataset``."""
    transform: str = "default"
    """Transform preset for ``build_transform(preset, train)``; ``default`` lets the format choose."""
    image_size: int | None = None
    """Training/test crop size; ``None`` keeps the preset's own size."""
    mean: list[float] | None = None
    """Per-channel mean the transforms normalise with (one number per ``model.in_chans`` channel); ``None``: the
    backbone's pretrained statistics (:func:`dynametric.data.transforms.backbone_statistics`: timm's
    ``pretrained_cfg``, ImageNet for dynametric's own backbones)."""
    std: list[float] | None = None
    """Per-channel standard deviation (numbers > 0, one per channel); ``None``: the backbone's, as ``mean``."""
    train_split: str = "train"
    test_split: str = "test"
    val_split: str | None = "auto"
    """Validation data. A split name the format provides (``synthetic`` has ``val``) is used as is; ``auto`` uses
    the format's own ``val`` split when it has one and otherwise behaves like ``None``; ``None`` carves validation
    classes out of the training split: ``val_folds`` class-disjoint folds (fold ``val_fold`` validates, Reality
    Check style) or else a ``val_fraction`` of the training classes (``0`` = no validation)."""
    val_fraction: float = 0.2
    val_folds: int | None = None
    val_fold: int = 0
    val_seed: int = 0
    val_carve_scale: int | str = 0
    """The label scale whose classes a carved validation set holds out: a scale name of the data, ``finest`` /
    ``coarsest``, or a column index (``0`` = finest). A coarser scale moves whole subtrees to validation, so its
    classes are unseen at that scale and every finer one (for ``trainer.monitor: mean/...`` or a coarser scale)."""
    sampler: str = "m_per_class"
    """Batch sampler, a name in ``dynametric.data.samplers.BATCH_SAMPLERS``: ``m_per_class`` | ``three_scale`` |
    ``hierarchical`` | ``random``."""
    m: int = 4
    """Samples per class in a batch (m_per_class / hierarchical); per-scale chunk size for three_scale; not used by
    random (a value other than the default is refused there)."""
    batch_size: int = 32
    iterations_per_epoch: int | None = None
    """Batches per epoch; ``None`` = the sampler's own epoch (one pass over its chunks or items; docs/data.md says
    when that visits every image once)."""
    sampler_scale: int = 0
    """Label column (scale) whose classes m_per_class balances and hierarchical takes as its fine scale; three_scale
    and random do not use it (a value other than the default is refused there)."""
    sampler_options: dict[str, Any] = field(default_factory=dict)
    eval_batch_size: int = 128
    workers: int | str = "auto"
    """DataLoader worker processes, 0 to 128 (:func:`dynametric.utils.device.check_workers`, as ``--workers``), or
    ``auto`` (any case): ``min(16, CPUs / P - 1)`` when training on a CUDA GPU (P = ``trainer.devices`` on this
    machine), else 0; fewer where the open-file limit (``ulimit -n``) allows fewer, with a ``note:`` line."""
    pin_memory: bool | None = None
    """Page-locked batches for non-blocking copies to the GPU; ``None``: on when training on a CUDA GPU; always off on
    a CPU run (nothing to pin for)."""
    persistent_workers: bool = True
    """Keep the worker processes between epochs (no start-up stall per epoch; only with workers > 0)."""
    prefetch_factor: int = 4
    """Batches each worker prepares ahead (only with workers > 0)."""

    def _validate(self, key: str) -> None:
        from dynametric.data.registry import format_names
        from dynametric.data.transforms import PRESETS
        from dynametric.utils.registry import with_import_hint

        formats = format_names()  # the live registry: a user's module may have added a format (docs/extending.md)
        if self.format not in formats:
            raise ConfigError(with_import_hint(f"unknown dataset format {self.format!r}" + (
                _suggest(self.format, formats) or f"; valid formats: {', '.join(formats)}")), key=f"{key}.format")
        from dynametric.data.samplers import BATCH_SAMPLERS
        from dynametric.utils.device import check_workers

        if self.sampler not in BATCH_SAMPLERS:
            raise ConfigError(with_import_hint(f"unknown sampler {self.sampler!r}" + (
                _suggest(self.sampler, BATCH_SAMPLERS) or f"; valid samplers: {', '.join(BATCH_SAMPLERS)}")),
                key=f"{key}.sampler")
        presets = ["default", *PRESETS]
        if self.transform not in presets:
            raise ConfigError(f"unknown transform preset {self.transform!r}" + (_suggest(self.transform, presets)
                              or f"; valid presets: {', '.join(presets)}"), key=f"{key}.transform")
        _positive(self.batch_size, f"{key}.batch_size")
        _positive(self.m, f"{key}.m")
        _positive(self.eval_batch_size, f"{key}.eval_batch_size")
        self.workers = check_workers(self.workers, f"{key}.workers")  # auto in any case, as --workers takes it
        _positive(self.prefetch_factor, f"{key}.prefetch_factor")
        _non_negative(self.sampler_scale, f"{key}.sampler_scale")
        check_seed(self.val_seed, f"{key}.val_seed")
        if isinstance(self.val_carve_scale, int):
            _non_negative(self.val_carve_scale, f"{key}.val_carve_scale")
        elif not self.val_carve_scale.strip():
            raise ConfigError(f"expected {self._carve_scales()}, got {self.val_carve_scale!r} (blank)",
                              key=f"{key}.val_carve_scale")
        if self.image_size is not None:
            _positive(self.image_size, f"{key}.image_size")
        if self.iterations_per_epoch is not None:
            _positive(self.iterations_per_epoch, f"{key}.iterations_per_epoch")
        for name, users in sampler_keys().items():  # a key the sampler ignores, set: refused, never dropped
            value, default = getattr(self, name), schema_default(f"data.{name}")
            if self.sampler not in users and value != default:
                raise ConfigError(f"sampler {self.sampler!r} does not use {name} (got {value!r}; it applies to "
                                  f"{_either(users)}): remove {key}.{name} or set it to its "
                                  f"default {default!r}", key=f"{key}.{name}")
        if BATCH_SAMPLERS[self.sampler].m_divides_batch and self.batch_size % self.m:
            # keyed as the one-class rule keys it: data.m when it was changed from its default
            raise ConfigError(f"data.batch_size {self.batch_size} must be a multiple of data.m {self.m} (a batch "
                              "holds whole classes of m images)",
                              key=f"{key}.m" if self.m != schema_default("data.m") else f"{key}.batch_size")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"expected a fraction in [0, 1), got {self.val_fraction}", key=f"{key}.val_fraction")
        if self.val_folds is not None:
            if self.val_folds < 2:
                raise ConfigError(f"expected >= 2 folds or null, got {self.val_folds}", key=f"{key}.val_folds")
            if not 0 <= self.val_fold < self.val_folds:
                raise ConfigError(f"expected 0 <= val_fold < val_folds={self.val_folds}, got {self.val_fold}",
                                  key=f"{key}.val_fold")

    def _carve_scales(self) -> str:
        """What ``val_carve_scale`` takes, with the scale names of the format when it fixes them without its data
        (:func:`dynametric.data.registry.declared_scale_names`)."""
        from dynametric.data.registry import declared_scale_names

        try:
            names = declared_scale_names(self.format, **self.options)
            whose = f" (the {self.format} format takes them from the data)"
        except (InputError, TypeError):  # bad options: refused with their own message when the data is read
            names, whose = None, ""
        if not names:
            return f"a scale name of the data{whose}, 'finest', 'coarsest' or a column index (0 = finest)"
        return (f"a scale name of the {self.format} data {list(names)}, 'finest', 'coarsest' or a column index "
                f"(0..{len(names) - 1})")


@dataclass
class ModelConfig:
    """Keyword arguments of :func:`dynametric.models.build_embedder` (same names, same defaults except the
    backbone: the default config trains ``simple_cnn`` on the synthetic data)."""

    _named_options = (("backbone", "backbone_kwargs"),)

    backbone: str = "simple_cnn"
    pretrained: bool = False
    pretrained_path: str | None = None
    embedding_dim: int | None = 128
    pooling: Literal["avg", "max", "avgmax", "catavgmax", "token"] = "avg"
    normalize: bool = True
    freeze_bn: bool = False
    num_heads: int = 1
    head_dims: list[int | None] | None = None
    in_chans: int = 3
    head_names: list[str] | None = None
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    channels_last: bool | None = None
    """Train in the channels_last memory format; ``None``: on for convolutional backbones on a CUDA GPU (not a
    :func:`~dynametric.models.build_embedder` argument)."""

    def _validate(self, key: str) -> None:
        from dynametric.models.backbones import check_backbone_kwargs

        _positive(self.num_heads, f"{key}.num_heads")
        _positive(self.in_chans, f"{key}.in_chans")
        check_backbone_kwargs(self.backbone, self.backbone_kwargs)  # pretrained, in_chans, global_pool: ours
        if self.embedding_dim is not None:
            _positive(self.embedding_dim, f"{key}.embedding_dim")
        if self.pretrained and self.pretrained_path is not None:
            raise ConfigError("set either pretrained (download) or pretrained_path (local file), not both",
                              key=f"{key}.pretrained_path")
        for name, value in (("head_dims", self.head_dims), ("head_names", self.head_names)):
            if value is not None and len(value) != self.num_heads:
                raise ConfigError(f"expected {self.num_heads} entries (num_heads), got {len(value)}",
                                  key=f"{key}.{name}")
        if self.head_names is not None:
            from dynametric.models.embedder import check_head_names

            check_head_names(self.head_names, f"{key}.head_names")
        for i, dim in enumerate(self.head_dims or []):
            if dim is not None and dim < 1:
                raise ConfigError(f"expected a positive integer (a head's width) or null, got {dim}",
                                  key=f"{key}.head_dims[{i}]")
        from dynametric.models.heads import MAX_EMBEDDING_DIM

        widths = [("embedding_dim", self.embedding_dim), *((f"head_dims[{i}]", d) for i, d in
                                                          enumerate(self.head_dims or []))]
        for name, dim in widths:  # as build_embedder says it (torch sizes a layer with a C int)
            if dim is not None and dim > MAX_EMBEDDING_DIM:
                raise ConfigError(f"a head's width must be an integer from 1 to {MAX_EMBEDDING_DIM} or null, got "
                                  f"{dim}", key=f"{key}.{name}")


@dataclass
class MinerConfig:
    """A miner from ``dynametric.miners.MINERS`` and its constructor keyword arguments."""

    _named_options = (("name", "kwargs"),)

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def _validate(self, key: str) -> None:
        _known_name(self.name, "dynametric.miners", "MINERS", "miner", f"{key}.name")


@dataclass
class LossConfig:
    """A loss from ``dynametric.losses.LOSSES``, its keyword arguments, and how it is applied.

    ``multiscale: true`` wraps it in ``MultiScaleLoss`` (one copy per label scale, weighted by ``scale_weights``;
    ``None`` = equal weights); otherwise the loss uses its own ``scale`` keyword (default 0, the finest).
    ``head`` names the model head it trains (``None`` = the single output); ``weight`` multiplies the term.
    """

    _named_options = (("name", "kwargs"),)

    name: str = "TripletMarginLoss"
    kwargs: dict[str, Any] = field(default_factory=dict)
    multiscale: bool = False
    scale_weights: list[float] | None = None
    head: str | None = None
    weight: float = 1.0

    def _validate(self, key: str) -> None:
        _known_name(self.name, "dynametric.losses", "LOSSES", "loss", f"{key}.name")
        _loss_values(self.name, self.kwargs, f"{key}.kwargs")
        if self.multiscale:
            _not_multiscale_by_itself(self.name, key)
        # Also the decorrelation term's rho: its gradient-reversal layer, not the weight's sign, makes it adversarial.
        if not (math.isfinite(self.weight) and self.weight >= 0):
            raise ConfigError(f"expected a non-negative weight, got {self.weight}", key=f"{key}.weight")
        if self.scale_weights is not None:
            if not self.multiscale:
                raise ConfigError("scale_weights needs multiscale: true", key=f"{key}.scale_weights")
            if (not all(math.isfinite(w) and w >= 0 for w in self.scale_weights)
                    or not any(w > 0 for w in self.scale_weights)):
                raise ConfigError(f"expected finite non-negative weights, not all zero, got {self.scale_weights}",
                                  key=f"{key}.scale_weights")


@dataclass(kw_only=True)
class ExtraLossConfig(LossConfig):
    """An additional loss term (e.g. the shared-head loss of Sharing Matters) with its own miner; ``name`` is
    required here (no default term is added silently)."""

    name: str = field()  # explicit field(): a bare annotation would inherit LossConfig's default
    miner: MinerConfig | None = None
    term: str | None = None
    """Name under which the term is logged (default: ``<name>@<head>``)."""


@dataclass
class ParamGroupConfig:
    """Per-group overrides of ``optim.lr`` / ``optim.weight_decay`` (``None`` = inherit)."""

    lr: float | None = None
    weight_decay: float | None = None


@dataclass
class SchedulerConfig:
    """Learning-rate schedule: a factor on every parameter group's rate, after an optional linear warm-up over
    ``warmup_epochs``. Each key but ``name`` applies to some schedules only (:data:`SCHEDULE_KEYS`); one set to
    another value than its default for a schedule that does not use it is refused, as is a factor or final rate
    that would drive the rate below 0 or above ``optim.lr``."""

    name: Literal["none", "step", "multistep", "cosine", "plateau"] = "none"
    step_size: int = 30
    gamma: float = 0.1
    milestones: list[int] = field(default_factory=list)
    warmup_epochs: int = 0
    min_lr: float = 0.0
    interval: Literal["epoch", "step"] = "epoch"

    def _validate(self, key: str) -> None:
        for name, schedules in SCHEDULE_KEYS.items():  # a key the schedule ignores, set: refused, never dropped
            value = getattr(self, name)
            default = schema_default(f"optim.scheduler.{name}")
            if self.name not in schedules and value != default:
                hint = (", or use name: multistep to multiply the rate by gamma at each epoch in milestones"
                        if name == "milestones" else "")
                raise ConfigError(f"scheduler {self.name!r} does not use {name} (got {value!r}; it applies to "
                                  f"{' and '.join(repr(s) for s in schedules)}): remove {key}.{name} or set it to "
                                  f"its default {default!r}{hint}", key=f"{key}.{name}")
        _positive(self.step_size, f"{key}.step_size")
        _non_negative(self.warmup_epochs, f"{key}.warmup_epochs")
        if self.name == "multistep":
            if not self.milestones:
                raise ConfigError("scheduler 'multistep' needs milestones", key=f"{key}.milestones")
            if any(m < 1 for m in self.milestones) or len(set(self.milestones)) != len(self.milestones):
                raise ConfigError(f"expected distinct epochs >= 1 (the rate drops when an epoch reaches one), got "
                                  f"{self.milestones}", key=f"{key}.milestones")
        if self.name == "plateau" and not (0 < self.gamma < 1):  # ReduceLROnPlateau: 0 <= factor < 1
            raise ConfigError(f"scheduler 'plateau' multiplies the rate by gamma when the monitor stalls: expected "
                              f"0 < gamma < 1, got {self.gamma}", key=f"{key}.gamma")
        if self.name in ("step", "multistep") and not (0 < self.gamma <= 1):
            raise ConfigError(f"scheduler {self.name!r} multiplies the rate by gamma at each drop: expected "
                              f"0 < gamma <= 1 (a larger one would raise the rate above optim.lr), got {self.gamma}",
                              key=f"{key}.gamma")
        if self.name == "cosine":  # <= optim.lr: OptimConfig._validate
            _finite_non_negative(self.min_lr, f"{key}.min_lr", "the final learning rate (min_lr)")


SCHEDULE_KEYS: dict[str, tuple[str, ...]] = {
    "step_size": ("step", "plateau"),
    "gamma": ("step", "multistep", "plateau"),
    "milestones": ("multistep",),
    "warmup_epochs": ("none", "step", "multistep", "cosine"),
    "min_lr": ("cosine",),
    "interval": ("cosine",),
}
"""The schedules (``optim.scheduler.name``) that use each key of ``optim.scheduler``: ``step_size`` is ``step``'s
period and ``plateau``'s patience; ``interval`` chooses whether ``cosine`` changes the rate every step or every
epoch (the others change it at epoch boundaries); ``plateau`` has no warm-up."""

_KEYS_BY_CHOICE: dict[type, tuple[str, Mapping[str, tuple[str, ...]]]] = {SchedulerConfig: ("name", SCHEDULE_KEYS)}


@dataclass
class OptimConfig:
    """Optimiser with three parameter groups: ``backbone``, ``head`` and ``loss`` (learnable loss parameters:
    proxies, margins β, class weights), each with its own lr / weight decay."""

    _named_options = (("name", "kwargs"),)

    name: Literal["adam", "adamw", "sgd", "rmsprop"] = "adam"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    """SGD / RMSprop momentum."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Further optimiser keyword arguments (``betas``, ``eps``, ``nesterov``, …)."""
    backbone: ParamGroupConfig = field(default_factory=ParamGroupConfig)
    head: ParamGroupConfig = field(default_factory=ParamGroupConfig)
    loss: ParamGroupConfig = field(default_factory=ParamGroupConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    grad_clip: float | None = None
    """Clip the global gradient norm to this value (``None`` = off)."""

    def _validate(self, key: str) -> None:
        _finite_non_negative(self.lr, f"{key}.lr", "learning rate")
        _finite_non_negative(self.weight_decay, f"{key}.weight_decay", "weight decay")
        _finite_non_negative(self.momentum, f"{key}.momentum", "momentum")
        for name in ("backbone", "head", "loss"):
            group: ParamGroupConfig = getattr(self, name)
            if group.lr is not None:
                _finite_non_negative(group.lr, f"{key}.{name}.lr", "learning rate")
            if group.weight_decay is not None:
                _finite_non_negative(group.weight_decay, f"{key}.{name}.weight_decay", "weight decay")
        if self.grad_clip is not None and not (math.isfinite(self.grad_clip) and self.grad_clip > 0):
            raise ConfigError(f"gradient clipping norm must be a positive finite number (or null = off), got "
                              f"{self.grad_clip}", key=f"{key}.grad_clip")
        s = self.scheduler
        if s.name == "cosine" and s.min_lr > self.lr:  # the cosine factor runs from 1 to min_lr / lr
            raise ConfigError(f"the cosine schedule's final rate min_lr {s.min_lr} is above optim.lr {self.lr}: it "
                              f"would raise the rate; expected 0 <= min_lr <= optim.lr", key=f"{key}.scheduler.min_lr")
        if self.name in ("adam", "adamw") and self.momentum != OptimConfig.momentum:
            raise ConfigError(f"optimizer {self.name!r} has no momentum (got {self.momentum}; it applies to 'sgd' and "
                              f"'rmsprop'): remove {key}.momentum (Adam's moment decay rates are "
                              f"{key}.kwargs.betas)", key=f"{key}.momentum")

    def group_lr(self, group: Literal["backbone", "head", "loss"]) -> float:
        value = getattr(self, group).lr
        return self.lr if value is None else value

    def group_weight_decay(self, group: Literal["backbone", "head", "loss"]) -> float:
        value = getattr(self, group).weight_decay
        return self.weight_decay if value is None else value


PRECISIONS = ("32", "32-true", "64", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")


def check_precision(value: int | str, key: str) -> str:
    """``value`` as the string Lightning takes (YAML reads ``precision: 32`` as an int), if it is one of
    :data:`PRECISIONS`: the one check of a training precision, for the config and for the engine's settings."""
    text = str(value)
    if text not in PRECISIONS:
        short = _LIGHTNING_SHORT_PRECISIONS.get(text)
        hint = (f"; Lightning reads {text!r} as {short!r} (mixed precision over float32 weights): write {short!r}"
                if short else _suggest(text, PRECISIONS))
        raise ConfigError(f"expected one of {list(PRECISIONS)}, got {text!r}" + hint, key=key)
    return text


_LIGHTNING_SHORT_PRECISIONS = {"bf16": "bf16-mixed", "16": "16-mixed", "32": "32-true", "64": "64-true"}
"""Lightning's short precision names that dynametric does not take, and what Lightning means by them (the
closest spelling would point ``bf16`` at ``bf16-true``, 16-bit weights: another mode)."""


FP16_PRECISIONS = ("16-mixed", "16-true")
"""The training precisions that compute in float16: they need a CUDA GPU (as ``--precision fp16`` does)."""


def inference_precision(trainer_precision: int | str) -> str:
    """The inference precision (``fp32``, ``bf16``, ``fp16``, as ``--precision`` names them) that computes as a run
    with ``trainer.precision`` did when it validated and tested: ``bf16-mixed`` / ``bf16-true`` -> ``bf16``,
    ``16-mixed`` / ``16-true`` -> ``fp16``, ``32`` / ``64`` -> ``fp32`` (inference has no float64). Under the
    ``-true`` precisions the weights themselves were 16-bit, which autocast over float32 weights does not reproduce
    exactly."""
    text = str(trainer_precision)
    if text in FP16_PRECISIONS:
        return "fp16"
    return "bf16" if text.startswith("bf16") else "fp32"


def accelerator_names() -> list[str]:
    """The ``trainer.accelerator`` values the installed Lightning accepts: ``auto``, ``gpu`` (CUDA or Apple MPS,
    whichever is here) and the names in its ``AcceleratorRegistry``."""
    from lightning.pytorch.accelerators import AcceleratorRegistry

    return ["auto", "gpu", *sorted(AcceleratorRegistry.available_accelerators())]


def strategy_names() -> list[str]:
    """The ``trainer.strategy`` values the installed Lightning accepts: ``auto`` and the names in its
    ``StrategyRegistry`` (in its order: ``ddp``, ``ddp_spawn``, …)."""
    from lightning.pytorch.strategies import StrategyRegistry

    return ["auto", *StrategyRegistry.available_strategies()]


def check_accelerator(value: str, key: str) -> str:
    """``value`` in lower case if the installed Lightning accepts it as an accelerator name
    (:func:`accelerator_names`); whether it is usable on this machine is checked when training starts
    (:func:`dynametric.engine.trainer.check_trainer`), not when a config loads."""
    return _check_lightning_name(value, key, "accelerator", accelerator_names)


def check_strategy(value: str, key: str) -> str:
    """``value`` in lower case if it is ``auto`` or a strategy registered with the installed Lightning
    (:func:`strategy_names`), except those that start their processes inside every Lightning call (``ddp_spawn``,
    ``ddp_fork``, ``ddp_notebook`` and their variants): what those processes compute (the evaluation's results)
    never comes back to the process that called, so a run crashed after writing its first files."""
    text = _check_lightning_name(value, key, "strategy", strategy_names)
    if text.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook")):
        raise ConfigError(f"strategy {value!r} starts new processes inside every Lightning call and their results do "
                          "not come back to this process, which dynametric train needs; use ddp (trainer.devices: N "
                          "starts N processes on this machine)", key=key)
    return text


def _check_lightning_name(value: str, key: str, kind: str, names: Callable[[], list[str]]) -> str:
    text = str(value).strip().lower()
    if text == "auto":  # the default: no Lightning import when a config loads
        return text
    valid = names()
    if text not in valid:
        import lightning

        raise ConfigError(f"unknown {kind} {value!r}; expected one of {', '.join(valid)} (Lightning "
                          f"{lightning.__version__})" + _suggest(text, valid), key=key)
    return text


@dataclass
class TrainerConfig:
    """Training loop settings (Lightning ``Trainer`` arguments and dynametric's own)."""

    max_epochs: int = 10
    max_steps: int | None = None
    """Stop after this many optimisation steps (``None`` = only ``max_epochs``)."""
    precision: int | str = "32"
    """``32`` | ``16-mixed`` | ``bf16-mixed`` | ``64`` | ``16-true`` | ``bf16-true`` (Lightning's names); the float16
    ones (:data:`FP16_PRECISIONS`) need a CUDA GPU and are refused when training starts on the CPU."""
    accumulate_grad_batches: int = 1
    accelerator: str = "auto"
    """``auto`` | ``cpu`` | ``gpu`` | ``cuda`` | ``mps`` | ``tpu`` (the names the installed Lightning accepts, any
    case); one that is not usable on this machine is refused when training (or a dry run) starts."""
    devices: int | str | list[int] = 1
    num_nodes: int = 1
    strategy: str = "auto"
    """``auto`` | ``ddp`` | ``ddp_spawn`` | … (the strategies registered with the installed Lightning, any case)."""
    seed: int = 0
    deterministic: bool = False
    val_every: int = 1
    """Validate every N epochs."""
    nonfinite: Literal["stop", "skip"] = "stop"
    """A non-finite loss or model output stops the run with the step named (``stop``) or skips the step with a
    counted warning."""
    monitor: str = "finest/map@r"
    """``<scale>/<metric>`` (or ``mean/<metric>``) of the validation metrics that selects the best checkpoint;
    ``finest`` / ``coarsest`` stand for the dataset's first / last scale, whatever its name."""
    monitor_mode: Literal["max", "min"] = "max"
    patience: int | None = None
    """Early stopping after this many validation rounds without improvement (``None`` = off)."""
    checkpoint_every_n_steps: int | None = None
    """Also write ``last.ckpt`` every N steps (``None``: at the end of every epoch only)."""
    log_every_n_steps: int = 10
    progress_bar: bool = True
    compile: bool = False
    """``torch.compile`` the embedder for training (in place: checkpoints keep their keys)."""
    sync_batchnorm: bool = False
    """With several processes (DDP), normalise BatchNorm layers with the statistics of the whole global batch
    (Lightning's ``sync_batchnorm``: torch's ``SyncBatchNorm``, one more all-reduce per layer and step); off, each
    process normalises with its own batch's statistics, so a multi-process run of a model with BatchNorm is not the
    single-process computation on the global batch. Without BatchNorm, or in one process, it changes nothing."""

    def _validate(self, key: str) -> None:
        _positive(self.max_epochs, f"{key}.max_epochs")
        _positive(self.accumulate_grad_batches, f"{key}.accumulate_grad_batches")
        _positive(self.val_every, f"{key}.val_every")
        _positive(self.num_nodes, f"{key}.num_nodes")
        _positive(self.log_every_n_steps, f"{key}.log_every_n_steps")
        for name in ("max_steps", "patience", "checkpoint_every_n_steps"):
            if getattr(self, name) is not None:
                _positive(getattr(self, name), f"{key}.{name}")
        check_seed(self.seed, f"{key}.seed")
        _check_devices(self.devices, f"{key}.devices")
        self.precision = check_precision(self.precision, f"{key}.precision")
        self.accelerator = check_accelerator(self.accelerator, f"{key}.accelerator")
        self.strategy = check_strategy(self.strategy, f"{key}.strategy")
        if "/" not in self.monitor:
            raise ConfigError(f"expected '<scale>/<metric>' such as 'fine/map@r', got {self.monitor!r}",
                              key=f"{key}.monitor")


@dataclass
class EvalConfig:
    """Evaluation settings, passed to ``dynametric.metrics.evaluate_embeddings``; the defaults of ``k_values``,
    ``distance`` and ``empty_queries`` are the function's own (:mod:`dynametric.evaluation_defaults`)."""

    metrics: list[str] | None = None
    """Metric names as ``evaluate_embeddings`` takes them (``recall@K``, ``precision@K``, ``map@K`` or one ``@<int>``
    cut-off of each, ``r_precision``, ``map@r``, ``map``, ``asi``, ``fnmr@fmr=<percent>``, ``nmi``, ``f1``, ``all``);
    ``None`` = the evaluation engine's default set."""
    k_values: list[int] = field(default_factory=lambda: list(evaluation_defaults.K_VALUES))
    distance: Literal["cosine", "euclidean"] = evaluation_defaults.DISTANCE
    """The retrieval distance (``evaluate_embeddings(distance=...)``, ``dynametric evaluate --distance``)."""
    protocol: Literal["leave_one_out", "query_gallery"] = "leave_one_out"
    """``leave_one_out``: every test item queries the rest (CUB, CARS, SOP); ``query_gallery``: fixed query and
    gallery splits (In-Shop, DyML Vehicle/Animal)."""
    query_split: str = "query"
    gallery_split: str = "gallery"
    query_in_gallery: bool = False
    """``query_gallery`` only: whether queries are themselves gallery items (the same resolved file path and crop
    box); ``true`` excludes each query's own item from its ranking. It must state what the data is: ``false`` with a
    query in the gallery (it would find itself) or ``true`` with none is refused before anything is embedded."""
    heads: list[str] | None = None
    """Heads to evaluate for multi-head models (plus ``concat``); ``None`` = every head and ``concat``."""
    empty_queries: Literal["exclude", "count_as_zero", "zero"] = evaluation_defaults.EMPTY_QUERIES
    """Queries without a relevant item: ``exclude`` (left out of the means and counted) or ``count_as_zero`` (scored
    0), the spellings of ``evaluate_embeddings(empty_queries=...)`` and ``dynametric evaluate --empty-queries``;
    ``zero`` is an older spelling of ``count_as_zero``, still accepted."""
    memory_budget_bytes: int | None = None
    per_category: bool = True
    """Where the query split carries categories (an ``oml`` CSV's ``category`` column), report every retrieval
    metric per query category as well (the results' ``by_category``, as open-metric-learning's report); ``false``
    leaves it out."""

    def _validate(self, key: str) -> None:
        if not self.k_values or any(k < 1 for k in self.k_values):
            raise ConfigError(f"expected positive k values, got {self.k_values}", key=f"{key}.k_values")
        if self.memory_budget_bytes is not None:
            _positive(self.memory_budget_bytes, f"{key}.memory_budget_bytes")


@dataclass
class MethodConfig:
    """Method-specific options (PDDM, Sharing Matters / MIC, CSL …): ``name`` selects the engine's method hook,
    ``kwargs`` are validated by that method."""

    _named_options = (("name", "kwargs"),)

    name: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """Where and under which name a run writes its folder (``<output_dir>/<name>``)."""

    _named_options = (("logger", "logger_options"),)

    output_dir: str = "runs"
    name: str | None = None
    """Run folder name; ``None`` = a timestamp plus the config hash."""
    report: bool = True
    """Write ``report.html`` with curves, metric bars, embedding map and a retrieval gallery."""
    logger: str = "csv"
    """Experiment logger: ``csv``, ``tensorboard``, ``wandb``, ``mlflow`` (the last three need the extra of that name)
    or one a user's module registers (``dynametric.utils.logger_registry.LOGGERS``, docs/extending.md); it receives
    the loss, per-scale validation/test metrics and the report's figures."""
    logger_options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the Lightning logger (e.g. wandb ``project``, ``offline``; mlflow ``tracking_uri``), or
    of a registered logger's factory."""

    def _validate(self, key: str) -> None:
        from dynametric.utils.logger_registry import logger_names
        from dynametric.utils.registry import with_import_hint

        if self.name is not None:
            _check_run_name(self.name, f"{key}.name")
        names = logger_names()  # the live registry: a user's module may have added a logger (docs/extending.md)
        if self.logger not in names:
            raise ConfigError(with_import_hint(f"unknown logger {self.logger!r}" + (
                _suggest(self.logger, names) or f"; valid loggers: {', '.join(names)}")), key=f"{key}.logger")


@dataclass
class Config:
    """The whole run configuration. ``Config()`` is the default: ``simple_cnn`` on the synthetic hierarchy."""

    imports: list[str] = field(default_factory=list)
    """Modules imported before the rest of the config is checked, for the components they register (a loss in
    ``LOSSES``, a dataset format in ``FORMATS``, ...: docs/extending.md); recorded in the run's ``config.yaml``, so
    that ``--resume``, ``evaluate``, ``embed`` and ``export`` import them again (:func:`dynametric.config.loader.
    config_from_dict`). Importing runs their code: only modules installed in the environment are found."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    miner: MinerConfig | None = None
    extra_losses: list[ExtraLossConfig] = field(default_factory=list)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def loss_terms(self) -> list[tuple[str, LossConfig, MinerConfig | None]]:
        """The loss terms with their config keys and miners: ``("loss", loss, miner)``, then
        ``("extra_losses[i]", term, term.miner)`` for each extra term."""
        terms: list[tuple[str, LossConfig, MinerConfig | None]] = [("loss", self.loss, self.miner)]
        return terms + [(f"extra_losses[{i}]", t, t.miner) for i, t in enumerate(self.extra_losses)]

    def _validate(self, key: str) -> None:
        heads = self.model.head_names or None
        if self.model.num_heads > 1:
            from dynametric.models.embedder import default_head_names

            heads = heads or list(default_head_names(self.model.num_heads))
        for where, term, _ in self.loss_terms():
            if term.head is None or term.head == "concat":
                continue
            if heads is None:
                raise ConfigError(f"the model has a single head; head {term.head!r} needs model.num_heads > 1",
                                  key=f"{where}.head")
            if term.head not in heads:
                raise ConfigError(f"unknown head {term.head!r}; the model's heads are {heads}"
                                  + _suggest(term.head, heads), key=f"{where}.head")
        if self.model.num_heads > 1 and heads is not None:  # the heads the test evaluates (a single output: none)
            for name in self.eval.heads or []:
                if name not in [*heads, "concat"]:
                    raise ConfigError(f"unknown head {name!r}; expected the model's heads {heads} or 'concat'"
                                      + _suggest(name, [*heads, "concat"]), key="eval.heads")
        self._validate_monitor()
        self._validate_normalization()
        warmup = self.optim.scheduler.warmup_epochs
        if warmup and warmup >= self.trainer.max_epochs:
            raise ConfigError(f"a warm-up of {warmup} epochs covers the whole run (trainer.max_epochs = "
                              f"{self.trainer.max_epochs}): the rate would never reach optim.lr; expected fewer "
                              "epochs than trainer.max_epochs", key="optim.scheduler.warmup_epochs")
        self._validate_classes_per_batch()

    def _validate_classes_per_batch(self) -> None:
        """A sampler that fills a batch with ``data.m`` images per class (``m_per_class``, ``hierarchical``) holds
        ``data.batch_size / data.m`` classes; one class gives a loss term that compares the batch's embeddings with
        each other no negative pair: it would train on nothing (loss 0, only weight decay moving the weights).
        Terms that compare embeddings with learned class weights (proxy and classification losses) or use no
        labels learn from one class per batch (:func:`pairs_in_batch`). ``three_scale`` with one item per batch is
        the same for a ``multiscale`` term (each scale's chunk is one class): refused here when the number of
        sampled scales is known without the data (``data.sampler_options.scales``, or the format's declared scale
        names), else by the run's preflight (:func:`three_scale_items_error`)."""
        from dynametric.data.samplers import BATCH_SAMPLERS, ThreeScaleSampler

        data = self.data
        sampler_cls = BATCH_SAMPLERS[data.sampler]
        # the class decides, not the name: a user's sampler registered under another name that extends three_scale's
        # (docs/extending.md) fills its batches the same way, as the preflight's check (by class) already says
        if isinstance(sampler_cls, type) and issubclass(sampler_cls, ThreeScaleSampler):
            scales = data.sampler_options.get("scales")
            count = len(scales) if isinstance(scales, (list, tuple)) and scales else None
            if count is None:
                from dynametric.data.registry import declared_scale_names

                try:
                    names = declared_scale_names(data.format, **data.options)
                except (InputError, TypeError):  # bad options: refused with their own message when the data is read
                    names = None
                count = len(names) if names else None
            error = None if count is None else three_scale_items_error(self, count)
            if error is not None:
                raise error
            return
        if not sampler_cls.m_divides_batch or data.batch_size // data.m >= 2:
            return
        for _where, what in batch_comparing_terms(self):
            key = "data.m" if data.m != schema_default("data.m") else "data.batch_size"
            raise ConfigError(f"a batch of data.batch_size {data.batch_size} with data.m {data.m} images per class "
                              f"holds one class: {what}, and without a negative pair it would train on nothing; "
                              f"expected data.batch_size / data.m >= 2 (e.g. data.batch_size {2 * data.m}"
                              + (f" or data.m {data.batch_size // 2}" if data.batch_size % 2 == 0 else "") + ")",
                              key=key)

    def _validate_normalization(self) -> None:
        """``data.mean`` / ``data.std``: one finite number per input channel (``model.in_chans``), std > 0."""
        channels = int(self.model.in_chans)
        for name in ("mean", "std"):
            value = getattr(self.data, name)
            if value is None:
                continue
            numbers = value if isinstance(value, list | tuple) else None
            if numbers is None or len(numbers) != channels or not all(
                    isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
                raise ConfigError(f"expected a list of {channels} numbers, one per input channel (model.in_chans = "
                                  f"{channels}), got {value!r}", key=f"data.{name}")
            if name == "std" and min(numbers) <= 0:
                raise ConfigError(f"every std must be > 0, got {list(numbers)}", key="data.std")
            setattr(self.data, name, [float(v) for v in numbers])

    def _validate_monitor(self) -> None:
        """``trainer.monitor``'s metric must be one the validation rounds compute (eval.metrics, eval.k_values);
        its scale is checked against the data's scale names when the run starts."""
        from dynametric.metrics.evaluate import _parse_metrics
        from dynametric.metrics.ranking import canonical_metric_name

        metric = split_monitor(self.trainer.monitor)[1]
        try:
            computed, *_ = _parse_metrics(self.eval.metrics, self.eval.k_values)
        except ConfigError as exc:  # the library names its argument (metrics); a config names its key
            raise ConfigError(exc.message, key="eval.metrics") from None
        if metric not in computed:
            named = canonical_metric_name(metric)  # an alias (cmc@1): the results name it recall@1
            hint = (f"; the results call {metric!r} {named!r}" if named != metric and named in computed
                    else _suggest(metric, computed))
            raise ConfigError(f"monitor metric {metric!r} is not computed by validation; expected one of {computed} "
                              "after the scale (eval.metrics and eval.k_values choose them)" + hint,
                              key="trainer.monitor")


SCALE_ALIASES = ("finest", "coarsest")


def split_monitor(monitor: str) -> tuple[str, str]:
    """``trainer.monitor`` as ``(scale, metric)``, split at its last ``/``: a metric name never holds a ``/`` but a
    scale name may (a CSV header ``genus/sub``: ``genus/sub/map@r`` -> ``("genus/sub", "map@r")``). Without a
    ``/``: ``("", monitor)``. Every place that reads the monitor splits it here."""
    scale, _, metric = monitor.rpartition("/")
    return scale, metric


def resolve_monitor(monitor: str, scale_names: Sequence[str]) -> str:
    """``finest/<metric>`` -> ``<first scale>/<metric>``, ``coarsest/<metric>`` -> ``<last scale>/<metric>``;
    any other monitor is returned unchanged (a real scale name wins over an alias of the same spelling)."""
    scale, metric = split_monitor(monitor)
    names = list(scale_names)
    if "/" not in monitor or not names or scale in names or scale not in SCALE_ALIASES:
        return monitor
    return f"{names[0] if scale == 'finest' else names[-1]}/{metric}"


def scale_index(scale: int | str, scale_names: Sequence[str], key: str) -> int:
    """The label column ``scale`` names among ``scale_names``: a column index, a scale name, or ``finest`` /
    ``coarsest`` (the first / last column; a real scale name wins over an alias of the same spelling). Anything
    else is a :class:`ConfigError` on ``key`` listing the valid values."""
    names = list(scale_names)
    if isinstance(scale, int) and not isinstance(scale, bool):
        if 0 <= scale < len(names):
            return scale
        raise ConfigError(f"scale column {scale} does not exist: the data has {len(names)} scale(s) {names} "
                          f"(columns 0..{len(names) - 1})", key=key)
    if scale in names:
        return names.index(scale)
    if scale in SCALE_ALIASES and names:
        return 0 if scale == "finest" else len(names) - 1
    raise ConfigError(f"scale {scale!r} is not one of the data's scales {names} (or 'finest', 'coarsest', a column "
                      "index)" + _suggest(str(scale), names), key=key)


# --------------------------------------------------------------------------------------------------- checks


def _positive(value: int, key: str) -> None:
    if value < 1:
        raise ConfigError(f"expected a positive integer, got {value}", key=key)


def _finite_non_negative(value: float, key: str, what: str) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise ConfigError(f"{what} must be a finite number >= 0, got {value}", key=key)


def _non_negative(value: int, key: str) -> None:
    if value < 0:
        raise ConfigError(f"expected a non-negative integer, got {value}", key=key)


MAX_DEVICES = 2**16
"""The most processes ``trainer.devices`` may start on one machine (a number, or its text): Lightning makes a list
of that many devices before it checks them, so ``trainer.devices: 9223372036854775807`` ran out of memory (or, past
2**63, raised an OverflowError traceback) instead of saying the number is too large."""


def _check_devices(devices: int | str | list[int], key: str) -> None:
    count = devices if isinstance(devices, int) else len(devices) if isinstance(devices, list) else None
    text = devices.strip() if isinstance(devices, str) else ""
    if text.isascii() and text.isdigit():
        count = int(text) if len(text) <= 20 else MAX_DEVICES + 1
    if count is not None and count > MAX_DEVICES:
        raise ConfigError(f"expected at most {MAX_DEVICES} processes on one machine (devices: a number of GPUs or CPU "
                          f"processes, -1, auto or a list of GPU ids), got {short_repr(devices)}", key=key)


def _check_run_name(name: str, key: str) -> None:
    """``run.name`` names a folder: not empty (null, or no key, is the default name), not ``.`` or ``..`` (the
    output folder itself, or the one above it), and on one line, without control characters (a YAML block scalar
    ``|`` ends in a line break)."""
    if not name.strip():
        raise ConfigError(f"expected a folder name, got {name!r}; leave run.name out (or null) for the default name "
                          "(the time and the config's hash)", key=key)
    if name in (".", ".."):
        which = "run.output_dir itself" if name == "." else "the folder above run.output_dir"
        raise ConfigError(f"expected a folder name, got {name!r}, which names {which}", key=key)
    bad = next((c for c in name if unicodedata.category(c) in ("Cc", "Zl", "Zp")), None)
    if bad is not None:
        raise ConfigError(f"expected a folder name on one line, got {short_repr(name)}, which holds the character "
                          f"U+{ord(bad):04X} (a line break or another control character); a YAML block scalar (|, >) "
                          "ends in a line break: write the name on the key's line", key=key)


def _known_name(name: str, module: str, registry: str, kind: str, key: str) -> None:
    """``name`` must be in the registry ``module.registry`` (``LOSSES``, ``MINERS``): checked when the config loads,
    before any data is read; the keyword arguments are checked when the engine builds the component."""
    import importlib

    from dynametric.utils.registry import unknown_name_message

    names = getattr(importlib.import_module(module), registry)
    if name not in names:  # the loss and miner registries: pytorch-metric-learning hints too
        raise ConfigError(unknown_name_message(names, name, kind), key=key)


def _loss_values(name: str, kwargs: Mapping[str, Any], key: str) -> None:
    """The values of ``kwargs`` (a loss term's keyword arguments) by the rule of ``build_loss`` in Python
    (:func:`dynametric.losses.check_loss_arguments`: the annotated type, and a number finite), when the config loads:
    ``key 'loss.kwargs.margin': TripletMarginLoss: expected a finite number for margin, got nan (float)``, in a dry
    run too. An unknown keyword is said when the engine builds the loss (with the config's way to drop it)."""
    from dynametric.losses import check_loss_arguments

    if not isinstance(kwargs, Mapping):
        return  # the loader refuses a kwargs that is no mapping, keyed as given
    try:
        check_loss_arguments(name, kwargs, unknown=False)
    except ConfigError as exc:
        raise ConfigError(exc.message, key=f"{key}.{exc.key}") from None


def _not_multiscale_by_itself(name: str, key: str) -> None:
    """``multiscale: true`` wraps a per-scale loss; a loss that declares ``uses_all_scales`` (CSL, ``MultiScaleLoss``:
    it reads every label column itself) cannot be wrapped."""
    from dynametric.losses import LOSSES

    if getattr(LOSSES.get(name), "uses_all_scales", False):
        raise ConfigError(f"{name} is multi-scale by itself (it reads every label column); {key}.multiscale must be "
                          "false", key=f"{key}.multiscale")


def batch_comparing_terms(cfg: Config, multiscale_only: bool = False) -> list[tuple[str, str]]:
    """The loss terms of ``cfg`` that compare the batch's embeddings with each other (:func:`pairs_in_batch`) or
    mine pairs of it (a miner), as ``(key, what it does)``: ``("loss", "loss TripletMarginLoss compares the
    batch's embeddings with each other")``. ``multiscale_only``: the ``multiscale: true`` terms only (they compare
    each scale's chunk of the batch on its own)."""
    out = []
    for where, term, miner in cfg.loss_terms():
        if (multiscale_only and not term.multiscale) or (miner is None and not pairs_in_batch(term.name, term.kwargs)):
            continue
        out.append((where, f"{where}'s miner {miner.name} mines pairs of the batch" if miner is not None else
                    f"{where} {term.name} compares the batch's embeddings with each other"))
    return out


def one_image_per_class_terms(cfg: Config) -> list[str]:
    """``data.m: 1`` under a sampler that fills a batch with ``data.m`` images per class of column
    ``data.sampler_scale``: a batch holds one image of each class there, so a term that compares the batch's
    embeddings at that same column (its ``scale`` / ``label_scale``; not ``multiscale``, not a loss that reads every
    column) has no positive pair: a loss that needs one (triplets, quadruplets: PDDM trained at loss 0 every step)
    learns nothing, a pair loss (contrastive, multi-similarity) from its negative pairs alone. Returns what each such
    term does (``"loss PDDMLoss compares the batch's embeddings with each other"``), for the run's ``note:`` line
    (a note, not a refusal: a run trained so by an earlier version must still load, and some losses do learn). A
    term at another column (a coarser one has positives) or with a negative column (counted from the data's last
    scale, unknown here) is not listed."""
    from dynametric.data.samplers import BATCH_SAMPLERS
    from dynametric.losses import LOSSES

    data = cfg.data
    if data.m != 1 or not getattr(BATCH_SAMPLERS.get(data.sampler), "m_divides_batch", False):
        return []
    comparing = dict(batch_comparing_terms(cfg))
    column = int(data.sampler_scale)
    out = []
    for where, term, _ in cfg.loss_terms():
        if where not in comparing or term.multiscale or getattr(LOSSES.get(term.name), "uses_all_scales", False):
            continue
        arg = "label_scale" if term.name.startswith("pml:") or "label_scale" in term.kwargs else "scale"
        own = term.kwargs.get(arg, 0)
        if not isinstance(own, bool) and isinstance(own, int) and own == column:
            out.append(comparing[where])
    return out


def three_scale_items_error(cfg: Config, num_scales: int) -> ConfigError | None:
    """The error for a ``three_scale`` batch of one item (``data.batch_size = data.m x num_scales``, ``num_scales``
    the sampled scales) under a ``multiscale`` term that compares the batch: each scale's chunk is then ``data.m``
    images of one class, no negative pair at any scale, and the term trains on nothing. Keyed ``data.m`` when it
    was changed from its default, else ``data.batch_size``; ``None`` when the batch is fine (or its size is not a
    multiple of an item: the sampler refuses that)."""
    data = cfg.data
    per_item = data.m * num_scales
    if data.batch_size % per_item or data.batch_size // per_item >= 2:
        return None
    terms = batch_comparing_terms(cfg, multiscale_only=True)
    if not terms:
        return None
    key = "data.m" if data.m != schema_default("data.m") else "data.batch_size"
    smaller_m = data.batch_size // (2 * num_scales) if data.batch_size % (2 * num_scales) == 0 else 0
    return ConfigError(f"a {data.sampler} batch of data.batch_size {data.batch_size} with data.m {data.m} images per "
                       f"scale chunk and {num_scales} scale(s) holds one item, so each scale's chunk is one class: "
                       f"{terms[0][1]} (per scale, multiscale), and without a negative pair it would train on "
                       f"nothing; expected "
                       f"data.batch_size / (data.m x {num_scales}) >= 2 (e.g. data.batch_size {2 * per_item}"
                       + (f" or data.m {smaller_m}" if smaller_m else "") + ")", key=key)


def _either(names: Sequence[str]) -> str:
    """``'a'``, ``'a' or 'b'``, ``'a', 'b' or 'c'``: the samplers a setting applies to, in words."""
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def sampler_keys() -> dict[str, tuple[str, ...]]:
    """The samplers (``data.sampler``) that use ``data.m`` and ``data.sampler_scale`` (a sampler's
    ``settings_used``: ``m``, ``scale``); a non-default value under another sampler is refused, and a layer that
    changes ``data.sampler`` drops the values the lower layers wrote that the new sampler does not use."""
    from dynametric.data.samplers import BATCH_SAMPLERS

    def users(setting: str) -> tuple[str, ...]:
        return tuple(n for n, c in BATCH_SAMPLERS.items() if setting in getattr(c, "settings_used", {"m", "scale"}))

    return {"m": users("m"), "sampler_scale": users("scale")}


def pairs_in_batch(name: str, kwargs: Mapping[str, Any]) -> bool:
    """Whether the loss ``name`` built with ``kwargs`` compares the batch's embeddings with each other (pairs,
    triplets, tuples: a batch of one class gives it no negative), as a dynametric loss declares it
    (``MetricLoss.pairs_in_batch``); a ``pml:`` loss does not when it holds learned class weights (PML's
    ``WeightRegularizerMixin``: the proxy and classification losses). ``True`` for a name that is not known."""
    from dynametric.losses import LOSSES

    if name.startswith("pml:"):
        from dynametric.pml import PML_PREFIX, pml_class

        try:
            cls = pml_class("losses", name[len(PML_PREFIX):])
            from pytorch_metric_learning.losses.mixins import WeightRegularizerMixin
        except (ConfigError, ImportError):
            return True
        return not issubclass(cls, WeightRegularizerMixin)
    check = getattr(LOSSES.get(name), "pairs_in_batch", None)
    return True if check is None else bool(check(kwargs))


def _suggest(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def named_options(section: type) -> tuple[tuple[str, str], ...]:
    """The ``(name key, options key)`` pairs of a schema section: a key that chooses a component (``loss.name``,
    ``miner.name``, ``model.backbone``, ``optim.name``, ``method.name``, ``data.format``, ``data.sampler``,
    ``run.logger``) and the free-form mapping of that component's own arguments (``loss.kwargs``, ...,
    ``data.options``, ``data.sampler_options``, ``run.logger_options``). The loader drops the options a lower layer
    wrote when a higher one changes the name alone (:func:`dynametric.config.loader.load_config`): they were
    written for the other component."""
    return tuple(getattr(section, "_named_options", ()))


def keys_by_choice(section: type) -> tuple[str, Mapping[str, tuple[str, ...]]] | None:
    """``(name key, {key: the names that use it})`` for a schema section whose own keys each apply to some choices
    of its name only (``optim.scheduler``: :data:`SCHEDULE_KEYS`), else ``None``. The loader drops the keys a lower
    layer wrote that the name a higher layer chooses does not use (:func:`dynametric.config.loader.load_config`)."""
    if section is DataConfig:
        return "sampler", sampler_keys()
    return _KEYS_BY_CHOICE.get(section)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """Resolved field types of a schema dataclass (memoised: the schema is fixed at import)."""
    return typing.get_type_hints(cls)


def schema_keys(cls: type | None = None, prefix: str = "") -> list[str]:
    """Every dotted key of the schema (sections and leaves), e.g. ``trainer.max_epochs``."""
    cls = Config if cls is None else cls
    keys: list[str] = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        keys.append(key)
        tp = _hints(cls)[f.name]
        inner = [a for a in (typing.get_args(tp) or (tp,)) if dataclasses.is_dataclass(a)]
        if dataclasses.is_dataclass(tp):
            inner = [tp]
        for sub in inner:
            keys += schema_keys(sub, key + ".")
    return keys



def _section_of(tp: Any) -> Any:
    """The section (schema dataclass) a field of type ``tp`` holds: ``tp`` itself, or the dataclass of an optional
    one (``MinerConfig | None``); ``None`` for anything else (a value, a mapping, a list)."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) is list:
        return None
    sections = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
    return sections[0] if len(sections) == 1 else None


def schema_default(key: str) -> Any:
    """The schema's default of the dotted ``key``, as :func:`~dynametric.config.config_to_dict` writes it: a value
    of a section, of an optional section (``miner.name``) or of an element of a list of sections
    (``extra_losses[0].weight``); a whole section gives its default's dict. A ``KeyError`` when ``key`` is not in
    the schema, lies inside a free mapping (``loss.kwargs.margin``) or has no default (``extra_losses[0].name``)."""
    tp: Any = Config
    parts = key.split(".")
    for i, part in enumerate(parts):
        name, bracket, index = part.partition("[")
        section = _section_of(tp)
        found = [f for f in dataclasses.fields(section) if f.name == name] if section is not None else []
        if not found:
            raise KeyError(key)
        tp = _hints(section)[name]
        if bracket:  # name[N]: an element of a list of sections, never the last part (an element has no default)
            number = index[:-1]
            if not (number.isascii() and number.isdigit() and index.endswith("]")) \
                    or typing.get_origin(tp) is not list or i == len(parts) - 1:
                raise KeyError(key)
            tp = typing.get_args(tp)[0]
        elif i == len(parts) - 1:
            f = found[0]
            if f.default is not dataclasses.MISSING:
                value = f.default
            elif f.default_factory is not dataclasses.MISSING:
                value = f.default_factory()
            else:
                raise KeyError(key)
            return dataclasses.asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) \
                else value
    raise KeyError(key)


def embedder_kwargs(model: ModelConfig) -> dict[str, Any]:
    """``build_embedder(**embedder_kwargs(cfg.model))`` (every model key but the training-only ones), with a leading
    ``~`` of ``pretrained_path`` expanded to the home folder (:func:`user_path`)."""
    kwargs = {k: v for k, v in dataclasses.asdict(model).items() if k not in MODEL_TRAINING_KEYS}
    if kwargs["pretrained_path"] is not None:
        kwargs["pretrained_path"] = str(user_path(kwargs["pretrained_path"]))
    return kwargs


PATH_KEYS = ("data.root", "model.pretrained_path", "run.output_dir")
"""The config keys that name a file or folder. The config keeps a leading ``~`` as written (``config.yaml`` records
``~/runs``, and the config hash does not depend on the home folder); where a path is used, a leading ``~`` (or
``~user``) is the home folder, as a shell expands it (:func:`user_path`): the dataset readers for ``data.root``,
:func:`embedder_kwargs` for ``model.pretrained_path``, ``dynametric.pipeline.run_folder.default_run_dir`` for
``run.output_dir``. A new run records the keys of :data:`ANCHORED_PATH_KEYS` absolute (:func:`anchor_paths`)."""

ANCHORED_PATH_KEYS = ("data.root", "model.pretrained_path")
"""The keys of :data:`PATH_KEYS` that are read again after a run started, from its ``config.yaml``: ``data.root`` by
``evaluate --checkpoint``, ``embed``, ``--resume`` ...; ``model.pretrained_path`` by ``--resume``, which builds the
model again before it loads ``last.ckpt``. ``run.output_dir`` only chooses a new run's folder."""


def user_path(value: str) -> Path:
    """The path a config key of :data:`PATH_KEYS` names: ``value`` with a leading ``~`` expanded."""
    return Path(value).expanduser()


def anchor_paths(cfg: Config, folder: str | Path | None = None) -> list[str]:
    """Make the relative paths of :data:`ANCHORED_PATH_KEYS` in ``cfg`` absolute, against ``folder`` (default: the
    working directory), in place; returns the keys changed. ``dynametric train`` calls it for a new run, so that
    the run's ``config.yaml`` (and the config hash its checkpoints record) names the files it read: a command run
    later from another folder (``evaluate --checkpoint``, ``embed``, ``train --resume``) reads the same ones. A
    leading ``~`` stays as written (the home folder wherever it is read: :func:`user_path`), and so do an absolute
    path and an unset key. The path is joined, not resolved: ``..`` and symbolic links stay as written."""
    base = Path.cwd() if folder is None else Path(folder)
    changed: list[str] = []
    for key in ANCHORED_PATH_KEYS:
        section, name = key.split(".")
        holder = getattr(cfg, section)
        value = getattr(holder, name)
        if not _relative(value):
            continue
        setattr(holder, name, str(base.absolute() / value))
        changed.append(key)
    return changed


def anchored(cfg: Config, folder: str | Path | None = None) -> Config:
    """``cfg`` with the relative paths of :data:`ANCHORED_PATH_KEYS` made absolute (:func:`anchor_paths`): ``cfg``
    itself where none is relative, else a copy (the caller's config is left as it was). ``run_training`` and
    ``dry_run`` take it for a new run, so a run started from Python records the paths as ``dynametric train`` does."""
    import copy

    if not any(_relative(getattr(getattr(cfg, k.split(".")[0]), k.split(".")[1])) for k in ANCHORED_PATH_KEYS):
        return cfg
    out = copy.deepcopy(cfg)
    anchor_paths(out, folder)
    return out


def _relative(value: Any) -> bool:
    """Whether a path key's value is one :func:`anchor_paths` makes absolute."""
    return isinstance(value, str) and bool(value) and not value.startswith("~") and not Path(value).is_absolute()


MODEL_TRAINING_KEYS = ("channels_last",)
"""``model`` keys that say how the model is trained, not how it is built (not ``build_embedder`` arguments)."""


