"""The examples of docs/losses.md's "Coming from pytorch-metric-learning" section run and do what they say."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import yaml
from pytorch_metric_learning import losses as pml_losses

from dynametric.config import LossConfig, MinerConfig
from dynametric.engine.builders import build_loss_term, build_miner
from dynametric.losses import MultiScaleLoss, PMLLoss, PMLMiner

SECTION = Path(__file__).resolve().parents[2] / "docs" / "losses.md"


def section() -> str:
    text = SECTION.read_text(encoding="utf-8")
    return text[text.index("## Coming from pytorch-metric-learning"):]


def test_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", section(), flags=re.S)
    assert len(blocks) == 2
    first: dict = {}
    exec(compile(blocks[0], "docs/losses.md", "exec"), first)  # noqa: S102 - the documentation's own example
    assert first["loss"].ndim == 0 and torch.isfinite(first["loss"])
    second: dict = {}
    exec(compile(blocks[1], "docs/losses.md", "exec"), second)  # noqa: S102
    emb, labels = second["embeddings"], second["labels"]
    torch.testing.assert_close(second["supcon"](emb, labels), pml_losses.SupConLoss(temperature=0.1)(emb, labels[:, 1]))
    arc = second["arcface"]
    assert isinstance(arc, MultiScaleLoss) and [m.loss.W.shape[1] for m in arc.losses] == [6 * 3, 3 * 3, 2 * 3]
    assert [m.loss.scale for m in arc.losses] == [30, 30, 30]  # PML's logit scale, given to every scale's loss
    assert second["supcon"].scale == 1 and second["miner"].scale == 0  # label_scale: the column
    expected = sum(w * arc.losses[s].loss(emb, labels[:, s]) for s, w in enumerate([1.0, 0.5, 0.25]))
    torch.testing.assert_close(second["total"], expected)


def test_yaml_example_builds():
    block = re.findall(r"```yaml\n(.*?)```", section(), flags=re.S)[0]
    cfg = yaml.safe_load(block)
    fine = torch.arange(12) % 6
    labels = torch.stack([fine, fine // 2, fine // 3], dim=1)
    loss = build_loss_term(LossConfig(**cfg["loss"]), "loss", labels, dim=8, num_scales=3)
    assert isinstance(loss, MultiScaleLoss) and loss.weights == [1.0, 0.5, 0.25]
    assert all(isinstance(m, PMLLoss) and m.loss.sub_centers == 3 for m in loss.losses)
    assert [m.loss.num_classes for m in loss.losses] == [6, 3, 2]
    miner = build_miner(MinerConfig(**cfg["miner"]), "miner")
    assert isinstance(miner, PMLMiner) and miner.miner.neg_strategy == "semihard"
    emb = torch.randn(12, 8)
    assert torch.isfinite(loss(emb, labels, [miner(emb, labels[:, s]) for s in range(3)]))
