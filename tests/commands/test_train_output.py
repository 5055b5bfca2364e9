"""Where `dynametric train` writes: the results on stdout (`train > out.txt` holds them and nothing else drawn), the
progress bars and the notes on stderr; bars only where stderr is a terminal unless --progress asks for them.
Before, Lightning drew its bars on stdout (every redraw's \\r and cursor codes in `out.txt`) and the notes went to
stdout too."""

from __future__ import annotations

import io
import json

from dynametric.cli import main
from tests.commands.test_train import TINY
from tests.commands.test_train_interrupt import _process_state  # noqa: F401


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _tiny(tmp_path):
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY.replace("max_epochs: 2", "max_epochs: 1").replace("report: true", "report: false"))
    return cfg


def test_bars_and_notes_go_to_stderr_results_to_stdout(tmp_path, capsys, monkeypatch) -> None:
    from dynametric.engine.callbacks import ResumeState
    from tests.commands.test_train_interrupt import _raise_keyboard_interrupt

    out = tmp_path / "run"
    with monkeypatch.context() as patch:  # an earlier start that stopped before its first checkpoint
        patch.setattr(ResumeState, "on_train_batch_start", _raise_keyboard_interrupt)
        assert main(["train", "--config", str(_tiny(tmp_path)), "--out", str(out), "--no-progress"]) == 130
    capsys.readouterr()
    assert main(["train", "--config", str(_tiny(tmp_path)), "--out", str(out), "--progress"]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.out and "\x1b[" not in captured.out  # no bar drawn on stdout
    assert "Epoch 0" in captured.err and "\r" in captured.err  # the training bar, on stderr
    assert f"run folder {out}: replacing the files of an earlier start" in captured.err
    assert "replacing" not in captured.out and f"run folder: {out}" in captured.out.splitlines()
    lines = captured.out.splitlines()
    assert any(line.startswith("scale ") and "recall@1 trained" in line for line in lines)  # the results table
    assert lines[-1] == f"wrote {out / 'metrics.json'}"
    assert json.loads((out / "metrics.json").read_text())["test"]


def test_no_bars_on_a_stderr_that_is_not_a_terminal(tmp_path, capsys) -> None:
    """trainer.progress_bar: true without --progress: no bar where stderr is a file or a pipe (capsys' is not a
    terminal)."""
    cfg = _tiny(tmp_path)
    cfg.write_text(cfg.read_text().replace("progress_bar: false", "progress_bar: true"))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    assert "\r" not in captured.err and "Epoch 0" not in captured.err and "\r" not in captured.out


def test_progress_choice() -> None:
    import sys

    from dynametric.commands import is_terminal
    from dynametric.commands.train import progress_choice

    assert progress_choice(True) is True and progress_choice(False) is False
    real = sys.stderr
    try:
        sys.stderr = _Terminal()
        assert is_terminal(sys.stderr) and progress_choice(None) is None  # the config's trainer.progress_bar decides
        sys.stderr = io.StringIO()
        assert not is_terminal(sys.stderr) and progress_choice(None) is False
    finally:
        sys.stderr = real


def test_run_training_sends_notes_to_note_and_the_rest_to_log(tmp_path) -> None:
    """The library's two channels, chosen by the caller of each line (not by its text): a config note, a warning
    and the folder line of a resumed run go to ``note``; what is done and the results to ``log``. Without
    ``note``, everything goes to ``log``."""
    from dynametric.config import load_config
    from dynametric.pipeline.run import run_training

    cfg = load_config(_tiny(tmp_path), ["trainer.val_every=5"])  # never validated in 1 epoch: a setup note
    out, notes = [], []
    run_training(cfg, tmp_path / "run", progress=False, log=out.append, note=notes.append)
    assert notes and all(line.startswith(("note: ", "warning: ")) for line in notes)
    assert any("validat" in line for line in notes)
    assert not any(line.startswith(("note: ", "warning: ")) for line in out)
    assert out[0] == f"run folder: {tmp_path / 'run'}" and out[-1].startswith("wrote ")
    both: list[str] = []
    run_training(load_config(_tiny(tmp_path), ["trainer.val_every=5"]), tmp_path / "again", progress=False,
                 log=both.append)
    assert [line for line in both if line.startswith(("note: ", "warning: "))] == notes
