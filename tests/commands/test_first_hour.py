"""A new user's first hour: progress bars follow the config, the default monitor is the finest scale whatever its
name, a batch that cannot be drawn is refused before any evaluation (with values that work), dry runs never
download pretrained weights, `dynametric --version` / `python -m dynametric` work."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import dynametric
from dynametric.cli import main

REPO = Path(__file__).resolve().parents[2]


def write_digit_csv(root: Path, train_classes: int, test_classes: int = 3, per_class: int = 4) -> Path:
    """labels.csv with ONE label column named `digit` and tiny 8x8 PNGs whose colour depends on the class."""
    rng = np.random.default_rng(0)
    rows = ["path,split,digit"]
    for split, n_cls, offset in (("train", train_classes, 0), ("test", test_classes, 100)):
        for c in range(n_cls):
            for i in range(per_class):
                rel = f"img/{split}_{c}_{i}.png"
                (root / "img").mkdir(parents=True, exist_ok=True)
                base = np.array([(c * 53) % 256, (c * 97) % 256, (c * 29) % 256])
                pix = np.clip(base + rng.integers(-20, 20, (8, 8, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pix).save(root / rel)
                rows.append(f"{rel},{split},{c + offset}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


TINY_ARGS = ["data.format=csv", "data.image_size=8", "data.batch_size=8", "data.m=2", "data.eval_batch_size=64",
             "model.embedding_dim=8", "model.backbone_kwargs={width: 4, depth: 2}", "trainer.max_epochs=1",
             "trainer.log_every_n_steps=1", "run.report=false"]


def test_digit_csv_trains_with_default_monitor_and_config_progress_bar_off(tmp_path, capsys):
    csv = write_digit_csv(tmp_path / "data", train_classes=10)
    out = tmp_path / "run"
    # no --progress/--no-progress flag: trainer.progress_bar=false (the config key) must switch the bars off
    assert main(["train", f"data.root={csv}", *TINY_ARGS, "trainer.progress_bar=false", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "Epoch 0" not in captured.out + captured.err and "it/s" not in captured.out + captured.err
    info = json.loads((out / "run_info.json").read_text())
    assert info["scale_names"] == ["digit"]
    assert info["selected"]["monitor"] == "digit/map@r"  # the default `finest/map@r`, resolved
    metrics = json.loads((out / "metrics.json").read_text())
    assert "map@r" in metrics["validation"][0]["digit"]
    # the run folder's config keeps the alias, so --resume works on the same data
    assert "monitor: finest/map@r" in (out / "config.yaml").read_text()


def test_progress_flag_overrides_the_config_only_when_given(monkeypatch, tmp_path):
    import dynametric.pipeline.run as run_mod

    seen = []

    def fake_run_training(cfg, run_dir, *, resume=False, progress=None, log=print, **_):
        seen.append((bool(cfg.trainer.progress_bar), progress))

    monkeypatch.setattr(run_mod, "run_training", fake_run_training)
    monkeypatch.setattr("dynametric.commands.train.is_terminal", lambda stream: True)  # stderr a terminal
    out = str(tmp_path / "r")
    assert main(["train", "trainer.progress_bar=false", "--out", out]) == 0
    assert main(["train", "trainer.progress_bar=false", "--progress", "--out", out]) == 0
    assert main(["train", "--no-progress", "--out", out]) == 0
    monkeypatch.setattr("dynametric.commands.train.is_terminal", lambda stream: False)  # a log file or a pipe
    assert main(["train", "--out", out]) == 0
    assert main(["train", "--progress", "--out", out]) == 0
    assert seen == [(False, None), (False, True), (True, False), (True, False), (True, True)]


def test_progress_none_follows_the_config(monkeypatch, tmp_path):
    """run_training(progress=None) hands trainer.progress_bar to the trainer (and True/False override it)."""
    import dynametric.pipeline.run as run_mod
    import dynametric.pipeline.run_checks as run_checks
    from dynametric.config import load_config

    seen = []

    class Stop(Exception):
        pass

    def fake_build_components(cfg, *, datasets, progress_bar=None, **_):
        seen.append(progress_bar)
        raise Stop

    monkeypatch.setattr(run_mod, "build_components", fake_build_components)
    monkeypatch.setattr(run_mod, "build_datasets", lambda cfg, with_test, test_splits: types.SimpleNamespace(test=None))
    # read by the check of the test protocol's splits (pipeline/run_checks.py: _held_out_data)
    monkeypatch.setattr(run_checks, "load_split", lambda cfg, split, train, key=None: None)
    monkeypatch.setattr(run_checks, "check_held_out_data", lambda cfg, datasets, tests, keys: [])
    for flag, cfg_value, expected in ((None, False, False), (None, True, True), (True, False, True)):
        cfg = load_config(None, [f"trainer.progress_bar={str(cfg_value).lower()}"])
        with pytest.raises(Stop):
            run_mod.run_training(cfg, tmp_path / f"r{len(seen)}", progress=flag)
        assert seen[-1] is expected


def test_explicit_monitor_scale_that_does_not_exist_is_still_an_error(tmp_path, capsys):
    csv = write_digit_csv(tmp_path / "data", train_classes=10)
    assert main(["train", "--dry-run", f"data.root={csv}", *TINY_ARGS, "trainer.monitor=fine/map@r"]) == 2
    err = capsys.readouterr().err
    assert "monitor scale 'fine'" in err and "digit" in err and "finest" in err


def test_too_few_classes_is_refused_before_the_untrained_evaluation_with_values_that_work(tmp_path, capsys):
    csv = write_digit_csv(tmp_path / "data", train_classes=5)
    args = [f"data.root={csv}", *TINY_ARGS, "data.batch_size=96", "data.m=4", "data.val_fraction=0"]
    assert main(["train", *args, "--out", str(tmp_path / "run")]) == 2
    captured = capsys.readouterr()
    assert "evaluating the untrained model" not in captured.out
    assert not (tmp_path / "run" / "metrics.json").exists()
    err = captured.err
    assert "needs 24 distinct digit classes" in err and "only 5" in err and "data.batch_size" in err
    fixes = [w for w in err.replace(",", " ").split() if w.startswith(("data.batch_size=", "data.m="))]
    assert fixes == ["data.batch_size=20", "data.m=24"]
    for fix in fixes:  # each suggestion on its own makes the batch fit (dry run checks the batch too)
        assert main(["train", "--dry-run", *args, fix]) == 0, fix
    # with validation carved out of the 5 classes the message says so
    assert main(["train", "--dry-run", f"data.root={csv}", *TINY_ARGS, "data.batch_size=96", "data.m=4",
                 "data.val_fraction=0.2"]) == 2
    err = capsys.readouterr().err
    assert "only 4 (after the validation classes were set aside)" in err and "data.batch_size=16" in err


def _block_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_dry_run_with_pretrained_weights_never_downloads(monkeypatch, tmp_path, capsys):
    import huggingface_hub.constants as hf_constants

    _block_network(monkeypatch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    args = ["train", "--dry-run", "model.backbone=test_resnet", "model.pretrained=true", "model.embedding_dim=8"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "pretrained: true" in out  # the resolved config is shown as given
    assert "pretrained weights: NOT cached" in out and "https://huggingface.co/timm/test_resnet.r160_in1k" in out
    # the same weights in the Hugging Face cache: reported as cached, with the file
    snap = tmp_path / "hf" / "models--timm--test_resnet.r160_in1k" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "model.safetensors").write_bytes(b"x")
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "pretrained weights: cached" in out and str(snap / "model.safetensors") in out


@pytest.mark.parametrize("config", ["pddm/cub.yaml", "sharing/cub-margin.yaml", "sharing/sop-triplet.yaml"])
def test_shipped_pretrained_configs_report_their_weights_offline(monkeypatch, tmp_path, config):
    from dynametric.config import load_config
    from dynametric.models.backbones import pretrained_weights_status

    _block_network(monkeypatch)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cfg = load_config(REPO / "configs" / config)
    assert cfg.model.pretrained
    cached, where = pretrained_weights_status(cfg.model.backbone)
    assert cached is not None and where.startswith(("http://", "https://", str(tmp_path)))
    if cfg.model.backbone == "bninception":
        ckpt = tmp_path / "torch" / "hub" / "checkpoints" / "bn_inception-52deb4733.pth"
        ckpt.parent.mkdir(parents=True)
        ckpt.write_bytes(b"x")
        assert pretrained_weights_status("bninception") == (True, str(ckpt))


def test_installed_wheel_has_version_entry_point_and_python_m(tmp_path):
    """Build the wheel from a copy of the project (no build folders in the checkout), install it without
    dependencies into a folder, and run `python -m dynametric` from there, not from the source tree."""
    import shutil
    import zipfile

    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copy(REPO / "pyproject.toml", proj)
    shutil.copy(REPO / "README.md", proj)
    shutil.copytree(REPO / "src", proj / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    wheels = tmp_path / "wheels"
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", str(proj), "--no-deps", "--no-build-isolation",
                          "-q", "-w", str(wheels)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (wheel,) = wheels.glob("dynametric-*.whl")
    assert wheel.name.startswith(f"dynametric-{dynametric.__version__}-")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry = zf.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        meta = zf.read(next(n for n in names if n.endswith("METADATA"))).decode()
    assert {"dynametric/__main__.py", "dynametric/configs/default_run.yaml", "dynametric/py.typed"} <= names
    assert "dynametric = dynametric.cli:main" in entry
    assert f"Version: {dynametric.__version__}" in meta
    for extra in ("faiss", "export", "dev"):
        assert f"Provides-Extra: {extra}" in meta
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)  # a wheel is a zip laid out as site-packages
    # one interpreter: `python -m dynametric --version` run from the installed copy, not from the checkout
    script = ("import runpy, sys, dynametric; print(dynametric.__file__); sys.argv = ['dynametric', '--version']; "
              "runpy.run_module('dynametric', run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 0, res.stderr
    where, version = res.stdout.strip().splitlines()
    assert where.startswith(str(target)) and version == f"dynametric {dynametric.__version__}"


def test_python_m_dynametric_runs_the_cli(capsys, monkeypatch):
    import runpy

    monkeypatch.setattr(sys, "argv", ["dynametric"])
    with pytest.raises(SystemExit) as stop:
        runpy.run_module("dynametric", run_name="__main__")
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "train" in out and "evaluate" in out


def _extras(pyproject: str) -> list[str]:
    """The names of ``[project.optional-dependencies]``: tomllib's where Python has it (3.11+), else the keys of that
    table read line by line (Python 3.10, which the package supports, has no TOML reader)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import re

        table = pyproject.split("[project.optional-dependencies]", 1)[1]
        table = re.split(r"^\[", table, maxsplit=1, flags=re.M)[0]
        return re.findall(r"^([A-Za-z0-9_.-]+)\s*=", table, flags=re.M)
    return list(tomllib.loads(pyproject)["project"]["optional-dependencies"])


def test_the_extras_are_read_alike_with_and_without_tomllib(monkeypatch):
    import sys

    text = (REPO / "pyproject.toml").read_text()
    with_tomllib = _extras(text)
    monkeypatch.setitem(sys.modules, "tomllib", None)  # `import tomllib` raises ImportError, as on Python 3.10
    assert _extras(text) == with_tomllib and len(with_tomllib) >= 3


def test_readme_lists_every_extra():
    extras = _extras((REPO / "pyproject.toml").read_text())
    readme = (REPO / "README.md").read_text()
    for name in extras:
        assert f"`{name}`" in readme or f"[{name}]" in readme, name
