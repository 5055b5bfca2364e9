"""run.logger: TensorBoard receives the per-scale metrics (validation, untrained, test) and the report's figures
as images; the progress bar shows the loss and the monitored metric, not `v_num`; a missing extra is a clear
error before any work; figures are routed to wandb / mlflow through their image APIs."""

from __future__ import annotations

import base64
import importlib.util
import io
import json

import numpy as np
import pytest
from PIL import Image

from dynametric.cli import main
from dynametric.engine import loggers

TINY = ["data.options={images_per_class: 4, image_size: 16, fine_per_shape: {train: 2, val: 1, test: 2}}",
        "data.batch_size=16", "model.embedding_dim=16", "model.backbone_kwargs={width: 8, depth: 2}",
        "trainer.max_epochs=1", "trainer.log_every_n_steps=1"]


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed")
def test_tensorboard_gets_scalars_per_scale_and_report_images(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "run.logger=tensorboard", *TINY, "--progress"]) == 0
    captured = capsys.readouterr()
    bar = captured.out + captured.err
    assert "train/loss_step=" in bar and "val/fine/map@r=" in bar and "v_num" not in bar
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    for scale in ("fine", "middle", "coarse", "mean"):
        assert {f"val/{scale}/map@r", f"untrained/{scale}/map@r", f"test/{scale}/recall@1"} <= scalars
    metrics = json.loads((out / "metrics.json").read_text())
    logged = acc.Scalars("test/coarse/map@r")[-1].value
    assert logged == pytest.approx(metrics["test"]["coarse"]["map@r"], rel=1e-6)
    assert acc.Scalars("val/fine/map@r")[-1].value == pytest.approx(metrics["validation"][-1]["fine"]["map@r"])
    images = acc.Tags()["images"]
    assert "report/training_curves" in images and len(images) >= 4
    assert json.loads((out / "run_info.json").read_text())["logged_figures"] == len(images)
    png = acc.Images("report/training_curves")[-1].encoded_image_string
    assert Image.open(io.BytesIO(png)).size[0] > 100
    # the resolved config is the run's hyperparameters (the loggers got an empty set)
    import yaml

    hparams = yaml.safe_load((out / "tensorboard" / "hparams.yaml").read_text())
    assert hparams["trainer"]["max_epochs"] == 1 and hparams["model"]["embedding_dim"] == 16
    assert hparams["run"]["logger"] == "tensorboard"
    # ... and TensorBoard's HPARAMS tab shows it, with the monitored metric (its data was never written)
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["val/fine/map@r", "test/fine/map@r"]
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["trainer/max_epochs"].number_value == 1 and start.hparams["run/logger"].string_value == \
        "tensorboard"
    # the validation round at the steps done, the step of its checkpoint (was one step earlier)
    info = json.loads((out / "run_info.json").read_text())
    assert [e.step for e in acc.Scalars("val/fine/map@r")] == [info["global_step"]]


def test_missing_extra_is_an_error_before_any_work(monkeypatch, tmp_path, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "run.logger=wandb", *TINY]) == 2
    captured = capsys.readouterr()
    assert "pip install 'dynametric[wandb]'" in captured.err and "run.logger" in captured.err
    assert "evaluating the untrained model" not in captured.out and not (out / "metrics.json").exists()
    assert main(["train", "--dry-run", "run.logger=neptune"]) == 2
    err = capsys.readouterr().err.strip()
    assert "key 'run.logger': unknown logger 'neptune'; valid loggers: csv, tensorboard, wandb, mlflow; a component " \
           "registered by your own code needs its module imported first" in err and len(err.splitlines()) == 1


