"""The ``optim`` section's checks when a config loads: the schedule's options (ranges per schedule, keys a schedule
does not use), ``momentum`` of an optimizer without one, and batches of a single class for the losses that compare
the batch's embeddings with each other."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from dynametric.config import load_config
from dynametric.config.schema import SCHEDULE_KEYS, pairs_in_batch
from dynametric.engine.builders import optim_settings
from dynametric.engine.module import OptimSettings, lr_lambda
from dynametric.errors import ConfigError
from tests.optional import needs_pml, pml_case

_SCHEDULES = ("none", "step", "multistep", "cosine", "plateau")


def _refused(overrides: list[str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(overrides=overrides)
    return info.value


@pytest.mark.parametrize("overrides, key, expected", [
    # the QA cases: a negative factor gave lr -0.001 in last.ckpt, min_lr 5 ended the run at 5.0
    (["optim.scheduler.name=step", "optim.scheduler.step_size=1", "optim.scheduler.gamma=-1"], "optim.scheduler.gamma",
     "scheduler 'step' multiplies the rate by gamma at each drop: expected 0 < gamma <= 1 (a larger one would raise "
     "the rate above optim.lr), got -1.0"),
    (["optim.scheduler.name=cosine", "optim.scheduler.min_lr=5"], "optim.scheduler.min_lr",
     "the cosine schedule's final rate min_lr 5.0 is above optim.lr 0.001: it would raise the rate; expected "
     "0 <= min_lr <= optim.lr"),
    (["optim.scheduler.name=step", "optim.scheduler.gamma=1.5"], "optim.scheduler.gamma", "got 1.5"),
    (["optim.scheduler.name=step", "optim.scheduler.gamma=0"], "optim.scheduler.gamma", "got 0.0"),
    (["optim.scheduler.name=step", "optim.scheduler.gamma=.nan"], "optim.scheduler.gamma", "got nan"),
    (["optim.scheduler.name=multistep", "optim.scheduler.milestones=[2]", "optim.scheduler.gamma=2"],
     "optim.scheduler.gamma", "scheduler 'multistep' multiplies the rate by gamma at each drop"),
    # torch's ReduceLROnPlateau refuses factor >= 1 (once a traceback from configure_optimizers)
    (["optim.scheduler.name=plateau", "optim.scheduler.gamma=1.5"], "optim.scheduler.gamma",
     "scheduler 'plateau' multiplies the rate by gamma when the monitor stalls: expected 0 < gamma < 1, got 1.5"),
    (["optim.scheduler.name=plateau", "optim.scheduler.gamma=1"], "optim.scheduler.gamma", "got 1.0"),
    (["optim.scheduler.name=plateau", "optim.scheduler.gamma=-0.5"], "optim.scheduler.gamma", "got -0.5"),
    (["optim.scheduler.name=cosine", "optim.scheduler.min_lr=-1e-5"], "optim.scheduler.min_lr",
     "the final learning rate (min_lr) must be a finite number >= 0, got -1e-05"),
    (["optim.scheduler.name=cosine", "optim.scheduler.min_lr=.inf"], "optim.scheduler.min_lr", "got inf"),
    (["optim.scheduler.name=cosine", "optim.lr=1e-4", "optim.scheduler.min_lr=2e-4"], "optim.scheduler.min_lr",
     "min_lr 0.0002 is above optim.lr 0.0001"),
    (["optim.scheduler.name=multistep", "optim.scheduler.milestones=[0, 3]"], "optim.scheduler.milestones",
     "expected distinct epochs >= 1 (the rate drops when an epoch reaches one), got [0, 3]"),
    (["optim.scheduler.name=multistep", "optim.scheduler.milestones=[3, 3]"], "optim.scheduler.milestones",
     "got [3, 3]"),
    (["optim.scheduler.warmup_epochs=20"], "optim.scheduler.warmup_epochs",
     "a warm-up of 20 epochs covers the whole run (trainer.max_epochs = 10): the rate would never reach optim.lr"),
    # keys the chosen schedule does not use (once silently ignored)
    (["optim.scheduler.name=step", "optim.scheduler.milestones=[3]"], "optim.scheduler.milestones",
     "scheduler 'step' does not use milestones (got [3]; it applies to 'multistep'): remove "
     "optim.scheduler.milestones or set it to its default [], or use name: multistep to multiply the rate by gamma "
     "at each epoch in milestones"),
    (["optim.scheduler.gamma=0.5"], "optim.scheduler.gamma",
     "scheduler 'none' does not use gamma (got 0.5; it applies to 'step' and 'multistep' and 'plateau')"),
    (["optim.scheduler.name=cosine", "optim.scheduler.step_size=5"], "optim.scheduler.step_size",
     "scheduler 'cosine' does not use step_size"),
    (["optim.scheduler.name=step", "optim.scheduler.min_lr=1e-5"], "optim.scheduler.min_lr",
     "scheduler 'step' does not use min_lr"),
    (["optim.scheduler.name=step", "optim.scheduler.interval=step"], "optim.scheduler.interval",
     "scheduler 'step' does not use interval (got 'step'; it applies to 'cosine')"),
    (["optim.scheduler.name=plateau", "optim.scheduler.warmup_epochs=1"], "optim.scheduler.warmup_epochs",
     "scheduler 'plateau' does not use warmup_epochs"),
    (["optim.momentum=0.5"], "optim.momentum",
     "optimizer 'adam' has no momentum (got 0.5; it applies to 'sgd' and 'rmsprop')"),
])
def test_schedule_values_that_were_accepted_silently(overrides, key, expected) -> None:
    err = _refused(overrides)
    assert err.key == key and err.file == "<command line>"
    assert str(err).startswith(f"<command line> key '{key}': ") and expected in str(err) and "\n" not in str(err)


def test_a_schedule_error_in_a_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("optim:\n  lr: 0.01\n  scheduler:\n    name: plateau\n    gamma: 1.5\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (Path(str(info.value.file)).name, info.value.line, info.value.key) == ("s.yaml", 5, "optim.scheduler.gamma")
    assert str(info.value).startswith(f"{path}:5 key 'optim.scheduler.gamma': scheduler 'plateau'")


_BASE = "optim:\n  lr: 0.01\n  scheduler:\n    name: multistep\n    milestones: [10, 20]\n    gamma: 0.5\n" \
        "    warmup_epochs: 2\n"


def _notes(cfg) -> list[str]:
    from dynametric.config.loader import config_notes

    return config_notes(cfg)


@pytest.mark.parametrize("new, kept, dropped", [
    ("cosine", {"warmup_epochs": 2}, ["gamma", "milestones"]),
    ("step", {"gamma": 0.5, "warmup_epochs": 2}, ["milestones"]),
    ("plateau", {"gamma": 0.5}, ["milestones", "warmup_epochs"]),
    ("none", {"warmup_epochs": 2}, ["gamma", "milestones"]),
])
def test_a_child_that_switches_the_schedule_drops_the_parents_keys_the_new_one_does_not_use(tmp_path: Path, new,
                                                                                               kept, dropped) -> None:
    """A child config that changed only optim.scheduler.name failed on the keys its parent wrote for the old
    schedule (`scheduler 'cosine' does not use milestones`). Those keys are now dropped with a note naming the
    parent's line; the keys the new schedule also uses are kept."""
    (tmp_path / "base.yaml").write_text(_BASE)
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: base.yaml\noptim:\n  scheduler:\n    name: {new}\n")
    cfg = load_config(child)
    sched = cfg.optim.scheduler
    assert sched.name == new
    defaults = {"gamma": 0.1, "milestones": [], "warmup_epochs": 0}
    for key, value in {**defaults, **kept}.items():
        assert getattr(sched, key) == value, key
    first = "5" if "milestones" in dropped else "7"  # the parent's line of the first dropped key (file order)
    assert _notes(cfg) == [f"optim.scheduler {{{', '.join(f'{k}: {_flow(k)}' for k in dropped)}}} from "
                           f"{tmp_path / 'base.yaml'}:{first} not used: optim.scheduler.name changed in {child}:4 "
                           f"(multistep -> {new}), which does not use {' or '.join(dropped)}"]
    # the same switch on the command line drops the same keys; a key the command line gives itself is kept
    cfg = load_config(tmp_path / "base.yaml", [f"optim.scheduler.name={new}"])
    assert [getattr(cfg.optim.scheduler, k) for k in dropped] == [defaults[k] for k in dropped]
    assert "changed on the command line (multistep -> " in _notes(cfg)[0]


