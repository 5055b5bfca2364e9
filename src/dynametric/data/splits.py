"""Class-disjoint validation splits carved from the training classes (model selection never sees test classes).

Following the Reality Check (Musgrave, Belongie, Lim, ECCV 2020), validation classes are disjoint from the
training classes of a fold: the classes of one scale (fine by default) are shuffled with ``seed``
(``numpy.random.default_rng(seed).permutation`` of the sorted class ids) and dealt into ``k`` folds of (nearly)
equal class counts (``numpy.array_split``), or the first ``round(val_fraction * C)`` of them validate; fold ``i``
validates on its classes and trains on the others. Splitting
at a coarser scale moves whole subtrees (every fine class under a held-out middle class goes to validation), so
the split is class-disjoint at that scale and at every finer one. ``shuffle=False`` gives contiguous ranges of
the sorted class ids instead.

These functions take the *training* split only; :func:`validation_split` refuses a dataset whose ``split`` is a
test split (``test``, ``query``, ``gallery``). :func:`shared_files` (items compared by
:func:`image_identities`: resolved path and crop box) and :func:`raw_class_ids` tell whether two
datasets hold the same images or the same classes (what a run checks between its training, validation and
test data).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Hashable, Sequence
from typing import Any, cast

import numpy as np
import torch

from dynametric.data.protocol import dataset_fields, dataset_labels, dataset_paths
from dynametric.errors import InputError
from dynametric.labels import LabelsLike, as_label_matrix

TEST_SPLITS: frozenset[str] = frozenset({"test", "query", "gallery"})


def _scale_column(labels: LabelsLike, scale: int) -> np.ndarray:
    mat = as_label_matrix(labels)
    if not -mat.shape[1] <= scale < mat.shape[1]:
        raise InputError(f"scale {scale} out of range for labels with {mat.shape[1]} scale(s)", key="scale")
    return mat[:, scale].numpy()


def _shuffled(classes: np.ndarray, seed: int) -> np.ndarray:
    """The seeded class order every split here deals from (``numpy`` PCG64 seeded with ``seed``)."""
    return np.random.default_rng(int(seed)).permutation(classes)


def _class_groups(classes: np.ndarray, k: int, seed: int, shuffle: bool) -> list[np.ndarray]:
    order = _shuffled(classes, seed) if shuffle else classes
    return [np.sort(g) for g in np.array_split(order, k)]


def class_disjoint_folds(labels: LabelsLike, k: int = 4, seed: int = 0, scale: int = 0,
                         shuffle: bool = True) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` class-disjoint folds: a list of ``(train_idx, val_idx)`` (sorted ``int64`` row indices).

    The classes of ``labels[:, scale]`` are dealt into ``k`` groups of ``floor(C/k)`` or ``ceil(C/k)`` classes;
    fold ``i`` validates on group ``i``. Every row is in exactly one ``val_idx`` over the ``k`` folds.
    """
    col = _scale_column(labels, scale)
    classes = np.unique(col)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise InputError(f"k must be an integer >= 2, got {k!r}", key="k")
    if k > len(classes):
        raise InputError(f"{k} folds need at least {k} classes, scale {scale} has {len(classes)}", key="k")
    folds = []
    for group in _class_groups(classes, int(k), seed, shuffle):
        is_val = np.isin(col, group)
        folds.append((np.flatnonzero(~is_val), np.flatnonzero(is_val)))
    return folds


