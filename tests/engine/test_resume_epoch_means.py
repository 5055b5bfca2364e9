"""The epoch means of the training curve (``train/loss_epoch``, ``train/<term>`` in ``logs/metrics.csv``) of a run
killed mid-epoch and resumed are the uninterrupted run's: the resumed process adds the sums the checkpoint recorded
for the epoch it resumes into."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from dynametric.engine.checkpoint import load_checkpoint_file, save_checkpoint_file
from dynametric.engine.trainer import build_trainer
from tests.engine.test_resume import Crash, CrashAt, _setup
from tests.engine.toy import ToySampler

MEANS = ("train/loss_epoch", "train/pair", "train/proxy")  # the total and the two loss terms (pair, proxy)


def _rows(run) -> list[dict[str, str]]:
    with open(run / "logs" / "metrics.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def epoch_means(run) -> dict[int, dict[str, float]]:
    """``{epoch: {metric: value}}`` from the run's ``logs/metrics.csv``; an epoch logged twice is an error."""
    out: dict[int, dict[str, float]] = {}
    for row in _rows(run):
        if row.get("train/loss_epoch"):
            epoch = int(row["epoch"])
            assert epoch not in out, f"epoch {epoch} logged twice"
            out[epoch] = {k: float(row[k]) for k in MEANS}
    return out


def step_losses(run) -> dict[int, tuple[int, float]]:
    """``{step: (epoch, train/loss_step)}`` (``log_every_n_steps`` 1: every optimizer step; the last row of a step
    logged twice, by a killed process and by the one that resumed)."""
    return {int(r["step"]): (int(r["epoch"]), float(r["train/loss_step"])) for r in _rows(run)
            if r.get("train/loss_step")}


def _run(tmp_path, name, max_steps, every, accumulate, crashes=(), ckpt_edit=None):
    """A run in ``tmp_path/name``: crashed at the start of each step in ``crashes`` in turn (each process resumed
    from ``last.ckpt``, after ``ckpt_edit(checkpoint)``), then resumed to its end. Returns the run folder."""
    run = tmp_path / name

    def setup():
        module, dm, settings = _setup(tmp_path, max_steps, every, accumulate=accumulate)
        settings.log_every_n_steps = 1
        return module, dm, settings

    ckpt = None
    for crash in crashes:
        module, dm, settings = setup()
        with pytest.raises(Crash):
            build_trainer(settings, dm, run, callbacks=[CrashAt(crash).callback]).fit(module, datamodule=dm,
                                                                                       ckpt_path=ckpt)
        ckpt = str(run / "last.ckpt")
        if ckpt_edit is not None:
            checkpoint = load_checkpoint_file(ckpt)
            ckpt_edit(checkpoint)
            save_checkpoint_file(checkpoint, ckpt)
    module, dm, settings = setup()
    build_trainer(settings, dm, run).fit(module, datamodule=dm, ckpt_path=ckpt)
    assert module.global_step == max_steps
    return run


def _resume_state(ckpt) -> dict:
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ResumeState")]
    return state


def _assert_same_means(straight, resumed) -> None:
    a, b = epoch_means(straight), epoch_means(resumed)
    assert sorted(b) == sorted(a)
    for epoch, means in a.items():
        for k, v in means.items():
            assert b[epoch][k] == pytest.approx(v, rel=1e-5, abs=1e-7), (epoch, k)


