"""The examples of docs/losses.md's "Coming from pytorch-metric-learning" section run and do what they say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from dynametric.config import LossConfig, MinerConfig
from dynametric.engine.builders import build_loss_term, build_miner
from dynametric.losses import LOSSES, MultiScaleLoss, PMLLoss, PMLMiner, pml_loss, pml_miner
from dynametric.miners import MINERS
from dynametric.pml import pml_catalogue

# the reference implementation (the dev extra installs it); the module is skipped without it
pytorch_metric_learning = pytest.importorskip("pytorch_metric_learning")
pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

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


def test_yaml_example_trains(tmp_path):
    """The YAML example (a `pml:` loss with `multiscale: true` and a `pml:` miner) on the tiny synthetic run: its
    training step equals PML's SubCenterArcFaceLoss of each scale with PML's BatchEasyHardMiner run on that scale's
    labels, weighted (it used to pass the dry run and stop at the first step), and `dynametric train` runs it."""
    from dynametric.cli import main
    from dynametric.config import load_config
    from dynametric.engine.builders import build_datasets
    from dynametric.pipeline import build_components
    from tests.commands.test_train import TINY
    from tests.losses.test_pml_dropin import _first_training_batch

    block = re.findall(r"```yaml\n(.*?)```", section(), flags=re.S)[0]
    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "docs.yaml").write_text("extends: tiny.yaml\n" + block)
    cfg = load_config(tmp_path / "docs.yaml")
    datasets = build_datasets(cfg, with_test=False)
    comps = build_components(cfg, datasets=datasets)
    (term,) = comps.objectives
    loss = term.loss
    assert term.miner is None and isinstance(loss, MultiScaleLoss) and loss.weights == [1.0, 0.5, 0.25]
    assert [type(m.miner).__name__ for m in loss.scale_miners] == ["BatchEasyHardMiner"] * 3
    images, labels = _first_training_batch(cfg, datasets)
    module = comps.module.double()
    with torch.no_grad():
        emb = module.embedder(images)
    total = module.training_step((images, labels), 0)

    def mine(s: int) -> tuple:
        return pml_miners.BatchEasyHardMiner(pos_strategy="easy", neg_strategy="semihard")(emb, labels[:, s])

    expected = sum(w * loss.losses[s].loss(emb, labels[:, s], mine(s)) for s, w in enumerate(loss.weights))
    torch.testing.assert_close(total.detach(), expected, rtol=1e-12, atol=1e-12)
    assert main(["train", "--config", str(tmp_path / "docs.yaml"), "--out", str(tmp_path / "run"), "--no-progress",
                 "trainer.max_steps=1", "run.report=false"]) == 0


def non_native() -> tuple[set[str], set[str]]:
    """PML's loss and miner classes that dynametric does not implement under the same name."""
    return ({n for n in pml_catalogue("losses") if n not in LOSSES},
            {n for n in pml_catalogue("miners") if n not in MINERS})


def test_native_counts_and_the_table_of_other_pml_classes_match_both_libraries():
    """The section's counts were wrong (16 of 34 losses, 6 miners; PML 2.9.0 has 38 and 10, 14 and 5 of them
    native): recounted here from both libraries, with the table of the classes that are not native."""
    losses, miners = pml_catalogue("losses"), pml_catalogue("miners")
    other_losses, other_miners = non_native()
    found = re.search(r"(\d+) of the (\d+) loss classes and (\d+) of the (\d+) miner classes of PML ([\d.]+)",
                      " ".join(section().split()))
    assert found is not None
    assert found.groups() == (str(len(losses) - len(other_losses)), str(len(losses)),
                              str(len(miners) - len(other_miners)), str(len(miners)),
                              pytorch_metric_learning.__version__)
    text = section()
    start = text.index("| PML class |", text.index("**PML classes without a native port**"))
    rows = text[start:text.index("\n\n", start)].splitlines()[2:]
    listed = [name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])]
    assert sorted(listed) == sorted(other_losses | other_miners)
    assert {"CrossBatchMemory", "SupConLoss", "NTXentLoss", "SubCenterArcFaceLoss"} <= set(listed)


