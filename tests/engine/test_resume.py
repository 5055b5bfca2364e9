"""Exact resume: N steps straight == k steps, crash, resume from last.ckpt to N."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from dynametric.engine.data import MetricDataModule, ResumableBatchSampler, SeededDataset
from dynametric.engine.module import GroupSettings, MetricLearningModule, OptimSettings
from dynametric.engine.objective import Objective
from dynametric.engine.trainer import TrainerSettings, build_trainer
from tests.engine.toy import PairLoss, ProxyLoss, RandomPairMiner, ToyData, ToyEmbedder, ToySampler, toy_evaluator


class Crash(RuntimeError):
    pass


class CrashAt:
    """Raise in on_train_batch_start once global_step reaches ``step`` (simulates a killed process)."""

    def __init__(self, step: int) -> None:
        import lightning as L

        class _Cb(L.Callback):
            def on_train_batch_start(cb, trainer, pl_module, batch, batch_idx):  # noqa: N805
                if trainer.global_step >= step:
                    raise Crash(f"killed at step {trainer.global_step}")

        self.callback = _Cb()


class CrashInValidation(L.Callback):
    """Raise when the validation after step ``step`` starts (a process killed while it validates)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_validation_start(self, trainer, pl_module):
        if trainer.global_step == self.step:
            raise Crash(f"killed validating after step {trainer.global_step}")


def _setup(tmp_path, max_steps: int, every: int, accumulate: int = 1, *, scheduler: str = "cosine",
           monitor_mode: str = "max", patience: int | None = None):
    """5 batches per epoch; validation (``val/fine/map@r``, ``monitor_mode``) at the end of every epoch. ``plateau``:
    x 0.5 after every validation round without improvement."""
    torch.manual_seed(0)
    embedder = ToyEmbedder()
    objectives = [Objective(PairLoss(), RandomPairMiner(), name="pair"),
                  Objective(ProxyLoss(6, 4), None, name="proxy", weight=0.5)]
    optim = OptimSettings(optimizer="sgd", lr=0.05, momentum=0.9, scheduler=scheduler, warmup_steps=2, interval="step",
                          loss=GroupSettings(lr=0.2), step_size_epochs=0, gamma=0.5, monitor_mode=monitor_mode)
    module = MetricLearningModule(embedder, objectives, optim, evaluator=toy_evaluator, scale_names=["fine", "coarse"])
    dm = MetricDataModule(ToyData(), ToyData(seed=1, augment=False),
                          batch_sampler_factory=lambda labels, r, w: ToySampler(labels, rank=r, world_size=w),
                          eval_batch_size=16, seed=3)
    settings = TrainerSettings(max_steps=max_steps, checkpoint_every_n_steps=every, accelerator="cpu",
                               progress_bar=False, accumulate_grad_batches=accumulate, seed=0,
                               monitor_mode=monitor_mode, patience=patience)
    return module, dm, settings


