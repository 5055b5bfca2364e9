"""The run's loggers without their packages: MLflow's metric names (``recall_at_1``; no name that is also the folder
of another, which MLflow's file store cannot hold), the choice and check of MLflow's tracking store, a logger that
cannot start, and a logger whose write fails (one line keyed ``run.logger``, nothing written after it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynametric.engine import loggers
from dynametric.errors import ConfigError


def file_store(root: Path, names) -> None:
    """Each name as MLflow's file store keeps a metric: a file at ``<root>/<name>``, its folders made."""
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write("0 0.5 0\n")


# the rows of the default (multi-scale) run: the epoch means of the term and its per-scale parts, then a round
DEFAULT_RUN_ROWS = [
    {"train/loss_step": 0.3, "train/lr/backbone": 1e-3, "train/lr/head": 1e-3, "epoch": 0},
    {"val/fine/map@r": 0.1, "val/fine/recall@1": 0.2, "val/fine/num_queries": 324, "val/mean/map@r": 0.1, "epoch": 0},
    {"train/TripletMarginLoss": 0.31, "train/TripletMarginLoss/fine": 0.06, "train/TripletMarginLoss/middle": 0.12,
     "train/TripletMarginLoss/coarse": 0.13, "train/loss_epoch": 0.31, "epoch": 0},
    {"train/TripletMarginLoss": 0.29, "train/TripletMarginLoss/fine": 0.05, "train/TripletMarginLoss/middle": 0.11,
     "train/TripletMarginLoss/coarse": 0.13, "train/loss_epoch": 0.29, "epoch": 1},
    {"test/fine/fnmr@fmr=0.1": 0.4, "test/fine/map@r": 0.2, "test/mean/recall@1": 0.3},
]


def test_mlflow_names_fit_its_file_store(tmp_path):
    # the default run crashed at the end of epoch 0: train/TripletMarginLoss (a file) and train/TripletMarginLoss/fine
    # (which needs a folder of that name) cannot both exist
    with pytest.raises((NotADirectoryError, FileExistsError)):  # MLflow: NotADirectoryError
        file_store(tmp_path / "raw", [name for row in DEFAULT_RUN_ROWS for name in row])
    names = loggers.MlflowNames()
    mapped = [names(row) for row in DEFAULT_RUN_ROWS]
    file_store(tmp_path / "mapped", [name for row in mapped for name in row])
    assert mapped[2] == {"train/TripletMarginLoss/total": 0.31, "train/TripletMarginLoss/fine": 0.06,
                         "train/TripletMarginLoss/middle": 0.12, "train/TripletMarginLoss/coarse": 0.13,
                         "train/loss_epoch": 0.31, "epoch": 0}
    assert mapped[1] == {"val/fine/map_at_r": 0.1, "val/fine/recall_at_1": 0.2, "val/fine/num_queries": 324,
                         "val/mean/map_at_r": 0.1, "epoch": 0}
    assert list(mapped[4]) == ["test/fine/fnmr_at_fmr_eq_0.1", "test/fine/map_at_r", "test/mean/recall_at_1"]
    assert names({"train/TripletMarginLoss": 0.2}) == {"train/TripletMarginLoss/total": 0.2}  # in later rows too


def test_mlflow_name_mapping_is_reversible():
    assert loggers.mlflow_name("val/fine/recall@1") == "val/fine/recall_at_1"
    assert loggers.mlflow_name("val/feine Klasse/map@r") == "val/feine Klasse/map_at_r"  # spaces MLflow keeps
    assert loggers.mlflow_name("val/纲/map@r") == "val/_x7eb2_/map_at_r"  # Lightning dropped such characters
    for name in ("val/fine/recall@1", "test/mean/fnmr@fmr=0.1", "train/Loss@head/part"):
        back = loggers.mlflow_name(name).replace("_at_", "@").replace("_eq_", "=")
        assert back == name
    with pytest.raises(ConfigError, match="the same MLflow name 'a/total'"):
        loggers.MlflowNames()({"a": 1.0, "a/total": 2.0, "a/b": 3.0})


