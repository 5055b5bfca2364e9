"""`dynametric train` under bad input: it never writes into a folder holding files it did not write, and the
config values it would otherwise accept silently are one-line errors naming the key."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from dynametric.cli import main
from tests.commands.test_train import TINY
from tests.optional import pml_case


def _cfg(tmp_path: Path) -> Path:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    return cfg


def test_out_into_a_non_empty_folder_that_is_not_a_run_is_refused(tmp_path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my: own config\n")
    (out / "metrics.json").write_text('{"mine": 1}\n')
    assert main(["train", "--config", str(_cfg(tmp_path)), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and str(out) in err and len(err.strip().splitlines()) == 1
    assert (out / "config.yaml").read_text() == "my: own config\n"
    assert (out / "metrics.json").read_text() == '{"mine": 1}\n'
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "metrics.json"]


def test_out_onto_a_regular_file_is_one_line(tmp_path, capsys) -> None:
    out = tmp_path / "afile"
    out.write_text("x")
    assert main(["train", "--config", str(_cfg(tmp_path)), "--out", str(out), "--no-progress"]) == 2
    assert "not a folder" in capsys.readouterr().err and out.read_text() == "x"


def _dry(capsys, *argv: str) -> str:
    assert main(["train", "--dry-run", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    # the error is one line; before it only the dry run's own warnings (a missing data root, on stderr)
    assert "Traceback" not in "\n".join(lines) and all(line.startswith("warning: ") for line in lines[:-1])
    return lines[-1]


@pytest.mark.parametrize("override, expected", [
    ("optim.lr=-0.1", "key 'optim.lr': learning rate must be a finite number >= 0, got -0.1"),
    ("optim.lr=.nan", "key 'optim.lr': learning rate must be a finite number >= 0, got nan"),
    ("optim.lr=.inf", "key 'optim.lr': learning rate must be a finite number >= 0, got inf"),
    ("optim.head.lr=-1", "key 'optim.head.lr': learning rate must be a finite number >= 0, got -1.0"),
    ("optim.weight_decay=-1e-4", "key 'optim.weight_decay': weight decay must be a finite number >= 0"),
    ("optim.backbone.weight_decay=-1", "key 'optim.backbone.weight_decay': weight decay must be"),
    ("optim.grad_clip=-1", "key 'optim.grad_clip': gradient clipping norm must be a positive finite number"),
    ("trainer.monitor=fine/mapr", "key 'trainer.monitor': monitor metric 'mapr'"),
    ("trainer.monitor=fine/nmi", "key 'trainer.monitor': monitor metric 'nmi'"),
    ("eval.memory_budget_bytes=-5", "key 'eval.memory_budget_bytes': expected a positive integer, got -5"),
    ("loss.kwargs.margin=.nan", "key 'loss.kwargs.margin': TripletMarginLoss: expected a finite number for margin, "
                                "got nan (float)"),
    ("loss.kwargs.margin=-.inf", "key 'loss.kwargs.margin': TripletMarginLoss: expected a finite number for margin, "
                                 "got -inf (float)"),
    ("loss.kwargs.margin=1" + "0" * 400,  # beyond the float range (was: an OverflowError traceback)
     "key 'loss.kwargs.margin': TripletMarginLoss: expected a finite number for margin, got 1" + "0" * 76
     + "... (int)"),
])
def test_values_that_were_accepted_silently(capsys, override, expected) -> None:
    assert expected in _dry(capsys, override)


def test_a_non_finite_loss_hyperparameter_stops_the_run_before_it_writes(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "--config", str(_cfg(tmp_path)), "--out", str(out), "--no-progress",
                 "loss.kwargs.margin=.nan"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("key 'loss.kwargs.margin': TripletMarginLoss: expected a finite number for margin, got "
                            "nan (float)")
    assert not out.exists()


def test_token_pooling_on_a_cnn_is_refused_by_the_dry_run(tmp_path, capsys) -> None:
    """The dry run builds the model, so it refuses what the real run refused only at its first forward (after
    creating the run folder)."""
    assert _dry(capsys, "model.pooling=token").endswith(
        "key 'model.pooling': pooling 'token' needs a transformer backbone with a class token (token output "
        "[B, N, C]); backbone 'simple_cnn' has none: use avg, max, avgmax or catavgmax")
    out = tmp_path / "run"
    assert main(["train", "--config", str(_cfg(tmp_path)), "--out", str(out), "--no-progress",
                 "model.pooling=token"]) == 2
    assert "pooling 'token' needs a transformer backbone" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())


def test_monitor_of_a_metric_validation_computes_is_fine(capsys) -> None:
    assert main(["train", "--dry-run", "trainer.monitor=mean/recall@4", "eval.metrics=[recall@K, nmi]",
                 "trainer.max_epochs=1"]) == 0
    assert main(["train", "--dry-run", "trainer.monitor=fine/nmi", "eval.metrics=[map@r, nmi]"]) == 0


def test_monitor_scale_unknown_to_the_data_is_refused_before_training(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "--config", str(_cfg(tmp_path)), "--out", str(out), "--no-progress",
                 "trainer.monitor=fin/map@r"]) == 2
    err = capsys.readouterr().err
    assert "monitor scale 'fin' is not one of the dataset's scales ['fine', 'middle', 'coarse', 'mean']" in err
    assert not (out / "last.ckpt").exists()


@pytest.mark.parametrize("fmt, monitor, names", [
    ("sop", "fine/recall@1", "['product', 'category', 'mean']"),
    ("inshop", "fine/map@r", "['item', 'mean']"),
])
def test_a_dry_run_without_data_checks_the_monitor_against_the_formats_scale_names(tmp_path, capsys, fmt, monitor,
                                                                                    names) -> None:
    # without the data the dry run used placeholder scales (fine, middle, coarse) and let 'fine/...' through
    err = _dry(capsys, f"data.format={fmt}", f"data.root={tmp_path / 'absent'}", f"trainer.monitor={monitor}")
    assert f"<command line> key 'trainer.monitor': monitor scale '{monitor.split('/')[0]}' is not one of the " \
           f"dataset's scales {names}" in err
    # finest/coarsest resolve to the format's names; an option that adds a scale is honoured
    for argv in (["trainer.monitor=finest/map@r"], ["trainer.monitor=coarsest/map@r"],
                 ["trainer.monitor=category/map@r", "data.format=inshop", "data.options.with_category=true"]):
        assert main(["train", "--dry-run", f"data.format={fmt}", f"data.root={tmp_path / 'absent'}", *argv]) == 0
    out = capsys.readouterr().out
    assert "data: not read; scales ['item', 'category'] (the format's own)" in out


@pytest.mark.parametrize("data", [bytes(range(256)) * 2, b"0000-00-00", b"[" * 5000, b"a: !!python/object:os.system x"])
def test_config_file_of_random_bytes(tmp_path, capsys, data) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(data)
    assert str(cfg) in _dry(capsys, "--config", str(cfg))


def test_resume_from_a_checkpoint_of_random_bytes(tmp_path, capsys) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(TINY)
    (run / "metrics.json").write_text('{"untrained": {}, "validation": [], "test": {}}')
    (run / "last.ckpt").write_bytes(b"\x00" + os.urandom(4095))  # not a pickle/zip start by chance
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and f"{run / 'last.ckpt'}: not a checkpoint" in err.splitlines()[-1]


def test_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    out = tmp_path / "run"
    assert main(["train", "--config", str(_cfg(tmp_path)), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "No space left on device" in err.splitlines()[-1]
    assert not list(out.rglob("*.tmp"))


def test_other_ddp_ranks_join_the_folder_rank_zero_started(tmp_path, monkeypatch) -> None:
    from dynametric.pipeline.run_folder import _launched_worker

    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not _launched_worker()  # a plain run (or rank 0) checks the folder
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert not _launched_worker()
    monkeypatch.setenv("LOCAL_RANK", "1")  # Lightning's launcher starts rank 1 after rank 0 wrote config.yaml
    assert _launched_worker()


# ----------------------------------------------------------------------------- trainer settings on this machine


@pytest.fixture
def no_gpu(monkeypatch):
    """This machine as one without a CUDA GPU, whatever the test runs on."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("override, expected", [
    ("trainer.accelerator=banana", "<command line> key 'trainer.accelerator': unknown accelerator 'banana'; expected "
                                   "one of auto, gpu, cpu, cuda, mps, tpu"),
    ("trainer.strategy=banana", "<command line> key 'trainer.strategy': unknown strategy 'banana'; expected one of "
                                "auto, ddp, ddp_spawn"),
    ("trainer.strategy=dp", "key 'trainer.strategy': unknown strategy 'dp'; expected one of auto, ddp"),
    ("trainer.accelerator=cuda", "key 'trainer.accelerator': accelerator 'cuda' asked for, but no CUDA GPU is "
                                 "available here"),
    ("trainer.accelerator=gpu", "key 'trainer.accelerator': accelerator 'gpu' asked for, but no CUDA GPU is "
                                "available here"),
    ("trainer.precision=16-mixed", "key 'trainer.precision': '16-mixed' trains in float16, which needs a CUDA GPU"),
    ("trainer.precision=16-true", "key 'trainer.precision': '16-true' trains in float16, which needs a CUDA GPU"),
])
def test_trainer_settings_this_machine_cannot_run_are_one_line_in_a_dry_run(capsys, no_gpu, override,
                                                                             expected) -> None:
    assert expected in _dry(capsys, override)


