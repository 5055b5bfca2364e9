"""The summed and alternating combinations on the engine's modules (``MetricLearningModule`` with
``summed_objectives``; ``AlternatingSharingModule``), each driven by a Lightning trainer: what a step updates, the
adv term on the configured step, p_aux, the step counts (``max_steps`` never exceeded), errors; engine wiring of the
sharing configs; the optimizer groups; evaluation of the three embeddings."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dynametric.config import load_config
from dynametric.engine.builders import Datasets
from dynametric.engine.data import MetricDataModule
from dynametric.engine.module import MetricLearningModule, OptimSettings, parameter_groups
from dynametric.engine.objective import compute_objective
from dynametric.engine.trainer import TrainerSettings, build_trainer
from dynametric.errors import ConfigError
from dynametric.labels import as_label_matrix
from dynametric.losses import MarginLoss, TripletMarginLoss
from dynametric.losses.decorrelation import DecorrelationLoss
from dynametric.methods.mic import MICSettings
from dynametric.methods.sharing import (
    SharingParts,
    SharingSettings,
    evaluate_heads,
    sharing_param_groups,
    summed_objectives,
)
from dynametric.methods.sharing.alternating import AlternatingSettings, AlternatingSharingModule, HookPlan
from dynametric.metrics import evaluate_embeddings
from dynametric.miners import InterClassTripletMiner
from dynametric.pipeline import build_components

ROOT = Path(__file__).resolve().parents[2]
SGD = {"optimizer": "sgd", "momentum": 0.0, "weight_decay": 0.0}


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(6, 10)
        self.heads = nn.ModuleDict({"class": nn.Linear(10, 4), "shared": nn.Linear(10, 4)})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.backbone(x))
        return {k: F.normalize(m(h), dim=1) for k, m in self.heads.items()}


class Points(torch.utils.data.Dataset):
    """An in-memory LabeledDataset of feature vectors."""

    scale_names = ("fine",)
    split = "train"
    paths = None

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.labels = x, as_label_matrix(y)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.labels[i]


def _fit(module: L.LightningModule, x: torch.Tensor, y: torch.Tensor, iterations: int,
         max_steps: int = -1) -> L.Trainer:
    """``iterations`` training batches of the whole of ``(x, y)`` in order (one epoch), through the engine's
    trainer and data module."""
    batches = [list(range(x.shape[0]))] * iterations
    dm = MetricDataModule(Points(x, y), batch_sampler_factory=lambda labels, rank, world: batches)
    settings = TrainerSettings(max_epochs=1, max_steps=max_steps, accelerator="cpu", progress_bar=False,
                               log_every_n_steps=1)
    trainer = build_trainer(settings, dm, None, enable_validation=False)
    trainer.fit(module, datamodule=dm)
    return trainer


def _parts(dec: nn.Module | None) -> SharingParts:
    return SharingParts(class_loss=TripletMarginLoss(margin=0.2), shared_loss=MarginLoss(), decorrelation=dec)


class Recording(AlternatingSharingModule):
    """Records ``(step kind, whether the adv term was in it)`` of every optimizer step."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.record: list[tuple[str, bool]] = []

    def _step(self, images, labels, terms_list, where, batch_idx):  # type: ignore[no-untyped-def]
        out = super()._step(images, labels, terms_list, where, batch_idx)
        assert out is not None
        self.record.append((where, "adv" in out))
        return out


def _alternating(p_aux: float, adv_step: str, lr: float = 0.01) -> Recording:
    parts = _parts(DecorrelationLoss(8, hidden=8))
    objectives = summed_objectives(parts, SharingSettings(alpha_shared=1.0, rho=1.0))
    plan = HookPlan("sharing_alternating", p_aux, adv_step, "class", "shared", m_shared=3, shared_batch_size=12,
                    seed=0)
    return Recording(TwoHeads(), objectives, OptimSettings(lr=lr, **SGD), plan=plan)


def test_summed_step_is_one_update_on_the_weighted_sum() -> None:
    torch.manual_seed(0)
    model = TwoHeads()
    dec = DecorrelationLoss(8, hidden=8)
    x, y = torch.randn(12, 6), torch.arange(4).repeat(3)
    ref_model, ref_dec = copy.deepcopy(model), copy.deepcopy(dec)
    module = MetricLearningModule(model, summed_objectives(_parts(dec), SharingSettings(alpha_shared=0.3, rho=5.0)),
                                  OptimSettings(lr=0.1, **SGD))
    trainer = _fit(module, x, y, iterations=1)
    assert trainer.global_step == 1
    assert {"train/class", "train/shared", "train/adv"} <= set(trainer.callback_metrics)
    # reference: the same sum written out, one SGD step
    o = ref_model(x)
    total = (TripletMarginLoss(margin=0.2)(o["class"], y) + 0.3 * MarginLoss()(o["shared"], y)
             + 5.0 * ref_dec.decorrelation(o["class"], o["shared"]))
    params = list(ref_model.parameters()) + list(ref_dec.parameters())
    grads = torch.autograd.grad(total, params)
    for p_new, p_old, gr in zip(list(model.parameters()) + list(dec.parameters()), params, grads, strict=True):
        assert torch.allclose(p_new, p_old - 0.1 * gr, atol=1e-6)