def _mlflow(monkeypatch, version: str = "3.18.0", sql: bool = True, refused: bool = True) -> None:
    monkeypatch.setattr(loggers, "_mlflow_version", lambda: version)
    monkeypatch.setattr(loggers, "_missing_sql_modules", lambda: [] if sql else ["sqlalchemy", "alembic"])
    monkeypatch.setattr(loggers, "_file_store_refused", lambda: refused)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def test_mlflow_keeps_its_store_in_the_run_folder(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _mlflow(monkeypatch)  # MLflow 3 with its database packages: sqlite, artifacts beside it
    assert loggers.mlflow_store(run) == {"tracking_uri": f"sqlite:///{run.absolute()}/mlruns.db",
                                         "artifact_location": str(run.absolute() / "mlartifacts")}
    _mlflow(monkeypatch, version="2.17.0", sql=False, refused=False)  # MLflow 2: its file store, as before
    assert loggers.mlflow_store(run) == {"tracking_uri": f"file:{run.absolute()}/mlruns"}
    _mlflow(monkeypatch, sql=False, refused=False)  # mlflow-skinny 3 with MLFLOW_ALLOW_FILE_STORE=true
    assert loggers.mlflow_store(run) == {"tracking_uri": f"file:{run.absolute()}/mlruns"}
    (run / "mlruns").mkdir(parents=True)  # a run that started on the file store stays on it
    _mlflow(monkeypatch, refused=False)
    assert loggers.mlflow_store(run)["tracking_uri"] == f"file:{run.absolute()}/mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")  # MLflow's own variable is honoured
    assert loggers.mlflow_store(run) == {"tracking_uri": "http://tracking:5000"}
    assert loggers.mlflow_store(run, {"tracking_uri": "sqlite:////db/x.db", "artifact_location": "/a"}) == {
        "tracking_uri": "sqlite:////db/x.db"}  # the option first; its artifact_location stays the user's


def test_an_mlflow_store_that_cannot_work_is_one_line(tmp_path, monkeypatch):
    run = tmp_path / "run"
    _mlflow(monkeypatch, sql=False)  # mlflow-skinny 3: no database packages, and its file store refused
    with pytest.raises(ConfigError) as info:
        loggers.mlflow_store(run)
    assert info.value.key == "run.logger" and "\n" not in str(info.value)
    assert f"the MLflow tracking store sqlite:///{run.absolute()}/mlruns.db (the run folder's, by default) is a " \
           "database, which needs sqlalchemy, alembic" in info.value.message
    assert "MLFLOW_ALLOW_FILE_STORE=true" in info.value.message and "tracking_uri" in info.value.message
    with pytest.raises(ConfigError) as info:
        loggers.mlflow_store(run, {"tracking_uri": "file:/somewhere/mlruns"})
    assert info.value.key == "run.logger_options.tracking_uri"
    assert info.value.message.startswith("the MLflow tracking store file:/somewhere/mlruns "
                                         "(run.logger_options.tracking_uri) is MLflow's file store, which MLflow "
                                         "3.18.0 refuses (maintenance mode) unless MLFLOW_ALLOW_FILE_STORE=true")
    with pytest.raises(ConfigError, match="file store") as info:
        loggers.mlflow_store(run, {"save_dir": str(tmp_path / "elsewhere")})
    assert info.value.key == "run.logger_options.save_dir"
    assert not run.exists()  # checked, nothing written


def test_a_logger_that_cannot_start_is_one_line(tmp_path, monkeypatch):
    # only a TypeError was caught: anything else the logger raised as it started was a traceback
    def refuse(self, *args, **kwargs):
        raise RuntimeError("the store did not open.\nDetails: ...")

    monkeypatch.setattr(loggers.KeepingCSVLogger, "__init__", refuse)
    with pytest.raises(ConfigError) as info:
        loggers.build_logger("csv", tmp_path)
    assert (info.value.key, info.value.message) == (
        "run.logger", "the csv logger cannot start: RuntimeError: the store did not open.")


def test_a_failed_write_is_one_line_and_the_logger_writes_nothing_after_it(tmp_path, monkeypatch):
    logger = loggers.build_logger("csv", tmp_path)
    logger.log_metrics({"train/loss_step": 0.5, "epoch": 0}, step=0)
    logger.save()

    def full(self):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loggers._KeepingWriter, "save", full)
    logger.log_metrics({"train/loss_epoch": 0.25, "train/x": 1.0, "epoch": 0}, step=9)
    with pytest.raises(loggers.LoggerFailure) as info:
        logger.save()
    assert (info.value.key, info.value.message) == (
        "run.logger", "the csv logger failed saving: OSError: [Errno 28] No space left on device")
    logger.log_metrics({"train/loss_step": 0.5}, step=10)  # nothing more: Lightning finalizes a failed run
    logger.save()
    logger.finalize("failed")
    assert (tmp_path / "logs" / "metrics.csv").read_text().splitlines() == ["epoch,step,train/loss_step", "0,0,0.5"]
