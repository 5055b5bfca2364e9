"""What ``dynametric train`` records in its logger: the validation rounds of ``logs/metrics.csv`` at the steps of
their checkpoints with the values of ``metrics.json``, names MLflow's file store can hold, a logger that fails
during training (one line naming ``run.logger``, the run stopped with the resume line), and the dry run refusing an
MLflow tracking store that cannot work."""

from __future__ import annotations

import csv
import importlib.machinery
import importlib.util
import json
from pathlib import Path

import pytest

from dynametric.cli import main
from dynametric.engine import loggers
from dynametric.engine.checkpoint import load_checkpoint_file
from tests.engine.test_logger_stores import file_store
from tests.metrics_csv import TINY_SYNTHETIC

MULTISCALE = [*TINY_SYNTHETIC, "loss.multiscale=true", "trainer.max_epochs=2", "--no-progress"]


def _rows(run: Path) -> list[dict[str, str]]:
    with (run / "logs" / "metrics.csv").open(encoding="utf-8") as fh:
        return [{k: v for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]


def test_the_csv_log_has_the_rounds_at_their_checkpoints_steps_and_names_mlflow_can_store(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *MULTISCALE]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = _rows(out)
    val = [r for r in rows if "val/fine/map@r" in r]
    # 2 optimizer steps per epoch: the rounds after steps 2 and 4 (were logged at 1 and 3)
    assert [(int(r["step"]), int(r["epoch"])) for r in val] == [(2, 0), (4, 1)]
    best = load_checkpoint_file(out / "best.ckpt")
    assert int(val[best["epoch"]]["step"]) == best["global_step"]
    for row, round_ in zip(val, metrics["validation"]):  # the values of metrics.json, not their float32 roundings
        for scale in ("fine", "middle", "coarse", "mean"):
            assert float(row[f"val/{scale}/map@r"]) == round_[scale]["map@r"]
        assert row["val/fine/num_queries"] == str(round_["fine"]["num_queries"])  # an integer, not 18.0
    # every row through the MLflow names, into a file store: train/TripletMarginLoss beside its per-scale parts
    names = loggers.MlflowNames()
    mapped = [names({k: v for k, v in r.items() if k != "step"}) for r in rows]
    file_store(tmp_path / "metrics", [name for row in mapped for name in row])
    assert (tmp_path / "metrics" / "train" / "TripletMarginLoss" / "total").is_file()
    assert (tmp_path / "metrics" / "val" / "fine" / "map_at_r").is_file()


def test_a_logger_failing_during_training_stops_the_run_in_one_line_with_the_resume_line(tmp_path, monkeypatch,
                                                                                          capsys):
    # MLflow's file store refused `train/TripletMarginLoss/fine` at the end of epoch 0: a traceback
    original = loggers._KeepingWriter.log_metrics

    def refuse(self, metrics, step=None):
        if "train/loss_epoch" in metrics:
            raise RuntimeError("[Errno 20] Not a directory: 'metrics/train/TripletMarginLoss/fine'")
        return original(self, metrics, step)

    monkeypatch.setattr(loggers._KeepingWriter, "log_metrics", refuse)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *MULTISCALE]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert line.startswith("dynametric train: error: ") and "key 'run.logger': the csv logger failed logging " \
        "train/TripletMarginLoss and 4 more at step 1: RuntimeError: [Errno 20] Not a directory: " \
        "'metrics/train/TripletMarginLoss/fine'; resume with: dynametric train --resume " + str(out) in line
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["validation"]] == [0] and metrics["test"] == {}
    monkeypatch.setattr(loggers._KeepingWriter, "log_metrics", original)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert [int(r["step"]) for r in _rows(out) if "val/fine/map@r" in r] == [2, 4]