def _weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("accumulate", [1, 2])
def test_resume_after_crash_matches_straight_run(tmp_path, accumulate):
    n_steps = 13 // accumulate + 1
    # straight run
    module, dm, settings = _setup(tmp_path, n_steps, every=0, accumulate=accumulate)
    build_trainer(settings, dm, tmp_path / "straight").fit(module, datamodule=dm)
    straight = _weights(module)
    assert module.global_step == n_steps

    # interrupted run: last.ckpt every 3 steps, crash at step 7 (mid-epoch: 5 batches per epoch)
    module, dm, settings = _setup(tmp_path, n_steps, every=3, accumulate=accumulate)
    run = tmp_path / "crashed"
    crash = CrashAt(7 if accumulate == 1 else 4)
    with pytest.raises(Crash):
        build_trainer(settings, dm, run, callbacks=[crash.callback]).fit(module, datamodule=dm)
    interrupted = _weights(module)
    assert (run / "last.ckpt").is_file()

    # fresh objects, resume
    module, dm, settings = _setup(tmp_path, n_steps, every=3, accumulate=accumulate)
    build_trainer(settings, dm, run).fit(module, datamodule=dm, ckpt_path=str(run / "last.ckpt"))
    assert module.global_step == n_steps
    resumed = _weights(module)
    assert any(not torch.allclose(interrupted[k], straight[k]) for k in straight)  # the crash really lost steps
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=1e-5, atol=1e-6, msg=k)
    # validation history survives the resume: one entry per finished epoch, no duplicates
    epochs = [h["epoch"] for h in module.validation_history]
    assert epochs == sorted(set(epochs)) and len(epochs) >= 2


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_end_of_epoch_checkpoint_matches_straight_run(tmp_path, workers):
    # last.ckpt only at epoch ends (every=0) and an epoch budget: the crash at step 7 resumes from the end of
    # epoch 0 (5 batches). Lightning builds the resumed epoch's iterator while its current_epoch still names the
    # finished epoch; the sampler must continue with the next epoch's batches, not replay the finished one. With
    # loader workers the DataLoader asks the sampler for an iterator twice as it starts (it replayed epoch 0).
    def setup():
        module, dm, settings = _setup(tmp_path, -1, every=0)
        settings.max_epochs = 3
        dm.num_workers = workers
        return module, dm, settings

    module, dm, settings = setup()
    build_trainer(settings, dm, tmp_path / "straight").fit(module, datamodule=dm)
    straight = _weights(module)

    module, dm, settings = setup()
    run = tmp_path / "crashed"
    with pytest.raises(Crash):
        build_trainer(settings, dm, run, callbacks=[CrashAt(7).callback]).fit(module, datamodule=dm)

    module, dm, settings = setup()
    build_trainer(settings, dm, run).fit(module, datamodule=dm, ckpt_path=str(run / "last.ckpt"))
    assert module.global_step == 15
    for k, v in _weights(module).items():
        torch.testing.assert_close(v, straight[k], rtol=1e-5, atol=1e-6, msg=k)


def _straight_and_resumed(tmp_path, crash: int, *, max_epochs: int = 3, max_steps: int = -1, every: int = 0,
                          val_every: int = 1, crashes: int = 1, in_validation: bool = False, **kwargs):
    """The same run uninterrupted (``tmp_path/straight``) and crashed at the start of step ``crash``, i.e. right after
    the checkpoint written before it, then resumed from its ``last.ckpt`` (``tmp_path/crashed``; ``crashes`` > 1:
    the resumed run crashes there again, before its first batch, and is resumed again; ``in_validation``: crashed in
    the validation that follows step ``crash`` instead). Returns the two modules and the crashed run's ``last.ckpt``
    as it was at the first crash."""
    from dynametric.engine.checkpoint import load_checkpoint_file

    def setup():
        module, dm, settings = _setup(tmp_path, max_steps, every, **kwargs)
        settings.max_epochs, settings.val_every_n_epochs = max_epochs, val_every
        return module, dm, settings

    straight, dm, settings = setup()
    build_trainer(settings, dm, tmp_path / "straight").fit(straight, datamodule=dm)
    module, dm, settings = setup()
    run = tmp_path / "crashed"
    with pytest.raises(Crash):
        callback = CrashInValidation(crash) if in_validation else CrashAt(crash).callback
        build_trainer(settings, dm, run, callbacks=[callback]).fit(module, datamodule=dm)
    at_crash = load_checkpoint_file(run / "last.ckpt")
    if not in_validation:
        assert at_crash["global_step"] == crash - (crash % every if every and crash % 5 else 0)
    for _ in range(crashes - 1):
        module, dm, settings = setup()
        with pytest.raises(Crash):
            build_trainer(settings, dm, run, callbacks=[CrashAt(crash).callback]).fit(
                module, datamodule=dm, ckpt_path=str(run / "last.ckpt"))
    resumed, dm, settings = setup()
    build_trainer(settings, dm, run).fit(resumed, datamodule=dm, ckpt_path=str(run / "last.ckpt"))
    return straight, resumed, at_crash


