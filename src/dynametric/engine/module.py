"""The LightningModule: embedder + loss terms (+ miners), parameter groups, validation/test evaluation.

Everything is injected: the module never builds a dataset, a model or a loss from names (see
:mod:`dynametric.engine.builders` for config -> components). The maths lives in
:func:`dynametric.engine.objective.compute_objective` and :mod:`dynametric.engine.distributed`.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import lightning as L
import torch
from torch import nn

from dynametric import __version__
from dynametric.config.schema import OptimConfig, ParamGroupConfig, TrainerConfig, resolve_monitor
from dynametric.data.synthetic import SCALE_NAMES as DEFAULT_DATA_SCALES
from dynametric.engine.checkpoint import nonfinite_parameters
from dynametric.engine.distributed import agree_nonfinite, all_gather_no_grad, all_gather_with_grad, world_info
from dynametric.engine.loggers import logger_run
from dynametric.engine.objective import Objective, compute_objective, select_head
from dynametric.errors import ConfigError, DynametricError
from dynametric.labels import as_label_matrix

logger = logging.getLogger("dynametric.engine")

Evaluator = Callable[..., dict]
GroupBuilder = Callable[[nn.Module, Sequence[Objective], "OptimSettings"], list[dict[str, Any]]]
"""``builder(embedder, objectives, optim_settings) -> optimizer parameter groups`` (:func:`parameter_groups`)."""


class NonFiniteLossError(DynametricError):
    """The training loss became NaN/Inf (``trainer.nonfinite: stop``)."""


GroupSettings = ParamGroupConfig
"""Learning rate / weight decay of one parameter group (``None``: use the optimizer-wide value): the schema's
``optim.backbone`` / ``optim.head`` / ``optim.loss`` section itself."""


_OPTIM, _OPTIM_MONITOR_MODE = OptimConfig(), TrainerConfig().monitor_mode  # the schema's defaults, not our own


_GradientFlags = tuple[list[str], torch.Tensor] | None
"""The parameters of a deferred gradient check and whether each one's gradient was finite (:func:`finite_gradients`),
``None`` where that could not be computed."""

_DeferredCheck = (tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], str]
                  | tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor], str, _GradientFlags])
"""A finiteness flag queued for :meth:`MetricLearningModule.check_deferred_nonfinite`: ``(finite, rows, terms,
where)``; ``rows`` is -1 for a gradient check, and the automatic path's gradient check adds a fifth entry (its
:data:`_GradientFlags`) that marks it."""


def gradient_finite(grad: torch.Tensor) -> torch.Tensor:
    """A 0-dim bool: whether every value of ``grad`` is finite; a sparse gradient (an ``nn.Embedding(sparse=True)``)
    by its stored values (``torch.isfinite`` does not take a sparse tensor)."""
    return torch.isfinite(grad.coalesce().values() if grad.is_sparse else grad).all()


def nonfinite_gradients(grads: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    """A 0-dim bool on ``device``: whether any of ``grads`` holds a NaN/Inf. torch's fused check of the gradient
    scaler (``_amp_foreach_non_finite_check_and_unscale_`` with a scale of 1, which leaves every value as it was):
    one kernel per device and dtype, not two per parameter (a ResNet-50 has 161); per tensor where that kernel
    does not take the gradients (sparse ones, another torch)."""
    found = torch.zeros(1, device=device)
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for g in grads:
        groups.setdefault((g.device, g.dtype), []).append(g)
    for (dev, _), group in groups.items():
        flag = found if dev == found.device else torch.zeros(1, device=dev)
        try:
            torch._amp_foreach_non_finite_check_and_unscale_(group, flag, torch.ones(1, device=dev))
        except (RuntimeError, TypeError, AttributeError, NotImplementedError):
            flag += torch.stack([~gradient_finite(g) for g in group]).any().to(flag.dtype)
        if flag is not found:
            found += flag.to(device)
    return found[0] > 0


def finite_gradients(named: list[tuple[str, torch.Tensor]], device: torch.device) -> _GradientFlags:
    """Which of the named gradients are finite, without a host read: the parameter names in the order of the flags
    and a bool vector on ``device``, from each gradient's largest absolute value (torch's fused ``_foreach_norm`` of
    order inf, one kernel per device and dtype: a NaN or Inf anywhere in a tensor makes it NaN or Inf, and the largest
    absolute value of finite numbers is finite). Read only once a deferred check found a non-finite gradient, to name
    the parameter. ``None`` where torch's kernel does not take the gradients."""
    groups: dict[tuple[torch.device, torch.dtype, bool], list[int]] = {}
    empty = [i for i, (_, g) in enumerate(named) if g.numel() == 0]  # finite: torch's kernel refuses them
    for i, (_, g) in enumerate(named):
        if g.numel():
            groups.setdefault((g.device, g.dtype, g.is_sparse), []).append(i)
    names: list[str] = [named[i][0] for i in empty]
    parts: list[torch.Tensor] = [torch.ones(len(empty), dtype=torch.bool, device=device)] if empty else []
    try:
        for (_, _, sparse), members in groups.items():
            grads = [named[i][1] for i in members]
            if sparse:  # the fused kernel does not take sparse gradients (an nn.Embedding(sparse=True): rare)
                flags = torch.stack([gradient_finite(g) for g in grads])
            else:
                flags = torch.isfinite(torch.stack(torch._foreach_norm(grads, math.inf)))
            parts.append(flags.to(device, non_blocking=True))
            names.extend(named[i][0] for i in members)
    except (RuntimeError, TypeError, AttributeError, NotImplementedError):
        return None
    return (names, torch.cat(parts)) if parts else None


@dataclass
class _GradWindow:
    """The training batches of one optimizer step (several under gradient accumulation): the first and last batch
    index, the normalisation statistics before the first (``nonfinite="skip"``), the last batch's loss terms, and
    the batches of the window whose loss or embeddings were not finite under ``nonfinite="skip"`` (``skipped``:
    (batch index, what was not finite) pairs; the whole optimizer step is skipped at
    :meth:`MetricLearningModule.on_before_optimizer_step`)."""

    first: int
    last: int
    norms: list[tuple[torch.Tensor, torch.Tensor]] | None
    terms: dict[str, torch.Tensor]
    skipped: list[tuple[int, str]] = field(default_factory=list)


def _for_default_data(monitor: str) -> str:
    """``monitor`` with its scale alias (``finest`` / ``coarsest``) resolved for the default data's scales (the
    synthetic hierarchy's ``fine, middle, coarse``), as a run resolves it."""
    return resolve_monitor(monitor, DEFAULT_DATA_SCALES)