@pytest.mark.parametrize(("accumulate", "max_steps", "every", "crashes", "into"), [
    (1, 14, 3, (7,), 1),  # last.ckpt at step 6: epoch 1 after 1 of its 5 batches
    (1, 14, 1, (7, 8), 1),  # killed again after the resumed process wrote a checkpoint (steps 7, 8 of epoch 1)
    (1, 14, 4, (13,), 2),  # step 12: epoch 2 after 2 batches (of the 4 max_steps leaves it)
    (2, 8, 2, (5,), 1),  # gradient accumulation 2 (3 steps per epoch): step 4 is epoch 1 after 2 batches
])
def test_a_run_resumed_mid_epoch_logs_the_uninterrupted_epoch_means(tmp_path, accumulate, max_steps, every, crashes,
                                                                    into):
    straight = _run(tmp_path, "straight", max_steps, every, accumulate)
    resumed = _run(tmp_path, "crashed", max_steps, every, accumulate, crashes)
    means = epoch_means(straight)
    # the straight run's means are those of its steps (batches of 8; with accumulation, of the first batch of each
    # step, so only checked without it)
    if accumulate == 1:
        steps = step_losses(straight)
        for epoch, m in means.items():
            losses = [loss for e, loss in steps.values() if e == epoch]
            assert len(losses) in (4, 5)
            assert m["train/loss_epoch"] == pytest.approx(sum(losses) / len(losses), rel=1e-5)
    assert math.isclose(means[into]["train/loss_epoch"],  # the total is the weighted sum of the terms
                        means[into]["train/pair"] + 0.5 * means[into]["train/proxy"], rel_tol=1e-5)
    _assert_same_means(straight, resumed)
    ckpt = load_checkpoint_file(resumed / "last.ckpt")  # (the end of the run)
    assert _resume_state(ckpt)["epoch_means"]["batches_done"] == _resume_state(ckpt)["batches_done"]


def test_a_run_resumed_from_an_end_of_epoch_checkpoint_starts_the_next_epoch_s_means(tmp_path):
    # last.ckpt at the end of epoch 0 (every=0) records epoch 0's full sums: they never go into epoch 1's means
    straight = _run(tmp_path, "straight", 14, 0, 1)
    resumed = _run(tmp_path, "crashed", 14, 0, 1, (7,))
    ckpt_state = _resume_state(load_checkpoint_file(tmp_path / "straight" / "last.ckpt"))["epoch_means"]
    assert ckpt_state["epoch"] == 2 and ckpt_state["batches_done"] == 4
    assert set(ckpt_state["metrics"]) == {"training_step.train/loss", "training_step.train/pair",
                                          "training_step.train/proxy"}
    loss = ckpt_state["metrics"]["training_step.train/loss"]
    assert int(loss["count"]) == 4 * 8  # 4 batches of 8 in epoch 2
    assert float(loss["value"]) / int(loss["count"]) == pytest.approx(epoch_means(straight)[2]["train/loss_epoch"],
                                                                      rel=1e-6)
    _assert_same_means(straight, resumed)


def test_a_checkpoint_without_epoch_sums_resumes_with_the_means_of_the_resumed_steps(tmp_path):
    # a checkpoint of an earlier version: the epoch resumed into averages the steps the resumed process trained
    def old_version(checkpoint):
        assert _resume_state(checkpoint).pop("epoch_means")["metrics"]

    straight = _run(tmp_path, "straight", 14, 3, 1)
    resumed = _run(tmp_path, "crashed", 14, 3, 1, (7,), ckpt_edit=old_version)
    a, b = epoch_means(straight), epoch_means(resumed)
    assert b[0] == pytest.approx(a[0]) and b[2] == pytest.approx(a[2])
    steps = step_losses(resumed)
    # the column "step" counts from 0: the checkpoint followed steps 0..5, the resumed process trained 6..9
    after = [loss for step, (epoch, loss) in steps.items() if epoch == 1 and step >= 6]
    assert len(after) == 4
    assert b[1]["train/loss_epoch"] == pytest.approx(sum(after) / 4, rel=1e-5)
    assert b[1]["train/loss_epoch"] != pytest.approx(a[1]["train/loss_epoch"], rel=1e-3)


