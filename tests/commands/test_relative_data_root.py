"""A relative `data.root` (and `model.pretrained_path`) is recorded absolute in the run's config.yaml: a command run
later from another folder (`evaluate --checkpoint`, `--resume`) reads the run's own data, not the file that happens to
lie at the same relative path there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dynametric.cli import main
from dynametric.config import config_hash, load_config
from dynametric.config.schema import ANCHORED_PATH_KEYS, PATH_KEYS, anchor_paths
from dynametric.engine.checkpoint import load_checkpoint_file

TINY = """
data:
  format: csv
  root: data/labels.csv
  image_size: 16
  val_fraction: 0.5
  batch_size: 16
  m: 4
  eval_batch_size: 64
model: {backbone: simple_cnn, embedding_dim: 8, backbone_kwargs: {width: 4, depth: 2}}
loss: {name: TripletMarginLoss}
trainer: {max_epochs: 1, progress_bar: false}
run: {report: false}
"""


def _dataset(folder: Path, test_classes: int, seed: int) -> None:
    """``folder/data/labels.csv`` and its images: 8 training classes, ``test_classes`` test classes, 4 images each."""
    rng = np.random.default_rng(seed)
    rows = ["path,split,fine,coarse"]
    for split, classes in (("train", range(8)), ("test", range(100, 100 + test_classes))):
        for c in classes:
            base = rng.integers(0, 256, 3)
            for j in range(4):
                rel = f"imgs/{c}_{j}.png"
                (folder / "data" / "imgs").mkdir(parents=True, exist_ok=True)
                arr = np.clip(base + rng.normal(0, 40, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(arr).save(folder / "data" / rel)
                rows.append(f"{rel},{split},f{c},c{c % 2}")
    (folder / "data" / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.mark.slow
def test_a_run_with_a_relative_root_is_evaluated_on_its_own_data_from_another_folder(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    _dataset(a, test_classes=3, seed=0)  # the run's data: 12 test images
    _dataset(b, test_classes=5, seed=1)  # another data/labels.csv under the other folder: 20 test images
    (a / "tiny.yaml").write_text(TINY, encoding="utf-8")
    monkeypatch.chdir(a)
    assert main(["train", "--config", "tiny.yaml", "--out", str(a / "run"), "--no-progress"]) == 0
    run = a / "run"
    saved = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8"))
    assert saved["data"]["root"] == str(a / "data" / "labels.csv")  # recorded where it was read
    trained = json.loads((run / "metrics.json").read_text())["test"]["fine"]["num_queries"]
    assert trained == 12

    monkeypatch.chdir(b)
    result = b / "eval.json"
    assert main(["evaluate", "--checkpoint", str(run / "best.ckpt"), "--json", str(result)]) == 0
    assert json.loads(result.read_text())["fine"]["num_queries"] == 12  # a's test images, not b's 20
    # what --resume compares: config.yaml read back from anywhere is the config the checkpoints were saved with
    cfg = load_config(run / "config.yaml")
    assert config_hash(cfg) == load_checkpoint_file(run / "last.ckpt")["dynametric"]["config_hash"]
    assert anchor_paths(cfg) == []  # already absolute: reading it back changes nothing


def test_anchor_paths_makes_relative_paths_absolute_and_keeps_home_and_absolute_ones(tmp_path):
    assert set(ANCHORED_PATH_KEYS) <= set(PATH_KEYS) and "run.output_dir" not in ANCHORED_PATH_KEYS
    cfg = load_config(None, ["data.format=csv", "data.root=data/../x/labels.csv", "model.pretrained_path=w/b.pt"])
    assert anchor_paths(cfg, tmp_path) == ["data.root", "model.pretrained_path"]
    assert cfg.data.root == str(tmp_path / "data/../x/labels.csv")  # joined, not resolved
    assert cfg.model.pretrained_path == str(tmp_path / "w" / "b.pt")
    assert cfg.run.output_dir == "runs"  # chooses a new run's folder only: kept as written
    for root in ("~/data/labels.csv", "~me/data", str(tmp_path / "abs.csv")):
        cfg = load_config(None, ["data.format=csv", f"data.root={root}"])
        assert anchor_paths(cfg, tmp_path) == [] and cfg.data.root == root
    cfg = load_config(None, [])
    assert anchor_paths(cfg, tmp_path) == [] and cfg.data.root is None and cfg.model.pretrained_path is None


def test_train_dry_run_shows_the_root_it_records(tmp_path, monkeypatch, capsys):
    _dataset(tmp_path, test_classes=3, seed=0)
    (tmp_path / "tiny.yaml").write_text(TINY, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", "tiny.yaml", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"root: {tmp_path / 'data' / 'labels.csv'}" in out


@pytest.mark.slow
def test_run_training_from_python_records_a_relative_root_absolute_and_leaves_the_callers_config(tmp_path,
                                                                                                  monkeypatch):
    from dynametric.pipeline.run import dry_run, run_training

    _dataset(tmp_path, test_classes=3, seed=0)
    (tmp_path / "tiny.yaml").write_text(TINY, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    cfg = load_config(tmp_path / "tiny.yaml")
    lines: list[str] = []
    dry_run(cfg, log=lines.append)
    assert f"root: {tmp_path / 'data' / 'labels.csv'}" in "\n".join(lines)  # the resolved config shows it absolute
    run_training(cfg, tmp_path / "run", log=lambda _: None)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text(encoding="utf-8"))
    assert saved["data"]["root"] == str(tmp_path / "data" / "labels.csv")
    assert cfg.data.root == "data/labels.csv"  # the caller's config object is not changed
    recorded = load_checkpoint_file(tmp_path / "run" / "last.ckpt")["dynametric"]["config_hash"]
    assert recorded == config_hash(load_config(tmp_path / "run" / "config.yaml"))


def test_anchored_copies_only_when_a_path_is_relative(tmp_path):
    from dynametric.config.schema import anchored

    cfg = load_config(None, ["data.format=csv", f"data.root={tmp_path / 'labels.csv'}"])
    assert anchored(cfg) is cfg
    rel = load_config(None, ["data.format=csv", "data.root=labels.csv"])
    out = anchored(rel, tmp_path)
    assert out is not rel and out.data.root == str(tmp_path / "labels.csv") and rel.data.root == "labels.csv"