@pytest.mark.parametrize(("p_aux", "adv_step"), [(0.0, "shared"), (1.0, "shared"), (1.0, "class"), (0.5, "shared"),
                                                 (0.5, "both")])
def test_alternating_steps(p_aux: float, adv_step: str) -> None:
    torch.manual_seed(1)
    module = _alternating(p_aux, adv_step)
    x, y = torch.randn(12, 6), torch.arange(4).repeat(3)
    trainer = _fit(module, x, y, iterations=100)
    kinds = [w for w, _ in module.record]
    # every iteration starts with a class step; a shared step only ever follows one
    assert kinds.count("class") == module.class_steps == 100
    assert kinds.count("shared") == module.shared_steps
    assert all(kinds[i - 1] == "class" for i, k in enumerate(kinds) if k == "shared")
    assert trainer.global_step == module.class_steps + module.shared_steps  # one optimizer step each
    if p_aux == 0.0:
        assert module.shared_steps == 0
    elif p_aux == 1.0:
        assert module.shared_steps == 100
    else:
        assert 30 < module.shared_steps < 70
    # rho * L_adv rides on the configured step only
    with_adv = [w for w, adv in module.record if adv]
    if adv_step == "class":
        assert with_adv == ["class"] * 100
    elif adv_step == "both":  # MIC's code: the class and the shared step both carry it
        assert with_adv == kinds and len(with_adv) == 100 + module.shared_steps
    else:
        assert with_adv == ["shared"] * module.shared_steps


