"""summed / alternating combinations, engine wiring of the sharing configs, evaluation of the three embeddings."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dynametric.config import load_config
from dynametric.engine.builders import Datasets
from dynametric.engine.module import parameter_groups
from dynametric.engine.objective import compute_objective
from dynametric.errors import ConfigError, InputError
from dynametric.losses import MarginLoss, TripletMarginLoss
from dynametric.losses.decorrelation import DecorrelationLoss
from dynametric.methods.sharing import (
    SharingParts,
    SharingSettings,
    SharingTrainer,
    evaluate_heads,
    sharing_param_groups,
    summed_objectives,
)
from dynametric.metrics import evaluate_embeddings
from dynametric.miners import InterClassTripletMiner
from dynametric.models.sharing import Decorrelation
from dynametric.pipeline import build_components

ROOT = Path(__file__).resolve().parents[2]


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(6, 10)
        self.heads = nn.ModuleDict({"class": nn.Linear(10, 4), "shared": nn.Linear(10, 4)})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = torch.relu(self.backbone(x))
        return {k: F.normalize(m(h), dim=1) for k, m in self.heads.items()}


def _parts(dec: nn.Module | None) -> SharingParts:
    return SharingParts(class_loss=TripletMarginLoss(margin=0.2), shared_loss=MarginLoss(), decorrelation=dec)


def test_summed_step_is_one_update_on_the_weighted_sum() -> None:
    torch.manual_seed(0)
    model = TwoHeads()
    dec = Decorrelation(4, 4, hidden=8)
    settings = SharingSettings(alpha_shared=0.3, rho=5.0)
    x, y = torch.randn(12, 6), torch.arange(4).repeat(3)
    ref_model, ref_dec = copy.deepcopy(model), copy.deepcopy(dec)
    parts = _parts(dec)
    trainer = SharingTrainer(model, parts, settings, torch.optim.SGD(list(model.parameters()) + list(dec.parameters()),
                                                                     lr=0.1))
    out = trainer.summed_step(x, y)
    assert set(out) == {"class", "shared", "adv"}
    # reference: the same sum written out, one SGD step
    o = ref_model(x)
    total = (TripletMarginLoss(margin=0.2)(o["class"], y) + 0.3 * MarginLoss()(o["shared"], y)
             + 5.0 * ref_dec(o["class"], o["shared"]))
    params = list(ref_model.parameters()) + list(ref_dec.parameters())
    grads = torch.autograd.grad(total, params)
    for p_new, p_old, gr in zip(list(model.parameters()) + list(dec.parameters()), params, grads, strict=True):
        assert torch.allclose(p_new, p_old - 0.1 * gr, atol=1e-6)


@pytest.mark.parametrize(("p_aux", "adv_step"), [(0.0, "shared"), (1.0, "shared"), (1.0, "class"), (0.5, "shared"),
                                                 (0.5, "both")])
def test_alternating_steps(p_aux: float, adv_step: str) -> None:
    torch.manual_seed(1)
    model = TwoHeads()
    parts = _parts(Decorrelation(4, 4, hidden=8))
    settings = SharingSettings(combination="alternating", p_aux=p_aux, rho=1.0, adv_step=adv_step)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    trainer = SharingTrainer(model, parts, settings, opt, generator=torch.Generator().manual_seed(0))
    x, y = torch.randn(12, 6), torch.arange(4).repeat(3)
    drawn = []

    def shared_batch() -> tuple[torch.Tensor, torch.Tensor]:
        drawn.append(1)
        return torch.randn(12, 6), torch.arange(3).repeat(4)  # surrogate labels

    trainer_log_adv_counts: list[int] = []
    calls = {"class": trainer.class_step, "shared": trainer.shared_step}

    def counting(kind: str):
        def step(*args):
            out = calls[kind](*args)
            trainer_log_adv_counts.append(int("adv" in out))
            return out
        return step

    trainer.class_step, trainer.shared_step = counting("class"), counting("shared")  # type: ignore[method-assign]
    logs = [trainer.alternating_step((x, y), shared_batch) for _ in range(200)]
    assert trainer.class_steps == 200 and trainer.shared_steps == len(drawn)
    if p_aux == 0.0:
        assert trainer.shared_steps == 0
    elif p_aux == 1.0:
        assert trainer.shared_steps == 200
    else:
        assert 70 < trainer.shared_steps < 130
    # rho * L_adv rides on the configured step only
    with_adv = [log for log in logs if "adv" in log]
    if adv_step == "class":
        assert len(with_adv) == 200
    elif adv_step == "both":  # MIC's code: the class and the shared step both carry it (one log entry per iteration)
        assert len(with_adv) == 200
        assert sum(trainer_log_adv_counts) == 200 + trainer.shared_steps
    else:
        assert len(with_adv) == trainer.shared_steps and all("shared" in log for log in with_adv)


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
                         decorrelation=Decorrelation(4, 4, hidden=8))
    groups = {g["name"]: g for g in sharing_param_groups(model, parts, lr=1e-5, weight_decay=4e-4)}
    assert groups["loss"]["lr"] == 5e-4 and len(groups["loss"]["params"]) == 2
    assert groups["decorrelation"]["weight_decay"] == 1e-6
    with pytest.raises(ConfigError):
        SharingSettings(combination="both")
    with pytest.raises(ConfigError):
        SharingSettings(p_aux=2.0)
    with pytest.raises(InputError, match="two-head"):
        SharingTrainer(nn.Linear(6, 4), parts, SharingSettings(), torch.optim.SGD(model.parameters(), lr=0.1)
                       ).summed_step(torch.randn(4, 6), torch.arange(4))


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