def _flow(key: str) -> str:
    return {"gamma": "0.5", "milestones": "[10, 20]", "warmup_epochs": "2"}[key]


def test_keys_the_switching_layer_writes_itself_are_kept_and_checked(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text(_BASE)
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\noptim:\n  scheduler:\n    name: step\n    step_size: 4\n    gamma: 0.2\n")
    cfg = load_config(child)
    assert (cfg.optim.scheduler.step_size, cfg.optim.scheduler.gamma, cfg.optim.scheduler.milestones) == (4, 0.2, [])
    # a key the changing layer writes for a schedule that does not use it stays an error at its own line
    child.write_text("extends: base.yaml\noptim:\n  scheduler:\n    name: cosine\n    gamma: 0.2\n")
    with pytest.raises(ConfigError) as info:
        load_config(child)
    assert (Path(str(info.value.file)).name, info.value.line, info.value.key) == ("child.yaml", 5,
                                                                                  "optim.scheduler.gamma")
    err = _refused(["optim.scheduler.name=cosine", "optim.scheduler.gamma=0.3"])
    assert err.key == "optim.scheduler.gamma" and err.file == "<command line>"
    # the same schedule again keeps everything, and no note
    cfg = load_config(tmp_path / "base.yaml", ["optim.scheduler.name=multistep"])
    assert cfg.optim.scheduler.milestones == [10, 20] and _notes(cfg) == []


def test_the_shipped_schedules_and_the_defaults_of_unused_keys_load() -> None:
    for overrides in (["optim.scheduler.name=step", "optim.scheduler.step_size=10", "optim.scheduler.gamma=1"],
                      ["optim.scheduler.name=multistep", "optim.scheduler.milestones=[5, 2]"],
                      ["optim.scheduler.name=cosine", "optim.scheduler.min_lr=0.001", "optim.scheduler.interval=step",
                       "optim.scheduler.warmup_epochs=9"],
                      ["optim.scheduler.name=plateau", "optim.scheduler.gamma=0.5", "optim.scheduler.step_size=3"],
                      ["optim.scheduler.name=none", "optim.scheduler.gamma=0.1", "optim.scheduler.warmup_epochs=2"],
                      ["optim.name=sgd", "optim.momentum=0.5"]):
        load_config(overrides=overrides)
    assert set(SCHEDULE_KEYS) == {"step_size", "gamma", "milestones", "warmup_epochs", "min_lr", "interval"}


@pytest.mark.parametrize("name", _SCHEDULES)
def test_an_accepted_schedule_keeps_every_rate_within_0_and_its_group_lr(name: str) -> None:
    """The invariant behind the checks: over a grid of the keys the schedule uses, whatever loads gives a factor in
    [0, 1] at every step (and a plateau factor torch accepts); the values that leave [0, 1] are all refused."""
    grid = {"gamma": [-1.0, 0.0, 0.3, 1.0, 1.5], "min_lr": [-1e-3, 0.0, 5e-4, 1e-3, 5.0], "step_size": [1, 3],
            "milestones": [[1, 3], [2]], "warmup_epochs": [0, 2]}
    grid = {k: v for k, v in grid.items() if name in SCHEDULE_KEYS[k]}
    fields = {"step_size": "step_size_epochs"}
    accepted = refused_outside = 0
    for values in itertools.product(*grid.values()):
        given = dict(zip(grid, values))
        overrides = [f"optim.scheduler.name={name}", "optim.lr=1e-3",
                     *(f"optim.scheduler.{k}={v}" for k, v in given.items())]
        raw = OptimSettings(scheduler=name, lr=1e-3, **{fields.get(k, k): v for k, v in given.items()})
        try:
            cfg = load_config(overrides=overrides)
        except ConfigError:
            if name != "plateau":
                f = lr_lambda(raw, total_steps=60, steps_per_epoch=6)
                refused_outside += any(not 0 <= f(s) <= 1 for s in range(60))
            continue
        accepted += 1
        settings = optim_settings(cfg)
        if name == "plateau":
            torch.optim.lr_scheduler.ReduceLROnPlateau(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3),
                                                       factor=settings.gamma)
            continue
        f = lr_lambda(settings, total_steps=60, steps_per_epoch=6)
        assert all(0 <= f(s) <= 1 for s in range(60)), overrides
    assert accepted > 0
    if name in ("step", "multistep", "cosine"):
        assert refused_outside > 0  # the grid holds values that drove the rate out of [0, optim.lr]: all refused


