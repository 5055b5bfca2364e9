"""Typed run configuration: YAML files + dotted command-line overrides, validated against dataclasses.

Resolution order: schema defaults ← YAML file (and the files it ``extends``) ← overrides such as
``trainer.max_epochs=3 loss.name=TripletMarginLoss`` (values parsed as YAML: ``3`` is an int, ``[1, 10]`` a list,
``null`` is None). An unknown key or a value of the wrong type raises :class:`~dynametric.errors.ConfigError`
naming the dotted key (and the file and line when it came from a file) and suggesting the closest valid key.

The resolved :class:`Config` serialises to YAML (:func:`save_config`, :func:`config_to_yaml`) and back without loss,
and :func:`config_hash` gives a stable hash of its content. Every key and default is listed in ``docs/config.md``.

Free-form sections (``loss.kwargs``, ``miner.kwargs``, ``data.options``, ``model.backbone_kwargs``,
``optim.kwargs``, ``method.kwargs``) are validated by :func:`validate_components`, which constructs the named
loss / miner and reports a bad keyword under its dotted key.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import inspect
import json
import math
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from dynametric.errors import ConfigError, InputError
from dynametric.utils.io import atomic_write_text

# --------------------------------------------------------------------------------------------------- schema


@dataclass
class DataConfig:
    """Dataset, transforms, sampler, validation split and loader settings."""

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
    sampler: Literal["m_per_class", "three_scale", "hierarchical", "random"] = "m_per_class"
    """Batch sampler: ``m_per_class`` | ``three_scale`` | ``hierarchical`` | ``random``."""
    m: int = 4
    """Samples per class in a batch (m_per_class / hierarchical); per-scale chunk size for three_scale."""
    batch_size: int = 32
    iterations_per_epoch: int | None = None
    """Batches per epoch; ``None`` = the sampler's own epoch (every sample about once)."""
    sampler_scale: int = 0
    """Label column (scale) whose classes the m-per-class sampler balances."""
    sampler_options: dict[str, Any] = field(default_factory=dict)
    eval_batch_size: int = 128
    workers: int | str = "auto"
    """DataLoader worker processes, or ``auto``: ``min(16, CPUs / P - 1)`` when training on a CUDA GPU (P =
    ``trainer.devices`` on this machine), else 0."""
    pin_memory: bool | None = None
    """Page-locked batches for non-blocking copies to the GPU; ``None``: on when training on a CUDA GPU."""
    persistent_workers: bool = True
    """Keep the worker processes between epochs (no start-up stall per epoch; only with workers > 0)."""
    prefetch_factor: int = 4
    """Batches each worker prepares ahead (only with workers > 0)."""

    def _validate(self, key: str) -> None:
        from dynametric.data.registry import FORMAT_NAMES
        from dynametric.data.transforms import PRESETS

        if self.format not in FORMAT_NAMES:
            raise ConfigError(f"unknown dataset format {self.format!r}" + (_suggest(self.format, FORMAT_NAMES)
                              or f"; valid formats: {', '.join(FORMAT_NAMES)}"), key=f"{key}.format")
        presets = ["default", *PRESETS]
        if self.transform not in presets:
            raise ConfigError(f"unknown transform preset {self.transform!r}" + (_suggest(self.transform, presets)
                              or f"; valid presets: {', '.join(presets)}"), key=f"{key}.transform")
        _positive(self.batch_size, f"{key}.batch_size")
        _positive(self.m, f"{key}.m")
        _positive(self.eval_batch_size, f"{key}.eval_batch_size")
        if isinstance(self.workers, str):
            if self.workers != "auto":
                raise ConfigError(f"expected a non-negative integer or 'auto', got {self.workers!r}",
                                  key=f"{key}.workers")
        else:
            _non_negative(self.workers, f"{key}.workers")
        _positive(self.prefetch_factor, f"{key}.prefetch_factor")
        _non_negative(self.sampler_scale, f"{key}.sampler_scale")
        if self.image_size is not None:
            _positive(self.image_size, f"{key}.image_size")
        if self.iterations_per_epoch is not None:
            _positive(self.iterations_per_epoch, f"{key}.iterations_per_epoch")
        if self.sampler in ("m_per_class", "hierarchical") and self.batch_size % self.m:
            raise ConfigError(f"batch_size {self.batch_size} must be a multiple of m={self.m}",
                              key=f"{key}.batch_size")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"expected a fraction in [0, 1), got {self.val_fraction}", key=f"{key}.val_fraction")
        if self.val_folds is not None:
            if self.val_folds < 2:
                raise ConfigError(f"expected >= 2 folds or null, got {self.val_folds}", key=f"{key}.val_folds")
            if not 0 <= self.val_fold < self.val_folds:
                raise ConfigError(f"expected 0 <= val_fold < val_folds={self.val_folds}, got {self.val_fold}",
                                  key=f"{key}.val_fold")