def test_epoch_sums_add_to_the_resumed_metrics_and_keep_those_not_logged_yet():
    """:func:`add_epoch_sums` on Lightning's own result collection: a mean adds its weighted sum and batch sizes,
    a sum its sum, a max / min takes the larger / smaller; a metric not logged yet this epoch is returned."""
    from types import SimpleNamespace

    from lightning.pytorch.trainer.connectors.logger_connector.result import _ResultCollection

    from dynametric.engine.callbacks import add_epoch_sums, epoch_sums

    results = _ResultCollection(training=True)
    trainer = SimpleNamespace(fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(_results=results)))
    for value, bs in ((1.0, 4), (3.0, 2)):  # the killed process: 2 batches
        results.log("training_step", "a", torch.tensor(value), on_epoch=True, batch_size=bs)
        results.log("training_step", "s", torch.tensor(value), on_epoch=True, reduce_fx="sum")
        results.log("training_step", "hi", torch.tensor(value), on_epoch=True, reduce_fx="max")
        results.log("training_step", "step_only", torch.tensor(value), on_step=True, on_epoch=False)
    results.log("training_step", "late", torch.tensor(5.0), on_epoch=True, batch_size=1)
    saved = epoch_sums(trainer)  # type: ignore[arg-type]
    assert set(saved) == {"training_step.a", "training_step.s", "training_step.hi", "training_step.late"}
    assert float(saved["training_step.a"]["value"]) == 10.0 and int(saved["training_step.a"]["count"]) == 6
    assert not saved["training_step.a"]["synced"]

    results.reset()  # the resumed process: one batch of 2
    results.log("training_step", "a", torch.tensor(7.0), on_epoch=True, batch_size=2)
    results.log("training_step", "s", torch.tensor(2.0), on_epoch=True, reduce_fx="sum")
    results.log("training_step", "hi", torch.tensor(2.0), on_epoch=True, reduce_fx="max")
    left = add_epoch_sums(trainer, saved)  # type: ignore[arg-type]
    assert set(left) == {"training_step.late"}  # not logged yet: kept for later
    epoch = results.metrics(on_step=False)["log"]
    assert float(epoch["a"]) == pytest.approx((4 * 1 + 2 * 3 + 2 * 7) / 8)
    assert float(epoch["s"]) == 6.0 and float(epoch["hi"]) == 3.0


def _ddp_worker(rank: int, world: int, port: int, root: str) -> None:
    """One of two gloo processes (Lightning's DDP on the CPU, started here rather than by Lightning's launcher):
    the straight run and the run killed after step 7 and resumed (``last.ckpt`` every 3 steps)."""
    import os
    from pathlib import Path

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), NODE_RANK="0")
    torch.set_num_threads(1)
    tmp_path = Path(root)

    def setup():
        module, dm, settings = _setup(tmp_path, 14, 3)
        # 4 rows a process (2 classes x 2), 8 a step: the toy data's 6 classes hold no 16-row batch
        dm.batch_sampler_factory = lambda labels, r, w: ToySampler(labels, batch_size=4, rank=r, world_size=w)
        settings.devices, settings.strategy, settings.log_every_n_steps = world, "ddp", 1
        return module, dm, settings

    module, dm, settings = setup()
    build_trainer(settings, dm, tmp_path / "straight").fit(module, datamodule=dm)
    run = tmp_path / "crashed"
    module, dm, settings = setup()
    with pytest.raises(Crash):
        build_trainer(settings, dm, run, callbacks=[CrashAt(7).callback]).fit(module, datamodule=dm)
    module, dm, settings = setup()
    build_trainer(settings, dm, run).fit(module, datamodule=dm, ckpt_path=str(run / "last.ckpt"))
    assert module.global_step == 14


@pytest.mark.slow  # 6 runs of Lightning's DDP (about a minute)
def test_two_processes_resumed_mid_epoch_log_the_uninterrupted_epoch_means(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, port, str(tmp_path)), nprocs=2, join=True)
    # the two processes compute the same loss (on the gathered batch), and still: train/loss (sync_dist) restored
    # without the other process's sums, or into both processes, and the terms restored with both processes' sums,
    # each weigh the steps before the kill half or twice as much as those after it
    _assert_same_means(tmp_path / "straight", tmp_path / "crashed")
