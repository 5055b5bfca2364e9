"""PDDM's double-header parts and its mining count reach the run's logs: ``PDDMLoss.loss_parts`` (``E_m``, ``E_e``
reduced as the loss is, so ``loss = E_m + lambda * E_e``; ``quadruplets``; ``degenerate``) and ``logs/metrics.csv``
of a tiny ``method.name: pddm`` run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynametric.cli import main
from dynametric.losses.pddm import PDDMLoss
from tests.metrics_csv import TINY_SYNTHETIC, train_epoch_rows
from tests.pddm.helpers import LABELS, XS, points, position_unit

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("mode,quadruplets", [("faithful_one_per_batch", 1), ("per_positive_pair", 3)])
@pytest.mark.parametrize("variant", ["quadruplet", "triplet"])
@pytest.mark.parametrize("reduction,alpha,beta,lam", [("mean", 0.05, 30.0, 0.5), ("mean_nonzero", 0.0, 1.0, 0.0),
                                                      ("mean_nonzero", 0.3, 4.0, 2.0)])
def test_parts_add_up_to_the_loss(mode: str, quadruplets: int, variant: str, reduction: str, alpha, beta,
                                  lam) -> None:
    loss = PDDMLoss(2, hidden_dim=2, dropout=0.0, normalize_embeddings=False, mode=mode, variant=variant,
                    alpha=alpha, beta=beta, lambda_=lam, reduction=reduction)
    loss.unit.load_state_dict(position_unit().state_dict())
    assert loss.loss_parts() == {}
    value = loss(points(XS), LABELS)
    parts = loss.loss_parts()
    assert set(parts) == {"E_m", "E_e", "quadruplets", "degenerate"}
    assert all(isinstance(p, torch.Tensor) and p.dim() == 0 and not p.requires_grad for p in parts.values())
    assert float(parts["E_m"] + lam * parts["E_e"]) == pytest.approx(float(value.detach()), rel=1e-6, abs=1e-7)
    assert (float(parts["quadruplets"]), float(parts["degenerate"])) == (quadruplets, 0.0)
    stats = loss.stats()
    assert (stats["E_m"], stats["E_e"]) == (float(parts["E_m"]), float(parts["E_e"]))


def test_a_degenerate_batch_has_zero_parts() -> None:
    loss = PDDMLoss(4)
    loss(torch.randn(4, 4), torch.tensor([0, 1, 2, 3]))
    assert {k: float(v) for k, v in loss.loss_parts().items()} == {"E_m": 0.0, "E_e": 0.0, "quadruplets": 0.0,
                                                                    "degenerate": 1.0}


def test_a_pddm_run_logs_the_double_header_parts_and_the_quadruplet_count(tmp_path: Path) -> None:
    out = tmp_path / "pddm"
    assert main(["train", "--config", str(ROOT / "configs" / "pddm" / "synthetic.yaml"), "--out", str(out),
                 "--no-progress", *TINY_SYNTHETIC, "trainer.max_epochs=2", "method.name=pddm",
                 "loss.kwargs.embedding_dim=8", "loss.kwargs.mode=per_positive_pair",
                 "loss.kwargs.reduction=mean_nonzero", "loss.kwargs.lambda_=0.25"]) == 0
    rows = train_epoch_rows(out)
    assert len(rows) == 2
    for row in rows:
        assert {"train/PDDMLoss/E_m", "train/PDDMLoss/E_e", "train/PDDMLoss/quadruplets",
                "train/PDDMLoss/degenerate"} <= set(row), row
        total = row["train/PDDMLoss/E_m"] + 0.25 * row["train/PDDMLoss/E_e"]
        assert total == pytest.approx(row["train/PDDMLoss"], rel=1e-5)
        assert row["train/PDDMLoss"] == pytest.approx(row["train/loss_epoch"], rel=1e-6)
        # 16 images, 4 classes x 4: 4 * C(4, 2) = 24 positive pairs, one quadruplet each
        assert (row["train/PDDMLoss/quadruplets"], row["train/PDDMLoss/degenerate"]) == (24.0, 0.0)
