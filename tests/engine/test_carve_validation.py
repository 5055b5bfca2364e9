"""The engine's validation carve-out goes through the data layer's class-disjoint split and keeps, index for index,
the split the engine made before the two were merged (a frozen copy of that algorithm is the reference)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from dynametric.data.splits import class_disjoint_folds, class_disjoint_split
from dynametric.engine.builders import carve_validation
from dynametric.errors import ConfigError


def _frozen_engine_split(labels: torch.Tensor, fraction: float, seed: int, scale: int = 0,
                         folds: int | None = None, fold: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """The engine's carve-out as it was (row indices; ``None`` = no validation set)."""
    classes = torch.unique(labels[:, scale]).numpy()
    perm = np.random.default_rng(seed).permutation(classes)
    if folds is not None:
        val_classes = np.array_split(perm, folds)[fold]
    else:
        n_val = int(round(fraction * len(classes)))
        if n_val == 0:
            return None
        val_classes = perm[:n_val]
    is_val = np.isin(labels[:, scale].numpy(), val_classes)
    return np.nonzero(~is_val)[0], np.nonzero(is_val)[0]


class _DS:
    def __init__(self, labels: torch.Tensor) -> None:
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)


def _labels(n_fine: int, seed: int) -> torch.Tensor:
    fine = torch.arange(n_fine).repeat_interleave(3) * 7 + 5  # gapped ids
    fine = fine[torch.randperm(len(fine), generator=torch.Generator().manual_seed(seed))]
    return torch.stack([fine, fine // 20, fine // 60], 1)


@pytest.mark.parametrize("seed", [0, 1, 7, 123, 2024])
@pytest.mark.parametrize("n_fine", [5, 12, 37])
def test_carve_validation_matches_the_frozen_engine_split(seed: int, n_fine: int) -> None:
    labels = _labels(n_fine, seed)
    ds = _DS(labels)
    for fraction in (0.1, 0.2, 0.25, 0.5, 0.75):
        for scale in (0, 1):
            n_classes = int(torch.unique(labels[:, scale]).numel())
            if round(fraction * n_classes) >= n_classes:
                continue
            expected = _frozen_engine_split(labels, fraction, seed, scale)
            if expected is None:  # rounds to no class: once no validation set, now refused (the fraction is named)
                with pytest.raises(ConfigError, match=rf"val_fraction {fraction} .* rounds to no validation class"):
                    carve_validation(ds, fraction, seed, scale=scale)
                continue
            train, val = carve_validation(ds, fraction, seed, scale=scale)
            assert train.indices.tolist() == expected[0].tolist()
            assert val.indices.tolist() == expected[1].tolist()
            tr_idx, va_idx = class_disjoint_split(labels, fraction, seed=seed, scale=scale)
            assert va_idx.tolist() == expected[1].tolist() and tr_idx.tolist() == expected[0].tolist()
    for k in (2, 3, 4):
        if k > n_fine:
            continue
        for fold in range(k):
            expected = _frozen_engine_split(labels, 0.2, seed, folds=k, fold=fold)
            train, val = carve_validation(ds, 0.2, seed, folds=k, fold=fold)
            assert train.indices.tolist() == expected[0].tolist()
            assert val.indices.tolist() == expected[1].tolist()
            assert class_disjoint_folds(labels, k, seed=seed)[fold][1].tolist() == expected[1].tolist()


def test_carve_validation_rules_of_the_config() -> None:
    ds = _DS(_labels(10, 0))
    train, val = carve_validation(ds, 0.0, seed=3)  # 0: no validation set
    assert train is ds and val is None
    with pytest.raises(ConfigError, match="leaves no training class") as info:
        carve_validation(ds, 0.96, seed=0)
    assert info.value.key == "data.val_fraction"
    with pytest.raises(ConfigError) as info:
        carve_validation(ds, 0.2, seed=0, folds=11)
    assert info.value.key == "data.val_folds"


# ------------------------------------------------------------------ data.val_carve_scale: which classes are held out
_SMALL = ["data.options={images_per_class: 2}", "data.val_split=null", "data.val_fraction=0.4"]


@pytest.mark.parametrize("scale", ["coarse", "coarsest", "2"])
def test_val_carve_scale_holds_out_whole_coarse_subtrees(scale: str) -> None:
    from dynametric.config import load_config
    from dynametric.data import build_dataset
    from dynametric.data.splits import validation_split
    from dynametric.engine.builders import build_datasets

    ds = build_datasets(load_config(overrides=[*_SMALL, f"data.val_carve_scale={scale}"]), with_test=False)
    assert ds.val_carved and ds.val_source == "40% of the training coarse classes"
    for s in range(3):  # unseen at the coarse scale and at every finer one: mean/map@r validates on unseen classes
        assert not set(ds.train.labels[:, s].tolist()) & set(ds.val.labels[:, s].tolist())
    assert len(set(ds.val.labels[:, 2].tolist())) == 1 and len(set(ds.train.labels[:, 2].tolist())) == 2
    # the same classes as the Python API's carve-out at that scale (round(0.4 * 3) = 1 of the 3 coarse classes)
    train, val = validation_split(build_dataset("synthetic", None, "train", images_per_class=2), val_fraction=0.4,
                                  scale=2)
    assert ds.val.indices.tolist() == val.indices.tolist() and ds.train.indices.tolist() == train.indices.tolist()
    # the default, 0 = finest, is what a run carved before the key existed: the middle classes stay shared
    fine = build_datasets(load_config(overrides=_SMALL), with_test=False)
    assert fine.val_source == "40% of the training classes"
    assert set(fine.train.labels[:, 1].tolist()) & set(fine.val.labels[:, 1].tolist())


@pytest.mark.parametrize("scale", ["coarse", "2", "coarsest"])
def test_a_fraction_of_the_carve_scale_that_rounds_to_no_class_names_the_scale_and_its_column(scale: str) -> None:
    # the user typed a name (or a column): the message said "at scale 2" whatever was typed
    from dynametric.config import load_config
    from dynametric.engine.builders import build_datasets

    cfg = load_config(overrides=[*_SMALL, f"data.val_carve_scale={scale}", "data.val_fraction=0.1"])
    with pytest.raises(ConfigError) as info:
        build_datasets(cfg, with_test=False)
    assert info.value.key == "data.val_fraction"
    assert info.value.message.startswith("val_fraction 0.1 of the 3 training classes at scale coarse (column 2) "
                                         "rounds to no validation class (round(0.1 x 3) = 0)")
    one = torch.tensor([[0, 0], [1, 0], [2, 0]])
    with pytest.raises(ConfigError, match=r"needs at least 2 training classes at scale order \(column 1\), the "
                                          r"data has 1"):
        carve_validation(_DS(one), 0.5, seed=0, scale=1, scale_name="order")


def test_val_carve_scale_is_checked_against_the_data() -> None:
    from dynametric.config import errors_located, load_config
    from dynametric.engine.builders import build_datasets

    for value, message in (("kingdom", "scale 'kingdom' is not one of the data's scales ['fine', 'middle', 'coarse'] "
                                       "(or 'finest', 'coarsest', a column index)"),
                           ("3", "scale column 3 does not exist: the data has 3 scale(s)"),
                           ("midle", "did you mean 'middle'?")):
        cfg = load_config(overrides=[*_SMALL, f"data.val_carve_scale={value}"])
        with pytest.raises(ConfigError, match=r"^<command line> key 'data\.val_carve_scale': .*" + re.escape(message)):
            with errors_located(cfg):
                build_datasets(cfg, with_test=False)
    # validation from a split of the data is not carved: a coarser carve scale would do nothing
    cfg = load_config(overrides=["data.options={images_per_class: 2}", "data.val_carve_scale=middle"])
    with pytest.raises(ConfigError, match="the validation data is split 'val', not carved from the training split; "
                                          "data.val_carve_scale \\('middle'\\) applies to a carved validation set"):
        build_datasets(cfg, with_test=False)
    for bad, expected in (("-1", "expected a non-negative integer, got -1"), ("''", "expected a scale name"),
                          ("[1]", "expected int | str")):
        with pytest.raises(ConfigError, match=f"key 'data.val_carve_scale': {re.escape(expected)}"):
            load_config(overrides=[f"data.val_carve_scale={bad}"])


@pytest.mark.parametrize(("n_fine", "fraction", "smallest"), [
    (10, 0.04, 0.0501), (10, 0.05, 0.0501), (12, 0.01, 0.0417), (37, 0.0135, 0.0136), (1000, 0.0005, 0.000501)])
def test_a_positive_fraction_that_rounds_to_no_class_is_refused_with_the_smallest_that_gives_one(
        n_fine: int, fraction: float, smallest: float) -> None:
    """round(fraction x C) = 0 (half to even: round(0.5) = 0) silently meant no validation; now one line on
    data.val_fraction with the class count and the smallest 3-digit fraction that gives one class, which does."""
    ds = _DS(_labels(n_fine, 0))
    with pytest.raises(ConfigError) as info:
        carve_validation(ds, fraction, seed=0)
    assert info.value.key == "data.val_fraction"
    assert str(info.value.message) == (
        f"val_fraction {fraction} of the {n_fine} training classes rounds to no validation class (round({fraction} x "
        f"{n_fine}) = 0); expected at least {smallest} for one class (round({smallest} x {n_fine}) = 1), or 0 for no "
        "validation set")
    assert round(smallest * n_fine) == 1 and round((smallest - 10 ** -(len(repr(smallest)) - 2)) * n_fine) == 0
    train, val = carve_validation(ds, smallest, seed=0)
    assert val is not None and len(set(val.labels[:, 0].tolist())) == 1
    with pytest.raises(ConfigError, match=r"val_fraction 0.5: a class-disjoint validation set needs at least 2 "
                                          r"training classes, the data has 1"):
        carve_validation(_DS(_labels(1, 0)), 0.5, seed=0)
