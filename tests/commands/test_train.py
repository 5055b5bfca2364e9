"""End-to-end `dynametric train` on a tiny synthetic config: run folder, metrics.json shape, report, resume,
dry run, errors."""

from __future__ import annotations

import json

import pytest
import torch

from dynametric.cli import main
from dynametric.engine.checkpoint import load_checkpoint_file

TINY = """
data:
  format: synthetic
  options: {images_per_class: 4, image_size: 16, fine_per_shape: {train: 2, val: 1, test: 2}}
  batch_size: 16
  m: 4
  eval_batch_size: 64
model: {backbone: simple_cnn, embedding_dim: 16, backbone_kwargs: {width: 8, depth: 2}}
loss: {name: TripletMarginLoss}
optim: {lr: 0.003}
trainer: {max_epochs: 2, progress_bar: false, log_every_n_steps: 1}
run: {report: true}
"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    cfg = root / "tiny.yaml"
    cfg.write_text(TINY)
    out = root / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    return cfg, out


def test_run_folder_and_metrics_shape(finished_run):
    _, out = finished_run
    for name in ("config.yaml", "last.ckpt", "best.ckpt", "metrics.json", "report.html", "run_info.json"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["untrained", "validation", "test"]
    scales = ["fine", "middle", "coarse"]
    assert list(metrics["untrained"]) == [*scales, "mean"]
    assert list(metrics["test"]) == [*scales, "mean"]
    assert [v["epoch"] for v in metrics["validation"]] == [0, 1]
    for entry in metrics["validation"]:
        assert set(entry) == {"epoch", *scales, "mean"}
    for scale in scales:
        for block in (metrics["untrained"][scale], metrics["test"][scale]):
            assert 0.0 <= block["map@r"] <= 1.0 and 0.0 <= block["recall@1"] <= 1.0
            assert block["num_queries"] == 3 * 2 * 3 * 4 - block["excluded_queries"]  # 3 families x 3 shapes x 2
    # the test of the best checkpoint used the epoch with the best validation fine/map@r
    info = json.loads((out / "run_info.json").read_text())
    scores = [v["fine"]["map@r"] for v in metrics["validation"]]
    assert info["selected"]["epoch"] == scores.index(max(scores))
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 5 and "Multi-scale retrieval" in html
    assert "<td>None</td>" not in html  # every table cell holds a value (counts are not listed as metrics)
    assert "Per category" not in html and "by_category" not in metrics["test"]  # no query categories: no section
    # the report says which weights were tested and how they were chosen, and what produced the numbers
    sel = info["selected"]
    best = metrics["validation"][sel["epoch"]]["fine"]["map@r"]
    assert f"<th>best.ckpt (epoch {sel['epoch']}, step {sel['global_step']})</th>" in html
    assert f"<li>selected on the validation split by val/fine/map@r = {best:.4f} (epoch {sel['epoch']}&#x27;s " \
           "round)</li>" in html
    env = info["environment"]
    assert env["versions"]["torch"] == torch.__version__ and env["accelerator"] == "cpu" and env["started_utc"]
    assert f"torch {torch.__version__}" in html and "<li>seed: " in html
    for scale in scales:
        q = metrics["test"][scale]
        assert (f"<td>{scale}</td><td colspan='4'>test queries: num_queries {q['num_queries']}, excluded_queries "
                f"{q['excluded_queries']}") in html
    # the default csv logger got the per-scale metrics of every stage (the same values as metrics.json)
    import csv

    rows = list(csv.DictReader((out / "logs" / "metrics.csv").open()))
    for stage, block in (("untrained", metrics["untrained"]), ("test", metrics["test"])):
        for scale in [*scales, "mean"]:
            logged = [float(r[f"{stage}/{scale}/map@r"]) for r in rows if r.get(f"{stage}/{scale}/map@r")]
            assert logged == [pytest.approx(block[scale]["map@r"], rel=1e-6)]
    assert info["logger"] == "csv"


def test_resume_of_a_finished_run_continues_with_more_epochs(finished_run, tmp_path):
    cfg_path, out = finished_run
    last = load_checkpoint_file(out / "last.ckpt")
    assert last["epoch"] == 1
    # a finished run resumed: nothing left to do, same weights, metrics rewritten with the same shape
    before = {k: v.clone() for k, v in last["state_dict"].items()}
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    after = load_checkpoint_file(out / "last.ckpt")["state_dict"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [v["epoch"] for v in json.loads((out / "metrics.json").read_text())["validation"]] == [0, 1]


def test_dry_run_prints_config_and_components(finished_run, capsys):
    cfg, _ = finished_run
    assert main(["train", "--config", str(cfg), "--dry-run", "trainer.max_epochs=5"]) == 0
    text = capsys.readouterr().out
    assert "max_epochs: 5" in text and "param group backbone" in text and "TripletMarginLoss" in text


def test_dry_run_prints_the_resolved_loader_settings(finished_run, capsys):
    """The DataLoader settings a real run would use on this machine: data.workers (auto resolved), pin_memory
    (never on a CPU run), persistent workers, prefetch factor, batch sizes and sampler."""
    cfg, _ = finished_run
    assert main(["train", "--config", str(cfg), "--dry-run", "trainer.accelerator=cpu"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("loader:")]
    assert lines == ["loader: workers auto -> 0, pin_memory false, persistent_workers and prefetch_factor unused (no "
                     "workers); batches of 16 per process (sampler m_per_class), evaluation batches of 64"]
    assert main(["train", "--config", str(cfg), "--dry-run", "trainer.accelerator=cpu", "data.workers=2",
                 "data.pin_memory=true", "data.persistent_workers=false", "data.prefetch_factor=3",
                 "data.sampler=random", "data.batch_size=12", "data.eval_batch_size=32"]) == 0
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("loader:")]
    assert lines == ["loader: workers 2, pin_memory false, persistent_workers false, prefetch_factor 3; batches of 12 "
                     "per process (sampler random), evaluation batches of 32"]


def test_set_overrides_as_on_the_other_commands(finished_run, capsys):
    cfg, _ = finished_run
    assert main(["train", "--config", str(cfg), "--dry-run", "--set", "trainer.max_epochs=7",
                 "--set", "model.embedding_dim=24"]) == 0
    text = capsys.readouterr().out
    assert "max_epochs: 7" in text and "embedding_dim: 24" in text
    # positional first, then --set: the later one wins
    assert main(["train", "--config", str(cfg), "--dry-run", "trainer.max_epochs=3", "--set",
                 "trainer.max_epochs=9"]) == 0
    assert "max_epochs: 9" in capsys.readouterr().out
    assert main(["train", "--config", str(cfg), "--dry-run", "--set", "max_epochs"]) == 2
    assert "expected KEY=VALUE, got 'max_epochs'" in capsys.readouterr().err


def test_overrides_stand_anywhere_among_the_options(finished_run, capsys):
    """KEY=VALUE words before, between and after options all apply, in the order given (argparse alone took only
    the first run of them and refused the rest as unrecognized arguments)."""
    cfg, _ = finished_run
    assert main(["train", "trainer.max_epochs=3", "--config", str(cfg), "--dry-run", "model.embedding_dim=24",
                 "--no-progress", "trainer.max_epochs=6", "trainer.seed=5"]) == 0
    text = capsys.readouterr().out
    assert "max_epochs: 6" in text and "embedding_dim: 24" in text and "  seed: 5" in text
    # a word an option takes as its value stays the option's, even with "="; an unknown option is still refused
    from pathlib import Path

    from dynametric.cli import build_parser, parse_args

    args = parse_args(build_parser(), ["train", "--out", "runs/a=b", "data.m=2", "--no-progress", "data.m=8",
                                       "--set", "trainer.seed=1"])
    assert args.out == Path("runs/a=b") and args.overrides == ["data.m=2", "data.m=8"]
    assert args.set_overrides == ["trainer.seed=1"] and args.progress is False
    assert main(["train", "--dry-run", "data.m=2", "--bogus", "data.m=8"]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == "dynametric train: error: unrecognized option --bogus"
    # a word without "=" between the options is the same one-line error as before them
    assert main(["train", "--config", str(cfg), "--dry-run", "--no-progress", "max_epochs"]) == 2
    assert capsys.readouterr().err.strip() == "dynametric train: error: key 'max_epochs': expected KEY=VALUE, got " \
        "'max_epochs'"


def test_dry_run_without_dataset_root_warns(tmp_path, capsys):
    assert main(["train", "--dry-run", "data.format=cub200", f"data.root={tmp_path / 'missing'}",
                 "loss.name=ProxyAnchorLoss"]) == 0
    captured = capsys.readouterr()
    assert "not found" in captured.err and "not found" not in captured.out  # a warning: on stderr


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path / "r"), "data.format=cub200", f"data.root={tmp_path / 'nope'}"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "dataset root not found" in err
    assert main(["train", "--dry-run", "trainer.max_epoch=3"]) == 2
    assert "max_epochs" in capsys.readouterr().err  # suggestion of the closest key
    assert main(["train", "--resume", str(tmp_path)]) == 2
    assert "config.yaml" in capsys.readouterr().err


def test_evaluate_checkpoint_reproduces_the_run_test_metrics(finished_run, tmp_path):
    _, out = finished_run
    result = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(out / "best.ckpt"), "--json", str(result)]) == 0
    got = json.loads(result.read_text())
    expected = json.loads((out / "metrics.json").read_text())["test"]
    for scale in ("fine", "middle", "coarse"):
        for metric in ("recall@1", "map@r"):
            assert got[scale][metric] == pytest.approx(expected[scale][metric], abs=1e-6)
    assert main(["evaluate", "--checkpoint", str(out / "best.ckpt"), "--split", "val"]) == 0
    assert main(["evaluate", "--split", "val"]) == 2  # --split needs --checkpoint


def test_evaluate_checkpoint_defaults_to_the_run_s_eval_options(tmp_path, capsys):
    """A run evaluated with eval.distance euclidean (unnormalised embeddings, where the distances rank differently),
    its own k values and empty-query policy: `evaluate --checkpoint` without options reproduces its test metrics
    (it ranked by cosine with k 1 2 4 8 before), and an option given still wins."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress", "run.report=false",
                 "model.normalize=false", "eval.distance=euclidean", "eval.k_values=[1,3]",
                 "eval.empty_queries=count_as_zero"]) == 0
    capsys.readouterr()
    expected = json.loads((out / "metrics.json").read_text())["test"]
    result = tmp_path / "eval.json"
    assert main(["evaluate", "--checkpoint", str(out / "best.ckpt"), "--json", str(result)]) == 0
    assert ", distance euclidean," in capsys.readouterr().out
    got = json.loads(result.read_text())
    for scale in ("fine", "middle", "coarse"):
        assert "recall@3" in got[scale] and "recall@2" not in got[scale]
        for metric in ("recall@1", "recall@3", "map@r", "map"):
            assert got[scale][metric] == pytest.approx(expected[scale][metric], abs=1e-6)
    cosine = tmp_path / "cosine.json"
    assert main(["evaluate", "--checkpoint", str(out / "best.ckpt"), "--json", str(cosine), "--distance", "cosine",
                 "--k", "1", "2"]) == 0
    assert ", distance cosine," in capsys.readouterr().out
    other = json.loads(cosine.read_text())
    assert "recall@2" in other["fine"] and "recall@3" not in other["fine"]
    assert any(other[s]["map"] != pytest.approx(expected[s]["map"], abs=1e-6) for s in ("fine", "middle", "coarse"))