DEFAULT_MONITOR = _for_default_data(TrainerConfig().monitor)
"""``TrainerSettings.monitor`` / ``OptimSettings.monitor`` (with ``val/``) by default: the schema's default,
``finest/map@r``, stored resolved (``fine/map@r``) because the settings hold the logged metric's own name."""


@dataclass
class OptimSettings:
    """Optimizer and schedule. Groups: ``backbone`` (``embedder.backbone``), ``head`` (every other embedder
    parameter: embedding heads, pooling), ``loss`` (``loss.loss_parameters()`` of every term: proxies, PDDM).

    Schedules (a multiplicative factor on every group's lr, after a linear warm-up of ``warmup_steps`` +
    ``warmup_epochs`` epochs): ``none``; ``cosine`` to ``min_lr`` over the run; ``step`` (x ``gamma`` every
    ``step_size_epochs``); ``multistep`` (x ``gamma`` at each epoch in ``milestones``); ``plateau``
    (x ``gamma`` after ``step_size_epochs`` validations without improvement of ``monitor``).
    ``interval="epoch"`` makes cosine change once per epoch instead of every step.

    Resolved from the ``optim`` config section by :func:`dynametric.engine.builders.optim_settings`; the defaults
    are the schema's (``monitor`` holds the resolved scale name of the default data).
    """

    optimizer: str = _OPTIM.name
    lr: float = _OPTIM.lr
    weight_decay: float = _OPTIM.weight_decay
    momentum: float = _OPTIM.momentum
    kwargs: dict[str, Any] = field(default_factory=dict)
    backbone: GroupSettings = field(default_factory=GroupSettings)
    head: GroupSettings = field(default_factory=GroupSettings)
    loss: GroupSettings = field(default_factory=GroupSettings)
    scheduler: str = _OPTIM.scheduler.name  # none | cosine | step | multistep | plateau
    warmup_steps: int = 0  # not a config key: for library callers
    warmup_epochs: int = _OPTIM.scheduler.warmup_epochs
    step_size_epochs: int = _OPTIM.scheduler.step_size
    gamma: float = _OPTIM.scheduler.gamma
    milestones: list[int] = field(default_factory=list)
    min_lr: float = _OPTIM.scheduler.min_lr
    interval: str = _OPTIM.scheduler.interval
    monitor: str = f"val/{DEFAULT_MONITOR}"
    monitor_mode: str = _OPTIM_MONITOR_MODE


_OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD,
               "rmsprop": torch.optim.RMSprop}


def parameter_groups(embedder: nn.Module, objectives: Sequence[Objective],
                     settings: OptimSettings) -> list[dict[str, Any]]:
    """Split parameters into the ``backbone`` / ``head`` / ``loss`` groups (empty groups dropped)."""
    seen: set[int] = set()

    def take(params: Any) -> list[nn.Parameter]:
        out = []
        for p in params:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                out.append(p)
        return out

    backbone = getattr(embedder, "backbone", None)
    groups = {"backbone": take(backbone.parameters()) if isinstance(backbone, nn.Module) else []}
    groups["head"] = take(embedder.parameters())
    loss_params: list[nn.Parameter] = []
    for obj in objectives:
        lp = obj.loss.loss_parameters() if hasattr(obj.loss, "loss_parameters") else list(obj.loss.parameters())
        loss_params += take(lp)
        if obj.miner is not None:
            loss_params += take(obj.miner.parameters())
    groups["loss"] = loss_params
    out = []
    for name, params in groups.items():
        if not params:
            continue
        gs: GroupSettings = getattr(settings, name)
        out.append({"name": name, "params": params,
                    "lr": settings.lr if gs.lr is None else gs.lr,
                    "weight_decay": settings.weight_decay if gs.weight_decay is None else gs.weight_decay})
    return out


def build_optimizer(groups: list[dict[str, Any]], settings: OptimSettings) -> torch.optim.Optimizer:
    name = settings.optimizer.lower()
    if name not in _OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {settings.optimizer!r}; expected one of {sorted(_OPTIMIZERS)}",
                          key="optim.name")
    kwargs: dict[str, Any] = {"lr": settings.lr}
    if name in ("sgd", "rmsprop"):
        kwargs["momentum"] = settings.momentum
    kwargs.update(settings.kwargs)
    try:
        return _OPTIMIZERS[name](groups, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"cannot build optimizer {name}: {exc}", key="optim.kwargs") from None


_SCHEDULES = ("none", "cosine", "step", "multistep", "plateau")
_NEVER = 2**62
"""The frequency (in epochs) of the plateau schedule as Lightning sees it: never reached, the module steps it."""


@dataclass
class ScheduleClock:
    """A step schedule whose position is not the optimizer steps (the alternating module: one position per
    iteration, 1 or 2 optimizer steps) in a run that ``trainer.max_steps`` (optimizer steps) can end.

    ``steps_done()``: the optimizer steps done now; ``max_steps``: the limit; ``marks``: ``{position: steps done}``
    at the warm-up's end and the epochs' starts, filled by :func:`lr_lambda` when the position gets there (kept by
    the caller, e.g. in its checkpoint); ``positions``: the schedule's length in positions (``max_epochs`` x the
    iterations of an epoch), ``None`` when no epoch limit ends the run."""

    steps_done: Callable[[], int]
    max_steps: int
    marks: dict[int, int]
    positions: int | None


