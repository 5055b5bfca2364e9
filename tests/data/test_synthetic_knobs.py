"""SyntheticHierarchy knobs for the controlled claim benchmarks: coarse coherence, test-only middle classes,
per-class spread, held-out-factor split (and its same-factor validation). Defaults must stay today's data
(negative control)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from dynametric.data.synthetic import SHAPES, SyntheticHierarchy, coarse_groups, val_shapes
from dynametric.errors import InputError

TINY = {"train": 2, "val": 1, "test": 1}


def _digest(ds: SyntheticHierarchy) -> str:
    return hashlib.sha256(ds.images.tobytes() + ds.labels.numpy().tobytes()).hexdigest()


def test_defaults_are_unchanged_negative_control():
    # pinned from the generator before the knobs existed: the knobs' defaults must reproduce it bit for bit
    ds = SyntheticHierarchy("train", seed=3, image_size=16, images_per_class=2, fine_per_shape=TINY)
    assert _digest(ds) == "9f749ab5f3a8df2a5663415e154c637c478cd1ca08e74770392c0d0f871843d8"
    explicit = SyntheticHierarchy("train", seed=3, image_size=16, images_per_class=2, fine_per_shape=TINY,
                                  coarse_coherence=1.0, test_only_middle=0, class_spread=None, held_out_factor=None)
    assert _digest(explicit) == _digest(ds)


def _families(groups: list[int]) -> list[set[int]]:
    return [{SHAPES[i][1] for i, g in enumerate(groups) if g == k} for k in range(3)]


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_coarse_coherence_groups(seed):
    assert _families(coarse_groups(seed, 1.0)) == [{0}, {1}, {2}]
    for c in (0.0, 0.1):  # no group keeps two shapes of one family
        fams = _families(coarse_groups(seed, c))
        assert all(len(f) == 3 for f in fams)
    for c in (0.34, 0.5, 0.8):  # exactly one coherent group; the other two mix two families each
        groups = coarse_groups(seed, c)
        sizes = sorted(len(f) for f in _families(groups))
        assert sizes == [1, 2, 2]
        assert sorted(groups.count(k) for k in range(3)) == [3, 3, 3]
    assert coarse_groups(seed, 0.5) == coarse_groups(seed, 0.5)


def test_coherence_changes_only_coarse_labels():
    kw = {"seed": 2, "image_size": 16, "images_per_class": 2, "fine_per_shape": TINY}
    a = SyntheticHierarchy("test", coarse_coherence=1.0, **kw)
    b = SyntheticHierarchy("test", coarse_coherence=0.0, **kw)
    assert np.array_equal(a.images, b.images)
    assert torch.equal(a.labels[:, :2], b.labels[:, :2])
    assert not torch.equal(a.labels[:, 2], b.labels[:, 2])
    # at coherence 0 the coarse label is shape mod 3 (the g-th shape of every family)
    assert torch.equal(b.labels[:, 2], b.labels[:, 1] % 3)
    assert b.class_counts() == a.class_counts()
    with pytest.raises(InputError, match="coarse_coherence"):
        SyntheticHierarchy("test", coarse_coherence=1.5, **kw)


def test_test_only_middle_classes():
    kw = {"seed": 4, "image_size": 8, "images_per_class": 1, "fine_per_shape": TINY, "test_only_middle": 2}
    tr, va, te = (SyntheticHierarchy(s, **kw) for s in ("train", "val", "test"))
    held = {v["middle"] for v in te.classes if v["test_only_middle"]}
    assert len(held) == 2
    assert set(tr.labels[:, 1].tolist()) == set(range(9)) - held
    assert set(va.labels[:, 1].tolist()) == set(range(9)) - held
    assert set(te.labels[:, 1].tolist()) == set(range(9))
    assert te.class_counts()["fine"] == 9 * TINY["test"] and tr.class_counts()["fine"] == 7 * TINY["train"]
    assert not set(tr.labels[:, 0].tolist()) & set(te.labels[:, 0].tolist())
    assert held == {v["middle"] for v in SyntheticHierarchy("test", **kw).classes if v["test_only_middle"]}
    with pytest.raises(InputError, match="test_only_middle"):
        SyntheticHierarchy("test", test_only_middle=9)


def _intra_class_std(ds: SyntheticHierarchy) -> dict[int, float]:
    x = ds.tensors().flatten(1).double()
    out = {}
    for f in ds.labels[:, 0].unique().tolist():
        xs = x[ds.labels[:, 0] == f]
        out[f] = float(xs.std(0).mean())
    return out


def test_class_spread_is_measurable_on_the_images():
    kw = {"seed": 1, "image_size": 16, "images_per_class": 12, "fine_per_shape": {"train": 3}}
    ds = SyntheticHierarchy("train", class_spread=(0.15, 2.0), **kw)
    again = SyntheticHierarchy("train", class_spread=(0.15, 2.0), **kw)
    assert np.array_equal(ds.images, again.images)
    spread = {v["fine"]: v["spread"] for v in ds.classes}
    assert min(spread.values()) >= 0.15 and max(spread.values()) <= 2.0
    assert max(spread.values()) / min(spread.values()) > 4  # 27 classes drawn log-uniformly
    measured = _intra_class_std(ds)
    keys = sorted(spread)
    rank_s = np.argsort(np.argsort([spread[k] for k in keys]))
    rank_m = np.argsort(np.argsort([measured[k] for k in keys]))
    rho = np.corrcoef(rank_s, rank_m)[0, 1]
    assert rho > 0.6, rho  # wider classes have visibly more pixel variation
    tight = [measured[k] for k in keys if spread[k] < 0.4]
    wide = [measured[k] for k in keys if spread[k] > 1.2]
    assert tight and wide and max(tight) < min(wide)
    with pytest.raises(InputError, match="class_spread"):
        SyntheticHierarchy("train", class_spread=(2.0, 1.0), **kw)


@pytest.mark.parametrize("held_out, train_f, test_f",
                         [("texture", "colour", "texture"), ("colour", "texture", "colour")])
def test_held_out_factor_split(held_out, train_f, test_f):
    kw = {"seed": 0, "image_size": 8, "images_per_class": 6, "held_out_factor": held_out}
    tr, va, te = (SyntheticHierarchy(s, **kw) for s in ("train", "val", "test"))
    idx = {"colour": 0, "texture": 1, "size": 2}
    n_values = {"colour": 6, "texture": 4, "size": 2}
    assert tr.class_counts()["fine"] == 9 * n_values[train_f]
    assert va.class_counts()["fine"] == 9 * 2
    assert te.class_counts()["fine"] == 9 * n_values[test_f]
    ids = [set(d.labels[:, 0].tolist()) for d in (tr, va, te)]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for ds, cls_f, free_f in ((tr, train_f, test_f), (te, test_f, train_f), (va, "size", test_f)):
        for f in ds.labels[:, 0].unique().tolist():
            rows = [i for i in range(len(ds)) if int(ds.labels[i, 0]) == f]
            assert len({ds.attributes[i][idx[cls_f]] for i in rows}) == 1  # the class factor is fixed
            assert len({int(ds.labels[i, 1]) for i in rows}) == 1  # one shape per class
        # the held-out factor varies within classes of the other splits (over the whole split: all values occur)
        assert {a[idx[free_f]] for a in ds.attributes} == set(
            {"colour": ["red", "green", "blue", "yellow", "magenta", "cyan"],
             "texture": ["solid", "striped", "hollow", "two_tone"], "size": ["small", "large"]}[free_f])
    assert np.array_equal(tr.images, SyntheticHierarchy("train", **kw).images)
    with pytest.raises(InputError, match="held_out_factor"):
        SyntheticHierarchy("train", held_out_factor="size")
    with pytest.raises(InputError, match="held_out_factor"):
        SyntheticHierarchy("train", held_out_factor="texture", fine_per_shape={"train": 2})


def test_held_out_factor_default_val_is_unchanged():
    # pinned from the generator before ``val_classes`` existed (val holds out size, test texture)
    kw = {"seed": 2, "image_size": 8, "images_per_class": 2, "held_out_factor": "texture"}
    pinned = {"train": "238eaa801188f19d30e427bbedc734208d99fbca9f135524ed99a4fbc4ffd7bc",
              "val": "9be6e26001fc058fc8283c384b7196a6ac800caff155ec4fb57ad53cd6212bf7",
              "test": "4d12470382829b885ba8a8fd989d4ffdf9f4fafd0bafb4ad2fe67225d6b3357d"}
    for split, digest in pinned.items():
        assert _digest(SyntheticHierarchy(split, **kw)) == digest
    assert _digest(SyntheticHierarchy("val", val_classes="other_factor", **kw)) == pinned["val"]


@pytest.mark.parametrize("held_out, train_f, seed", [("texture", "colour", 0), ("colour", "texture", 5)])
def test_held_out_factor_same_factor_validation(held_out, train_f, seed):
    kw = {"seed": seed, "image_size": 8, "images_per_class": 6, "held_out_factor": held_out}
    same = {s: SyntheticHierarchy(s, val_classes="same_factor", **kw) for s in ("train", "val", "test")}
    other = {s: SyntheticHierarchy(s, **kw) for s in ("train", "test")}
    n_values = {"colour": 6, "texture": 4}[held_out]
    idx = {"colour": 0, "texture": 1, "size": 2}
    # train classes unchanged, bit for bit
    assert same["train"].classes == other["train"].classes
    assert np.array_equal(same["train"].images, other["train"].images)
    assert torch.equal(same["train"].labels, other["train"].labels)
    # shapes: one val shape per family (drawn from the seed), the other 6 shapes in test, all 9 in train
    vs = val_shapes(seed)
    assert sorted(SHAPES[i][1] for i in vs) == [0, 1, 2] and vs == val_shapes(seed)
    assert set(same["val"].labels[:, 1].tolist()) == set(vs)
    assert set(same["test"].labels[:, 1].tolist()) == set(range(9)) - set(vs)
    assert set(same["train"].labels[:, 1].tolist()) == set(range(9))
    assert same["val"].class_counts()["fine"] == 3 * n_values
    assert same["test"].class_counts()["fine"] == 6 * n_values
    # val and test share the class factor (the held-out one) and their class tables are disjoint
    assert {v["class_factor"] for v in same["val"].classes} == {v["class_factor"] for v in same["test"].classes} \
        == {held_out}
    keys = [{(v["shape"], v[held_out]) for v in same[s].classes} for s in ("val", "test")]
    assert len(keys[0]) == 3 * n_values and not keys[0] & keys[1]
    # the test classes are the default's test classes restricted to the non-val shapes
    assert {(v["shape"], v[held_out]) for v in same["test"].classes} == {
        (v["shape"], v[held_out]) for v in other["test"].classes if v["middle"] not in vs}
    ids = [set(same[s].labels[:, 0].tolist()) for s in ("train", "val", "test")]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for ds in (same["val"], same["test"]):
        for f in ds.labels[:, 0].unique().tolist():
            rows = [i for i in range(len(ds)) if int(ds.labels[i, 0]) == f]
            assert len({ds.attributes[i][idx[held_out]] for i in rows}) == 1  # the held-out factor defines the class
        # the training class factor varies within val/test classes (all its values occur in the split)
        assert len({a[idx[train_f]] for a in ds.attributes}) == {"colour": 6, "texture": 4}[train_f]
    assert np.array_equal(same["val"].images, SyntheticHierarchy("val", val_classes="same_factor", **kw).images)
    assert [val_shapes(s) for s in range(6)] != [vs] * 6  # the seed does pick the shapes
    with pytest.raises(InputError, match="val_classes"):
        SyntheticHierarchy("val", val_classes="same", **kw)
    with pytest.raises(InputError, match="val_classes.*needs held_out_factor"):
        SyntheticHierarchy("val", val_classes="same_factor", seed=0, image_size=8, images_per_class=1)