def _best_state(ckpt) -> dict:
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    return state


def _assert_same_run(tmp_path, straight, resumed) -> None:
    """Same final weights, validation rounds, best.ckpt (epoch, weights, score) and last.ckpt (scheduler and
    optimizer state, best score) as the uninterrupted run."""
    from dynametric.engine.checkpoint import load_checkpoint_file

    for k, v in _weights(straight).items():
        torch.testing.assert_close(_weights(resumed)[k], v, rtol=1e-5, atol=1e-6, msg=k)
    assert resumed.validation_history == straight.validation_history
    for name in ("best.ckpt", "last.ckpt"):
        a, b = (load_checkpoint_file(tmp_path / run / name) for run in ("straight", "crashed"))
        assert (b["epoch"], b["global_step"]) == (a["epoch"], a["global_step"]), name
        for k, v in a["state_dict"].items():
            torch.testing.assert_close(b["state_dict"][k], v, rtol=1e-5, atol=1e-6, msg=f"{name}: {k}")
        assert b["lr_schedulers"] == a["lr_schedulers"], name
        assert [g["lr"] for g in b["optimizer_states"][0]["param_groups"]] == \
            [g["lr"] for g in a["optimizer_states"][0]["param_groups"]], name
        assert _best_state(b)["best_model_score"] == _best_state(a)["best_model_score"], name
        assert b["loops"] == a["loops"], name  # Lightning's counters: epochs, batches, steps (the loggers' too)


@pytest.mark.parametrize(("crash", "kwargs"), [
    (5, {}),  # right after the end of epoch 0, its best epoch (monitor_mode min)
    (5, {"max_epochs": -1, "max_steps": 15}),  # the same trained to max_steps (Lightning's iteration-based loop)
    # ... killed again before the resumed run's first batch, after Lightning repeated the end of epoch 0 (and wrote
    # last.ckpt again, with the RNG states the resumed run had not restored yet)
    (5, {"max_epochs": -1, "max_steps": 15, "crashes": 2}),
    (10, {"val_every": 2, "max_epochs": 4}),  # right after the end of epoch 1, its first validated epoch
    (5, {"val_every": 2, "max_epochs": 4}),  # right after the end of epoch 0, which did not validate
    (7, {"every": 3}),  # mid-epoch (last.ckpt at step 6)
])
def test_resume_right_after_an_end_of_epoch_checkpoint_keeps_the_best_score(tmp_path, crash, kwargs):
    # the end-of-epoch last.ckpt used to be written before ModelCheckpoint recorded that epoch's validation score:
    # the resumed run forgot it and replaced best.ckpt with the next, worse, epoch
    straight, resumed, at_crash = _straight_and_resumed(tmp_path, crash, monitor_mode="min", **kwargs)
    validated = [h["epoch"] for h in straight.validation_history if h["epoch"] <= at_crash["epoch"]]
    assert (_best_state(at_crash)["best_model_score"] is None) == (not validated)
    if crash == 5 and not kwargs.get("val_every"):
        from dynametric.engine.checkpoint import load_checkpoint_file

        assert load_checkpoint_file(tmp_path / "straight" / "best.ckpt")["epoch"] == 0  # the case of the bug
    _assert_same_run(tmp_path, straight, resumed)


