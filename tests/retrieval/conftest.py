"""Shared fixtures: a tiny `dynametric train`-style run folder (config.yaml + best.ckpt of an untrained small CNN)
and a small labelled image collection (folder + CSV with an integer fine and a text coarse column)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynametric.config import load_config, save_config
from dynametric.engine.builders import build_model
from dynametric.engine.checkpoint import save_checkpoint_file

N_IMAGES = 12


def make_run(root: Path, seed: int = 0, dim: int = 16) -> Path:
    """config.yaml + best.ckpt in the engine's format (``state_dict`` with ``embedder.*`` keys)."""
    root.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, [f"model.embedding_dim={dim}", "model.backbone_kwargs={width: 4, depth: 2}"])
    save_config(cfg, root / "config.yaml")
    torch.manual_seed(seed)
    model = build_model(cfg)
    state = {f"embedder.{k}": v for k, v in model.state_dict().items()}
    save_checkpoint_file({"state_dict": state, "epoch": 0}, root / "best.ckpt")
    return root / "best.ckpt"


def make_images(root: Path, n: int = N_IMAGES) -> Path:
    """``n`` distinct 32x32 PNGs under ``root/imgs/<coarse>/`` and ``root/labels.csv`` (path, id, fine, coarse)."""
    rng = np.random.default_rng(0)
    lines = ["path,id,fine,coarse"]
    for i in range(n):
        coarse = ["animal", "plant", "rock"][i % 3]
        rel = f"imgs/{coarse}/img_{i:02d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, size=3)
        arr = np.clip(base + rng.normal(0, 60, size=(32, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(root / rel)
        lines.append(f"{rel},item{i:02d},{i % 6},{coarse}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def run_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="session")
def image_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_images(tmp_path_factory.mktemp("data"))
