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
    import dynametric.pipeline.dryrun as dry_run_module
    import dynametric.pipeline.run as run_module

    def refuse(*args, **kwargs):
        raise AssertionError("the data was read before the folder was checked")

    for module in (run_module, dry_run_module):  # where the run and the dry run read their data
        monkeypatch.setattr(module, "build_datasets", refuse)


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


# ------------------------------------------------------------------ two runs into one folder (train.lock)
def _foreign_lock(run: Path) -> str:
    """The lock another process of this host that still runs (pytest's parent) took on ``run``."""
    import json
    import os
    import socket

    text = json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "folder": str(run.resolve())}) + "\n"
    run.mkdir(parents=True, exist_ok=True)
    (run / "train.lock").write_text(text)
    return text


def test_the_second_of_two_runs_that_passed_the_check_at_once_is_refused(tmp_path, capsys, monkeypatch) -> None:
    import os

    import dynametric.pipeline.run as run_module

    run = tmp_path / "run"
    checked = run_module.check_new_run_folder
    calls = []

    def other_run_claims_in_between(run_dir, folder_key, **kw):  # both checked the new folder; the other claims
        found = checked(run_dir, folder_key, **kw)
        if not calls:
            calls.append(1)
            _foreign_lock(run_dir)
            (run_dir / "config.yaml").write_text("# the other run's config\n")
        return found

    monkeypatch.setattr(run_module, "check_new_run_folder", other_run_claims_in_between)
    assert main(["train", "--out", str(run), *TRAIN, "trainer.max_epochs=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynametric train: error: ") and len(err.splitlines()) == 1, err
    assert err.endswith(f"key '--out': run folder {run} holds a run started by process {os.getppid()}, which is "
                        "still running; wait for it or stop it, or use another --out\n"), err
    # nothing of the other run's touched, nothing of this one's written (was: both trained, the folder mixed)
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "train.lock"]
    assert (run / "config.yaml").read_text() == "# the other run's config\n"


def test_claiming_a_held_folder_fails_and_a_stale_lock_is_taken_over(tmp_path) -> None:
    import json
    import os
    import subprocess
    import sys

    from dynametric.errors import ConfigError
    from dynametric.pipeline.run import LOCK_FILE, claim_run_folder, lock_holder

    run = tmp_path / "run"
    first = claim_run_folder(run, "--out")  # the first of two claims gets the folder
    assert first is not None and json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    first.release()
    assert not run.exists()  # the claim made the folder: removed, still empty
    text = _foreign_lock(run)
    assert lock_holder(run) == os.getppid()
    try:
        claim_run_folder(run, "--out")
    except ConfigError as exc:
        assert exc.key == "--out" and f"holds a run started by process {os.getppid()}, which is still" in exc.message
    else:
        raise AssertionError("a folder held by a running process was claimed")
    assert (run / LOCK_FILE).read_text() == text and [p.name for p in run.iterdir()] == [LOCK_FILE]
    # a killed holder (its process gone): stale, replaced by this process's claim
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / LOCK_FILE).write_text(json.dumps({"pid": int(gone.stdout), "host": json.loads(text)["host"]}))
    assert lock_holder(run) is None
    second = claim_run_folder(run, "--resume", resume=True)
    assert second is not None and json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()
    second.release()
    assert not (run / LOCK_FILE).exists()


def test_a_folder_held_by_a_running_process_is_refused_by_dry_run_resume_and_out(tmp_path, capsys) -> None:
    import os

    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TRAIN, "trainer.max_epochs=1"]) == 0
    assert not (run / "train.lock").exists()  # a finished run leaves no lock
    capsys.readouterr()
    text = _foreign_lock(run)  # a --resume of it running in another process
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"run folder {run} is being trained by process {os.getppid()}, which is still running" in err
    fresh = tmp_path / "fresh"
    _foreign_lock(fresh)  # a new run in another process, before its config.yaml (reading its data)
    for dry in (["--dry-run"], []):
        assert main(["train", *dry, "--out", str(fresh), *TRAIN]) == 2
        assert f"holds a run started by process {os.getppid()}, which is still running" in capsys.readouterr().err
    assert (run / "train.lock").read_text() == text and [p.name for p in fresh.iterdir()] == ["train.lock"]


