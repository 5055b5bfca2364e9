"""What the loggers receive during a fit, read with a recording logger: validation rounds at the optimizer steps
done (the step of the round's checkpoint) with the values of the evaluation as they are (float64, integer counts),
the report's loss curve at the loggers' own steps, the learning rates of the logged steps, and all of it the same
after a crash and a resume."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch
from lightning.pytorch.loggers import Logger

from dynametric.engine.checkpoint import load_checkpoint_file
from dynametric.engine.data import MetricDataModule
from dynametric.engine.module import GroupSettings, MetricLearningModule, OptimSettings, lr_lambda
from dynametric.engine.objective import Objective
from dynametric.engine.trainer import TrainerSettings, build_trainer
from tests.engine.test_resume import Crash, CrashAt
from tests.engine.toy import PairLoss, ToyData, ToyEmbedder, ToySampler, toy_evaluator

BATCHES = 5  # ToySampler's batches per epoch


class Rows(Logger):
    """Every ``log_metrics`` call as ``(step, metrics)``."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[tuple[int | None, dict[str, Any]]] = []

    @property
    def name(self) -> str:
        return "rows"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self.rows.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def series(self, name: str) -> list[tuple[int | None, Any]]:
        return [(step, row[name]) for step, row in self.rows if name in row]