@pytest.mark.parametrize("overrides, reason", [
    (["trainer.max_steps=3"],  # an epoch is 4 batches: training stops before the first validation
     "no validation ran before training stopped at step 3; validation runs at the end of every "
     "trainer.val_every=1 epoch(s)"),
    (["trainer.max_epochs=1", "data.val_split=null", "data.val_fraction=0"], "no validation split"),
])
def test_final_weights_are_tested_for_the_true_reason(tmp_path, capsys, overrides, reason):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    report = "run.report=" + ("true" if reason == "no validation split" else "false")
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress", report, *overrides]) == 0
    captured = capsys.readouterr()
    assert f"testing final weights ({reason}) on the test split ..." in captured.out
    if reason == "no validation split":  # the report's trained column said "trained (best ckpt)"
        html = (out / "report.html").read_text()
        assert "<th>final weights</th>" in html and "best ckpt" not in html
        assert f"<li>why: {reason}</li>" in html
    info = json.loads((out / "run_info.json").read_text())
    assert info["selected"] == {"checkpoint": "final weights", "reason": reason}
    assert not (out / "best.ckpt").exists()
    assert "could not find the monitored key" not in captured.err  # Lightning's hint at a bug in user code


@pytest.mark.parametrize(("overrides", "steps", "epochs"), [
    (["trainer.max_epochs=1", "trainer.max_steps=8"], 3, [0]),  # max_epochs first (it was 8 steps in 3 epochs)
    (["trainer.max_epochs=3", "trainer.max_steps=5"], 5, [0]),  # max_steps first, in the second epoch
])
def test_max_epochs_and_max_steps_both_limit_the_run(tmp_path, capsys, overrides, steps, epochs):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress", "run.report=false",
                 "data.iterations_per_epoch=3", *overrides]) == 0
    assert json.loads((out / "run_info.json").read_text())["global_step"] == steps
    assert [v["epoch"] for v in json.loads((out / "metrics.json").read_text())["validation"]] == epochs
    capsys.readouterr()