def test_a_run_killed_with_its_lock_stays_recognisable(tmp_path, capsys, monkeypatch) -> None:
    import json
    import subprocess
    import sys

    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)
    # killed while reading its data: the folder holds its lock alone
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.lock").write_text(json.dumps({"pid": gone, "host": __import__("socket").gethostname()}))
    assert main(["train", "--dry-run", "--out", str(run), *TRAIN]) == 0
    assert main(["train", "--out", str(run), *TRAIN, "trainer.max_epochs=1"]) == 0
    assert (run / "last.ckpt").is_file() and not (run / "train.lock").exists()
    # killed after its first checkpoint: resumed (a stale lock beside last.ckpt)
    (run / "train.lock").write_text(json.dumps({"pid": gone, "host": __import__("socket").gethostname()}))
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0, capsys.readouterr().err
    assert not (run / "train.lock").exists()
    # killed before its first checkpoint, after config.yaml: started again
    again = tmp_path / "again"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    import lightning as L

    with monkeypatch.context() as m:
        m.setattr(L.Trainer, "fit", interrupt)
        assert main(["train", "--out", str(again), *TRAIN]) == 130
    (again / "train.lock").write_text(json.dumps({"pid": gone, "host": __import__("socket").gethostname()}))
    capsys.readouterr()
    assert main(["train", "--out", str(again), *TRAIN, "trainer.max_epochs=1"]) == 0
    assert (again / "last.ckpt").is_file() and not (again / "train.lock").exists()


def test_a_train_lock_of_the_users_is_refused_and_kept_by_out_resume_and_the_dry_run(tmp_path, capsys,
                                                                                      monkeypatch) -> None:
    """A file named train.lock that is no lock of dynametric was taken for a killed run's leftover: removed, the run
    went on (``--out`` and ``--resume``). An empty one is what a kill leaves where the lock is created with O_EXCL
    and then written: refused while it may be being written, replaced once older than WRITING_S."""
    import os

    import lightning as L

    from dynametric.errors import InputError
    from dynametric.pipeline.run_folder import claim_run_folder, unstarted_run_files
    from dynametric.utils.locks import WRITING_S

    notes = "my notes\n"
    refused = ("is not a lock file of dynametric (JSON naming the process that trains in the folder); it is not "
               "removed: ")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train.lock").write_text(notes)
    for dry in (["--dry-run"], []):
        assert main(["train", *dry, "--out", str(mine), *TRAIN]) == 2
        err = capsys.readouterr().err
        assert err == (f"dynametric train: error: {mine / 'train.lock'} key '--out': {refused}move it away or use "
                       "another --out\n"), err
    assert unstarted_run_files(mine) is None
    with_json = '{"pid": 1, "note": "mine"}\n'  # JSON, but not a lock of dynametric (no host)
    (mine / "train.lock").write_text(with_json)
    assert main(["train", "--out", str(mine), *TRAIN]) == 2
    assert refused in capsys.readouterr().err
    # the claim itself (two checks passed, then the file appeared): refused, kept
    (mine / "train.lock").write_text(notes)
    try:
        claim_run_folder(mine, "--out")
    except InputError as exc:
        assert exc.key == "--out" and exc.message.startswith(refused) and exc.file == str(mine / "train.lock")
    else:
        raise AssertionError("a user's train.lock was taken over")
    assert [p.name for p in mine.iterdir()] == ["train.lock"] and (mine / "train.lock").read_text() == notes
    # beside the files of a run stopped before its first checkpoint: kept, not replaced as that run's
    again = tmp_path / "again"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(L.Trainer, "fit", interrupt)
        assert main(["train", "--out", str(again), *TRAIN]) == 130
    (again / "train.lock").write_text(notes)
    assert unstarted_run_files(again) is None
    capsys.readouterr()
    assert main(["train", "--out", str(again), *TRAIN]) == 2
    assert refused in capsys.readouterr().err and (again / "train.lock").read_text() == notes
    # --resume of a run with a checkpoint
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TRAIN, "trainer.max_epochs=1"]) == 0
    (run / "train.lock").write_text(notes)
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == (f"dynametric train: error: {run / 'train.lock'} key '--resume': {refused}move it away to resume "
                   "the run\n"), err
    assert (run / "train.lock").read_text() == notes
    # an empty train.lock: perhaps being written this moment, refused; older than WRITING_S, a kill's leftover
    (run / "train.lock").write_text("")
    assert main(["train", "--resume", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'train.lock'} key '--resume': is empty and was created less than 10 s ago: perhaps" in err, err
    assert (run / "train.lock").read_bytes() == b""
    old = os.path.getmtime(run / "train.lock") - WRITING_S - 1
    os.utime(run / "train.lock", (old, old))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0, capsys.readouterr().err
    assert not (run / "train.lock").exists()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "train.lock").write_text("")
    os.utime(fresh / "train.lock", (old, old))
    assert unstarted_run_files(fresh) == [fresh / "train.lock"]
    assert main(["train", "--out", str(fresh), *TRAIN, "trainer.max_epochs=1"]) == 0
    assert (fresh / "last.ckpt").is_file() and not (fresh / "train.lock").exists()


