"""Class-disjoint validation splits and folds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynametric.data.splits import LabelledSubset, class_disjoint_folds, class_disjoint_split, validation_split
from dynametric.errors import InputError


def nested_labels(n_fine: int = 12, fine_per_middle: int = 3, per_class: int = 3) -> torch.Tensor:
    rows = [(f * 5 + 2, f // fine_per_middle, f // (2 * fine_per_middle)) for f in range(n_fine) for _ in
            range(per_class)]
    perm = np.random.default_rng(1).permutation(len(rows))
    return torch.tensor(rows)[perm]


class Tiny(torch.utils.data.Dataset):
    def __init__(self, labels: torch.Tensor, split: str = "train") -> None:
        self.labels = labels
        self.scale_names = ("fine", "middle", "coarse")
        self.split = split

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return torch.full((2,), float(i)), self.labels[i]


def test_folds_partition_rows_and_classes():
    labels = nested_labels()
    folds = class_disjoint_folds(labels, k=4, seed=3)
    assert len(folds) == 4
    all_val = np.concatenate([v for _, v in folds])
    assert sorted(all_val.tolist()) == list(range(len(labels)))  # each row validates exactly once
    fine = labels[:, 0].numpy()
    for train_idx, val_idx in folds:
        assert sorted(np.concatenate([train_idx, val_idx]).tolist()) == list(range(len(labels)))
        assert not set(fine[train_idx]) & set(fine[val_idx])  # class-disjoint
        assert len(set(fine[val_idx])) == 3  # 12 classes / 4 folds
    # seeded: same seed same folds, another seed different
    again = class_disjoint_folds(labels, k=4, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    other = class_disjoint_folds(labels, k=4, seed=4)
    assert any(not np.array_equal(a[1], b[1]) for a, b in zip(folds, other))


def test_folds_without_shuffle_are_contiguous_class_ranges():
    labels = nested_labels()
    folds = class_disjoint_folds(labels, k=3, shuffle=False)
    fine = labels[:, 0].numpy()
    classes = np.unique(fine)
    for i, (_, val_idx) in enumerate(folds):
        assert sorted(set(fine[val_idx])) == classes[4 * i:4 * (i + 1)].tolist()


def test_split_at_coarser_scale_moves_whole_subtrees():
    labels = nested_labels(n_fine=12, fine_per_middle=3)  # 4 middle classes
    train_idx, val_idx = class_disjoint_split(labels, val_fraction=0.25, seed=0, scale=1)
    for s in (0, 1):
        col = labels[:, s].numpy()
        assert not set(col[train_idx]) & set(col[val_idx])
    assert len(set(labels[val_idx, 1].tolist())) == 1 and len(val_idx) == 9


@settings(max_examples=30, deadline=None)
@given(n_classes=st.integers(2, 15), frac=st.floats(0.01, 0.99), seed=st.integers(0, 1000))
def test_split_property(n_classes, frac, seed):
    labels = torch.arange(n_classes).repeat_interleave(2)
    tr, va = class_disjoint_split(labels, val_fraction=frac, seed=seed)
    n_val = len(set(labels[va].tolist()))
    assert 1 <= n_val <= n_classes - 1
    assert n_val == min(max(1, round(frac * n_classes)), n_classes - 1)
    assert not set(labels[tr].tolist()) & set(labels[va].tolist())
    assert len(tr) + len(va) == len(labels)


def test_validation_split_wraps_and_keeps_metadata():
    ds = Tiny(nested_labels())
    train, val = validation_split(ds, k=4, fold=2, seed=1)
    assert isinstance(val, LabelledSubset)
    assert train.split == "train" and val.split == "val"
    assert val.scale_names == ds.scale_names
    _, expected_val = class_disjoint_folds(ds.labels, k=4, seed=1)[2]
    assert val.indices.tolist() == expected_val.tolist()
    x, y = val[1]
    assert int(x[0]) == expected_val[1] and torch.equal(y, ds.labels[expected_val[1]])
    assert torch.equal(val.labels, ds.labels[expected_val])
    assert val.class_counts()["fine"] == 3
    tr2, va2 = validation_split(ds, val_fraction=0.5)
    assert len(tr2) + len(va2) == len(ds)


def test_validation_split_works_on_synthetic_train():
    from dynametric.data.synthetic import SyntheticHierarchy

    ds = SyntheticHierarchy("train", seed=0, images_per_class=2, fine_per_shape={"train": 2})
    train, val = validation_split(ds, val_fraction=0.25, seed=0)
    assert not set(train.labels[:, 0].tolist()) & set(val.labels[:, 0].tolist())
    assert val.class_counts()["fine"] == round(0.25 * 18)
    img, lab = val[0]
    assert img.shape == (3, 32, 32) and torch.equal(lab, val.labels[0])


def test_errors():
    labels = nested_labels()
    with pytest.raises(InputError, match="test"):
        validation_split(Tiny(labels, split="test"))
    with pytest.raises(InputError, match="either"):
        validation_split(Tiny(labels), val_fraction=0.2, k=3)
    with pytest.raises(InputError, match="fold"):
        validation_split(Tiny(labels), k=3, fold=3)
    with pytest.raises(InputError, match="at least 13 classes"):
        class_disjoint_folds(labels, k=13)
    with pytest.raises(InputError, match=">= 2"):
        class_disjoint_folds(labels, k=1)
    with pytest.raises(InputError, match="val_fraction"):
        class_disjoint_split(labels, val_fraction=1.0)
    with pytest.raises(InputError, match="scale"):
        class_disjoint_split(labels, scale=3)
    with pytest.raises(InputError, match="indices"):
        LabelledSubset(Tiny(labels), [0, 999])


# ------------------------------------------------------------------ what two datasets share (files, classes)
def test_shared_files_compares_resolved_paths_and_crop_boxes(tmp_path) -> None:
    from types import SimpleNamespace

    from dynametric.data.splits import shared_files

    (tmp_path / "imgs").mkdir()
    for name in ("a.png", "b.png", "c.png"):
        (tmp_path / "imgs" / name).write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(tmp_path / "imgs" / "c.png")
    train = [str(tmp_path / "imgs" / "a.png"), str(tmp_path / "imgs" / "b.png")]
    test = [str(tmp_path / "imgs" / ".." / "imgs" / "b.png"), str(tmp_path / "link.png"), str(tmp_path / "x.png")]

    def items(paths, boxes=None):
        return SimpleNamespace(paths=paths, boxes=boxes)

    assert shared_files(items(train), items(test)) == [str((tmp_path / "imgs" / "b.png").resolve())]
    assert shared_files(items(train + [str(tmp_path / "imgs" / "c.png")]), items(test)) == sorted(
        str((tmp_path / "imgs" / n).resolve()) for n in ("b.png", "c.png"))  # the link is the file it points to
    assert shared_files(None, items(test)) == [] and shared_files(items(train), items([])) == []
    assert shared_files(items(None), items(test)) == []  # in-memory images
    # crop boxes (OML): one file with other boxes holds other items; the same box is the same item
    boxed = items(test[:1], [(0, 0, 5, 5)])
    assert shared_files(items(train, [(5, 5, 9, 9), (5, 5, 9, 9)]), boxed) == []
    assert shared_files(items(train, [None, (0, 0, 5, 5)]), boxed) == [
        f"{(tmp_path / 'imgs' / 'b.png').resolve()} box (0, 0, 5, 5)"]


def test_item_identities_are_computed_once_per_split_before_a_run_and_in_inspect(tmp_path, monkeypatch) -> None:
    """image_identities (a realpath per item) of each split once: train's query_in_gallery check and held-out checks
    share them (were 3 computations of the query and of the gallery split, 2 of train and of validation), and so do
    data inspect's pairs of splits (train's were computed once per other split)."""
    import dynametric.data.splits as splits
    import dynametric.engine.protocols as protocols
    from dynametric.config import load_config
    from dynametric.data.inspect import inspect_dataset
    from dynametric.engine.builders import build_datasets
    from dynametric.pipeline.protocols import protocol_split_keys
    from dynametric.pipeline.run_checks import _held_out_data
    from tests.data.test_oml import write_oml

    rows = [f"{c},img/{c}_{i}.png,train,,,0,10,0,12" for c in range(4) for i in range(2)]
    rows += [f"{c},img/{c}_{i}.png,validation,{i == 0},{i != 0},0,10,0,12" for c in range(4, 7) for i in range(3)]
    write_oml(tmp_path, rows, header="label,path,split,is_query,is_gallery,x_1,x_2,y_1,y_2")
    seen: list[object] = []  # the datasets, kept alive so that their ids stay theirs
    compute = splits.image_identities

    def counting(dataset):
        seen.append(dataset)
        return compute(dataset)

    monkeypatch.setattr(splits, "image_identities", counting)
    monkeypatch.setattr(protocols, "image_identities", counting)
    cfg = load_config(None, ["data.format=oml", f"data.root={tmp_path}", "eval.protocol=query_gallery",
                             "eval.query_split=query", "eval.gallery_split=gallery"])
    keys = protocol_split_keys(cfg)
    datasets = build_datasets(cfg, with_test=False, test_splits=keys)
    _held_out_data(cfg, datasets, keys, lambda _: None)
    assert len(seen) == len({id(d) for d in seen}) == 4  # train, val, query, gallery
    seen.clear()
    assert inspect_dataset("oml", tmp_path, verify_images=False)["problems"] == []
    assert len(seen) == len({id(d) for d in seen}) == 4  # train, validation, query, gallery


def test_raw_class_ids_follow_the_files_ids_through_subsets(tmp_path) -> None:
    from dynametric.data import HierarchicalImageDataset
    from dynametric.data.splits import raw_class_ids

    ds = HierarchicalImageDataset([str(tmp_path / f"{i}.png") for i in range(4)], torch.tensor([[0], [1], [1], [2]]),
                                  ("fine",), "train", class_ids=[["cat", "dog", "owl"]])
    assert raw_class_ids(ds) == {"cat", "dog", "owl"}
    sub = LabelledSubset(LabelledSubset(ds, [1, 2, 3]), [0, 1])  # contiguous ids are the parent's: dog, dog
    assert raw_class_ids(sub) == {"dog"}
    assert raw_class_ids(Tiny(nested_labels()), scale=1) == {0, 1, 2, 3}  # no class_ids: the labels themselves


def test_dataset_identities_are_computed_once_per_dataset_object(monkeypatch) -> None:
    """One computation per dataset object, found by the object itself: two equal (unhashable) datasets are two,
    a collected dataset's entry goes with it, and an object that takes no weak reference is computed every time."""
    import gc
    from dataclasses import dataclass

    import dynametric.data.splits as splits

    @dataclass
    class Files:  # unhashable (a dataclass with eq), equal when the paths are
        paths: list[str]

    class Slotted:  # no __dict__, no weak reference
        __slots__ = ("paths",)

        def __init__(self, paths: list[str]) -> None:
            self.paths = paths

    computed: list[object] = []
    real = splits.image_identities

    def counting(dataset):
        computed.append(dataset)
        return real(dataset)

    monkeypatch.setattr(splits, "image_identities", counting)
    a, b = Files(["/x/a.png", "/x/./b.png"]), Files(["/x/a.png", "/x/./b.png"])
    assert a == b and a is not b
    first = splits.dataset_identities(a)
    assert first == [("/x/a.png", None), ("/x/b.png", None)]
    assert splits.dataset_identities(a) is first and computed == [a]  # the same object: not computed again
    assert splits.dataset_identities(b) == first and len(computed) == 2 and computed[1] is b  # an equal one: its own
    key = id(a)
    del a, first, computed[:]
    gc.collect()
    assert key not in splits._IDENTITIES._entries  # dropped with its dataset
    s = Slotted(["/x/a.png"])
    assert splits.dataset_identities(s) == splits.dataset_identities(s) == [("/x/a.png", None)]
    assert computed == [s, s]
    assert splits.dataset_identities(None) is None and computed[-1] is None