def test_evaluate_split_val_reaches_the_validation_carved_from_train(tmp_path):
    """A dataset without a 'val' split validates on a class-disjoint carve-out of the training classes; `evaluate
    --checkpoint best.ckpt --split val` evaluates that same carve-out (it used to say 'unknown split')."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = ["path,split,fine,coarse"]
    for split, classes in (("train", range(12)), ("test", range(12, 18))):
        for c in classes:
            base = rng.integers(0, 256, 3)
            for j in range(4):
                rel = f"imgs/{c}_{j}.png"
                (tmp_path / "imgs").mkdir(exist_ok=True)
                arr = np.clip(base + rng.normal(0, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(tmp_path / rel)
                rows.append(f"{rel},{split},f{c},c{c % 3}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    cfg = tmp_path / "carve.yaml"
    cfg.write_text(TINY.replace("format: synthetic", f"format: csv\n  root: {tmp_path / 'labels.csv'}")
                   .replace("  options: {images_per_class: 4, image_size: 16, fine_per_shape: {train: 2, val: 1, "
                            "test: 2}}\n", "  image_size: 16\n  val_fraction: 0.5\n"))
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress", "run.report=false"]) == 0
    info = json.loads((out / "run_info.json").read_text())
    assert "training classes" in info["validation_source"]
    best_epoch = info["selected"]["epoch"]
    expected = next(v for v in json.loads((out / "metrics.json").read_text())["validation"]
                    if v["epoch"] == best_epoch)
    result = tmp_path / "val.json"
    assert main(["evaluate", "--checkpoint", str(out / "best.ckpt"), "--split", "val", "--json", str(result)]) == 0
    got = json.loads(result.read_text())
    for scale in ("fine", "coarse"):
        for metric in ("recall@1", "map@r"):
            assert got[scale][metric] == pytest.approx(expected[scale][metric], abs=1e-6), (scale, metric)
        assert got[scale]["num_queries"] == expected[scale]["num_queries"] == 6 * 4


def test_evaluate_split_val_is_the_carve_out_of_a_run_with_val_split_null(tmp_path):
    """With data.val_split: null a run validates on a carve-out of its training classes even where the format has a
    'val' split of its own (every shipped protocol config sets null); `evaluate --split val` evaluated the format's
    split instead (540 queries against the run's 360 in the QA case, every metric different)."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.replace("  batch_size: 16\n", "  batch_size: 16\n  val_split: null\n  val_fraction: 0.5\n"))
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress", "run.report=false",
                 "trainer.max_epochs=1"]) == 0
    info = json.loads((out / "run_info.json").read_text())
    assert "training classes" in info["validation_source"]
    expected = next(v for v in json.loads((out / "metrics.json").read_text())["validation"]
                    if v["epoch"] == info["selected"]["epoch"])
    result = tmp_path / "val.json"
    assert main(["evaluate", "--checkpoint", str(out / "best.ckpt"), "--split", "val", "--json", str(result)]) == 0
    got = json.loads(result.read_text())
    for scale in ("fine", "middle", "coarse"):
        assert got[scale]["num_queries"] == expected[scale]["num_queries"], scale
        for metric in ("recall@1", "map@r"):
            assert got[scale][metric] == pytest.approx(expected[scale][metric], abs=1e-6), (scale, metric)


def test_the_summary_table_names_the_head_of_a_multi_head_run() -> None:
    from dynametric.pipeline.run import _summary

    metrics = {"untrained": {"fine": {"recall@1": 0.1}, "mean": {"recall@1": 0.1}},
               "test": {"fine": {"recall@1": 0.5}, "mean": {"recall@1": 0.5}}}
    lines: list[str] = []
    _summary(metrics, ["fine"], lines.append, "concat", True)
    assert lines[0] == "test metrics of head concat (every head: run_info.json test_by_head)"
    assert lines[1].split() == ["scale", "recall@1", "untrained", "recall@1", "trained"]
    lines.clear()
    _summary(metrics, ["fine"], lines.append)  # a single-head run: the table alone, as before
    assert lines[0].startswith("scale")


def test_the_report_gets_the_whole_training_when_best_ckpt_is_an_earlier_epoch(tmp_path, monkeypatch):
    """The test loads best.ckpt into the module, whose checkpoint hook puts back that epoch's loss history: the
    report's loss curve (and run_info's skipped-step count) are read before, so they cover the whole training."""
    import dynametric.pipeline.run as run

    seen = {}
    original = run.write_report

    def spy(path, **kwargs):
        seen.update(kwargs)
        return original(path, **kwargs)

    monkeypatch.setattr(run, "write_report", spy)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    # learning rate 0, batch norm frozen: every validation gives the same numbers, none improves on the first
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress", "trainer.max_epochs=3",
                 "optim.lr=0.0", "model.freeze_bn=true", "data.iterations_per_epoch=2"]) == 0
    info = json.loads((out / "run_info.json").read_text())
    assert info["selected"]["epoch"] == 0 and info["global_step"] == 6
    assert [step for step, _ in seen["loss_history"]] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert info["skipped_nonfinite_steps"] == 0


# the environment variables that say which process of a multi-process launch this is (pipeline.run_folder)
_LAUNCH_ENV = ("RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_NTASKS",
               "SLURM_JOB_ID", "SLURM_STEP_ID", "SLURM_JOB_NAME", "JSM_NAMESPACE_RANK", "JSM_NAMESPACE_SIZE",
               "JSM_NAMESPACE_LOCAL_RANK", "LSB_JOBID", "LSB_JOBINDEX", "LSB_DJOB_RANKFILE", "DYNAMETRIC_RUN_DIR")


def _one_process_env() -> dict[str, str]:
    """This process's environment for a `python -m dynametric` child started as one plain process (whatever launcher
    runs the tests), with this checkout's sources first on its path."""
    import os
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}
    for name in _LAUNCH_ENV:
        env.pop(name, None)
    return env


@pytest.mark.slow
def test_a_two_process_run_prints_its_lines_once(tmp_path) -> None:
    """trainer.devices=2 on the CPU: Lightning starts rank 1 as a second `dynametric train` process, which printed
    the run folder, data, untrained-evaluation and testing lines a second time."""
    import subprocess
    import sys

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    env = _one_process_env()
    proc = subprocess.run([sys.executable, "-m", "dynametric", "train", "--config", str(cfg), "--out", str(out),
                           "--no-progress", "run.report=false", "trainer.devices=2", "trainer.accelerator=cpu"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for start in ("run folder: ", "data: ", "evaluating the untrained model", "testing best.ckpt", "wrote "):
        assert len([line for line in lines if line.startswith(start)]) == 1, (start, proc.stdout)
    # the report's loss curve (the checkpoint's loss_history, rank 0's) is the loggers' train/loss_step (the mean
    # over the two processes): the loss is that of the gathered global batch, the same in every process
    import csv

    from dynametric.engine.checkpoint import load_checkpoint_file

    with (out / "logs" / "metrics.csv").open(encoding="utf-8") as fh:
        logged = {int(r["step"]): float(r["train/loss_step"]) for r in csv.DictReader(fh) if r.get("train/loss_step")}
    history = load_checkpoint_file(out / "last.ckpt")["dynametric"]["loss_history"]
    assert len(history) == len(logged) >= 2
    for step, loss in history:
        assert loss == pytest.approx(logged[int(step)], rel=1e-6, abs=1e-7), (step, loss, logged)


_NAN_ON_RANK_1 = """
import os, sys
import dynametric.engine.module as module
batch_images = module.MetricLearningModule.batch_images
def nan_on_rank_1(self, batch):
    x = batch_images(self, batch)
    if module.world_info()[0] == 1 and int(self.global_step) == 1 and self.training:
        x = x.clone()
        x[0] = float("nan")
    return x
module.MetricLearningModule.batch_images = nan_on_rank_1
from dynametric.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["skip", "stop"])
def test_a_non_finite_step_on_one_rank_is_skipped_or_stopped_on_every_rank(tmp_path, mode) -> None:
    """Two CPU processes, a NaN image on rank 1 at step 1 (so only rank 1's rows of the model's output are NaN; the
    loss over the gathered batch stays finite). With skip, rank 1 skipped alone and left rank 0 waiting in the
    step's collectives: the run hung. With stop, rank 0 died with a gloo traceback. The ranks now agree."""
    import subprocess
    import sys

    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "nan_on_rank_1.py").write_text(_NAN_ON_RANK_1)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(tmp_path / "nan_on_rank_1.py"), "train", "--config",
                           str(tmp_path / "tiny.yaml"), "--out", str(out), "--no-progress", "run.report=false",
                           "trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_epochs=1",
                           f"trainer.nonfinite={mode}"], capture_output=True, text=True, env=_one_process_env(),
                          timeout=240)
    problem = "non-finite embeddings at global step 1 (epoch 0, batch 1)"
    if mode == "skip":
        assert proc.returncode == 0, proc.stderr
        assert problem in proc.stderr and "step skipped (1 skipped so far)" in proc.stderr
        info = json.loads((out / "run_info.json").read_text())
        assert info["skipped_nonfinite_steps"] == 1 and info["processes"] == 2
    else:
        assert proc.returncode == 2, proc.stderr
        assert problem in proc.stderr and "Traceback" not in proc.stderr
        assert not (out / "last.ckpt").exists()