def _skinny_mlflow_3(monkeypatch) -> None:
    """An mlflow-skinny 3.18 as far as the checks can tell: installed, no database packages, its file store refused
    (MLFLOW_ALLOW_FILE_STORE not set)."""
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: importlib.machinery.ModuleSpec("mlflow", None)
                        if name == "mlflow" else real(name, *a))
    monkeypatch.setattr(loggers, "_mlflow_version", lambda: "3.18.0")
    monkeypatch.setattr(loggers, "_missing_sql_modules", lambda: ["sqlalchemy", "alembic"])
    monkeypatch.setattr(loggers, "_file_store_refused", lambda: True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_the_dry_run_refuses_an_mlflow_store_that_cannot_work(tmp_path, monkeypatch, capsys):
    # the dry run never built the logger: it passed, and the run failed with a traceback before training
    _skinny_mlflow_3(monkeypatch)
    out = tmp_path / "run"
    assert main(["train", "--dry-run", "--out", str(out), "run.logger=mlflow"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "key 'run.logger': the MLflow tracking store " \
        f"sqlite:///{out.absolute()}/mlruns.db (the run folder's, by default) is a database, which needs " \
        "sqlalchemy, alembic" in err, err
    assert main(["train", "--dry-run", "run.logger=mlflow", "run.logger_options={tracking_uri: file:/x/mlruns}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "key 'run.logger_options.tracking_uri': the MLflow tracking store " \
        "file:/x/mlruns (run.logger_options.tracking_uri) is MLflow's file store, which MLflow 3.18.0 refuses" in err
    assert main(["train", "--out", str(out), "run.logger=mlflow", *TINY_SYNTHETIC]) == 2  # the run: the same line
    assert "key 'run.logger': the MLflow tracking store" in capsys.readouterr().err and not out.exists()
    assert main(["train", "--dry-run", "run.logger=mlflow",
                 "run.logger_options={tracking_uri: http://tracking:5000}"]) == 0  # a server: MLflow's to reach


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="the mlflow extra is not installed")
def test_a_multiscale_run_logs_into_mlflows_file_store(tmp_path, monkeypatch, capsys):
    """The real MLflow (its file store, allowed by MLFLOW_ALLOW_FILE_STORE where MLflow 3 refuses it): the default
    metric names crashed the run at the end of epoch 0; `@` was dropped with a warning per name."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out, store = tmp_path / "run", tmp_path / "mlruns"
    assert main(["train", "--out", str(out), "run.logger=mlflow", f"run.logger_options={{save_dir: {store}}}",
                 *MULTISCALE]) == 0
    assert "Replacing" not in capsys.readouterr().err
    (metrics_dir,) = [p for p in store.glob("*/*/metrics") if p.is_dir()]
    history = {p.relative_to(metrics_dir).as_posix(): [line.split() for line in p.read_text().splitlines()]
               for p in metrics_dir.rglob("*") if p.is_file()}
    assert "train/TripletMarginLoss/total" in history and "train/TripletMarginLoss/fine" in history
    metrics = json.loads((out / "metrics.json").read_text())
    assert [(int(step), float(value)) for _, value, step in history["val/fine/map_at_r"]] == [
        (2, metrics["validation"][0]["fine"]["map@r"]), (4, metrics["validation"][1]["fine"]["map@r"])]
    assert [float(v) for _, v, _ in history["test/mean/recall_at_1"]] == [metrics["test"]["mean"]["recall@1"]]


def test_a_logger_failing_after_the_run_finished_says_the_results_are_written(tmp_path, monkeypatch, capsys):
    # the report's figures go to TensorBoard after metrics.json and report.html are written: a failure there was a
    # bare "the tensorboard logger failed ..." with no word that the run had finished, and no run_info.json
    pytest.importorskip("tensorboard")
    from torch.utils.tensorboard import writer

    def refuse(self, *args, **kwargs):
        raise RuntimeError("the event file's disk went away")

    monkeypatch.setattr(writer.SummaryWriter, "add_image", refuse)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), *TINY_SYNTHETIC, "--no-progress", "run.logger=tensorboard",
                 "run.report=true"]) == 2
    captured = capsys.readouterr()
    line = captured.err.strip().splitlines()[-1]
    assert "Traceback" not in captured.err
    assert line == ("dynametric train: error: <command line> key 'run.logger': the tensorboard logger failed logging "
                    "the report's figures: RuntimeError: the event file's disk went away; the run itself finished "
                    f"(its results: {out / 'metrics.json'}, run_info.json, the checkpoints, report.html); only the "
                    "logger's copy of the run is incomplete"), line
    assert f"wrote {out / 'metrics.json'}" in captured.out  # the summary was printed first
    info = json.loads((out / "run_info.json").read_text())
    assert info["logger_failure"].startswith("the tensorboard logger failed logging the report's figures")
    assert "logged_figures" not in info
    assert json.loads((out / "metrics.json").read_text())["test"]["fine"]["map@r"] >= 0


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="the mlflow extra is not installed")
def test_a_resumed_run_logs_into_the_mlflow_run_it_started(tmp_path, monkeypatch, capsys):
    """A resumed run started a second MLflow run: its validation curve was split over two runs of the store."""
    from dynametric.engine import module

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    original = module.MetricLearningModule.on_train_epoch_start

    def stop_at_epoch_1(self):
        if int(self.current_epoch) == 1:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(module.MetricLearningModule, "on_train_epoch_start", stop_at_epoch_1)
    out, store = tmp_path / "run", tmp_path / "mlruns"
    args = ["run.logger=mlflow", f"run.logger_options={{save_dir: {store}}}", *MULTISCALE]
    assert main(["train", "--out", str(out), *args]) == 130
    assert "resume with: dynametric train --resume" in capsys.readouterr().err
    (run_id,) = [p.name for p in store.glob("*/*") if (p / "metrics").is_dir()]
    assert load_checkpoint_file(out / "last.ckpt")["dynametric"]["logger_run"] == {"logger": "mlflow", "id": run_id}
    monkeypatch.setattr(module.MetricLearningModule, "on_train_epoch_start", original)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert f"note: logging into the mlflow run {run_id} this run started" in capsys.readouterr().err
    runs = [p for p in store.glob("*/*") if (p / "metrics").is_dir()]
    assert [p.name for p in runs] == [run_id]  # one MLflow run: the second epoch's rounds and the test in it
    steps = [int(line.split()[2]) for line in (runs[0] / "metrics" / "val" / "fine" / "map_at_r").read_text()
             .splitlines()]
    assert steps == [2, 4]
    assert (runs[0] / "metrics" / "test" / "mean" / "recall_at_1").is_file()


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="the mlflow extra is not installed")
def test_a_resumed_run_whose_mlflow_run_was_deleted_logs_into_a_new_one(tmp_path, monkeypatch, capsys):
    """The MLflow run a resumed run started was deleted (in MLflow's trash): the resume said it logged into it, then
    stopped at its first write (``must be in 'active' lifecycle_stage``), exit 2, the folder stuck. A run named by
    ``run.logger_options.run_id`` that was deleted is refused before any work, keyed by it."""
    from mlflow.tracking import MlflowClient

    from dynametric.engine import module
    from dynametric.errors import ConfigError

    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    original = module.MetricLearningModule.on_train_epoch_start

    def stop_at_epoch_1(self):
        if int(self.current_epoch) == 1:
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(module.MetricLearningModule, "on_train_epoch_start", stop_at_epoch_1)
    out, store = tmp_path / "run", tmp_path / "mlruns"
    args = ["run.logger=mlflow", f"run.logger_options={{save_dir: {store}}}", *MULTISCALE]
    assert main(["train", "--out", str(out), *args]) == 130
    (run_id,) = [p.name for p in store.glob("*/*") if (p / "metrics").is_dir()]
    client = MlflowClient(tracking_uri=f"file:{store}")
    client.delete_run(run_id)
    monkeypatch.setattr(module.MetricLearningModule, "on_train_epoch_start", original)
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0, capsys.readouterr().err
    err = capsys.readouterr().err
    assert (f"note: the mlflow run {run_id} this run logged into cannot be continued (it was deleted: it is in "
            "MLflow's trash); logging into a new one") in err, err
    assert "logging into the mlflow run" not in err
    new_id = load_checkpoint_file(out / "last.ckpt")["dynametric"]["logger_run"]["id"]
    assert new_id != run_id
    assert client.get_run(run_id).info.lifecycle_stage == "deleted"  # left as it was, in the trash
    new = client.get_run(new_id)
    assert new.info.lifecycle_stage == "active" and "test/mean/recall_at_1" in new.data.metrics
    # the run named by the options: one line, keyed by the option, before the store is written
    with pytest.raises(ConfigError) as caught:
        loggers.build_logger("mlflow", tmp_path / "other", {"save_dir": str(store), "run_id": run_id})
    assert caught.value.key == "run.logger_options.run_id"
    assert caught.value.message == (f"the mlflow run {run_id} was deleted (it is in MLflow's trash): restore it in "
                                    "MLflow or name another run")


def test_a_resumed_run_whose_mlflow_run_is_gone_logs_into_a_new_one(tmp_path, monkeypatch):
    from dynametric.engine.loggers import logger_run
    from dynametric.errors import ConfigError
    from dynametric.pipeline import run as runmod

    calls = []

    def build(name, run_dir, options, *, hparams_metrics=(), continue_run=None):
        calls.append(continue_run)
        if continue_run is not None:
            raise ConfigError("the mlflow logger cannot start: MlflowException: Run 'abc' not found", key="run.logger")
        return "new logger"

    monkeypatch.setattr(runmod, "build_logger", build)
    recorded = {"logger": "mlflow", "id": "abc"}  # what the resumed last.ckpt records (check_resume reads it)
    from dynametric.config import load_config

    notes: list[str] = []
    cfg = load_config(None, ["run.logger=mlflow"])
    assert runmod._run_logger(cfg, tmp_path, [], recorded, notes.append) == "new logger"
    assert calls == [{"logger": "mlflow", "id": "abc"}, None]
    assert notes == ["note: the mlflow run abc this run logged into cannot be continued (the mlflow logger cannot "
                     "start: MlflowException: Run 'abc' not found); logging into a new one"]
    # another logger than the recorded one: nothing to continue
    calls.clear()
    assert runmod._run_logger(load_config(None, ["run.logger=wandb"]), tmp_path, [], recorded,
                              notes.append) == "new logger"
    assert calls == [None]
    assert logger_run(None) is None


def test_a_resumed_wandb_run_continues_its_id_unless_the_options_name_one(tmp_path, monkeypatch):
    made = []

    class Recorder:
        def __init__(self, **kwargs):
            made.append(kwargs)

    monkeypatch.setattr(loggers, "RunWandbLogger", Recorder)
    monkeypatch.setattr(loggers, "check_logger", lambda *a, **k: None)
    record = {"logger": "wandb", "id": "r1"}
    loggers.build_logger("wandb", tmp_path / "run", {"offline": True}, continue_run=record)
    loggers.build_logger("wandb", tmp_path / "run", {"id": "mine"}, continue_run=record)
    loggers.build_logger("wandb", tmp_path / "run", {}, continue_run={"logger": "mlflow", "id": "m"})
    assert made == [{"offline": True, "id": "r1", "resume": "allow", "name": "run", "save_dir": tmp_path / "run"},
                    {"id": "mine", "name": "run", "save_dir": tmp_path / "run"},
                    {"name": "run", "save_dir": tmp_path / "run"}]
