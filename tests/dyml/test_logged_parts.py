"""CSL's per-scale terms reach the run's logs: ``CSLLoss.loss_parts`` (weighted terms by scale name, adding up to
the loss), the scale names the builders give it, and ``logs/metrics.csv`` of a tiny run (``train/CSLLoss/<scale>``
adding up to ``train/CSLLoss`` and ``train/loss_epoch`` on the same row)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynametric.cli import main
from dynametric.config import load_config
from dynametric.engine.builders import build_model, build_objectives
from dynametric.engine.objective import compute_objective
from dynametric.losses.csl import CSLLoss
from tests.metrics_csv import TINY_SYNTHETIC, train_epoch_rows

ROOT = Path(__file__).resolve().parents[2]
LABELS = torch.tensor([[0, 0, 0], [0, 0, 0], [1, 0, 0], [1, 0, 0], [2, 1, 0], [2, 1, 0], [3, 2, 1], [3, 2, 1]])


@pytest.mark.parametrize("mode", ["proxy", "pairs"])
def test_parts_are_the_weighted_terms_and_add_up_to_the_loss(mode: str) -> None:
    torch.manual_seed(0)
    loss = CSLLoss.from_labels(LABELS, 6, margins=(0.1, 0.2, 0.3), weights=(1.0, 0.5, 2.0), mode=mode)
    assert loss.loss_parts() == {}  # before the first call
    emb = torch.randn(8, 6)
    value = loss(emb, LABELS)
    parts = loss.loss_parts()
    assert list(parts) == ["fine", "middle", "coarse"]  # default names of three scales
    assert all(p.dim() == 0 and not p.requires_grad for p in parts.values())
    torch.testing.assert_close(sum(parts.values()), value.detach())
    terms = loss.terms(emb, LABELS)
    assert terms is not None
    torch.testing.assert_close(torch.stack(list(parts.values())), terms.detach() * torch.tensor([1.0, 0.5, 2.0]))
    loss.scale_names = ("a", "b", "c")
    assert list(loss.loss_parts()) == ["a", "b", "c"]


def test_a_batch_without_positives_has_zero_parts() -> None:
    loss = CSLLoss(None, 4, mode="pairs")
    labels = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 1, 0]])
    value = loss(torch.randn(3, 4), labels)
    assert float(value) == 0.0 and [float(v) for v in loss.loss_parts().values()] == [0.0, 0.0, 0.0]


def test_builders_name_the_parts_by_the_data_scales_and_the_objective_collects_them() -> None:
    cfg = load_config(None, ["model.backbone=simple_cnn", "model.embedding_dim=8", "model.backbone_kwargs={width: 4, "
                             "depth: 1}", "loss.name=CSLLoss", "loss.multiscale=false", "loss.kwargs={}"])
    model = build_model(cfg)
    [obj] = build_objectives(cfg, model, LABELS, 3, scale_names=["leaf", "twig", "branch"])
    assert obj.loss.scale_names == ("leaf", "twig", "branch")
    parts: dict[str, torch.Tensor] = {}
    total, terms = compute_objective(model(torch.randn(8, 3, 16, 16)), LABELS, [obj], parts=parts)
    assert list(parts) == ["CSLLoss/leaf", "CSLLoss/twig", "CSLLoss/branch"]
    torch.testing.assert_close(sum(parts.values()), terms["CSLLoss"])


def test_a_csl_run_logs_its_per_scale_terms(tmp_path: Path) -> None:
    out = tmp_path / "csl"
    assert main(["train", "--config", str(ROOT / "configs" / "synthetic.yaml"), "--out", str(out), "--no-progress",
                 *TINY_SYNTHETIC, "trainer.max_epochs=2", "loss.name=CSLLoss", "loss.multiscale=false",
                 "loss.kwargs={}"]) == 0
    rows = train_epoch_rows(out)
    assert len(rows) == 2
    for row in rows:
        assert {"train/CSLLoss/fine", "train/CSLLoss/middle", "train/CSLLoss/coarse"} <= set(row), row
        scales = row["train/CSLLoss/fine"] + row["train/CSLLoss/middle"] + row["train/CSLLoss/coarse"]
        assert scales == pytest.approx(row["train/CSLLoss"], rel=1e-5)
        assert row["train/CSLLoss"] == pytest.approx(row["train/loss_epoch"], rel=1e-6)  # the one term, weight 1