@pytest.mark.parametrize(("crash", "max_epochs"), [
    (7, 3),  # last.ckpt at the end of epoch 1 (step 6)
    (11, 4),  # last.ckpt at step 10, epoch 3 after 2 of its batches
])
def test_a_resumed_run_with_gradient_accumulation_writes_no_checkpoint_inside_an_accumulation(tmp_path, crash,
                                                                                              max_epochs):
    # accumulate 2 (3 steps an epoch), last.ckpt every 2 steps, killed at the start of step `crash`, resumed and
    # killed there again. The resumed process's first batch (no optimizer step) used to save the resumed step once
    # more, in the middle of an accumulation: the run resumed from that lost the batch's gradient
    from dynametric.engine.checkpoint import load_checkpoint_file

    straight, resumed, at_crash = _straight_and_resumed(tmp_path, crash, max_epochs=max_epochs, every=2, accumulate=2,
                                                        crashes=2)
    assert at_crash["global_step"] == crash - 1
    assert load_checkpoint_file(tmp_path / "crashed" / "last.ckpt")["global_step"] == straight.global_step
    _assert_same_run(tmp_path, straight, resumed)


@pytest.mark.parametrize(("crash", "kwargs"), [
    (5, {}),  # right after the end of epoch 0
    (5, {"max_epochs": -1, "max_steps": 20}),  # the same trained to max_steps
    (7, {"every": 3}),  # mid-epoch: Lightning skipped the step at the end of the epoch a run resumed into
    (10, {"val_every": 2, "max_epochs": 6}),  # right after the end of epoch 1 (epochs 0, 2, 4 do not validate)
])
def test_resume_keeps_the_plateau_schedule(tmp_path, crash, kwargs):
    # the end-of-epoch last.ckpt used to be written before Lightning stepped the plateau schedule: a resumed run
    # never took that step and ended with another learning rate (and other weights)
    kwargs = {"max_epochs": 4, **kwargs}
    straight, resumed, at_crash = _straight_and_resumed(tmp_path, crash, scheduler="plateau", monitor_mode="min",
                                                        **kwargs)
    sched = straight.trainer.lr_scheduler_configs[0].scheduler
    rounds = len(straight.validation_history)
    assert sched.last_epoch == rounds  # one step per validation round
    assert sched.optimizer.param_groups[0]["lr"] < 0.05  # the schedule did lower the learning rate (torch 2.1's
    # ReduceLROnPlateau has no get_last_lr)
    validated = [h for h in straight.validation_history if h["epoch"] <= at_crash["epoch"]]
    if at_crash["global_step"] % 5 == 0:  # an end-of-epoch checkpoint: that epoch's round stepped on
        assert at_crash["lr_schedulers"][0]["last_epoch"] == len(validated)
    _assert_same_run(tmp_path, straight, resumed)


# the toy run's validation fine/map@r (mode max) by epoch: 0.5625, 0.5833, 0.6458, 0.5833, 0.5417, ... so patience 1
# stops it after epoch 3 (step 20), patience 2 after epoch 4 (step 25)
def _early_stopping_state(ckpt) -> dict:
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("EarlyStopping{")]
    return state


def test_a_run_resumed_after_early_stopping_decided_to_stop_trains_no_further(tmp_path):
    # the stop is trainer.should_stop, which no checkpoint holds: a run killed after the end-of-epoch last.ckpt of
    # the epoch that decided to stop (while the run tested) trained another epoch when resumed
    from dynametric.engine.checkpoint import load_checkpoint_file

    module, dm, settings = _setup(tmp_path, -1, 0, patience=1)
    settings.max_epochs = 8
    build_trainer(settings, dm, tmp_path / "run").fit(module, datamodule=dm)
    assert [h["epoch"] for h in module.validation_history] == [0, 1, 2, 3] and module.global_step == 20
    final = load_checkpoint_file(tmp_path / "run" / "last.ckpt")
    assert final["global_step"] == 20 and _early_stopping_state(final)["wait_count"] == 1
    before = {name: (tmp_path / "run" / name).read_bytes() for name in ("last.ckpt", "best.ckpt")}
    resumed, dm, settings = _setup(tmp_path, -1, 0, patience=1)
    settings.max_epochs = 8
    trainer = build_trainer(settings, dm, tmp_path / "run")
    trainer.fit(resumed, datamodule=dm, ckpt_path=str(tmp_path / "run" / "last.ckpt"))
    assert trainer.global_step == 20 and resumed.validation_history == module.validation_history
    for k, v in _weights(module).items():
        torch.testing.assert_close(_weights(resumed)[k], v, rtol=0, atol=0, msg=k)
    for name, data in before.items():  # nothing trained, nothing written
        assert (tmp_path / "run" / name).read_bytes() == data, name
    (stopping,) = [cb for cb in trainer.callbacks if type(cb).__name__ == "RunEarlyStopping"]
    assert stopping.summary()["epoch"] == 3 and "did not improve in 1 validation round" in stopping.summary()["reason"]


