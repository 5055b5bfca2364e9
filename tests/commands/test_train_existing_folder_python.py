"""A run started from Python into a folder that already holds a run is refused naming the Python call that resumes
it (``run_training(..., resume=True)``) or another ``run_dir``; the CLI's line (``--resume`` / ``--out``) is as
it was."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynametric.cli import main
from dynametric.config import load_config
from dynametric.errors import ConfigError
from dynametric.pipeline.run import dry_run, run_training

RUN = ["model.backbone_kwargs={width: 4, depth: 2}", "model.embedding_dim=8", "trainer.max_epochs=1",
       "run.report=false", "trainer.progress_bar=false", "data.options={images_per_class: 4, image_size: 16}",
       "data.iterations_per_epoch=2"]
QUIET = {"log": lambda _: None, "note": lambda _: None}


def test_python_names_its_own_arguments_and_the_suggested_call_resumes(tmp_path: Path):
    run = tmp_path / "bob's run"  # a quote in the path: the suggested call is still Python (was a SyntaxError)
    cfg = load_config(None, RUN)
    run_training(cfg, run, **QUIET)
    expected = (f"key 'run_dir': run folder {run} already holds a run; resume it with run_training(load_config("
                f"{str(run / 'config.yaml')!r}), {str(run)!r}, resume=True), or give another run_dir")
    with pytest.raises(ConfigError) as info:
        run_training(cfg, run, **QUIET)
    assert str(info.value) == expected
    with pytest.raises(ConfigError) as info:
        dry_run(cfg, run_dir=run, **QUIET)
    assert str(info.value) == expected
    # what the line says works, pasted as it is: the finished run resumed, its results as they were
    first = (run / "metrics.json").read_text(encoding="utf-8")
    call = expected.split("resume it with ", 1)[1].split(", or give another", 1)[0]
    resumed = eval(call.replace("resume=True)", "resume=True, **QUIET)"),  # noqa: S307 - the message's own call
                   {"run_training": run_training, "load_config": load_config, "QUIET": QUIET})
    assert resumed.run_dir == run and (run / "metrics.json").read_text(encoding="utf-8") == first


def test_the_command_line_keeps_its_own_line(tmp_path: Path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.ckpt").write_bytes(b"")
    assert main(["train", "--out", str(out), *RUN]) == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"dynametric train: error: key '--out': run folder {out} already holds a run; use --resume {out} or another "
        f"--out")