# ------------------------------------------------------------------------------------- one class per batch
@pytest.mark.parametrize("overrides, key", [
    (["data.batch_size=16", "data.m=16"], "data.m"),  # the QA case: loss -0.0 at every step
    (["data.batch_size=4"], "data.batch_size"),  # m left at its default: the batch size is what was set
    (["data.batch_size=16", "data.m=16", "loss.name=ProxyAnchorLoss", "miner.name=MultiSimilarityMiner"], "data.m"),
    pml_case(["data.batch_size=16", "data.m=16", "loss.name=pml:ContrastiveLoss"], "data.m"),
    (["data.batch_size=16", "data.m=16", "loss.name=CSLLoss", "loss.kwargs={mode: pairs}"], "data.m"),
    (["data.batch_size=8", "data.m=8", "data.sampler=hierarchical", "data.sampler_options={parents_per_batch: 1}"],
     "data.m"),
])
def test_one_class_per_batch_is_refused_for_losses_that_compare_the_batch(overrides, key) -> None:
    err = _refused(overrides)
    assert err.key == key and "holds one class" in str(err) and "expected data.batch_size / data.m >= 2" in str(err)
    assert "\n" not in str(err)


def test_the_one_class_message() -> None:
    err = _refused(["data.batch_size=16", "data.m=16"])
    assert str(err) == ("<command line> key 'data.m': a batch of data.batch_size 16 with data.m 16 images per class "
                        "holds one class: loss TripletMarginLoss compares the batch's embeddings with each other, and "
                        "without a negative pair it would train on nothing; expected data.batch_size / data.m >= 2 "
                        "(e.g. data.batch_size 32 or data.m 8)")