def thirds(emb: torch.Tensor, labels: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
    """The toy evaluator with map@r divided by 3: values no float32 holds exactly."""
    out = toy_evaluator(emb, labels, **kwargs)
    for values in out.values():
        values["map@r"] = values["map@r"] / 3 + 1e-12
    return out


def _module() -> MetricLearningModule:
    torch.manual_seed(0)
    optim = OptimSettings(optimizer="sgd", lr=0.05, momentum=0.9, scheduler="cosine", interval="step",
                          warmup_steps=2, head=GroupSettings(lr=0.2))
    return MetricLearningModule(ToyEmbedder(), [Objective(PairLoss(), name="pair")], optim, evaluator=thirds,
                                scale_names=["fine", "coarse"])


def _dm() -> MetricDataModule:
    return MetricDataModule(ToyData(), ToyData(seed=1, augment=False),
                            batch_sampler_factory=lambda labels, r, w: ToySampler(labels, rank=r, world_size=w),
                            eval_batch_size=16, seed=3)


def _settings(**kw: Any) -> TrainerSettings:
    return TrainerSettings(**{"accelerator": "cpu", "progress_bar": False, "max_epochs": 3, "seed": 0,
                              "log_every_n_steps": 2, **kw})


def _fit(run_dir, logger: Rows, *, callbacks=(), ckpt: str | None = None, **kw: Any) -> MetricLearningModule:
    module, dm = _module(), _dm()
    build_trainer(_settings(**kw), dm, run_dir, logger=logger, callbacks=list(callbacks)).fit(
        module, datamodule=dm, ckpt_path=ckpt)
    return module


def test_validation_rows_are_at_the_steps_done_with_the_evaluations_values(tmp_path):
    # were at the step before (4, 9, 14: Lightning's logging step during the last batch), as float32 values
    rows = Rows()
    module = _fit(tmp_path, rows)
    val = rows.series("val/fine/map@r")
    assert [step for step, _ in val] == [5, 10, 15]
    assert [v for _, v in val] == [h["fine"]["map@r"] for h in module.validation_history]  # exact, not float32
    assert all(v != float(torch.tensor(v, dtype=torch.float32)) for _, v in val)  # the values float32 would change
    counts = rows.series("val/coarse/num_queries")
    assert counts and all(type(v) is int for _, v in counts)
    (row,) = [r for step, r in rows.rows if step == 10 and "val/fine/map@r" in r]
    assert row["epoch"] == 1 and row["val/mean/recall@1"] == module.validation_history[1]["mean"]["recall@1"]
    # the round and its checkpoint share the step; best.ckpt is still chosen on the monitored value
    best = load_checkpoint_file(tmp_path / "best.ckpt")
    scores = [h["fine"]["map@r"] for h in module.validation_history]
    assert best["epoch"] == scores.index(max(scores))
    assert best["global_step"] == [s for s, _ in val][best["epoch"]]
    assert load_checkpoint_file(tmp_path / "last.ckpt")["global_step"] == val[-1][0]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_the_loss_curve_and_the_learning_rate_are_sampled_at_the_loggers_steps(tmp_path, accumulate):
    # the report's curve sampled `batch_idx % log_every_n_steps == 0`, batch_idx restarting every epoch: steps 0, 2,
    # 4, 5, 7, ... against the loggers' 1, 3, 5, ... ((step + 1) % n == 0); no learning rate was logged at all
    rows = Rows()
    module = _fit(tmp_path, rows, accumulate_grad_batches=accumulate)
    logged = rows.series("train/loss_step")
    steps = [s for s in range(int(module.global_step)) if (s + 1) % 2 == 0]
    assert [step for step, _ in logged] == steps
    assert module.loss_history == [[float(s), v] for s, v in logged]  # the same values, read from the same tensors
    total = int(module.global_step)
    factor = lr_lambda(module.optim_settings, total, total // 3)
    for group, base in (("backbone", 0.05), ("head", 0.2)):
        series = rows.series(f"train/lr/{group}")
        assert [step for step, _ in series] == steps
        # the rate the logged step trained with (before its scheduler update)
        assert [v for _, v in series] == pytest.approx([base * factor(s) for s in steps], rel=1e-12)
        assert module.lr_history[f"train/lr/{group}"] == [[float(s), v] for s, v in series]
    assert "train/lr" not in {k for _, r in rows.rows for k in r}  # several groups: one series each


def test_one_parameter_group_is_logged_as_train_lr():
    module = MetricLearningModule(ToyEmbedder(), [Objective(PairLoss())])
    one = torch.optim.SGD([{"params": list(module.parameters()), "lr": 0.125}])
    module._trainer = SimpleNamespace(optimizers=[one])  # type: ignore[assignment]
    assert module.learning_rates() == {"train/lr": 0.125}
    two = torch.optim.SGD([{"params": [module.embedder.backbone[0].weight], "lr": 0.5, "name": "backbone"},
                           {"params": [module.embedder.heads.weight], "lr": 0.25}])
    module._trainer = SimpleNamespace(optimizers=[two])  # type: ignore[assignment]
    assert module.learning_rates() == {"train/lr/backbone": 0.5, "train/lr/group1": 0.25}


def test_a_resumed_run_logs_on_the_same_step_axis(tmp_path):
    """Killed mid-epoch (last.ckpt every 3 steps, killed at step 7) and resumed: the validation rounds, the loss
    curve and the learning rates sit at the steps of the uninterrupted run."""
    straight_rows = Rows()
    straight = _fit(tmp_path / "straight", straight_rows, checkpoint_every_n_steps=3)
    run = tmp_path / "crashed"
    first = Rows()
    with pytest.raises(Crash):
        _fit(run, first, callbacks=[CrashAt(7).callback], checkpoint_every_n_steps=3)
    assert load_checkpoint_file(run / "last.ckpt")["global_step"] == 6
    second = Rows()
    resumed = _fit(run, second, ckpt=str(run / "last.ckpt"), checkpoint_every_n_steps=3)
    val = first.series("val/fine/map@r") + second.series("val/fine/map@r")
    assert [s for s, _ in val] == [s for s, _ in straight_rows.series("val/fine/map@r")] == [5, 10, 15]
    assert [v for _, v in val] == pytest.approx([v for _, v in straight_rows.series("val/fine/map@r")], rel=1e-6)
    assert [s for s, _ in resumed.loss_history] == [s for s, _ in straight.loss_history]
    assert [v for _, v in resumed.loss_history] == pytest.approx([v for _, v in straight.loss_history], rel=1e-5)
    assert [s for s, _ in second.series("train/loss_step")] == [s for s, _ in resumed.loss_history if s >= 6]
    assert resumed.lr_history == straight.lr_history
    assert set(resumed.lr_history) == {"train/lr/backbone", "train/lr/head"}


@pytest.mark.parametrize("max_steps", [-1, 100])
def test_an_epoch_schedule_steps_at_the_epochs_the_optimizer_counts_with_max_steps_set(tmp_path, max_steps):
    """5 batches an epoch accumulated by 2: Lightning steps 3 times an epoch (the short last accumulation too). With
    trainer.max_steps set (even out of reach) the schedule counted 5 // 2 = 2 steps an epoch, so a `step` schedule
    halved the rate one step early in the first epoch, two in the second, ..."""
    torch.manual_seed(0)
    optim = OptimSettings(optimizer="sgd", lr=0.05, scheduler="step", step_size_epochs=1, gamma=0.5)
    module = MetricLearningModule(ToyEmbedder(), [Objective(PairLoss(), name="pair")], optim, evaluator=thirds,
                                  scale_names=["fine", "coarse"])
    dm = _dm()
    build_trainer(_settings(log_every_n_steps=1, accumulate_grad_batches=2, max_steps=max_steps), dm, tmp_path,
                  logger=Rows()).fit(module, datamodule=dm)
    assert int(module.global_step) == 9
    assert module.lr_history["train/lr/backbone"] == [[float(k), 0.05 * 0.5 ** (k // 3)] for k in range(9)]
