"""The run's callbacks around the monitored metric: a validation round without a value (NaN: no query counted) is
warned about, never selected as best.ckpt and never counted by early stopping; early stopping's report; early
stopping or a plateau schedule without validation data is warned about."""

from __future__ import annotations

import math

import pytest
import torch

from dynametric.engine.trainer import TrainerSettings, build_trainer
from tests.engine.test_resume import _setup
from tests.engine.toy import ToyData


def _singleton_validation(tmp_path, *, patience, max_epochs=3, scheduler="none"):
    """The toy run with the real evaluator, validated on 6 items of 6 fine classes (each a singleton: the fine
    metrics have 0 queries, NaN) in 3 coarse classes of 2 (the coarse metrics have values)."""
    module, dm, settings = _setup(tmp_path, -1, 0, patience=patience, scheduler=scheduler)
    module.evaluator = None  # dynametric.metrics.evaluate_embeddings: NaN where no query counts
    dm.val_set = ToyData(n_classes=6, n_per_class=1, seed=1, augment=False)
    settings.max_epochs = max_epochs
    return module, dm, settings


def test_a_round_without_a_monitored_value_is_warned_never_best_and_never_stops_training(tmp_path):
    # it used to pass silently: Lightning's ModelCheckpoint took the NaN round of epoch 0 as best.ckpt (it ranks NaN
    # as the worst score but keeps it while it has no best), and EarlyStopping stopped at the first NaN
    module, dm, settings = _singleton_validation(tmp_path, patience=1)
    said: list[str] = []
    trainer = build_trainer(settings, dm, tmp_path / "run", warn=said.append)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 15  # the 3 epochs: no early stop
    assert [h["epoch"] for h in module.validation_history] == [0, 1, 2]
    assert all(math.isnan(h["fine"]["map@r"]) and h["fine"]["num_queries"] == 0 for h in module.validation_history)
    assert all(0 <= h["coarse"]["map@r"] <= 1 for h in module.validation_history)  # the other scale has values
    assert not (tmp_path / "run" / "best.ckpt").exists()
    assert len(said) == 3
    for epoch, line in enumerate(said):
        assert line.startswith(f"validation round of epoch {epoch}: the monitored val/fine/map@r is NaN (0 queries")
        assert "cannot be selected as best.ckpt and does not count for early stopping" in line
    (stopping,) = [cb for cb in trainer.callbacks if type(cb).__name__ == "RunEarlyStopping"]
    assert stopping.summary() is None and stopping.wait_count == 0


def test_a_nan_round_after_a_best_one_keeps_best_ckpt_and_the_wait_count(tmp_path, monkeypatch):
    # rounds 1 and 2 without a value after round 0: patience 1 does not stop on them (the wait count stays 0; with
    # Lightning's check_finite the first NaN stopped training), best.ckpt stays epoch 0's, the plateau schedule is not
    # stepped on them
    from dynametric.engine.checkpoint import load_checkpoint_file
    from dynametric.engine.module import MetricLearningModule

    evaluate = MetricLearningModule._evaluate_buffer

    def nan_after_epoch_0(self):
        results = evaluate(self)
        if self.trainer.state.fn == "fit" and self.current_epoch > 0:
            results["fine"]["map@r"] = float("nan")
        return results

    monkeypatch.setattr(MetricLearningModule, "_evaluate_buffer", nan_after_epoch_0)
    module, dm, settings = _setup(tmp_path, -1, 0, patience=1, scheduler="plateau")
    settings.max_epochs = 3
    said: list[str] = []
    trainer = build_trainer(settings, dm, tmp_path / "run", warn=said.append)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 15 and len(said) == 2
    assert load_checkpoint_file(tmp_path / "run" / "best.ckpt")["epoch"] == 0
    sched = trainer.lr_scheduler_configs[0].scheduler
    # NaN: no plateau step (the optimizer's rate: torch 2.1's ReduceLROnPlateau has no get_last_lr)
    assert sched.num_bad_epochs == 0 and sched.optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_early_stopping_without_validation_is_warned_about(tmp_path):
    module, dm, settings = _setup(tmp_path, -1, 0, patience=2)
    said: list[str] = []
    build_trainer(settings, dm, tmp_path / "run", enable_validation=False, warn=said.append)
    assert said == ["trainer.patience=2 is ignored: the run has no validation data, so there is no monitored score "
                    "to stop on (early stopping needs a validation split: data.val_split, or data.val_fraction > 0 "
                    "with data.val_split: null)"]
    with pytest.warns(RuntimeWarning, match=r"trainer.patience=2 is ignored"):  # a library caller's default
        build_trainer(TrainerSettings(accelerator="cpu", patience=2), dm, None, enable_validation=False)
    said.clear()
    build_trainer(settings, dm, tmp_path / "run2", warn=said.append)  # with validation: nothing to say
    assert said == []


def test_early_stopping_reports_its_epoch_and_reason(tmp_path):
    module, dm, settings = _setup(tmp_path, -1, 0, patience=1)  # validation 0.5625, 0.5833, 0.6458, 0.5833, ...
    settings.max_epochs = 8
    trainer = build_trainer(settings, dm, tmp_path / "run")
    trainer.fit(module, datamodule=dm)
    (stopping,) = [cb for cb in trainer.callbacks if type(cb).__name__ == "RunEarlyStopping"]
    best = max(h["fine"]["map@r"] for h in module.validation_history)
    assert stopping.summary() == {
        "epoch": 3, "patience": 1, "best_score": pytest.approx(best),
        "reason": f"val/fine/map@r did not improve in 1 validation round(s) (trainer.patience=1; best {best:.4f})"}
    assert torch.isclose(stopping.best_score, torch.tensor(best))