@pytest.mark.parametrize("overrides", [
    ["loss.name=ProxyAnchorLoss"], ["loss.name=NormalizedSoftmaxLoss"], ["loss.name=ArcFaceLoss"],
    pml_case(["loss.name=pml:ProxyAnchorLoss"]), pml_case(["loss.name=pml:ArcFaceLoss"]), ["loss.name=CSLLoss"],
])  # (data.sampler=random does not use data.m: data.m=16 is refused there, tests/engine/test_sampler_config_checks)
def test_one_class_per_batch_is_allowed_for_losses_against_class_weights(overrides) -> None:
    cfg = load_config(overrides=["data.batch_size=16", "data.m=16", *overrides])
    assert cfg.data.batch_size // cfg.data.m == 1


# ------------------------------------------------------------------------------------- one image per class
def _one_image_note(overrides, config=None):
    from dynametric.pipeline.run_checks import one_image_per_class_note

    return one_image_per_class_note(load_config(config, ["data.m=1", *overrides]))


@pytest.mark.parametrize("overrides, named", [
    ([], "loss TripletMarginLoss compares the batch's embeddings with each other"),
    (["data.batch_size=8", "loss.name=MarginLoss", "miner.name=DistanceWeightedMiner"],
     "loss's miner DistanceWeightedMiner mines pairs of the batch"),
    (["data.sampler_scale=1", "loss.kwargs.scale=1"],
     "loss TripletMarginLoss compares the batch's embeddings with each other"),
    (["loss.name=ProxyAnchorLoss", "extra_losses=[{name: ContrastiveLoss}]"],
     "extra_losses[0] ContrastiveLoss compares the batch's embeddings with each other"),
    pml_case(["loss.name=pml:ContrastiveLoss"], "loss pml:ContrastiveLoss compares the batch's embeddings with each "
                                                "other"),
])
def test_one_image_per_class_is_noted_for_terms_that_compare_the_batch_at_the_sampled_column(overrides,
                                                                                             named) -> None:
    """data.m 1: each class once per batch, no positive pair for a term at the sampled column: PDDM's run trained
    at loss 0.0 every step (the trained metrics moved by weight decay only), accepted without a word. A note, not a
    refusal: a pair loss still learns from its negatives, and a run trained so must still load (evaluate, export)."""
    column = 1 if "data.sampler_scale=1" in overrides else 0
    assert _one_image_note(overrides) == (
        f"note: data.m 1 puts one image of each class (label column {column}) in a batch, so there is no positive "
        f"pair (two images of one class) where {named}: a loss that needs one (triplets, quadruplets) learns "
        "nothing, a pair loss only from its negative pairs; set data.m >= 2")


