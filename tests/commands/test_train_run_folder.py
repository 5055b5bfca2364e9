"""The run folder of ``dynametric train``: a run killed between its first ``best.ckpt`` and its first ``last.ckpt``
(started again, not refused), a folder that cannot be made or written (one line keyed ``--out`` before any data is
read, by the run and the dry run), and the claim that keeps two runs out of one folder (``train.lock``)."""

from __future__ import annotations

from pathlib import Path

from dynametric.cli import main
from dynametric.engine.callbacks import ResumeState
from tests.metrics_csv import TINY_SYNTHETIC

TRAIN = [*TINY_SYNTHETIC, "--no-progress"]


# ------------------------------------------------------------------ killed between best.ckpt and the first last.ckpt
def test_a_run_killed_between_its_first_best_and_last_checkpoint_starts_again(tmp_path, capsys, monkeypatch) -> None:
    run = tmp_path / "run"

    def killed(self, trainer):  # the end of the first epoch: best.ckpt is written, last.ckpt not (a SIGKILL there)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(ResumeState, "_save", killed)
        assert main(["train", "--out", str(run), *TRAIN, "trainer.max_epochs=2"]) == 130
    (run / ".last.ckpt.q8w7e6r5.tmp").write_bytes(b"half a checkpoint")  # the torn first last.ckpt of the kill
    assert (run / "best.ckpt").is_file() and not (run / "last.ckpt").exists()
    best_before = (run / "best.ckpt").read_bytes()
    capsys.readouterr()
    # --resume: nothing to resume, and how to start again (was: the bare `no last.ckpt to resume from`)
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    assert "no last.ckpt to resume from (the run stopped before its first checkpoint; start it again with " \
           f"dynametric train --config {run / 'config.yaml'} --out {run})" in capsys.readouterr().err
    # the dry run and the run take the folder as the earlier start's (was: `not empty and holds no dynametric run`)
    assert main(["train", "--dry-run", "--config", str(run / "config.yaml"), "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["train", "--config", str(run / "config.yaml"), "--out", str(run), "--no-progress",
                 "trainer.max_epochs=1"]) == 0
    err = capsys.readouterr().err
    assert "replacing the files of an earlier start that stopped before its first checkpoint" in err
    assert "best.ckpt" in err and ".last.ckpt.q8w7e6r5.tmp" in err
    assert (run / "last.ckpt").is_file() and not (run / ".last.ckpt.q8w7e6r5.tmp").exists()
    assert (run / "best.ckpt").read_bytes() != best_before  # the new start's own best


def test_a_best_ckpt_beside_a_file_of_the_users_is_not_an_unstarted_run(tmp_path, capsys, monkeypatch) -> None:
    run = tmp_path / "run"

    def killed(self, trainer):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(ResumeState, "_save", killed)
        assert main(["train", "--out", str(run), *TRAIN, "trainer.max_epochs=2"]) == 130
    (run / "notes.txt").write_text("mine\n")
    capsys.readouterr()
    assert main(["train", "--config", str(run / "config.yaml"), "--out", str(run), "--no-progress"]) == 2
    assert "output folder is not empty and holds no dynametric run" in capsys.readouterr().err
    assert (run / "best.ckpt").is_file() and (run / "notes.txt").read_text() == "mine\n"


# ------------------------------------------------------------------ a folder that cannot be made or written
def _no_data_read(monkeypatch) -> None:
    import dynametric.pipeline.run as run_module

    def refuse(*args, **kwargs):
        raise AssertionError("the data was read before the folder was checked")

    monkeypatch.setattr(run_module, "build_datasets", refuse)


def test_an_out_under_a_regular_file_is_one_line_before_any_data_is_read(tmp_path, capsys, monkeypatch) -> None:
    afile = tmp_path / "afile"
    afile.write_text("mine\n")
    _no_data_read(monkeypatch)
    for dry in (["--dry-run"], []):  # the dry run said nothing; the run failed after reading its data
        assert main(["train", *dry, "--out", str(afile / "sub" / "run"), *TRAIN]) == 2
        err = capsys.readouterr().err
        assert err == (f"dynametric train: error: {afile} key '--out': is a file, not a folder; expected a folder "
                       f"to hold {afile / 'sub' / 'run'}\n"), err
    assert afile.read_text() == "mine\n"


def test_an_out_that_cannot_be_written_is_one_line_before_any_data_is_read(tmp_path, capsys, monkeypatch) -> None:
    import os

    ro = tmp_path / "ro"
    ro.mkdir()
    access = os.access
    # a read-only folder (as root, os.access grants everything: the answer of a user without the permission)
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != ro and access(path, mode, **kw))
    _no_data_read(monkeypatch)
    for dry in (["--dry-run"], []):
        assert main(["train", *dry, "--out", str(ro), *TRAIN]) == 2  # was: 16 s of training, then logs/: denied
        err = capsys.readouterr().err
        assert err == f"dynametric train: error: {ro} key '--out': cannot write in the folder (Permission denied)\n"
        assert main(["train", *dry, "--out", str(ro / "a" / "run"), *TRAIN]) == 2
        err = capsys.readouterr().err
        assert err == f"dynametric train: error: {ro / 'a'} key '--out': cannot create the folder (Permission denied)\n"
    assert list(ro.iterdir()) == []
