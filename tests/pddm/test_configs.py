"""The shipped PDDM configs load, build a PDDMLoss, and agree with the model's embedding width."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynametric.config import load_config
from dynametric.engine.builders import validate_components
from dynametric.losses import LOSSES, build_loss
from dynametric.losses.pddm import PDDMLoss
from dynametric.models import build_embedder

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "pddm"


@pytest.mark.parametrize("name", ["cub", "cars", "cub_resnet50", "cars_resnet50"])
def test_pddm_config_loads_and_matches_model_width(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.yaml")
    assert cfg.loss.name == "PDDMLoss"
    assert cfg.data.format == ("cub200" if name.startswith("cub") else "cars196")
    assert cfg.eval.k_values == [1, 2, 4, 8]
    loss = PDDMLoss(**cfg.loss.kwargs)
    assert loss.mode == "faithful_one_per_batch" and loss.variant == "quadruplet"
    assert (loss.alpha, loss.beta, loss.lambda_) == (0.5, 1.0, 0.5)
    if cfg.model.embedding_dim is None:  # the pooled feature itself: its width comes from the backbone
        model = build_embedder(backbone=cfg.model.backbone, pretrained=False, embedding_dim=None)
        assert model.embedding_dim == loss.unit.embedding_dim
    else:
        assert cfg.model.embedding_dim == loss.unit.embedding_dim


def test_pddm_loss_is_registered_and_configs_validate() -> None:
    assert LOSSES["PDDMLoss"] is PDDMLoss
    loss = build_loss("PDDMLoss", embedding_dim=16, mode="per_positive_pair", variant="triplet")
    assert isinstance(loss, PDDMLoss) and loss.unit.hidden_dim == 16
    built = validate_components(load_config(CONFIGS / "cars.yaml", ["loss.kwargs.mode=per_positive_pair"]))
    assert isinstance(built["loss"], PDDMLoss) and built["loss"].mode == "per_positive_pair"


def test_synthetic_pddm_config_and_loss_optimizer_group() -> None:
    from dynametric.engine.module import OptimSettings, parameter_groups
    from dynametric.engine.objective import Objective

    cfg = load_config(CONFIGS / "synthetic.yaml")
    loss = validate_components(cfg)["loss"]
    assert isinstance(loss, PDDMLoss) and loss.unit.embedding_dim == cfg.model.embedding_dim
    model = build_embedder(backbone=cfg.model.backbone, pretrained=False, embedding_dim=cfg.model.embedding_dim)
    groups = {g["name"]: g["params"] for g in parameter_groups(model, [Objective(loss=loss)], OptimSettings())}
    assert {id(p) for p in groups["loss"]} == {id(p) for p in loss.unit.parameters()}
