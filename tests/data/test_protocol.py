"""Every dataset class of the package satisfies the LabeledDataset protocol (labels LongTensor[N, S], scale names,
split, paths); the checks that say so can fail; datasets from outside the package need only labels."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import dynametric
from dynametric.data import (
    HierarchicalImageDataset,
    LabeledDataset,
    LabelledSubset,
    SyntheticHierarchy,
    build_dataset,
    check_labeled_dataset,
    dataset_fields,
    validation_split,
)
from dynametric.data.oml import CroppedImageDataset
from dynametric.errors import ConfigError, InputError

PACKAGE = Path(dynametric.__file__).parent

LABELS = torch.tensor([[0, 0], [1, 0], [2, 1], [3, 1]])


def _images() -> HierarchicalImageDataset:
    return HierarchicalImageDataset([f"/data/img{i}.jpg" for i in range(4)], LABELS, ("fine", "coarse"), "train")


def _cropped() -> CroppedImageDataset:
    ds = CroppedImageDataset([f"/data/img{i}.jpg" for i in range(4)], LABELS, ("fine", "coarse"), "test")
    ds.boxes = [None, (0, 0, 2, 2), None, None]
    return ds


def _synthetic() -> SyntheticHierarchy:
    return SyntheticHierarchy("val", images_per_class=1, image_size=8)


FACTORIES = {
    "dynametric.data.base.HierarchicalImageDataset": _images,
    "dynametric.data.oml.CroppedImageDataset": _cropped,
    "dynametric.data.synthetic.SyntheticHierarchy": _synthetic,
    "dynametric.data.splits.LabelledSubset": lambda: LabelledSubset(_images(), [3, 1], split="val"),
}
"""A small instance of every labelled dataset class in the package."""

NOT_LABELLED = {
    "dynametric.retrieval.embed.ImageFiles": "image files to embed, without labels",
    "dynametric.engine.data.SeededDataset": "seeds item access of the dataset it wraps; labels are read from that one",
}


def _dataset_classes() -> set[str]:
    """Every class of the package that derives (directly or through another package class) from a ``Dataset``."""
    bases: dict[str, list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                bases[f"{module}.{node.name}"] = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
    found: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, parents in bases.items():
            if name in found:
                continue
            known = {f.rsplit(".", 1)[-1] for f in found}
            if any(p == "Dataset" or p in known for p in parents):
                found.add(name)
                changed = True
    return found


def test_the_list_of_dataset_classes_is_complete():
    assert _dataset_classes() == set(FACTORIES) | set(NOT_LABELLED)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_every_dataset_class_satisfies_the_protocol(name):
    ds = FACTORIES[name]()
    assert f"{type(ds).__module__}.{type(ds).__name__}" == name
    assert isinstance(ds, LabeledDataset)
    assert check_labeled_dataset(ds) is ds
    assert ds.labels.dtype == torch.long and ds.labels.shape == (len(ds), len(ds.scale_names))
    assert ds.split in ("train", "val", "test")
    assert ds.paths is None or len(ds.paths) == len(ds)


def test_a_dataset_from_the_registry_satisfies_the_protocol():
    ds = build_dataset("synthetic", None, "test", images_per_class=1, image_size=8)
    assert check_labeled_dataset(ds) is ds and ds.scale_names == ("fine", "middle", "coarse") and ds.paths is None


def test_subset_keeps_the_fields_and_the_paths_of_its_rows():
    sub = LabelledSubset(_images(), [3, 1], split="val")
    assert sub.paths == ["/data/img3.jpg", "/data/img1.jpg"]
    assert torch.equal(sub.labels, LABELS[[3, 1]]) and sub.scale_names == ("fine", "coarse") and sub.split == "val"
    assert LabelledSubset(_synthetic(), [0]).paths is None
    train, val = validation_split(_images(), val_fraction=0.5, seed=0)
    assert sorted(train.paths + val.paths) == [f"/data/img{i}.jpg" for i in range(4)]


class _Bare(torch.utils.data.Dataset):
    """A dataset from outside the package: labels only (1-D), no scale names, split or paths."""

    def __init__(self, labels):
        self.labels = labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return torch.zeros(1), self.labels[i]


def test_outside_datasets_need_only_labels():
    fields = dataset_fields(_Bare(torch.tensor([4, 5, 4])))
    assert torch.equal(fields.labels, torch.tensor([[4], [5], [4]])) and fields.labels.dtype == torch.long
    assert (fields.scale_names, fields.split, fields.paths) == (None, None, None)
    sub = LabelledSubset(_Bare(torch.tensor([4, 5, 4])), [2])
    assert sub.scale_names == ("scale0",) and sub.split is None and sub.paths is None
    assert check_labeled_dataset(sub) is sub
    with pytest.raises(InputError, match="dataset has no 'labels' attribute") as err:
        LabelledSubset(object(), [0])
    assert err.value.key == "dataset"
    from dynametric.engine.data import _labels_of

    with pytest.raises(ConfigError, match="the train dataset has no 'labels'") as err:
        _labels_of(object(), "train")
    assert err.value.key == "data"


def test_paths_are_read_in_one_place_also_without_labels():
    """``dataset_paths`` is the one reader of ``paths``: a dataset's, or a reader's records' (paths, no labels), which
    the item identity of the query -> gallery exclusion reads too; ``None`` where there are none."""
    from types import SimpleNamespace

    from dynametric.data.protocol import dataset_paths
    from dynametric.data.splits import image_identities

    records = SimpleNamespace(paths=["a.png", "b.png"])  # no labels
    assert dataset_paths(records) == ["a.png", "b.png"] and len(image_identities(records)) == 2
    assert dataset_paths(_Bare(torch.tensor([4, 5]))) is None and dataset_paths(_synthetic()) is None
    images = _images()
    assert dataset_paths(images) is images.paths and dataset_fields(images).paths is images.paths


@pytest.mark.parametrize("breakage, message", [
    (lambda ds: delattr(ds, "split"), r"not a LabeledDataset: missing \['split'\]"),
    (lambda ds: setattr(ds, "labels", ds.labels[:, 0]), r"LongTensor\[N, S\]"),
    (lambda ds: setattr(ds, "labels", ds.labels.float()), r"LongTensor\[N, S\]"),
    (lambda ds: setattr(ds, "scale_names", ("fine",)), "scale_names must be 2 names"),
    (lambda ds: setattr(ds, "split", 3), "split must be a string or None"),
    (lambda ds: setattr(ds, "_paths", ["/a.jpg"]), "paths lists 1 files for 4 items"),
])
def test_the_check_names_what_breaks_the_protocol(breakage, message):
    ds = _images()
    breakage(ds)
    with pytest.raises(InputError, match=message):
        check_labeled_dataset(ds)


def test_the_check_sees_labels_that_do_not_match_the_items():
    sub = LabelledSubset(_images(), [0, 1, 2])
    sub.labels = sub.labels[:2]
    with pytest.raises(InputError, match="3 items but 2 label rows"):
        check_labeled_dataset(sub)
