"""`dynametric train --dry-run` refuses what the run would refuse or silently get wrong, in one line (exit 2)
naming the key: the schedule's options, optimizer keywords, a validation fraction that rounds to no class, and an
output folder the run would not write into; nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynametric.cli import main
from tests.commands.test_train import TINY


def _cfg(tmp_path: Path) -> Path:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    return cfg


def _dry_error(capsys, *argv: str) -> str:
    assert main(["train", "--dry-run", *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1 and "# resolved configuration" not in captured.out
    return err


@pytest.mark.parametrize("overrides, expected", [
    # once `ValueError: Factor should be < 1.0.` from configure_optimizers, exit 1
    (["optim.scheduler.name=plateau", "optim.scheduler.gamma=1.5"],
     "<command line> key 'optim.scheduler.gamma': scheduler 'plateau' multiplies the rate by gamma when the monitor "
     "stalls: expected 0 < gamma < 1, got 1.5"),
    (["optim.scheduler.name=step", "optim.scheduler.milestones=[3]"],
     "<command line> key 'optim.scheduler.milestones': scheduler 'step' does not use milestones"),
    (["optim.kwargs.betas=0.9"],
     "<command line> key 'optim.kwargs.betas': Adam: expected a list of 2 numbers for betas, got 0.9 (float)"),
    (["data.m=16"], "<command line> key 'data.m': a batch of data.batch_size 16 with data.m 16 images per class "
                    "holds one class"),
    # once "0 validation (none)" and a run that tested its final weights for want of a validation split
    (["data.val_split=null", "data.val_fraction=0.01"],
     "<command line> key 'data.val_fraction': val_fraction 0.01 of the 18 training classes rounds to no validation "
     "class (round(0.01 x 18) = 0); expected at least 0.0278 for one class (round(0.0278 x 18) = 1), or 0 for no "
     "validation set"),
])
def test_the_dry_run_refuses_in_one_line(tmp_path, capsys, overrides, expected) -> None:
    err = _dry_error(capsys, "--config", str(_cfg(tmp_path)), *overrides)
    assert err.startswith(f"dynametric train: error: {expected}")
    assert not (tmp_path / "runs").exists()


def test_no_validation_is_still_val_fraction_0(tmp_path, capsys) -> None:
    assert main(["train", "--dry-run", "--config", str(_cfg(tmp_path)), "data.val_split=null",
                 "data.val_fraction=0"]) == 0
    assert "0 validation (none)" in capsys.readouterr().out


def test_the_dry_run_checks_the_output_folder_as_the_run_does(tmp_path, capsys) -> None:
    cfg = _cfg(tmp_path)
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine\n")
    err = _dry_error(capsys, "--config", str(cfg), "--out", str(full))
    assert err == (f"dynametric train: error: {full} key '--out': output folder is not empty and holds no dynametric "
                   "run (last.ckpt); its files are not overwritten: use another --out or an empty folder")
    assert sorted(p.name for p in full.iterdir()) == ["notes.txt"]
    # the folder run.name chooses, named by that key; a run's folder says to resume it
    err = _dry_error(capsys, "--config", str(cfg), f"run.output_dir={tmp_path}", "run.name=full")
    assert f"{full} key 'run.name': output folder is not empty" in err
    (full / "notes.txt").unlink()
    (full / "last.ckpt").write_bytes(b"")
    err = _dry_error(capsys, "--config", str(cfg), "--out", str(full))
    assert f"key '--out': run folder {full} already holds a run; use --resume {full} or another --out" in err
    # a new or empty folder passes, and the dry run does not create it
    empty = tmp_path / "empty"
    empty.mkdir()
    for out in (empty, tmp_path / "new"):
        assert main(["train", "--dry-run", "--config", str(cfg), "--out", str(out)]) == 0
    assert not (tmp_path / "new").exists() and not any(empty.iterdir())