def test_a_missing_extra_is_refused_by_the_dry_run_too(monkeypatch, capsys):
    """`--dry-run` passed run.logger=tensorboard without tensorboard installed, which the real run refuses."""
    real = importlib.util.find_spec
    missing = ("tensorboard", "tensorboardX")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a))
    assert main(["train", "--dry-run", "run.logger=tensorboard"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dynametric train: error: ") and len(err.splitlines()) == 1
    assert "key 'run.logger': run.logger 'tensorboard' needs the tensorboard package: pip install " \
           "'dynametric[tensorboard]' (or set run.logger=csv)" in err
    assert main(["train", "--dry-run", "run.logger=csv"]) == 0


def _png(colour: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (6, 4), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_report_figures_are_tagged_by_section():
    page = (f"<h1>x</h1><h2>Training curves</h2><img src=\"data:image/png;base64,{_png((255, 0, 0))}\"/>"
            f"<h2>Retrieval &amp; gallery</h2><p>n</p><img src=\"data:image/png;base64,{_png((0, 255, 0))}\"/>"
            f"<img src=\"data:image/png;base64,{_png((0, 0, 255))}\"/><h2>Config</h2><pre>a</pre>")
    figs = loggers.report_figures(page)
    assert [t for t, _ in figs] == ["training_curves", "retrieval_gallery", "retrieval_gallery_2"]
    assert np.asarray(Image.open(io.BytesIO(figs[2][1])))[0, 0].tolist() == [0, 0, 255]


def test_figures_go_to_wandb_and_mlflow_image_apis():
    figs = [("a", base64.b64decode(_png((1, 2, 3))))]
    calls = []

    class WandbLogger:
        def log_image(self, key, images, step):
            calls.append(("wandb", key, images[0].size, step))

    class Experiment:
        def log_image(self, run_id, image, artifact_file):
            calls.append(("mlflow", run_id, image.size, artifact_file))

    class MLFlowLogger:
        run_id = "r1"
        experiment = Experiment()

    class CSVLogger:
        pass

    assert loggers.log_figures(WandbLogger(), figs, 7) == 1
    assert loggers.log_figures(MLFlowLogger(), figs, 7) == 1
    assert loggers.log_figures(CSVLogger(), figs, 7) == 0  # no image support: the figures stay in report.html
    assert calls == [("wandb", "report/a", (6, 4), 7), ("mlflow", "r1", (6, 4), "report/a.png")]


def test_logger_options_reach_the_logger_and_bad_ones_are_config_errors(tmp_path):
    from dynametric.errors import ConfigError

    csv = loggers.build_logger("csv", tmp_path, {"flush_logs_every_n_steps": 5})
    assert csv.log_dir == str(tmp_path / "logs")
    with pytest.raises(ConfigError) as info:
        loggers.build_logger("csv", tmp_path, {"prefx": 1})
    assert (info.value.key, info.value.message) == (
        "run.logger_options.prefx", "the csv logger takes no option 'prefx'; did you mean 'prefix'? it takes "
        "flush_logs_every_n_steps, prefix")
    with pytest.raises(ConfigError) as info:
        loggers.build_logger("csv", tmp_path, {"version": "v2"})
    assert (info.value.key, info.value.message) == (
        "run.logger_options.version", "version is set by dynametric (the csv logger writes under the run folder); "
        "remove it")


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="the tensorboard extra is not installed")
def test_an_unknown_tensorboard_option_is_refused_before_any_work(tmp_path, capsys):
    """TensorBoard's logger passes unknown keys on to the SummaryWriter it makes at its first write: a run with
    `run.logger_options={bogus: 1}` evaluated the untrained model, then failed with two tracebacks and a message
    about logging a float; the dry run accepted it (the csv logger's options too)."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "run.logger=tensorboard", "run.logger_options={flush_sec: 5}", *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith(
        "key 'run.logger_options.flush_sec': the tensorboard logger takes no option 'flush_sec'; did you mean "
        "'flush_secs'? it takes comment, default_hp_metric, filename_suffix, flush_secs, log_graph, max_queue, "
        "prefix, purge_step, sub_dir"), err
    assert not (out / "config.yaml").exists() and not (out / "metrics.json").exists()
    for logger, option in (("tensorboard", "bogus"), ("csv", "nonsense")):
        assert main(["train", "--dry-run", f"run.logger={logger}", f"run.logger_options={{{option}: 1}}"]) == 2
        assert f"the {logger} logger takes no option '{option}'" in capsys.readouterr().err
    assert main(["train", "--dry-run", "run.logger=tensorboard", "run.logger_options={flush_secs: 5}"]) == 0


def test_the_csv_logger_keeps_the_rows_already_in_the_file(tmp_path):
    # a resumed run's logger: Lightning's CSVLogger deleted metrics.csv when it started and wrote only its own rows
    csv_path = tmp_path / "logs" / "metrics.csv"
    first = loggers.build_logger("csv", tmp_path)
    first.log_metrics({"untrained/fine/map@r": 0.25}, step=0)
    first.log_metrics({"train/loss": 1.5}, step=1)
    first.save()
    before = csv_path.read_text()
    assert before.splitlines()[0] == "step,train/loss,untrained/fine/map@r"

    second = loggers.build_logger("csv", tmp_path)  # the resumed process
    second.log_metrics({"train/loss": 1.25}, step=2)
    second.log_metrics({"test/fine/map@r": 0.5}, step=2)  # a column the earlier rows lack
    second.save()
    import csv

    rows = list(csv.DictReader(csv_path.open()))
    assert list(rows[0]) == ["step", "test/fine/map@r", "train/loss", "untrained/fine/map@r"]
    assert [(r["step"], r["train/loss"], r["untrained/fine/map@r"], r["test/fine/map@r"]) for r in rows] == [
        ("0", "", "0.25", ""), ("1", "1.5", "", ""), ("2", "1.25", "", ""), ("2", "", "", "0.5")]
    second.log_metrics({"train/loss": 1.0}, step=3)
    second.save()  # a later write of the same process keeps everything and leaves no temporary file
    assert len(list(csv.DictReader(csv_path.open()))) == 5
    assert sorted(p.name for p in csv_path.parent.iterdir()) == ["metrics.csv"]


def test_the_csv_logger_replaces_hparams_yaml_atomically(tmp_path, monkeypatch):
    """logs/hparams.yaml is written through a temporary file: a failure while writing it (a kill, a full disk)
    leaves the earlier file whole and no temporary file (Lightning wrote it in place, so a failure truncated it)."""
    import yaml

    hparams = tmp_path / "logs" / "hparams.yaml"
    logger = loggers.build_logger("csv", tmp_path)
    logger.log_hyperparams({"lr": 0.5, "name": "run"})
    assert yaml.safe_load(hparams.read_text()) == {"lr": 0.5, "name": "run"}

    def half_written(path, params):  # the YAML writer stops after part of the file, as a full disk stops it
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("lr: 0.")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(loggers, "save_hparams_to_yaml", half_written)
    with pytest.raises(Exception, match="No space left|no space left"):
        logger.log_hyperparams({"lr": 0.25})
    assert yaml.safe_load(hparams.read_text()) == {"lr": 0.5, "name": "run"}
    assert sorted(p.name for p in hparams.parent.iterdir()) == ["hparams.yaml"]


def test_loggers_leave_the_protocol_block_out():
    """The results' `protocol` block (what a query -> gallery or leave-one-out evaluation excluded) is not logged:
    its counts (`queries`, `excluded_pairs`, ...) made `test/protocol/<count>` columns of `logs/metrics.csv`, while
    the validation rounds' logging already skipped it (`MetricLearningModule._log_results`)."""
    results = {"fine": {"map@r": 0.5, "num_queries": 4}, "mean": {"map@r": 0.5},
               "protocol": {"name": "query_gallery", "queries": 4, "gallery": 6, "query_in_gallery": True,
                            "queries_in_gallery": 4, "same_sequence_excluded": False, "excluded_pairs": 4}}
    assert loggers.flat_metrics("test", results) == {"test/fine/map@r": 0.5, "test/fine/num_queries": 4.0,
                                                     "test/mean/map@r": 0.5}