@pytest.mark.slow
def test_a_two_process_run_without_out_fills_one_folder(tmp_path) -> None:
    """trainer.devices=2 on the CPU without --out: Lightning starts rank 1 as a second `dynametric train` process
    some seconds later; it named its own, later <time>-<hash> folder and its CSV logger created it (an empty
    runs/<later time>-<hash>/logs beside the run). Rank 0 publishes its folder; rank 1 uses it and creates nothing."""
    import re
    import subprocess
    import sys

    (tmp_path / "tiny.yaml").write_text(TINY)
    proc = subprocess.run([sys.executable, "-m", "dynametric", "train", "--config", "tiny.yaml", "--no-progress",
                           "run.report=false", "trainer.devices=2", "trainer.accelerator=cpu"],
                          capture_output=True, text=True, env=_one_process_env(), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "tiny.yaml"]
    folders = [p.name for p in (tmp_path / "runs").iterdir()]
    assert len(folders) == 1, folders
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}", folders[0])
    assert f"run folder: runs/{folders[0]}" in proc.stdout.splitlines()
    run = tmp_path / "runs" / folders[0]
    assert sorted(p.name for p in run.iterdir()) == ["best.ckpt", "config.yaml", "last.ckpt", "logs", "metrics.json",
                                                    "run_info.json"]


# ------------------------------------------------------------ the run folder of a multi-process launch, no processes

@pytest.fixture
def launch_env(monkeypatch, tmp_path):
    """No launcher's variables (as one plain process), the clock's part of a default name fixed, cwd tmp_path; the
    test sets the variables of the launch it stands for. Returns a setter of several variables at once."""
    import dynametric.pipeline.run_folder as run_folder

    for name in _LAUNCH_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(run_folder.time, "strftime", lambda fmt: "20260102-030405")
    monkeypatch.chdir(tmp_path)

    def setenv(**values: str) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)
    return setenv


@pytest.fixture
def tiny_config(tmp_path):
    from dynametric.config import config_hash, load_config

    (tmp_path / "tiny.yaml").write_text(TINY)
    cfg = load_config(tmp_path / "tiny.yaml")
    return cfg, config_hash(cfg, 8)


@pytest.mark.parametrize("env, worker", [
    ({}, False),
    ({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}, False),  # a plain single-task srun
    ({"SLURM_PROCID": "1", "SLURM_NTASKS": "2"}, True),  # srun's second task: SLURM's global rank 1
    ({"SLURM_PROCID": "1", "LOCAL_RANK": "0"}, False),  # Lightning reads LOCAL_RANK before SLURM_PROCID
    ({"SLURM_PROCID": "1", "RANK": "0"}, False),  # and RANK before both
    ({"SLURM_PROCID": "0", "LOCAL_RANK": "1"}, True),  # a rank Lightning's launcher started inside a SLURM task
    ({"JSM_NAMESPACE_RANK": "0", "JSM_NAMESPACE_SIZE": "1"}, False),  # a plain single-task jsrun (IBM LSF)
    ({"JSM_NAMESPACE_RANK": "1", "JSM_NAMESPACE_SIZE": "2", "LSB_JOBID": "9"}, True),  # jsrun's second task
    ({"JSM_NAMESPACE_RANK": "1", "LOCAL_RANK": "0"}, False),  # Lightning reads LOCAL_RANK before JSM_NAMESPACE_RANK
    ({"JSM_NAMESPACE_RANK": "1", "SLURM_PROCID": "0"}, False),  # and SLURM_PROCID before it
    ({"JSM_NAMESPACE_RANK": "0", "LOCAL_RANK": "1"}, True),  # a rank Lightning's launcher started inside a jsrun task
    ({"RANK": "0", "LOCAL_RANK": "0"}, False),
    ({"RANK": "3"}, True),
    ({"NODE_RANK": "1", "LOCAL_RANK": "0"}, True),
])
def test_which_process_is_another_ranks(launch_env, env, worker) -> None:
    from lightning.fabric.utilities.rank_zero import _get_rank

    from dynametric.pipeline.run_folder import _launched_worker

    launch_env(**env)
    assert _launched_worker() is worker
    if "NODE_RANK" not in env:  # the global rank Lightning's rank_zero_only starts from agrees
        assert worker is (_get_rank() not in (None, 0))


@pytest.mark.parametrize("rank", [0, 1, 3])
def test_a_jsrun_task_is_another_rank_as_lightnings_lsf_environment_counts_it(launch_env, monkeypatch, tmp_path,
                                                                             rank) -> None:
    """Under jsrun Lightning detects its LSFEnvironment, whose global rank is JSM_NAMESPACE_RANK (jsrun sets no RANK,
    LOCAL_RANK or SLURM_PROCID): rank 0 names and fills the folder, every other task only joins it."""
    import socket

    from lightning.fabric.plugins.environments import LSFEnvironment, SLURMEnvironment, TorchElasticEnvironment

    from dynametric.pipeline.run_folder import _launched_worker

    host = socket.gethostname()
    (tmp_path / "rankfile").write_text(f"launch-node\n{host}\n{host}\n{host}\n{host}\n")
    for name in ("MASTER_ADDR", "MASTER_PORT"):  # LSFEnvironment sets both; restored after the test
        monkeypatch.setenv(name, "10000")
    launch_env(LSB_JOBID="9876", LSB_DJOB_RANKFILE=str(tmp_path / "rankfile"), JSM_NAMESPACE_SIZE="4",
               JSM_NAMESPACE_LOCAL_RANK=str(rank), JSM_NAMESPACE_RANK=str(rank))
    assert LSFEnvironment.detect() and not SLURMEnvironment.detect() and not TorchElasticEnvironment.detect()
    assert LSFEnvironment().global_rank() == rank
    assert _launched_worker() is (rank != 0)