def hier_batch():
    """Three scales with equal class sizes at each (SmoothAPLoss needs them), a label-free augmented view."""
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(24, 6, generator=g)
    fine = torch.arange(24) % 6
    return emb, torch.stack([fine, fine // 2, fine // 3], dim=1), emb + 0.1 * torch.randn(24, 6, generator=g)


# The table's recipe for each PML loss that is not native: (constructor keywords, how it is called); "labels" is
# column 1 of the [B, S] labels for PML and the whole matrix for the adapter (label_scale=1).
LOSS_RECIPES = {name: ({}, "labels") for name in [
    "AngularLoss", "DynamicSoftMarginLoss", "FastAPLoss", "HistogramLoss", "InstanceLoss", "IntraPairVarianceLoss",
    "NCALoss", "NTXentLoss", "PNPLoss", "SignalToNoiseRatioContrastiveLoss", "SmoothAPLoss", "SupConLoss",
    "ThresholdConsistentMarginLoss", "TupletMarginLoss"]}
LOSS_RECIPES |= {
    "RankedListLoss": ({"margin": 0.4, "Tn": 10}, "labels"),
    "LargeMarginSoftmaxLoss": ({"num_classes": 3, "embedding_size": 6}, "labels"),
    "SphereFaceLoss": ({"num_classes": 3, "embedding_size": 6}, "labels"),
    "SubCenterArcFaceLoss": ({"num_classes": 3, "embedding_size": 6}, "labels"),
    "P2SGradLoss": ({"descriptors_dim": 6, "num_classes": 3}, "labels"),
    "ManifoldLoss": ({"l": 6, "K": 4}, "none"),
    "VICRegLoss": ({}, "ref_emb"),
    "SelfSupervisedLoss": ({"loss": pml_losses.TripletMarginLoss()}, "ref_emb"),
    "CrossBatchMemory": ({"loss": pml_losses.ContrastiveLoss(), "embedding_size": 6, "memory_size": 48}, "labels"),
    "MultipleLosses": ({"losses": [pml_losses.TripletMarginLoss(), pml_losses.NTXentLoss()]}, "labels"),
}


@pytest.mark.parametrize("name", sorted(LOSS_RECIPES))
def test_each_non_native_pml_loss_runs_through_the_adapter_as_the_table_says(name):
    assert set(LOSS_RECIPES) == non_native()[0]  # a class PML adds needs a row in the table and a recipe here
    kwargs, call = LOSS_RECIPES[name]
    emb, labels, aug = hier_batch()
    torch.manual_seed(0)
    theirs = getattr(pml_losses, name)(**kwargs)
    torch.manual_seed(0)
    if name == "MultipleLosses":  # the table: build it, then wrap it (its own weights= / miners= stay PML's)
        ours = pml_loss(getattr(pml_losses, name)(**kwargs), label_scale=1)
    else:
        ours = pml_loss(name, label_scale=1 if call == "labels" else None, **kwargs)
    args = {"labels": ((labels,), (labels[:, 1],)), "none": ((), ()), "ref_emb": ((), ())}[call]
    extra = {"ref_emb": aug} if call == "ref_emb" else {}
    torch.manual_seed(1)
    want = theirs(emb, *args[1], **extra)
    torch.manual_seed(1)
    got = ours(emb, *args[0], **extra)
    torch.testing.assert_close(got, want)
    assert torch.isfinite(got)


@pytest.mark.parametrize("name", sorted(non_native()[1]))
def test_each_non_native_pml_miner_runs_through_the_adapter(name):
    emb, labels, _ = hier_batch()
    torch.manual_seed(2)
    want = getattr(pml_miners, name)()(emb, labels[:, 2])
    torch.manual_seed(2)
    got = pml_miner(name, label_scale=2)(emb, labels)
    assert [t.tolist() for t in got] == [t.tolist() for t in want]