@pytest.mark.parametrize("crash", [15, 20])
def test_early_stopping_resumes_with_its_wait_count(tmp_path, crash):
    # patience 2: killed after epoch 2 (the best round, wait 0) or epoch 3 (wait 1), resumed: it stops after epoch 4
    # as the uninterrupted run does
    straight, resumed, at_crash = _straight_and_resumed(tmp_path, crash, max_epochs=8, patience=2)
    assert _early_stopping_state(at_crash)["wait_count"] == {15: 0, 20: 1}[crash]
    assert straight.global_step == resumed.global_step == 25
    assert [h["epoch"] for h in resumed.validation_history] == [0, 1, 2, 3, 4]
    _assert_same_run(tmp_path, straight, resumed)


@pytest.mark.parametrize(("crash", "every"), [(10, 2), (10, 5), (5, 1)])
def test_killed_while_validating_after_a_step_checkpoint_at_the_end_of_an_epoch(tmp_path, crash, every):
    # with checkpoint_every_n_steps dividing the epoch's last step, last.ckpt used to be written after that step and
    # before the epoch's validation; Lightning resumes such a checkpoint as a finished epoch, so a run killed while
    # validating never validated that epoch (its score, a best.ckpt candidate, was lost)
    straight, resumed, at_crash = _straight_and_resumed(tmp_path, crash, every=every, in_validation=True,
                                                        monitor_mode="min")
    assert at_crash["global_step"] < crash  # the checkpoint before that step's
    _assert_same_run(tmp_path, straight, resumed)


@pytest.mark.parametrize(("max_epochs", "max_steps", "steps"), [(1, 8, 5), (3, 8, 8), (4, 30, 20), (-1, 8, 8)])
def test_max_epochs_and_max_steps_both_apply(tmp_path, max_epochs, max_steps, steps):
    # max_steps used to switch max_epochs off (Lightning got max_epochs=-1): 1 epoch and 8 steps trained 8 steps
    module, dm, settings = _setup(tmp_path, max_steps, every=0)
    settings.max_epochs = max_epochs
    trainer = build_trainer(settings, dm, tmp_path / "run")
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == steps  # whichever limit comes first (5 batches per epoch)


def test_a_run_with_both_limits_resumed_from_an_end_of_epoch_checkpoint_trains_its_epochs(tmp_path):
    # Lightning's iteration-based loop (max_steps set) repeats the end of the epoch a run resumes from and counted
    # it twice: with max_epochs the first limit, the resumed run stopped an epoch early
    straight, resumed, _ = _straight_and_resumed(tmp_path, 5, max_epochs=4, max_steps=30)
    assert straight.global_step == resumed.global_step == 20
    _assert_same_run(tmp_path, straight, resumed)


def test_resumable_sampler_skips_and_counts_epochs():
    labels = ToyData().labels
    full = ResumableBatchSampler(ToySampler(labels), seed=5)
    epoch0, epoch1 = list(full), list(full)
    assert epoch0 != epoch1 and len(epoch0) == 5
    part = ResumableBatchSampler(ToySampler(labels), seed=5)
    part.resume(1, 2)
    assert list(part) == epoch1[2:]
    part.resume(0, 5)  # a finished epoch continues with the next one
    assert list(part) == epoch1