@dataclass
class ModelConfig:
    """Keyword arguments of :func:`dynametric.models.build_embedder` (same names, same defaults except the
    backbone: the default config trains ``simple_cnn`` on the synthetic data)."""

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
        _positive(self.num_heads, f"{key}.num_heads")
        _positive(self.in_chans, f"{key}.in_chans")
        if self.embedding_dim is not None:
            _positive(self.embedding_dim, f"{key}.embedding_dim")
        if self.pretrained and self.pretrained_path is not None:
            raise ConfigError("set either pretrained (download) or pretrained_path (local file), not both",
                              key=f"{key}.pretrained_path")
        for name, value in (("head_dims", self.head_dims), ("head_names", self.head_names)):
            if value is not None and len(value) != self.num_heads:
                raise ConfigError(f"expected {self.num_heads} entries (num_heads), got {len(value)}",
                                  key=f"{key}.{name}")


@dataclass
class MinerConfig:
    """A miner from ``dynametric.miners.MINERS`` and its constructor keyword arguments."""

    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class LossConfig:
    """A loss from ``dynametric.losses.LOSSES``, its keyword arguments, and how it is applied.

    ``multiscale: true`` wraps it in ``MultiScaleLoss`` (one copy per label scale, weighted by ``scale_weights``;
    ``None`` = equal weights); otherwise the loss uses its own ``scale`` keyword (default 0, the finest).
    ``head`` names the model head it trains (``None`` = the single output); ``weight`` multiplies the term.
    """

    name: str = "TripletMarginLoss"
    kwargs: dict[str, Any] = field(default_factory=dict)
    multiscale: bool = False
    scale_weights: list[float] | None = None
    head: str | None = None
    weight: float = 1.0

    def _validate(self, key: str) -> None:
        if self.scale_weights is not None:
            if not self.multiscale:
                raise ConfigError("scale_weights needs multiscale: true", key=f"{key}.scale_weights")
            if any(w < 0 for w in self.scale_weights) or not any(w > 0 for w in self.scale_weights):
                raise ConfigError(f"expected non-negative weights, not all zero, got {self.scale_weights}",
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
    """Learning-rate schedule, stepped per epoch (or per optimisation step with ``interval: step``)."""

    name: Literal["none", "step", "multistep", "cosine", "plateau"] = "none"
    step_size: int = 30
    gamma: float = 0.1
    milestones: list[int] = field(default_factory=list)
    warmup_epochs: int = 0
    min_lr: float = 0.0
    interval: Literal["epoch", "step"] = "epoch"

    def _validate(self, key: str) -> None:
        _positive(self.step_size, f"{key}.step_size")
        _non_negative(self.warmup_epochs, f"{key}.warmup_epochs")
        if self.name == "multistep" and not self.milestones:
            raise ConfigError("scheduler 'multistep' needs milestones", key=f"{key}.milestones")


@dataclass
class OptimConfig:
    """Optimiser with three parameter groups: ``backbone``, ``head`` and ``loss`` (learnable loss parameters:
    proxies, margins β, class weights), each with its own lr / weight decay."""

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

    def group_lr(self, group: Literal["backbone", "head", "loss"]) -> float:
        value = getattr(self, group).lr
        return self.lr if value is None else value

    def group_weight_decay(self, group: Literal["backbone", "head", "loss"]) -> float:
        value = getattr(self, group).weight_decay
        return self.weight_decay if value is None else value


PRECISIONS = ("32", "32-true", "64", "64-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true")


@dataclass
class TrainerConfig:
    """Training loop settings (Lightning ``Trainer`` arguments and dynametric's own)."""

    max_epochs: int = 10
    max_steps: int | None = None
    """Stop after this many optimisation steps (``None`` = only ``max_epochs``)."""
    precision: int | str = "32"
    """``32`` | ``16-mixed`` | ``bf16-mixed`` | ``64`` | ``16-true`` | ``bf16-true`` (Lightning's names)."""
    accumulate_grad_batches: int = 1
    accelerator: str = "auto"
    devices: int | str | list[int] = 1
    num_nodes: int = 1
    strategy: str = "auto"
    """``auto`` | ``ddp`` | ``ddp_spawn`` | … (Lightning strategy names)."""
    seed: int = 0
    deterministic: bool = False
    val_every: int = 1
    """Validate every N epochs."""
    nonfinite: Literal["stop", "skip"] = "stop"
    """A non-finite loss stops the run with the step named (``stop``) or skips the step with a counted warning."""
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

    def _validate(self, key: str) -> None:
        _positive(self.max_epochs, f"{key}.max_epochs")
        _positive(self.accumulate_grad_batches, f"{key}.accumulate_grad_batches")
        _positive(self.val_every, f"{key}.val_every")
        _positive(self.num_nodes, f"{key}.num_nodes")
        _positive(self.log_every_n_steps, f"{key}.log_every_n_steps")
        for name in ("max_steps", "patience", "checkpoint_every_n_steps"):
            if getattr(self, name) is not None:
                _positive(getattr(self, name), f"{key}.{name}")
        self.precision = str(self.precision)  # YAML reads `precision: 32` as an int
        if self.precision not in PRECISIONS:
            raise ConfigError(f"expected one of {list(PRECISIONS)}, got {self.precision!r}"
                              + _suggest(self.precision, PRECISIONS), key=f"{key}.precision")
        if "/" not in self.monitor:
            raise ConfigError(f"expected '<scale>/<metric>' such as 'fine/map@r', got {self.monitor!r}",
                              key=f"{key}.monitor")


@dataclass
class EvalConfig:
    """Evaluation settings, passed to ``dynametric.metrics.evaluate_embeddings``."""

    metrics: list[str] | None = None
    """Metric names (``recall@K``, ``r_precision``, ``map@r``, ``map``, ``asi``, ``nmi``, ``f1``); ``None`` = the
    evaluation engine's default set."""
    k_values: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    distance: str = "cosine"
    protocol: Literal["leave_one_out", "query_gallery"] = "leave_one_out"
    """``leave_one_out``: every test item queries the rest (CUB, CARS, SOP); ``query_gallery``: fixed query and
    gallery splits (In-Shop, DyML Vehicle/Animal)."""
    query_split: str = "query"
    gallery_split: str = "gallery"
    query_in_gallery: bool = False
    """``query_gallery`` only: whether a query may retrieve its own image from the gallery."""
    heads: list[str] | None = None
    """Heads to evaluate for multi-head models (plus ``concat``); ``None`` = every head and ``concat``."""
    empty_queries: Literal["exclude", "zero"] = "exclude"
    memory_budget_bytes: int | None = None

    def _validate(self, key: str) -> None:
        if not self.k_values or any(k < 1 for k in self.k_values):
            raise ConfigError(f"expected positive k values, got {self.k_values}", key=f"{key}.k_values")
        if self.memory_budget_bytes is not None:
            _positive(self.memory_budget_bytes, f"{key}.memory_budget_bytes")


@dataclass
class MethodConfig:
    """Method-specific options (PDDM, Sharing Matters / MIC, CSL …): ``name`` selects the engine's method hook,
    ``kwargs`` are validated by that method."""

    name: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunConfig:
    """Where and under which name a run writes its folder (``<output_dir>/<name>``)."""

    output_dir: str = "runs"
    name: str | None = None
    """Run folder name; ``None`` = a timestamp plus the config hash."""
    report: bool = True
    """Write ``report.html`` with curves, metric bars, embedding map and a retrieval gallery."""
    logger: Literal["csv", "tensorboard", "wandb", "mlflow"] = "csv"
    """Experiment logger (``tensorboard``, ``wandb``, ``mlflow`` need the extra of that name); it receives the loss,
    per-scale validation/test metrics and the report's figures."""
    logger_options: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the Lightning logger (e.g. wandb ``project``, ``offline``; mlflow ``tracking_uri``)."""


@dataclass
class Config:
    """The whole run configuration. ``Config()`` is the default: ``simple_cnn`` on the synthetic hierarchy."""

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

    def _validate(self, key: str) -> None:
        heads = self.model.head_names or None
        if self.model.num_heads > 1:
            from dynametric.models.embedder import default_head_names

            heads = heads or list(default_head_names(self.model.num_heads))
        terms: list[tuple[str, LossConfig]] = [("loss", self.loss)]
        terms += [(f"extra_losses[{i}]", t) for i, t in enumerate(self.extra_losses)]
        for where, term in terms:
            if term.head is None or term.head == "concat":
                continue
            if heads is None:
                raise ConfigError(f"the model has a single head; head {term.head!r} needs model.num_heads > 1",
                                  key=f"{where}.head")
            if term.head not in heads:
                raise ConfigError(f"unknown head {term.head!r}; the model's heads are {heads}"
                                  + _suggest(term.head, heads), key=f"{where}.head")
        self._validate_monitor()

    def _validate_monitor(self) -> None:
        """``trainer.monitor``'s metric must be one the validation rounds compute (eval.metrics, eval.k_values);
        its scale is checked against the data's scale names when the run starts."""
        from dynametric.metrics.evaluate import _parse_metrics

        metric = self.trainer.monitor.split("/", 1)[1]
        computed, *_ = _parse_metrics(self.eval.metrics, self.eval.k_values)
        if metric not in computed:
            raise ConfigError(f"monitor metric {metric!r} is not computed by validation; expected one of {computed} "
                              "after the scale (eval.metrics and eval.k_values choose them)"
                              + _suggest(metric, computed),
                              key="trainer.monitor")


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


def _suggest(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(word), list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


# --------------------------------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-5`` (no dot) as a float, as YAML 1.2 does."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper that knows the loader's extra float form, so a string such as ``"0E0"`` is written quoted."""


_FLOAT_1_2 = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                  |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                  |\.[0-9_]+(?:[eE][-+][0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X)
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))

_YAML_LINE_BREAKS = ("\x85", "\u2028", "\u2029")


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    """Strings holding a Unicode line break (NEL, LS, PS) are written double-quoted, where YAML escapes them;
    PyYAML's single-quoted form would fold a NEL into a space and the value would not load back."""
    style = '"' if any(ch in value for ch in _YAML_LINE_BREAKS) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _parse_yaml(text: str, file: str) -> tuple[Any, dict[str, int]]:
    """YAML text → (python object, {dotted key: 1-based line})."""
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = None if mark is None else mark.line + 1
        raise ConfigError(f"invalid YAML: {getattr(exc, 'problem', None) or exc}", file=file, line=line) from exc
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # a scalar PyYAML cannot construct
        raise ConfigError(f"invalid YAML value ({type(exc).__name__}: {str(exc)[:120]})", file=file) from None
    lines: dict[str, int] = {}

    def walk(n: yaml.Node | None, prefix: str) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                key = f"{prefix}.{k.value}" if prefix else str(k.value)
                if key in lines:  # PyYAML would silently keep the last value
                    raise ConfigError(f"duplicate key (first given on line {lines[key]})", file=file,
                                      line=k.start_mark.line + 1, key=key)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, f"{prefix}[{i}]")

    walk(node, "")
    return data, lines