def test_a_strategy_lightning_refuses_here_names_lightnings_reason(capsys) -> None:
    err = _dry(capsys, "trainer.strategy=fsdp", "trainer.accelerator=cpu")  # a name Lightning knows, not on a CPU
    assert err.startswith("dynametric train: error: key 'trainer': Lightning ")
    assert "accelerator='cpu', strategy='fsdp'" in err and "requires a GPU accelerator" in err


def test_names_in_any_case_and_bf16_on_the_cpu_are_fine(capsys, no_gpu) -> None:
    assert main(["train", "--dry-run", "trainer.accelerator=CPU", "trainer.strategy=Auto",
                 "trainer.precision=bf16-mixed", "data.workers=AUTO"]) == 0
    out = capsys.readouterr().out
    assert "accelerator: cpu" in out and "workers: auto" in out
    assert "trainer: accelerator cpu (trains on cpu here), strategy auto, devices 1, precision bf16-mixed" in out


@pytest.mark.parametrize("overrides", [["trainer.accelerator=cuda"], ["trainer.precision=16-mixed"],
                                       ["trainer.strategy=fsdp", "trainer.accelerator=cpu"]])
def test_a_trainer_this_machine_cannot_run_stops_before_data_and_files(tmp_path, capsys, no_gpu, overrides) -> None:
    out = tmp_path / "run"
    assert main(["train", "--config", str(_cfg(tmp_path)), "--out", str(out), "--no-progress", *overrides]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "key 'trainer" in captured.err
    assert captured.out == ""  # no untrained evaluation, no "run folder" line
    assert not out.exists()


# ------------------------------------------------------------------- a run that stopped before its first checkpoint


def _interrupted_run(tmp_path: Path, monkeypatch) -> Path:
    """A run stopped (Ctrl-C) after its untrained evaluation, before its first checkpoint."""
    import lightning as L

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(L.Trainer, "fit", interrupt)
        assert main(["train", "--config", str(_cfg(tmp_path)), "--out", str(out), "--no-progress",
                     "run.report=false"]) == 130  # Ctrl-C: `interrupted`, no traceback
    assert not (out / "last.ckpt").exists() and (out / "config.yaml").is_file() and (out / "metrics.json").is_file()
    return out


def test_a_run_stopped_before_its_first_checkpoint_can_be_started_again(tmp_path, capsys, monkeypatch) -> None:
    out = _interrupted_run(tmp_path, monkeypatch)
    capsys.readouterr()
    # --resume has nothing to resume and says how to start again
    assert main(["train", "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no last.ckpt to resume from (the run stopped before its first checkpoint; start it again with " \
           f"dynametric train --config {out / 'config.yaml'} --out {out})" in err
    # the same --out starts the run again (with a changed setting), replacing the earlier start's files
    assert main(["train", "--config", str(out / "config.yaml"), "--out", str(out), "--no-progress",
                 "trainer.max_steps=2", "run.report=false"]) == 0
    text = capsys.readouterr().err  # the note on stderr
    assert f"run folder {out}: replacing the files of an earlier start that stopped before its first checkpoint " \
           "(config.yaml, " in text
    assert (out / "last.ckpt").is_file() and (out / "run_info.json").is_file()
    from dynametric.config import load_config

    assert load_config(out / "config.yaml").trainer.max_steps == 2
    assert (out / "config.yaml").read_text().startswith(
        f"# written by dynametric train for the run folder {out.resolve()} (process {os.getpid()} on host ")


def test_a_run_stopped_before_its_first_checkpoint_starts_again_beside_its_loggers_output(tmp_path, capsys,
                                                                                         monkeypatch) -> None:
    """TensorBoard, W&B and MLflow write into the run folder from their start on: the folder of such a run stopped
    before its first checkpoint was refused as not a run's (`not empty and holds no dynametric run`), so the command
    the interruption printed failed. Their outputs are kept, the new start logs beside them."""
    out = _interrupted_run(tmp_path, monkeypatch)
    (out / "tensorboard").mkdir()
    (out / "tensorboard" / "events.out.tfevents.1.host").write_bytes(b"earlier")
    (out / "mlruns.db").write_bytes(b"earlier")
    capsys.readouterr()
    assert main(["train", "--config", str(out / "config.yaml"), "--out", str(out), "--no-progress",
                 "trainer.max_steps=2", "run.report=false"]) == 0
    assert (out / "last.ckpt").is_file()
    assert (out / "tensorboard" / "events.out.tfevents.1.host").read_bytes() == b"earlier"
    assert (out / "mlruns.db").read_bytes() == b"earlier"


def test_files_beside_an_unstarted_run_or_a_copied_config_are_never_replaced(tmp_path, capsys, monkeypatch) -> None:
    out = _interrupted_run(tmp_path, monkeypatch)
    (out / "notes.txt").write_text("mine\n")  # the user's file beside the run's
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert main(["train", "--config", str(_cfg(tmp_path)), "--out", str(out), "--no-progress"]) == 2
    assert "not empty and holds no dynametric run" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # the run's config.yaml copied into another folder: written for another folder, so not recognised there
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_bytes(before["config.yaml"])
    assert main(["train", "--config", str(_cfg(tmp_path)), "--out", str(other), "--no-progress"]) == 2
    assert "not empty and holds no dynametric run" in capsys.readouterr().err
    assert (other / "config.yaml").read_bytes() == before["config.yaml"]


def test_a_run_whose_process_still_runs_is_not_replaced(tmp_path, capsys) -> None:
    import socket

    from dynametric.config import load_config, save_config

    out = tmp_path / "run"
    header = (f"written by dynametric train for the run folder {out.resolve()} (process {os.getppid()} on host "
              f"{socket.gethostname()})")  # the process that started pytest: running, and not this one
    save_config(load_config(_cfg(tmp_path)), out / "config.yaml", header=header)
    before = (out / "config.yaml").read_bytes()
    assert main(["train", "--config", str(_cfg(tmp_path)), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"key '--out': run folder {out} holds a run started by process {os.getppid()}, which is still running" in err
    assert (out / "config.yaml").read_bytes() == before and sorted(p.name for p in out.iterdir()) == ["config.yaml"]


# ------------------------------------------------------------------------ seeds, the range every consumer takes


@pytest.mark.parametrize("override", ["trainer.seed=99999999999999999999", "trainer.seed=-1",
                                      "trainer.seed=4294967296", "data.val_seed=-1", "data.val_seed=4294967296"])
def test_a_seed_out_of_range_is_refused_when_the_config_loads(capsys, override) -> None:
    key, value = override.split("=")
    assert _dry(capsys, override) == (
        f"dynametric train: error: <command line> key '{key}': expected a seed, an integer in [0, 4294967295] "
        f"(2**32 - 1, what numpy, torch and Lightning all accept), got {value}")


def test_a_seed_out_of_range_in_a_file_names_its_line_and_writes_nothing(tmp_path, capsys) -> None:
    cfg = tmp_path / "seed.yaml"
    cfg.write_text(TINY.replace("trainer: {", "trainer: {seed: -1, "))
    line = TINY.splitlines().index(next(x for x in TINY.splitlines() if x.startswith("trainer:"))) + 1
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 2
    assert f"{cfg}:{line} key 'trainer.seed': expected a seed" in capsys.readouterr().err
    assert not out.exists()


def test_the_synthetic_data_seed_option_is_checked_and_keyed_to_data_options(capsys) -> None:
    err = _dry(capsys, "data.options.seed=-1")
    assert "<command line> key 'data.options.seed': expected a seed, an integer in [0, 4294967295]" in err
    err = _dry(capsys, "data.options.images_per_class=0")
    assert err.endswith("<command line> key 'data.options.images_per_class': images_per_class must be an integer >= "
                        "1, got 0")
    # an option of the wrong type, or a value inside one: a one-line error too (was a TypeError traceback)
    assert _dry(capsys, "data.options.image_size=abc") == (
        "dynametric train: error: <command line> key 'data.options.image_size': image_size must be an integer >= 8, "
        "got 'abc'")
    assert _dry(capsys, "data.options.fine_per_shape={train: 2.5}") == (
        "dynametric train: error: <command line> key 'data.options.fine_per_shape.train': fine_per_shape.train must "
        "be an integer >= 0, got 2.5")


def test_an_image_size_too_large_for_memory_is_keyed_data_image_size(tmp_path, capsys) -> None:
    """`data.image_size=10**20` was `key 'model.backbone': backbone 'simple_cnn' cannot run on a ... image
    (TypeError: ... Overflow when unpacking long long)`: the size is the key to change, and memory the reason."""
    huge = 2**62  # (past 2**63 - 1 the config does not load: key 'data.image_size': expected an integer from ...)
    assert _dry(capsys, f"data.image_size={huge}") == (
        f"dynametric train: error: <command line> key 'data.image_size': image size {huge} is too large: one "
        f"{huge}x{huge} image with 3 channel(s) is more than 2**63 - 1 bytes as float32 (torch's limit); expected a "
        "size whose images fit in memory")
    assert _dry(capsys, "data.image_size=100000000") == (
        "dynametric train: error: <command line> key 'data.image_size': image size 100000000 is too large: out of "
        "memory running backbone 'simple_cnn' on one 100000000x100000000 image with 3 channel(s) (its float32 input "
        "alone is 107 PiB); expected a size whose images fit in memory")
    cfg = tmp_path / "big.yaml"  # set in a file: its line
    cfg.write_text("data:\n  image_size: 100000000\n")
    assert _dry(capsys, "--config", str(cfg)).startswith(
        f"dynametric train: error: {cfg}:2 key 'data.image_size': image size 100000000 is too large: out of memory")


def test_a_missing_dataset_root_names_data_root_where_it_was_set(tmp_path, capsys, monkeypatch) -> None:
    """Was `<unset>: dataset root not found for format 'csv'` (a file named `<unset>`) and `key 'root': ...`. What
    the root should hold is the reader's own description, as `evaluate --checkpoint` says it (`train` said `expected
    the cub200 dataset`, the format's name, where `evaluate` named CUB_200_2011's images.txt)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "data.format=csv"]) == 2
    assert capsys.readouterr().err.strip() == (
        "dynametric train: error: key 'data.root': a dataset root directory is required (expected a CSV file with "
        "columns path, split, <scales...> or a folder holding it)")
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  format: cub200\n  root: ~/missing\n")
    assert main(["train", "--config", str(cfg), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dynametric train: error: {cfg}:3 key 'data.root': dataset root not found: {tmp_path / 'missing'} "
        "(expected CUB_200_2011 with images.txt)")
    assert main(["train", "--out", str(out), "data.format=oml", f"data.root={tmp_path / 'missing'}"]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "(expected an OML dataset CSV (label, path, split, is_query, is_gallery) or its folder)")
    assert not out.exists()
    (tmp_path / "data").mkdir()  # a root written with ~ is read (was refused as not found before the readers ran)
    cfg.write_text("data:\n  format: csv\n  root: ~/data\n")
    assert main(["train", "--config", str(cfg), "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dynametric train: error: {tmp_path / 'data' / 'labels.csv'}: file not found (expected a CSV with a header "
        "'path,split,<finest scale>,...,<coarsest scale>')")
    assert main(["train", "--dry-run", "data.format=csv"]) == 0
    assert "warning: data.root is not set (format 'csv'): a real run will fail" in capsys.readouterr().err


def test_the_largest_seed_trains(tmp_path, capsys) -> None:
    """2**32 - 1 goes through every consumer: Lightning's seed_everything, torch, the samplers, the class split."""
    out = tmp_path / "run"
    assert main(["train", "--config", str(_cfg(tmp_path)), "--out", str(out), "--no-progress", "trainer.max_steps=2",
                 "trainer.seed=4294967295", "data.val_split=null", "data.val_seed=4294967295",
                 "run.report=false"]) == 0
    assert (out / "last.ckpt").is_file()


# ------------------------------------------------------------- the test protocol's splits, before anything is written

DYML_CFG = """
data: {{format: {fmt}, root: {root}, transform: small, image_size: 16, sampler: three_scale, m: 2, batch_size: 12,
        val_split: null, val_fraction: 0.25, eval_batch_size: 64}}
model: {{backbone: simple_cnn, embedding_dim: 8, pooling: max, backbone_kwargs: {{width: 4, depth: 2}}}}
loss: {{name: CSLLoss}}
eval: {{metrics: [recall@K, map, asi], k_values: [1, 10, 20]}}
trainer: {{max_epochs: 1, progress_bar: false, monitor: mean/map}}
method: {{name: dyml, kwargs: {{variant: vehicle, query_in_gallery: detect}}}}
"""


@pytest.fixture(scope="module")
def dyml_vehicle(tmp_path_factory) -> Path:
    from tests.dyml.helpers import write_release

    root = write_release(tmp_path_factory.mktemp("dyml") / "dyml_vehicle", "vehicle")
    cfg = root.parent / "vehicle.yaml"
    cfg.write_text(DYML_CFG.format(fmt="dyml-vehicle", root=root))
    return cfg


def test_a_dyml_variant_of_another_release_is_refused_by_the_dry_run(dyml_vehicle, capsys) -> None:
    assert main(["train", "--config", str(dyml_vehicle), "--dry-run"]) == 0  # the variant that fits
    capsys.readouterr()
    assert _dry(capsys, "--config", str(dyml_vehicle), "method.kwargs.variant=product").endswith(
        "<command line> key 'method.kwargs.variant': variant 'product' is the test protocol of dyml-product data, "
        "but data.format is 'dyml-vehicle'; use variant: vehicle")


def test_the_all_in_one_variant_on_per_scale_data_is_refused_before_anything_is_written(dyml_vehicle, tmp_path,
                                                                                       capsys) -> None:
    expected = ("<command line> key 'method.kwargs.variant': the DyML 'all_in_one' protocol tests on "
                "data.test_split 'test', but the dyml-vehicle data has the splits train, query_fine, gallery_fine, "
                "query_middle, gallery_middle, query_coarse, gallery_coarse; with dyml-vehicle data use "
                "method.kwargs.variant: vehicle")
    assert _dry(capsys, "--config", str(dyml_vehicle), "method.kwargs.variant=all_in_one").endswith(expected)
    out = tmp_path / "run"
    assert main(["train", "--config", str(dyml_vehicle), "--out", str(out), "--no-progress",
                 "method.kwargs.variant=all_in_one"]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().endswith(expected) and captured.out == ""
    assert not out.exists()


def test_a_per_scale_variant_on_data_without_its_splits_names_the_variant_that_fits(capsys) -> None:
    err = _dry(capsys, "method.name=dyml", "method.kwargs={variant: vehicle, query_in_gallery: detect}")
    assert err.endswith("<command line> key 'method.kwargs.variant': the DyML 'vehicle' protocol tests on the "
                        "split(s) query_fine, gallery_fine, query_middle, gallery_middle, query_coarse, "
                        "gallery_coarse, but the synthetic data has the splits train, val, test; with synthetic data "
                        "use method.kwargs.variant: all_in_one")


@pytest.mark.parametrize("overrides, expected", [
    (["data.test_split=tset"], "<command line> key 'data.test_split': the test split 'tset' is not in the data: the "
                               "synthetic data has the splits train, val, test; did you mean 'test'?"),
    (["method.name=dyml", "method.kwargs={variant: all_in_one, query_in_gallery: detect}", "data.test_split=tset"],
     "<command line> key 'data.test_split': the DyML 'all_in_one' protocol tests on data.test_split 'tset', but the "
     "synthetic data has the splits train, val, test; did you mean 'test'?"),
    (["eval.protocol=query_gallery", "eval.query_split=val", "eval.gallery_split=galery"],
     "<command line> key 'eval.gallery_split': the gallery split 'galery' of eval.protocol query_gallery is not in "
     "the data: the synthetic data has the splits train, val, test"),
])
def test_a_test_split_the_data_lacks_is_refused_by_the_dry_run(capsys, overrides, expected) -> None:
    assert _dry(capsys, *overrides).endswith(expected)


@pytest.mark.parametrize("override, expected", [
    ("data.val_split=none", "<command line> key 'data.val_split': split must be one of ['train', 'val', 'test'], got "
                            "'none'; null (not the word none) carves the validation classes from the training split"),
    ("data.val_split=Val", "<command line> key 'data.val_split': split must be one of ['train', 'val', 'test'], got "
                           "'Val'"),
    ("data.train_split=none", "<command line> key 'data.train_split': split must be one of ['train', 'val', 'test'], "
                              "got 'none'"),
])
def test_a_train_or_validation_split_the_data_lacks_names_its_key(capsys, override, expected) -> None:
    """The data layer calls the split it was asked for ``split``; the error names the key the user wrote (it said
    ``key 'split'``)."""
    assert _dry(capsys, override).endswith(expected)


def test_queries_in_the_gallery_without_query_in_gallery_are_refused_before_anything_is_written(tmp_path,
                                                                                               capsys) -> None:
    """OML's usual layout (validation rows both query and gallery) with eval.query_in_gallery left false: every
    query would find itself; the dry run and a real run refuse it before training, no run folder."""
    from tests.data.test_oml import write_oml

    rows = [f"{c},img/{c}_{i}.png,train,," for c in range(6) for i in range(4)]
    rows += [f"{c},img/{c}_{i}.png,validation,True,True" for c in range(6, 8) for i in range(2)]
    write_oml(tmp_path / "oml", rows, header="label,path,split,is_query,is_gallery")
    argv = ["data.format=oml", f"data.root={tmp_path / 'oml'}", "data.image_size=8", "data.batch_size=8", "data.m=2",
            "model.embedding_dim=8", "model.backbone_kwargs={width: 4, depth: 2}", "eval.protocol=query_gallery"]
    img = tmp_path / "oml" / "img"
    expected = (f"error: key 'eval.query_in_gallery': is false, but 4 of the 4 queries of split 'query' are also in "
                f"the gallery split 'gallery' (e.g. '{img}/6_0.png', '{img}/6_1.png', '{img}/7_0.png', ...), so each "
                "would retrieve itself; expected true (each query's own item excluded, as open-metric-learning does)")
    assert _dry(capsys, *argv).endswith(expected)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--no-progress", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip().endswith(expected) and not out.exists()
    assert main(["train", "--dry-run", *argv, "eval.query_in_gallery=true"]) == 0


# ----------------------------------------------------------------- a loss sized for other embeddings than the model's


def test_pddm_sized_for_another_width_is_refused_by_the_dry_run(capsys) -> None:
    pddm = Path(__file__).resolve().parents[2] / "configs" / "pddm" / "synthetic.yaml"
    assert _dry(capsys, "--config", str(pddm), "loss.kwargs.embedding_dim=64").endswith(
        "<command line> key 'loss.kwargs.embedding_dim': PDDMLoss is sized for 64-d embeddings, but the model's "
        "embeddings are 128-d (model.embedding_dim); set loss.kwargs.embedding_dim=128 or leave it out (the engine "
        "fills in the width of the term's head)")


def test_a_proxy_loss_sized_for_another_head_width_names_the_head(tmp_path, capsys) -> None:
    cfg = tmp_path / "proxy.yaml"
    cfg.write_text(TINY.replace("loss: {name: TripletMarginLoss}",
                                "loss: {name: ProxyAnchorLoss, head: b, kwargs: {embedding_size: 16}}")
                   .replace("embedding_dim: 16,", "num_heads: 2, head_names: [a, b], head_dims: [16, 8],"))
    line = next(i for i, x in enumerate(TINY.splitlines(), 1) if x.startswith("loss:"))
    assert _dry(capsys, "--config", str(cfg)).endswith(
        f"{cfg}:{line} key 'loss.kwargs.embedding_size': ProxyAnchorLoss is sized for 16-d embeddings, but the "
        "model's embeddings are 8-d (head 'b', model.head_dims); set loss.kwargs.embedding_size=8 or leave it out "
        "(the engine fills in the width of the term's head)")
    assert main(["train", "--config", str(cfg), "--dry-run", "loss.kwargs.embedding_size=8"]) == 0


# ------------------------------------------------------------------ errors found after loading name the file and line


def test_loss_and_miner_kwargs_errors_name_the_file_and_line(tmp_path, capsys) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY)
    cfg = tmp_path / "kw.yaml"
    cfg.write_text("extends: tiny.yaml\nloss:\n  name: TripletMarginLoss\n  kwargs: {margn: 0.1}\n"
                   "miner:\n  name: TripletMarginMiner\n  kwargs:\n    margn: 0.2\n")
    assert _dry(capsys, "--config", str(cfg)).endswith(
        f"{cfg}:4 key 'loss.kwargs.margn': TripletMarginLoss has no argument 'margn'; did you mean 'margin'?")
    assert _dry(capsys, "--config", str(cfg), "loss.kwargs={}").endswith(
        f"{cfg}:8 key 'miner.kwargs.margn': TripletMarginMiner has no argument 'margn'; did you mean 'margin'?")
    # a mapping replaced on the command line: its keys are no longer where the file set them
    assert _dry(capsys, "--config", str(cfg), "loss.kwargs={margn: 1}").endswith(
        "<command line> key 'loss.kwargs.margn': TripletMarginLoss has no argument 'margn'; did you mean 'margin'?")


def test_a_missing_protocol_config_says_the_configs_are_files_of_the_checkout(tmp_path, capsys, monkeypatch) -> None:
    """A newcomer running a README command outside the checkout: `configs/roth2020/cub.yaml` is not installed with
    the package, and the error says so (it said only "config file not found")."""
    monkeypatch.chdir(tmp_path)
    err = _dry(capsys, "--config", "configs/roth2020/cub.yaml")
    assert err.endswith(f"{tmp_path / 'configs' / 'roth2020' / 'cub.yaml'}: config file not found; the protocol "
                        "configs under configs/ are files of the repository checkout, not installed with the package: "
                        "run from the checkout's root folder or give the file's full path")
    assert _dry(capsys, "--config", "mine.yaml").endswith(f"{tmp_path / 'mine.yaml'}: config file not found")


def test_extends_of_a_missing_file_or_a_folder_names_the_line_that_refers_to_it(tmp_path, capsys) -> None:
    cfg = tmp_path / "child.yaml"
    cfg.write_text("trainer: {max_epochs: 1}\nextends: nope.yaml\n")
    assert _dry(capsys, "--config", str(cfg)).endswith(
        f"{cfg}:2 key 'extends': config file not found: {tmp_path / 'nope.yaml'}")
    (tmp_path / "sub").mkdir()
    cfg.write_text("extends: [sub]\n")
    assert _dry(capsys, "--config", str(cfg)).endswith(
        f"{cfg}:1 key 'extends': {tmp_path / 'sub'} is a folder, not a YAML config file")


def test_config_that_is_a_folder_says_so(tmp_path, capsys) -> None:
    assert _dry(capsys, "--config", str(tmp_path)) == \
        f"dynametric train: error: {tmp_path}: is a folder, not a YAML config file"


# ------------------------------------------------------------------------------------- devices, the run folder, notes


def test_more_cpu_processes_than_cores_are_allowed_and_said(capsys, monkeypatch) -> None:
    """On the CPU trainer.devices counts processes (Lightning starts that many DDP processes whatever the cores)."""
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert main(["train", "--dry-run", "trainer.accelerator=cpu", "trainer.devices=3"]) == 0
    assert ("trainer: accelerator cpu (trains on cpu here), strategy auto, devices 3, precision 32, compile false, "
            "channels_last false (model.channels_last null: resolved here); 3 training "
            "processes (DDPStrategy), more than the 2 CPU cores here: they share them") in capsys.readouterr().out


def test_a_run_folder_holding_a_run_names_what_chose_it(tmp_path, capsys) -> None:
    out = tmp_path / "r1"
    out.mkdir()
    (out / "last.ckpt").write_bytes(b"")
    assert main(["train", "--config", str(_cfg(tmp_path)), "--out", str(out), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dynametric train: error: key '--out': run folder {out} already holds a run; use --resume {out} or "
        "another --out")
    cfg = tmp_path / "named.yaml"
    cfg.write_text(TINY.replace("run: {report: true}", f"run: {{output_dir: {tmp_path}, name: r1}}"))
    line = next(i for i, x in enumerate(TINY.splitlines(), 1) if x.startswith("run:"))
    assert main(["train", "--config", str(cfg), "--no-progress"]) == 2
    assert f"{cfg}:{line} key 'run.name': run folder {out} already holds a run" in capsys.readouterr().err


def test_a_dry_run_without_its_data_prints_each_warning_once_as_its_own_line(tmp_path, capsys) -> None:
    missing = tmp_path / "missing"
    assert main(["train", "--dry-run", "data.format=cub200", f"data.root={missing}", "loss.name=ProxyAnchorLoss",
                 "loss.multiscale=true"]) == 0
    captured = capsys.readouterr()
    # the warnings on stderr (the report on stdout) and no raw `file.py:60: UserWarning:` lines among them
    assert "# resolved configuration" in captured.out.splitlines() and "warning:" not in captured.out
    assert captured.err.splitlines()[0].startswith("note: loss.kwargs {margin: 0.1} from ")  # the layering's note
    warnings_ = captured.err.splitlines()[1:]
    assert warnings_ == [
        f"warning: dataset root '{missing}' not found (format 'cub200'): a real run will fail; continuing the dry run "
        "without data (class counts are placeholders)",
        "warning: loss: num_classes unknown without the dataset; a placeholder is used (dry run only)"]


# ------------------------------------------------------------------ weights and loss arguments outside their range

_SHARING = Path(__file__).resolve().parents[2] / "configs" / "sharing" / "synthetic.yaml"


@pytest.mark.parametrize("argv, expected", [
    (["--config", str(_SHARING), "extra_losses[0].weight=-0.3"],
     "<command line> key 'extra_losses[0].weight': expected a non-negative weight, got -0.3"),
    (["--config", str(_SHARING), "extra_losses[1].weight=-100"],  # rho: the GRL makes the term adversarial
     "<command line> key 'extra_losses[1].weight': expected a non-negative weight, got -100.0"),
    (["loss.weight=-1"], "<command line> key 'loss.weight': expected a non-negative weight, got -1.0"),
    (["loss.name=CSLLoss", "loss.multiscale=false", "loss.kwargs={gamma: -5}"],
     "<command line> key 'loss.kwargs.gamma': CSLLoss: gamma (the cosine scale) must be a number > 0, got -5"),
])
def test_negative_weights_and_csl_gamma_are_refused_by_the_dry_run(capsys, argv, expected) -> None:
    assert _dry(capsys, *argv).endswith(expected)


def test_no_shipped_config_uses_a_negative_weight() -> None:
    configs = Path(__file__).resolve().parents[2] / "configs"
    assert not [p for p in configs.rglob("*.yaml") if "weight: -" in p.read_text()]


# ----------------------------------------- a loss keyword of the wrong type names the key that set it, not its file


def test_a_loss_keyword_of_the_wrong_type_on_the_command_line_names_that_key(dyml_vehicle, capsys) -> None:
    assert _dry(capsys, "--config", str(dyml_vehicle), "loss.kwargs.margins=0.3").endswith(
        "<command line> key 'loss.kwargs.margins': CSLLoss: expected a list of numbers for margins, got 0.3 (float)")
    pddm = Path(__file__).resolve().parents[2] / "configs" / "pddm" / "synthetic.yaml"
    assert _dry(capsys, "--config", str(pddm), "loss.kwargs.beta=abc").endswith(
        "<command line> key 'loss.kwargs.beta': PDDMLoss: expected a number for beta, got 'abc' (str)")


def test_a_loss_keyword_of_the_wrong_type_in_a_file_names_its_line(tmp_path, capsys) -> None:
    (tmp_path / "tiny.yaml").write_text(TINY)
    cfg = tmp_path / "kw.yaml"
    cfg.write_text("extends: tiny.yaml\nloss:\n  name: TripletMarginLoss\n  kwargs:\n    swap: false\n"
                   "    margin: abc\n")
    assert _dry(capsys, "--config", str(cfg)).endswith(
        f"{cfg}:6 key 'loss.kwargs.margin': TripletMarginLoss: expected a number for margin, got 'abc' (str)")


def test_multiscale_on_csl_names_loss_multiscale(capsys) -> None:
    csl = Path(__file__).resolve().parents[2] / "configs" / "dyml" / "vehicle-csl.yaml"
    assert _dry(capsys, "--config", str(csl), "loss.multiscale=true") == (
        "dynametric train: error: <command line> key 'loss.multiscale': CSLLoss is multi-scale by itself (it reads "
        "every label column); loss.multiscale must be false")


@pytest.mark.parametrize("loss, column", [("ContrastiveLoss", "scale"), pml_case("pml:ContrastiveLoss", "label_scale")])
def test_a_loss_s_own_label_column_under_multiscale_names_its_key_and_line(tmp_path, capsys, loss, column) -> None:
    """It was `key 'base_losses_or_factory': per-scale losses receive one label column; PMLLoss of scale 0 has
    scale=1, expected 0`: an internal argument name, no origin, PMLLoss for pml:ContrastiveLoss."""
    (tmp_path / "tiny.yaml").write_text(TINY)
    cfg = tmp_path / "ms.yaml"
    cfg.write_text(f"extends: tiny.yaml\nloss:\n  name: {loss}\n  multiscale: true\n  kwargs:\n    {column}: 1\n")
    assert _dry(capsys, "--config", str(cfg)).endswith(
        f"{cfg}:6 key 'loss.kwargs.{column}': with loss.multiscale: true each scale's {loss} trains on that scale's "
        f"labels, so it takes no label column of its own: remove loss.kwargs.{column} (got 1), or set "
        "loss.multiscale: false to train on one column")
    assert _dry(capsys, "--config", str(cfg), f"loss.kwargs.{column}=0").endswith(
        f"<command line> key 'loss.kwargs.{column}': with loss.multiscale: true each scale's {loss} trains on that "
        f"scale's labels, so it takes no label column of its own: remove loss.kwargs.{column} (got 0), or set "
        "loss.multiscale: false to train on one column")


def test_repeated_folder_scale_names_stop_the_dry_run_and_the_run_before_it_writes(tmp_path, capsys) -> None:
    """They passed the dry run; the run made its folder, started the untrained evaluation and stopped there with
    `key 'scale_names': need 3 distinct scale names other than 'mean'` (no origin, not the config's key)."""
    from tests.data.conftest import write_folder

    root = write_folder(tmp_path / "tree")
    cfg = tmp_path / "dup.yaml"
    cfg.write_text(f"data:\n  format: folder\n  root: {root}\n  options: {{scale_names: [a, b, a]}}\n"
                   "  batch_size: 4\n  m: 2\n  image_size: 16\nloss: {name: TripletMarginLoss, multiscale: true}\n"
                   "model: {backbone: simple_cnn, embedding_dim: 8, backbone_kwargs: {width: 4, depth: 1}}\n")
    expected = (f"{cfg}:4 key 'data.options.scale_names': scale names must be distinct (one per label column), got "
                "['a', 'b', 'a']: 'a' repeats")
    assert _dry(capsys, "--config", str(cfg)).endswith(expected)
    assert _dry(capsys, "--config", str(cfg), f"data.root={tmp_path / 'missing'}").endswith(expected)  # no data
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().endswith(expected) and not out.exists()


def test_a_keyword_no_class_of_a_loss_taking_kwargs_accepts_lists_its_arguments(capsys) -> None:
    sharing = Path(__file__).resolve().parents[2] / "configs" / "sharing" / "synthetic.yaml"
    arguments = ("num_classes, embedding_size, margin, alpha, distance, scale, label_scale, weight_regularizer, "
                 "weight_reg_weight, weight_init_func, reducer, embedding_regularizer, embedding_reg_weight, "
                 "collect_stats")
    # the file's keywords are MarginLoss's: changing the name alone drops them (a note), so they are given again
    assert _dry(capsys, "--config", str(sharing), "extra_losses[0].name=ProxyAnchorLoss",
                "extra_losses[0].kwargs={margin: 0.2, beta: 1.2}").endswith(
        "<command line> key 'extra_losses[0].kwargs.beta': ProxyAnchorLoss has no argument 'beta'; its arguments: "
        f"{arguments} (remove extra_losses[0].kwargs.beta, or clear them all with extra_losses[0].kwargs={{}})")


# ------------------------------------------------------------------ training, validation and test data stay apart

def _tiny_data(tmp_path: Path, fmt: str) -> Path:
    from tests.data.conftest import write_cub, write_dyml, write_folder, write_inshop

    writers = {"cub200": write_cub, "inshop": write_inshop, "folder": write_folder,
               "dyml-vehicle": lambda root: write_dyml(root, "vehicle")}
    return writers[fmt](tmp_path / fmt)


@pytest.mark.parametrize("fmt, argv, expected", [
    ("cub200", ["data.train_split=test"],
     "<command line> key 'data.train_split': the training split 'test' is also a split the test evaluates "
     "(data.test_split): the test would score images the model trained on"),
    ("folder", ["data.train_split=all", "data.test_split=all"],  # a tree without split folders is one split
     "<command line> key 'data.train_split': the training split 'all' is also a split the test evaluates "
     "(data.test_split)"),
    ("cub200", ["data.test_split=train"],  # the key the user set, with its origin (was data.train_split, no origin)
     "<command line> key 'data.test_split': the training split 'train' is also a split the test evaluates "
     "(data.test_split)"),
    ("inshop", ["eval.protocol=query_gallery", "eval.query_split=train"],
     "<command line> key 'eval.query_split': the training split 'train' is also a split the test evaluates "
     "(eval.query_split)"),
    ("cub200", ["data.val_split=train"],
     "<command line> key 'data.val_split': the validation split 'train' is the training split (data.train_split): "
     "model selection would score images the model trains on; set data.val_split: null"),
    ("cub200", ["data.val_split=test"],
     "<command line> key 'data.val_split': the validation split 'test' is a split the test evaluates "
     "(data.test_split): model selection would peek at the test set"),
    ("inshop", ["eval.protocol=query_gallery", "data.val_split=query"],
     "<command line> key 'data.val_split': the validation split 'query' is a split the test evaluates "
     "(eval.query_split): model selection would peek at the test set"),
    ("inshop", ["eval.protocol=query_gallery", "data.train_split=gallery"],
     "<command line> key 'data.train_split': the training split 'gallery' is also a split the test evaluates "
     "(eval.gallery_split)"),
    ("dyml-vehicle", ["method.name=dyml", "method.kwargs={variant: vehicle, query_in_gallery: disjoint}",
                      "data.val_split=gallery_middle"],
     "<command line> key 'data.val_split': the validation split 'gallery_middle' is a split the test evaluates "
     "(method.kwargs.variant)"),
])
def test_training_or_validating_on_a_test_split_is_refused(tmp_path, capsys, fmt, argv, expected) -> None:
    root = _tiny_data(tmp_path, fmt)
    args = ["--config", str(_cfg(tmp_path)), f"data.format={fmt}", "data.options={}", "data.batch_size=4",
            "data.m=2", "data.transform=small", *argv]
    assert expected in _dry(capsys, *args, f"data.root={root}")
    assert expected in _dry(capsys, *args, f"data.root={tmp_path / 'absent'}")  # the names alone, without data
    out = tmp_path / "run"
    assert main(["train", *args, f"data.root={root}", "--out", str(out), "--no-progress"]) == 2
    assert expected in capsys.readouterr().err and not out.exists()


def test_training_on_the_split_val_split_auto_validates_on_is_refused(tmp_path, capsys) -> None:
    # data.val_split: auto (the default) resolves to the format's 'val' split: training on it validates on it
    expected = ("<command line> key 'data.train_split': the training split 'val' is the split data.val_split: auto "
                "validates on: model selection would score images the model trains on; set data.val_split: null to "
                "carve validation classes out of it, or name another validation split")
    args = ["--config", str(_cfg(tmp_path)), "data.train_split=val"]
    assert _dry(capsys, *args) == f"dynametric train: error: {expected}"
    assert main(["train", "--dry-run", *args, "data.val_split=null"]) == 0  # carved from 'val': allowed
    assert "validation (" in capsys.readouterr().out


def _csv(tmp_path: Path, rows: list[tuple[str, str, str]]) -> Path:
    from tests.data.conftest import write_csv_dataset

    return write_csv_dataset(tmp_path / "csv", [(path, split, fine, fine, "all") for path, split, fine in rows])


CLASSES = [("imgs/a0.png", "train", "a"), ("imgs/a1.png", "train", "a"), ("imgs/b0.png", "train", "b"),
           ("imgs/b1.png", "train", "b"), ("imgs/c0.png", "train", "c"), ("imgs/c1.png", "train", "c")]


@pytest.mark.parametrize("rows, argv, expected", [
    (CLASSES + [("imgs/x0.png", "test", "x"), ("imgs/b1.png", "test", "b"), ("imgs/x1.png", "test", "x")], [],
     "key 'data.test_split': the training split 'train' (data.train_split) and the test split 'test' "
     "(data.test_split) share 1 image file(s), e.g. {root}/imgs/b1.png: training and testing must use different "
     "images"),
    (CLASSES + [("imgs/v0.png", "val", "v"), ("imgs/a0.png", "val", "v"), ("imgs/x0.png", "test", "x")],
     ["data.val_split=val"],
     "<command line> key 'data.val_split': the training split 'train' (data.train_split) and the validation split "
     "'val' (data.val_split) share 1 image file(s), e.g. {root}/imgs/a0.png: training and model selection must use "
     "different images"),
    (CLASSES + [("imgs/v0.png", "val", "v"), ("imgs/x0.png", "val", "v"), ("imgs/x0.png", "test", "x"),
                ("imgs/x1.png", "test", "x")], [],  # data.val_split: auto takes the csv's 'val'
     "key 'data.test_split': the validation split 'val' (data.val_split) and the test split 'test' "
     "(data.test_split) share 1 image file(s), e.g. {root}/imgs/x0.png: model selection and testing must use "
     "different images"),
])
def test_an_image_file_in_training_or_validation_and_test_data_is_refused(tmp_path, capsys, rows, argv,
                                                                          expected) -> None:
    root = _csv(tmp_path, rows)
    args = ["--config", str(_cfg(tmp_path)), "data.format=csv", f"data.root={root}", "data.options={}",
            "data.batch_size=4", "data.m=2", "data.transform=small", *argv]
    assert expected.format(root=root.resolve()) in _dry(capsys, *args)
    out = tmp_path / "run"
    assert main(["train", *args, "--out", str(out), "--no-progress"]) == 2
    assert expected.format(root=root.resolve()) in capsys.readouterr().err and not out.exists()


def test_classes_shared_by_training_and_held_out_data_are_warned_about(tmp_path, capsys) -> None:
    # two images of 'v' in validation: a validation of singletons only is refused (fine/map@r would have no value)
    rows = CLASSES + [("imgs/v0.png", "val", "a"), ("imgs/v1.png", "val", "v"), ("imgs/v2.png", "val", "v"),
                      ("imgs/x0.png", "test", "x"), ("imgs/x1.png", "test", "a"), ("imgs/x2.png", "test", "v"),
                      ("imgs/x3.png", "test", "x")]
    root = _csv(tmp_path, rows)
    args = ["--config", str(_cfg(tmp_path)), "data.format=csv", f"data.root={root}", "data.options={}",
            "data.batch_size=4", "data.m=2", "data.transform=small"]
    assert main(["train", "--dry-run", *args]) == 0
    warned = [x for x in capsys.readouterr().err.splitlines() if x.startswith("warning:")]
    tail = ": the protocols hold out whole classes (docs/data.md), so results on a shared class do not measure " \
           "retrieval of unseen classes"
    assert warned == [
        "warning: the training split 'train' (data.train_split) and the validation split 'val' (data.val_split) share "
        "1 fine class(es) ('a')" + tail,
        "warning: the training split 'train' (data.train_split) and the test split 'test' (data.test_split) share 1 "
        "fine class(es) ('a')" + tail,
        "warning: the validation split 'val' (data.val_split) and the test split 'test' (data.test_split) share 2 "
        "fine class(es) ('a', 'v')" + tail]
    # a real run says the same and records it in run_info.json
    out = tmp_path / "run"
    assert main(["train", *args, "trainer.max_epochs=1", "--out", str(out), "--no-progress"]) == 0
    assert [f"warning: {w}" for w in json.loads((out / "run_info.json").read_text())["data_warnings"]] == warned


@pytest.mark.parametrize("option, expected", [
    ("k=3", "key 'data.sampler_options.k': k is set by data.m (2); remove it from data.sampler_options"),
    ("items_per_batch=3", "key 'data.sampler_options.items_per_batch': items_per_batch is set by data.batch_size "
                          "(12); remove it from data.sampler_options"),
    ("seed=3", "key 'data.sampler_options.seed': seed is set by trainer.seed (0); remove it from "
               "data.sampler_options"),
    ("bogus=1", "key 'data.sampler_options.bogus': ThreeScaleSampler takes no option 'bogus' (it takes scales)"),
])
def test_a_sampler_option_a_setting_decides_or_the_sampler_lacks_names_the_option(tmp_path, capsys, option,
                                                                                   expected) -> None:
    # was `key 'data.sampler_options': bad sampler option: ...got multiple values for keyword argument 'k'`
    err = _dry(capsys, "--config", str(_cfg(tmp_path)), "data.sampler=three_scale", "data.batch_size=12", "data.m=2",
               "trainer.seed=0", f"data.sampler_options.{option}")
    assert err == f"dynametric train: error: <command line> {expected}"


def test_sampler_errors_name_the_config_key_and_where_it_was_set(tmp_path, capsys) -> None:
    # the sampler's own argument names (items_per_batch, parent_scale) are not config keys
    err = _dry(capsys, "--config", str(_cfg(tmp_path)), "data.sampler=three_scale", "data.batch_size=600", "data.m=4")
    assert err.endswith("<command line> key 'data.batch_size': 72 images give 18 items per epoch, fewer than one "
                        "batch of 50 items: the largest that fits is a batch of 18 items (216 rows)")
    err = _dry(capsys, "--config", str(_cfg(tmp_path)), "data.sampler=hierarchical", "data.m=2",
               "data.sampler_options.parents_per_batch=20", "data.batch_size=40")
    assert err.endswith("<command line> key 'data.sampler_options.parents_per_batch': a batch needs 20 distinct "
                        "parents but scale 1 has only 9")
    cfg = tmp_path / "hier.yaml"
    cfg.write_text(TINY.replace("  m: 4\n", "  m: 4\n  sampler: hierarchical\n  sampler_options: {parent_scale: 7}\n"))
    line = next(i for i, x in enumerate(cfg.read_text().splitlines(), 1) if "sampler_options" in x)
    err = _dry(capsys, "--config", str(cfg))
    assert err.endswith(f"{cfg}:{line} key 'data.sampler_options.parent_scale': parent_scale 7 out of range for labels "
                        "with 3 scale(s)")


def test_a_hierarchical_batch_that_parents_per_batch_does_not_divide_is_named_in_config_keys(tmp_path,
                                                                                             capsys) -> None:
    # was `<command line> key 'data.batch_size': batch_size (24) must be a multiple of samples_per_class x
    # parents_per_batch (4 x 4)`: the sampler's own argument names, and the key of the value that was fine
    err = _dry(capsys, "--config", str(_cfg(tmp_path)), "data.sampler=hierarchical", "data.batch_size=24",
               "data.m=4", "data.sampler_options.parents_per_batch=4")
    assert err == ("dynametric train: error: <command line> key 'data.sampler_options.parents_per_batch': "
                   "data.batch_size (24) must be a multiple of data.m x data.sampler_options.parents_per_batch "
                   "(4 x 4 = 16): a batch holds parents_per_batch parents with whole classes of m images under each")
    # the option left at its default: the batch size the user set is the key, and the default is said
    cfg = tmp_path / "hier.yaml"
    cfg.write_text(TINY.replace("  batch_size: 16\n", "  batch_size: 12\n  sampler: hierarchical\n"))
    line = next(i for i, x in enumerate(cfg.read_text().splitlines(), 1) if "batch_size: 12" in x)
    assert _dry(capsys, "--config", str(cfg)) == (
        f"dynametric train: error: {cfg}:{line} key 'data.batch_size': data.batch_size (12) must be a multiple of "
        "data.m x data.sampler_options.parents_per_batch (4 x 2 = 8; parents_per_batch is 2 by default): a batch "
        "holds parents_per_batch parents with whole classes of m images under each")


def test_a_blank_val_carve_scale_says_what_was_given_and_lists_the_formats_scales(tmp_path, capsys) -> None:
    # was `expected a scale name, 'finest', 'coarsest' or a column index, got ''` whatever blank was given
    assert _dry(capsys, "data.val_carve_scale=' '") == (
        "dynametric train: error: <command line> key 'data.val_carve_scale': expected a scale name of the synthetic "
        "data ['fine', 'middle', 'coarse'], 'finest', 'coarsest' or a column index (0..2), got ' ' (blank)")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data:\n  format: sop\n  root: {tmp_path / 'absent'}\n  val_carve_scale: \"\\t\"\n")
    assert _dry(capsys, "--config", str(cfg)) == (
        f"dynametric train: error: {cfg}:4 key 'data.val_carve_scale': expected a scale name of the sop data "
        "['product', 'category'], 'finest', 'coarsest' or a column index (0..1), got '\\t' (blank)")
    assert _dry(capsys, "data.format=csv", f"data.root={tmp_path}", "data.val_carve_scale=''").endswith(
        "expected a scale name of the data (the csv format takes them from the data), 'finest', 'coarsest' or a "
        "column index (0 = finest), got '' (blank)")


def test_val_carve_scale_is_checked_against_the_formats_scale_names_without_data(tmp_path, capsys) -> None:
    err = _dry(capsys, "data.format=sop", f"data.root={tmp_path / 'absent'}", "trainer.monitor=finest/map@r",
               "data.val_split=null", "data.val_carve_scale=coarse")
    assert err.endswith("<command line> key 'data.val_carve_scale': scale 'coarse' is not one of the data's scales "
                        "['product', 'category'] (or 'finest', 'coarsest', a column index)")
    assert main(["train", "--dry-run", "data.format=sop", f"data.root={tmp_path / 'absent'}", "data.val_split=null",
                 "trainer.monitor=mean/map@r", "data.val_carve_scale=category"]) == 0


@pytest.mark.parametrize("overrides, expected", [
    ([], "compile false, channels_last false (model.channels_last null: resolved here)"),
    (["trainer.compile=true", "model.channels_last=true"], "compile true, channels_last true"),
])
def test_the_dry_run_says_whether_the_run_compiles_and_uses_channels_last(capsys, no_gpu, overrides, expected) -> None:
    """The settings a real run uses: model.channels_last's null rule (a convolutional backbone on a CUDA GPU) resolved
    for this machine (no GPU here: off), trainer.compile as set."""
    assert main(["train", "--dry-run", "trainer.accelerator=cpu", *overrides]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("trainer: "))
    assert line == f"trainer: accelerator cpu (trains on cpu here), strategy auto, devices 1, precision 32, {expected}"


@pytest.mark.parametrize("value, shown", [("maybe", "'maybe'"), ("'false'", "'false'"), ("1", "1")])
def test_an_on_off_data_option_that_is_not_true_or_false_is_one_line(tmp_path, capsys, value, shown) -> None:
    assert _dry(capsys, "data.format=csv", f"data.root={tmp_path}", f"data.options.swap_rb={value}") == (
        f"dynametric train: error: <command line> key 'data.options.swap_rb': expected true or false, got {shown}")