def lr_lambda(settings: OptimSettings, total_steps: int | None, steps_per_epoch: int,
              clock: ScheduleClock | None = None) -> Callable[[int], float]:
    """Multiplicative LR factor per optimizer step: linear warm-up, then constant / cosine / step decay.

    With a ``clock`` (:class:`ScheduleClock`) the argument is the clock's position, ``total_steps`` its length in
    positions (``None``: unbounded), and cosine's progress is the further of the two ends the run can reach: in
    positions, and in optimizer steps towards ``clock.max_steps`` (from the steps done when the warm-up ended), so
    the rate is ``min_lr`` when either limit ends the run. The warm-up and the epochs count positions."""
    sched = settings.scheduler.lower()
    if sched not in _SCHEDULES:
        raise ConfigError(f"unknown scheduler {settings.scheduler!r}; expected one of {list(_SCHEDULES)}",
                          key="optim.scheduler")
    per_epoch = max(1, int(steps_per_epoch))
    warm = max(0, int(settings.warmup_steps) + int(settings.warmup_epochs) * per_epoch)
    total = None if total_steps is None else max(1, int(total_steps))
    floor = settings.min_lr / settings.lr if settings.lr > 0 else 0.0
    milestones = sorted(int(m) for m in settings.milestones)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        epoch = step // per_epoch
        if sched == "cosine":
            at = epoch * per_epoch if settings.interval == "epoch" else step
            t = 0.0 if total is None else (at - warm) / max(1, total - warm)
            if clock is not None:
                now = int(clock.steps_done())
                if step in (warm, epoch * per_epoch):  # the warm-up's end, an epoch's start: kept
                    clock.marks.setdefault(step, now)
                # a position passed without a mark (resumed from a checkpoint of an older version): its own number,
                # the fewest optimizer steps it can have taken
                at_steps, start = (clock.marks.get(p, now if p == step else p) for p in (at, warm))
                t = max(t, (at_steps - start) / max(1, int(clock.max_steps) - start))
            t = min(1.0, max(0.0, t))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
        if sched == "step":
            return settings.gamma ** (epoch // max(1, settings.step_size_epochs))
        if sched == "multistep":
            return settings.gamma ** sum(1 for m in milestones if epoch >= m)
        return 1.0

    return factor


def _no_sync_dist_advice(key: str) -> None:
    """Lightning's advice to log ``key`` with ``sync_dist=True`` (a ``PossibleUserWarning`` at the end of a
    distributed run's epoch), off for ``key`` alone: a loss term of :meth:`MetricLearningModule.log_terms` is the loss
    of the gathered global batch, equal in every process, and logged as rank 0's own without a collective. The
    filter matches that one message for that one key; Lightning's other warnings are untouched. Added where the
    current filters lack it (``warnings.catch_warnings``, which :func:`dynametric.pipeline.run.run_training` puts
    around the fit, puts the filters of before back when it ends)."""
    pattern = re.escape(f"It is recommended to use `self.log({key!r}, ..., sync_dist=True)`")
    if not any(f[0] == "ignore" and getattr(f[1], "pattern", None) == pattern for f in warnings.filters):
        warnings.filterwarnings("ignore", message=pattern, category=UserWarning)


class MetricLearningModule(L.LightningModule):
    """Embedder + objectives; logs ``train/loss`` and ``val/<scale>/<metric>``.

    Args:
        embedder: ``forward(images)`` -> ``[B, D]`` or a dict/tuple of heads; ``.backbone`` for the backbone group.
        objectives: loss terms (:class:`Objective`).
        optim: :class:`OptimSettings`.
        evaluator: ``evaluator(emb, labels, scale_names=...) -> {"<scale>": {...}, "mean": {...}}`` (plus
            ``query_ids`` / ``query_categories`` where the evaluated dataset carries sequence / category ids); default
            :func:`dynametric.metrics.evaluate_embeddings` with ``eval_kwargs`` on the module's device. The module's
            validation and test rounds evaluate the gathered embeddings with the leave-one-out protocol
            (:class:`dynametric.engine.protocols.LeaveOneOut`).
        eval_head: which output to evaluate for multi-head models (a head name or ``"concat"``).
        nonfinite: ``"stop"`` raises :class:`NonFiniteLossError` naming the step; ``"skip"`` skips the step
            and counts it (``self.skipped_steps``) with a warning. For the loss, the model's outputs and, before the
            optimizer step, the gradients (:meth:`_check_gradients`).
        gather: all-gather embeddings across DDP ranks before the loss (default on; a no-op on one process).
        group_builder: the optimizer's parameter groups (:data:`GroupBuilder`; default :func:`parameter_groups`,
            the ``backbone`` / ``head`` / ``loss`` groups of ``optim``). A library caller with its own grouping
            passes it here (``benchmarks/claim_sharing.py``: :func:`dynametric.methods.sharing.sharing_param_groups`).
    """

    _loss_history: list[list[float]]
    _pending_losses: list[tuple[int, torch.Tensor]]  # (step, loss) kept as tensors until the history is read

    def __init__(
        self,
        embedder: nn.Module,
        objectives: Sequence[Objective],
        optim: OptimSettings | None = None,
        *,
        evaluator: Evaluator | None = None,
        eval_kwargs: dict[str, Any] | None = None,
        eval_head: str | None = None,
        scale_names: Sequence[str] | None = None,
        nonfinite: str = "stop",
        gather: bool = True,
        group_builder: GroupBuilder | None = None,
    ) -> None:
        super().__init__()
        if nonfinite not in ("stop", "skip"):
            raise ConfigError(f"nonfinite must be 'stop' or 'skip', got {nonfinite!r}", key="trainer.nonfinite")
        self.embedder = embedder
        self.objectives = list(objectives)
        self.losses = nn.ModuleList([o.loss for o in self.objectives])
        self.miners = nn.ModuleList([o.miner for o in self.objectives if o.miner is not None])
        self.optim_settings = optim or OptimSettings()
        self.evaluator = evaluator
        self.eval_kwargs = dict(eval_kwargs or {})
        self.eval_head = eval_head
        self.scale_names = list(scale_names) if scale_names is not None else None
        self.nonfinite = nonfinite
        self.gather = gather
        self.group_builder: GroupBuilder = group_builder or parameter_groups
        self.skipped_steps = 0
        self.validation_history: list[dict[str, Any]] = []
        self.plateau_rounds = 0  # validation_history entries the plateau schedule has stepped on (_step_plateau)
        self._plateau: torch.optim.lr_scheduler.ReduceLROnPlateau | None = None
        self.plateau_warned = False  # the warning of a plateau schedule without validation given
        self.loss_history = []  # [global step, loss] pairs for the report's curve
        # the learning rates of the logged steps, {"train/lr" or "train/lr/<group>": [[global step, lr], ...]}
        self.lr_history: dict[str, list[list[float]]] = {}
        # the run's resolved config (``config_to_dict``) and its ``config_hash``, stored in every checkpoint so a
        # resume can tell whether the run folder's config.yaml is still the one the run trained with
        self.run_config: dict[str, Any] | None = None
        self.run_config_hash: str | None = None
        # what each named component of the config resolved to ({"loss.name": "module.Class", ...}), stored in every
        # checkpoint so a resume can say when a name now resolves to another class (a registry entry replaced)
        self.run_components: dict[str, str] | None = None
        self.last_eval: dict[str, Any] | None = None
        self.last_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None
        self._eval_buffer: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._deferred_checks: list[_DeferredCheck] = []
        # the accumulation window under way, for the gradient check before its optimizer step (_check_gradients)
        self._grad_window: _GradWindow | None = None

    channels_last = False  # batches in the channels_last memory format (model.channels_last; the builders set it)
    per_category = True  # report per query category where the evaluated data has categories (eval.per_category)

    @property
    def loss_history(self) -> list[list[float]]:
        """``[global step, loss]`` pairs for the report's curve. The training step keeps the loss as a tensor (no
        host synchronisation per step); it becomes a float here, when the history is read."""
        if self._pending_losses:
            self._loss_history.extend([float(step), float(loss)] for step, loss in self._pending_losses)
            self._pending_losses = []
        return self._loss_history

    @loss_history.setter
    def loss_history(self, value: list[list[float]]) -> None:
        self._loss_history = value
        self._pending_losses = []

    def batch_images(self, batch: Any) -> torch.Tensor:
        """The images of a batch, in the channels_last memory format when :attr:`channels_last` is set."""
        images = batch[0]
        if self.channels_last and isinstance(images, torch.Tensor) and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    # ----------------------------------------------------------------- forward / training
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """The evaluation embedding (``eval_head`` of a multi-head model)."""
        return select_head(self.embedder(images), self.eval_head)

    def _defer_nonfinite_check(self, total: torch.Tensor) -> bool:
        """Whether ``nonfinite="stop"`` checks this step later, with a window of steps: on an accelerator, reading
        the flag every step would make the host wait for the GPU at every step. On the CPU the check is immediate."""
        return self.nonfinite == "stop" and total.device.type != "cpu"

    def _where(self, batch_idx: int, step: str) -> str:
        return f"{step + ' step, ' if step else ''}global step {self.global_step} (epoch {self.current_epoch}, " \
               f"batch {batch_idx})"

    @staticmethod
    def _problem(where: str, bad: dict[str, float], bad_rows: int) -> str:
        """What was not finite, and where, for the messages (``bad_rows`` < 0: the gradient of a finite loss)."""
        if bad_rows < 0:
            return f"non-finite gradient at {where} (loss {bad})"
        if bad_rows:
            return f"non-finite embeddings at {where} ({bad_rows} row{'s' if bad_rows != 1 else ''} of the model's " \
                   f"output; loss {bad})"
        return f"non-finite loss at {where}: {bad}"

    @classmethod
    def _stop(cls, where: str, bad: dict[str, float], bad_rows: int = 0) -> NonFiniteLossError:
        return NonFiniteLossError(f"{cls._problem(where, bad, bad_rows)}; lower the learning rate, check the data, "
                                  "or set trainer.nonfinite=skip")

    @staticmethod
    def _nonfinite_rows(outputs: Any) -> torch.Tensor | None:
        """The number of batch rows with a NaN/Inf in any of the model's outputs (a tensor, or a dict or tuple of
        heads), as a device tensor (no host read); None for an output without tensors.

        Some losses stay finite when a row is NaN (its pairs fail every margin comparison and drop out), so the
        loss alone does not show a model that has started to produce NaN."""
        if isinstance(outputs, torch.Tensor):
            heads = [outputs]
        elif isinstance(outputs, Mapping):
            heads = list(outputs.values())
        else:
            heads = list(outputs) if isinstance(outputs, (list, tuple)) else []
        counts = [(~torch.isfinite(h.detach().reshape(h.shape[0], -1))).any(dim=1).sum()
                  for h in heads if isinstance(h, torch.Tensor) and h.dim() >= 1 and h.is_floating_point()]
        if not counts:
            return None
        return counts[0] if len(counts) == 1 else torch.stack(counts).max()

    def _skip_nonfinite(self, total: torch.Tensor, terms: dict[str, torch.Tensor], batch_idx: int,
                        step: str = "", outputs: Any = None, window: _GradWindow | None = None) -> bool:
        """False for a finite loss from finite embeddings. Otherwise raise :class:`NonFiniteLossError`
        (``nonfinite="stop"``) or count and log the step as skipped and return True (``"skip"``). ``step`` names
        the step kind in the messages; ``outputs`` is the model's output for the batch (its rows are checked too:
        :meth:`_nonfinite_rows`). With ``window`` (the automatic optimisation's optimizer step under way) a skipped
        batch is recorded in it instead, and the whole optimizer step, every accumulated batch of it, is skipped,
        counted and logged once at :meth:`on_before_optimizer_step` (:meth:`_skip_window`).

        With ``stop`` on an accelerator the flag is read for ``log_every_n_steps`` steps at once, and at every epoch
        end, validation and checkpoint (:meth:`check_deferred_nonfinite`): the error names the first bad step as
        before, and no checkpoint is written after it."""
        loss = total.detach()
        rows = self._nonfinite_rows(outputs) if outputs is not None else None
        if rows is None:
            rows = torch.zeros((), dtype=torch.long, device=loss.device)
        loss_bad = ~torch.isfinite(loss).all()
        if world_info()[1] > 1:  # one decision for every rank: a rank that skipped alone left the others waiting
            rows, loss_bad = agree_nonfinite(rows, loss_bad)
        finite = ~loss_bad & (rows == 0)
        if self._defer_nonfinite_check(total):
            self._deferred_checks.append((finite, rows, {k: v.detach() for k, v in terms.items()},
                                          self._where(batch_idx, step)))
            every = max(1, int(getattr(self._trainer, "log_every_n_steps", 1) or 1)) if self._trainer else 1
            # the automatic path's gradient flags (five entries) ride along: the window counts the loss checks
            if sum(len(entry) == 4 for entry in self._deferred_checks) >= every:
                self.check_deferred_nonfinite()
            return False
        if bool(finite):  # the one host read of a step without deferral
            return False
        bad_rows = int(rows)
        where = self._where(batch_idx, step)
        bad = {k: float(v) for k, v in terms.items()}
        if self.nonfinite == "stop":
            raise self._stop(where, bad, bad_rows)
        if window is not None:
            window.skipped.append((batch_idx, self._problem(where, bad, bad_rows)))
            return True
        self.skipped_steps += 1
        logger.warning("%s; step skipped (%d skipped so far)", self._problem(where, bad, bad_rows), self.skipped_steps)
        return True

    def norm_statistics(self) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """With ``nonfinite="skip"``, copies of the embedder's normalisation statistics (the running mean, variance
        and count of its batch-norm layers), taken before a training forward pass: that pass updates them whatever
        the step's fate, so a skipped step's non-finite batch would leave NaN statistics behind and every later
        evaluation would embed NaN (:meth:`restore_norm_statistics` puts them back). Copies on the device, no host
        read; ``None`` otherwise."""
        if self.nonfinite != "skip":
            return None
        from torch.nn.modules.batchnorm import _NormBase

        return [(buf, buf.detach().clone()) for module in self.embedder.modules()
                if isinstance(module, _NormBase) and module.track_running_stats and module.training
                for buf in (module.running_mean, module.running_var, module.num_batches_tracked) if buf is not None]

    @staticmethod
    def restore_norm_statistics(kept: list[tuple[torch.Tensor, torch.Tensor]] | None) -> None:
        """Put back what :meth:`norm_statistics` copied (a skipped step leaves the model as it was)."""
        with torch.no_grad():
            for buf, copy in kept or []:
                buf.copy_(copy)

    def _nonfinite_weights_error(self, what: str) -> NonFiniteLossError | None:
        """The error for weights holding a NaN/Inf (``what`` says what they were about to do), or None."""
        bad = nonfinite_parameters(self)
        if not bad:
            return None
        return NonFiniteLossError(f"the model's weights are non-finite at global step {self.global_step} (epoch "
                                  f"{self.current_epoch}): {len(bad)} parameter(s), first {bad[0]}; {what}; lower "
                                  "the learning rate, or try trainer.precision=32")

    def check_deferred_nonfinite(self) -> None:
        """Read the finiteness flags queued by :meth:`_skip_nonfinite` (one host synchronisation) and raise for the
        first non-finite step."""
        pending, self._deferred_checks = getattr(self, "_deferred_checks", []), []
        if not pending:
            return
        ok = torch.stack([entry[0] for entry in pending]).cpu()
        if bool(ok.all()):
            return
        entry = pending[int((~ok).nonzero()[0, 0])]
        rows, terms, where = entry[1], entry[2], entry[3]
        if len(entry) == 5:  # the automatic path's gradient check, read after its step
            where = self._deferred_gradient_where(where, entry[4])
        raise self._stop(where, {k: float(v) for k, v in terms.items()}, int(rows))

    def _deferred_gradient_where(self, where: str, flags: _GradientFlags) -> str:
        """``where`` of a deferred gradient check that failed, with the first parameter (in the model's order) whose
        gradient was not finite, from the flags queued with it (:func:`finite_gradients`)."""
        if flags is not None:
            names, finite = flags[0], flags[1].cpu().tolist()
            bad = {n for n, good in zip(names, finite, strict=True) if not good}
            if bad:
                order = [n for n, _ in self.named_parameters() if n in bad]
                first = order[0] if order else sorted(bad)[0]
                return f"{where}, first in parameter {first} ({len(bad)} of {len(names)} parameters; the loss is " \
                       "finite)"
        return f"{where} (the loss is finite; which parameter is not known: the flag was read after the step, " \
               "sparing a host read per step)"

    @staticmethod
    def _gradient_where(where: str, names: list[str], finite: list[bool]) -> str:
        """``where`` of a non-finite gradient, with the first parameter whose gradient is not finite."""
        bad = [n for n, good in zip(names, finite) if not good]
        if not bad:  # another rank's gradient (DDP agreed on it)
            return f"{where}, in another process's gradients"
        return f"{where}, first in parameter {bad[0]} ({len(bad)} of {len(names)} parameters; the loss is finite)"

    def _scaled_precision(self) -> bool:
        """Whether the precision has a gradient scaler (``16-mixed``): the scaler skips a step with a non-finite
        gradient itself."""
        return self._trainer is not None and getattr(self.trainer.precision_plugin, "scaler", None) is not None

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        """The gradient check of the automatic optimisation (Lightning calls this after the backward passes of an
        optimizer step, before gradient clipping and the update): :meth:`_skip_window` when a batch of the step had
        a non-finite loss or embeddings (``nonfinite="skip"``), else :meth:`_check_gradients`."""
        window, self._grad_window = self._grad_window, None
        if not self.automatic_optimization:  # manual optimisation (the alternating methods) checks in its own step
            return
        if window is not None and window.skipped:  # every process has the same (agree_nonfinite): no collective
            self._skip_window(window)
        else:
            self._check_gradients(window)

    def _skip_window(self, window: _GradWindow) -> None:
        """Skip the optimizer step of ``window``, one of whose batches had a non-finite loss or embeddings under
        ``nonfinite="skip"``: as :meth:`_check_gradients` does for a non-finite gradient, the gradients of every
        batch of the step are dropped (the optimizer's step changes neither the weights nor its state), the
        normalisation statistics put back as they were before the step's first batch, and the step counted and
        logged once. Under gradient accumulation the window's finite batches went on with their backward passes;
        an update from them alone (each at 1/K weight) was not the step the config asked for. No host read: the
        batches' flags were read by :meth:`_skip_nonfinite` already."""
        for p in self.parameters():  # no gradient, no update: the optimizer's step leaves them and its state
            p.grad = None
        self.restore_norm_statistics(window.norms)
        self.skipped_steps += 1
        (_, problem), *more = window.skipped
        if window.first == window.last:
            logger.warning("%s; step skipped (%d skipped so far)", problem, self.skipped_steps)
            return
        bad = ", ".join(str(b) for b, _ in window.skipped)
        logger.warning("%s; step skipped: the optimizer step of batches %d-%d (accumulated; non-finite: batch%s %s) "
                       "(%d skipped so far)", problem, window.first, window.last, "es" if more else "", bad,
                       self.skipped_steps)

    def _check_gradients(self, window: _GradWindow | None) -> None:
        """``trainer.nonfinite`` for the gradients of a finite loss: a finite loss can have a NaN/Inf gradient (an
        ``acos`` at 1, a ``sqrt`` at 0, an overflow in the backward pass), and one update with it makes the weights
        NaN. Every gradient finite: nothing happens (the update is the one it was). Otherwise ``stop`` raises
        :class:`NonFiniteLossError` naming the step and the first parameter with a non-finite gradient (on an
        accelerator the flag is queued for :meth:`check_deferred_nonfinite` with the loss flags, with each
        gradient's own flag from :func:`finite_gradients`: no host read per step), and ``skip`` drops the
        gradients so the optimizer's step changes nothing (its state included: a parameter without a gradient is
        left alone), counts and logs the step and puts the normalisation statistics
        back as they were before the step's first batch. Under gradient accumulation the check covers the
        accumulated gradients of the window's batches (a NaN or Inf stays non-finite in a sum). Under DDP the
        ranks agree (the gradients are averaged already; one all-reduce keeps the decision common whatever
        happens). Not under a gradient scaler (:meth:`_scaled_precision`), which skips such steps itself."""
        if self._scaled_precision():
            return
        named = [(n, p.grad) for n, p in self.named_parameters() if p.grad is not None]
        distributed = world_info()[1] > 1
        if not named and not distributed:
            return
        device = named[0][1].device if named else self.device
        bad = nonfinite_gradients([g for _, g in named], device)
        if distributed:
            _, bad = agree_nonfinite(torch.zeros((), dtype=torch.long, device=device), bad)
        terms = window.terms if window is not None else {}
        if window is None:  # a training step of a subclass that keeps no window
            where = f"global step {self.global_step} (epoch {self.current_epoch})"
        elif window.first == window.last:
            where = self._where(window.last, "")
        else:
            where = f"global step {self.global_step} (epoch {self.current_epoch}, batches {window.first}-" \
                    f"{window.last}, accumulated)"
        names = [n for n, _ in named]
        if self._defer_nonfinite_check(bad):  # with each gradient's flag: the gradients are gone when it is read
            self._deferred_checks.append((~bad, torch.full((), -1, device=device), terms, where,
                                          finite_gradients(named, device)))
            return
        if not bool(bad):  # the one host read of the gradient check (on the CPU, or under skip)
            return
        flags = [bool(gradient_finite(g)) for _, g in named]  # which parameter: only once a step failed
        detail = self._gradient_where(where, names, flags)
        values = {k: float(v) for k, v in terms.items()}
        if self.nonfinite == "stop":
            raise self._stop(detail, values, -1)
        for p in self.parameters():  # no gradient, no update: the optimizer's step leaves them and its state
            p.grad = None
        self.restore_norm_statistics(window.norms if window is not None else None)
        self.skipped_steps += 1
        logger.warning("%s; step skipped (%d skipped so far)", self._problem(detail, values, -1), self.skipped_steps)

    def on_train_epoch_end(self) -> None:
        self.check_deferred_nonfinite()
        self._step_plateau()

    def _step_plateau(self) -> None:
        """The ``plateau`` schedule's step of this epoch: once per validation round, with the round's value of the
        monitor, by the module rather than by Lightning (:meth:`configure_optimizers` registers it with a frequency
        Lightning never reaches: its state is still saved and restored with the other schedules').

        Lightning steps an epoch ``ReduceLROnPlateau`` after every callback's ``on_train_epoch_end``, so after the
        end-of-epoch ``last.ckpt`` (:class:`~dynametric.engine.callbacks.ResumeState`), which then lacked the step;
        it skips the step at the end of an epoch that a run resumed into (its ``restarting``), and at the end of an
        epoch without validation (``trainer.val_every`` > 1) it steps with the last round's value, which a resumed
        run does not have. Here the step comes before every checkpoint of the epoch, only after an epoch that
        validated (the schedule counts validation rounds without improvement, as documented), and once per round:
        ``plateau_rounds`` (in every checkpoint) counts the rounds stepped on, since Lightning repeats the end of an
        epoch resumed from its end-of-epoch checkpoint when it trains to ``max_steps``."""
        plateau = self._plateau
        if plateau is not None and not self.trainer.enable_validation and not self.plateau_warned:
            self.plateau_warned = True
            warnings.warn("plateau schedule in a run without validation: the learning rate never changes",
                          RuntimeWarning, stacklevel=2)
        history = self.validation_history
        if plateau is None or self.plateau_rounds >= len(history) or history[-1].get("epoch") != self.current_epoch:
            return
        self.plateau_rounds = len(history)
        monitor = self.optim_settings.monitor
        value = self.trainer.callback_metrics.get(monitor)
        if value is None:
            warnings.warn(f"plateau schedule: validation logged no {monitor!r}, the schedule is not stepped "
                          f"(logged: {', '.join(sorted(self.trainer.callback_metrics))})", RuntimeWarning, stacklevel=2)
            return
        if bool(torch.isnan(torch.as_tensor(value)).any()):
            return  # a round without a value (no validation query counted) is no evidence of a plateau
        # the rule of configure_optimizers even after a resume: torch's load_state_dict puts back the threshold and
        # eps a checkpoint saved (an older run's: torch's defaults 1e-4 and 1e-8)
        plateau.threshold = plateau.eps = 0.0
        plateau.step(value)

    def on_train_end(self) -> None:
        self.check_deferred_nonfinite()

    def logs_this_step(self) -> bool:
        """Whether Lightning's loggers write the ``on_step`` values of the training batch under way (in the training
        step and the batch hooks): its own rule, at the optimizer step that ends an accumulation, when that step's
        global number ``s`` (the steps done before it, the loggers' ``step``) has ``(s + 1) % log_every_n_steps == 0``,
        or when training stops. True without a trainer."""
        trainer = self._trainer
        if trainer is None:
            return True
        try:
            if self.automatic_optimization and trainer.fit_loop._should_accumulate():
                return False
            return bool(trainer._logger_connector.should_update_logs)
        except (AttributeError, NotImplementedError):  # not in a fit (no training loop running)
            return False

    def logged_step(self) -> int:
        """The step the loggers file the training batch under way at: Lightning's count of the batches that stepped
        an optimizer before it (``global_step`` under automatic optimization; a module that steps several optimizers
        per batch by hand, the alternating methods, counts every optimizer step in ``global_step`` but one batch
        here). ``global_step`` outside a fit."""
        try:
            return int(self.trainer.fit_loop.epoch_loop._batches_that_stepped)
        except (AttributeError, RuntimeError):  # no trainer attached, or a Lightning without that counter
            return int(self.global_step)

    def learning_rates(self) -> dict[str, float]:
        """The learning rates the next optimizer step uses, as logged: ``{"train/lr": lr}`` with one parameter group,
        ``{"train/lr/<group>": lr}`` per group with several (the group's ``name``: ``backbone``, ``head``, ``loss``;
        ``group<i>`` for a group without one). Host numbers (the optimizer's own): nothing is read from the device."""
        groups = [g for opt in (self.trainer.optimizers if self._trainer is not None else []) for g in opt.param_groups]
        if len(groups) == 1:
            return {"train/lr": float(groups[0]["lr"])}
        out: dict[str, float] = {}
        for i, group in enumerate(groups):
            name = str(group.get("name") or f"group{i}")
            out[f"train/lr/{name if f'train/lr/{name}' not in out else f'{name}{i}'}"] = float(group["lr"])
        return out

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """At the steps the loggers write (:meth:`logs_this_step`), the learning rates of the step about to run
        (:meth:`learning_rates`, before the step's scheduler update) as ``train/lr`` (``train/lr/<group>``), logged as
        CPU float64 values (no transfer to the device, no rounding) and kept for the report (:attr:`lr_history`)."""
        if not self.logs_this_step():
            return
        step = self.logged_step()
        for name, lr in self.learning_rates().items():
            self.log(name, torch.tensor(lr, dtype=torch.float64), on_step=True, on_epoch=False, batch_size=1)
            series = self.lr_history.setdefault(name, [])
            if not series or series[-1][0] != step:  # once per step (every batch of an accumulation asks)
                series.append([float(step), lr])

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        images, labels = self.batch_images(batch), batch[1]
        kept = self.norm_statistics()
        outputs = self.embedder(images)
        gather = all_gather_with_grad if (self.gather and world_info()[1] > 1) else None
        parts: dict[str, torch.Tensor] = {}
        total, terms = compute_objective(outputs, labels, self.objectives, gather=gather, parts=parts)
        window = self._grad_window  # the optimizer step's batches so far (for the gradient check)
        if window is None:
            window = self._grad_window = _GradWindow(batch_idx, batch_idx, kept, {})
        window.last, window.terms = batch_idx, {k: v.detach() for k, v in terms.items()}
        if self._skip_nonfinite(total, terms, batch_idx, outputs=outputs,
                                window=window if self.automatic_optimization else None):
            self.restore_norm_statistics(kept)
            if world_info()[1] > 1:  # every rank must still take part in DDP's gradient reduction
                return sum((p.sum() * 0.0 for p in self.parameters() if p.requires_grad), torch.zeros(()))
            return None
        bs = labels.shape[0]
        if self.logs_this_step():  # the loggers' train/loss_step: the same steps, the same value
            self._pending_losses.append((self.logged_step(), total.detach()))
        self.log("train/loss", total.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=bs,
                 sync_dist=world_info()[1] > 1)
        self.log_terms(terms, parts, bs)
        return total

    def log_terms(self, terms: dict[str, torch.Tensor], parts: dict[str, torch.Tensor], batch_size: int) -> None:
        """Log the loss terms as ``train/<term>`` (when there are several, or the term has parts) and
        their parts (:func:`~dynametric.engine.objective.compute_objective`'s ``parts``) as ``train/<term>/<part>``:
        epoch means, kept on the device until the logger writes them (no host read per step)."""
        keys = [(f"train/{name}", value) for name, value in terms.items()
                if len(terms) > 1 or any(part.startswith(f"{name}/") for part in parts)]
        for key, value in [*keys, *((f"train/{name}", value) for name, value in parts.items())]:
            if torch.distributed.is_available() and torch.distributed.is_initialized():
                _no_sync_dist_advice(key)  # the global batch's loss: the same value in every process
            self.log(key, value, on_step=False, on_epoch=True, batch_size=batch_size)

    def run_record(self) -> dict[str, Any]:
        """Entries the module adds to the run's ``run_info.json`` at the end of a run (host values: counts, events).
        Default: none; the alternating module records its step counts and MIC's clustering history."""
        return {}

    def schedule_clock(self) -> ScheduleClock | None:
        """The :class:`ScheduleClock` of a step schedule whose position is not the optimizer steps in a run that
        ``trainer.max_steps`` can end (the alternating module); ``None`` here: the schedule advances once per
        optimizer step, and Lightning's ``estimated_stepping_batches`` is its length."""
        return None

    def configure_optimizers(self) -> Any:
        s = self.optim_settings
        groups = self.group_builder(self.embedder, self.objectives, s)
        optimizer = build_optimizer(groups, s)
        if s.scheduler == "none" and s.warmup_steps <= 0 and s.warmup_epochs <= 0:
            return optimizer
        if s.scheduler == "plateau":
            # threshold 0: an improvement is any better score, as for best.ckpt and early stopping (torch's default,
            # 1e-4 relative, counted a round that replaced best.ckpt as one without improvement); eps 0: every drop
            # happens (torch's default, 1e-8, ignored a drop smaller than that: a group with a tiny rate stopped
            # dropping while the others went on)
            plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=s.monitor_mode, factor=s.gamma, patience=max(0, s.step_size_epochs), threshold=0.0,
                eps=0.0)
            self._plateau = plateau  # stepped by on_train_epoch_end (_step_plateau), never by Lightning:
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": plateau, "interval": "epoch",
                                                             "frequency": _NEVER, "monitor": s.monitor,
                                                             "strict": False}}
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1
        per_epoch = total
        if self._trainer is not None and self.trainer.max_epochs and self.trainer.max_epochs > 0:
            per_epoch = max(1, total // int(self.trainer.max_epochs))
        if self._trainer is not None and self.trainer.max_steps and self.trainer.max_steps > 0:
            n_batches = self.trainer.num_training_batches
            if isinstance(n_batches, (int, float)) and math.isfinite(n_batches) and n_batches > 0:
                # Lightning steps on an epoch's short last accumulation too: ceil(batches / accumulation) steps
                per_epoch = max(1, -(-int(n_batches) // max(1, self.trainer.accumulate_grad_batches)))
        clock = self.schedule_clock()
        length: int | None = total if clock is None else clock.positions
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(s, length, per_epoch, clock))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ----------------------------------------------------------------- evaluation
    def _collect(self, batch: Any) -> None:
        images, labels = self.batch_images(batch), batch[1]
        emb = self(images)
        labels = as_label_matrix(labels, name="labels")
        self._eval_buffer.append((emb.detach().float().cpu(), labels.detach().cpu()))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._collect(batch)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._collect(batch)

    def on_validation_epoch_start(self) -> None:
        self.check_deferred_nonfinite()
        self._eval_buffer = []

    def on_test_epoch_start(self) -> None:
        self._eval_buffer = []

    def _evaluated_dataset(self, count: int) -> Any:
        """The dataset of the gathered embeddings (the datamodule's validation set while validating, the evaluated
        set of a test), which they follow in order (a DDP shard is a contiguous slice, gathered in rank order); its
        sequence and category ids enter the evaluation. ``None`` when unknown; of another length, ``None`` with a
        warning, or an error when that dataset carries sequence ids (without them a query would find the other
        frames of its own sequence: a wrong number, not a smaller report)."""
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        if trainer is None or dm is None:
            return None
        if trainer.validating or trainer.sanity_checking:
            ds = getattr(dm, "val_set", None)
        else:
            ds = getattr(dm, "dataset", None)
            ds = getattr(dm, "test_set", None) if ds is None else ds
        if ds is None or not hasattr(ds, "__len__"):
            return None
        if len(ds) == count:
            return ds
        what = f"{count} embeddings were gathered for a dataset of {len(ds)} items"
        if getattr(ds, "sequence_ids", None) is not None:
            raise ConfigError(f"{what} that carries sequence ids; the same-sequence exclusion needs one embedding "
                              "per item in the dataset's order", key="data")
        if getattr(ds, "category_ids", None) is not None:
            warnings.warn(f"{what}; its categories are not reported (eval.per_category)", stacklevel=2)
        return None

    def _evaluate_buffer(self) -> dict[str, Any]:
        if not self._eval_buffer:
            raise ConfigError("evaluation split is empty", key="data")
        emb = torch.cat([e for e, _ in self._eval_buffer])
        labels = torch.cat([lab for _, lab in self._eval_buffer])
        self._eval_buffer = []
        if world_info()[1] > 1:
            emb = all_gather_no_grad(emb.to(self.device)).cpu()
            labels = all_gather_no_grad(labels.to(self.device)).cpu()
        self.last_embeddings = (emb, labels)
        finite = torch.isfinite(emb).all(dim=1)
        if not bool(finite.all()):  # name the weights, not the evaluation's inputs
            what = f"they embed {int((~finite).sum())} of {len(emb)} evaluated items as NaN/Inf"
            error = self._nonfinite_weights_error(what)
            if error is not None:
                raise error
        from dynametric.engine.protocols import LeaveOneOut

        if self.evaluator is None:  # the built-in engine ranks on the module's device (a GPU when training on one)
            from dynametric.metrics import evaluate_embeddings

            evaluate: Callable[..., Any] = functools.partial(evaluate_embeddings,
                                                             **{"device": self.device, **self.eval_kwargs})
        else:
            evaluate = functools.partial(self.evaluator, **self.eval_kwargs)
        # the gathered split (validation, or the test split of a leave-one-out run), every item querying the rest
        dataset = self._evaluated_dataset(len(emb))
        split = getattr(dataset, "split", None)
        return LeaveOneOut(split if isinstance(split, str) else "evaluated", scale_names=self.scale_names,
                           per_category=self.per_category).evaluate_embeddings(emb, labels, evaluate, dataset)

    def _log_results(self, prefix: str, results: dict[str, Any]) -> None:
        """The numbers of an evaluation (``<prefix>/<scale>/<metric>``) through ``self.log``: the callbacks
        (``best.ckpt``, early stopping, the plateau schedule) read them as ``callback_metrics``, the progress bar shows
        the monitored one. In a fit the loggers get them directly instead, as the results hold them (float64 values
        and integer counts, as in ``metrics.json``: ``self.log`` made them float32 tensors), at ``global_step``, the
        optimizer steps done (the step of the round's checkpoint: Lightning logged a round at the step before), with
        the epoch. Outside a fit (``trainer.validate`` / ``trainer.test`` of a library caller) Lightning logs them
        and returns them, as before."""
        trainer = self._trainer
        fitting = trainer is not None and trainer.state.fn == "fit"
        for scale, values in results.items():
            if not isinstance(values, dict) or scale == "protocol":  # by_category: dicts of categories, no number
                continue
            for metric, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    # identical on every rank (computed from gathered embeddings): the sync is a no-op average
                    name = f"{prefix}/{scale}/{metric}"
                    self.log(name, float(value), sync_dist=world_info()[1] > 1, logger=not fitting,
                             prog_bar=name == self.optim_settings.monitor)  # the bar: loss + monitored metric
        if trainer is None or not fitting or trainer.sanity_checking or not trainer.is_global_zero:
            return
        from dynametric.engine.loggers import flat_metrics

        row: dict[str, float | int] = {**flat_metrics(prefix, results), "epoch": int(self.current_epoch)}
        for exp_logger in trainer.loggers:
            exp_logger.log_metrics(row, step=int(self.global_step))
            exp_logger.save()

    def on_validation_epoch_end(self) -> None:
        results = self._evaluate_buffer()
        self.last_eval = results
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            self.validation_history.append({"epoch": int(self.current_epoch), **results})
        self._log_results("val", results)

    def on_test_epoch_end(self) -> None:
        results = self._evaluate_buffer()
        self.last_eval = results
        self._log_results("test", results)

    # ----------------------------------------------------------------- checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_deferred_nonfinite()  # never save weights updated by a non-finite step
        error = self._nonfinite_weights_error("no checkpoint is written")  # nor weights a NaN update reached
        if error is not None:
            raise error
        checkpoint["dynametric"] = {"validation_history": self.validation_history,
                                    "loss_history": self.loss_history,
                                    "lr_history": self.lr_history,
                                    "skipped_steps": self.skipped_steps,
                                    "plateau_rounds": self.plateau_rounds,
                                    "optim": asdict(self.optim_settings),
                                    # the batches a step draws and the resumed position depend on it
                                    "processes": int(self.trainer.world_size) if self._trainer is not None else 1,
                                    # which dynametric wrote it (Lightning records only its own version)
                                    "dynametric_version": __version__}
        continued = logger_run(self.logger) if self._trainer is not None else None
        if continued is not None:  # the MLflow / W&B run a resume continues
            checkpoint["dynametric"]["logger_run"] = continued
        if self.run_config_hash is not None:
            checkpoint["dynametric"]["config_hash"] = self.run_config_hash
            checkpoint["dynametric"]["config"] = self.run_config
        if self.run_components is not None:
            checkpoint["dynametric"]["components"] = dict(self.run_components)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get("dynametric", {})
        self.validation_history = list(extra.get("validation_history", []))
        # a checkpoint of an earlier version: every round but its last counts as stepped on (an end-of-epoch
        # last.ckpt was written before the step of its epoch's round)
        self.plateau_rounds = int(extra.get("plateau_rounds", max(0, len(self.validation_history) - 1)))
        self.skipped_steps = int(extra.get("skipped_steps", 0))
        self.loss_history = [list(x) for x in extra.get("loss_history", [])]
        lrs = extra.get("lr_history", {})  # none in a checkpoint of an earlier version
        self.lr_history = {str(k): [list(x) for x in v] for k, v in lrs.items()} if isinstance(lrs, dict) else {}
