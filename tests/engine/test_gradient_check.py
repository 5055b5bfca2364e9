"""``trainer.nonfinite`` for the gradient of a finite loss in the automatic-optimisation training step: checked after
the backward pass(es) and before the optimizer step (``stop``: one error naming the step and the first parameter,
no checkpoint after it; ``skip``: no update at all, counted, the batch-norm statistics put back)."""

from __future__ import annotations

import logging
import re

import pytest
import torch
from torch import nn

from dynametric.engine import module as module_mod
from dynametric.engine.module import MetricLearningModule, NonFiniteLossError, OptimSettings
from dynametric.engine.objective import Objective
from dynametric.engine.trainer import build_trainer
from tests.engine.toy import PairLoss, ToyEmbedder, toy_datamodule, toy_evaluator, toy_settings


class NaNGradient(PairLoss):
    """The pair loss, plus ``sqrt(|e - e.detach()|^2)`` (0, finite) at the ``bad``-th call (0-based): its value is
    the pair loss's, its gradient is NaN everywhere (the derivative of sqrt at 0 is infinite, times 0)."""

    def __init__(self, bad: int | None) -> None:
        super().__init__()
        self.bad, self.calls, self.values = bad, 0, []

    def compute_loss(self, emb, labels, indices_tuple, ref_emb, ref_labels):
        value = super().compute_loss(emb, labels, indices_tuple, ref_emb, ref_labels)
        self.calls += 1
        if self.calls - 1 == self.bad:
            value = value + torch.sqrt(((emb - emb.detach()) ** 2).sum())
        self.values.append(float(value.detach()))
        return value


class BNEmbedder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x):
        return torch.nn.functional.normalize(self.body(x), dim=1)


class Snapshots(MetricLearningModule):
    """Keeps the weights, buffers and optimizer state before and after every training batch."""

    def __init__(self, *a, **k) -> None:
        super().__init__(*a, **k)
        self.before: list[dict[str, torch.Tensor]] = []
        self.after: list[dict[str, torch.Tensor]] = []

    def _state(self) -> dict[str, torch.Tensor]:
        out = {k: v.detach().clone() for k, v in self.state_dict().items()}
        opt = self.trainer.optimizers[0]
        for i, p in enumerate(q for g in opt.param_groups for q in g["params"]):
            for name, value in opt.state.get(p, {}).items():
                out[f"opt{i}.{name}"] = torch.as_tensor(value).detach().clone()
        return out

    def on_train_batch_start(self, batch, batch_idx):
        super().on_train_batch_start(batch, batch_idx)
        self.before.append(self._state())

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.after.append(self._state())


