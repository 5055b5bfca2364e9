"""dynametric.data: dataset readers, generic formats and transforms; synthetic data, samplers and splits."""

from __future__ import annotations

import importlib
from typing import Any

from dynametric.data.base import HierarchicalImageDataset, LoadReport, Problem, SplitRecords
from dynametric.data.protocol import LabeledDataset, check_labeled_dataset, dataset_fields, dataset_labels
from dynametric.data.registry import FORMAT_NAMES, build_dataset, list_splits
from dynametric.data.transforms import IMAGENET_MEAN, IMAGENET_STD, PRESETS, build_transform

# Synthetic data, samplers and splits, imported on first use (their modules may import this package).
_LAZY: dict[str, str] = {
    "SyntheticHierarchy": "dynametric.data.synthetic",
    "MPerClassSampler": "dynametric.data.samplers",
    "ThreeScaleSampler": "dynametric.data.samplers",
    "HierarchicalSampler": "dynametric.data.samplers",
    "SAMPLERS": "dynametric.data.samplers",
    "build_sampler": "dynametric.data.samplers",
    "LabelledSubset": "dynametric.data.splits",
    "class_disjoint_folds": "dynametric.data.splits",
    "class_disjoint_split": "dynametric.data.splits",
    "validation_split": "dynametric.data.splits",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dynametric.data' has no attribute {name!r}")


__all__ = [
    "FORMAT_NAMES", "IMAGENET_MEAN", "IMAGENET_STD", "PRESETS", "HierarchicalImageDataset", "LabeledDataset",
    "LoadReport", "Problem", "SplitRecords", "build_dataset", "build_transform", "check_labeled_dataset",
    "dataset_fields", "dataset_labels", "list_splits", *_LAZY,
]