@pytest.mark.parametrize("overrides", [
    ["loss.multiscale=true"],  # the coarser scales' copies have positive pairs
    ["loss.kwargs.scale=1"],  # middle classes repeat in a batch of distinct fine classes
    ["loss.kwargs.scale=-1"],  # counted from the data's last scale: not known here
    ["loss.name=CSLLoss"],  # reads every column
    ["loss.name=ProxyAnchorLoss"],  # against class weights
    ["data.sampler=three_scale", "data.batch_size=12"],  # its m is per scale chunk: its own checks
])
def test_one_image_per_class_is_not_noted_where_the_term_has_positives(overrides) -> None:
    assert _one_image_note(overrides) is None


def test_one_image_per_class_of_the_pddm_config_is_noted_by_the_dry_run_and_still_loads(capsys) -> None:
    from dynametric.cli import main

    config = Path(__file__).resolve().parents[1] / "configs" / "pddm" / "synthetic.yaml"
    assert load_config(config, ["data.m=1"]).data.m == 1  # a run trained so by an earlier version still loads
    assert main(["train", "--dry-run", "--config", str(config), "data.m=1"]) == 0
    assert ("note: data.m 1 puts one image of each class (label column 0) in a batch, so there is no positive pair "
            "(two images of one class) where loss PDDMLoss compares") in capsys.readouterr().err
    assert _one_image_note([], config=None) is not None and load_config(None, ["data.m=2"]).data.m == 2


def test_an_extra_term_that_compares_the_batch_is_named() -> None:
    err = _refused(["data.batch_size=16", "data.m=16", "loss.name=ProxyAnchorLoss",
                    "extra_losses=[{name: MarginLoss}]"])
    assert "extra_losses[0] MarginLoss compares the batch's embeddings" in str(err)


def test_pairs_in_batch_by_loss() -> None:
    assert pairs_in_batch("TripletMarginLoss", {}) and pairs_in_batch("MarginLoss", {"num_classes": 3})
    assert pairs_in_batch("PDDMLoss", {})
    assert not pairs_in_batch("SoftTripleLoss", {})
    assert not pairs_in_batch("CSLLoss", {}) and pairs_in_batch("CSLLoss", {"mode": "pairs"})
    assert not pairs_in_batch("DecorrelationLoss", {})


@needs_pml
def test_pairs_in_batch_by_pml_loss() -> None:
    assert pairs_in_batch("pml:SupConLoss", {}) and not pairs_in_batch("pml:SoftTripleLoss", {})
