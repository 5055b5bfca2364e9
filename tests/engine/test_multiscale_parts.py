"""``MultiScaleLoss``'s per-scale parts reach the run's logs: the objective collects the weighted per-scale losses
``w_s L_s`` by the data's scale names (each equal to the weight times PML's loss on that scale's chunk and label
column, computed here independently), and ``logs/metrics.csv`` of a tiny ``loss.multiscale: true`` run has
``train/<term>/<scale>`` adding up to ``train/<term>`` and ``train/loss_epoch``; a ``multiscale: false`` run logs no
term or part columns (as before)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynametric.cli import main
from dynametric.config import load_config
from dynametric.engine.builders import build_model, build_objectives
from dynametric.engine.objective import compute_objective
from dynametric.losses import three_scale_chunks
from tests.metrics_csv import TINY_SYNTHETIC, train_epoch_rows

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["model.backbone=simple_cnn", "model.embedding_dim=8", "model.backbone_kwargs={width: 4, depth: 1}"]


def _three_scale_labels(items: int, k: int) -> torch.Tensor:
    """Labels of a three-scale batch (per item: ``k`` rows of scale 0, then of scale 1, then of scale 2): a row of
    block ``s`` of item ``i`` has label ``i`` in column ``s`` (positives within its chunk, negatives across items)
    and a label of its own in the other columns, so a chunk read on the wrong column has no positive pair."""
    rows = items * 3 * k
    labels = 100 + torch.arange(rows).repeat(3, 1).T.clone()
    for r in range(rows):
        item, block = divmod(r, 3 * k)
        labels[r, block // k] = item
    return labels


def test_the_objective_collects_the_weighted_per_scale_losses_by_scale_name() -> None:
    cfg = load_config(None, [*SMALL, "loss.name=TripletMarginLoss", "loss.kwargs={margin: 0.3}",
                             "loss.multiscale=true", "loss.scale_weights=[1.0, 0.5, 0.25]",
                             "data.sampler=three_scale", "data.m=2", "data.batch_size=12"])
    model = build_model(cfg)
    labels = _three_scale_labels(items=2, k=2)
    [obj] = build_objectives(cfg, model, labels, 3, scale_names=["leaf", "twig", "branch"])
    assert obj.loss.scale_names == ("leaf", "twig", "branch")
    torch.manual_seed(0)
    emb = model(torch.randn(12, 3, 16, 16)).detach()
    parts: dict[str, torch.Tensor] = {}
    total, terms = compute_objective(emb, labels, [obj], parts=parts)
    assert list(parts) == ["TripletMarginLoss/leaf", "TripletMarginLoss/twig", "TripletMarginLoss/branch"]
    pml = pytest.importorskip("pytorch_metric_learning.losses").TripletMarginLoss(margin=0.3)
    chunks = three_scale_chunks(12, images_per_class=2)
    expected = [w * pml(emb[rows], labels[rows, s]) for s, (rows, w) in enumerate(zip(chunks, [1.0, 0.5, 0.25],
                                                                                         strict=True))]
    assert all(float(e) > 0 for e in expected)
    torch.testing.assert_close(torch.stack(list(parts.values())), torch.stack(expected))
    torch.testing.assert_close(sum(parts.values()), terms["TripletMarginLoss"])
    torch.testing.assert_close(total.detach(), terms["TripletMarginLoss"])


def _train(out: Path, *overrides: str) -> list[dict[str, float]]:
    assert main(["train", "--config", str(ROOT / "configs" / "synthetic.yaml"), "--out", str(out), "--no-progress",
                 *TINY_SYNTHETIC, "trainer.max_epochs=2", "loss.name=TripletMarginLoss", *overrides]) == 0
    rows = train_epoch_rows(out)
    assert len(rows) == 2
    return rows


def test_a_multiscale_run_logs_its_per_scale_losses(tmp_path: Path) -> None:
    rows = _train(tmp_path / "ms", "loss.multiscale=true", "loss.scale_weights=[1.0, 0.5, 0.25]")
    scales = ["train/TripletMarginLoss/fine", "train/TripletMarginLoss/middle", "train/TripletMarginLoss/coarse"]
    for row in rows:
        assert set(scales) <= set(row), row
        assert sum(row[k] for k in scales) == pytest.approx(row["train/TripletMarginLoss"], rel=1e-5)
        assert row["train/TripletMarginLoss"] == pytest.approx(row["train/loss_epoch"], rel=1e-6)  # one term, weight 1
        assert all(row[k] > 0 for k in scales)


def test_a_single_scale_run_logs_no_term_or_part_columns(tmp_path: Path) -> None:
    rows = _train(tmp_path / "single", "loss.multiscale=false")
    assert [sorted(k for k in row if k.startswith("train/")) for row in rows] == [["train/loss_epoch"]] * 2