def test_one_process_names_its_folder_by_the_clock_and_publishes_it(launch_env, tiny_config, tmp_path) -> None:
    import os
    from pathlib import Path

    from dynametric.pipeline.run_folder import RUN_DIR_ENV, default_run_dir

    cfg, digest = tiny_config
    for env in ({}, {"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0"},
                {"TORCHELASTIC_RUN_ID": "abc", "WORLD_SIZE": "1", "RANK": "0"},  # single-task srun, torchrun
                {"JSM_NAMESPACE_RANK": "0", "JSM_NAMESPACE_SIZE": "1", "JSM_NAMESPACE_LOCAL_RANK": "0",
                 "LSB_JOBID": "9876", "LSB_JOBINDEX": "0"}):  # and a single-task jsrun
        launch_env(**env)
        assert default_run_dir(cfg) == Path("runs") / f"20260102-030405-{digest}", env
        assert os.environ[RUN_DIR_ENV] == str(tmp_path / "runs" / f"20260102-030405-{digest}")
    assert not (tmp_path / "runs").exists()  # naming creates nothing


def test_a_default_name_taken_in_the_same_second_gives_the_next_free_one(launch_env, tiny_config, tmp_path) -> None:
    """Two runs of one config started in the same second (a scheduler's job array): the second one's default name
    is the next free one (was: the same folder, refused as another process's run although no folder was named)."""
    import dataclasses
    import os
    from pathlib import Path

    from dynametric.config import config_hash
    from dynametric.pipeline.run_folder import RUN_DIR_ENV, default_run_dir, reserve_default_run_dir

    cfg, digest = tiny_config
    launch_env()
    stem = f"20260102-030405-{digest}"
    (tmp_path / "runs" / stem).mkdir(parents=True)
    assert default_run_dir(cfg) == Path("runs") / f"{stem}-2"
    (tmp_path / "runs" / f"{stem}-2").symlink_to(tmp_path / "nowhere")  # a dangling link holds its name too
    assert default_run_dir(cfg) == Path("runs") / f"{stem}-3"
    assert os.environ[RUN_DIR_ENV] == str(tmp_path / "runs" / f"{stem}-3")
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [stem, f"{stem}-2"]  # naming created nothing
    # reserved: each call creates its folder (mkdir, which one process wins), so the next call names another
    assert reserve_default_run_dir(cfg) == (Path("runs") / f"{stem}-3", True)
    assert reserve_default_run_dir(cfg) == (Path("runs") / f"{stem}-4", True)
    for name in (f"{stem}-3", f"{stem}-4"):
        assert (tmp_path / "runs" / name).is_dir() and not any((tmp_path / "runs" / name).iterdir())
    # a folder that cannot be created for another reason is named uncreated (the run's own check says why)
    (tmp_path / "blocked").write_text("a file where run.output_dir's folder would be\n")
    other = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, output_dir=str(tmp_path / "blocked")))
    assert reserve_default_run_dir(other) == (tmp_path / "blocked" / f"20260102-030405-{config_hash(other, 8)}", False)
    assert (tmp_path / "blocked").read_text() == "a file where run.output_dir's folder would be\n"


def test_train_without_out_in_the_second_of_a_finished_run_trains_beside_it(launch_env, tmp_path, capsys,
                                                                           monkeypatch) -> None:
    """The command line: a second default-named run of one config in the same second trains in ``<name>-2``, the
    first run's folder left as it was (was: refused, the folder holding a finished run); a run that stops before it
    wrote anything leaves no empty folder of its own (the reserved one) behind."""
    import dynametric.pipeline.run as run_module
    from dynametric.cli import main
    from dynametric.errors import InputError
    from tests.metrics_csv import TINY_SYNTHETIC

    launch_env()
    args = ["train", *TINY_SYNTHETIC, "--no-progress"]
    assert main(args) == 0, capsys.readouterr().err
    (first,) = (tmp_path / "runs").iterdir()
    before = {p.name: p.stat().st_mtime_ns for p in first.iterdir()}
    assert main(args) == 0, capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [first.name, f"{first.name}-2"]
    assert (tmp_path / "runs" / f"{first.name}-2" / "last.ckpt").is_file()
    assert {p.name: p.stat().st_mtime_ns for p in first.iterdir()} == before

    def stop(*args, **kwargs):
        raise InputError("stopped before the data was read (test)")

    monkeypatch.setattr(run_module, "build_datasets", stop)
    capsys.readouterr()
    assert main(args) == 2
    assert "stopped before the data was read (test)" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == [first.name, f"{first.name}-2"]


def test_another_rank_of_lightnings_launcher_takes_the_published_folder(launch_env, tiny_config) -> None:
    import dataclasses
    from pathlib import Path

    from dynametric.pipeline.run_folder import default_run_dir

    cfg, _ = tiny_config
    # as Lightning's script launcher starts rank 1: LOCAL_RANK, WORLD_SIZE and rank 0's environment with its
    # published folder, named at another time than this process's clock says
    launch_env(LOCAL_RANK="1", NODE_RANK="0", WORLD_SIZE="2", DYNAMETRIC_RUN_DIR="/data/runs/20251231-235959-0f0f0f0f")
    assert default_run_dir(cfg) == Path("/data/runs/20251231-235959-0f0f0f0f")
    named = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, name="mine"))
    assert default_run_dir(named) == Path("runs/mine")  # run.name: every process names the same folder itself


def test_rank_0_names_a_later_run_by_the_clock_after_a_lightning_launched_fit(launch_env, tiny_config) -> None:
    """Lightning's script launcher leaves WORLD_SIZE, LOCAL_RANK=0 and NODE_RANK=0 in rank 0's environment (and the
    folder published for the fit): a second default-named run in that process is a single launch, not refused."""
    from pathlib import Path

    from dynametric.pipeline.run_folder import _launched_worker, default_run_dir

    cfg, digest = tiny_config
    launch_env(LOCAL_RANK="0", NODE_RANK="0", WORLD_SIZE="2", DYNAMETRIC_RUN_DIR="/data/runs/20251231-235959-0f0f0f0f")
    assert not _launched_worker()
    assert default_run_dir(cfg) == Path("runs") / f"20260102-030405-{digest}"


