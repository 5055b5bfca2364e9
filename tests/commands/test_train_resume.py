"""`train --resume` never continues a run with a config it was not trained with, never deletes what the run logged,
is refused while another process trains into the folder, and gets over the temporary files a kill leaves."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynametric.cli import main
from dynametric.config import config_hash, load_config, save_config
from dynametric.engine.checkpoint import load_checkpoint_file
from tests.commands.test_train import TINY

CKPTS = ("last.ckpt", "best.ckpt")


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume")
    (root / "tiny.yaml").write_text(TINY)
    out = root / "base"
    assert main(["train", "--config", str(root / "tiny.yaml"), "--out", str(out), "--no-progress",
                 "run.report=false"]) == 0
    return out


def _copy(base: Path, dest: Path, *, pid: int | None = None) -> Path:
    """The run copied to ``dest``; with ``pid``, its config.yaml header names ``dest`` and that process."""
    shutil.copytree(base, dest)
    if pid is not None:
        text = (dest / "config.yaml").read_text().split("\n", 1)[1]
        (dest / "config.yaml").write_text(f"# written by dynametric train for the run folder {dest.resolve()} "
                                          f"(process {pid} on host {socket.gethostname()})\n{text}")
    return dest


def _files(run: Path) -> dict[str, bytes]:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    return int(proc.stdout)


def test_every_checkpoint_records_the_config_it_was_trained_with(base) -> None:
    cfg = load_config(base / "config.yaml")
    for name in CKPTS:
        extra = load_checkpoint_file(base / name)["dynametric"]
        assert extra["config_hash"] == config_hash(cfg)
        assert extra["config"]["model"]["embedding_dim"] == 16


def test_an_empty_config_yaml_is_refused_and_nothing_is_written(base, tmp_path, capsys) -> None:
    run = _copy(base, tmp_path / "G4")
    (run / "config.yaml").write_text("")
    before = _files(run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"dynametric train: error: {run / 'config.yaml'}: is empty: ")
    assert f"restore it, or start a new run with dynametric train --config {run / 'config.yaml'} --out NEW" in err
    assert _files(run) == before


@pytest.mark.parametrize(("override", "changed"), [
    ("data.batch_size=8", "data.batch_size (16 -> 8)"),
    ("model.embedding_dim=24", "model.embedding_dim (16 -> 24)"),  # was a multi-line size-mismatch traceback
])
def test_an_edited_config_yaml_is_refused_naming_what_changed(base, tmp_path, capsys, override, changed) -> None:
    run = _copy(base, tmp_path / "edited")
    save_config(load_config(run / "config.yaml", [override]), run / "config.yaml")
    before = _files(run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"dynametric train: error: {run / 'config.yaml'}: no longer matches the checkpoint it was "
                          f"saved with ({run / 'last.ckpt'} was trained with config hash ")
    assert f"; changed: {changed}); restore it, or start a new run with dynametric train --config " in err
    assert _files(run) == before


def _saved_before_keys_existed(run: Path, keys: tuple[str, ...], **config_yaml: object) -> None:
    """The run as an older dynametric, whose schema lacked ``keys`` (``section.name``), left it: last.ckpt's config
    without them and the hash that version gave it, config.yaml without them (then ``config_yaml``'s
    ``section.name`` values set, as an edit would)."""
    import yaml

    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    header, body = (run / "config.yaml").read_text().split("\n", 1)
    body_dict = yaml.safe_load(body)
    for key in keys:
        section, name = key.split(".")
        del ckpt["dynametric"]["config"][section][name], body_dict[section][name]
    ckpt["dynametric"]["config_hash"] = "0123456789abcdef"  # what the older version hashed its config to
    torch.save(ckpt, run / "last.ckpt")
    for key, value in config_yaml.items():
        section, name = key.split("__")
        body_dict[section][name] = value
    (run / "config.yaml").write_text(f"{header}\n{yaml.safe_dump(body_dict, sort_keys=False)}")


def test_a_resume_after_an_upgrade_that_added_keys_goes_on_with_their_defaults(killed, tmp_path, capsys) -> None:
    run = _copy(killed, tmp_path / "upgraded", pid=_dead_pid())
    _saved_before_keys_existed(run, ("optim.grad_clip", "trainer.compile"))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().err  # notes on stderr
    assert [line for line in out.splitlines() if "lacks keys" in line] == [
        f"note: {run / 'config.yaml'} lacks keys this dynametric added after {run / 'last.ckpt'} was saved; "
        "resuming with their defaults: optim.grad_clip=None, trainer.compile=False"]
    cfg = load_config(run / "config.yaml")
    assert cfg == load_config(killed / "config.yaml")  # the run's own config, the new keys at their defaults
    last = load_checkpoint_file(run / "last.ckpt")
    assert last["epoch"] == 2  # trained on to the end
    extra = last["dynametric"]  # and its checkpoints record the config it has now
    assert extra["config_hash"] == config_hash(cfg)
    assert extra["config"]["optim"]["grad_clip"] is None and extra["config"]["trainer"]["compile"] is False


def test_a_run_older_than_the_statistics_is_not_said_to_resume_with_their_defaults(killed, tmp_path) -> None:
    """A run saved before data.mean / data.std (and optim.grad_clip) existed: the defaults note said
    'data.mean=None, data.std=None', then the next note that it resumes with ImageNet's: only grad_clip is a
    default there."""
    from dynametric.pipeline.run import check_resume

    run = _copy(killed, tmp_path / "older", pid=_dead_pid())
    _saved_before_keys_existed(run, ("data.mean", "data.std", "optim.grad_clip"))
    if (run / "best.ckpt").exists():  # the run's best.ckpt as the same older version wrote it
        best = torch.load(run / "best.ckpt", weights_only=True)
        for section, name in (("data", "mean"), ("data", "std"), ("optim", "grad_clip")):
            del best["dynametric"]["config"][section][name]
        torch.save(best, run / "best.ckpt")
    cfg, notes = load_config(run / "config.yaml"), []
    check_resume(cfg, run, note=notes.append)
    assert [n for n in notes if "lacks keys" in n] == [
        f"note: {run / 'config.yaml'} lacks keys this dynametric added after {run / 'last.ckpt'} was saved; "
        "resuming with their defaults: optim.grad_clip=None"]
    assert any("resuming with the ImageNet mean and std it trained with" in n for n in notes)


@pytest.mark.parametrize(("edit", "changed"), [
    ({"optim__grad_clip": 1.0}, "optim.grad_clip (absent -> 1.0)"),  # a new key, not at its default
    ({"data__batch_size": 8}, "data.batch_size (16 -> 8)"),  # beside an edited key (the added one is no edit)
])
def test_a_resume_after_an_upgrade_with_an_edit_is_still_refused(base, tmp_path, capsys, edit, changed) -> None:
    run = _copy(base, tmp_path / "edited", pid=_dead_pid())
    _saved_before_keys_existed(run, ("optim.grad_clip",), **edit)
    before = _files(run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "lacks keys" not in captured.out + captured.err
    assert captured.err.startswith(f"dynametric train: error: {run / 'config.yaml'}: no longer matches the checkpoint "
                                   f"it was saved with ({run / 'last.ckpt'} was trained with config hash "
                                   "0123456789abcdef, this config hashes to ")
    assert f"; changed: {changed}); restore it, or start a new run with dynametric train --config " in captured.err
    assert _files(run) == before


def test_what_counts_as_keys_added_at_their_defaults() -> None:
    """Nested sections and the sections of a list (extra_losses[0]) are compared key by key; a changed value, a key
    the new config lacks, or an added key that is not the schema's (a loss keyword) or not at its default is an
    edit (``None``)."""
    import copy

    from dynametric.config import config_from_dict, config_to_dict
    from dynametric.pipeline.resume import _added_defaults

    new = config_to_dict(config_from_dict({"extra_losses": [{"name": "TripletMarginLoss"}],
                                           "loss": {"kwargs": {"margin": 0.1}}}))
    old = copy.deepcopy(new)
    del old["extra_losses"][0]["weight"], old["optim"]["grad_clip"], old["optim"]["scheduler"]
    scheduler = config_to_dict(config_from_dict({}))["optim"]["scheduler"]  # a whole section added
    assert _added_defaults(old, new) == [("extra_losses[0].weight", 1.0), ("optim.scheduler", scheduler),
                                         ("optim.grad_clip", None)]  # in the config's order
    assert _added_defaults(new, new) == []
    for edit in (lambda c: c["extra_losses"][0].update(weight=2.0), lambda c: c["optim"].update(grad_clip=1.0),
                 lambda c: c["optim"]["scheduler"].update(gamma=0.5), lambda c: c["data"].update(batch_size=8),
                 lambda c: c["trainer"].pop("seed"), lambda c: c["extra_losses"].append(c["extra_losses"][0])):
        edited = copy.deepcopy(new)
        edit(edited)
        assert _added_defaults(old, edited) is None
    old_kwargs = copy.deepcopy(old)
    del old_kwargs["loss"]["kwargs"]["margin"]  # a loss keyword is no key of the schema: never an added default
    assert _added_defaults(old_kwargs, new) is None


def _without_hash(run: Path) -> None:
    """last.ckpt as an older dynametric wrote it: no config hash."""
    ckpt = torch.load(run / "last.ckpt", weights_only=True)
    del ckpt["dynametric"]["config_hash"], ckpt["dynametric"]["config"]
    torch.save(ckpt, run / "last.ckpt")


def test_an_old_checkpoint_of_another_width_is_one_line(base, tmp_path, capsys) -> None:
    run = _copy(base, tmp_path / "old")
    _without_hash(run)
    save_config(load_config(run / "config.yaml", ["model.embedding_dim=24"]), run / "config.yaml")
    before = _files(run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    captured = capsys.readouterr()
    warning, error = captured.err.splitlines()  # the warning (a note, on stderr), then the error on one line
    assert warning.startswith(f"warning: {run / 'last.ckpt'} records no config hash")
    assert error.startswith(
        f"dynametric train: error: {run / 'last.ckpt'}: checkpoint does not match the configured model (")
    assert "size mismatch for embedder." in error
    assert _files(run) == before


def test_resume_keeps_the_csv_log_and_an_old_checkpoint_resumes_with_a_warning(base, tmp_path, capsys) -> None:
    run = _copy(base, tmp_path / "finished")
    _without_hash(run)
    rows = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    assert any(r.get("untrained/fine/map@r") for r in rows) and any(r.get("test/fine/map@r") for r in rows)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "records no config hash" in capsys.readouterr().err
    after = list(csv.DictReader((run / "logs" / "metrics.csv").open()))
    assert [{k: v for k, v in r.items() if v} for r in after[:len(rows)]] == \
        [{k: v for k, v in r.items() if v} for r in rows]  # every earlier row kept (was: header + the test row)
    # a finished run resumed trains nothing: its test row is not logged a second time (was: a duplicate row)
    assert len(after) == len(rows) and sum(bool(r.get("test/fine/map@r")) for r in after) == 1


def test_resuming_a_finished_run_adds_to_its_wall_time(base, tmp_path, capsys) -> None:
    run = _copy(base, tmp_path / "finished")
    info = json.loads((run / "run_info.json").read_text())
    info["wall_time_s"] = 1000.0  # the first process's time (the resume takes a few seconds)
    (run / "run_info.json").write_text(json.dumps(info))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    after = json.loads((run / "run_info.json").read_text())["wall_time_s"]
    assert 1000.0 < after < 1000.0 + 300  # accumulated (was: the resume's own time alone)
    assert json.loads((run / "run_info.json").read_text())["selected"]["checkpoint"] == "best.ckpt"


def test_a_killed_run_resumed_counts_the_time_until_its_last_checkpoint(killed, tmp_path, capsys) -> None:
    run = _copy(killed, tmp_path / "run")
    recorded = [v for k, v in load_checkpoint_file(run / "last.ckpt")["callbacks"].items()
                if k.startswith("ResumeState")][0]["elapsed_s"]
    assert recorded > 0
    t0 = __import__("time").monotonic()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    took = __import__("time").monotonic() - t0
    assert recorded < json.loads((run / "run_info.json").read_text())["wall_time_s"] <= recorded + took + 0.1


def test_a_deleted_best_ckpt_is_named_as_missing(base, tmp_path, capsys) -> None:
    run = _copy(base, tmp_path / "finished")
    (run / "best.ckpt").unlink()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    out = "".join(capsys.readouterr())  # the warning on stderr, the testing line on stdout
    assert f"warning: {run / 'best.ckpt'} is missing: testing the final weights" in out
    selected = json.loads((run / "run_info.json").read_text())["selected"]
    assert selected["checkpoint"] == "final weights"
    assert selected["reason"].startswith("best.ckpt is missing from the run folder")  # was: validation wrote none
    assert "validation wrote no best.ckpt" not in out


def test_a_second_resume_while_the_run_trains_is_refused(base, tmp_path, capsys) -> None:
    # the header names a running process (the one that started pytest, not this one): the run is training
    run = _copy(base, tmp_path / "busy", pid=os.getppid())
    before = _files(run)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == (f"dynametric train: error: key '--resume': run folder {run} is being trained by process "
                   f"{os.getppid()}, which is still running; wait for it or stop it before resuming\n")
    assert _files(run) == before


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="process start times are read from /proc")
def test_a_reused_process_number_does_not_block_the_resume(base, tmp_path, capsys) -> None:
    # the run was killed and its process number now belongs to another process that started after config.yaml was
    # written (a reboot, a new container): that process cannot be training the run, and the resume goes on
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run = _copy(base, tmp_path / "reused", pid=other.pid)
        os.utime(run / "config.yaml", (1_000_000_000, 1_000_000_000))  # the header was written long ago (2001)
        assert main(["train", "--resume", str(run), "--no-progress"]) == 0
        assert "being trained by process" not in capsys.readouterr().err
    finally:
        other.kill()
        other.wait()


def _writer_temp_name(target: str, scratch: Path) -> str:
    """The name of a temporary file the atomic writer (dynametric.utils.io) really makes for a file named
    ``target`` (what a kill during that write leaves), taken from a write of ``scratch/target``."""
    from dynametric.utils.io import atomic_write_with

    names: list[str] = []
    atomic_write_with(scratch / target, lambda tmp: names.append(Path(tmp).name))
    return names[0]


def test_a_resumed_run_names_its_process_and_removes_a_killed_writes_temporary_files(base, tmp_path, capsys) -> None:
    run = _copy(base, tmp_path / "killed", pid=_dead_pid())
    best_tmp, csv_tmp = _writer_temp_name("best.ckpt", tmp_path), _writer_temp_name("metrics.csv", tmp_path)
    (run / best_tmp).write_bytes(b"half a checkpoint")
    (run / "logs" / csv_tmp).write_text("step\n")
    (run / ".notes.txt.abc123.tmp").write_text("the user's\n")  # not a temporary file of the run's
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().err  # notes on stderr
    assert (f"run folder {run}: removed the temporary files a stopped process left ({best_tmp}, "
            f"logs/{csv_tmp})") in out
    assert not (run / best_tmp).exists() and not (run / "logs" / csv_tmp).exists()
    assert (run / ".notes.txt.abc123.tmp").read_text() == "the user's\n"
    assert (run / "config.yaml").read_text().startswith(
        f"# written by dynametric train for the run folder {run.resolve()} (process {os.getpid()} on host ")
    assert load_config(run / "config.yaml") == load_config(base / "config.yaml")


def test_only_names_the_atomic_writer_makes_count_as_the_runs_temporary_files(tmp_path) -> None:
    """A file named like a run file's temporary file but not in the writer's pattern (``.<name>.<8 random
    characters>.tmp``), or one of a file the run never writes (in a folder where it writes none), is not the run's:
    a resume keeps it, and beside an unstarted run it keeps the folder from being taken for that run's. The
    writer's temporary file of logs/hparams.yaml is the run's since that file is replaced atomically (Lightning
    wrote it in place)."""
    from dynametric.pipeline.resume import claim_resumed_run
    from dynametric.pipeline.run_folder import unstarted_run_files

    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "config.yaml").write_text(f"# written by dynametric train for the run folder {run.resolve()} (process "
                                     f"{_dead_pid()} on host {socket.gethostname()})\nseed: 1\n")
    (run / "metrics.json").write_text("{}\n")
    real = _writer_temp_name("last.ckpt", tmp_path)
    assert real.startswith(".last.ckpt.") and len(real) == len(".last.ckpt.") + 8 + len(".tmp")
    look_alikes = [".metrics.json.abc123.tmp", ".last.ckpt.ABCDEFGH.tmp", ".best.ckpt.abcdefgh.old.tmp",
                   "logs/.hparams.yaml.ABCDEFGH.tmp", "logs/" + _writer_temp_name("notes.yaml", tmp_path),
                   _writer_temp_name("hparams.yaml", tmp_path)]
    for name in look_alikes:
        (run / name).write_text("the user's\n")
    assert unstarted_run_files(run) is None  # the look-alikes are not the unstarted run's: nothing is replaced
    (run / real).write_bytes(b"half a checkpoint")
    hparams_tmp = "logs/" + _writer_temp_name("hparams.yaml", tmp_path)
    (run / hparams_tmp).write_text("half a yaml")
    lines: list[str] = []
    claim_resumed_run(run, lines.append)
    assert len(lines) == 1 and lines[0].startswith(f"run folder {run}: removed the temporary files a stopped process "
                                                   "left (")
    assert sorted(lines[0][lines[0].index("(") + 1:-1].split(", ")) == sorted([real, hparams_tmp])
    assert not (run / real).exists() and not (run / hparams_tmp).exists()
    assert all((run / name).read_text() == "the user's\n" for name in look_alikes)


def test_a_kill_while_the_first_checkpoint_was_written(tmp_path, capsys, monkeypatch) -> None:
    from tests.commands.test_bad_input_train import _interrupted_run

    run = _interrupted_run(tmp_path, monkeypatch)
    (run / ".last.ckpt.q8w7e6r5.tmp").write_bytes(b"half a checkpoint")  # SIGKILL during the first save
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "no last.ckpt to resume from (the run stopped before its first checkpoint; start it again with " \
           f"dynametric train --config {run / 'config.yaml'} --out {run})" in capsys.readouterr().err
    assert main(["train", "--config", str(run / "config.yaml"), "--out", str(run), "--no-progress",
                 "trainer.max_steps=2"]) == 0
    assert ".last.ckpt.q8w7e6r5.tmp" in capsys.readouterr().err  # named among the replaced files
    assert not (run / ".last.ckpt.q8w7e6r5.tmp").exists() and (run / "last.ckpt").is_file()


def test_metrics_json_holds_every_validation_round_of_a_killed_run(tmp_path) -> None:
    from dynametric.engine.callbacks import ValidationToMetrics
    from dynametric.engine.trainer import build_trainer
    from tests.engine.test_resume import Crash, CrashAt, _setup

    module, dm, settings = _setup(tmp_path, -1, every=0)
    settings.max_epochs = 3
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"untrained": {"fine": {"map@r": 0.1}}, "validation": [],
                                                  "test": {}}))
    with pytest.raises(Crash):  # killed in the second epoch (5 batches per epoch)
        build_trainer(settings, dm, run, callbacks=[ValidationToMetrics(run / "metrics.json"),
                                                    CrashAt(7).callback]).fit(module, datamodule=dm)
    metrics = json.loads((run / "metrics.json").read_text())
    assert list(metrics) == ["untrained", "validation", "test"] and metrics["untrained"] == {"fine": {"map@r": 0.1}}
    assert [v["epoch"] for v in metrics["validation"]] == [0]
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []


# ------------------------------------------------------------------ a run folder that was copied or moved
def _score(path: Path) -> tuple[int, float]:
    """The epoch of ``path`` (best.ckpt) and the monitored score its ModelCheckpoint state records."""
    ckpt = load_checkpoint_file(path)
    (state,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("ModelCheckpoint")]
    return int(ckpt["epoch"]), float(state["best_model_score"])


@pytest.fixture(scope="module")
def killed(tmp_path_factory) -> Path:
    """A 3-epoch run killed (Ctrl-C) in its second epoch: best.ckpt holds epoch 0, last.ckpt a mid-epoch step."""
    from dynametric.engine.module import MetricLearningModule

    root = tmp_path_factory.mktemp("killed")
    (root / "tiny.yaml").write_text(TINY)
    out = root / "base"
    step = MetricLearningModule.training_step

    def stop_in_the_second_epoch(self, batch, batch_idx):
        if self.current_epoch == 1 and batch_idx == 1:
            raise KeyboardInterrupt
        return step(self, batch, batch_idx)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(MetricLearningModule, "training_step", stop_in_the_second_epoch)
        assert main(["train", "--config", str(root / "tiny.yaml"), "--out", str(out), "--no-progress",
                     "run.report=false", "trainer.max_epochs=3", "trainer.checkpoint_every_n_steps=1"]) == 130
    ckpt = load_checkpoint_file(out / "last.ckpt")
    assert ckpt["epoch"] == 1 and (out / "best.ckpt").is_file() and _score(out / "best.ckpt")[0] == 0
    return out


def _worse_validation(monkeypatch, score: float = 0.0) -> None:
    """Every validation round of the resumed run scores ``score`` on the monitored metric (0: worse than
    best.ckpt's)."""
    from dynametric.engine.module import MetricLearningModule

    evaluate = MetricLearningModule._evaluate_buffer

    def worse(self):
        results = evaluate(self)
        if self.trainer.state.fn == "fit":
            results["fine"]["map@r"] = score
        return results

    monkeypatch.setattr(MetricLearningModule, "_evaluate_buffer", worse)


@pytest.mark.parametrize("how", ["copied", "moved"])
def test_a_copied_or_moved_run_folder_keeps_its_best_checkpoint(killed, tmp_path, capsys, monkeypatch, how) -> None:
    import warnings

    source = _copy(killed, tmp_path / "source")
    best_before = _score(source / "best.ckpt")
    assert best_before[1] > 0.0
    if how == "copied":
        run = _copy(source, tmp_path / "G4")
    else:
        run = tmp_path / "renamed"
        source.rename(run)
    best_bytes = (run / "best.ckpt").read_bytes()
    _worse_validation(monkeypatch)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert (run / "best.ckpt").read_bytes() == best_bytes  # not replaced by a worse model
    assert _score(run / "best.ckpt") == best_before
    assert not [w for w in caught if "dirpath has changed" in str(w.message)]
    last = load_checkpoint_file(run / "last.ckpt")
    (state,) = [v for k, v in last["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert float(state["best_model_score"]) == best_before[1]  # restored, and kept in every later checkpoint
    assert state["dirpath"] == str(run.resolve()) and state["best_model_path"] == str(run.resolve() / "best.ckpt")
    assert list(state["best_k_models"]) == [str(run.resolve() / "best.ckpt")]
    info = json.loads((run / "run_info.json").read_text())
    assert info["selected"]["epoch"] == 0  # the run was tested with the best epoch's weights
    if how == "copied":
        assert _score(source / "best.ckpt") == best_before and (source / "best.ckpt").is_file()
    capsys.readouterr()


@pytest.mark.parametrize("how", ["copied", "moved"])
def test_the_config_header_of_a_copied_or_moved_run_folder_names_its_new_folder_after_a_resume(base, tmp_path, capsys,
                                                                                               how) -> None:
    """config.yaml's first line names the run folder (what recognises the folder as the run's); a resume in the
    folder's new place rewrites it, atomically and with the rest of the file as it was, and removes the temporary
    files a kill left there; a copy's source is not touched."""
    source = _copy(base, tmp_path / "source", pid=_dead_pid())
    stale = _writer_temp_name("metrics.json", tmp_path)
    (source / stale).write_text("{")
    source_config = (source / "config.yaml").read_bytes()
    body = source_config.decode().split("\n", 1)[1]
    if how == "copied":
        run = _copy(source, tmp_path / "G4")
    else:
        run = tmp_path / "renamed"
        source.rename(run)
    assert (run / "config.yaml").read_text().startswith(f"# written by dynametric train for the run folder "
                                                        f"{source.resolve()} (process ")  # stale until the resume
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().err  # notes on stderr
    assert (f"run folder {run}: config.yaml named the run folder {source.resolve()} (the folder was moved or "
            "copied); it now names this one") in out
    assert f"removed the temporary files a stopped process left ({stale})" in out and not (run / stale).exists()
    first, rest = (run / "config.yaml").read_text().split("\n", 1)
    assert first == (f"# written by dynametric train for the run folder {run.resolve()} (process {os.getpid()} on "
                     f"host {socket.gethostname()})")
    assert rest == body
    if how == "copied":
        assert (source / "config.yaml").read_bytes() == source_config and (source / stale).read_text() == "{"


def test_a_copied_run_folder_still_replaces_its_best_checkpoint_with_a_better_one(killed, tmp_path, monkeypatch,
                                                                                  capsys) -> None:
    run = _copy(killed, tmp_path / "G4")
    _worse_validation(monkeypatch, 1.0)  # better than any score of the killed run
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert _score(run / "best.ckpt") == (1, 1.0)  # the first round after the resume
    assert _score(killed / "best.ckpt")[0] == 0  # the folder it was copied from is left as it was
    capsys.readouterr()


@pytest.mark.parametrize("schedule", ["none", "plateau"])
def test_a_run_killed_right_after_an_end_of_epoch_checkpoint_resumes_to_the_uninterrupted_results(
        tmp_path, monkeypatch, capsys, schedule) -> None:
    """Killed right after the end-of-epoch last.ckpt of epoch 0, its best epoch (monitor_mode min), then resumed: the
    same metrics.json, best.ckpt and last.ckpt as the run that was never stopped. The end-of-epoch last.ckpt used to
    be written before that epoch's best score (and its plateau step) was recorded: the resumed run replaced
    best.ckpt with a later, worse epoch (and kept a learning rate the plateau schedule had lowered)."""
    from dynametric.engine.module import MetricLearningModule

    (tmp_path / "tiny.yaml").write_text(TINY)
    args = ["--config", str(tmp_path / "tiny.yaml"), "--no-progress", "run.report=false", "trainer.max_epochs=4",
            "trainer.monitor_mode=min", f"optim.scheduler.name={schedule}",
            *(["optim.scheduler.step_size=1"] if schedule == "plateau" else [])]
    straight, run = tmp_path / "straight", tmp_path / "killed"
    assert main(["train", "--out", str(straight), *args]) == 0
    step = MetricLearningModule.training_step

    def killed_in_the_second_epoch(self, batch, batch_idx):
        if self.current_epoch == 1:
            raise KeyboardInterrupt
        return step(self, batch, batch_idx)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(MetricLearningModule, "training_step", killed_in_the_second_epoch)
        assert main(["train", "--out", str(run), *args]) == 130
    at_kill = load_checkpoint_file(run / "last.ckpt")
    assert at_kill["epoch"] == 0 and _score(run / "best.ckpt")[0] == 0
    (state,) = [v for k, v in at_kill["callbacks"].items() if k.startswith("ModelCheckpoint")]
    assert float(state["best_model_score"]) == _score(run / "best.ckpt")[1]  # epoch 0's score is in last.ckpt
    if schedule == "plateau":
        assert at_kill["lr_schedulers"][0]["last_epoch"] == 1  # and epoch 0's step of the schedule
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert (run / "metrics.json").read_bytes() == (straight / "metrics.json").read_bytes()
    assert json.loads((straight / "run_info.json").read_text())["selected"]["epoch"] == 0  # the case of the bug
    assert json.loads((run / "run_info.json").read_text())["selected"] == \
        json.loads((straight / "run_info.json").read_text())["selected"]
    for name in CKPTS:
        a, b = load_checkpoint_file(straight / name), load_checkpoint_file(run / name)
        assert (a["epoch"], a["global_step"]) == (b["epoch"], b["global_step"]), name
        for key, value in a["state_dict"].items():
            assert torch.equal(b["state_dict"][key], value), f"{name}: {key}"
        assert a["lr_schedulers"] == b["lr_schedulers"], name
    if schedule == "plateau":  # the schedule did lower the learning rate
        assert load_checkpoint_file(straight / "last.ckpt")["lr_schedulers"][0]["_last_lr"][0] < 0.003
    capsys.readouterr()
