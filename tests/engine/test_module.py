"""LightningModule behaviour: parameter groups, non-finite losses, validation/best checkpoint, flags, heads."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from torch import nn

from dynametric.engine.checkpoint import load_checkpoint_file
from dynametric.engine.data import MetricDataModule
from dynametric.engine.module import (
    GroupSettings,
    MetricLearningModule,
    NonFiniteLossError,
    OptimSettings,
    lr_lambda,
    parameter_groups,
)
from dynametric.engine.objective import Objective, compute_objective, select_head
from dynametric.engine.trainer import build_trainer
from dynametric.errors import ConfigError
from tests.engine.toy import (
    PairLoss,
    ProxyLoss,
    ToyData,
    ToyEmbedder,
    ToySampler,
    toy_datamodule,
    toy_evaluator,
    toy_settings,
)


class NaNAfter(PairLoss):
    """Returns NaN from the ``bad``-th call on (0-based), once or forever."""

    def __init__(self, bad: int, once: bool) -> None:
        super().__init__()
        self.bad, self.once, self.calls = bad, once, 0

    def compute_loss(self, emb, labels, indices_tuple, ref_emb, ref_labels):
        value = super().compute_loss(emb, labels, indices_tuple, ref_emb, ref_labels)
        self.calls += 1
        if self.calls - 1 == self.bad or (not self.once and self.calls - 1 > self.bad):
            return value * float("nan")
        return value


def test_parameter_groups_have_their_own_lr_and_weight_decay():
    emb = ToyEmbedder()
    proxy = ProxyLoss(6, 4)
    settings = OptimSettings(lr=0.1, weight_decay=0.01, backbone=GroupSettings(lr=0.001),
                             loss=GroupSettings(lr=1.0, weight_decay=0.0))
    groups = {g["name"]: g for g in parameter_groups(emb, [Objective(proxy), Objective(PairLoss())], settings)}
    assert set(groups) == {"backbone", "head", "loss"}
    assert {id(p) for p in groups["backbone"]["params"]} == {id(p) for p in emb.backbone.parameters()}
    assert {id(p) for p in groups["head"]["params"]} == {id(p) for p in emb.heads.parameters()}
    assert [id(p) for p in groups["loss"]["params"]] == [id(proxy.proxies)]
    assert (groups["backbone"]["lr"], groups["backbone"]["weight_decay"]) == (0.001, 0.01)
    assert (groups["head"]["lr"], groups["loss"]["lr"], groups["loss"]["weight_decay"]) == (0.1, 1.0, 0.0)


def test_lr_schedule_shapes():
    f = lr_lambda(OptimSettings(scheduler="cosine", warmup_steps=4, interval="step"), total_steps=104,
                  steps_per_epoch=10)
    assert [f(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(4) == pytest.approx(1.0) and f(54) == pytest.approx(0.5) and f(104) == pytest.approx(0.0, abs=1e-12)
    g = lr_lambda(OptimSettings(scheduler="step", step_size_epochs=2, gamma=0.5), total_steps=100, steps_per_epoch=10)
    assert (g(19), g(20), g(40)) == (1.0, 0.5, 0.25)
    with pytest.raises(ConfigError, match="optim.scheduler"):
        lr_lambda(OptimSettings(scheduler="poly"), 1, 1)


def test_nonfinite_loss_stops_naming_the_step():
    module = MetricLearningModule(ToyEmbedder(), [Objective(NaNAfter(3, once=True))], evaluator=toy_evaluator)
    dm = toy_datamodule(val=False)
    with pytest.raises(NonFiniteLossError, match=r"global step 3 \(epoch 0, batch 3\)"):
        build_trainer(toy_settings(), dm, None, enable_validation=False).fit(module, datamodule=dm)


class DeferredCheck(MetricLearningModule):
    """The accelerator behaviour on the CPU: ``stop`` reads the finiteness flags for a window of steps at once."""

    def _defer_nonfinite_check(self, total):
        return self.nonfinite == "stop"


@pytest.mark.parametrize("log_every, bad_step", [(2, 3), (50, 4)])
def test_nonfinite_stop_deferred_names_the_same_step(tmp_path, log_every, bad_step):
    module = DeferredCheck(ToyEmbedder(), [Objective(NaNAfter(bad_step, once=True))], evaluator=toy_evaluator)
    dm = toy_datamodule(val=False)
    trainer = build_trainer(toy_settings(log_every_n_steps=log_every, checkpoint_every_n_steps=2), dm, tmp_path,
                            enable_validation=False)
    with pytest.raises(NonFiniteLossError, match=rf"global step {bad_step} \(epoch 0, batch {bad_step}\)"):
        trainer.fit(module, datamodule=dm)
    assert module.losses[0].calls <= bad_step + log_every  # found within the window (or at the next checkpoint)
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] <= bad_step  # no checkpoint holds weights updated by the bad step


def test_nonfinite_loss_skip_counts_and_keeps_weights_finite(caplog):
    module = MetricLearningModule(ToyEmbedder(), [Objective(NaNAfter(2, once=True))], nonfinite="skip",
                                  evaluator=toy_evaluator)
    dm = toy_datamodule(val=False)
    with caplog.at_level(logging.WARNING, logger="dynametric.engine"):
        build_trainer(toy_settings(), dm, None, enable_validation=False).fit(module, datamodule=dm)
    assert module.skipped_steps == 1
    assert module.losses[0].calls == 10  # training went on after the bad batch
    assert "skipped" in caplog.text and "global step 2" in caplog.text
    assert all(torch.isfinite(p).all() for p in module.parameters())


class NaNRowEmbedder(ToyEmbedder):
    """Puts NaN into one row of its output at the ``bad``-th training call (0-based), once."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.bad, self.calls = bad, 0

    def forward(self, x):
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls - 1 == self.bad:
                out = out.clone()
                out[1] = float("nan")
        return out