@pytest.mark.parametrize("env, rank_key, name", [
    ({"TORCHELASTIC_RUN_ID": "5d1c-77", "WORLD_SIZE": "4"}, "RANK", "torchrun-5d1c-77"),
    ({"TORCHELASTIC_RUN_ID": "job 7/a", "WORLD_SIZE": "2"}, "RANK", "torchrun-job_7_a"),  # a user's id, made a name
    # torchrun without a rendezvous id inside a SLURM job (one srun task): the job and step
    ({"TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "2", "SLURM_JOB_ID": "42", "SLURM_STEP_ID": "3",
      "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, "RANK", "slurm-42.3"),
    ({"SLURM_NTASKS": "2", "SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0"}, "SLURM_PROCID", "slurm-42.0"),  # srun -n 2
    ({"SLURM_NTASKS": "8", "SLURM_JOB_ID": "42"}, "SLURM_PROCID", "slurm-42"),
    # jsrun -n 4 in an LSF job (LSF sets LSB_JOBINDEX=0 outside a job array), and in the element 3 of an array,
    # whose elements share LSB_JOBID
    ({"JSM_NAMESPACE_SIZE": "4", "LSB_JOBID": "9876", "LSB_JOBINDEX": "0"}, "JSM_NAMESPACE_RANK", "lsf-9876"),
    ({"JSM_NAMESPACE_SIZE": "2", "LSB_JOBID": "9876", "LSB_JOBINDEX": "3"}, "JSM_NAMESPACE_RANK", "lsf-9876_3"),
    ({"JSM_NAMESPACE_SIZE": "2", "LSB_JOBID": "9876"}, "JSM_NAMESPACE_RANK", "lsf-9876"),
    # torchrun without a rendezvous id inside an LSF job (one jsrun task): the job
    ({"TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "2", "LSB_JOBID": "9876", "LSB_JOBINDEX": "0",
      "JSM_NAMESPACE_SIZE": "1", "JSM_NAMESPACE_RANK": "0"}, "RANK", "lsf-9876"),
])
def test_every_process_of_torchrun_srun_or_jsrun_names_one_folder(launch_env, tiny_config, env, rank_key, name) -> None:
    import os
    from pathlib import Path

    from dynametric.pipeline.run_folder import RUN_DIR_ENV, _launched_worker, default_run_dir

    cfg, digest = tiny_config
    launch_env(**env)
    for rank in ("0", "1"):
        launch_env(**{rank_key: rank})
        assert _launched_worker() is (rank == "1")
        assert default_run_dir(cfg) == Path("runs") / f"{name}-{digest}", rank
    assert RUN_DIR_ENV not in os.environ  # nothing to publish: every process names it alike


_REFUSED = ("a multi-process launch needs a run folder all its processes share: pass --out DIR or set run.name (the "
            "default name holds the time each process starts; ")


@pytest.mark.parametrize("env, why", [
    ({"TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "2", "RANK": "0"},
     "torchrun starts every process on its own and gives them no id they share (its rendezvous id is 'none'; "
     "torchrun --standalone or --rdzv-id ID gives one))"),
    ({"TORCHELASTIC_RUN_ID": "none", "WORLD_SIZE": "2", "RANK": "1"},
     "torchrun starts every process on its own and gives them no id they share (its rendezvous id is 'none'; "
     "torchrun --standalone or --rdzv-id ID gives one))"),
    ({"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "10.0.0.1"},
     "the launcher that set WORLD_SIZE=2 starts every process on its own and gives them no id they share)"),
    ({"LOCAL_RANK": "1"}, "this process of another rank finds no folder published by rank 0 in DYNAMETRIC_RUN_DIR)"),
    ({"SLURM_PROCID": "1"}, "this process of another rank finds no folder published by rank 0 in DYNAMETRIC_RUN_DIR)"),
    ({"JSM_NAMESPACE_SIZE": "2", "JSM_NAMESPACE_RANK": "0"},
     "jsrun starts every process on its own and gives them no id they share (no LSF job id in LSB_JOBID))"),
    ({"JSM_NAMESPACE_SIZE": "2", "JSM_NAMESPACE_RANK": "1", "LSB_JOBID": " "},
     "jsrun starts every process on its own and gives them no id they share (no LSF job id in LSB_JOBID))"),
    ({"JSM_NAMESPACE_RANK": "1"},
     "this process of another rank finds no folder published by rank 0 in DYNAMETRIC_RUN_DIR)"),
])
def test_a_launch_without_a_shared_name_is_refused(launch_env, tiny_config, env, why) -> None:
    from dynametric.errors import ConfigError
    from dynametric.pipeline.run_folder import default_run_dir

    cfg, _ = tiny_config
    launch_env(**env)
    with pytest.raises(ConfigError) as err:
        default_run_dir(cfg)
    assert str(err.value) == "key 'run.name': " + _REFUSED + why


def test_several_nodes_under_lightnings_launcher_are_refused_on_every_node(launch_env, tmp_path, capsys) -> None:
    """trainer.num_nodes=2 with Lightning's own launcher (one command per node): rank 0's published folder never
    reaches the other node; every node refuses, through the command (one line, nothing created)."""
    from dynametric.cli import main

    (tmp_path / "tiny.yaml").write_text(TINY)
    for env in ({}, {"NODE_RANK": "1"}):
        launch_env(**env)
        assert main(["train", "--config", "tiny.yaml", "--no-progress", "trainer.num_nodes=2"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [f"dynametric train: error: key 'run.name': {_REFUSED}trainer.num_nodes=2 under "
                                    "Lightning's launcher: another node's processes do not learn the folder rank 0 "
                                    "names)"], env
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


def test_a_jsrun_launch_outside_an_lsf_job_is_refused_on_every_task(launch_env, tmp_path, capsys) -> None:
    """jsrun -n 2 with no LSB_JOBID: each task would name its own folder by its own clock; both refuse, through the
    command (one line naming --out and run.name, nothing created)."""
    from dynametric.cli import main

    (tmp_path / "tiny.yaml").write_text(TINY)
    for rank in ("0", "1"):
        launch_env(JSM_NAMESPACE_SIZE="2", JSM_NAMESPACE_RANK=rank, JSM_NAMESPACE_LOCAL_RANK=rank)
        assert main(["train", "--config", "tiny.yaml", "--no-progress"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.splitlines() == [f"dynametric train: error: key 'run.name': {_REFUSED}jsrun starts every process "
                                    "on its own and gives them no id they share (no LSF job id in LSB_JOBID))"], rank
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.yaml"]


SINGLETONS = "data.options={images_per_class: 1, image_size: 16, fine_per_shape: {train: 4, val: 2, test: 2}}"


def test_a_validation_split_of_singleton_classes_is_refused_before_training(tmp_path, capsys):
    # every validation class at the monitored scale (fine) has one image: fine/map@r would be NaN in every round,
    # best.ckpt was silently epoch 0 and early stopping stopped after one epoch
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress", SINGLETONS]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "key 'trainer.monitor'" in err
    assert "the monitored fine/map@r has no value on the split 'val' data" in err
    assert "trainer.monitor=middle/map@r" in err
    assert not out.exists() or not any(out.iterdir())


def _reject_nan(name: str):
    raise ValueError(f"bare {name} in strict JSON")


def test_metrics_without_a_value_are_null_in_metrics_json_and_a_resume_reads_them(tmp_path, capsys):
    # monitoring the middle scale, the fine metrics of validation and test have no value (0 queries): metrics.json
    # wrote a bare NaN, which is not JSON
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress", SINGLETONS,
                 "trainer.monitor=middle/map@r", "trainer.max_epochs=1", "run.report=false"]) == 0
    metrics = json.loads((out / "metrics.json").read_text(), parse_constant=_reject_nan)
    for block in (metrics["untrained"], metrics["validation"][0], metrics["test"]):
        assert block["fine"]["map@r"] is None and block["fine"]["num_queries"] == 0
        assert 0 <= block["middle"]["map@r"] <= 1
    json.loads((out / "run_info.json").read_text(), parse_constant=_reject_nan)
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0  # read back as NaN: the summary prints nan
    assert "nan" in capsys.readouterr().out.splitlines()[-5]
    assert json.loads((out / "metrics.json").read_text(), parse_constant=_reject_nan) == metrics


def _falling_validation(monkeypatch) -> None:
    """Validation's fine/map@r 0.5, 0.4, 0.3, ... by epoch (0.5 - 0.1 x the epoch) while fitting: patience 1 stops
    after the second round."""
    from dynametric.engine.module import MetricLearningModule

    evaluate = MetricLearningModule._evaluate_buffer

    def falling(self):
        results = evaluate(self)
        if self.trainer.state.fn == "fit":
            results["fine"]["map@r"] = 0.5 - 0.1 * self.current_epoch
        return results

    monkeypatch.setattr(MetricLearningModule, "_evaluate_buffer", falling)


def test_early_stopping_is_reported_in_the_output_and_run_info(tmp_path, capsys, monkeypatch):
    _falling_validation(monkeypatch)  # patience 1 stops after epoch 1
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress", "run.report=false",
                 "trainer.max_epochs=4", "trainer.patience=1"]) == 0
    text = capsys.readouterr().out
    reason = "val/fine/map@r did not improve in 1 validation round(s) (trainer.patience=1; best 0.5000)"
    assert f"early stopping ended training after epoch 1: {reason}" in text
    info = json.loads((out / "run_info.json").read_text())
    assert info["early_stopping"] == {"epoch": 1, "reason": reason, "patience": 1, "best_score": 0.5}
    assert info["selected"]["epoch"] == 0


def test_patience_and_a_plateau_schedule_without_validation_are_warning_lines(tmp_path, capsys):
    import warnings

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress", "run.report=false",
                     "data.val_split=null", "data.val_fraction=0", "trainer.patience=2", "trainer.max_epochs=1",
                     "optim.scheduler.name=plateau"]) == 0
    text = capsys.readouterr().err  # warnings on stderr
    assert "warning: trainer.patience=2 is ignored: the run has no validation data" in text
    assert "warning: optim.scheduler.name=plateau in a run without validation data: the learning rate never " \
           "changes" in text
    assert not [w for w in caught if "plateau" in str(w.message) or "patience" in str(w.message)]  # was: raw


def test_the_printed_epochs_are_those_metrics_json_records(tmp_path, capsys, monkeypatch):
    """trainer.val_every 2, max_epochs 5, patience 1, a falling score: the note listed the validated epochs from 1
    (`after epochs 2, 4`) while metrics.json and the early-stopping line number them from 0 (rounds at epochs 1 and
    3, `after epoch 3`). One numbering now: the note's list is metrics.json's, and early stopping names its last."""
    import re

    _falling_validation(monkeypatch)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress", "run.report=false",
                 "trainer.max_epochs=5", "trainer.val_every=2", "trainer.patience=1"]) == 0
    captured = capsys.readouterr()
    listed = re.search(r"validation runs after epochs ([0-9, ]+) only \(epochs numbered from 0, as in "
                       r"metrics\.json\)", captured.err)
    assert listed is not None, captured.err
    epochs = [int(e) for e in listed.group(1).split(", ")]
    recorded = [round_["epoch"] for round_ in json.loads((out / "metrics.json").read_text())["validation"]]
    assert epochs == recorded == [1, 3]
    assert f"early stopping ended training after epoch {recorded[-1]}: " in captured.out