def parse_value(text: str) -> Any:
    """Parse one override value as YAML (``3`` → 3, ``1e-5`` → 1e-05, ``[1, 2]`` → list, ``null`` → None)."""
    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else None
    except yaml.YAMLError:
        return text


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


@dataclass
class _Source:
    """Where raw values came from: per dotted key, a (file, line) pair for error messages."""

    where: dict[str, tuple[str, int | None]] = field(default_factory=dict)

    def locate(self, key: str) -> tuple[str | None, int | None]:
        probe = key
        while probe:
            if probe in self.where:
                return self.where[probe]
            parent = re.sub(r"(\.[^.\[]*|\[\d+\])$", "", probe)
            probe = parent if parent != probe else ""
        for known, loc in self.where.items():  # a section known only through one of its keys
            if known.startswith((key + ".", key + "[")):
                return loc
        return None, None


def _read_file(path: Path, source: _Source, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"'extends' cycle: {' -> '.join(str(p) for p in (*chain, path))}", file=path,
                          key="extends")
    if not path.is_file():
        raise ConfigError("config file not found", file=path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not a UTF-8 YAML file ({exc.reason} at byte {exc.start})", file=path) from None
    data, lines = _parse_yaml(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of sections at the top level, got {type(data).__name__}", file=path)
    base: dict[str, Any] = {}
    parents = data.pop("extends", None)
    if parents is not None:
        if isinstance(parents, str):
            parents = [parents]
        if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
            raise ConfigError("expected a file path or a list of file paths", file=path, line=lines.get("extends"),
                              key="extends")
        for parent in parents:
            base = _deep_merge(base, _read_file(path.parent / parent, source, (*chain, path)))
    for key, line in lines.items():
        source.where[key] = (str(path), line)
    return _deep_merge(base, data)


_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_@][A-Za-z0-9_@/\-]*)*$")


