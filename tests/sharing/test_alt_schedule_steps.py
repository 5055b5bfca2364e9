"""The alternating methods (`sharing_alternating`, `mic`: 1 or 2 optimizer steps per iteration) against what the
engine documents for every run: a cosine schedule under `trainer.max_steps` ends at `min_lr`; one step axis for the
per-step values, the epoch means and the validation rounds; `trainer.checkpoint_every_n_steps` saves at every
multiple of N the run reaches or steps over; a shared batch that needs more classes or clusters than exist, and
`method.kwargs` of the wrong type, are keyed config errors (the dry run, exit 2)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from dynametric.cli import main
from dynametric.engine import callbacks as engine_callbacks
from dynametric.engine.checkpoint import load_checkpoint_file
from dynametric.errors import ConfigError
from dynametric.methods.mic.clustering import MICSettings, sample_surrogate_batch
from dynametric.methods.sharing.alternating import AlternatingSettings
from tests.metrics_csv import TINY_SYNTHETIC

ROOT = Path(__file__).resolve().parents[2]
ALT = ROOT / "configs" / "sharing" / "synthetic-alternating.yaml"
MIC = ROOT / "configs" / "mic" / "synthetic.yaml"


def _train(config: Path, out: Path, overrides: list[str]) -> list[dict[str, str]]:
    assert main(["train", "--config", str(config), "--out", str(out), "--no-progress", *TINY_SYNTHETIC,
                 *overrides]) == 0
    with (out / "logs" / "metrics.csv").open(encoding="utf-8") as fh:
        return [{k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def _head_lr(checkpoint: dict) -> float:
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    return float(next(g["lr"] for g in groups if g.get("name") == "head"))


@pytest.mark.parametrize("max_epochs,max_steps", [(10, 12), (4, 12), (3, 100)])
def test_cosine_under_max_steps_reaches_min_lr_at_the_last_step_of_an_alternating_run(
        tmp_path: Path, max_epochs: int, max_steps: int) -> None:
    """p_aux = 1: every iteration takes 2 optimizer steps, 2 iterations per epoch. The run ends after 12 optimizer
    steps (6 iterations), by max_steps (10 or 4 epochs) or by max_epochs (3 epochs, max_steps 100). Cosine's progress
    at iteration k (2k steps done) is the further of k / (2 max_epochs) and 2k / max_steps, and the rate is min_lr
    after the last step either way (before: the schedule covered 6 of 12 steps, 0.5 x lr at the end, with max_steps
    12; with 4 epochs, its 8 iterations were taken as optimizer steps: min_lr from step 8 on)."""
    rows = _train(ALT, tmp_path / "cos", [f"trainer.max_epochs={max_epochs}", f"trainer.max_steps={max_steps}",
                                          "method.kwargs.p_aux=1.0", "optim.scheduler.name=cosine",
                                          "optim.scheduler.interval=step", "optim.scheduler.min_lr=0.00001",
                                          "trainer.val_every=3"])
    lr, min_lr = 0.001, 0.00001
    logged = [(int(r["step"]), float(r["train/lr/head"])) for r in rows if "train/lr/head" in r]
    # each iteration's rate, logged at the optimizer steps done before it
    assert [s for s, _ in logged] == [0, 2, 4, 6, 8, 10]
    for k, (step, value) in enumerate(logged):
        t = max(k / (2 * max_epochs), step / max_steps)
        assert value == pytest.approx(min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * t)), rel=1e-9), step
    assert logged[-1][1] <= 0.1 * lr
    last = load_checkpoint_file(tmp_path / "cos" / "last.ckpt")
    assert last["global_step"] == 12
    assert _head_lr(last) == pytest.approx(min_lr, rel=1e-9)  # after the last step: the schedule's end
    # the iterations at the warm-up's end (none: 0) and the epochs' starts, with the optimizer steps done there
    assert last["dynametric_sharing"]["schedule_marks"] == {0: 0, 2: 4, 4: 8, 6: 12}


def test_schedules_without_max_steps_and_epoch_schedules_count_iterations_and_epochs(tmp_path: Path) -> None:
    """Without max_steps the schedule's length is the iterations (3 epochs x 2): cosine over 6 iterations, whatever
    the optimizer steps; a step schedule under max_steps drops at the epochs, as before."""
    rows = _train(ALT, tmp_path / "cos", ["trainer.max_epochs=3", "method.kwargs.p_aux=1.0",
                                          "optim.scheduler.name=cosine", "optim.scheduler.interval=step"])
    values = [float(r["train/lr/head"]) for r in rows if "train/lr/head" in r]
    assert values == pytest.approx([0.001 * 0.5 * (1 + math.cos(math.pi * i / 6)) for i in range(6)], rel=1e-9)
    assert _head_lr(load_checkpoint_file(tmp_path / "cos" / "last.ckpt")) == pytest.approx(0.0, abs=1e-15)
    rows = _train(ALT, tmp_path / "step", ["trainer.max_epochs=10", "trainer.max_steps=10", "method.kwargs.p_aux=1.0",
                                           "optim.scheduler.name=step", "optim.scheduler.step_size=1",
                                           "optim.scheduler.gamma=0.5", "trainer.val_every=5"])
    values = [float(r["train/lr/head"]) for r in rows if "train/lr/head" in r]
    assert values == pytest.approx([0.001, 0.001, 0.0005, 0.0005, 0.00025], rel=1e-9)


def test_alternating_runs_log_on_one_step_axis(tmp_path: Path) -> None:
    """As on the default path: an epoch's means at its last optimizer step, its validation round at the step after
    (global_step), the per-step values at the optimizer steps done before the iteration (0, 2, 4, ... at p_aux = 1);
    the epoch number with them."""
    rows = _train(ALT, tmp_path / "axis", ["trainer.max_epochs=3", "method.kwargs.p_aux=1.0"])
    epoch_rows = [r for r in rows if "train/loss_epoch" in r]
    val_rows = [r for r in rows if "val/mean/map@r" in r]
    assert [int(r["step"]) for r in val_rows] == [4, 8, 12]
    assert [int(r["step"]) for r in epoch_rows] == [int(r["step"]) - 1 for r in val_rows]
    assert [float(r["epoch"]) for r in epoch_rows] == [0, 1, 2]
    step_rows = [r for r in rows if "train/loss_step" in r]
    assert [int(r["step"]) for r in step_rows] == [0, 2, 4, 6, 8, 10]
    assert [float(r["epoch"]) for r in step_rows] == [0, 0, 1, 1, 2, 2]
    assert not any(k in ("train/step", "step_step", "step_epoch") for r in rows for k in r)


def test_checkpoint_every_n_steps_saves_at_every_multiple_an_alternating_run_steps_over(tmp_path: Path,
                                                                                        monkeypatch) -> None:
    """6 iterations of 2 optimizer steps, N = 3: after the iterations ending at steps 4 (3 passed), 6 and 10 (9
    passed); 12 ends the epoch (its end-of-epoch checkpoint). Before: 6 only."""
    saves: list[tuple[int, bool]] = []
    original = engine_callbacks.ResumeState._save

    def save(self, trainer):  # type: ignore[no-untyped-def]
        saves.append((int(trainer.global_step), bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)))
        return original(self, trainer)

    monkeypatch.setattr(engine_callbacks.ResumeState, "_save", save)
    _train(ALT, tmp_path / "ckpt", ["trainer.max_epochs=1", "data.iterations_per_epoch=6", "method.kwargs.p_aux=1.0",
                                    "trainer.checkpoint_every_n_steps=3"])
    assert [step for step, last in saves if not last] == [4, 6, 10]
    assert [step for step, last in saves if last] == [12]


def _dry_run(config: Path, overrides: list[str], capsys) -> str:  # type: ignore[no-untyped-def]
    capsys.readouterr()
    rc = main(["train", "--dry-run", "--config", str(config), "--out", "unused", *TINY_SYNTHETIC, *overrides])
    err = capsys.readouterr().err
    assert rc == 2, err
    return err


def test_mic_shared_batch_with_more_clusters_than_num_clusters_is_refused_by_the_dry_run(capsys) -> None:
    # data.batch_size 16 / m_shared 4 = 4 clusters per shared batch
    err = _dry_run(MIC, ["method.kwargs.num_clusters=2"], capsys)
    assert "key 'method.kwargs.num_clusters'" in err and "4 distinct clusters" in err and "num_clusters 2" in err
    assert main(["train", "--dry-run", "--config", str(MIC), "--out", "unused", *TINY_SYNTHETIC,
                 "method.kwargs.num_clusters=4"]) == 0


def test_sharing_alternating_shared_batch_with_more_classes_than_the_data_is_refused_by_the_dry_run(capsys) -> None:
    # 80 / 2 = 40 classes per shared batch; the tiny training set has 18
    err = _dry_run(ALT, ["method.kwargs.shared_batch_size=80", "method.kwargs.m_shared=2"], capsys)
    assert "key 'method.kwargs.shared_batch_size'" in err
    assert "40 classes" in err and "the training set has 18 classes" in err and "cluster" not in err


def test_a_clustering_with_too_few_non_empty_clusters_raises_the_callers_error() -> None:
    labels = torch.tensor([0, 0, 1, 1, 3, 3])  # cluster 2 empty: 3 non-empty
    seen = []

    def too_few(present: int) -> ConfigError:
        seen.append(present)
        return ConfigError("too few", key="method.kwargs.num_clusters")

    with pytest.raises(ConfigError, match="too few") as info:
        sample_surrogate_batch(labels, 4, 2, 0.0, too_few=too_few)
    assert info.value.key == "method.kwargs.num_clusters" and seen == [3]
    idx, lab, _ = sample_surrogate_batch(labels, 3, 2, 0.0, too_few=too_few, generator=torch.Generator())
    assert sorted(set(lab.tolist())) == [0, 1, 3] and seen == [3]


@pytest.mark.parametrize("name,value", [("p_aux", "abc"), ("p_aux", True), ("p_aux", None), ("p_aux", 1.5),
                                        ("label_noise", None), ("label_noise", [0.2]), ("label_noise", False),
                                        ("label_noise", "0.2")])
def test_mic_probabilities_of_the_wrong_type_are_keyed_config_errors(name: str, value: object) -> None:
    with pytest.raises(ConfigError) as info:
        MICSettings.from_kwargs({name: value})
    assert info.value.key == f"method.kwargs.{name}" and "a probability in [0, 1]" in str(info.value)


@pytest.mark.parametrize("value", [True, False, "abc", None])
def test_sharing_alternating_p_aux_refuses_bools_and_non_numbers(value: object) -> None:
    with pytest.raises(ConfigError) as info:
        AlternatingSettings.from_kwargs({"p_aux": value})
    assert info.value.key == "method.kwargs.p_aux"
    assert AlternatingSettings.from_kwargs({"p_aux": 1}).p_aux == 1
    assert MICSettings.from_kwargs({"p_aux": 0, "label_noise": 1}).label_noise == 1


def test_dry_run_names_the_key_of_a_mic_p_aux_that_is_no_number(capsys) -> None:
    err = _dry_run(MIC, ["method.kwargs.p_aux=abc"], capsys)
    assert "key 'method.kwargs.p_aux'" in err and "Traceback" not in err
    err = _dry_run(ALT, ["method.kwargs.p_aux=true"], capsys)
    assert "key 'method.kwargs.p_aux'" in err and "got True" in err


class _Crash(RuntimeError):
    pass


def test_cosine_under_max_steps_resumes_mid_epoch_as_the_straight_run(tmp_path: Path, monkeypatch) -> None:
    """The optimizer steps the schedule recorded at the warm-up's end and the epochs' starts are in the checkpoint:
    killed in epoch 2 and resumed from the mid-epoch last.ckpt, the rates and weights are the straight run's."""
    from dynametric.methods.sharing.alternating import AlternatingSharingModule

    args = ["trainer.max_epochs=20", "trainer.max_steps=11", "method.kwargs.p_aux=0.5", "optim.scheduler.name=cosine",
            "optim.scheduler.interval=step", "optim.scheduler.warmup_epochs=1", "trainer.checkpoint_every_n_steps=1",
            "trainer.val_every=10"]
    straight_rows = _train(ALT, tmp_path / "straight", args)
    straight = load_checkpoint_file(tmp_path / "straight" / "last.ckpt")
    original = AlternatingSharingModule.training_step

    def crashing(module, batch, batch_idx):  # type: ignore[no-untyped-def]
        if module.current_epoch == 2 and batch_idx == 1:
            raise _Crash("killed")
        return original(module, batch, batch_idx)

    monkeypatch.setattr(AlternatingSharingModule, "training_step", crashing)
    run = tmp_path / "crashed"
    with pytest.raises(_Crash):
        main(["train", "--config", str(ALT), "--out", str(run), "--no-progress", *TINY_SYNTHETIC, *args])
    monkeypatch.setattr(AlternatingSharingModule, "training_step", original)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    resumed = load_checkpoint_file(run / "last.ckpt")
    marks = straight["dynametric_sharing"]["schedule_marks"]
    assert resumed["dynametric_sharing"]["schedule_marks"] == marks and straight["global_step"] == 11
    # the warm-up (1 epoch: 2 iterations) ends at iteration 2; the epochs start at 2, 4, ... (epoch 0: warm-up)
    assert sorted(marks)[:2] == [2, 4] and 2 <= marks[2] <= 4
    assert _head_lr(resumed) == _head_lr(straight) == pytest.approx(0.0, abs=1e-15)
    with (run / "logs" / "metrics.csv").open(encoding="utf-8") as fh:
        resumed_lrs = {(r["step"], r["train/lr/head"]) for r in csv.DictReader(fh) if r.get("train/lr/head")}
    assert resumed_lrs == {(r["step"], r["train/lr/head"]) for r in straight_rows if "train/lr/head" in r}
    for k, v in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][k], v, rtol=1e-5, atol=1e-6, msg=k)