@pytest.mark.parametrize("overrides, expected", [
    (["optim.scheduler.name=step", "trainer.max_epochs=20"],
     "note: optim.scheduler.step_size 30 >= trainer.max_epochs 20: the step schedule never lowers the rate"),
    (["optim.scheduler.name=multistep", "optim.scheduler.milestones=[20,25]", "trainer.max_epochs=20"],
     "note: optim.scheduler.milestones 20, 25 >= trainer.max_epochs 20: the multistep schedule never lowers the rate "
     "(a milestone m lowers it from epoch m on, numbered from 0)"),
    (["optim.scheduler.name=multistep", "optim.scheduler.milestones=[5,20]", "trainer.max_epochs=20"],
     "note: optim.scheduler.milestones 20 >= trainer.max_epochs 20: those never fire, and the multistep schedule "
     "lowers the rate at milestone(s) 5 only"),
    # the tiny data: 4 batches an epoch, so 4 optimizer steps (2 with accumulation 3: the short last one steps too)
    (["optim.scheduler.name=cosine", "optim.scheduler.warmup_epochs=1", "trainer.max_epochs=3", "trainer.max_steps=2"],
     "note: trainer.max_steps 2 ends the run inside the warm-up of optim.scheduler.warmup_epochs 1 (4 optimizer steps "
     "of 4 per epoch): the rate never reaches optim.lr (at most 2/4 of it)"),
    (["optim.scheduler.name=cosine", "optim.scheduler.warmup_epochs=1", "trainer.max_epochs=3", "trainer.max_steps=1",
      "trainer.accumulate_grad_batches=3"],
     "note: trainer.max_steps 1 ends the run inside the warm-up of optim.scheduler.warmup_epochs 1 (2 optimizer steps "
     "of 2 per epoch): the rate never reaches optim.lr (at most 1/2 of it)"),
    (["optim.scheduler.name=step", "optim.scheduler.step_size=2", "trainer.max_epochs=5", "trainer.max_steps=8"],
     "note: trainer.max_steps 8 ends the run in epoch 1 (numbered from 0; 4 optimizer step(s) per epoch), before "
     "epoch 2 (optim.scheduler.step_size), where the step schedule first lowers the rate: the step schedule never "
     "lowers the rate"),
    # gamma 1: the drops multiply the rate by 1 (said once, not also the step_size / milestone note)
    (["optim.scheduler.name=step", "optim.scheduler.step_size=2", "optim.scheduler.gamma=1", "trainer.max_epochs=5"],
     "note: optim.scheduler.gamma 1: the step schedule multiplies the rate by gamma at each drop, so it never lowers "
     "the rate; set 0 < gamma < 1 to lower it"),
    (["optim.scheduler.name=multistep", "optim.scheduler.milestones=[2,30]", "optim.scheduler.gamma=1.0",
      "trainer.max_epochs=5"],
     "note: optim.scheduler.gamma 1: the multistep schedule multiplies the rate by gamma at each drop"),
    # schedules that do take effect: no note (the rate drops at step 8 of 9; reaches optim.lr at step 4 of 4; at
    # step 2 of 3 with accumulation 3; multistep's milestone 19 is the last epoch)
    (["optim.scheduler.name=step", "optim.scheduler.step_size=2", "trainer.max_epochs=5", "trainer.max_steps=9"], None),
    (["optim.scheduler.name=cosine", "optim.scheduler.warmup_epochs=1", "trainer.max_epochs=3", "trainer.max_steps=4"],
     None),
    (["optim.scheduler.name=cosine", "optim.scheduler.warmup_epochs=1", "trainer.max_epochs=3", "trainer.max_steps=2",
      "trainer.accumulate_grad_batches=3"], None),
    (["optim.scheduler.name=multistep", "optim.scheduler.milestones=[19]", "trainer.max_epochs=20"], None),
    (["optim.scheduler.name=step", "optim.scheduler.step_size=19", "trainer.max_epochs=20"], None),
])
def test_a_schedule_that_cannot_take_effect_is_noted(tmp_path, capsys, overrides, expected):
    """The step schedule's default step_size 30 with max_epochs 20, multistep milestones at or after the last
    epoch, a max_steps that ends the run inside the warm-up or before the first drop: accepted without a word, the
    rate never lowered (or never reaching optim.lr). The dry run says so, counting the steps an epoch really has."""
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    assert main(["train", "--dry-run", "--config", str(cfg), *overrides]) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if line.startswith("note: ") and "the rate" in line]
    if expected is None:
        assert said == []
    else:
        assert len(said) == 1 and said[0].startswith(expected), err