def apply_override(raw: dict[str, Any], override: str, source: _Source | None = None) -> dict[str, Any]:
    """Set ``a.b.c=value`` in the nested dict ``raw`` (in place; intermediate mappings are created)."""
    if "=" not in override:
        raise ConfigError(f"expected an override of the form section.key=value, got {override!r}",
                          file="<command line>")
    key, text = override.split("=", 1)
    key = key.strip()
    if not _KEY_RE.match(key):
        raise ConfigError(f"malformed dotted key in override {override!r}", file="<command line>", key=key)
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            if child is not None and not isinstance(child, Mapping):
                raise ConfigError(f"cannot set {key!r}: '{'.'.join(parts[:i + 1])}' is a value, not a section",
                                  file="<command line>", key=key)
            child = dict(child or {})
            node[part] = child
        node = child
    node[parts[-1]] = parse_value(text)
    if source is not None:
        source.where[key] = ("<command line>", None)
    return raw


# --------------------------------------------------------------------------------------------------- typing


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(arg)}"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping (section)"
    if tp is Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({type(value).__name__})"


class _Ctx:
    def __init__(self, source: _Source) -> None:
        self.source = source

    def error(self, message: str, key: str) -> ConfigError:
        file, line = self.source.locate(key)
        return ConfigError(message, file=file, line=line, key=key)


