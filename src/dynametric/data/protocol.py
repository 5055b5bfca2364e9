"""The one contract every dataset of dynametric satisfies: :class:`LabeledDataset`.

A labelled dataset has

* ``labels``: ``LongTensor[N, S]``, one row per item, one column per label scale, finest scale first;
* ``scale_names``: ``S`` names, one per column (``("fine", "middle", "coarse")``, ...);
* ``split``: the split it holds (``"train"``, ``"val"``, ``"test"``, a DyML query/gallery split, ...), or ``None``;
* ``paths``: the image file of every item, or ``None`` when the items are not files (in-memory images);
* ``len(dataset) == N`` and ``dataset[i] == (image, labels[i])``.

The readers' :class:`~dynametric.data.HierarchicalImageDataset` (and its subclasses),
:class:`~dynametric.data.SyntheticHierarchy` and :class:`~dynametric.data.LabelledSubset` satisfy it, and the engine
reads these attributes directly. A dataset from outside the package (passed to ``LabelledSubset``,
``validation_split`` or the engine's data module) needs at least ``labels``: :func:`dataset_labels` and
:func:`dataset_fields` read such a dataset, with a clear error when ``labels`` are missing, and
:func:`dataset_paths` reads ``paths`` alone (of a reader's records too, which have paths but no ``labels``).
:func:`check_labeled_dataset` checks a dataset against the whole contract.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch

from dynametric.errors import InputError
from dynametric.labels import as_label_matrix

__all__ = ["DatasetFields", "LabeledDataset", "check_labeled_dataset", "dataset_fields", "dataset_labels",
           "dataset_paths"]


@runtime_checkable
class LabeledDataset(Protocol):
    """``labels`` ``LongTensor[N, S]`` (finest first), ``scale_names``, ``split``, ``paths``; ``len`` and items."""

    labels: torch.Tensor
    scale_names: Sequence[str]
    split: str | None

    @property
    def paths(self) -> Sequence[Any] | None: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Any: ...


@dataclass(frozen=True)
class DatasetFields:
    """What :func:`dataset_fields` read: ``labels`` ``LongTensor[N, S]``; the others ``None`` when absent."""

    labels: torch.Tensor
    scale_names: tuple[str, ...] | None
    split: str | None
    paths: Sequence[Any] | None


def dataset_labels(dataset: Any, name: str = "dataset", *, key: str | None = None,
                   error: type[InputError] = InputError) -> torch.Tensor:
    """``dataset.labels`` as ``LongTensor[N, S]`` (:func:`~dynametric.labels.as_label_matrix`), for a dataset that
    may come from outside the package; one without ``labels`` is an ``error`` (keyed ``key``, default ``name``)."""
    if not hasattr(dataset, "labels"):
        raise error(f"{name} has no 'labels' attribute (LongTensor[N, S])", key=key or name)
    return as_label_matrix(dataset.labels, name=f"{name}.labels")


def dataset_paths(dataset: Any) -> Sequence[Any] | None:
    """``dataset.paths`` (one image file per item), or ``None`` where it has none (in-memory images, or a dataset
    from outside the package without the attribute). Needs no ``labels``, so it also reads a reader's
    :class:`~dynametric.data.base.SplitRecords`."""
    return getattr(dataset, "paths", None)


def dataset_fields(dataset: Any, name: str = "dataset") -> DatasetFields:
    """The :class:`LabeledDataset` fields of a dataset that may come from outside the package and lack the optional
    ones (``scale_names``, ``split``, ``paths`` are then ``None``); ``labels`` are required (:func:`dataset_labels`).
    The one place that reads a dataset's fields without relying on the protocol."""
    labels = dataset_labels(dataset, name)
    names = getattr(dataset, "scale_names", None)
    return DatasetFields(labels, tuple(names) if names is not None else None, getattr(dataset, "split", None),
                         dataset_paths(dataset))


def check_labeled_dataset(dataset: Any, name: str = "dataset") -> LabeledDataset:
    """``dataset`` if it satisfies :class:`LabeledDataset` in full (attributes present, ``labels`` a
    ``LongTensor[N, S]`` with ``N == len(dataset)``, one scale name per column, ``paths`` ``None`` or one per item);
    otherwise an :class:`InputError` naming what is wrong."""
    if not isinstance(dataset, LabeledDataset):
        missing = [a for a in ("labels", "scale_names", "split", "paths", "__len__", "__getitem__")
                   if not hasattr(dataset, a)]
        raise InputError(f"{type(dataset).__name__} is not a LabeledDataset: missing {missing}", key=name)
    labels = dataset.labels
    if not isinstance(labels, torch.Tensor) or labels.dtype != torch.long or labels.dim() != 2:
        raise InputError(f"{name}.labels must be a LongTensor[N, S], got "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} of shape "
                         f"{tuple(getattr(labels, 'shape', ()))}", key=f"{name}.labels")
    if labels.shape[0] != len(dataset):
        raise InputError(f"{name} has {len(dataset)} items but {labels.shape[0]} label rows", key=f"{name}.labels")
    if len(dataset.scale_names) != labels.shape[1] or not all(isinstance(s, str) for s in dataset.scale_names):
        raise InputError(f"{name}.scale_names must be {labels.shape[1]} names, got {list(dataset.scale_names)}",
                         key=f"{name}.scale_names")
    if dataset.split is not None and not isinstance(dataset.split, str):
        raise InputError(f"{name}.split must be a string or None, got {dataset.split!r}", key=f"{name}.split")
    if dataset.paths is not None and len(dataset.paths) != len(dataset):
        raise InputError(f"{name}.paths lists {len(dataset.paths)} files for {len(dataset)} items",
                         key=f"{name}.paths")
    return dataset
