"""The engine wiring of the Sharing Matters / MIC benchmarks (``claim_sharing.py``, ``sharing_synthetic.py``): every
method trains on the engine's modules, driven by a Lightning ``Trainer`` built as ``dynametric train`` builds it
(:func:`dynametric.engine.trainer.build_trainer`: no run folder, no validation loop, no progress bar).

* the baseline: :class:`~dynametric.engine.module.MetricLearningModule` with the class-head term only;
* t* sharing (``summed``): the same module with :func:`~dynametric.methods.sharing.summed_objectives` (class term,
  ``alpha * L_share`` on the shared head, ``rho * L_adv`` as :class:`~dynametric.losses.DecorrelationLoss` on the
  ``concat`` head);
* the pretraining of a start network (``pretrain``): the same module with the class term on the class head and the
  shared loss/miner on the shared head, both on the training labels, weight 1 each (``claim_sharing --pretrain-steps``);
* MIC (``alternating``): :class:`~dynametric.methods.sharing.alternating.AlternatingSharingModule` with a
  :class:`~dynametric.methods.sharing.alternating.HookPlan` carrying the MIC settings; the same three terms, assigned
  to the class and shared steps by their head.

Data: the training split is the :class:`~dynametric.data.SyntheticHierarchy` itself (in memory, a
``LabeledDataset``; its items are the images of ``tensors()``), batched by the engine's class-balanced sampler
(``m_per_class``: 8 classes x 4 images) inside the engine's :class:`~dynametric.engine.data.MetricDataModule`.
Optimizer: Adam over :func:`~dynametric.methods.sharing.sharing_param_groups` (embedder weight decay 4e-4,
margin-loss betas lr 5e-4 without weight decay, decorrelation regressor weight decay 1e-6), passed to the module as
its ``group_builder``. Evaluation of the class / shared / concat heads every N optimizer steps: :class:`EvalEvery`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch

from dynametric.data.samplers import BATCH_SAMPLERS, SamplerSettings
from dynametric.engine.data import MetricDataModule
from dynametric.engine.module import MetricLearningModule, OptimSettings
from dynametric.engine.objective import Objective
from dynametric.engine.trainer import TrainerSettings, build_trainer
from dynametric.methods.sharing import (
    SharingParts,
    SharingSettings,
    evaluate_heads,
    sharing_param_groups,
    summed_objectives,
)
from dynametric.methods.sharing.alternating import AlternatingSharingModule, HookPlan

KINDS = ("baseline", "summed", "alternating", "pretrain")
CLASSES_PER_BATCH, IMAGES_PER_CLASS = 8, 4


@torch.no_grad()
def embed_all(model: torch.nn.Module, images: torch.Tensor, bs: int = 256) -> dict[str, torch.Tensor]:
    """Every head's embedding of ``images`` in eval mode (batches of ``bs``); the model's mode is restored."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        outs = [model(images[i:i + bs].to(device)) for i in range(0, images.shape[0], bs)]
    finally:
        model.train(was)
    return {k: torch.cat([o[k].cpu() for o in outs]) for k in outs[0]}


def head_metrics(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
                 metrics: Sequence[str] = ("recall@1", "map@r")) -> dict[str, dict[str, float]]:
    """Leave-one-out ``metrics`` (fine scale, cosine) of the class head, the shared head and their concatenation."""
    res = evaluate_heads(embed_all(model, images, bs=512), labels, metrics=list(metrics), k_values=(1,))
    return {h: {k: float(r["fine"][k]) for k in metrics} for h, r in res.items()}