_NO_MATCH = object()


def _coerce(value: Any, tp: Any, key: str, ctx: _Ctx) -> Any:
    """Check ``value`` against type ``tp``; return it (ints widened to float, lists for tuples)."""
    result = _try_coerce(value, tp, key, ctx)
    if result is _NO_MATCH:
        raise ctx.error(f"expected {_type_name(tp)}, got {_describe(value)}", key)
    return result


def _try_coerce(value: Any, tp: Any, key: str, ctx: _Ctx) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if tp is type(None):
        return None if value is None else _NO_MATCH
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        # Try exact-kind members first so that a section (dataclass) member reports its own inner errors.
        for arg in args:
            if dataclasses.is_dataclass(arg) and isinstance(value, Mapping):
                return _build(arg, value, key, ctx)
        for arg in args:
            result = _try_coerce(value, arg, key, ctx)
            if result is not _NO_MATCH:
                return result
        return _NO_MATCH
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, str) and value in choices:
            return value
        if isinstance(value, str):
            raise ctx.error(f"expected one of {list(choices)}, got {value!r}" + _suggest(value, choices), key)
        return _NO_MATCH
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, ctx) if isinstance(value, Mapping) else _NO_MATCH
    if tp is bool:
        return value if isinstance(value, bool) else _NO_MATCH
    if tp is int:
        return value if isinstance(value, int) and not isinstance(value, bool) else _NO_MATCH
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return _NO_MATCH
        return float(value)
    if tp is str:
        return value if isinstance(value, str) else _NO_MATCH
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return _NO_MATCH
        (arg,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, arg, f"{key}[{i}]", ctx) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            return _NO_MATCH
        key_tp, val_tp = typing.get_args(tp) or (str, Any)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ctx.error(f"expected string keys, got {_describe(k)}", key)
            out[k] = _coerce(v, val_tp, f"{key}.{k}", ctx)
        return out
    raise TypeError(f"unsupported schema type {tp!r} at {key}")  # a bug in the schema, not user input


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