def test_the_run_prints_the_schedule_note_of_its_dry_run(tmp_path, capsys):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    overrides = ["optim.scheduler.name=cosine", "optim.scheduler.warmup_epochs=1", "trainer.max_epochs=3",
                 "trainer.max_steps=2"]
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress", "run.report=false",
                 *overrides]) == 0
    assert ("note: trainer.max_steps 2 ends the run inside the warm-up of optim.scheduler.warmup_epochs 1 (4 "
            "optimizer steps of 4 per epoch): the rate never reaches optim.lr (at most 2/4 of it)"
            ) in capsys.readouterr().err


def test_a_val_every_that_does_not_divide_max_epochs_is_noted(capsys):
    """trainer.val_every 2 with max_epochs 3 validated after epoch 2 only: epoch 3 was trained, never validated and
    could never be best.ckpt, without a word (the run prints the same note as the dry run)."""
    from dynametric.config import load_config
    from dynametric.pipeline.run_checks import validation_note

    assert main(["train", "--dry-run", "trainer.max_epochs=3", "trainer.val_every=2"]) == 0
    assert ("note: trainer.val_every 2 does not divide trainer.max_epochs 3: validation runs after epoch 1 only "
            "(epochs numbered from 0, as in metrics.json), so the last 1 epoch(s) are trained but never validated and "
            "best.ckpt is never one of them; set trainer.val_every to a divisor of 3 to validate the final weights"
            ) in capsys.readouterr().err
    assert main(["train", "--dry-run", "trainer.max_epochs=4", "trainer.val_every=2"]) == 0
    assert "does not divide" not in capsys.readouterr().err

    def note(epochs: int, every: int, val: bool = True) -> str | None:
        cfg = load_config(None, [f"trainer.max_epochs={epochs}", f"trainer.val_every={every}"])
        return validation_note(cfg, val)

    assert "after epochs 2, 5, 8 only (epochs numbered from 0, as in metrics.json), so the last 1 epoch(s)" in (
        note(10, 3) or "")
    assert "after epochs 2, 5, ... 17 only (epochs numbered from 0, as in metrics.json), so the last 2 epoch(s)" in (
        note(20, 3) or "")
    assert "runs after epoch 3 only (epochs numbered from 0, as in metrics.json), so the last 3 epoch(s)" in (
        note(7, 4) or "")
    assert "runs never (fewer epochs than trainer.val_every), so the last 2 epoch(s)" in (note(2, 5) or "")
    assert note(10, 5) is None and note(10, 1) is None and note(7, 2, val=False) is None


def test_resuming_a_run_older_than_the_backbone_statistics_keeps_imagenets(finished_run, tmp_path):
    """A run trained before the transforms followed the backbone's statistics (its recorded config has no data.mean
    / data.std) trained with ImageNet's: resumed, it would have switched to the backbone's own (a timm ViT's 0.5)
    mid-training. It keeps ImageNet's, and a later resume (whose checkpoint records them while config.yaml still
    leaves them unset) passes the config check."""
    import shutil

    from dynametric.config import config_hash, load_config
    from dynametric.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from dynametric.pipeline.run import check_resume

    _, out = finished_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    for name in ("best.ckpt", "last.ckpt"):  # both as an older dynametric recorded them
        old = load_checkpoint_file(run / name)
        for key in ("mean", "std"):
            del old["dynametric"]["config"]["data"][key]
        torch.save(old, run / name)
    ckpt = load_checkpoint_file(run / "last.ckpt")
    cfg, notes = load_config(run / "config.yaml"), []
    assert cfg.data.mean is None
    check_resume(cfg, run, note=notes.append)
    assert (cfg.data.mean, cfg.data.std) == (list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert any("resuming with the ImageNet mean and std it trained with" in n for n in notes)
    # what the resumed run then records (config and hash with ImageNet's), config.yaml unchanged
    ckpt["dynametric"]["config"]["data"].update(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    ckpt["dynametric"]["config_hash"] = config_hash(cfg)
    torch.save(ckpt, run / "last.ckpt")
    again, notes = load_config(run / "config.yaml"), []
    check_resume(again, run, note=notes.append)
    assert (again.data.mean, again.data.std) == (list(IMAGENET_MEAN), list(IMAGENET_STD)) and not notes
    # a run of this version (data.mean recorded as unset) is left to the backbone's statistics
    fresh = load_config(out / "config.yaml")
    check_resume(fresh, out, note=notes.append)
    assert fresh.data.mean is None and fresh.data.std is None


def test_wall_time_counts_the_report_and_missing_values_show_as_a_dash(tmp_path, monkeypatch):
    """`wall_time_s` was taken before report.html was written (its embedding map and views took 11 of a resumed
    run's last 14 s in the QA's run), so the report's time was not counted. Here the report takes 3 s more."""
    import time

    import dynametric.pipeline.run as run_module
    from dynametric.pipeline.report import metrics_table

    real, real_run, ends, starts = run_module.write_report, run_module._run_training, [], []

    def slow_report(*args, **kwargs):
        real(*args, **kwargs)
        time.sleep(3.0)
        ends.append(time.time())

    def clocked_run(*args, **kwargs):
        starts.append(time.time())  # the run's clock starts as this function begins
        return real_run(*args, **kwargs)

    monkeypatch.setattr(run_module, "write_report", slow_report)
    monkeypatch.setattr(run_module, "_run_training", clocked_run)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress", "trainer.max_epochs=1"]) == 0
    wall = json.loads((out / "run_info.json").read_text())["wall_time_s"]
    # measured from where the run's clock starts (the command line and config are read before it: up to 2.6 s on a
    # loaded CI machine, which a margin taken from a clock started before main() did not cover); the margin is the
    # rounding to 0.1 s, and the 3 s of the report would be missing without the fix
    assert len(starts) == 1 and wall >= ends[0] - starts[0] - 0.5
    # a metric without a value reads "-" in the main table, as in the per-category one (it read "nan")
    html = metrics_table({"untrained": {"fine": {"map@r": 0.5}}, "test": {"fine": {"map@r": float("nan")}}},
                         ["fine"])
    assert "<td>0.5000</td><td>-</td><td>-</td>" in html and "nan" not in html


@pytest.mark.parametrize("words, rest, before", [
    (["loss.kwargs={margin:", "0.1}"], "0.1}", "loss.kwargs={margin:"),
    (["trainer.max_epochs=", "3"], "3", "trainer.max_epochs="),
])
def test_an_override_the_shell_split_at_a_space_says_to_quote_it(capsys, words, rest, before):
    """An unquoted `loss.kwargs={margin: 0.1}` reaches the command as two words: the second was refused as
    `expected KEY=VALUE, got '0.1}'`, with no word of why."""
    assert main(["train", "--dry-run", *words]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dynametric train: error: key '{rest}': expected KEY=VALUE, got '{rest}'; if it is the rest of {before!r}, "
        f"the shell split that override at a space: quote the whole of it, '{before} {rest}'")
    assert main(["train", "--dry-run", f"{before} {rest}", "trainer.max_epochs=1"]) == 0
