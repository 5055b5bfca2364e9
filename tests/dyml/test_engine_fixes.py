"""Engine builders around DyML losses: proxies in their own optimizer group, num_classes for CosFace/ArcFace from
``label_scale`` (their ``scale`` is the logit scale), only a *required* num_classes filled, gapped label ids."""

from __future__ import annotations

import pytest
import torch

from dynametric.config import config_from_dict
from dynametric.engine.builders import build_datasets, build_loss, carve_validation
from dynametric.engine.module import parameter_groups
from dynametric.errors import ConfigError
from dynametric.losses import CSLLoss, MultiScaleLoss
from dynametric.pipeline import build_components

LABELS = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 1, 0], [3, 1, 1], [4, 2, 1]])


def _cfg(loss: dict, **extra) -> object:
    raw = {"data": {"format": "synthetic", "options": {"images_per_class": 2, "image_size": 8,
                                                       "fine_per_shape": {"train": 2, "val": 1, "test": 1}},
                    "batch_size": 12, "m": 2},
           "model": {"backbone": "simple_cnn", "embedding_dim": 8, "backbone_kwargs": {"width": 4, "depth": 1}},
           "loss": loss, **extra}
    return config_from_dict(raw)


@pytest.mark.parametrize("name", ["CosFaceLoss", "ArcFaceLoss"])
def test_margin_softmax_num_classes_follow_label_scale_not_logit_scale(name: str) -> None:
    loss = build_loss(name, {"scale": 30.0}, "loss", LABELS, 4)  # logit scale 30: not a label column
    assert loss.num_classes == 5 and loss.scale == 0 and loss.logit_scale == 30.0
    loss = build_loss(name, {"scale": 30.0, "label_scale": 2}, "loss", LABELS, 4)
    assert loss.num_classes == 2 and loss.scale == 2
    value = loss(torch.nn.functional.normalize(torch.randn(5, 4), dim=1), LABELS)
    assert torch.isfinite(value)
    with pytest.raises(ConfigError) as err:
        build_loss(name, {"label_scale": 5}, "loss", LABELS, 4)
    assert err.value.key == "loss.kwargs.label_scale"


def test_optional_num_classes_keeps_its_default() -> None:
    margin = build_loss("MarginLoss", {"learn_beta": True}, "loss", LABELS, 4)
    assert margin.num_classes is None  # one global beta, not one per class
    assert [p.numel() for p in margin.parameters()] == [1]
    proxy = build_loss("ProxyAnchorLoss", {"scale": 1}, "loss", LABELS, 4)
    assert proxy.num_classes == 3  # required: filled from the loss's own label column


def test_gapped_training_ids_after_a_class_carve_out() -> None:
    labels = torch.arange(10).repeat_interleave(3)
    full = type("DS", (), {"labels": torch.stack([labels, labels // 2, labels // 5], 1), "__len__": lambda s: 30})()
    train, val = carve_validation(full, 0.3, seed=1)
    ids = torch.unique(train.labels[:, 0])
    assert len(ids) == 7 and val is not None and set(ids.tolist()) != set(range(7))  # gaps: val classes removed
    loss = build_loss("CosFaceLoss", {}, "loss", train.labels, 4)
    assert loss.num_classes == int(train.labels[:, 0].max()) + 1
    value = loss(torch.nn.functional.normalize(torch.randn(len(train.labels), 4), dim=1), train.labels)
    assert torch.isfinite(value)
    raw = torch.stack([labels * 37 + 1000, labels // 2 + 50, labels // 5 + 7], 1)  # raw, gapped ids: CSL maps them
    csl = CSLLoss.from_labels(raw, embedding_size=4)
    assert csl.proxies.shape == (10, 4)
    assert torch.isfinite(csl(torch.nn.functional.normalize(torch.randn(30, 4), dim=1), raw))


@pytest.mark.parametrize("loss", [{"name": "CSLLoss"}, {"name": "CosFaceLoss", "multiscale": True}])
def test_proxies_get_their_own_optimizer_group(loss: dict) -> None:
    cfg = _cfg(loss, optim={"lr": 0.001, "loss": {"lr": 0.05, "weight_decay": 0.0}})
    datasets = build_datasets(cfg, with_test=False)
    comps = build_components(cfg, datasets=datasets, progress_bar=False)
    groups = {g["name"]: g for g in parameter_groups(comps.embedder, comps.objectives, comps.module.optim_settings)}
    assert set(groups) >= {"loss", "head"} and groups["loss"]["lr"] == 0.05 and groups["loss"]["weight_decay"] == 0.0
    term = comps.objectives[0].loss
    expected = [term.proxies] if isinstance(term, CSLLoss) else [term.loss_at(s).W for s in range(3)]
    assert isinstance(term, CSLLoss | MultiScaleLoss)
    assert {id(p) for p in groups["loss"]["params"]} == {id(p) for p in expected}
    embedder_ids = {id(p) for p in comps.embedder.parameters()}
    assert not embedder_ids & {id(p) for p in groups["loss"]["params"]}
    opt = comps.module.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    assert any(g["lr"] == 0.05 and {id(p) for p in g["params"]} == {id(p) for p in expected} for g in opt.param_groups)
    if isinstance(term, MultiScaleLoss):  # one weight matrix per scale, sized by that scale's training classes
        n = [int(datasets.train.labels[:, s].max()) + 1 for s in range(3)]
        assert [term.loss_at(s).W.shape[1] for s in range(3)] == n