def _unknown_key_error(cls: type, name: str, key: str, ctx: _Ctx) -> ConfigError:
    siblings = [f.name for f in dataclasses.fields(cls)]
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    if close:
        hint = f"did you mean '{parent}{close[0]}'?"
    else:
        # Maybe the key is valid in another section (e.g. optim.max_epochs → trainer.max_epochs).
        all_keys = schema_keys()
        by_leaf: dict[str, str] = {}
        for k in all_keys:
            by_leaf.setdefault(k.rsplit(".", 1)[-1], k)
        leaf = name if name in by_leaf else next(iter(difflib.get_close_matches(name, list(by_leaf), n=1,
                                                                                cutoff=0.75)), None)
        hint = (f"did you mean '{by_leaf[leaf]}'?" if leaf is not None
                else f"valid keys here: {', '.join(siblings)}")
    return ctx.error(f"unknown key; {hint}", key)


def _build(cls: type, raw: Mapping[str, Any], prefix: str, ctx: _Ctx) -> Any:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if not isinstance(name, str) or name not in names:
            raise _unknown_key_error(cls, str(name), key, ctx)
        kwargs[name] = _coerce(value, hints[name], key, ctx)
    for f in dataclasses.fields(cls):
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            key = f"{prefix}.{f.name}" if prefix else f.name
            raise ctx.error(f"missing required key (expected {_type_name(hints[f.name])})", key)
    obj = cls(**kwargs)
    check = getattr(obj, "_validate", None)
    if check is not None:
        try:
            check(prefix or "config")
        except ConfigError as exc:
            if exc.file is None and exc.key is not None:
                raise ctx.error(exc.message, exc.key) from None
            raise
    return obj


# --------------------------------------------------------------------------------------------------- API


def config_from_dict(raw: Mapping[str, Any], *, source: _Source | None = None) -> Config:
    """Validate a nested dict (e.g. parsed YAML) against the schema; missing keys take their defaults."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected a mapping of sections, got {type(raw).__name__}")
    return _build(Config, raw, "", _Ctx(source or _Source()))


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults ← YAML file ``path`` (with its ``extends`` chain) ← dotted ``overrides``; validated."""
    source = _Source()
    raw: dict[str, Any] = {} if path is None else _read_file(Path(path), source)
    for override in overrides:
        apply_override(raw, override, source)
    return config_from_dict(raw, source=source)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (lists, dicts, scalars) of a config: what :func:`save_config` writes."""
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: Config) -> str:
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically. ``load_config(path)`` gives back an equal config."""
    atomic_write_text(path, config_to_yaml(cfg))