def _contrastive():
    from dynametric.losses import ContrastiveLoss

    return ContrastiveLoss()  # its defaults: a NaN row fails every margin comparison, the loss stays finite


def test_a_nan_embedding_row_hides_from_the_contrastive_loss():
    # the premise of the checks below: the loss itself stays finite with a NaN row
    emb = torch.nn.functional.normalize(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    emb[1] = float("nan")
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert torch.isfinite(_contrastive()(emb, labels))


def test_nonfinite_embeddings_stop_naming_the_step_and_rows():
    module = MetricLearningModule(NaNRowEmbedder(bad=3), [Objective(_contrastive())], evaluator=toy_evaluator)
    dm = toy_datamodule(val=False)
    with pytest.raises(NonFiniteLossError, match=r"non-finite embeddings at global step 3 \(epoch 0, batch 3\) "
                                                 r"\(1 row of the model's output; loss \{'[a-z_]+': [0-9.e-]+\}\)"):
        build_trainer(toy_settings(), dm, None, enable_validation=False).fit(module, datamodule=dm)


def test_nonfinite_embeddings_deferred_name_the_same_step(tmp_path):
    module = DeferredCheck(NaNRowEmbedder(bad=3), [Objective(_contrastive())], evaluator=toy_evaluator)
    dm = toy_datamodule(val=False)
    trainer = build_trainer(toy_settings(log_every_n_steps=2, checkpoint_every_n_steps=2), dm, tmp_path,
                            enable_validation=False)
    with pytest.raises(NonFiniteLossError, match=r"non-finite embeddings at global step 3 .*1 row"):
        trainer.fit(module, datamodule=dm)
    assert torch.load(tmp_path / "last.ckpt", weights_only=False)["global_step"] <= 3


def test_nonfinite_embeddings_skip_the_step(caplog):
    module = MetricLearningModule(NaNRowEmbedder(bad=2), [Objective(_contrastive())], nonfinite="skip",
                                  evaluator=toy_evaluator)
    dm = toy_datamodule(val=False)
    with caplog.at_level(logging.WARNING, logger="dynametric.engine"):
        build_trainer(toy_settings(), dm, None, enable_validation=False).fit(module, datamodule=dm)
    assert module.skipped_steps == 1 and module.embedder.calls == 10
    assert "non-finite embeddings at global step 2" in caplog.text and "step skipped" in caplog.text
    assert all(torch.isfinite(p).all() for p in module.parameters())


class NaNInputBNEmbedder(nn.Module):
    """A batch-norm embedder whose ``bad``-th training call (0-based) sees a NaN input: its forward pass writes NaN
    into the running statistics, as a real non-finite image batch does."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))
        self.bad, self.calls = bad, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls - 1 == self.bad:
                x = x.clone()
                x[0, 0] = float("nan")
        return torch.nn.functional.normalize(self.body(x), dim=1)


def test_a_skipped_step_leaves_the_batch_norm_statistics_as_they_were(caplog):
    """A skipped step kept the weights but not the running statistics its forward pass had updated with NaN: every
    later evaluation embedded NaN (the run died at its validation with `key 'query_emb': contains NaN or Inf`)."""
    bad = 2
    module = MetricLearningModule(NaNInputBNEmbedder(bad), [Objective(_contrastive())], nonfinite="skip",
                                  evaluator=toy_evaluator)
    bn = module.embedder.body[1]
    seen = []
    module.embedder.body[0].register_forward_pre_hook(
        lambda mod, args: seen.append((bn.running_mean.clone(), bn.num_batches_tracked.clone())))
    dm = toy_datamodule(val=False)
    with caplog.at_level(logging.WARNING, logger="dynametric.engine"):
        build_trainer(toy_settings(), dm, None, enable_validation=False).fit(module, datamodule=dm)
    assert module.skipped_steps == 1 and "step skipped" in caplog.text
    assert torch.isfinite(bn.running_mean).all() and torch.isfinite(bn.running_var).all()
    # the call after the skipped one starts from the statistics the skipped one started from
    assert torch.equal(seen[bad + 1][0], seen[bad][0]) and int(seen[bad + 1][1]) == int(seen[bad][1]) == bad
    assert int(bn.num_batches_tracked) == module.embedder.calls - 1
    module.eval()
    assert torch.isfinite(module.embedder(torch.randn(5, 8))).all()


def test_nonfinite_rows_counts_rows_over_every_head():
    rows = MetricLearningModule._nonfinite_rows
    a = torch.zeros(5, 3)
    b = torch.zeros(5, 2)
    a[0, 1], a[3, 0], b[4, 1] = float("nan"), float("inf"), float("-inf")
    assert int(rows(a)) == 2 and int(rows({"x": a, "y": b})) == 2 and int(rows((b, b))) == 1
    assert int(rows(torch.zeros(4, 2))) == 0 and rows({"labels": torch.ones(3, dtype=torch.long)}) is None


def test_fit_writes_best_and_last_and_history(tmp_path):
    module = MetricLearningModule(ToyEmbedder(), [Objective(PairLoss())], OptimSettings(optimizer="adamw", lr=0.05),
                                  evaluator=toy_evaluator, scale_names=["fine", "coarse"])
    dm = toy_datamodule()
    trainer = build_trainer(toy_settings(max_epochs=3), dm, tmp_path)
    trainer.fit(module, datamodule=dm)
    assert [h["epoch"] for h in module.validation_history] == [0, 1, 2]
    scores = [h["fine"]["map@r"] for h in module.validation_history]
    best = load_checkpoint_file(tmp_path / "best.ckpt")
    last = load_checkpoint_file(tmp_path / "last.ckpt")
    cb = next(v for k, v in best["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert cb["best_model_score"].item() == pytest.approx(max(scores))
    assert best["epoch"] == scores.index(max(scores))
    assert last["epoch"] == 2 and last["global_step"] == 15
    assert "val/fine/map@r" in trainer.callback_metrics and "val/coarse/recall@1" in trainer.callback_metrics
    # test with the best weights
    results = trainer.test(module, datamodule=_dm_with_test(), ckpt_path=str(tmp_path / "best.ckpt"),
                           verbose=False)
    assert results and module.last_eval["fine"]["map@r"] == pytest.approx(results[0]["test/fine/map@r"])


@pytest.mark.parametrize("val_every", [1, 2])
def test_the_plateau_schedule_steps_once_per_validation_round(tmp_path, val_every):
    """x gamma after ``step_size`` validation rounds without improvement: stepped with each round's score, only at
    the end of an epoch that validated (Lightning stepped it every epoch, with the last round's score in between)."""
    torch.manual_seed(0)
    optim = OptimSettings(optimizer="sgd", lr=0.05, scheduler="plateau", step_size_epochs=0, gamma=0.5,
                          monitor_mode="min")
    module = MetricLearningModule(ToyEmbedder(), [Objective(PairLoss())], optim, evaluator=toy_evaluator,
                                  scale_names=["fine", "coarse"])
    seen = []
    step = torch.optim.lr_scheduler.ReduceLROnPlateau.step

    def record(self, metrics, *args, **kwargs):
        seen.append((module.current_epoch, float(metrics)))
        return step(self, metrics, *args, **kwargs)

    dm = toy_datamodule()
    with pytest.MonkeyPatch.context() as m:
        m.setattr(torch.optim.lr_scheduler.ReduceLROnPlateau, "step", record)
        build_trainer(toy_settings(max_epochs=4, val_every_n_epochs=val_every), dm, tmp_path).fit(module, datamodule=dm)
    assert seen == [(h["epoch"], pytest.approx(h["fine"]["map@r"])) for h in module.validation_history]
    assert [e for e, _ in seen] == list(range(val_every - 1, 4, val_every))
    assert load_checkpoint_file(tmp_path / "last.ckpt")["dynametric"]["plateau_rounds"] == len(seen)


def _plateau_lrs(tmp_path, lr: float, scores: list[float], step_size: int, *, older_state: bool = False
                 ) -> list[float]:
    """The rate after each of ``len(scores)`` epochs of a ``plateau`` schedule (mode max, gamma 0.5) whose validation
    rounds score ``scores`` (the monitored ``fine/map@r``); ``older_state``: the schedule's state is that of an older
    checkpoint (torch's default threshold and eps, as a resume's ``load_state_dict`` puts them back)."""
    optim = OptimSettings(optimizer="sgd", lr=lr, scheduler="plateau", step_size_epochs=step_size, gamma=0.5,
                          monitor_mode="max")

    def scripted(emb, labels, scale_names=None, **_):
        results = toy_evaluator(emb, labels, scale_names=scale_names)
        if not module.trainer.sanity_checking:
            results["fine"]["map@r"] = scores[module.current_epoch]
        return results

    lrs: list[float] = []

    class Recorded(MetricLearningModule):
        def on_train_start(self) -> None:
            if older_state:
                assert self._plateau is not None
                self._plateau.load_state_dict({**self._plateau.state_dict(), "threshold": 1e-4, "eps": 1e-8})

        def _step_plateau(self) -> None:  # the rate after each epoch's step
            super()._step_plateau()
            lrs.append(self.trainer.optimizers[0].param_groups[0]["lr"])

    module = Recorded(ToyEmbedder(), [Objective(PairLoss())], optim, evaluator=scripted,
                      scale_names=["fine", "coarse"])
    dm = toy_datamodule()
    build_trainer(toy_settings(max_epochs=len(scores)), dm, tmp_path).fit(module, datamodule=dm)
    return lrs


def test_the_plateau_schedule_drops_a_tiny_rate_too(tmp_path):
    """step_size 1: the rate drops at the second round in a row without improvement. torch's default eps (1e-8)
    ignored a drop smaller than that: at optim.lr 1e-9 the rate never dropped."""
    assert _plateau_lrs(tmp_path, 1e-9, [0.5] * 5, 1) == [1e-9, 1e-9, 5e-10, 5e-10, 2.5e-10]


def test_a_resumed_older_plateau_state_follows_the_documented_rule(tmp_path):
    """A checkpoint of an older run saved torch's defaults (threshold 1e-4, eps 1e-8) in the schedule's state, and
    the resume's ``load_state_dict`` put them back over the configured 0 and 0: the rule is applied at every step."""
    assert _plateau_lrs(tmp_path, 1e-9, [0.5] * 5, 1, older_state=True) == [1e-9, 1e-9, 5e-10, 5e-10, 2.5e-10]
    rising = [0.5 * (1 + 1e-6) ** i for i in range(4)]
    assert _plateau_lrs(tmp_path, 0.05, rising, 0, older_state=True) == [0.05] * 4


def test_a_small_improvement_counts_for_the_plateau_schedule(tmp_path):
    """An improvement of 1e-6 relative replaces best.ckpt and resets early stopping (min_delta 0); torch's default
    threshold (1e-4 relative) counted it as a round without improvement and dropped the rate. Without improvement the
    same schedule drops (step_size 0: at every such round)."""
    rising = [0.5 * (1 + 1e-6) ** i for i in range(4)]
    assert _plateau_lrs(tmp_path, 0.05, rising, 0) == [0.05] * 4
    assert _plateau_lrs(tmp_path, 0.05, [0.5] * 4, 0) == [0.05, 0.025, 0.0125, 0.00625]


def test_a_plateau_schedule_without_validation_warns_once(tmp_path):
    optim = OptimSettings(optimizer="sgd", lr=0.05, scheduler="plateau")
    module = MetricLearningModule(ToyEmbedder(), [Objective(PairLoss())], optim, evaluator=toy_evaluator,
                                  scale_names=["fine", "coarse"])
    dm = toy_datamodule(val=False)
    with pytest.warns(RuntimeWarning, match="plateau schedule in a run without validation") as caught:
        build_trainer(toy_settings(max_epochs=2), dm, tmp_path, enable_validation=False).fit(module, datamodule=dm)
    assert len([w for w in caught if "plateau" in str(w.message)]) == 1
    assert module.trainer.optimizers[0].param_groups[0]["lr"] == 0.05


def _dm_with_test() -> MetricDataModule:
    return MetricDataModule(ToyData(), None, ToyData(seed=2, augment=False, class_offset=6),
                            batch_sampler_factory=lambda labels, r, w: ToySampler(labels), eval_batch_size=16)


def test_training_improves_the_toy_embedding():
    torch.manual_seed(0)
    module = MetricLearningModule(ToyEmbedder(), [Objective(PairLoss())], OptimSettings(optimizer="adamw", lr=0.05),
                                  evaluator=toy_evaluator, scale_names=["fine", "coarse"])
    dm = MetricDataModule(ToyData(), ToyData(seed=0, augment=False),
                          batch_sampler_factory=lambda labels, r, w: ToySampler(labels), eval_batch_size=64)
    trainer = build_trainer(toy_settings(max_epochs=8), dm, None, enable_validation=True)
    before = trainer.validate(module, datamodule=dm, verbose=False)[0]["val/fine/map@r"]
    trainer.fit(module, datamodule=dm)
    after = module.validation_history[-1]["fine"]["map@r"]
    assert after > before + 0.1


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_precision_and_accumulation_flags_run(precision):
    module = MetricLearningModule(ToyEmbedder(), [Objective(PairLoss())], evaluator=toy_evaluator)
    dm = toy_datamodule(val=False)
    trainer = build_trainer(toy_settings(max_epochs=1, precision=precision, accumulate_grad_batches=2), dm, None,
                            enable_validation=False)
    trainer.fit(module, datamodule=dm)
    assert module.global_step == 3  # 5 batches, accumulate 2 -> steps after batches 2, 4 and the last
    assert all(torch.isfinite(p).all() for p in module.parameters())


def test_bad_trainer_settings_name_the_key():
    with pytest.raises(ConfigError, match="trainer.precision"):
        build_trainer(toy_settings(precision="8-bit"), toy_datamodule(), None)
    with pytest.raises(ConfigError, match="trainer.nonfinite"):
        MetricLearningModule(ToyEmbedder(), [Objective(PairLoss())], nonfinite="ignore")


def test_heads_and_multi_head_objective():
    a, b = torch.randn(4, 3), torch.randn(4, 2)
    out = {"class": a, "shared": b}
    assert select_head(out, "shared") is b
    assert torch.equal(select_head(out, "concat"), torch.cat([a, b], 1))
    with pytest.raises(ConfigError, match="several heads"):
        select_head(out, None)
    with pytest.raises(ConfigError, match="unknown head") as info:
        select_head(out, "nope")
    assert "expected one of ['class', 'shared', 'concat']" in str(info.value)  # concat is accepted too
    labels = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    ea = nn.functional.normalize(torch.randn(4, 3, requires_grad=True), dim=1)
    eb = nn.functional.normalize(torch.randn(4, 2, requires_grad=True), dim=1)
    l1, l2 = PairLoss(), PairLoss(scale=1)
    total, terms = compute_objective({"class": ea, "shared": eb}, labels,
                                     [Objective(l1, head="class", name="c"),
                                      Objective(l2, head="shared", weight=0.5, name="s")])
    expected = l1(ea, labels) + 0.5 * l2(eb, labels)
    torch.testing.assert_close(total, expected)
    assert set(terms) == {"c", "s"}


def _nan_weight(module: MetricLearningModule) -> str:
    name, param = next((n, p) for n, p in module.named_parameters() if "heads" in n)
    with torch.no_grad():
        param[0].fill_(float("nan"))
    return name


def test_nonfinite_weights_are_never_saved_in_a_checkpoint():
    module = MetricLearningModule(ToyEmbedder(), [Objective(PairLoss())], evaluator=toy_evaluator)
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)  # finite weights: saved
    assert "dynametric" in checkpoint
    name = _nan_weight(module)
    expected = (r"the model's weights are non-finite at global step 0 \(epoch 0\): 1 parameter\(s\), "
                rf"first {re.escape(name)}")
    with pytest.raises(NonFiniteLossError, match=f"{expected}; no checkpoint is written"):
        module.on_save_checkpoint({})


def test_an_evaluation_of_nonfinite_weights_names_the_weights():
    """Not the evaluation's own check of its inputs (``key 'query_emb': contains NaN or Inf``)."""
    module = MetricLearningModule(ToyEmbedder(), [Objective(PairLoss())], evaluator=toy_evaluator)
    name = _nan_weight(module)
    dm = toy_datamodule()
    with pytest.raises(NonFiniteLossError, match=rf"the model's weights are non-finite .*first {re.escape(name)}; "
                                                 r"they embed \d+ of \d+ evaluated items as NaN/Inf"):
        build_trainer(toy_settings(), dm, None).validate(module, datamodule=dm)
