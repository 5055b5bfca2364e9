"""Config -> components: datasets, sampler factory, embedder, loss terms, module, trainer settings.

The engine itself takes components by injection (:class:`~dynametric.engine.module.MetricLearningModule`,
:class:`~dynametric.engine.data.MetricDataModule`); this module (with the run, :mod:`dynametric.pipeline`, and the
method plug-ins' config hooks, :mod:`dynametric.methods`) reads a :class:`dynametric.config.Config` and hands
resolved objects down: components, :class:`~dynametric.engine.module.OptimSettings`,
:class:`~dynametric.engine.trainer.TrainerSettings`.

:func:`build_component` is the one factory of configured losses and miners (names, keywords, data-dependent
arguments, ``distance`` specs, errors keyed to the config). Loss construction (:func:`build_loss`) fills keyword
arguments from the data and the model when the config leaves them out and the loss class requires them:
``num_classes`` (``max label + 1`` at the loss's scale in the training split), ``embedding_size`` /
``embedding_dim`` (the width of the head the term trains). A class with a ``from_labels`` constructor and a
required ``class_paths`` argument (CSL) is built from the training label matrix.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import logging
import math
import operator
import re
import types
import typing
import warnings
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynametric.config import Config, LossConfig, MinerConfig, key_set
from dynametric.config.schema import (  # noqa: F401  (SCALE_ALIASES: re-exported)
    SCALE_ALIASES,
    resolve_monitor,
    scale_index,
    split_monitor,
)
from dynametric.data.protocol import dataset_fields, dataset_labels
from dynametric.data.samplers import RandomBatchSampler, SamplerSettings  # noqa: F401  (RandomBatchSampler: former home)
from dynametric.data.splits import LabelledSubset, class_disjoint_folds, class_disjoint_split
from dynametric.engine.module import GroupSettings, MetricLearningModule, OptimSettings
from dynametric.engine.objective import Objective, whole_batch_miner_refusal
from dynametric.engine.trainer import TrainerSettings
from dynametric.errors import ConfigError, InputError, UnknownArgumentError, first_sentence
from dynametric.labels import as_label_matrix, label_column_argument
from dynametric.utils.arguments import argument_annotations as _annotations
from dynametric.utils.arguments import expected_message as _expected_message
from dynametric.utils.arguments import keyword_arguments, unknown_argument_message
from dynametric.utils.arguments import misfit as _misfit
from dynametric.utils.registry import unknown_name_message, with_import_hint

logger = logging.getLogger("dynametric.engine")


# ----------------------------------------------------------------------------------------------- datasets
def carve_validation(dataset: Any, fraction: float, seed: int, scale: int = 0,
                     folds: int | None = None, fold: int = 0, scale_name: str | None = None) -> tuple[Any, Any | None]:
    """Class-disjoint (at ``scale``) train/val split of a training set: a seeded ``fraction`` of the classes,
    or fold ``fold`` of ``folds`` class-disjoint folds (Reality Check). Never touches the test split.

    The classes are chosen by the data layer (:func:`dynametric.data.splits.class_disjoint_split` /
    :func:`~dynametric.data.splits.class_disjoint_folds`); the config's rules are added here: a fraction that
    rounds to no class means no validation set (``(dataset, None)``), one that leaves no training class is a
    :class:`ConfigError` on ``data.val_fraction``, and so is a positive fraction that rounds to no class (it names
    the class count and the smallest fraction that gives one): ``round(fraction * C)`` classes of the ``C`` at
    ``scale`` validate (Python's rounding, half to even: ``round(0.5) == 0``); ``0`` means no validation set
    (``(dataset, None)``). ``scale_name``: the name of label column ``scale``, said with its column in those
    messages (``at scale family (column 3)``) where the carve is not at column 0."""
    labels = as_label_matrix(dataset.labels, name="dataset.labels")
    try:
        if folds is not None:
            train_idx, val_idx = class_disjoint_folds(labels, folds, seed=seed, scale=scale)[fold]
        else:
            n_classes = int(torch.unique(labels[:, scale]).numel())
            n_val = int(round(fraction * n_classes))
            if fraction == 0:
                return dataset, None
            at = "" if scale == 0 else f" at scale {scale_name} (column {scale})" if scale_name else \
                f" at scale {scale}"
            if n_classes < 2:
                raise ConfigError(f"val_fraction {fraction}: a class-disjoint validation set needs at least 2 "
                                  f"training classes{at}, the data has {n_classes}", key="data.val_fraction")
            if n_val == 0:
                smallest = _smallest_fraction(n_classes)
                raise ConfigError(f"val_fraction {fraction} of the {n_classes} training classes{at} "
                                  f"rounds to no validation class (round({fraction} x {n_classes}) = 0); expected "
                                  f"at least {smallest} for one class (round({smallest} x {n_classes}) = 1), or 0 "
                                  "for no validation set", key="data.val_fraction")
            if n_val >= n_classes:
                raise ConfigError(f"val_fraction {fraction} leaves no training class", key="data.val_fraction")
            train_idx, val_idx = class_disjoint_split(labels, fraction, seed=seed, scale=scale)
    except InputError as exc:
        if isinstance(exc, ConfigError):
            raise
        keys = {"k": "data.val_folds", "scale": "data.val_carve_scale"}
        raise ConfigError(exc.message, key=keys.get(str(exc.key), "data.val_fraction")) from None
    return LabelledSubset(dataset, train_idx, "train"), LabelledSubset(dataset, val_idx, "val")


def _smallest_fraction(n_classes: int) -> float:
    """The smallest fraction with at most 3 significant digits of which ``round(fraction * n_classes)`` is 1 (just
    above ``0.5 / n_classes``: half rounds to even, to 0)."""
    digits = 3 - math.floor(math.log10(0.5 / n_classes)) - 1
    fraction = math.ceil(0.5 / n_classes * 10**digits) / 10**digits
    while round(fraction * n_classes) < 1:
        fraction += 10.0**-digits
        fraction = round(fraction, digits)
    return fraction


def normalization(cfg: Config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` the config's transforms normalise with: ``data.mean`` / ``data.std`` where set, else the
    backbone's pretrained statistics (:func:`~dynametric.data.transforms.backbone_statistics`); for a one-channel
    model (``model.in_chans: 1``, images converted to greyscale) ``(0.449,)`` / ``(0.226,)``, ImageNet's three
    values averaged (:data:`~dynametric.data.transforms.GREY_MEAN`); for any other channel count, ImageNet's."""
    from dynametric.data.transforms import GREY_MEAN, GREY_STD, IMAGENET_MEAN, IMAGENET_STD, backbone_statistics

    chans = int(cfg.model.in_chans)
    mean, std = backbone_statistics(cfg.model.backbone)[:2] if chans == 3 else \
        (GREY_MEAN, GREY_STD) if chans == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    return (tuple(cfg.data.mean) if cfg.data.mean is not None else mean,
            tuple(cfg.data.std) if cfg.data.std is not None else std)


def transform_for(cfg: Config, train: bool, size: int | None = None, *, for_images: bool = False) -> Any:
    """The config's transform (``data.transform``; ``default`` = ``standard``), cropping to ``size`` if given, else
    ``data.image_size``, normalising with :func:`normalization` (the backbone's statistics unless ``data.mean`` /
    ``data.std`` are set).

    The one place for the synthetic data's rule: with ``transform: default`` a ``synthetic`` dataset renders its own
    tensors (``"to_tensor"``); ``for_images=True`` asks instead for the callable that turns image files of that data
    into the same tensors: ``Resize`` to ``size`` (else ``data.image_size``, else the generator's ``image_size``
    option, default 32) square, then ``ToTensor``.

    Images are decoded as RGB: a model of ``model.in_chans: 1`` gets a ``Grayscale`` step first (Pillow's
    ``convert("L")``, train and evaluation alike); any other count than 1 or 3 is a ConfigError keyed
    ``model.in_chans`` (the dry run and the run meet it before anything is written)."""
    data = cfg.data
    chans = check_image_channels(cfg)
    if data.format == "synthetic" and data.transform == "default":
        if not for_images:
            return "to_tensor"
        from torchvision import transforms as T

        if size is None and data.image_size is None:  # the generator's option, checked as the generator checks it
            from dynametric.data.synthetic import integer_option

            with _data_options_keyed(cfg):
                size = integer_option(dict(data.options).get("image_size", 32), "image_size", 8)
        side = int(size if size is not None else data.image_size)
        return T.Compose([T.Resize((side, side)), T.ToTensor()])
    from dynametric.data import build_transform

    preset = "standard" if data.transform == "default" else data.transform
    size = size if size is not None else data.image_size
    overrides: dict[str, Any] = {} if size is None else {"size": int(size)}
    overrides["mean"], overrides["std"] = normalization(cfg)
    try:
        out = build_transform(preset, train, **overrides)
    except ConfigError as exc:
        raise ConfigError(str(exc.message), key="data.transform") from None
    if chans == 1:
        from torchvision import transforms as T

        from dynametric.data.transforms import prepend_step

        out = prepend_step(out, T.Grayscale(num_output_channels=1))
    return out


def check_image_channels(cfg: Config) -> int:
    """``model.in_chans`` where the config's images can give it: 3 (RGB, as decoded) or 1 (converted to
    greyscale); the synthetic data's own tensors (``transform: default``) are RGB only. Else a ConfigError keyed
    ``model.in_chans``."""
    chans = int(cfg.model.in_chans)
    if cfg.data.format == "synthetic" and cfg.data.transform == "default" and chans != 3:
        raise ConfigError(f"the synthetic data's own tensors (data.transform: default) have 3 channels, got "
                          f"model.in_chans {chans}; use data.transform: small (images converted to greyscale for "
                          "in_chans 1)", key="model.in_chans")
    if chans not in (1, 3):
        raise ConfigError(f"images are decoded as RGB (3 channels) or converted to greyscale (1); expected 1 or 3, "
                          f"got {chans}", key="model.in_chans")
    return chans


@contextlib.contextmanager
def _data_options_keyed(cfg: Config) -> Iterator[None]:
    """An error of the data layer about the dataset root (``key`` ``root``) or one of the format's options (``key`` =
    the option's name, ``name.inner`` for a value inside it), without a file, is re-raised naming the config key the
    user sets, ``data.root`` or ``data.options.<name>``, so that :func:`~dynametric.config.errors_located` adds the
    file and line (or ``<command line>``) that set it. The data layer's own callers (``build_dataset(...)``) keep the
    bare name."""
    try:
        yield
    except InputError as exc:
        if exc.file is None and exc.key == "root":
            raise ConfigError(exc.message, key="data.root") from None
        if exc.file is None and exc.key is not None and exc.key.split(".")[0] in cfg.data.options:
            raise ConfigError(exc.message, key=f"data.options.{exc.key}") from None  # or a value inside one
        raise


@contextlib.contextmanager
def _split_keyed(key: str | None, split: str) -> Iterator[None]:
    """An error of the data layer about the split it was asked for (``key`` ``split``, no file) is re-raised naming
    ``key``, the config key that chose the split (``data.val_split``), so it carries the file and line that set it;
    ``key=None`` leaves it as it is."""
    try:
        yield
    except InputError as exc:
        if key is None or exc.file is not None or exc.key != "split":
            raise
        hint = ("; null (not the word none) carves the validation classes from the training split"
                if key == "data.val_split" and str(split).strip().lower() == "none" else "")
        raise ConfigError(exc.message + hint, key=key) from None


def load_split(cfg: Config, split: str, train: bool, key: str | None = None) -> Any:
    """Split ``split`` of the configured data; ``key``: the config key that named it, for the data layer's error
    about a split it does not have (``key 'data.val_split': split must be one of [...], got 'none'``)."""
    from dynametric.data import build_dataset

    with _data_options_keyed(cfg), _split_keyed(key, split):
        return build_dataset(cfg.data.format, cfg.data.root, split, transform=transform_for(cfg, train),
                             **dict(cfg.data.options))


def load_eval_split(cfg: Config, split: str) -> Any:
    """Split ``split`` with the evaluation transform, as the commands that evaluate a trained run read it: ``val``
    of a run that validated on a carve-out of its training classes (``data.val_split: null``, or ``auto`` on a
    dataset without a ``val`` split) is that validation set, carved exactly as training carved it (same fraction,
    seed and folds), so its metrics are the run's validation metrics; where the test split is named ``val``,
    ``val`` is that split."""
    data = cfg.data
    carved = data.val_split is None or (data.val_split == "auto" and "val" not in available_splits(cfg))
    if split == "val" and carved and data.test_split != "val":
        val = build_datasets(cfg, with_test=False).val
        if val is None:
            why = "data.val_split is null" if data.val_split is None else f"{cfg.data.format!r} has no 'val' split"
            raise InputError(f"the run had no validation set: {why} and data.val_fraction is {data.val_fraction}",
                             key="split")
        return val
    return load_split(cfg, split, train=False)


def declared_scale_names(cfg: Config) -> list[str] | None:
    """The scale names of ``data.format``'s training split when the format fixes them without reading the data
    (:func:`dynametric.data.registry.declared_scale_names`), else ``None``: what a run without its data (a dry run)
    checks ``trainer.monitor`` against."""
    from dynametric.data.registry import declared_scale_names as declared

    with _data_options_keyed(cfg):
        names = declared(cfg.data.format, **dict(cfg.data.options))
    return None if names is None else list(names)


def available_splits(cfg: Config) -> list[str]:
    from dynametric.data import list_splits

    with _data_options_keyed(cfg):
        return list(list_splits(cfg.data.format, cfg.data.root, **dict(cfg.data.options)))


@dataclass
class Datasets:
    train: Any
    val: Any | None
    test: Any | None
    scale_names: list[str]
    val_source: str
    val_carved: bool = False  # the validation classes were set aside from the training split (train is the rest)


def auto_val_split(splits: Sequence[str], test_splits: Mapping[str, str]) -> str | None:
    """The split ``data.val_split: auto`` validates on, of the splits the data offers (``splits``): the format's
    ``val`` split unless the test evaluates it; ``None``: the validation classes are carved from the training split."""
    return "val" if "val" in splits and "val" not in test_splits else None


def split_error_key(cfg: Config, key: str, other: str) -> str:
    """The key an error about two split keys names: ``other`` when only it was set (by a file or the command line,
    :func:`~dynametric.config.key_set`), else ``key``; the message names both. The origin comes with the key."""
    return other if key_set(cfg, other) and not key_set(cfg, key) else key


def check_split_roles(cfg: Config, test_splits: Mapping[str, str], splits: Sequence[str] | None = None) -> None:
    """The splits a run trains, validates and tests on must differ: training on a split the test evaluates,
    validating on one (model selection on test data) or validating on the training split (also the ``val`` split
    ``data.val_split: auto`` resolves to, :func:`auto_val_split`, when ``splits``, the splits the data offers, are
    known) is a one-line :class:`ConfigError` naming both keys, keyed on the one the user set
    (:func:`split_error_key`). ``test_splits``: each split the test protocol
    evaluates, with the key that chose it (``{"test": "data.test_split"}``; ``query`` / ``gallery`` for
    ``eval.protocol: query_gallery``). Checked before any data is read; the files and classes themselves:
    :func:`check_held_out_data`."""
    data = cfg.data
    if data.train_split in test_splits:
        raise ConfigError(f"the training split {data.train_split!r} is also a split the test evaluates "
                          f"({test_splits[data.train_split]}): the test would score images the model trained on; "
                          "train and test on different splits",
                          key=split_error_key(cfg, "data.train_split", test_splits[data.train_split]))
    if data.val_split == "auto" and splits is not None and data.train_split == auto_val_split(splits, test_splits):
        raise ConfigError(f"the training split {data.train_split!r} is the split data.val_split: auto validates on: "
                          "model selection would score images the model trains on; set data.val_split: null to carve "
                          "validation classes out of it, or name another validation split",
                          key=split_error_key(cfg, "data.train_split", "data.val_split"))
    if data.val_split in (None, "auto"):
        return
    if data.val_split == data.train_split:
        raise ConfigError(f"the validation split {data.val_split!r} is the training split (data.train_split): model "
                          "selection would score images the model trains on; set data.val_split: null to carve "
                          "class-disjoint validation classes out of the training split",
                          key=split_error_key(cfg, "data.val_split", "data.train_split"))
    if data.val_split in test_splits:
        raise ConfigError(f"the validation split {data.val_split!r} is a split the test evaluates "
                          f"({test_splits[data.val_split]}): model selection would peek at the test set; set "
                          "data.val_split: null to carve validation classes out of the training split",
                          key=split_error_key(cfg, "data.val_split", test_splits[data.val_split]))


def build_datasets(cfg: Config, *, with_test: bool = True, test_splits: Mapping[str, str] | None = None) -> Datasets:
    """Train split (augmenting transform), validation (the format's own split or class-disjoint carve-out of the
    training classes; never a test split), test split (evaluation transform). ``test_splits``: the splits the test
    protocol evaluates with the keys that chose them (:func:`check_split_roles`; default: ``data.test_split``)."""
    data = cfg.data
    test_splits = {data.test_split: "data.test_split"} if test_splits is None else test_splits
    listed = None
    if data.val_split == "auto":  # what auto resolves to, checked before any data is read
        try:
            listed = available_splits(cfg)
        except (InputError, OSError):
            pass  # the training split's read says what is wrong
    check_split_roles(cfg, test_splits, listed)
    train = load_split(cfg, data.train_split, train=True, key="data.train_split")
    fields = dataset_fields(train, "the training split")  # a registered format's dataset may lack scale names
    names = list(fields.scale_names or [])
    if not names:
        from dynametric.metrics import default_scale_names

        names = list(default_scale_names(fields.labels.shape[1]))
    carve_scale = scale_index(data.val_carve_scale, names, "data.val_carve_scale")
    val: Any | None = None
    carved = False
    splits = (listed if listed is not None else available_splits(cfg)) if data.val_split == "auto" else []
    if data.val_split == "auto" and auto_val_split(splits, test_splits) is not None:
        val, source = load_split(cfg, "val", train=False), "split 'val'"
    elif data.val_split not in (None, "auto"):
        val, source = load_split(cfg, data.val_split, train=False, key="data.val_split"), f"split {data.val_split!r}"
    else:
        train_eval = load_split(cfg, data.train_split, train=False, key="data.train_split")
        train_part, val = carve_validation(train_eval, data.val_fraction, data.val_seed, scale=carve_scale,
                                           folds=data.val_folds, fold=data.val_fold, scale_name=names[carve_scale])
        if val is not None:
            train, carved = LabelledSubset(train, train_part.indices, data.train_split), True
        classes = "training classes" if carve_scale == 0 else f"training {names[carve_scale]} classes"
        source = "none" if val is None else (f"fold {data.val_fold}/{data.val_folds} of the {classes}"
                                             if data.val_folds else f"{data.val_fraction:.0%} of the {classes}")
    if carve_scale != 0 and not carved and val is not None:  # nothing is carved: the key would do nothing
        raise ConfigError(f"the validation data is {source}, not carved from the training split; "
                          f"data.val_carve_scale ({data.val_carve_scale!r}) applies to a carved validation set "
                          "(data.val_split: null)", key="data.val_carve_scale")
    test = load_split(cfg, data.test_split, train=False, key="data.test_split") if with_test else None
    return Datasets(train, val, test, names, source, carved)


def check_held_out_data(cfg: Config, datasets: Datasets, tests: Mapping[str, Any],
                        test_splits: Mapping[str, str]) -> list[str]:
    """What the training, validation and test data hold, beyond their split names (:func:`check_split_roles`):
    an image (a resolved path and its crop box, :func:`~dynametric.data.splits.image_identities`) in the training or
    validation data that a test split (``tests``: split -> dataset, chosen by ``test_splits[split]``) or the
    validation split also lists is a :class:`ConfigError` naming a file, the count and the keys (keyed on the one
    the user set, :func:`split_error_key`). Finest classes shared by training and validation or test data, or by
    validation and test data, are returned as warnings (the protocols are class-disjoint: a shared class is not
    unseen), where the format's class ids mean the same class in every split
    (:func:`~dynametric.data.registry.class_ids_comparable`). Each dataset's identities are computed once: the test
    splits' kept with them for their test (:func:`~dynametric.data.splits.dataset_identities`), the training and
    validation data's for this check only (not kept: a training set's would stay in memory for the whole
    run)."""
    from dynametric.data.registry import class_ids_comparable
    from dynametric.data.splits import dataset_identities, image_identities, raw_class_ids, shared_identities

    data = cfg.data
    train = (f"the training split {data.train_split!r} (data.train_split)", "data.train_split", datasets.train)
    held = [(f"the test split {split!r} ({test_splits[split]})", test_splits[split], ds) for split, ds in tests.items()]
    pairs = [(train, h) for h in held]
    if datasets.val is not None:
        val = ((f"the validation classes carved from {data.train_split!r}" if datasets.val_carved else
                f"the validation split {dataset_fields(datasets.val).split!r} (data.val_split)"), "data.val_split",
               datasets.val)
        pairs = ([] if datasets.val_carved else [(train, val)]) + pairs + [(val, h) for h in held]
    comparable = class_ids_comparable(data.format)
    in_pairs = [ds for pair in pairs for _, _, ds in pair]
    here_only = [(ds, image_identities(ds)) for ds in (datasets.train, datasets.val) if any(ds is d for d in in_pairs)]

    def identities_of(ds: Any) -> list[Hashable] | None:
        for own, ids in here_only:
            if own is ds:
                return ids
        return dataset_identities(ds)  # a test split's: its test uses them again

    warnings_: list[str] = []
    for (what_a, key_a, a), (what_b, key_b, b) in pairs:
        files = shared_identities(identities_of(a), identities_of(b))
        if files:
            raise ConfigError(f"{what_a} and {what_b} share {len(files)} image file(s), e.g. {files[0]}: "
                              f"{'training' if a is datasets.train else 'model selection'} and "
                              f"{'testing' if b is not datasets.val else 'model selection'} must use different "
                              "images", key=split_error_key(cfg, key_b, key_a))
        if not comparable:
            continue
        classes = sorted(raw_class_ids(a) & raw_class_ids(b), key=str)
        if classes:
            scale = (dataset_fields(a).scale_names or ("finest",))[0]
            shown = ", ".join(repr(c) for c in classes[:3]) + (", ..." if len(classes) > 3 else "")
            warnings_.append(f"{what_a} and {what_b} share {len(classes)} {scale} class(es) ({shown}): the "
                             "protocols hold out whole classes (docs/data.md), so results on a shared class do not "
                             "measure retrieval of unseen classes")
    return warnings_


# ----------------------------------------------------------------------------------------------- sampling
SETTING_KEYS: dict[str, str] = {"batch_size": "data.batch_size", "m": "data.m", "scale": "data.sampler_scale",
                                "seed": "trainer.seed", "rank": "trainer.devices", "world_size": "trainer.devices",
                                "iterations_per_epoch": "data.iterations_per_epoch"}
"""The config key of each :class:`~dynametric.data.samplers.SamplerSettings` field (what :func:`sampler_factory`
builds the settings from)."""


def sampler_error_key(cls: Any, argument: str | None) -> str:
    """The config key of the sampler argument ``argument`` an error names: the key of the setting that decides it
    (``cls.setting_of``: ``ThreeScaleSampler``'s ``items_per_batch`` is ``data.batch_size``, its ``k`` ``data.m``),
    else the option ``data.sampler_options.<argument>``; ``data.sampler`` when it names none."""
    if argument is None:
        return "data.sampler"
    setting = getattr(cls, "setting_of", {}).get(argument)
    return SETTING_KEYS[setting] if setting is not None else f"data.sampler_options.{argument}"


def check_sampler_options(cls: Any, settings: SamplerSettings) -> None:
    """``data.sampler_options`` (``settings.options``) against the arguments of the sampler ``cls``: an option that
    a setting decides (``cls.setting_of``: ``three_scale``'s ``k`` is ``data.m``) or one the sampler does not take
    is a :class:`ConfigError` keyed by the option, naming the key that sets it or the options the sampler takes
    (PML's ``length_before_new_iter``: the ``data.iterations_per_epoch`` it corresponds to)."""
    params = inspect.signature(cls.__init__).parameters
    setting_of = getattr(cls, "setting_of", {})
    takes = [n for n, p in params.items() if n not in ("self", "labels", "num_samples")  # the data's own
             and n not in setting_of and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    for name in settings.options:
        key = f"data.sampler_options.{name}"
        if name == "length_before_new_iter":  # PML's epoch length in indices: say what it is here
            from dynametric.data.samplers import pml_length_message

            # data.batch_size is a batch's row count under every sampler (three_scale's items fill it)
            raise ConfigError(pml_length_message(settings.options[name], settings.batch_size, settings.world_size,
                                                 option=SETTING_KEYS["iterations_per_epoch"],
                                                 batch=SETTING_KEYS["batch_size"],
                                                 ranks_known=settings.world_size > 1), key=key)  # dry run: 1
        setting = setting_of.get(name)
        if setting is not None:
            raise ConfigError(f"{name} is set by {SETTING_KEYS[setting]} ({getattr(settings, setting)}); remove it "
                              "from data.sampler_options", key=key)
        if name not in takes:
            raise ConfigError(f"{cls.__name__} takes no option {name!r} "
                              f"({'it takes ' + ', '.join(takes) if takes else 'it takes no options'})", key=key)


def sampler_factory(cfg: Config) -> Callable[[torch.Tensor, int, int], Any]:
    """``make(labels, rank, world_size)``: the batch sampler ``data.sampler`` names in
    :data:`dynametric.data.samplers.BATCH_SAMPLERS`, built by its ``from_settings`` from the ``data`` section;
    its errors are re-keyed to the config key that set the argument they name (:func:`sampler_error_key`)."""
    data, seed = cfg.data, int(cfg.trainer.seed)
    opts = dict(data.sampler_options)

    def make(labels: torch.Tensor, rank: int, world: int) -> Any:
        cls = sampler_class(cfg)
        settings = SamplerSettings(batch_size=data.batch_size, m=data.m, scale=data.sampler_scale, seed=seed,
                                   rank=rank, world_size=world, iterations_per_epoch=data.iterations_per_epoch,
                                   options=opts)
        check_sampler_options(cls, settings)
        try:
            return cls.from_settings(labels, settings)
        except InputError as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(exc.message, key=sampler_error_key(cls, exc.key)) from None
        except TypeError as exc:
            raise ConfigError(f"bad sampler option: {exc}", key="data.sampler_options") from None
        except ValueError as exc:  # the sampler's own validation (one written by a user): keyed by what it names
            named = [o for o in opts if re.search(rf"(?<![\w.]){re.escape(str(o))}(?!\w)", str(exc))]
            key = f"data.sampler_options.{named[0]}" if len(named) == 1 else "data.sampler"
            raise ConfigError(f"sampler {data.sampler!r} ({cls.__name__}) refused its settings: {first_sentence(exc)}",
                              key=key) from exc

    return make


def check_batch_size(sampler: Any, batch: Any, batch_size: int, name: str, where: str) -> None:
    """A ConfigError keyed ``data.sampler`` when ``batch`` (an index list that ``sampler``, named ``name`` in the
    config, formed: ``where``, e.g. ``batch 3 of epoch 0``) does not hold ``batch_size`` items."""
    if len(batch) != batch_size:
        cls = type(sampler)
        raise ConfigError(f"sampler {name!r} ({cls.__module__}.{cls.__qualname__}) formed a training batch of "
                          f"{len(batch)} items ({where}); every training batch holds data.batch_size = {batch_size} "
                          "items (per process)", key="data.sampler")


class BatchSizeChecked:
    """A run's training batch sampler whose every batch is checked, as it is formed, to hold ``batch_size`` items
    (``data.batch_size``, per process): every sampler of :data:`dynametric.data.samplers.BATCH_SAMPLERS` gives such
    batches (a ``MultiScaleLoss``'s chunks and the preflight's class counts assume them), so a sampler registered by
    user code that forms another size is one line keyed ``data.sampler``, not a run that trains on them silently.
    The lengths are host values (index lists): no device read. The sampler's other attributes are read through."""

    def __init__(self, sampler: Any, batch_size: int, name: str) -> None:
        self.sampler, self.batch_size, self.name = sampler, int(batch_size), name
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.sampler)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        for b, batch in enumerate(self.sampler):
            check_batch_size(self.sampler, batch, self.batch_size, self.name, f"batch {b} of epoch {self.epoch}")
            yield batch

    def __getattr__(self, name: str) -> Any:
        if name == "sampler":  # not set yet (copy/unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.sampler, name)


def checked_sampler_factory(cfg: Config) -> Callable[[torch.Tensor, int, int], Any]:
    """:func:`sampler_factory` whose samplers check each batch's size (:class:`BatchSizeChecked`): what the run's
    DataModule draws its training batches from."""
    make = sampler_factory(cfg)
    return lambda labels, rank, world: BatchSizeChecked(make(labels, rank, world), cfg.data.batch_size,
                                                        cfg.data.sampler)


def sampler_class(cfg: Config) -> Any:
    """The class of ``data.sampler`` in :data:`dynametric.data.samplers.BATCH_SAMPLERS`."""
    from dynametric.data.samplers import BATCH_SAMPLERS

    if cfg.data.sampler not in BATCH_SAMPLERS:
        names = list(BATCH_SAMPLERS)
        raise ConfigError(with_import_hint(f"unknown sampler {cfg.data.sampler!r}; expected "
                                           f"{', '.join(names[:-1])} or {names[-1]}"), key="data.sampler")
    return BATCH_SAMPLERS[cfg.data.sampler]


# ----------------------------------------------------------------------------------------------- model, losses
def build_model(cfg: Config) -> nn.Module:
    from dynametric.config import embedder_kwargs
    from dynametric.models import build_embedder

    return build_embedder(**embedder_kwargs(cfg.model))


def head_dims(cfg: Config, embedder: nn.Module) -> dict[str | None, int]:
    """Output width of every head (``None``: the single output; ``"concat"``: all heads), as the embedder declares
    them (:attr:`dynametric.models.Embedder.output_dims`)."""
    return dict(embedder.output_dims)


# ----------------------------------------------------------------------------------------------- the factory
DATA_DEPENDENT_ARGS = ("num_classes", "embedding_size", "embedding_dim", "class_paths")
"""Constructor arguments filled in from the data and the model when the config leaves them out (and the
constructor requires them), not from the config."""


def build_component(registry: Mapping[str, Callable[..., Any]], name: str, kwargs: Mapping[str, Any], key: str, *,
                    construct: Callable[..., Any] | None = None, data_args: Mapping[str, Any] | None = None) -> Any:
    """The one factory of configured components (losses, miners): check ``name`` and ``kwargs`` against
    ``registry[name]`` and construct it; errors name ``<key>.name`` or ``<key>.kwargs.<arg>``.

    Unknown names and keyword arguments are caught before construction (with the closest valid spelling; the
    arguments of a class whose ``__init__`` passes ``**kwargs`` on to its bases include theirs, :func:`_init_chain`),
    and so
    is a value of the wrong type for an argument the constructor annotates with a simple type (a number, an integer,
    a bool, a string, a list of one of these, a ``Literal``; :func:`_misfit`): ``expected a list of numbers for
    margins, got 0.3 (float)`` on ``<key>.kwargs.margins``.
    Required arguments listed in :data:`DATA_DEPENDENT_ARGS` that ``kwargs`` lacks are taken from ``data_args``;
    if one is still missing, nothing is constructed and ``None`` is returned (names and keywords were checked).
    A ``distance`` given as a name or ``{name: ..., **kwargs}`` becomes a distance object
    (``dynametric.losses.build_distance``). The object is built by ``construct(name, **kwargs)`` (default
    ``registry[name](**kwargs)``); its errors (bad values) are re-raised as :class:`ConfigError` on
    ``<key>.kwargs.<arg>`` (an :class:`InputError` keyed ``<arg>``, or a ``TypeError`` / ``ValueError`` whose
    message names exactly one of the given arguments), else on ``<key>.kwargs``.
    """
    if name not in registry:
        raise ConfigError(unknown_name_message(registry, name), key=f"{key}.name")
    factory = registry[name]
    kwargs = dict(kwargs)
    given = [k for k in kwargs if k not in DATA_DEPENDENT_ARGS]  # the configured arguments, not the filled-in ones
    sig, named, open_kwargs, hints = keyword_arguments(factory)  # the rule build_loss in Python checks by too
    if sig is not None:
        params = sig.parameters
        if not open_kwargs:
            for arg in kwargs:
                if arg not in named:
                    raise _unknown_argument(name, arg, named, key)
        for arg in DATA_DEPENDENT_ARGS:
            if arg in named and arg not in kwargs and params[arg].default is inspect.Parameter.empty:
                if data_args is None or arg not in data_args:
                    return None
                kwargs[arg] = data_args[arg]
    for arg in given:  # a value of the wrong type, caught before the constructor trips over it
        expected = _misfit(hints.get(arg), kwargs[arg])
        if expected is not None:
            raise ConfigError(_expected_message(name, arg, expected, kwargs[arg]), key=f"{key}.kwargs.{arg}")
    if isinstance(kwargs.get("distance"), (str, Mapping)):  # configs name distances: `cosine`, {name: ..., ...}
        from dynametric.losses import build_distance

        try:
            kwargs["distance"] = build_distance(dict(kwargs["distance"]) if isinstance(kwargs["distance"], Mapping)
                                                else kwargs["distance"], key=f"{key}.kwargs.distance")
        except InputError as exc:
            raise ConfigError(exc.message, key=f"{key}.kwargs.distance") from None
    try:
        if construct is None:
            return factory(**kwargs)
        return construct(name, **kwargs)
    except UnknownArgumentError as exc:  # a Python-level check of the keywords (pml_loss): worded for the config
        if exc.argument not in given:
            raise
        raise _unknown_argument(name, exc.argument, exc.arguments, key) from exc
    except InputError as exc:  # ConfigError included: re-key it under this config section
        where = f"{key}.kwargs"
        if exc.key and exc.key.split(".", 1)[0] in kwargs:  # a given keyword, or a key inside one (base_kwargs.x)
            where = f"{key}.kwargs.{exc.key}"
        elif exc.key and exc.key.rsplit(".", 1)[-1] in kwargs:
            where = f"{key}.kwargs.{exc.key.rsplit('.', 1)[-1]}"
        raise ConfigError(f"{name}: {exc.message}", key=where) from exc
    except (TypeError, ValueError) as exc:
        named_args = [] if sig is None else [p for p, v in sig.parameters.items()
                                             if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
        raise _construction_error(name, kwargs, given, key, exc, named_args) from exc


def _unknown_argument(name: str, arg: str, named: Sequence[str], key: str) -> ConfigError:
    """``<name> has no argument <arg>`` on ``<key>.kwargs.<arg>``: with the closest argument (a misspelling), else
    with the list of them and how to drop it (a keyword written for another loss or miner: remove it, or clear the
    section's keywords with ``<key>.kwargs={}``; Python's ``build_loss`` says it in the same words, without the
    config's way to drop it: :func:`dynametric.utils.arguments.unknown_argument_message`)."""
    left, colon, right = arg.partition(":")
    if colon and left.strip():  # YAML reads {distance:l2} as one key 'distance:l2': a flow mapping needs ': '
        message = (f"{name} has no argument {arg!r}; a YAML mapping needs a space after ':' (did you mean "
                   f"`{left.strip()}: {right.strip()}`?)"
                   + (f"; {left.strip()!r} is one of its arguments" if left.strip() in named else ""))
    else:
        message = unknown_argument_message(name, arg, named, after_list=f" (remove {key}.kwargs.{arg}, or clear "
                                                                         f"them all with {key}.kwargs={{}})")
    return ConfigError(message, key=f"{key}.kwargs.{arg}")


def _construction_error(name: str, kwargs: Mapping[str, Any], given: Sequence[str], key: str,
                        exc: Exception, named_args: Sequence[str] = ()) -> ConfigError:
    """The :class:`ConfigError` of a constructor's ``TypeError`` / ``ValueError``: an argument the constructor (or
    one it passes its keywords to, a PML class's base) does not take is :func:`_unknown_argument`; else on
    ``<key>.kwargs.<arg>`` when the message names exactly one of the given arguments, else on ``<key>.kwargs``
    with every given value shown. ``named_args``: the arguments the factory's signature lists."""
    refused = re.search(r"unexpected keyword argument '([^']+)'", str(exc)) if isinstance(exc, TypeError) else None
    if refused is not None and refused.group(1) in given:
        return _unknown_argument(name, refused.group(1), named_args, key)
    named = [arg for arg in given if re.search(rf"(?<![\w.]){re.escape(arg)}(?!\w)", str(exc))]
    if len(named) == 1:
        arg = named[0]
        return ConfigError(f"{name}({arg}={kwargs[arg]!r}) failed: {first_sentence(exc)}", key=f"{key}.kwargs.{arg}")
    shown = ", ".join(f"{k}={kwargs[k]!r}" for k in given)
    return ConfigError(f"{name}({shown}) failed: {first_sentence(exc)}", key=f"{key}.kwargs")


def build_loss(name: str, kwargs: Mapping[str, Any], key: str, train_labels: torch.Tensor | None, dim: int | None,
               scale_offset: int | None = None, width: str | None = None,
               surrogate: tuple[int, str] | None = None) -> nn.Module:
    """A configured loss through :func:`build_component`, its data-dependent arguments filled in: the head width
    ``dim`` (``embedding_size`` / ``embedding_dim``), ``num_classes`` (``max label + 1`` in the training labels'
    column: ``scale_offset``, else the loss's ``label_scale`` / ``scale`` keyword; a placeholder with a warning
    when there are no labels, as in a dry run without data) and, for a class with a ``from_labels`` constructor
    (CSL), ``class_paths`` from the training label matrix. A loss with a ``trust_labels`` method (CSL) is given the
    training labels once, so that it need not check each batch's labels again (``surrogate`` terms excepted).

    An ``embedding_size`` / ``embedding_dim`` given in ``kwargs`` must equal ``dim``: the embeddings would not fit
    the loss's proxies or unit, and the run would fail at its first step. ``width`` names the config key that sets
    ``dim`` in that error (default ``model.embedding_dim``).

    ``surrogate``: ``(classes, config key)`` when the method trains this term on labels of its own instead of the
    data's (MIC's shared term on its cluster ids, counted by ``method.kwargs.num_clusters``); a required
    ``num_classes`` is then filled with that count. A ``num_classes`` given in ``kwargs`` must cover the labels the
    term trains on (the data's column, or the surrogate classes): a smaller one would stop the run at its first step,
    after the untrained evaluation."""
    from dynametric.losses import LOSSES

    if name not in LOSSES:
        return build_component(LOSSES, name, kwargs, key)  # raises with a suggestion
    cls = LOSSES[name]
    params = inspect.signature(cls).parameters
    open_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for arg in ("embedding_size", "embedding_dim"):
        given = kwargs.get(arg)
        if (dim is not None and (arg in params or open_kwargs) and isinstance(given, int)
                and not isinstance(given, bool) and given != dim):
            raise ConfigError(f"{name} is sized for {given}-d embeddings, but the model's embeddings are {dim}-d "
                              f"({width or 'model.embedding_dim'}); set {key}.kwargs.{arg}={dim} or leave it out "
                              "(the engine fills in the width of the term's head)", key=f"{key}.kwargs.{arg}")
    data_args: dict[str, Any] = {} if dim is None else {"embedding_size": dim, "embedding_dim": dim}
    # the label column: CosFace/ArcFace name it ``label_scale`` (their ``scale`` is the logit scale)
    col_arg = "label_scale" if "label_scale" in params else "scale"
    # Only a *required* num_classes is filled: an optional one (MarginLoss: None = one global beta) keeps its default.
    if "num_classes" in params:
        needed: int | None = None  # classes of the labels this term trains on, where known
        if surrogate is not None:
            needed = surrogate[0]
        elif train_labels is not None:
            needed = _classes_in(train_labels, key, col_arg, kwargs, scale_offset)
        given = kwargs.get("num_classes")
        if "num_classes" not in kwargs and params["num_classes"].default is inspect.Parameter.empty:
            if needed is None:
                data_args["num_classes"] = 2
                warnings.warn(f"{key}: num_classes unknown without the dataset; a placeholder is used (dry run only)",
                              stacklevel=2)
            else:
                data_args["num_classes"] = needed
        elif isinstance(given, int) and not isinstance(given, bool) and needed is not None and given < needed:
            fill = (" or leave it out (the engine fills it in)"
                    if params["num_classes"].default is inspect.Parameter.empty else "")
            col = scale_offset if scale_offset is not None else kwargs.get(col_arg, 0)
            where = (f"the method trains this term on {needed} surrogate classes ({surrogate[1]})"
                     if surrogate is not None else f"the training labels' column {col} has ids 0..{needed - 1}")
            raise ConfigError(f"{name}(num_classes={given}) is too small: {where}; set {key}.kwargs.num_classes="
                              f"{needed}{fill}", key=f"{key}.kwargs.num_classes")
    construct = None
    data_labels = train_labels  # the training split's labels, before a dry run's placeholder
    if ("class_paths" in params and "class_paths" not in kwargs and hasattr(cls, "from_labels")
            and params["class_paths"].default is inspect.Parameter.empty):
        if train_labels is None:
            warnings.warn(f"{key}: class paths unknown without the dataset; placeholder used (dry run only)",
                          stacklevel=2)
            train_labels = torch.tensor([[0, 0, 0], [1, 1, 1]])
        data_args["class_paths"] = train_labels  # from_labels turns the label matrix into the class paths

        def construct(_name: str, class_paths: torch.Tensor, **kw: Any) -> nn.Module:
            return cls.from_labels(class_paths, **kw)

    loss = build_component(LOSSES, name, kwargs, key, construct=construct, data_args=data_args)
    trust = getattr(loss, "trust_labels", None)
    if callable(trust) and data_labels is not None and surrogate is None:
        # every training batch is rows of the training labels: checked here once on the host, the loss then skips
        # its per-step check of the batch labels (CSL: two host reads a step); not for a term trained on labels of
        # a method's own (surrogate), whose batches are not rows of the data's labels
        try:
            trust(data_labels)
        except InputError as err:
            raise ConfigError(f"{name}: {err.message}", key=f"{key}.kwargs.class_paths") from None
    return loss


def _classes_in(train_labels: torch.Tensor, key: str, col_arg: str, kwargs: Mapping[str, Any],
                scale_offset: int | None) -> int:
    """``max label + 1`` in the loss's label column (``scale_offset``, else its ``label_scale`` / ``scale``)."""
    col = scale_offset if scale_offset is not None else int(kwargs.get(col_arg, 0))
    if not 0 <= col < train_labels.shape[1]:
        raise ConfigError(f"label column {col} does not exist; the training labels have "
                          f"{train_labels.shape[1]} scale(s)", key=f"{key}.kwargs.{col_arg}")
    return int(train_labels[:, col].max()) + 1


def build_miner(mcfg: MinerConfig | None, key: str) -> nn.Module | None:
    """A configured miner through :func:`build_component` (``None`` when there is none)."""
    if mcfg is None:
        return None
    from dynametric.miners import MINERS

    return build_component(MINERS, mcfg.name, dict(mcfg.kwargs), key)


def build_loss_term(term: LossConfig, key: str, train_labels: torch.Tensor | None, dim: int | None,
                    num_scales: int, chunks: Any = None, width: str | None = None,
                    surrogate: tuple[int, str] | None = None, miner: MinerConfig | None = None,
                    miner_key: str = "miner") -> nn.Module:
    """The loss of one ``loss`` / ``extra_losses[i]`` section (``multiscale``: one copy per scale); ``width``: the
    config key of the head's width ``dim``, ``surrogate``: the method's own classes for this term (both for
    :func:`build_loss`).

    ``miner`` (``multiscale`` only): the term's miner section (``miner_key``: its key), built once per scale and
    given to the :class:`~dynametric.losses.MultiScaleLoss` as ``miners=``, so that each scale is mined on its own
    chunk with its own label column (a miner output for the whole batch would be mined at one scale only); one
    object per scale keeps each scale's recorded statistics (``collect_stats``) apart."""
    if not term.multiscale:
        if miner is not None:
            raise ConfigError(f"a miner given to the loss itself needs {key}.multiscale: true", key=f"{key}.multiscale")
        return build_loss(term.name, dict(term.kwargs), key, train_labels, dim, width=width, surrogate=surrogate)
    from dynametric.losses import MultiScaleLoss

    if term.scale_weights is not None and len(term.scale_weights) != num_scales:
        raise ConfigError(f"expected {num_scales} weights (one per scale), got {len(term.scale_weights)}",
                          key=f"{key}.scale_weights")
    per_scale = [build_loss(term.name, dict(term.kwargs), key, train_labels, dim, scale_offset=s, width=width)
                 for s in range(num_scales)]
    miners = None if miner is None else [build_miner(miner, miner_key) for _ in range(num_scales)]
    return MultiScaleLoss(per_scale, weights=term.scale_weights, chunks=chunks, num_scales=num_scales, miners=miners)


def _check_miner_fits_term(term: LossConfig, key: str, mcfg: MinerConfig, mkey: str) -> None:
    """A configured miner must fit the loss term it feeds: a loss that reads every label column itself (CSL, a
    ``MultiScaleLoss`` named directly) takes no whole-batch miner output, and with ``multiscale: true`` the miner
    mines each scale on that scale's labels, so a label column of its own (``scale`` / ``label_scale``, 0 included,
    as for the loss: :func:`_check_no_loss_column_under_multiscale`) is refused; each a :class:`ConfigError` keyed to
    the miner's section."""
    cls = _loss_class(term.name)
    refusal = None if term.multiscale else whole_batch_miner_refusal(
        cls, term.name, per_scale=f"give it to the loss as {key}.kwargs.miners (mined per scale), or train the base "
                                  f"loss with {key}.multiscale: true", remove=f"remove {mkey} (set {mkey}: null)")
    if refusal is not None:
        raise ConfigError(refusal, key=f"{mkey}.name")
    if not term.multiscale:
        return
    _refuse_own_label_column(_miner_class(mcfg.name), mcfg.kwargs, mkey, key,
                             "the miner mines every scale on that scale's labels", "mine and train on one column")


def _refuse_own_label_column(cls: Any, kwargs: Mapping[str, Any], section: str, key: str, why: str,
                             one_column: str) -> None:
    """Under ``<key>.multiscale: true``: a label column given in ``<section>.kwargs`` (the keyword
    :func:`~dynametric.labels.label_column_argument` names for ``cls``, any value, 0 included) is a
    :class:`ConfigError` keyed ``<section>.kwargs.<keyword>``; ``why`` says why each scale needs none,
    ``one_column`` what ``multiscale: false`` does instead."""
    col_arg = label_column_argument(cls)
    if col_arg is not None and col_arg in kwargs:
        raise ConfigError(f"with {key}.multiscale: true {why}, so it takes no label column of its own: remove "
                          f"{section}.kwargs.{col_arg} (got {kwargs[col_arg]!r}), or set {key}.multiscale: false to "
                          f"{one_column}", key=f"{section}.kwargs.{col_arg}")


def _check_no_loss_column_under_multiscale(term: LossConfig, key: str) -> None:
    """With ``multiscale: true`` the engine gives each scale's copy of the loss that scale's label column alone, so a
    column of the loss's own (its ``scale`` keyword, ``label_scale`` for ``pml:`` names and CosFace/ArcFace, whose
    ``scale`` is the logit scale) means nothing and is refused, 0 included (as ``pml_loss(..., weights=...,
    label_scale=...)`` refuses it in Python): a :class:`ConfigError` keyed ``<key>.kwargs.<keyword>``."""
    if term.multiscale:
        _refuse_own_label_column(_loss_class(term.name), term.kwargs, key, key,
                                 f"each scale's {term.name} trains on that scale's labels", "train on one column")


def _head_dim(cfg: Config, head: str | None) -> int | None:
    """The configured width of ``head`` (a pooled-feature head, ``embedding_dim: null``, has no static width)."""
    from dynametric.models.embedder import default_head_names

    model = cfg.model
    dims = model.head_dims or [model.embedding_dim] * model.num_heads
    names = model.head_names or list(default_head_names(model.num_heads))
    if head == "concat":
        return None if any(d is None for d in dims) else sum(d for d in dims if d is not None)
    return dims[names.index(head)] if head in names else dims[0]


def _width_key(cfg: Config, head: str | None) -> str:
    """Where the config sets the width of ``head``'s embeddings, for error messages."""
    model = cfg.model
    if head is None or model.num_heads == 1:
        return "model.embedding_dim" if model.embedding_dim is not None else \
            "the backbone's pooled features, model.embedding_dim: null"
    if head == "concat":
        return "the heads side by side, model.head_dims" if model.head_dims else \
            "the heads side by side, model.num_heads x model.embedding_dim"
    return f"head {head!r}, model.head_dims" if model.head_dims else f"head {head!r}, model.embedding_dim"


def validate_components(cfg: Config, *, losses: Mapping[str, Callable[..., Any]] | None = None,
                        miners: Mapping[str, Callable[..., Any]] | None = None,
                        data_args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Construct every configured loss and miner once (through :func:`build_component`) to validate names and
    free-form ``kwargs`` without a dataset or a model.

    ``losses`` / ``miners`` default to ``dynametric.losses.LOSSES`` / ``dynametric.miners.MINERS`` (a
    ``distance: cosine`` style value becomes a distance object). ``embedding_size`` / ``embedding_dim`` default to
    the configured width of the term's head (a pooled-feature head, ``embedding_dim: null``, has no static
    width); ``num_classes`` and ``class_paths`` come from ``data_args`` (without them, losses needing them are
    checked by name and keywords only and map to ``None``). Returns the objects by dotted key (``loss``,
    ``miner``, ``extra_losses[0]``, ``extra_losses[0].miner``); ``multiscale`` wrapping is left to the engine.
    """
    from dynametric.losses import LOSSES
    from dynametric.miners import MINERS

    losses = LOSSES if losses is None else losses
    miners = MINERS if miners is None else miners

    def loss_args(term: LossConfig) -> dict[str, Any]:
        args = dict(data_args or {})
        dim = _head_dim(cfg, term.head)
        if dim is not None:
            args.setdefault("embedding_size", dim)
            args.setdefault("embedding_dim", dim)
        return args

    built: dict[str, Any] = {"loss": build_component(losses, cfg.loss.name, cfg.loss.kwargs, "loss",
                                                     data_args=loss_args(cfg.loss))}
    if cfg.miner is not None:
        built["miner"] = build_component(miners, cfg.miner.name, cfg.miner.kwargs, "miner", data_args=data_args)
    for i, term in enumerate(cfg.extra_losses):
        key = f"extra_losses[{i}]"
        built[key] = build_component(losses, term.name, term.kwargs, key, data_args=loss_args(term))
        if term.miner is not None:
            built[f"{key}.miner"] = build_component(miners, term.miner.name, term.miner.kwargs, f"{key}.miner",
                                                    data_args=data_args)
    return built


def _loss_class(name: str) -> Any:
    """The class (or factory) of the loss ``name``: a ``pml:<ClassName>`` too (``LOSSES.get`` misses those: the
    registry answers them by lookup), else ``None``."""
    from dynametric.losses import LOSSES

    return LOSSES[name] if name in LOSSES else None


def _miner_class(name: str) -> Any:
    """The class (or factory) of the miner ``name``, a ``pml:<ClassName>`` too (as :func:`_loss_class`), else
    ``None``."""
    from dynametric.miners import MINERS

    return MINERS[name] if name in MINERS else None


def _check_label_column(cls: Any, name: str, kwargs: Mapping[str, Any], key: str, num_scales: int,
                        does: str = "trains") -> None:
    """The label column a configured loss or miner (``cls``, named ``name`` in the section ``key``) reads, its
    ``label_scale`` / ``scale`` keyword in ``kwargs``, must be one of the data's ``num_scales``; else a
    :class:`ConfigError` keyed ``<key>.kwargs.<keyword>`` (``does``: what it does on that column, for the message)."""
    col_arg = label_column_argument(cls)
    col = None if col_arg is None else kwargs.get(col_arg)
    if isinstance(col, int) and not isinstance(col, bool) and not 0 <= col < num_scales:
        raise ConfigError(f"{name}({col_arg}={col}) {does} on a label scale the data does not have: expected "
                          f"0..{num_scales - 1} (the labels have {num_scales} scale(s))", key=f"{key}.kwargs.{col_arg}")


def _head_pair_term(term: LossConfig, key: str, embedder: nn.Module, dims: Mapping[str | None, int]) -> LossConfig:
    """``term`` with the widths of the model's two heads filled in (``class_dim`` / ``shared_dim``, in the concat's
    order, :attr:`dynametric.models.Embedder.head_names`) when its loss reads the concat of a head pair
    (:attr:`dynametric.losses.base.MetricLoss.reads_head_pair`: ``DecorrelationLoss``); a loss of that kind on
    another head, on a model without exactly two heads, or with a width that disagrees is a :class:`ConfigError`."""
    from dynametric.losses import LOSSES

    if not getattr(LOSSES.get(term.name), "reads_head_pair", False):
        return term
    if term.head != "concat":
        raise ConfigError(f"{term.name} splits the two heads side by side [class; shared]; it must train the concat "
                          f"head, got head {term.head!r}; set {key}.head=concat", key=f"{key}.head")
    names = [n for n in dims if n not in (None, "concat")]
    names = [n for n in getattr(embedder, "head_names", names) if n in dims]
    if len(names) != 2:
        raise ConfigError(f"{term.name} needs a model with two heads (class and shared), the model has "
                          f"{len(names) or 1} (model.num_heads)", key=f"{key}.name")
    kwargs = dict(term.kwargs)
    for arg, head in (("class_dim", names[0]), ("shared_dim", names[1])):
        given, width = kwargs.get(arg), int(dims[head])
        if given is not None and given != width:
            raise ConfigError(f"{term.name}({arg}={given}) does not fit the model: the concat head is "
                              f"[{names[0]}: {dims[names[0]]}-d; {names[1]}: {dims[names[1]]}-d]; set "
                              f"{key}.kwargs.{arg}={width} or leave it out (the engine fills it in)",
                              key=f"{key}.kwargs.{arg}")
        kwargs[arg] = width
    return dataclasses.replace(term, kwargs=kwargs)


def build_objectives(cfg: Config, embedder: nn.Module, train_labels: torch.Tensor | None,
                     num_scales: int, surrogate: Mapping[str, tuple[int, str]] | None = None,
                     scale_names: Sequence[str] | None = None) -> list[Objective]:
    """One :class:`Objective` per loss term; ``surrogate`` maps a term's key (``extra_losses[0]``) to the classes of
    the labels its method trains it on instead of the data's (:meth:`dynametric.methods.Method.surrogate_classes`).
    ``scale_names`` (the data's, finest first) name the per-scale parts of a loss that reads every label column
    (``uses_all_scales``: its ``scale_names``, :meth:`dynametric.losses.base.MetricLoss.loss_parts`)."""
    surrogate = surrogate or {}
    dims = head_dims(cfg, embedder)
    # the sampler's batch layout, if any (its options can change it: three_scale's ``scales``)
    chunks = sampler_class(cfg).loss_chunks_for(cfg.data.m, num_scales, cfg.data.sampler_options)
    objectives = []
    for key, term, mcfg in cfg.loss_terms():
        if term.head not in dims:
            raise ConfigError(f"unknown head {term.head!r}; the model outputs {[k for k in dims if k]}",
                              key=f"{key}.head")
        term = _head_pair_term(term, key, embedder, dims)
        mkey = "miner" if key == "loss" else f"{key}.miner"
        _check_no_loss_column_under_multiscale(term, key)
        if train_labels is not None and not term.multiscale:  # without data the scale count is a placeholder
            _check_label_column(_loss_class(term.name), term.name, term.kwargs, key, int(train_labels.shape[1]))
        if mcfg is not None and getattr(_loss_class(term.name), "mines_own_tuples", False):
            raise ConfigError(f"{term.name} mines its own tuples from the batch; a miner would be ignored or clash "
                              f"with it: remove {mkey} (set {mkey}: null)", key=f"{mkey}.name")
        if train_labels is not None and mcfg is not None:  # a miner reads its own column, multiscale loss or not
            _check_label_column(_miner_class(mcfg.name), mcfg.name, mcfg.kwargs, mkey, int(train_labels.shape[1]),
                                does="mines")
        if mcfg is not None:
            _check_miner_fits_term(term, key, mcfg, mkey)
        loss = build_loss_term(term, key, train_labels, dims[term.head], num_scales, chunks,
                               width=_width_key(cfg, term.head), surrogate=surrogate.get(key),
                               miner=mcfg if term.multiscale else None, miner_key=mkey)
        miner = None if term.multiscale else build_miner(mcfg, mkey)  # multiscale: the loss mines every scale
        if scale_names is not None and len(scale_names) == num_scales and getattr(loss, "uses_all_scales", False):
            setattr(loss, "scale_names", tuple(scale_names))  # noqa: B010 (an nn.Module attribute, not a buffer)
        name = getattr(term, "term", None) or (term.name if term.head is None else f"{term.name}@{term.head}")
        objectives.append(Objective(loss=loss, miner=miner, head=term.head, weight=term.weight, name=name,
                                    key=key))
    names = [o.name for o in objectives]
    if len(set(names)) != len(names):
        raise ConfigError(f"loss terms need distinct names, got {names}; set extra_losses[i].term", key="extra_losses")
    return objectives


# ----------------------------------------------------------------------------------------------- settings
def optim_settings(cfg: Config) -> OptimSettings:
    """The ``optim`` section as the module's :class:`OptimSettings`, after :func:`check_optimizer_kwargs`."""
    o = cfg.optim
    s = o.scheduler
    check_optimizer_kwargs(cfg)
    return OptimSettings(
        optimizer=o.name, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum, kwargs=dict(o.kwargs),
        backbone=GroupSettings(o.backbone.lr, o.backbone.weight_decay),
        head=GroupSettings(o.head.lr, o.head.weight_decay),
        loss=GroupSettings(o.loss.lr, o.loss.weight_decay),
        scheduler=s.name, warmup_epochs=s.warmup_epochs, step_size_epochs=s.step_size, gamma=s.gamma,
        milestones=list(s.milestones), min_lr=s.min_lr, interval=s.interval,
        monitor=f"val/{cfg.trainer.monitor}", monitor_mode=cfg.trainer.monitor_mode)


_OPTIM_OWN_KEYS = {"lr": "optim.lr (per group: optim.backbone.lr, optim.head.lr, optim.loss.lr)",
                   "weight_decay": "optim.weight_decay (per group: optim.<group>.weight_decay)"}
"""Optimizer arguments that have a key of their own in the ``optim`` section (``momentum`` too, for the optimizers
that take it), so ``optim.kwargs`` does not give them."""


def check_optimizer_kwargs(cfg: Config) -> None:
    """``optim.kwargs`` against the signature of the optimizer ``optim.name`` chooses, before any model is built:
    an argument it does not take is a :class:`ConfigError` on ``optim.kwargs.<arg>`` with its arguments (or the
    closest one), so is one that has its own key (``lr``, ``weight_decay``, ``momentum``: ``optim.lr``, ...), a value
    of the wrong type for an argument annotated with a simple type (``expected a list of 2 numbers for betas``), and
    a value the optimizer refuses when it is built on a one-element parameter (``Invalid beta parameter at index 1:
    1.5``), on the first argument refused by itself, else (refused together) on ``optim.kwargs``."""
    from dynametric.engine.module import _OPTIMIZERS

    o = cfg.optim
    if not o.kwargs:
        return
    cls = _OPTIMIZERS[o.name]
    label = cls.__name__
    own = dict(_OPTIM_OWN_KEYS)
    params = inspect.signature(cls).parameters
    if "momentum" in params:
        own["momentum"] = "optim.momentum"
    named = [p for p, v in params.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)
             and p != "params" and p not in own]
    hints = _annotations(cls)
    for arg, value in o.kwargs.items():
        if arg in own:
            raise ConfigError(f"{label}'s {arg} is set by {own[arg]}, not optim.kwargs: remove optim.kwargs.{arg}",
                              key=f"optim.kwargs.{arg}")
        if arg not in named:
            raise _unknown_argument(label, arg, named, "optim")
        expected = _misfit(_without_tensor(hints.get(arg)), value)
        if expected is not None:
            raise ConfigError(_expected_message(label, arg, expected, value), key=f"optim.kwargs.{arg}")
    fixed: dict[str, Any] = {"lr": o.lr, "weight_decay": o.weight_decay}
    if "momentum" in own:
        fixed["momentum"] = o.momentum

    def refusal(kwargs: Mapping[str, Any]) -> Exception | None:
        try:
            cls([nn.Parameter(torch.zeros(1))], **fixed, **kwargs)
        except Exception as exc:  # noqa: BLE001 - whatever the optimizer's own checks raise, it is about the values
            return exc
        return None

    exc = refusal(o.kwargs)
    if exc is None:
        return
    for arg, value in o.kwargs.items():  # the first argument refused by itself, with its own reason
        alone = refusal({arg: value})
        if alone is not None:
            raise ConfigError(f"{label}({arg}={value!r}) failed: {first_sentence(alone)}", key=f"optim.kwargs.{arg}")
    shown = ", ".join(f"{k}={v!r}" for k, v in o.kwargs.items())
    raise ConfigError(f"{label}({shown}) failed: {first_sentence(exc)}", key="optim.kwargs")


def _without_tensor(annotation: Any) -> Any:
    """``annotation`` with ``torch.Tensor`` taken out of its unions (``float | Tensor`` -> ``float``, inside a tuple
    too): a config gives numbers, never tensors."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        kept = [_without_tensor(a) for a in args if a is not torch.Tensor]
        return functools.reduce(operator.or_, kept) if kept else annotation
    if origin is tuple and args:
        return tuple[tuple(_without_tensor(a) for a in args)]  # type: ignore[misc]
    return annotation


def trainer_settings(cfg: Config, *, progress_bar: bool | None = None) -> TrainerSettings:
    t = cfg.trainer
    return TrainerSettings(
        max_epochs=t.max_epochs, max_steps=-1 if t.max_steps is None else t.max_steps, precision=str(t.precision),
        accumulate_grad_batches=t.accumulate_grad_batches, gradient_clip_val=cfg.optim.grad_clip,
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy, seed=t.seed,
        deterministic=t.deterministic, val_every_n_epochs=t.val_every,
        checkpoint_every_n_steps=t.checkpoint_every_n_steps or 0, monitor=t.monitor, monitor_mode=t.monitor_mode,
        nonfinite=t.nonfinite, progress_bar=t.progress_bar if progress_bar is None else progress_bar,
        log_every_n_steps=t.log_every_n_steps, patience=t.patience, sync_batchnorm=t.sync_batchnorm)


def eval_kwargs(cfg: Config) -> dict[str, Any]:
    e = cfg.eval
    return {"metrics": None if e.metrics is None else list(e.metrics), "k_values": tuple(e.k_values),
            "distance": e.distance, "empty_queries": "exclude" if e.empty_queries == "exclude" else "count_as_zero",
            "memory_budget_bytes": e.memory_budget_bytes}


def with_resolved_monitor(cfg: Config, scale_names: Sequence[str]) -> Config:
    """A shallow copy of ``cfg`` whose ``trainer.monitor`` names a real scale (``cfg`` itself is unchanged)."""
    resolved = resolve_monitor(cfg.trainer.monitor, scale_names)
    if resolved == cfg.trainer.monitor:
        return cfg
    return dataclasses.replace(cfg, trainer=dataclasses.replace(cfg.trainer, monitor=resolved))


def check_monitor(cfg: Config, scale_names: Sequence[str]) -> None:
    """The monitor's scale ('finest' / 'coarsest' resolved) must be one of the data's (its metric is checked when
    the config loads)."""
    scale = split_monitor(resolve_monitor(cfg.trainer.monitor, scale_names))[0]
    valid = [*scale_names, "mean"]
    if scale not in valid:
        raise ConfigError(f"monitor scale {scale!r} is not one of the dataset's scales {valid} (or 'finest', "
                          "'coarsest')", key="trainer.monitor")


@dataclass
class Components:
    """Everything a run needs, built from one config."""

    embedder: nn.Module
    objectives: list[Objective]
    module: MetricLearningModule
    trainer: TrainerSettings
    datasets: Datasets | None
    scale_names: list[str]
    notes: list[str] = field(default_factory=list)


def eval_head(cfg: Config) -> str | None:
    """The head evaluated for model selection: the first of ``eval.heads``, else the single output / concat."""
    if cfg.model.num_heads == 1:
        return None
    return cfg.eval.heads[0] if cfg.eval.heads else "concat"


ModuleFactory = Callable[..., MetricLearningModule]
"""``make_module(embedder, objectives, optim_settings, **common) -> module``: the standard
:class:`~dynametric.engine.module.MetricLearningModule`, or a method's subclass with its plan bound (the caller,
:func:`dynametric.pipeline.build_components`, asks the method plug-in which)."""


def _assemble(cfg: Config, datasets: Datasets | None, num_scales: int | None, make_module: ModuleFactory,
              surrogate: Mapping[str, tuple[int, str]] | None) -> tuple[Any, ...]:
    """Embedder, objectives and LightningModule of ``cfg`` (the random draws come from the global torch RNG)."""
    embedder = build_model(cfg)
    if datasets is not None:
        train_labels = dataset_labels(datasets.train, "the training split")
        scale_names = datasets.scale_names
        check_monitor(cfg, scale_names)
    else:
        train_labels = None
        declared = declared_scale_names(cfg)  # the format's own names where it fixes them, else placeholders
        if declared is not None:
            scale_names = declared
            check_monitor(cfg, scale_names)
            scale_index(cfg.data.val_carve_scale, scale_names, "data.val_carve_scale")
        else:
            from dynametric.metrics import default_scale_names

            scale_names = list(default_scale_names(num_scales or 3))
    cfg = with_resolved_monitor(cfg, scale_names)  # `finest/map@r` -> `<first scale>/map@r`
    objectives = build_objectives(cfg, embedder, train_labels, len(scale_names), surrogate, scale_names)
    common: dict[str, Any] = {"eval_kwargs": eval_kwargs(cfg), "eval_head": eval_head(cfg),
                              "scale_names": scale_names, "nonfinite": cfg.trainer.nonfinite}
    module = make_module(embedder, objectives, optim_settings(cfg), **common)
    module.channels_last = use_channels_last(cfg, embedder)
    module.per_category = bool(cfg.eval.per_category)
    if module.channels_last:
        embedder.to(memory_format=torch.channels_last)  # kept by the later move to the device
    if cfg.trainer.compile:
        embedder.compile()  # in place: the state dict keeps its keys, checkpoints stay interchangeable
    return embedder, objectives, module, scale_names, cfg


def assemble(cfg: Config, *, datasets: Datasets | None, make_module: ModuleFactory, num_scales: int | None = None,
             progress_bar: bool | None = None, surrogate: Mapping[str, tuple[int, str]] | None = None) -> Components:
    """The components of ``cfg`` with the training module ``make_module`` builds (no method registry here: the
    method's choice is the caller's, :func:`dynametric.pipeline.build_components`, and so are ``surrogate``, the
    method's own label classes per loss term, see :func:`build_objectives`)."""
    # The weights are drawn from trainer.seed on a forked RNG: the caller's global torch RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(int(cfg.trainer.seed))
        embedder, objectives, module, scale_names, cfg = _assemble(cfg, datasets, num_scales, make_module, surrogate)
    return Components(embedder, objectives, module, trainer_settings(cfg, progress_bar=progress_bar), datasets,
                      scale_names)


def trains_on_cuda(cfg: Config) -> bool:
    """Whether ``trainer.accelerator`` puts training on a CUDA GPU here (``auto`` / ``gpu`` / ``cuda`` with CUDA
    available)."""
    return str(cfg.trainer.accelerator).lower() in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def _trains_on_cpu(cfg: Config) -> bool:
    """Whether training runs on the CPU here: ``trainer.accelerator: cpu``, or ``auto`` with neither CUDA nor MPS
    (``gpu`` / ``cuda`` without CUDA are refused when training starts)."""
    accel = str(cfg.trainer.accelerator).strip().lower()
    if accel == "cpu":
        return True
    mps = getattr(torch.backends, "mps", None)
    return accel == "auto" and not torch.cuda.is_available() and not (mps is not None and mps.is_available())


def is_convolutional(model: nn.Module) -> bool:
    """At least half of the parameters sit in 2-D convolutions (ResNets, BN-Inception, simple_cnn; not ViTs)."""
    conv = sum(p.numel() for m in model.modules() if isinstance(m, nn.Conv2d) for p in m.parameters(recurse=False))
    total = sum(p.numel() for p in model.parameters())
    return total > 0 and conv * 2 >= total


def use_channels_last(cfg: Config, embedder: nn.Module) -> bool:
    """``model.channels_last``, or (``None``) convolutional backbones when training on a CUDA GPU."""
    if cfg.model.channels_last is not None:
        return bool(cfg.model.channels_last)
    return trains_on_cuda(cfg) and is_convolutional(embedder)


def _local_processes(cfg: Config) -> int:
    """Training processes on this machine (:func:`dynametric.engine.trainer.processes_here`; at least 1)."""
    from dynametric.engine.trainer import processes_here

    return processes_here(cfg.trainer.accelerator, cfg.trainer.devices) or 1


def loader_settings(cfg: Config) -> dict[str, Any]:
    """The DataLoader keywords of ``data.workers`` (``auto`` resolved), ``data.pin_memory`` (``None``: on for a
    CUDA GPU), ``data.persistent_workers`` and ``data.prefetch_factor``, for :class:`MetricDataModule`."""
    from dynametric.utils.device import auto_workers

    cuda = trains_on_cuda(cfg)
    d = cfg.data
    workers = auto_workers("cuda" if cuda else "cpu", _local_processes(cfg)) if d.workers == "auto" \
        else int(d.workers)
    # a CPU run has no device to pin for: data.pin_memory: true would only make torch warn ("no accelerator is
    # found") and pin nothing, so it is off there
    pin = False if _trains_on_cpu(cfg) else cuda if d.pin_memory is None else bool(d.pin_memory)
    return {"num_workers": workers, "pin_memory": pin,
            "persistent_workers": bool(d.persistent_workers), "prefetch_factor": int(d.prefetch_factor)}


def check_data_root(cfg: Config) -> None:
    """A run's check of its data before it reads or writes anything: a format other than ``synthetic`` needs
    ``data.root``, set and there, else the readers' error keyed ``data.root`` (:func:`_data_options_keyed`; ``key
    'data.root': dataset root not found: /data/cub (expected CUB_200_2011 with images.txt)``, the reader's own
    description of its root, so that ``train`` and ``evaluate --checkpoint`` say the same)."""
    if root_missing(cfg):
        from dynametric.data.readers import resolve_root
        from dynametric.data.registry import root_expected

        with _data_options_keyed(cfg):
            resolve_root(cfg.data.root, root_expected(cfg.data.format))


def root_missing(cfg: Config) -> bool:
    """Whether the configured data has no root to read: a format other than ``synthetic`` with ``data.root`` unset
    or not there (``~`` expanded, as the readers expand it)."""
    return cfg.data.format != "synthetic" and (cfg.data.root is None or not Path(cfg.data.root).expanduser().exists())