def config_hash(cfg: Config, length: int = 16) -> str:
    """Stable hex digest (SHA-256 of the canonical sorted-key JSON) of the resolved config.

    Equal configs hash equally whatever the key order or the file they came from; any changed value changes it.
    """
    canonical = json.dumps(config_to_dict(cfg), sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:length]


def embedder_kwargs(model: ModelConfig) -> dict[str, Any]:
    """``build_embedder(**embedder_kwargs(cfg.model))`` (every model key but the training-only ones)."""
    return {k: v for k, v in dataclasses.asdict(model).items() if k not in MODEL_TRAINING_KEYS}


MODEL_TRAINING_KEYS = ("channels_last",)
"""``model`` keys that say how the model is trained, not how it is built (not ``build_embedder`` arguments)."""


# ------------------------------------------------------------------------------------- component validation


def _registry(module: str, name: str) -> Mapping[str, Callable[..., Any]]:
    import importlib

    registry = getattr(importlib.import_module(module), name, None)
    if not isinstance(registry, Mapping):
        raise ConfigError(f"{module}.{name} is not available in this installation", key=name.lower())
    return registry


DATA_DEPENDENT_ARGS = ("num_classes", "embedding_size", "class_paths")
"""Constructor arguments the engine fills in from the data and the model, not from the config."""