def class_disjoint_split(labels: LabelsLike, val_fraction: float = 0.2, seed: int = 0, scale: int = 0,
                         shuffle: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One class-disjoint ``(train_idx, val_idx)``: ``round(val_fraction * C)`` classes (at least 1, at most
    ``C - 1``) of scale ``scale`` validate: the first ones of the seeded class order (of the sorted class ids with
    ``shuffle=False``)."""
    col = _scale_column(labels, scale)
    classes = np.unique(col)
    if not 0.0 < float(val_fraction) < 1.0:
        raise InputError(f"val_fraction must be in (0, 1), got {val_fraction!r}", key="val_fraction")
    if len(classes) < 2:
        raise InputError(f"a class-disjoint split needs at least 2 classes, scale {scale} has {len(classes)}",
                         key="scale")
    n_val = min(max(1, round(float(val_fraction) * len(classes))), len(classes) - 1)
    order = _shuffled(classes, seed) if shuffle else classes
    is_val = np.isin(col, order[:n_val])  # the first classes (of the shuffled or sorted order)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


class LabelledSubset(torch.utils.data.Dataset):
    """A subset of a labelled dataset that keeps ``labels`` (``LongTensor[n, S]``), ``scale_names``, a ``split`` and
    ``paths`` (a :class:`~dynametric.data.protocol.LabeledDataset`; the parent needs only ``labels``, missing scale
    names become ``scale0..``).

    ``indices`` are row indices into ``dataset``; ``subset[i]`` is ``dataset[indices[i]]``.
    """

    def __init__(self, dataset: Any, indices: Sequence[int] | np.ndarray | torch.Tensor, split: str | None = None
                 ) -> None:
        fields = dataset_fields(dataset)
        # a copy: the caller's index array changed later must not move the subset's items (its labels are a copy)
        idx = torch.from_numpy(np.asarray(indices, dtype=np.int64).copy()).reshape(-1)
        labels = fields.labels
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= labels.shape[0]):
            raise InputError(f"indices must lie in [0, {labels.shape[0]})", key="indices")
        self.dataset = dataset
        self.indices = idx
        self.labels = labels[idx]
        self.scale_names: tuple[str, ...] = (fields.scale_names if fields.scale_names is not None
                                             else tuple(f"scale{s}" for s in range(labels.shape[1])))
        self.split = split if split is not None else fields.split
        self._parent_paths = fields.paths

    @property
    def paths(self) -> list[Any] | None:
        """The image file of every item (the parent's ``paths`` at ``indices``), or ``None`` if it has none."""
        if self._parent_paths is None:
            return None
        return [self._parent_paths[int(i)] for i in self.indices]

    @property
    def boxes(self) -> list[Any] | None:
        """The crop box of every item (the parent's ``boxes`` at ``indices``, OML), or ``None`` if it has none."""
        boxes = getattr(self.dataset, "boxes", None)
        return None if boxes is None else [boxes[int(i)] for i in self.indices]

    @property
    def sequence_ids(self) -> list[Any] | None:
        """The sequence of every item (the parent's ``sequence_ids`` at ``indices``, OML), or ``None``."""
        ids = getattr(self.dataset, "sequence_ids", None)
        return None if ids is None else [ids[int(i)] for i in self.indices]

    @property
    def category_ids(self) -> list[Any] | None:
        """The category of every item (the parent's ``category_ids`` at ``indices``, OML), or ``None``."""
        ids = getattr(self.dataset, "category_ids", None)
        return None if ids is None else [ids[int(i)] for i in self.indices]

    @property
    def category_note(self) -> str | None:
        """Why the parent carries no categories although its reader had some (its ``category_note``), or ``None``."""
        return getattr(self.dataset, "category_note", None)

    def __len__(self) -> int:
        return int(self.indices.numel())

    def __getitem__(self, i: int) -> Any:
        return self.dataset[int(self.indices[i])]

    def class_counts(self) -> dict[str, int]:
        """Number of distinct classes per scale in this subset, keyed by scale name."""
        return {name: int(self.labels[:, s].unique().numel()) for s, name in enumerate(self.scale_names)}

    def __repr__(self) -> str:
        return f"LabelledSubset(split={self.split!r}, size={len(self)}, of={type(self.dataset).__name__})"


def validation_split(dataset: Any, *, val_fraction: float | None = None, k: int | None = None, fold: int = 0,
                     seed: int = 0, scale: int = 0, shuffle: bool = True) -> tuple[LabelledSubset, LabelledSubset]:
    """Carve a class-disjoint validation set from a training dataset: ``(train_subset, val_subset)``.

    Exactly one of ``val_fraction`` (one split) or ``k`` (fold ``fold`` of :func:`class_disjoint_folds`) is used;
    with neither, ``k=4, fold=0`` (the Reality Check's setting). The subsets are named ``"train"`` and ``"val"``.
    """
    fields = dataset_fields(dataset)
    split = fields.split
    if split in TEST_SPLITS:
        raise InputError(f"validation classes must come from the training split, got a {split!r} dataset",
                         key="split")
    if val_fraction is not None and k is not None:
        raise InputError("give either val_fraction or k (folds), not both", key="val_fraction")
    labels = fields.labels
    if val_fraction is not None:
        train_idx, val_idx = class_disjoint_split(labels, val_fraction, seed=seed, scale=scale, shuffle=shuffle)
    else:
        k = 4 if k is None else k
        folds = class_disjoint_folds(labels, k, seed=seed, scale=scale, shuffle=shuffle)
        if not 0 <= fold < len(folds):
            raise InputError(f"fold must be in [0, {len(folds)}), got {fold}", key="fold")
        train_idx, val_idx = folds[fold]
    return LabelledSubset(dataset, train_idx, split="train"), LabelledSubset(dataset, val_idx, split="val")



def image_identities(dataset: Any) -> list[Hashable] | None:
    """What makes an item of one split the same item as one of another split: ``(resolved path, crop box)``, the
    file's ``os.path.realpath`` (one file listed as ``a.png``, ``./a.png`` or through a link is one image) and the
    dataset's crop box (``boxes``, OML; ``None``: the whole image), so two boxes cut from one image are two items.
    ``dataset``: anything with ``paths`` (and ``boxes``): a dataset, a :class:`LabelledSubset`, a reader's records.
    ``None`` when the items are not files (nothing tells two in-memory splits' items apart). Never the file name
    alone: ``cls0/0.png`` and ``cls1/0.png`` are different images. The one item identity of the query -> gallery
    exclusion (:mod:`dynametric.engine.protocols`) and of :func:`shared_files`."""
    paths = dataset_paths(dataset)
    if paths is None:
        return None
    boxes = getattr(dataset, "boxes", None)
    return [(os.path.realpath(str(p)), None if boxes is None else boxes[i]) for i, p in enumerate(paths)]


class _KeptPerObject:
    """A value kept for each live object, found by the object itself (``is``: a dataset need not be hashable, and two
    equal datasets are two datasets) and dropped when the object is collected; an object taking no weak reference
    (``None``, a list) keeps nothing. Not keyed by ``id()`` alone: an entry answers only while its weak reference
    still gives the very object asked about, so an object born at a collected one's address never gets its value."""

    def __init__(self) -> None:
        self._entries: dict[int, tuple[weakref.ref[Any], Any]] = {}

    def get(self, obj: Any, default: Any = None) -> Any:
        entry = self._entries.get(id(obj))
        return entry[1] if entry is not None and entry[0]() is obj else default

    def set(self, obj: Any, value: Any) -> None:
        key = id(obj)

        def drop(ref: weakref.ref[Any]) -> None:  # the object is being collected: its entry goes (if still its own)
            if self._entries.get(key, (None,))[0] is ref:
                del self._entries[key]

        try:
            ref = weakref.ref(obj, drop)
        except TypeError:  # no weak reference to it: nothing is kept
            return
        self._entries[key] = (ref, value)


_IDENTITIES = _KeptPerObject()
_NOT_KEPT: Any = object()


def dataset_identities(dataset: Any) -> list[Hashable] | None:
    """:func:`image_identities` of ``dataset``, computed once per dataset object (a ``realpath`` per item) and kept
    with it for as long as it lives: the one cache of item identities that the run's checks of its held-out data,
    the query -> gallery protocol (its check before embedding and its exclusion, however often a test runs) and
    ``data inspect`` share. A dataset's items are taken as fixed once asked (no dataset of the package changes its
    files after it is built). An object that takes no weak reference (``None``, a list) is computed every time."""
    ids = _IDENTITIES.get(dataset, _NOT_KEPT)
    if ids is _NOT_KEPT:
        ids = image_identities(dataset)
        _IDENTITIES.set(dataset, ids)
    return cast("list[Hashable] | None", ids)


def shared_files(a: Any, b: Any) -> list[str]:
    """The items (image files, with their crop box where the data has boxes) that the datasets ``a`` and ``b``
    (anything with ``paths``, :func:`image_identities`) both hold, sorted, each as its resolved path (``path box
    (x_1, y_1, x_2, y_2)`` for a crop): one file under two names is one item, two boxes cut from one file are two.
    ``[]`` when either is ``None`` or has no paths (in-memory images)."""
    return shared_identities(image_identities(a), image_identities(b))


def shared_identities(ids_a: Sequence[Hashable] | None, ids_b: Sequence[Hashable] | None) -> list[str]:
    """:func:`shared_files` of two datasets whose :func:`image_identities` are already computed (a check that
    compares one dataset with several computes them once, :func:`dataset_identities`: each is a ``realpath`` per
    item)."""
    if ids_a is None or ids_b is None:
        return []
    both = cast(set[tuple[str, Any]], set(ids_a) & set(ids_b))
    return sorted(path if box is None else f"{path} box {box}" for path, box in both)


def raw_class_ids(dataset: Any, scale: int = 0) -> set[Hashable]:
    """The raw (file) ids of the classes present in ``dataset`` at ``scale``: its labels mapped through the
    ``class_ids`` of the dataset (of the one a :class:`LabelledSubset` was cut from); the label values themselves
    for a dataset without ``class_ids`` (the synthetic data numbers its classes across splits)."""
    labels = dataset_labels(dataset)
    base = dataset
    while isinstance(base, LabelledSubset):
        base = base.dataset
    present = torch.unique(labels[:, scale]).tolist()
    ids = getattr(base, "class_ids", None)
    return set(present) if ids is None else {ids[scale][c] for c in present}
