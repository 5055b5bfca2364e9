"""`train --resume` tests only a best.ckpt this run saved: one copied from another run (another config hash) is
refused in one line naming it before anything is written, as an edited config.yaml is for last.ckpt; one put in
the folder while the run trains is refused before it is tested; the run's own best.ckpt of before an upgrade that
added keys is tested as before. Every checkpoint records the dynametric version that wrote it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dynametric import __version__
from dynametric.cli import main
from dynametric.engine.checkpoint import load_checkpoint_file
from tests.commands.test_train import TINY


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    """run1 (TINY, with its report) and run3 (another learning rate, no report): two finished runs."""
    root = tmp_path_factory.mktemp("foreign")
    (root / "tiny.yaml").write_text(TINY)
    run1, run3 = root / "run1", root / "run3"
    assert main(["train", "--config", str(root / "tiny.yaml"), "--out", str(run1), "--no-progress"]) == 0
    assert main(["train", "--config", str(root / "tiny.yaml"), "--out", str(run3), "--no-progress",
                 "optim.lr=0.001", "run.report=false"]) == 0
    return run1, run3


def _files(run: Path) -> dict[str, bytes]:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_every_checkpoint_records_the_dynametric_version_that_wrote_it(runs) -> None:
    for name in ("last.ckpt", "best.ckpt"):
        assert load_checkpoint_file(runs[0] / name)["dynametric"]["dynametric_version"] == __version__


def test_a_best_ckpt_of_another_run_is_refused_naming_it_and_nothing_is_written(runs, tmp_path, capsys) -> None:
    run1, run3 = runs
    x2 = tmp_path / "x2"
    shutil.copytree(run1, x2)
    shutil.copy(run3 / "best.ckpt", x2 / "best.ckpt")
    before = _files(x2)
    capsys.readouterr()
    assert main(["train", "--resume", str(x2), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "testing best.ckpt" not in captured.out + captured.err
    assert captured.err.count("\n") == 1
    other = load_checkpoint_file(run3 / "best.ckpt")["dynametric"]["config_hash"]
    own = load_checkpoint_file(run1 / "last.ckpt")["dynametric"]["config_hash"]
    assert captured.err.startswith(f"dynametric train: error: {x2 / 'best.ckpt'}: was not saved by this run (it "
                                   f"records config hash {other}, the run {x2} {own}; changed: optim.lr (0.001 -> "
                                   "0.003), run.report (False -> True)): the run would test it as its best epoch ")
    assert captured.err.rstrip().endswith("move this one out of the run folder (the run then tests its final "
                                          "weights)")
    assert _files(x2) == before  # metrics.json keeps run1's test, the report is not rewritten


def test_a_best_ckpt_put_in_the_folder_while_the_run_trains_is_refused_before_its_test(runs, tmp_path, capsys,
                                                                                      monkeypatch) -> None:
    import dynametric.pipeline.run as run_module

    run1, run3 = runs
    x2 = tmp_path / "x2"
    shutil.copytree(run1, x2)
    metrics = (x2 / "metrics.json").read_bytes()
    fit = run_module._fit

    def fit_then_swap(*args, **kwargs):
        fitted = fit(*args, **kwargs)
        shutil.copy(run3 / "best.ckpt", x2 / "best.ckpt")
        return fitted

    monkeypatch.setattr(run_module, "_fit", fit_then_swap)
    assert main(["train", "--resume", str(x2), "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "testing best.ckpt" not in captured.out + captured.err
    assert f"error: {x2 / 'best.ckpt'}: was not saved by this run" in captured.err
    assert (x2 / "metrics.json").read_bytes() == metrics


def test_the_runs_own_best_ckpt_of_before_an_upgrade_is_tested(runs, tmp_path, capsys) -> None:
    """last.ckpt and best.ckpt as an older dynametric, whose schema lacked ``optim.grad_clip``, saved them (another
    hash, the key absent): the run's own, tested as before."""
    import yaml

    run1, _ = runs
    x2 = tmp_path / "x2"
    shutil.copytree(run1, x2)
    for name in ("last.ckpt", "best.ckpt"):
        ckpt = torch.load(x2 / name, weights_only=True)
        del ckpt["dynametric"]["config"]["optim"]["grad_clip"]
        ckpt["dynametric"]["config_hash"] = "0123456789abcdef"
        torch.save(ckpt, x2 / name)
    header, body = (x2 / "config.yaml").read_text().split("\n", 1)
    body_dict = yaml.safe_load(body)
    del body_dict["optim"]["grad_clip"]
    (x2 / "config.yaml").write_text(f"{header}\n{yaml.safe_dump(body_dict, sort_keys=False)}")
    assert main(["train", "--resume", str(x2), "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "testing best.ckpt on the test split" in captured.out + captured.err
    assert "was not saved by this run" not in captured.out + captured.err
    assert json.loads((x2 / "run_info.json").read_text())["selected"]["checkpoint"] == "best.ckpt"


def test_a_best_ckpt_without_a_config_hash_beside_one_with_is_tested_with_a_warning(runs, tmp_path,
                                                                                   capsys) -> None:
    run1, _ = runs
    x2 = tmp_path / "x2"
    shutil.copytree(run1, x2)
    ckpt = torch.load(x2 / "best.ckpt", weights_only=True)
    del ckpt["dynametric"]["config_hash"], ckpt["dynametric"]["config"]
    torch.save(ckpt, x2 / "best.ckpt")
    assert main(["train", "--resume", str(x2), "--no-progress"]) == 0
    out = capsys.readouterr()
    lines = [line for line in (out.out + out.err).splitlines() if "records no config hash" in line]
    assert lines == [f"warning: {x2 / 'best.ckpt'} records no config hash (written by an older dynametric): it "
                     "cannot be checked to be this run's; the run tests it as its best epoch"]