def build_module(kind: str, model: torch.nn.Module, parts: SharingParts, *, lr: float, alpha: float = 0.3,
                 rho: float = 0.0, plan: HookPlan | None = None) -> MetricLearningModule:
    """The engine module of a method: ``baseline`` (class term only), ``pretrain`` (``parts.class_loss`` /
    ``class_miner`` on the class head plus ``parts.shared_loss`` / ``shared_miner`` on the shared head, both on the
    class labels, weight 1 each), ``summed`` (class + ``alpha`` shared +
    ``rho`` adv) or ``alternating`` (``plan``; the shared term unweighted, ``rho`` adv on ``plan.adv_step``).
    ``parts.decorrelation`` is a ``DecorrelationLoss`` or ``None`` (no adv term)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    optim = OptimSettings(optimizer="adam", lr=lr, weight_decay=4e-4, scheduler="none")

    def groups(embedder: torch.nn.Module, _objectives: Sequence[Objective], s: OptimSettings) -> list[dict[str, Any]]:
        return sharing_param_groups(embedder, parts, lr=s.lr, weight_decay=s.weight_decay, loss_lr=5e-4)

    common: dict[str, Any] = {"eval_head": "class", "scale_names": ["fine"], "group_builder": groups}
    if kind == "baseline":
        return MetricLearningModule(model, [Objective(parts.class_loss, parts.class_miner, "class", 1.0, "class")],
                                    optim, **common)
    if kind == "pretrain":
        return MetricLearningModule(model, [Objective(parts.class_loss, parts.class_miner, "class", 1.0, "class"),
                                            Objective(parts.shared_loss, parts.shared_miner, "shared", 1.0, "shared")],
                                    optim, **common)
    if kind == "summed":
        return MetricLearningModule(model, summed_objectives(parts, SharingSettings(alpha_shared=alpha, rho=rho)),
                                    optim, **common)
    if plan is None:
        raise ValueError("the alternating module needs a HookPlan")
    return AlternatingSharingModule(model, summed_objectives(parts, SharingSettings(alpha_shared=1.0, rho=rho)),
                                    optim, plan=plan, **common)


def class_balanced(seed: int) -> Any:
    """The engine's ``m_per_class`` batch sampler (8 classes x 4 images) as a data-module sampler factory."""
    settings = dict(batch_size=CLASSES_PER_BATCH * IMAGES_PER_CLASS, m=IMAGES_PER_CLASS, seed=seed)

    def make(labels: torch.Tensor, rank: int, world: int) -> Any:
        return BATCH_SAMPLERS["m_per_class"].from_settings(labels, SamplerSettings(**settings, rank=rank,
                                                                                   world_size=world))

    return make


class StopAfterIterations(L.Callback):
    """Stops training after ``iterations`` training batches (an alternating iteration may take two steps)."""

    def __init__(self, iterations: int) -> None:
        self.iterations, self.seen = int(iterations), 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self.seen += 1
        if self.seen >= self.iterations:
            trainer.should_stop = True


class EvalEvery(L.Callback):
    """Evaluates the class / shared / concat heads (:func:`head_metrics`) on ``splits`` (``{name: (images,
    labels)}``) at the first batch end at or past every multiple of ``every`` optimizer steps, at ``max_steps`` and at
    the end of training; ``curve`` lists ``{"step": global step, name: {head: {metric: value}}}``. The embedder's
    train mode is restored after each evaluation."""

    def __init__(self, every: int, splits: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.every, self.splits = int(every), splits
        self.next = self.every
        self.curve: list[dict[str, Any]] = []

    def _evaluate(self, module: Any, step: int) -> None:
        self.curve.append({"step": step, **{name: head_metrics(module.embedder, x, y)
                                            for name, (x, y) in self.splits.items()}})

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        step = int(trainer.global_step)
        if step >= self.next or 0 <= trainer.max_steps <= step:
            self._evaluate(pl_module, step)
            self.next += self.every

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.curve or self.curve[-1]["step"] != int(trainer.global_step):
            self._evaluate(pl_module, int(trainer.global_step))


def fit(module: MetricLearningModule, train_set: Any, *, seed: int, max_steps: int = -1,
        callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
    """Train ``module`` on ``train_set`` (class-balanced batches, sampler seed ``seed``) with a Lightning trainer on
    the CPU until ``max_steps`` optimizer steps (``-1``: until a callback stops it); returns the trainer."""
    dm = MetricDataModule(train_set, batch_sampler_factory=class_balanced(seed), eval_batch_size=512, seed=seed)
    settings = TrainerSettings(max_epochs=10**6, max_steps=max_steps, accelerator="cpu", devices=1, seed=seed,
                               progress_bar=False)
    trainer = build_trainer(settings, dm, None, callbacks=callbacks, enable_validation=False)
    trainer.fit(module, datamodule=dm)
    return trainer