def test_resumed_sampler_never_goes_back_to_the_finished_epoch():
    # resuming from an end-of-epoch checkpoint, the trainer's epoch still names the finished epoch 0 while the loader
    # starts; a multi-process DataLoader calls iter() twice then and keeps the second iterator, which replayed epoch 0
    labels = ToyData().labels
    epochs = [list(ResumableBatchSampler(ToySampler(labels), seed=5, epoch_fn=lambda e=e: e)) for e in range(3)]
    trainer_epoch = [0]
    part = ResumableBatchSampler(ToySampler(labels), seed=5, epoch_fn=lambda: trainer_epoch[0])
    part.resume(0, 5)
    assert list(part) == epochs[1] and list(part) == epochs[1]
    trainer_epoch[0] = 1  # the trainer catches up: Lightning may build the iterator again in the same epoch
    assert list(part) == epochs[1]
    trainer_epoch[0] = 2
    assert list(part) == epochs[2]
    part.resume(1, 3)  # mid-epoch: every iteration of the resumed epoch skips the batches done
    trainer_epoch[0] = 1
    assert list(part) == epochs[1][3:] and list(part) == epochs[1][3:]


def test_seeded_dataset_is_reproducible_and_leaves_global_rng_alone():
    ds = SeededDataset(ToyData())
    state = torch.get_rng_state()
    a, b = ds[(3, 123)][0], ds[(3, 123)][0]
    c = ds[(3, 124)][0]
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.get_rng_state(), state)
    with torch.random.fork_rng(devices=[]):  # the item's draws are those after torch.manual_seed(token)
        torch.manual_seed(123)
        assert torch.equal(ToyData()[3][0], a)


def test_run_checkpoint_restores_its_best_score_in_a_copied_or_moved_folder(tmp_path):
    import warnings

    from lightning.pytorch.callbacks import ModelCheckpoint

    from dynametric.engine.callbacks import RunCheckpoint

    def callback(folder):
        return RunCheckpoint(dirpath=folder, filename="best", monitor="val/fine/map@r", mode="max", save_top_k=1)

    old, new = tmp_path / "base", tmp_path / "G4"
    written = ModelCheckpoint(dirpath=old, filename="best", monitor="val/fine/map@r", mode="max", save_top_k=1)
    best = str(old.resolve() / "best.ckpt")
    written.best_k_models, written.best_model_path = {best: torch.tensor(0.9)}, best
    written.best_model_score, written.kth_value = torch.tensor(0.9), torch.tensor(0.9)
    written.kth_best_model_path = best
    state = written.state_dict()
    assert callback(new).state_key == written.state_key  # checkpoints of either load into the other

    moved = callback(new)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "dirpath has changed"
        moved.load_state_dict(state)
    here = str(new.resolve() / "best.ckpt")
    assert moved.moved_from == str(old.resolve())
    assert moved.best_model_path == here and moved.kth_best_model_path == here
    assert moved.best_k_models == {here: torch.tensor(0.9)} and moved.best_model_score == torch.tensor(0.9)
    assert moved.kth_value == torch.tensor(0.9)

    # a path outside the old folder is never followed (nor deleted later as the k-th best)
    outside = dict(state, best_k_models={"/elsewhere/best.ckpt": torch.tensor(0.9)}, best_model_path="/elsewhere/b",
                   kth_best_model_path="/elsewhere/best.ckpt")
    dropped = callback(new)
    dropped.load_state_dict(outside)
    assert dropped.best_k_models == {} and dropped.best_model_path == "" and dropped.best_model_score is None
    assert dropped.kth_best_model_path == ""

    same = callback(old)  # the folder where it was written: Lightning's own restore
    same.load_state_dict(state)
    assert same.moved_from is None and same.best_model_path == best and same.best_model_score == torch.tensor(0.9)
