"""The config and the run's preflight refuse sampler settings that would train on nothing or silently do less than
asked: a three_scale batch of one item or of one class per scale under a multiscale pair loss, sampler scales the
multiscale loss cannot follow, a hierarchical batch larger than the tree, keys the chosen sampler ignores."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dynametric.config import errors_located, load_config
from dynametric.config.loader import config_notes
from dynametric.engine.preflight import check_batches
from dynametric.errors import ConfigError

FINE = np.arange(120) // 4  # 30 fine classes of 4 images, 10 middle classes (3 fine each), 2 coarse
LABELS = torch.as_tensor(np.stack([FINE, FINE // 3, FINE // 15], 1))
CSV = ["data.format=csv", "data.root=."]  # a format whose scale count comes from its data


def _preflight(overrides, labels=LABELS):
    cfg = load_config(None, overrides)
    with errors_located(cfg):
        check_batches(cfg, SimpleNamespace(labels=labels), scale_names=["fine", "middle", "coarse"])


def test_three_scale_one_item_per_batch_under_a_multiscale_pair_loss_is_refused_at_load():
    # synthetic declares 3 scales: a batch of 12 = 4 images x 3 scales is one item, each chunk one class
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.sampler=three_scale", "data.m=4", "data.batch_size=12", "loss.multiscale=true"])
    assert str(info.value) == (
        "<command line> key 'data.batch_size': a three_scale batch of data.batch_size 12 with data.m 4 images per "
        "scale chunk and 3 scale(s) holds one item, so each scale's chunk is one class: loss TripletMarginLoss "
        "compares the batch's embeddings with each other (per scale, multiscale), and without a negative pair it "
        "would train on nothing; expected data.batch_size / (data.m x 3) >= 2 (e.g. data.batch_size 24 or data.m 2)")
    with pytest.raises(ConfigError, match=r"^<command line> key 'data.batch_size': a three_scale batch of "
                                          r"data.batch_size 40 with data.m 4 .* 10 scale\(s\)"):
        load_config(None, ["data.sampler=three_scale", "data.batch_size=40", "loss.multiscale=true",
                           "data.sampler_options={scales: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}"])
    # a proxy loss learns from one class; a loss on the whole batch (not multiscale) sees three chunks
    load_config(None, ["data.sampler=three_scale", "data.m=4", "data.batch_size=12", "loss.multiscale=true",
                       "loss.name=ProxyAnchorLoss"])
    load_config(None, ["data.sampler=three_scale", "data.m=4", "data.batch_size=12"])
    load_config(None, ["data.sampler=three_scale", "data.m=4", "data.batch_size=24", "loss.multiscale=true"])


def test_three_scale_one_item_per_batch_is_refused_by_the_preflight_when_the_data_counts_the_scales():
    overrides = [*CSV, "data.sampler=three_scale", "data.m=40", "data.batch_size=120", "loss.multiscale=true"]
    cfg = load_config(None, overrides)  # the csv data names its scales: not known at load
    assert cfg.data.batch_size == 120
    with pytest.raises(ConfigError) as info:
        _preflight(overrides)
    assert info.value.key == "data.m"
    assert "holds one item, so each scale's chunk is one class" in str(info.value)
    assert "(e.g. data.batch_size 240 or data.m 20)" in str(info.value)


def test_a_scale_of_one_class_under_a_multiscale_pair_loss_is_refused():
    one_coarse = LABELS.clone()
    one_coarse[:, 2] = 7
    overrides = [*CSV, "data.sampler=three_scale", "data.m=4", "data.batch_size=48", "loss.multiscale=true"]
    with pytest.raises(ConfigError) as info:
        _preflight(overrides, one_coarse)
    assert str(info.value) == (
        "<command line> key 'loss.multiscale': the training labels have one coarse class (column 2), so every "
        "three_scale chunk of that scale is one class: loss TripletMarginLoss compares the batch's embeddings with "
        "each other (per scale, multiscale) and finds no negative pair at coarse, training on nothing there; use "
        "data with two or more classes at every scale, give that scale weight 0 ('loss.scale_weights=[1, 1, 0]') "
        "or set loss.multiscale: false")
    _preflight(overrides)  # two coarse classes: a chunk is one class by chance only (docs/data.md)
    _preflight([*overrides[:-1]], one_coarse)  # not multiscale: the loss sees the whole batch


def test_a_scale_of_one_class_given_weight_0_is_not_refused_under_three_scale():
    # the scale adds nothing to the loss: its one-class chunks (drawn from that one class) train on nothing by request
    one_coarse = LABELS.clone()
    one_coarse[:, 2] = 7
    overrides = [*CSV, "data.sampler=three_scale", "data.m=4", "data.batch_size=48", "loss.multiscale=true"]
    _preflight([*overrides, "loss.scale_weights=[1, 0.5, 0]"], one_coarse)
    # a weight above 0 at that scale is still refused, and the suggestion keeps the other weights
    with pytest.raises(ConfigError) as info:
        _preflight([*overrides, "loss.scale_weights=[1, 0.5, 0.25]"], one_coarse)
    assert info.value.key == "loss.multiscale"
    assert "give that scale weight 0 ('loss.scale_weights=[1, 0.5, 0]')" in info.value.message
    # two multiscale terms: the one that weights the one-class scale is named
    two = [*overrides, "loss.scale_weights=[1, 1, 0]",
           "extra_losses=[{name: ContrastiveLoss, multiscale: true}]"]
    with pytest.raises(ConfigError) as info:
        _preflight(two, one_coarse)
    assert info.value.key == "extra_losses[0].multiscale"
    assert "extra_losses[0] ContrastiveLoss compares" in info.value.message
    _preflight([*two[:-1], "extra_losses=[{name: ContrastiveLoss, multiscale: true, scale_weights: [2, 1, 0]}]"],
               one_coarse)


def test_sampler_scales_the_multiscale_loss_cannot_follow_are_refused():
    overrides = [*CSV, "data.sampler=three_scale", "data.m=2", "data.batch_size=16",
                 "data.sampler_options={scales: [0, 2]}"]
    with pytest.raises(ConfigError) as info:
        _preflight([*overrides, "loss.multiscale=true"])
    assert str(info.value) == (
        "<command line> key 'data.sampler_options.scales': loss.multiscale trains one loss per label column (3) on "
        "its own chunk of each item, chunk s with column s, but data.sampler_options.scales [0, 2] samples columns "
        "[0, 2] only; remove data.sampler_options.scales (every column) or set loss.multiscale: false")
    _preflight(overrides)  # a loss on the whole batch: any scales
    _preflight([*overrides[:-1], "data.sampler_options={scales: [0, 1, 2]}", "data.batch_size=24",
                "loss.multiscale=true"])
    with pytest.raises(ConfigError) as info:  # 18 rows are not whole items of 2 scales x 2 images (was 12 rows)
        _preflight([*overrides[:-2], "data.batch_size=18", "data.sampler_options={scales: [0, 2]}"])
    assert info.value.key == "data.batch_size" and "multiple of m x scales = 2 x 2 = 4" in info.value.message
    with pytest.raises(ConfigError) as info:
        _preflight([*overrides[:-1], "data.sampler_options={scales: [0, 0]}"])
    assert info.value.key == "data.sampler_options.scales" and "distinct label columns" in info.value.message


def test_a_hierarchical_batch_larger_than_the_tree_is_refused_on_the_batch_size():
    with pytest.raises(ConfigError) as info:
        _preflight([*CSV, "data.sampler=hierarchical", "data.batch_size=800"])
    assert info.value.key == "data.batch_size"
    assert str(info.value).endswith("but the parent with the 2nd most classes has 3: the largest batch is "
                                    "batch_size 24")
    _preflight([*CSV, "data.sampler=hierarchical", "data.batch_size=24"])


@pytest.mark.parametrize("overrides, key, message", [
    (["data.sampler=three_scale", "data.m=2", "data.batch_size=12", "data.sampler_scale=1"], "data.sampler_scale",
     "sampler 'three_scale' does not use sampler_scale (got 1; it applies to 'm_per_class' or 'hierarchical'): "
     "remove data.sampler_scale or set it to its default 0"),
    (["data.sampler=random", "data.m=7"], "data.m",
     "sampler 'random' does not use m (got 7; it applies to 'm_per_class', 'three_scale' or 'hierarchical'): "
     "remove data.m or set it to its default 4"),
    (["data.sampler=random", "data.sampler_scale=2"], "data.sampler_scale",
     "sampler 'random' does not use sampler_scale (got 2; it applies to 'm_per_class' or 'hierarchical'): "
     "remove data.sampler_scale or set it to its default 0"),
])
def test_a_key_the_sampler_ignores_is_refused(overrides, key, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    assert (info.value.key, info.value.message) == (key, message)
    load_config(None, ["data.sampler=hierarchical", "data.sampler_scale=0", "data.m=2", "data.batch_size=8"])


def test_a_layer_switching_the_sampler_drops_the_keys_the_new_one_ignores(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  sampler: m_per_class\n  m: 8\n  sampler_scale: 1\n  sampler_options: {}\n")
    cfg = load_config(path, ["data.sampler=random"])
    assert (cfg.data.m, cfg.data.sampler_scale) == (4, 0)
    assert any("data {m: 8, sampler_scale: 1}" in n and "does not use m or sampler_scale" in n
               for n in config_notes(cfg)), config_notes(cfg)
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {path.name}\ndata:\n  sampler: three_scale\n  batch_size: 48\n")
    cfg = load_config(child)
    assert (cfg.data.m, cfg.data.sampler_scale) == (8, 0)  # three_scale uses m, not sampler_scale


def test_a_batch_size_m_does_not_divide_is_keyed_by_the_key_that_was_set():
    with pytest.raises(ConfigError) as info:  # was keyed data.batch_size, which the user did not set
        load_config(None, ["data.m=64"])
    assert str(info.value) == ("<command line> key 'data.m': data.batch_size 32 must be a multiple of data.m 64 (a "
                               "batch holds whole classes of m images)")
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.batch_size=30"])
    assert str(info.value) == ("<command line> key 'data.batch_size': data.batch_size 30 must be a multiple of "
                               "data.m 4 (a batch holds whole classes of m images)")


def test_the_class_check_counts_every_process_of_a_step():
    """A step of W processes draws W x P distinct classes (the samplers draw them together): the preflight counted P,
    so a 2-process run on 30 classes with P = 16 passed it and met the sampler's own refusal, worded without the
    scale's name and without values that fit."""
    cfg = load_config(None, ["data.sampler=m_per_class", "data.batch_size=64", "data.m=4"])
    labels = SimpleNamespace(labels=LABELS)
    check_batches(cfg, labels, scale_names=["fine", "middle", "coarse"], world=1)  # 16 of 30 classes
    with pytest.raises(ConfigError) as info, errors_located(cfg):
        check_batches(cfg, labels, scale_names=["fine", "middle", "coarse"], world=2)
    assert str(info.value) == (
        "<command line> key 'data.batch_size': a step of 2 processes needs 2 x 16 = 32 distinct fine classes "
        "(batch_size 64 / m 4 per process; the loss sees the step's batches together) but the training split has "
        "only 30; try data.batch_size=60 or data.m=8 or at most 1 process(es) in all (trainer.devices x "
        "trainer.num_nodes)")


def test_a_user_sampler_extending_three_scale_gets_its_checks_at_load_and_in_the_preflight(monkeypatch):
    """The three_scale checks go by the sampler's class, not its name: a user's subclass registered under another
    name (docs/extending.md) is refused at load as three_scale is, named as the config names it."""
    from dynametric.data.samplers import BATCH_SAMPLERS, ThreeScaleSampler

    class MyScales(ThreeScaleSampler):
        pass

    monkeypatch.setitem(BATCH_SAMPLERS, "myscales", MyScales)
    with pytest.raises(ConfigError) as info:
        load_config(None, ["data.sampler=myscales", "data.m=4", "data.batch_size=12", "loss.multiscale=true"])
    assert str(info.value).startswith("<command line> key 'data.batch_size': a myscales batch of data.batch_size 12 "
                                      "with data.m 4 images per scale chunk and 3 scale(s) holds one item")
    overrides = [*CSV, "data.sampler=myscales", "data.m=40", "data.batch_size=120", "loss.multiscale=true"]
    with pytest.raises(ConfigError, match="a myscales batch of data.batch_size 120 .* holds one item"):
        _preflight(overrides)
