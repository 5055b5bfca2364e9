"""Alternating class / shared steps in the engine: Sharing Matters' ``alternating`` combination and the MIC
clustering route (Milbich et al., TPAMI 2020; Roth, Brattoli, Ommer, ICCV 2019).

Two method plug-ins (``method.name`` in a config; :mod:`dynametric.methods`) train on this module:

* ``sharing_alternating``: t* (or any miner) on the TRUE labels for the shared head, drawn on its own
  class-balanced batch;
* ``mic``: surrogate labels for the shared head from k-means of per-class-standardised backbone-layer features
  (:class:`dynametric.methods.mic.SurrogateLabeler`), re-clustered on the shared embedding every
  ``recluster_every`` epochs; shared batches carry MIC's label noise.

Per training iteration (Lightning manual optimisation, :class:`AlternatingSharingModule`):

1. class step on the class-balanced batch of the data loader: ``L = sum_class w_i L_i (+ rho L_adv if
   adv_step == "class")``; its own forward, backward, optimizer step;
2. with probability ``p_aux`` a shared step on its own batch (``batch_size // m_shared`` classes or clusters x
   ``m_shared`` images): ``L = sum_shared w_i L_i (+ rho L_adv if adv_step == "shared")``; its own
   forward, backward, optimizer step.

The loss terms come from the config as usual and are assigned by their ``head``: terms on the class head
(``class_head``, default ``class``) form the class step, terms on the shared head the shared step, and terms on
the ``concat`` head (:class:`~dynametric.losses.decorrelation.DecorrelationLoss`) ride on ``adv_step``.
One optimizer (the engine's parameter groups) takes both steps; a step-interval LR schedule advances once per
iteration, its length the run's iterations, or under ``trainer.max_steps`` cosine's progress counted in optimizer
steps (:meth:`AlternatingSharingModule.schedule_clock`): ``min_lr`` at the run's end either way. Every value is
logged at an optimizer step, as on the default path: an iteration's per-step values at the steps done before it,
an epoch's means at ``global_step - 1``. ``trainer.global_step`` counts optimizer steps (1 or 2 per iteration),
and the trainer's ``max_steps`` is never exceeded: when the class step reaches it, the iteration's shared step is
skipped (no ``p_aux`` draw), so a run with ``max_steps = U`` ends after exactly ``U`` optimizer steps
(``benchmarks/claim_sharing.py`` matches the number of updates of every method that way).

Resume: a checkpoint stores the hook's RNG state (p_aux draws and shared batches), the surrogate labels, the
clustering history and the step counters; the default path's exact-resume machinery (sampler position, global RNG)
is unchanged. A resume from a mid-epoch ``last.ckpt`` reproduces the straight run exactly (tested); a re-clustering
already done in the interrupted epoch is not repeated. MIC's features and re-clustering embeddings use the training
images with the evaluation transform (:func:`unaugmented_view`). The
hooks run on one process (DDP refused), without gradient clipping or gradient accumulation, and without the
``plateau`` schedule (Lightning does not combine them with manual optimisation here).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dynametric.engine.module import MetricLearningModule, ScheduleClock, gradient_finite, nonfinite_gradients
from dynametric.engine.objective import Objective, compute_objective, select_head
from dynametric.errors import ConfigError
from dynametric.labels import as_label_matrix

if TYPE_CHECKING:
    from dynametric.config import Config

logger = logging.getLogger("dynametric.engine")

@dataclass
class AlternatingSettings:
    """``method.kwargs`` of ``method.name: sharing_alternating`` (MIC: :class:`dynametric.methods.mic.MICSettings`).

    ``p_aux``: probability of a shared step per iteration; ``adv_step``: the step carrying the decorrelation term;
    ``m_shared``: images per class in a shared batch (``None``: ``data.m``); ``shared_batch_size`` (``None``:
    ``data.batch_size``); ``class_head`` / ``shared_head``: the heads the two steps train."""

    p_aux: float = 0.8
    adv_step: str = "shared"
    m_shared: int | None = None
    shared_batch_size: int | None = None
    class_head: str = "class"
    shared_head: str = "shared"

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], key: str = "method.kwargs") -> AlternatingSettings:
        from dynametric.methods.mic.clustering import integer, is_probability

        names = {f.name for f in fields(cls)}
        for name in kwargs:
            if name not in names:
                raise ConfigError(f"unknown sharing_alternating option {name!r}; expected one of {sorted(names)}",
                                  key=f"{key}.{name}")
        out = cls(**dict(kwargs))
        checks = [
            ("p_aux", is_probability(out.p_aux), "a probability in [0, 1]"),
            ("adv_step", out.adv_step in ("shared", "class", "both"), "'shared', 'class' or 'both'"),
            ("m_shared", out.m_shared is None or (integer(out.m_shared) and out.m_shared >= 2),
             "an integer >= 2 or null"),
            ("shared_batch_size", out.shared_batch_size is None
             or (integer(out.shared_batch_size) and out.shared_batch_size >= 4), "an integer >= 4 or null"),
            ("class_head", isinstance(out.class_head, str) and bool(out.class_head), "a head name"),
            ("shared_head", isinstance(out.shared_head, str) and bool(out.shared_head), "a head name"),
        ]
        for name, ok, expected in checks:
            if not ok:
                raise ConfigError(f"expected {expected}, got {getattr(out, name)!r}", key=f"{key}.{name}")
        return out


def shared_batch_classes_message(groups: int, per: int, size: int, classes: int) -> str:
    """The error of a ``sharing_alternating`` shared batch that takes more classes than the training set has."""
    return (f"a shared batch takes {groups} classes (shared_batch_size {size} / m_shared {per}; shared_batch_size "
            f"defaults to data.batch_size, m_shared to data.m), and the training set has {classes} classes: expected "
            f"shared_batch_size / m_shared <= {classes}")


@dataclass
class HookPlan:
    """Everything :class:`AlternatingSharingModule` needs besides the usual module arguments."""

    name: str
    p_aux: float
    adv_step: str
    class_head: str
    shared_head: str
    m_shared: int
    shared_batch_size: int
    seed: int
    mic: Any = None  # MICSettings for ``mic``
    unaugmented: Callable[[Any], Any] | None = None  # train set -> the same images with the evaluation transform


def unaugmented_view(cfg: Config) -> Callable[[Any], Any]:
    """``train_set -> same items in the same order, evaluation transform`` (MIC clusters un-augmented images)."""

    def make(train: Any) -> Any:
        from dynametric.data.splits import LabelledSubset
        from dynametric.engine.builders import load_split

        full = load_split(cfg, cfg.data.train_split, train=False)
        view = LabelledSubset(full, train.indices, "train") if hasattr(train, "indices") else full
        if len(view) != len(train) or not torch.equal(torch.as_tensor(view.labels), torch.as_tensor(train.labels)):
            raise ConfigError("the un-augmented training set does not match the training set", key="data")
        return view

    return make


def check_alternating(cfg: Config, name: str) -> None:
    """What the alternating module needs of the rest of the config (both ``sharing_alternating`` and ``mic``):
    two heads, one process, no gradient clipping or accumulation, no plateau schedule. One process:
    ``trainer.devices`` that starts one on this machine (``1``, ``[0]``, ``auto`` where Lightning's accelerator
    has one device: the CPU, ``mps``), ``trainer.num_nodes: 1`` and no launcher such as ``torchrun`` that started
    several (``WORLD_SIZE`` > 1 with ``RANK``: each would train on its own)."""
    from dynametric.engine.trainer import launch, processes_here

    t = cfg.trainer
    if cfg.model.num_heads != 2:
        raise ConfigError(f"method {name!r} needs a two-head model (model.num_heads: 2), got {cfg.model.num_heads}",
                          key="model.num_heads")
    launched = launch()  # torchrun (or the like) started several processes, whatever trainer.devices says
    if launched is not None:
        raise ConfigError(f"method {name!r} runs on one process, and {launched.launcher} started {launched.world} "
                          f"({launched.variables()}); start dynametric train without {launched.launcher}, with "
                          "trainer.devices: 1", key="trainer.devices")
    processes = processes_here(t.accelerator, t.devices)
    if processes != 1:
        if processes is None:
            gives = f"{t.devices!r}, not one process on this machine"
        elif str(t.devices).strip().lower() in ("auto", "-1"):
            gives = f"{t.devices!r}, which starts {processes} processes on this machine (one per GPU)"
        else:
            gives = f"{t.devices!r} ({processes} processes)"
        raise ConfigError(f"method {name!r} runs on one process; trainer.devices is {gives}: set trainer.devices: 1",
                          key="trainer.devices")
    if int(t.num_nodes) != 1:
        raise ConfigError(f"method {name!r} runs on one process; trainer.num_nodes is {t.num_nodes}: set "
                          "trainer.num_nodes: 1", key="trainer.num_nodes")
    if cfg.optim.grad_clip is not None:
        raise ConfigError(f"method {name!r} (manual optimisation) does not support gradient clipping",
                          key="optim.grad_clip")
    if int(t.accumulate_grad_batches) != 1:
        raise ConfigError(f"method {name!r} (manual optimisation) needs accumulate_grad_batches: 1",
                          key="trainer.accumulate_grad_batches")
    if cfg.optim.scheduler.name == "plateau":
        raise ConfigError(f"method {name!r} does not support the plateau schedule", key="optim.scheduler.name")


def split_objectives(objectives: Sequence[Objective], plan: HookPlan
                     ) -> tuple[list[Objective], list[Objective], list[Objective]]:
    """``(class-head terms, shared-head terms, concat-head terms)``; the last (the decorrelation term) ride on
    ``adv_step``. A term on any other head is a ConfigError."""
    cls_terms, shared_terms, adv_terms = [], [], []
    for o in objectives:
        if o.head == "concat":
            adv_terms.append(o)
        elif o.head == plan.class_head:
            cls_terms.append(o)
        elif o.head == plan.shared_head:
            shared_terms.append(o)
        else:
            raise ConfigError(f"loss term {o.name!r} is on head {o.head!r}; method {plan.name!r} assigns terms to "
                              f"the class head {plan.class_head!r}, the shared head {plan.shared_head!r} or the "
                              "concat head (decorrelation, on adv_step)", key="extra_losses")
    if not cls_terms or not shared_terms:
        raise ConfigError(f"method {plan.name!r} needs at least one loss term on head {plan.class_head!r} and one "
                          f"on head {plan.shared_head!r}", key="extra_losses")
    return cls_terms, shared_terms, adv_terms


class AlternatingSharingModule(MetricLearningModule):
    """:class:`MetricLearningModule` with alternating class / shared steps (manual optimisation).

    Counters: ``class_steps``, ``shared_steps``; MIC: ``labeler`` (:class:`~dynametric.methods.mic.SurrogateLabeler`,
    its ``history`` lists ``(epoch, source)`` of every clustering). A shared step that would take the run past the
    trainer's ``max_steps`` is skipped, so ``trainer.global_step`` ends at exactly ``max_steps``."""

    def __init__(self, embedder: nn.Module, objectives: Sequence[Objective], optim: Any = None, *,
                 plan: HookPlan, **kwargs: Any) -> None:
        super().__init__(embedder, objectives, optim, **kwargs)
        self.automatic_optimization = False
        self.plan = plan
        self.class_terms, self.shared_terms, self.adv_terms = split_objectives(self.objectives, plan)
        if plan.shared_batch_size % plan.m_shared:
            raise ConfigError(f"shared batch size {plan.shared_batch_size} must be a multiple of m_shared "
                              f"{plan.m_shared}", key="method.kwargs.m_shared")
        self.rng = torch.Generator().manual_seed(plan.seed + 7919)
        self.class_steps = 0
        self.shared_steps = 0
        self.schedule_marks: dict[int, int] = {}  # the step schedule's {iteration: optimizer steps done} (max_steps)
        self._steps_before: int | None = None  # optimizer steps done before the iteration under way
        self.labeler: Any = None
        self._unaugmented: Any = None
        if plan.mic is not None:
            from dynametric.methods.mic.clustering import SurrogateLabeler

            self.labeler = SurrogateLabeler(plan.mic.num_clusters, plan.mic.recluster_every, plan.mic.standardise,
                                            seed=plan.seed)

    # ----------------------------------------------------------------- data access
    def _train_set(self) -> Any:
        dm = getattr(self.trainer, "datamodule", None)
        ds = getattr(dm, "train_set", None)
        if ds is None:
            raise ConfigError(f"method {self.plan.name!r} needs the training set (MetricDataModule.train_set)",
                              key="data")
        return ds

    def _train_labels(self) -> torch.Tensor:
        return as_label_matrix(self._train_set().labels, name="train_set.labels")

    def _images(self, indices: torch.Tensor, dataset: Any = None) -> torch.Tensor:
        """The images of ``indices`` as the model takes them: on the module's device, in the precision's input dtype
        (Lightning's ``precision_plugin.convert_input``, which converts the loader's batches: bfloat16 under
        ``bf16-true``) and memory format (:meth:`batch_images`), as a batch of the data loader arrives."""
        ds = self._train_set() if dataset is None else dataset
        images = torch.stack([ds[int(i)][0] for i in indices]).to(self.device)
        if self._trainer is not None:
            images = self.trainer.precision_plugin.convert_input(images)
        return self.batch_images((images,))

    def _forward_context(self) -> Any:
        """The precision's forward context (autocast under ``*-mixed``, the default dtype under ``*-true``) that
        Lightning puts around its training and evaluation steps, for the forward passes of the epoch-start
        clustering, which runs outside them."""
        if self._trainer is None:
            return contextlib.nullcontext()
        return self.trainer.precision_plugin.forward_context()

    def _feature_set(self) -> Any:
        """The training set with the evaluation transform (cached; not part of the checkpoint)."""
        if self._unaugmented is None:
            train = self._train_set()
            self._unaugmented = train if self.plan.unaugmented is None else self.plan.unaugmented(train)
        return self._unaugmented

    def _embed_train(self, which: str) -> torch.Tensor:
        """Training-set features in dataset order (un-augmented images, eval mode, no grad): ``which`` =
        ``"layer"`` (MIC's initial features at ``feature_layer``) or ``"shared"`` (the shared head)."""
        from dynametric.methods.mic.clustering import layer_features

        dataset = self._feature_set()
        n = len(dataset)
        bs = max(1, int(getattr(self.trainer.datamodule, "eval_batch_size", 128)))
        was = self.embedder.training
        self.embedder.eval()
        out = []
        try:
            with torch.no_grad(), self._forward_context():
                for start in range(0, n, bs):
                    images = self._images(torch.arange(start, min(n, start + bs)), dataset)
                    if which == "layer":
                        out.append(layer_features(self.embedder, images, self.plan.mic.feature_layer).cpu())
                    else:
                        out.append(select_head(self.embedder(images), self.plan.shared_head).float().cpu())
        finally:
            self.embedder.train(was)
        return torch.cat(out)

    def _shared_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        from dynametric.methods.mic.clustering import sample_surrogate_batch

        per = self.plan.m_shared
        groups = self.plan.shared_batch_size // per
        if self.labeler is not None:
            assert self.labeler.labels is not None
            labeler = self.labeler

            def too_few_clusters(present: int) -> ConfigError:
                epoch, source = labeler.history[-1] if labeler.history else (int(self.current_epoch), "clustering")
                return ConfigError(
                    f"a shared batch takes {groups} clusters (data.batch_size {self.plan.shared_batch_size} / "
                    f"m_shared {per}), and the {source} clustering at epoch {epoch} left {present} of the "
                    f"{labeler.num_clusters} clusters non-empty: expected more clusters (k-means left some empty) "
                    "or a larger m_shared", key="method.kwargs.num_clusters")

            idx, lab, _ = sample_surrogate_batch(self.labeler.labels, groups, per, self.plan.mic.label_noise,
                                                 generator=self.rng, noise_per=self.plan.mic.label_noise_per,
                                                 too_few=too_few_clusters)
            return self._images(idx), lab.unsqueeze(1).to(self.device)
        labels = self._train_labels()

        def too_few_classes(present: int) -> ConfigError:
            return ConfigError(shared_batch_classes_message(groups, per, self.plan.shared_batch_size, present),
                               key="method.kwargs.shared_batch_size")

        idx, _, _ = sample_surrogate_batch(labels[:, 0], groups, per, 0.0, generator=self.rng, too_few=too_few_classes)
        return self._images(idx), labels[idx].to(self.device)

    # ----------------------------------------------------------------- clustering schedule
    def on_train_epoch_start(self) -> None:
        if self.labeler is None:
            return
        epoch = int(self.current_epoch)
        if self.labeler.labels is None:
            self.labeler.initial(self._embed_train("layer"), self._train_labels()[:, 0])
            self.labeler.events[-1]["global_step"] = int(self.global_step)
            logger.info("MIC: initial clustering into %d surrogate classes", self.labeler.num_clusters)
        done = {e for e, _ in self.labeler.history if e == epoch and epoch > 0}
        if not done and self.labeler.maybe_recluster(epoch, lambda: self._embed_train("shared")):
            self.labeler.events[-1]["global_step"] = int(self.global_step)
            logger.info("MIC: re-clustered the shared embedding at epoch %d", epoch)

    # ----------------------------------------------------------------- schedule and step axis
    def schedule_clock(self) -> ScheduleClock | None:
        """The step schedule advances once per iteration (1 or 2 optimizer steps). Without ``trainer.max_steps`` its
        length is the run's iterations (Lightning's ``estimated_stepping_batches``); under ``max_steps``, which counts
        optimizer steps, cosine's progress is the further of the iterations' towards ``max_epochs`` and the
        optimizer steps' towards ``max_steps`` (after the warm-up), so the rate reaches ``min_lr`` at the run's last
        step whichever limit ends it (:func:`~dynametric.engine.module.lr_lambda`)."""
        limit = -1 if self._trainer is None else self.trainer.max_steps
        if limit is None or limit <= 0:
            return None
        batches, epochs = self.trainer.num_training_batches, self.trainer.max_epochs
        positions = None
        if epochs is not None and epochs > 0 and isinstance(batches, (int, float)) and math.isfinite(batches):
            positions = max(1, int(batches)) * int(epochs)
        return ScheduleClock(lambda: int(self.global_step), int(limit), self.schedule_marks, positions)

    def logged_step(self) -> int:
        """The step the loggers file the iteration under way at: the optimizer steps done before it
        (``global_step`` at its start), the axis of the validation rounds and of the default path."""
        return int(self.global_step) if self._steps_before is None else self._steps_before

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Lightning files a batch's on-step values at its count of batches, one per iteration here; a logged "step"
        # value puts them at the optimizer steps done before the iteration instead (the writes stay every
        # trainer.log_every_n_steps iterations), with the "epoch" Lightning adds only without one
        self._steps_before = int(self.global_step)
        for name, value in (("step", self._steps_before), ("epoch", int(self.current_epoch))):
            self.log(name, torch.tensor(float(value), dtype=torch.float64), on_step=True, on_epoch=False, batch_size=1)
        super().on_train_batch_start(batch, batch_idx)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        self._steps_before = None

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        # the epoch means at the epoch's last optimizer step, global_step - 1 (Lightning: its count of batches - 1)
        for name, value in (("step", int(self.global_step) - 1), ("epoch", int(self.current_epoch))):
            self.log(name, torch.tensor(float(value), dtype=torch.float64), on_step=False, on_epoch=True, batch_size=1,
                     reduce_fx="max")
        # the step counts so far, once per epoch (host numbers: logged here, not in the training step)
        for name, value in (("class_steps", self.class_steps), ("shared_steps", self.shared_steps)):
            self.log(f"train/{name}", float(value), on_step=False, on_epoch=True)

    def run_record(self) -> dict[str, Any]:
        """``class_steps`` / ``shared_steps`` (optimizer steps of each kind) and, for MIC, ``clustering``: one entry
        per clustering, ``{"epoch", "global_step", "source" (initial / shared_embedding), "num_clusters",
        "clusters_used", "min_size", "max_size"}`` (:meth:`~dynametric.methods.mic.SurrogateLabeler.event`)."""
        record: dict[str, Any] = {"class_steps": self.class_steps, "shared_steps": self.shared_steps}
        if self.labeler is not None:
            record["clustering"] = [dict(e) for e in self.labeler.events]
        return record

    # ----------------------------------------------------------------- training
    def _step(self, images: torch.Tensor, labels: torch.Tensor, terms_list: list[Objective], where: str,
              batch_idx: int) -> dict[str, torch.Tensor] | None:
        opt = self.optimizers()
        parts: dict[str, torch.Tensor] = {}
        kept = self.norm_statistics()
        outputs = self.embedder(images)
        total, terms = compute_objective(outputs, labels, terms_list, parts=parts)
        if self._skip_nonfinite(total, terms, batch_idx, step=where, outputs=outputs):
            self.restore_norm_statistics(kept)
            return None
        opt.zero_grad(set_to_none=True)  # type: ignore[union-attr]
        self.manual_backward(total)
        if self._skip_nonfinite_gradient(total, terms, batch_idx, where, (images, labels, terms_list)):
            opt.zero_grad(set_to_none=True)  # type: ignore[union-attr]
            self.restore_norm_statistics(kept)
            return None
        opt.step()  # type: ignore[union-attr]
        terms[f"{where}_total"] = total.detach()
        terms.update(parts)  # the terms' named parts, logged as train/<term>/<part>
        return terms

    def _skip_nonfinite_gradient(self, total: torch.Tensor, terms: dict[str, torch.Tensor], batch_idx: int,
                                 where: str, batch: tuple[torch.Tensor, torch.Tensor, list[Objective]]) -> bool:
        """``trainer.nonfinite`` for the gradient of a finite loss, before the optimizer step (a finite loss can have a
        NaN gradient, and one such step makes the weights NaN): False when every gradient is finite; else
        ``stop`` raises :class:`~dynametric.engine.module.NonFiniteLossError` naming the step, the parameter and
        the term whose gradient is not finite, and ``skip`` counts and logs the step and returns True (no update).
        As for the loss, ``stop`` on an accelerator reads the flag later with the loss flags
        (:meth:`check_deferred_nonfinite`, before any checkpoint). Under a precision with a gradient scaler
        (``16-mixed``) the scaler skips such steps itself: no check."""
        if self._scaled_precision():
            return False
        named = [(n, p.grad) for n, p in self.named_parameters() if p.grad is not None]
        if not named:
            return False
        bad_flag = nonfinite_gradients([g for _, g in named], total.device)  # fused: not two kernels per parameter
        if self._defer_nonfinite_check(total):
            self._deferred_checks.append((~bad_flag, torch.full((), -1, device=total.device),
                                          {k: v.detach() for k, v in terms.items()}, self._where(batch_idx, where)))
            return False
        if not bool(bad_flag):
            return False
        bad_params = [n for n, g in named if not bool(gradient_finite(g))]  # which: only once a step failed
        term = self._nonfinite_gradient_term(*batch)
        detail = (f"{self._where(batch_idx, where)}, from term {term!r}" if term else self._where(batch_idx, where)) \
            + f", first in parameter {bad_params[0]} ({len(bad_params)} of {len(named)} parameters)"
        bad = {k: float(v) for k, v in terms.items()}
        if self.nonfinite == "stop":
            raise self._stop(detail, bad, -1)
        self.skipped_steps += 1
        logger.warning("%s; step skipped (%d skipped so far)", self._problem(detail, bad, -1), self.skipped_steps)
        return True

    def _nonfinite_gradient_term(self, images: torch.Tensor, labels: torch.Tensor,
                                 terms_list: list[Objective]) -> str | None:
        """The first loss term whose own gradient is not finite on this batch (a forward and backward pass per term,
        only after a non-finite gradient; the normalisation statistics are put back); None if none alone is."""
        from torch.nn.modules.batchnorm import _NormBase

        kept = [(b, b.detach().clone()) for m in self.embedder.modules() if isinstance(m, _NormBase)
                for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
        params = [p for p in self.parameters() if p.requires_grad]
        try:
            for term in terms_list:
                for p in params:
                    p.grad = None
                value, _ = compute_objective(self.embedder(images), labels, [term])
                if not value.requires_grad:
                    continue
                self.manual_backward(value)
                if any(p.grad is not None and not bool(gradient_finite(p.grad)) for p in params):
                    return term.name
            return None
        finally:
            for p in params:
                p.grad = None
            self.restore_norm_statistics(kept)

    def _at_max_steps(self) -> bool:
        """Whether the trainer's ``max_steps`` is reached (a shared step now would exceed it)."""
        limit = -1 if self._trainer is None else self.trainer.max_steps
        return limit is not None and limit >= 0 and int(self.global_step) >= limit

    def training_step(self, batch: Any, batch_idx: int) -> None:  # type: ignore[override]
        images, labels = self.batch_images(batch), batch[1]
        adv_class = self.adv_terms if self.plan.adv_step in ("class", "both") else []
        adv_shared = self.adv_terms if self.plan.adv_step in ("shared", "both") else []
        logged: dict[str, torch.Tensor] = {}
        out = self._step(images, labels, self.class_terms + adv_class, "class", batch_idx)
        if out is not None:
            self.class_steps += 1
            logged.update(out)
        if not self._at_max_steps() and float(torch.rand((), generator=self.rng)) < self.plan.p_aux:
            s_images, s_labels = self._shared_batch()
            out = self._step(s_images, s_labels, self.shared_terms + adv_shared, "shared", batch_idx)
            if out is not None:
                self.shared_steps += 1
                logged.update(out)
        sched = self.lr_schedulers()
        if sched is not None:
            sched.step()  # type: ignore[union-attr]
        if "class_total" in logged:
            value = logged["class_total"]
            if self.logs_this_step():  # the loggers' steps (read on the host when the history is read, not here)
                self._pending_losses.append((self.logged_step(), value))
            self.log("train/loss", value, prog_bar=True, on_step=True, on_epoch=True, batch_size=labels.shape[0])
        for name, value in logged.items():
            if name != "class_total":
                self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=labels.shape[0])

    # ----------------------------------------------------------------- checkpoint extras
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        state: dict[str, Any] = {"rng": self.rng.get_state(), "class_steps": self.class_steps,
                                 "shared_steps": self.shared_steps, "schedule_marks": dict(self.schedule_marks)}
        if self.labeler is not None:
            state["surrogate_labels"] = self.labeler.labels
            state["clustering_history"] = [list(h) for h in self.labeler.history]
            state["clustering_events"] = [dict(e) for e in self.labeler.events]
        checkpoint["dynametric_sharing"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        state = checkpoint.get("dynametric_sharing")
        if not state:
            return
        self.rng.set_state(state["rng"])
        self.class_steps = int(state.get("class_steps", 0))
        self.shared_steps = int(state.get("shared_steps", 0))
        marks = state.get("schedule_marks")  # absent in a checkpoint of an older version
        if marks is not None:
            self.schedule_marks.clear()  # the same dict: the schedule's lambda holds it
            self.schedule_marks.update({int(k): int(v) for k, v in marks.items()})
        if self.labeler is not None:
            self.labeler.labels = state.get("surrogate_labels")
            self.labeler.history = [(int(e), str(s)) for e, s in state.get("clustering_history", [])]
            events = state.get("clustering_events")  # absent in a checkpoint of an older version: no sizes
            self.labeler.events = ([dict(e) for e in events] if events is not None
                                   else [{"epoch": e, "source": s} for e, s in self.labeler.history])
