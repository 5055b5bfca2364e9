"""`dynametric.cli.main(argv)`, called from a notebook, leaves the process as it found it: `train` quiets Lightning
(warning filters, three loggers at WARNING) and publishes its config and run folder in the environment for the
processes of the other ranks; all of that was left behind after `main` returned."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import pytest

from dynametric.cli import main
from tests.commands.test_train import TINY

LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero")


def _state() -> tuple[list, list[int], dict[str, str | None]]:
    return (list(warnings.filters), [logging.getLogger(n).level for n in LOGGERS],
            {n: os.environ.get(n) for n in ("DYNAMETRIC_RUN_CONFIG", "DYNAMETRIC_RUN_DIR")})


@pytest.mark.parametrize("named", [True, False], ids=["--out", "default-folder"])
def test_train_leaves_filters_loggers_and_environment_as_they_were(tmp_path: Path, monkeypatch, named: bool) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY)
    argv = ["train", "--config", "tiny.yaml", "--no-progress", "trainer.max_epochs=1", "run.report=false",
            f"run.output_dir={tmp_path / 'runs'}"]
    # a first run imports what a run imports (numpy, scipy, torch, Lightning add filters of their own as they are
    # imported, which stay); the second one must leave everything as it found it
    assert main([*argv, "--out", "first"]) == 0
    fabric = logging.getLogger("lightning.fabric")
    level = fabric.level
    fabric.setLevel(logging.INFO)  # a level of the caller's own: kept
    monkeypatch.setenv("DYNAMETRIC_RUN_DIR", "the caller's value")  # kept as it was
    before = _state()
    try:
        assert main([*argv, *(["--out", "second"] if named else [])]) == 0
        assert _state() == before
    finally:
        fabric.setLevel(level)
    assert (tmp_path / "second" / "metrics.json").is_file() if named else \
        len(list((tmp_path / "runs").glob("*/metrics.json"))) == 1


def test_quiet_lightning_called_before_main_stays(tmp_path: Path, monkeypatch) -> None:
    """Filters and levels a caller set with quiet_lightning before main are the caller's: main keeps them."""
    from dynametric.pipeline import quiet_lightning

    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny.yaml").write_text(TINY)
    with warnings.catch_warnings():
        quiet_lightning()
        before = _state()
        assert main(["train", "--config", "tiny.yaml", "--no-progress", "trainer.max_epochs=1", "run.report=false",
                     "--out", "run"]) == 0
        after = _state()
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)
    assert sorted(map(repr, after[0])) == sorted(map(repr, before[0])) and after[1:] == before[1:]
