"""Ctrl-C during `dynametric train` (docs/reliability.md): `dynametric train: interrupted (resume with: ...)`, exit
status 130; last.ckpt and best.ckpt kept, metrics.json with the validation done so far and no test results, no
run_info.json or report; `--resume` then finishes the run. Lightning catches the KeyboardInterrupt inside fit/test
itself (and calls sys.exit(1)); these tests pin that the run still stops as documented."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from dynametric.cli import main
from dynametric.engine.callbacks import ResumeState
from tests.commands.test_train import TINY

FINISHED_ONLY = ("run_info.json", "report.html")  # written only by a run that finished


@pytest.fixture(autouse=True)
def _process_state():
    """main() calls quiet_lightning(), which changes warning filters and logger levels for the whole process:
    restored, so that tests/engine/test_global_state.py sees the same state in this worker whatever ran before."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric",
                                              "lightning.pytorch.utilities.rank_zero")]
    levels = [lg.level for lg in loggers]
    with warnings.catch_warnings():
        yield
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)


def _config(tmp_path: Path, epochs: int = 3) -> Path:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.replace("max_epochs: 2", f"max_epochs: {epochs}"))
    return cfg


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def test_ctrl_c_during_fit_stops_the_run_and_resume_finishes_it(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    real_end = ResumeState.on_train_epoch_end

    def end_then_ctrl_c(self, trainer, pl_module):  # Ctrl-C right after the second epoch's last.ckpt
        real_end(self, trainer, pl_module)
        if trainer.current_epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(ResumeState, "on_train_epoch_end", end_then_ctrl_c)
    sigint_before = signal.getsignal(signal.SIGINT)
    assert main(["train", "--config", str(_config(tmp_path)), "--out", str(out), "--no-progress"]) == 130
    captured = capsys.readouterr()
    assert captured.err.strip() == f"dynametric train: interrupted (resume with: dynametric train --resume {out})"
    assert "testing" not in captured.out and "wrote" not in captured.out  # not tested, nothing reported as done
    assert signal.getsignal(signal.SIGINT) == sigint_before  # a second Ctrl-C is not ignored (Lightning's SIG_IGN)
    assert (out / "last.ckpt").is_file() and (out / "best.ckpt").is_file()
    assert not any((out / name).exists() for name in FINISHED_ONLY)
    metrics = _metrics(out)
    assert [v["epoch"] for v in metrics["validation"]] == [0, 1]  # the validation already done, as in the CSV log
    assert metrics["test"] == {} and metrics["untrained"]

    monkeypatch.setattr(ResumeState, "on_train_epoch_end", real_end)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    metrics = _metrics(out)
    assert [v["epoch"] for v in metrics["validation"]] == [0, 1, 2] and metrics["test"]
    assert all((out / name).is_file() for name in FINISHED_ONLY)


def test_ctrl_c_while_testing_leaves_the_run_untested_and_resumable(tmp_path, capsys, monkeypatch) -> None:
    """Ctrl-C in the final test (Lightning's test loop, after fit finished): the run is not finished."""
    import dynametric.pipeline.run as run_mod

    out = tmp_path / "run"
    real_evaluate = run_mod.evaluate_split
    calls = {"n": 0}

    def evaluate_then_ctrl_c(module, dm, dataset, settings, progress, ckpt_path=None, trainer=None):
        calls["n"] += 1
        if calls["n"] == 2:  # the first is the untrained evaluation, the second the test of best.ckpt
            module.on_test_epoch_end = _raise_keyboard_interrupt  # inside Lightning's trainer.test
        try:
            return real_evaluate(module, dm, dataset, settings, progress, ckpt_path=ckpt_path, trainer=trainer)
        finally:
            module.__dict__.pop("on_test_epoch_end", None)

    monkeypatch.setattr(run_mod, "evaluate_split", evaluate_then_ctrl_c)
    assert main(["train", "--config", str(_config(tmp_path, epochs=2)), "--out", str(out), "--no-progress"]) == 130
    assert capsys.readouterr().err.strip() == (f"dynametric train: interrupted (resume with: dynametric train "
                                              f"--resume {out})")
    metrics = _metrics(out)
    assert len(metrics["validation"]) == 2 and metrics["test"] == {}
    assert not any((out / name).exists() for name in FINISHED_ONLY)

    monkeypatch.setattr(run_mod, "evaluate_split", real_evaluate)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0  # trains no further, tests
    assert _metrics(out)["test"] and len(_metrics(out)["validation"]) == 2


def _raise_keyboard_interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_ctrl_c_before_the_first_checkpoint_says_how_to_start_again(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    monkeypatch.setattr(ResumeState, "on_train_batch_start", _raise_keyboard_interrupt)
    assert main(["train", "--config", str(_config(tmp_path)), "--out", str(out), "--no-progress"]) == 130
    assert capsys.readouterr().err.strip() == (f"dynametric train: interrupted (no checkpoint yet; start again "
                                              f"with: dynametric train --config {out / 'config.yaml'} --out {out})")
    assert not (out / "last.ckpt").exists() and _metrics(out)["test"] == {}


@pytest.mark.skipif(os.name != "posix", reason="sends a signal to a child process")
@pytest.mark.parametrize(("sig", "status", "said"), [(signal.SIGINT, 130, "interrupted"),
                                                     (signal.SIGTERM, 143, "interrupted by SIGTERM")])
def test_signal_to_a_training_process(tmp_path, sig, status, said) -> None:
    """A real SIGINT (Ctrl-C) or SIGTERM (`timeout`, `docker stop`, preemption; Lightning's loops made it exit 0)
    to `dynametric train` once last.ckpt exists: exit status 128 + the signal and the message with the resume hint,
    no test results; the run resumes only with its own config."""
    out = tmp_path / "run"
    cfg = _config(tmp_path, epochs=1000)  # never finishes on its own within the test
    # the child handles SIGINT as an interactive shell's foreground process does, even where this test process
    # was started with SIGINT ignored (a background job of a non-interactive shell)
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from dynametric.cli import main; sys.exit(main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-c", code, "train", "--config", str(cfg), "--out", str(out), "--no-progress",
           "trainer.checkpoint_every_n_steps=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not (out / "last.ckpt").is_file():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no last.ckpt within 120 s"
            time.sleep(0.05)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == status, (stdout, stderr)
    assert stderr.strip().splitlines()[-1] == (f"dynametric train: {said} (resume with: dynametric train "
                                               f"--resume {out})"), stderr
    assert "Traceback" not in stderr and "testing" not in stdout
    assert (out / "last.ckpt").is_file() and _metrics(out)["test"] == {}
    assert not any((out / name).exists() for name in FINISHED_ONLY)
    if sig == signal.SIGTERM:
        return  # the config check on resume below does not depend on the signal: done once, after SIGINT

    # the interrupted run resumes only with the config it was trained with: an edited config.yaml (here fewer
    # epochs, to end it at once) is refused before anything is written (the in-process tests resume to the end)
    config = out / "config.yaml"
    text = config.read_text(encoding="utf-8")
    assert "max_epochs: 1000" in text
    config.write_text(text.replace("max_epochs: 1000", "max_epochs: 1"), encoding="utf-8")
    before = (out / "last.ckpt").stat().st_mtime_ns
    done = subprocess.run([sys.executable, "-c", code, "train", "--resume", str(out), "--no-progress"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "config.yaml" in done.stderr and "trainer.max_epochs (1000 -> 1)" in done.stderr, done.stderr
    assert (out / "last.ckpt").stat().st_mtime_ns == before