def test_a_lock_copied_with_its_run_folder_holds_only_the_folder_it_was_taken_for(tmp_path, capsys) -> None:
    """A run folder copied (``cp -r``) while its run trained carries that run's train.lock, which names the folder
    it was taken for: the copy was refused as being trained by that process. A spelling of the same folder through a
    symbolic link is that folder (both resolved): still held."""
    import json
    import os
    import shutil
    import socket

    from dynametric.errors import ConfigError
    from dynametric.pipeline.run import LOCK_FILE, claim_run_folder, lock_holder

    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TRAIN, "trainer.max_epochs=1"]) == 0
    text = _foreign_lock(run)  # a --resume of it trains in another process (pytest's parent) ...
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)  # ... while the folder is copied
    assert lock_holder(run) == os.getppid() and lock_holder(copy) is None
    capsys.readouterr()
    assert main(["train", "--resume", str(copy), "--no-progress"]) == 0, capsys.readouterr().err
    assert not (copy / LOCK_FILE).exists() and (run / LOCK_FILE).read_text() == text
    # a copy of a folder whose run was still reading its data (its lock alone): started again
    early = tmp_path / "early"
    early.mkdir()
    shutil.copy(run / LOCK_FILE, early / LOCK_FILE)
    assert main(["train", "--out", str(early), *TRAIN, "trainer.max_epochs=1"]) == 0
    assert (early / "last.ckpt").is_file() and not (early / LOCK_FILE).exists()
    # the held folder through a symbolic link: the same folder, refused
    link = tmp_path / "link"
    link.symlink_to(run, target_is_directory=True)
    assert lock_holder(link) == os.getppid()
    capsys.readouterr()
    assert main(["train", "--resume", str(link), "--no-progress"]) == 2
    assert f"run folder {link} is being trained by process {os.getppid()}, which is still" in capsys.readouterr().err
    # a lock that names the folder by the link's spelling holds the folder under either
    (run / LOCK_FILE).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "folder": str(link)}))
    for spelling in (run, link):
        assert lock_holder(spelling) == os.getppid()
        try:
            claim_run_folder(spelling, "--out")
        except ConfigError as exc:
            assert f"holds a run started by process {os.getppid()}" in exc.message
        else:
            raise AssertionError(f"{spelling} was claimed while its run trains")
    assert (run / LOCK_FILE).read_text().endswith(f'"folder": "{link}"}}')


def test_a_resume_while_another_process_is_before_its_first_checkpoint_is_keyed_resume(tmp_path, capsys,
                                                                                       monkeypatch) -> None:
    """``train --resume D`` while the process that started D has not written its first checkpoint: the line was
    keyed ``--out`` (``... or use another --out``), an option the command was not given."""
    import os

    import lightning as L

    again = tmp_path / "again"

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(L.Trainer, "fit", interrupt)
        assert main(["train", "--out", str(again), *TRAIN]) == 130
    config = again / "config.yaml"
    mine = f"(process {os.getpid()} on host"
    text = config.read_text()
    assert text.count(mine) == 1
    config.write_text(text.replace(mine, f"(process {os.getppid()} on host"))  # started by a process still running
    capsys.readouterr()
    assert main(["train", "--resume", str(again), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err == (f"dynametric train: error: key '--resume': run folder {again} holds a run started by process "
                   f"{os.getppid()}, which is still running and has not written its first checkpoint; wait for it or "
                   "stop it, or use another --resume\n"), err