class DeferredCheck(MetricLearningModule):
    """The accelerator behaviour on the CPU: ``stop`` reads the finiteness flags for a window of steps at once."""

    def _defer_nonfinite_check(self, total):
        return self.nonfinite == "stop"


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_toy_loss_is_finite_with_a_nan_gradient():
    emb = torch.nn.functional.normalize(torch.randn(8, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    emb.requires_grad_(True)
    value = NaNGradient(bad=0)(emb, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    assert torch.isfinite(value)
    value.backward()
    assert torch.isnan(emb.grad).all()


_MESSAGE = (r"non-finite gradient at global step 3 \(epoch 0, batch 3\), first in parameter embedder\.backbone\.0\."
            r"weight \(4 of 4 parameters; the loss is finite\) \(loss \{'[a-z_]+': [0-9.e-]+\}\); lower the learning")


def test_a_nonfinite_gradient_of_a_finite_loss_stops_naming_step_and_parameter(tmp_path):
    module = MetricLearningModule(ToyEmbedder(), [Objective(NaNGradient(bad=3))], evaluator=toy_evaluator)
    dm = toy_datamodule(val=False)
    trainer = build_trainer(toy_settings(checkpoint_every_n_steps=1), dm, tmp_path, enable_validation=False)
    with pytest.raises(NonFiniteLossError, match=_MESSAGE) as info:
        trainer.fit(module, datamodule=dm)
    assert "weights are non-finite" not in str(info.value)  # the step itself, not a later weight check
    assert all(torch.isfinite(p).all() for p in module.parameters())  # raised before the update
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] == 3 and all(torch.isfinite(v).all() for v in saved["state_dict"].values())


@pytest.mark.parametrize("log_every", [2, 50])
def test_a_nonfinite_gradient_deferred_names_the_same_step_and_parameter(tmp_path, log_every):
    """On an accelerator the flag is one fused check per step, read later, with each gradient's finiteness from one
    fused max-abs per dtype (the gradients are gone when the flag is read): the step and the parameter are named as
    on the CPU (they were not: 'which parameter is not known')."""
    module = DeferredCheck(ToyEmbedder(), [Objective(NaNGradient(bad=3))], evaluator=toy_evaluator)
    dm = toy_datamodule(val=False)
    trainer = build_trainer(toy_settings(log_every_n_steps=log_every, checkpoint_every_n_steps=2), dm, tmp_path,
                            enable_validation=False)
    with pytest.raises(NonFiniteLossError, match=_MESSAGE):
        trainer.fit(module, datamodule=dm)
    # read with the loss flags, at the latest before the checkpoint after the bad step: batches 0-3 trained
    assert module.losses[0].calls == 4
    saved = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert saved["global_step"] <= 3 and all(torch.isfinite(v).all() for v in saved["state_dict"].values())


def test_a_deferred_check_names_the_first_parameter_in_the_models_order_and_says_so_where_it_cannot(monkeypatch):
    """The flags come grouped by dtype (a float64 parameter after float32 ones); the first bad parameter is the
    model's first, as on the CPU. Where torch's fused kernel refuses the gradients the step is still named."""
    import dynametric.engine.module as module_mod

    module = DeferredCheck(ToyEmbedder(), [Objective(NaNGradient(bad=None))], evaluator=toy_evaluator)
    named = list(module.named_parameters())
    grads = [(n, torch.zeros_like(p)) for n, p in named]
    assert len(named) == 4
    grads[1] = (grads[1][0], grads[1][1].double())  # another dtype group, listed after the float32 one
    grads[1][1].view(-1)[0] = float("nan")
    grads[3][1].view(-1)[0] = float("inf")
    flags = module_mod.finite_gradients(grads, torch.device("cpu"))
    assert flags is not None and flags[0] == [named[i][0] for i in (0, 2, 3, 1)]
    assert flags[1].tolist() == [True, True, False, False]
    where = module._deferred_gradient_where("global step 7 (epoch 1, batch 2)", flags)
    assert where == f"global step 7 (epoch 1, batch 2), first in parameter {named[1][0]} (2 of 4 parameters; the " \
                    "loss is finite)"

    # a gradient without elements (torch's kernel refuses it) is finite, and the others are still named (QA: None)
    with_empty = [("empty", torch.empty(0)), *grads]
    flags = module_mod.finite_gradients(with_empty, torch.device("cpu"))
    assert flags is not None and flags[0][0] == "empty" and flags[1].tolist() == [True, True, True, False, False]
    assert module._deferred_gradient_where("step", flags) == f"step, first in parameter {named[1][0]} (2 of 5 " \
        "parameters; the loss is finite)"

    def refused(*args, **kwargs):
        raise RuntimeError("not implemented for this device")

    monkeypatch.setattr(torch, "_foreach_norm", refused)
    assert module_mod.finite_gradients(grads, torch.device("cpu")) is None
    assert module._deferred_gradient_where("global step 7 (epoch 1, batch 2)", None) == (
        "global step 7 (epoch 1, batch 2) (the loss is finite; which parameter is not known: the flag was read after "
        "the step, sparing a host read per step)")


def test_deferred_gradient_flags_do_not_shorten_the_read_window(monkeypatch):
    module = DeferredCheck(ToyEmbedder(), [Objective(NaNGradient(bad=None))], evaluator=toy_evaluator)
    reads = []
    original = MetricLearningModule.check_deferred_nonfinite

    def counted(self):
        reads.append((int(self.global_step), len(self._deferred_checks)))
        original(self)

    monkeypatch.setattr(MetricLearningModule, "check_deferred_nonfinite", counted)
    dm = toy_datamodule(val=False)
    build_trainer(toy_settings(max_epochs=1, log_every_n_steps=2), dm, None, enable_validation=False).fit(
        module, datamodule=dm)
    # the window's reads after the loss checks of steps 0-1 and 2-3 (their gradient entries along), then the
    # epoch's end and the run's end
    assert reads[:2] == [(1, 3), (3, 4)] and module.skipped_steps == 0


@pytest.mark.parametrize("clip", [None, 0.5])
def test_a_nonfinite_gradient_is_skipped_leaving_weights_optimizer_and_statistics_as_they_were(caplog, clip):
    bad = 2
    module = Snapshots(BNEmbedder(), [Objective(NaNGradient(bad=bad))], OptimSettings(optimizer="adam", lr=0.01),
                       nonfinite="skip", evaluator=toy_evaluator)
    dm = toy_datamodule(val=False)
    with caplog.at_level(logging.WARNING, logger="dynametric.engine"):
        build_trainer(toy_settings(gradient_clip_val=clip), dm, None, enable_validation=False).fit(
            module, datamodule=dm)
    assert module.skipped_steps == 1 and module.losses[0].calls == 10  # counted, and the run went on
    assert all(torch.isfinite(torch.tensor(v)) for v in module.losses[0].values)
    assert _same(module.before[bad], module.after[bad])  # weights, running statistics and Adam's state
    assert not _same(module.before[bad + 1], module.after[bad + 1])  # the next step trains
    assert "opt0.exp_avg" in module.before[bad]  # (Adam had state to keep)
    assert re.search(r"non-finite gradient at global step 2 \(epoch 0, batch 2\), first in parameter "
                     r"embedder\.body\.0\.weight .*; step skipped \(1 skipped so far\)", caplog.text)
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert all(torch.isfinite(b).all() for b in module.buffers())


def test_a_skipped_gradient_step_is_still_a_step_of_the_schedule():
    # as a step skipped for its loss: the global step and the learning-rate schedule move on
    module = Snapshots(ToyEmbedder(), [Objective(NaNGradient(bad=1))],
                       OptimSettings(lr=0.1, scheduler="cosine", interval="step"), nonfinite="skip",
                       evaluator=toy_evaluator)
    dm = toy_datamodule(val=False)
    trainer = build_trainer(toy_settings(max_epochs=1), dm, None, enable_validation=False)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 5 and module.skipped_steps == 1
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 5


def test_accumulated_gradients_are_checked_once_per_optimizer_step(caplog):
    # accumulate 2: batch 3 has the NaN gradient, so the step of batches 2-3 (global step 1) is dropped whole
    module = Snapshots(BNEmbedder(), [Objective(NaNGradient(bad=3))], OptimSettings(optimizer="adam", lr=0.01),
                       nonfinite="skip", evaluator=toy_evaluator)
    dm = toy_datamodule(val=False)
    with caplog.at_level(logging.WARNING, logger="dynametric.engine"):
        build_trainer(toy_settings(max_epochs=1, accumulate_grad_batches=2), dm, None,
                      enable_validation=False).fit(module, datamodule=dm)
    assert module.skipped_steps == 1
    assert _same(module.before[2], module.after[3])  # nothing of batches 2 and 3: weights, statistics, Adam
    assert not _same(module.before[0], module.after[1])
    assert "non-finite gradient at global step 1 (epoch 0, batches 2-3, accumulated), first in parameter" \
        in caplog.text
    module = MetricLearningModule(ToyEmbedder(), [Objective(NaNGradient(bad=3))], evaluator=toy_evaluator)
    with pytest.raises(NonFiniteLossError, match=r"global step 1 \(epoch 0, batches 2-3, accumulated\), first in "):
        build_trainer(toy_settings(max_epochs=1, accumulate_grad_batches=2), dm, None,
                      enable_validation=False).fit(module, datamodule=dm)


@pytest.mark.parametrize("nonfinite, accumulate", [("stop", 1), ("skip", 1), ("stop", 2)])
def test_finite_gradients_train_bit_for_bit_as_without_the_check(monkeypatch, nonfinite, accumulate):
    def train(check: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        module = MetricLearningModule(BNEmbedder(), [Objective(NaNGradient(bad=None))],
                                      OptimSettings(optimizer="adam", lr=0.01), nonfinite=nonfinite,
                                      evaluator=toy_evaluator)
        if not check:
            monkeypatch.setattr(module, "_check_gradients", lambda window: None)
        dm = toy_datamodule(val=False)
        build_trainer(toy_settings(seed=3, accumulate_grad_batches=accumulate, gradient_clip_val=1.0), dm, None,
                      enable_validation=False).fit(module, datamodule=dm)
        return {k: v.detach().clone() for k, v in module.state_dict().items()}

    calls = []
    original = MetricLearningModule._check_gradients
    monkeypatch.setattr(MetricLearningModule, "_check_gradients",
                        lambda self, window: (calls.append(1), original(self, window))[1])
    checked = train(True)
    steps = 2 * -(-5 // accumulate)  # two epochs of five batches; an epoch's short last window steps too
    assert len(calls) == steps  # the check ran at every optimizer step
    plain = train(False)
    assert len(calls) == steps
    assert _same(checked, plain)


def test_no_check_under_a_gradient_scaler():
    # 16-mixed: the GradScaler skips a step with an infinite or NaN gradient itself
    module = MetricLearningModule(ToyEmbedder(), [Objective(PairLoss())])
    for p in module.parameters():
        p.grad = torch.full_like(p, float("nan"))
    module._scaled_precision = lambda: True  # type: ignore[method-assign]
    module._check_gradients(None)
    module._scaled_precision = lambda: False  # type: ignore[method-assign]
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient at global step 0 \(epoch 0\), first in "
                                                 r"parameter embedder\.backbone\.0\.weight \(4 of 4"):
        module._check_gradients(None)


@pytest.mark.parametrize("nonfinite", ["stop", "skip"])
def test_ranks_agree_on_another_ranks_nonfinite_gradient(monkeypatch, nonfinite):
    # DDP: this rank's gradients are finite, another's are not (agree_nonfinite sums the flags over the ranks)
    agreed = []

    def fake_agree(rows, bad):
        agreed.append(bool(bad))
        return rows, torch.ones((), dtype=torch.bool)

    monkeypatch.setattr(module_mod, "world_info", lambda: (0, 2))
    monkeypatch.setattr(module_mod, "agree_nonfinite", fake_agree)
    module = MetricLearningModule(ToyEmbedder(), [Objective(PairLoss())], nonfinite=nonfinite)
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    if nonfinite == "stop":
        with pytest.raises(NonFiniteLossError, match="in another process's gradients"):
            module._check_gradients(None)
    else:
        module._check_gradients(None)
        assert module.skipped_steps == 1 and all(p.grad is None for p in module.parameters())
    assert agreed == [False]


def test_the_fused_gradient_check_leaves_every_value_and_sees_nan_and_inf_in_any_dtype():
    """The check is torch's fused one of the gradient scaler at scale 1: one kernel per device and dtype, every
    gradient bit-identical afterwards (subnormals and -0 included), NaN and Inf found; per tensor where it cannot."""
    from dynametric.engine.module import nonfinite_gradients

    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        info = torch.finfo(dtype)
        edge = torch.tensor([-0.0, info.smallest_normal / 4, info.max, -info.max], dtype=torch.float64).to(dtype)
        grads = [edge, torch.randn(3, 3).to(dtype)]
        before = [g.clone() for g in grads]
        assert not bool(nonfinite_gradients(grads, torch.device("cpu")))
        assert all(torch.equal(a, b) and torch.equal(torch.signbit(a), torch.signbit(b)) for a, b in zip(grads, before))
        for bad in (float("nan"), float("inf"), float("-inf")):
            grads[1][1, 1] = bad
            assert bool(nonfinite_gradients(grads, torch.device("cpu")))
            grads[1][1, 1] = 0.0
    sparse = torch.sparse_coo_tensor(torch.tensor([[0, 2]]), torch.tensor([1.0, float("nan")]), (4,))
    assert bool(nonfinite_gradients([torch.ones(2), sparse], torch.device("cpu")))


def test_a_nan_in_a_sparse_gradient_names_its_parameter():
    """A sparse gradient (nn.Embedding(sparse=True)) with a NaN: the fused check finds it, and naming the parameter
    reads its stored values (torch.isfinite does not take a sparse tensor: the stop was a NotImplementedError)."""
    from dynametric.engine.module import gradient_finite

    table = torch.nn.Embedding(4, 3, sparse=True)
    table(torch.tensor([0, 2])).sum().backward()
    assert table.weight.grad.is_sparse and bool(gradient_finite(table.weight.grad))
    values = table.weight.grad.coalesce()
    bad = torch.sparse_coo_tensor(values.indices(), values.values().clone().index_fill_(1, torch.tensor([1]),
                                                                                         float("nan")), (4, 3))
    assert not bool(gradient_finite(bad))
    assert bool(gradient_finite(torch.ones(2))) and not bool(gradient_finite(torch.tensor([1.0, float("inf")])))
    module = MetricLearningModule(ToyEmbedder(), [Objective(PairLoss())], evaluator=toy_evaluator)
    module.table = table  # a parameter whose gradient is sparse, as a user's backbone may have
    table.weight.grad = bad
    with pytest.raises(NonFiniteLossError, match=r"first in parameter table\.weight \(1 of 1 parameters"):
        module._check_gradients(None)  # was: NotImplementedError ('aten::ne.Scalar' ... 'SparseCPU')


class NaNCalls(PairLoss):
    """The pair loss, NaN at the calls (0-based) in ``bad``."""

    def __init__(self, bad: set[int]) -> None:
        super().__init__()
        self.bad, self.calls = bad, 0

    def compute_loss(self, emb, labels, indices_tuple, ref_emb, ref_labels):
        value = super().compute_loss(emb, labels, indices_tuple, ref_emb, ref_labels)
        self.calls += 1
        return value * float("nan") if self.calls - 1 in self.bad else value


@pytest.mark.parametrize("bad", [{0, 1}, {1}, {2}])
def test_a_nonfinite_loss_under_accumulation_skips_the_whole_optimizer_step(caplog, bad):
    """accumulate 3 over five batches: steps of batches 0-2 and 3-4. A non-finite loss in the first window skipped
    that batch only: the step ran on the window's other batches (each at 1/3 weight), and each bad batch was counted
    as a skipped step. Now nothing of the window reaches the weights, the batch-norm statistics or SGD's state, and
    the step is counted and logged once, as the gradient check does."""
    module = Snapshots(BNEmbedder(), [Objective(NaNCalls(bad))],
                       OptimSettings(optimizer="sgd", lr=0.1, momentum=0.0), nonfinite="skip",
                       evaluator=toy_evaluator)
    dm = toy_datamodule(val=False)
    with caplog.at_level(logging.WARNING, logger="dynametric.engine"):
        build_trainer(toy_settings(max_epochs=1, accumulate_grad_batches=3), dm, None,
                      enable_validation=False).fit(module, datamodule=dm)
    assert module.trainer.global_step == 2 and module.losses[0].calls == 5
    assert module.skipped_steps == 1
    assert _same(module.before[0], module.after[2])  # bit for bit: weights and running statistics of the window
    assert not _same(module.before[3], module.after[4])  # the next step trains
    assert all(torch.isfinite(p).all() for p in module.parameters())
    lines = [r.getMessage() for r in caplog.records if "step skipped" in r.getMessage()]
    first = min(bad)
    listed = ", ".join(str(b) for b in sorted(bad))
    assert len(lines) == 1 and lines[0].startswith(f"non-finite loss at global step 0 (epoch 0, batch {first}): ")
    assert lines[0].endswith(f"; step skipped: the optimizer step of batches 0-2 (accumulated; non-finite: "
                             f"batch{'es' if len(bad) > 1 else ''} {listed}) (1 skipped so far)")


def test_a_nonfinite_loss_without_accumulation_still_skips_its_step_and_says_so(caplog):
    module = Snapshots(BNEmbedder(), [Objective(NaNCalls({2}))], OptimSettings(optimizer="adam", lr=0.01),
                       nonfinite="skip", evaluator=toy_evaluator)
    dm = toy_datamodule(val=False)
    with caplog.at_level(logging.WARNING, logger="dynametric.engine"):
        build_trainer(toy_settings(max_epochs=1), dm, None, enable_validation=False).fit(module, datamodule=dm)
    assert module.skipped_steps == 1 and _same(module.before[2], module.after[2])
    assert re.search(r"non-finite loss at global step 2 \(epoch 0, batch 2\): \{'[a-z_]+': nan\}; step skipped "
                     r"\(1 skipped so far\)", caplog.text)