def build_component(registry: Mapping[str, Callable[..., Any]], name: str, kwargs: Mapping[str, Any], key: str, *,
                    construct: Callable[..., Any] | None = None, data_args: Mapping[str, Any] | None = None) -> Any:
    """Check ``name`` and ``kwargs`` against ``registry[name]`` and construct it; errors name ``<key>.name`` or
    ``<key>.kwargs.<arg>``.

    Unknown names and keyword arguments are caught before construction (with the closest valid spelling).
    Required arguments listed in :data:`DATA_DEPENDENT_ARGS` that ``kwargs`` lacks are taken from ``data_args``;
    if one is still missing, nothing is constructed and ``None`` is returned (names and keywords were checked).
    A ``distance`` given as a name or ``{name: ..., **kwargs}`` becomes a distance object
    (``dynametric.losses.build_distance``). The object is built by ``construct(name, **kwargs)`` (default
    ``registry[name](**kwargs)``); its errors
    (bad values) are re-raised as :class:`ConfigError` on ``<key>.kwargs`` (``<key>.kwargs.<arg>`` when the
    error names one of the given arguments).
    """
    if name not in registry:
        close = difflib.get_close_matches(name, list(registry), n=3, cutoff=0.6)
        hint = (f"; did you mean {', '.join(repr(c) for c in close)}?" if close
                else f"; available: {', '.join(sorted(registry))}")
        raise ConfigError(f"unknown name {name!r}{hint}", key=f"{key}.name")
    factory = registry[name]
    kwargs = dict(kwargs)
    try:
        sig: inspect.Signature | None = inspect.signature(factory)
    except (TypeError, ValueError):
        sig = None
    if sig is not None:
        params = sig.parameters
        named = [p for p, v in params.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
        if not any(v.kind is v.VAR_KEYWORD for v in params.values()):
            for arg in kwargs:
                if arg not in named:
                    raise ConfigError(f"{name} has no argument {arg!r}"
                                      + (_suggest(arg, named) or f"; its arguments: {', '.join(named)}"),
                                      key=f"{key}.kwargs.{arg}")
        for arg in DATA_DEPENDENT_ARGS:
            if arg in named and arg not in kwargs and params[arg].default is inspect.Parameter.empty:
                if data_args is None or arg not in data_args:
                    return None
                kwargs[arg] = data_args[arg]
    if isinstance(kwargs.get("distance"), (str, Mapping)):  # configs name distances: `cosine`, {name: ..., ...}
        from dynametric.losses import build_distance

        try:
            kwargs["distance"] = build_distance(dict(kwargs["distance"]) if isinstance(kwargs["distance"], Mapping)
                                                else kwargs["distance"], key=f"{key}.kwargs.distance")
        except InputError as exc:
            raise ConfigError(exc.message, key=f"{key}.kwargs.distance") from None
    try:
        if construct is None:
            return factory(**kwargs)
        return construct(name, **kwargs)
    except InputError as exc:  # ConfigError included: re-key it under this config section
        sub = exc.key.rsplit(".", 1)[-1] if exc.key else None
        raise ConfigError(f"{name}: {exc.message}",
                          key=f"{key}.kwargs.{sub}" if sub in kwargs else f"{key}.kwargs") from exc
    except (TypeError, ValueError) as exc:
        shown = ", ".join(f"{k}={v!r}" for k, v in kwargs.items() if k not in DATA_DEPENDENT_ARGS)
        raise ConfigError(f"{name}({shown}) failed: {exc}", key=f"{key}.kwargs") from exc


def _head_dim(cfg: Config, head: str | None) -> int | None:
    from dynametric.models.embedder import default_head_names

    model = cfg.model
    dims = model.head_dims or [model.embedding_dim] * model.num_heads
    names = model.head_names or list(default_head_names(model.num_heads))
    if head == "concat":
        return None if any(d is None for d in dims) else sum(d for d in dims if d is not None)
    return dims[names.index(head)] if head in names else dims[0]


def validate_components(cfg: Config, *, losses: Mapping[str, Callable[..., Any]] | None = None,
                        miners: Mapping[str, Callable[..., Any]] | None = None,
                        data_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Construct every configured loss and miner once to validate names and free-form ``kwargs``.

    ``losses`` / ``miners`` default to ``dynametric.losses.LOSSES`` / ``dynametric.miners.MINERS``, built through
    ``build_loss`` / ``build_miner`` (so ``distance: cosine`` style values are resolved). ``embedding_size``
    defaults to the width of the term's head (a pooled-feature head, ``embedding_dim: null``, has no static
    width); ``num_classes`` and ``class_paths`` come from ``data_args`` (without them, losses needing them are
    checked by name and keywords only and map to ``None``). Returns the objects by dotted key (``loss``,
    ``miner``, ``extra_losses[0]``, ``extra_losses[0].miner``); ``multiscale`` wrapping is left to the engine.
    """
    loss_construct = miner_construct = None
    if losses is None:
        losses = _registry("dynametric.losses", "LOSSES")
        from dynametric.losses import build_loss as loss_construct  # type: ignore[assignment]
    needs_miners = cfg.miner is not None or any(t.miner is not None for t in cfg.extra_losses)
    if needs_miners and miners is None:
        miners = _registry("dynametric.miners", "MINERS")
        from dynametric.miners import build_miner as miner_construct  # type: ignore[assignment]

    def loss_args(term: LossConfig) -> dict[str, Any]:
        args = dict(data_args or {})
        dim = _head_dim(cfg, term.head)
        if dim is not None:
            args.setdefault("embedding_size", dim)
        return args

    built: dict[str, Any] = {"loss": build_component(losses, cfg.loss.name, cfg.loss.kwargs, "loss",
                                                     construct=loss_construct, data_args=loss_args(cfg.loss))}
    if cfg.miner is not None:
        assert miners is not None
        built["miner"] = build_component(miners, cfg.miner.name, cfg.miner.kwargs, "miner",
                                         construct=miner_construct, data_args=data_args)
    for i, term in enumerate(cfg.extra_losses):
        key = f"extra_losses[{i}]"
        built[key] = build_component(losses, term.name, term.kwargs, key, construct=loss_construct,
                                     data_args=loss_args(term))
        if term.miner is not None:
            assert miners is not None
            built[f"{key}.miner"] = build_component(miners, term.miner.name, term.miner.kwargs, f"{key}.miner",
                                                    construct=miner_construct, data_args=data_args)
    return built
