"""State a caller keeps using: a dataset owns its labels (the caller's tensor, array or index list changed after
building it leaves the dataset as built), and two live iterators of one sampler keep their own positions with the
resume state following the most recent one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynametric.data.base import HierarchicalImageDataset, LoadReport, SplitRecords
from dynametric.data.samplers import HierarchicalSampler, MPerClassSampler, ThreeScaleSampler
from dynametric.data.splits import LabelledSubset

PATHS = ["a.jpg", "b.jpg", "c.jpg", "d.jpg"]
LABELS = [[0, 0], [1, 0], [2, 1], [2, 1]]


@pytest.mark.parametrize("make", [lambda: torch.tensor(LABELS), lambda: np.array(LABELS, dtype=np.int64),
                                  lambda: torch.tensor(LABELS).T.contiguous().T],  # a non-contiguous view
                         ids=["tensor", "numpy", "view"])
def test_dataset_keeps_its_own_labels(make) -> None:
    labels = make()
    ds = HierarchicalImageDataset(PATHS, labels, ("fine", "coarse"), "train")
    labels[:] = 0  # the caller reuses its buffer
    assert ds.labels.tolist() == LABELS
    assert ds.class_counts() == {"fine": 3, "coarse": 2}


def test_dataset_keeps_its_own_class_names() -> None:
    names = [{0: "cat", 1: "dog", 2: "owl"}, {0: "mammal", 1: "bird"}]
    ds = HierarchicalImageDataset(PATHS, torch.tensor(LABELS), ("fine", "coarse"), "train", class_names=names)
    names[0][0] = "changed"
    names[1].clear()
    assert ds.class_names == [{0: "cat", 1: "dog", 2: "owl"}, {0: "mammal", 1: "bird"}]


def test_from_records_and_subset_labels_are_unchanged_by_the_parent() -> None:
    records = SplitRecords("train", list(PATHS), [(10, 1), (11, 1), (12, 2), (12, 2)], ("fine", "coarse"),
                           [("x.csv", i + 2) for i in range(4)], LoadReport("train", records=4))
    ds = HierarchicalImageDataset.from_records(records)
    assert ds.labels.tolist() == LABELS
    sub = ds.subset([2, 0], remap=False)
    ds.labels[:] = 0
    assert sub.labels.tolist() == [[2, 1], [0, 0]]


@pytest.mark.parametrize("make", [np.array, torch.tensor, list], ids=["numpy", "tensor", "list"])
def test_labelled_subset_keeps_its_own_indices(make) -> None:
    ds = HierarchicalImageDataset(PATHS, torch.tensor(LABELS), ("fine", "coarse"), "train")
    indices = make([2, 0])
    sub = LabelledSubset(ds, indices)
    indices[0] = 1  # the caller's index array reused: the subset's items stay those of its labels
    assert sub.paths == ["c.jpg", "a.jpg"]
    assert sub.labels.tolist() == [[2, 1], [0, 0]]


# ---------------------------------------------------------------------------------------------------- samplers
def _labels() -> torch.Tensor:
    fine = torch.arange(96) // 4  # 24 fine classes of 4 images
    return torch.stack([fine, fine // 4], 1)  # 6 parents of 4 classes


SAMPLERS = {
    "m_per_class": lambda: MPerClassSampler(_labels(), m=4, batch_size=8, seed=5),
    "three_scale": lambda: ThreeScaleSampler(_labels(), k=2, items_per_batch=2, seed=5),
    "hierarchical": lambda: HierarchicalSampler(_labels(), batch_size=16, samples_per_class=2, parents_per_batch=2,
                                                seed=5),
}


@pytest.mark.parametrize("kind", sorted(SAMPLERS))
def test_two_live_iterators_keep_their_own_positions(kind: str) -> None:
    s = SAMPLERS[kind]()
    ref = s.epoch_batches()
    assert len(ref) >= 4
    a = iter(s)
    got_a = [next(a), next(a), next(a)]
    b = iter(s)  # the most recent iterator: the state is its position
    assert s.state_dict()["position"] == 0
    got_b = [next(b)]
    got_a.append(next(a))  # the older one goes on with its own batches, not moving the state
    assert got_a == ref[:4] and got_b == ref[:1]
    assert s.state_dict()["position"] == 1
    got_b.append(next(b))
    assert s.state_dict()["position"] == 2
    resumed = SAMPLERS[kind]()
    resumed.load_state_dict(s.state_dict())
    assert list(resumed) == ref[2:]  # exactly b's remaining batches
    assert list(b) == ref[2:]
    assert s.state_dict()["position"] == len(ref)


def test_state_after_set_epoch_is_the_new_epochs_start() -> None:
    s = SAMPLERS["m_per_class"]()
    a = iter(s)
    next(a)
    s.set_epoch(1)  # the next epoch selected: none of its batches yielded yet
    next(a)  # an iterator of epoch 0 no longer moves the state of epoch 1
    assert (s.state_dict()["epoch"], s.state_dict()["position"]) == (1, 0)
    resumed = SAMPLERS["m_per_class"]()
    resumed.load_state_dict(s.state_dict())
    assert list(resumed) == s.epoch_batches(1)


def test_loaded_state_is_not_moved_by_an_earlier_iterator() -> None:
    s = SAMPLERS["m_per_class"]()
    a = iter(s)
    next(a)
    s.load_state_dict({**s.state_dict(), "position": 3})
    next(a)
    assert s.state_dict()["position"] == 3
    assert list(s) == s.epoch_batches()[3:]


class _Items(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 96

    def __getitem__(self, i: int) -> int:
        return i


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("kind", sorted(SAMPLERS))
def test_a_loaded_position_survives_a_dataloader_with_workers(kind: str, workers: int) -> None:
    """A DataLoader with workers calls ``iter()`` on its batch sampler twice as it starts and keeps the second
    iterator: the loaded position belongs to the iterator that yields, not to the first one made (was: the discarded
    iterator used it up and the run re-trained the epoch's first batches, silently)."""
    sampler = SAMPLERS[kind]()
    sampler.set_epoch(2)
    full = sampler.epoch_batches(2)
    assert len(full) > 3
    resumed = SAMPLERS[kind]()
    resumed.load_state_dict({**sampler.state_dict(), "epoch": 2, "position": 3})
    resumed.set_epoch(2)
    loader = torch.utils.data.DataLoader(_Items(), batch_sampler=resumed, num_workers=workers)
    assert [b.tolist() for b in loader] == full[3:]
    assert [b.tolist() for b in loader] == full  # the next pass starts the epoch afresh