@pytest.mark.parametrize("max_steps", [6, 7])
def test_alternating_never_exceeds_max_steps(max_steps: int) -> None:
    """p_aux = 1 takes two steps per iteration: with an odd max_steps the last iteration's shared step is skipped, so
    the run ends at exactly max_steps optimizer steps (as the matched-updates benchmark needs)."""
    torch.manual_seed(2)
    module = _alternating(1.0, "shared")
    trainer = _fit(module, torch.randn(12, 6), torch.arange(4).repeat(3), iterations=20, max_steps=max_steps)
    assert trainer.global_step == max_steps
    assert (module.class_steps, module.shared_steps) == ((max_steps + 1) // 2, max_steps // 2)
    assert [w for w, _ in module.record][-1] == ("class" if max_steps % 2 else "shared")


def test_summed_objectives_match_the_engine_sum() -> None:
    torch.manual_seed(2)
    outputs = TwoHeads()(torch.randn(12, 6))
    y = torch.arange(4).repeat(3)
    dec = DecorrelationLoss(embedding_size=8, hidden=8)
    objs = summed_objectives(_parts(dec), SharingSettings(alpha_shared=0.2, rho=3.0))
    total, terms = compute_objective(outputs, y, objs)
    manual = (TripletMarginLoss(margin=0.2)(outputs["class"], y) + 0.2 * MarginLoss()(outputs["shared"], y)
              + 3.0 * dec.decorrelation(outputs["class"], outputs["shared"]))
    assert torch.allclose(total, manual, atol=1e-6) and set(terms) == {"class", "shared", "adv"}


def test_param_groups_and_settings_errors() -> None:
    model = TwoHeads()
    parts = SharingParts(MarginLoss(learn_beta=True), MarginLoss(learn_beta=True, num_classes=5),
                         decorrelation=DecorrelationLoss(8, hidden=8))
    groups = {g["name"]: g for g in sharing_param_groups(model, parts, lr=1e-5, weight_decay=4e-4)}
    assert groups["loss"]["lr"] == 5e-4 and len(groups["loss"]["params"]) == 2
    assert groups["decorrelation"]["weight_decay"] == 1e-6
    # the same groups reach the engine's optimizer through the module's group_builder
    module = MetricLearningModule(model, summed_objectives(parts, SharingSettings()), OptimSettings(lr=1e-5),
                                  group_builder=lambda e, _o, s: sharing_param_groups(e, parts, s.lr, 4e-4))
    opt = module.configure_optimizers()
    built = {g["name"]: (g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups}
    n_embedder = len(list(model.parameters()))
    assert built == {"embedder": (1e-5, 4e-4, n_embedder), "loss": (5e-4, 0.0, 2), "decorrelation": (1e-5, 1e-6, 4)}
    with pytest.raises(ConfigError):
        SharingSettings(rho=-1.0)
    with pytest.raises(ConfigError) as err:
        MICSettings.from_kwargs({"combination": "both"})
    assert err.value.key == "method.kwargs.combination"
    with pytest.raises(ConfigError) as err:
        AlternatingSettings.from_kwargs({"p_aux": 2.0})
    assert err.value.key == "method.kwargs.p_aux"
    with pytest.raises(ConfigError) as err:
        AlternatingSettings.from_kwargs({"adv_step": "neither"})
    assert err.value.key == "method.kwargs.adv_step"
    # a one-output model has no class / shared heads: both modules refuse at the first step, naming the head
    x, y = torch.randn(4, 6), torch.arange(4)
    for module in (MetricLearningModule(nn.Linear(6, 4), summed_objectives(parts, SharingSettings()),
                                        OptimSettings(lr=0.1, **SGD)),
                   AlternatingSharingModule(nn.Linear(6, 4), summed_objectives(parts, SharingSettings()),
                                            OptimSettings(lr=0.1, **SGD), plan=HookPlan(
                                                "sharing_alternating", 1.0, "shared", "class", "shared", 2, 4, 0))):
        with pytest.raises(ConfigError, match="single output, but head 'class'") as err:
            _fit(module, x, y, iterations=1)
        assert err.value.key == "head"


def test_evaluate_heads_reports_class_shared_and_concat() -> None:
    g = torch.Generator().manual_seed(3)
    y = torch.arange(5).repeat_interleave(4)
    c = F.normalize(torch.randn(20, 4, generator=g) + 3 * F.one_hot(y, 5)[:, :4].float(), dim=1)
    s = F.normalize(torch.randn(20, 4, generator=g), dim=1)
    res = evaluate_heads({"class": c, "shared": s}, y, metrics=["recall@1", "map@r"], k_values=(1,))
    assert set(res) == {"class", "shared", "concat"}
    expect = evaluate_embeddings(torch.cat([c, s], 1), y, metrics=["recall@1", "map@r"], k_values=(1,))
    assert res["concat"]["fine"]["map@r"] == pytest.approx(expect["fine"]["map@r"])
    assert res["class"]["fine"]["recall@1"] > res["shared"]["fine"]["recall@1"]


def test_synthetic_sharing_config_builds_and_steps_through_the_engine() -> None:
    cfg = load_config(ROOT / "configs" / "sharing" / "synthetic.yaml", ["model.embedding_dim=16"])
    labels = torch.stack([torch.arange(8).repeat(2), torch.arange(8).repeat(2) // 2,
                          torch.arange(8).repeat(2) // 4], 1)
    stand_in = Datasets(train=SimpleNamespace(labels=labels), val=None, test=None,
                        scale_names=["fine", "middle", "coarse"], val_source="none")
    comp = build_components(cfg, datasets=stand_in)
    names = [o.name for o in comp.objectives]
    assert names == ["MarginLoss@class", "shared", "adv"]
    assert isinstance(comp.objectives[1].miner, InterClassTripletMiner)
    dec = comp.objectives[2].loss
    assert isinstance(dec, DecorrelationLoss) and dec.class_dim == 16 and comp.objectives[2].weight == 100.0
    groups = {g["name"]: g for g in parameter_groups(comp.embedder, comp.objectives, comp.module.optim_settings)}
    assert any(p is dec.decorrelation.regressor[0].weight for p in groups["loss"]["params"])
    assert groups["loss"]["weight_decay"] == 1e-6
    images = torch.rand(16, 3, 32, 32)
    total, terms = compute_objective(comp.embedder(images), labels, comp.objectives)
    total.backward()
    assert torch.isfinite(total) and set(terms) == set(names)
    assert dec.decorrelation.regressor[0].weight.grad is not None


def test_alternating_loss_curve_and_learning_rates_sit_at_the_loggers_steps() -> None:
    """Two optimizer steps per batch (p_aux = 1): the loggers file each batch at the optimizer steps done before it
    (0, 2, 4, ...: global_step, the axis of the validation rounds), and so do the report's loss curve and learning
    rates (they were at the loggers' count of batches, 0, 1, 2, ..., before)."""
    torch.manual_seed(3)
    module = _alternating(1.0, "shared")
    trainer = _fit(module, torch.randn(12, 6), torch.arange(4).repeat(3), iterations=6)
    assert trainer.global_step == 12 and module.logged_step() == 12
    assert [step for step, _ in module.loss_history] == [0.0, 2.0, 4.0, 6.0, 8.0, 10.0]
    assert {name: [step for step, _ in series] for name, series in module.lr_history.items()} == {
        name: [0.0, 2.0, 4.0, 6.0, 8.0, 10.0] for name in module.lr_history} and module.lr_history
