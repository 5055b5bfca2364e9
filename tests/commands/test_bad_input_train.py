"""`dynametric train` under bad input: it never writes into a folder holding files it did not write, and the
config values it would otherwise accept silently are one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

from dynametric.cli import main
from tests.commands.test_train import TINY


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
