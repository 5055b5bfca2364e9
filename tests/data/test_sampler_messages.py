"""What the batch samplers' refusals advise is itself accepted, and their messages say what the limit is."""

from __future__ import annotations

import re

import pytest
import torch

from dynametric.data.samplers import HierarchicalSampler, MPerClassSampler, ThreeScaleSampler
from dynametric.errors import InputError


def _tree(classes_per_parent: list[int], per_class: int = 4) -> torch.Tensor:
    """[N, 2] labels (class, parent): parent p holds ``classes_per_parent[p]`` classes of ``per_class`` images."""
    return torch.tensor([[c, p] for p, n in enumerate(classes_per_parent) for c in range(10 * p, 10 * p + n)
                         for _ in range(per_class)])


def _advised(message: str, batch_size: int, ppb: int, world: int) -> list[dict[str, int]]:
    """Every setting the message suggests, as HierarchicalSampler arguments (what it does not name stays)."""
    out = []
    for m in re.finditer(r"parents_per_batch (\d+)(?: with batch_size (\d+))? per process fits", message):
        out.append({"parents_per_batch": int(m[1]), "batch_size": int(m[2] or batch_size), "world_size": world})
    for m in re.finditer(r"largest batch per process is batch_size (\d+)", message):
        out.append({"parents_per_batch": ppb, "batch_size": int(m[1]), "world_size": world})
    for m in re.finditer(r"use at most (\d+) process", message):
        out.append({"parents_per_batch": ppb, "batch_size": batch_size, "world_size": int(m[1])})
    return out


@pytest.mark.parametrize(("labels", "batch_size", "ppb", "world"), [
    (_tree([3, 3, 1, 1]), 8, 2, 3),  # too few parents; no parents_per_batch with 2 classes each fits 3 processes
    (_tree([3, 3, 1, 1]), 8, 2, 2),  # enough parents, not enough classes under the 4th
    (_tree([3] * 5, per_class=8), 8, 2, 3),  # the data of test_sampler_steps' pinned refusal
    (_tree([3, 3, 3, 1, 1, 1]), 12, 2, 4),
    (_tree([4, 4, 4, 2, 2]), 16, 2, 3),
])
def test_hierarchical_step_refusal_advises_only_accepted_settings(labels, batch_size, ppb, world):
    with pytest.raises(InputError) as info:
        HierarchicalSampler(labels, batch_size, samples_per_class=2, parents_per_batch=ppb, world_size=world)
    advised = _advised(info.value.message, batch_size, ppb, world)
    assert advised, info.value.message
    for setting in advised:
        HierarchicalSampler(labels, setting["batch_size"], samples_per_class=2,
                            parents_per_batch=setting["parents_per_batch"], world_size=setting["world_size"])


def test_hierarchical_too_few_parents_names_only_what_fits():
    labels = _tree([3, 3, 1, 1])
    with pytest.raises(InputError) as info:  # parents_per_batch 1 with 2 classes needs 3 such parents: only 2
        HierarchicalSampler(labels, 8, samples_per_class=2, parents_per_batch=2, world_size=3)
    assert (info.value.key, info.value.message) == (
        "parents_per_batch", "with 3 processes a training step draws 3 x 2 = 6 distinct parents (scale 1; "
        "parents_per_batch 2 per process; the loss sees the step's batches together) but scale 1 has only 4: use at "
        "most 1 process")
    with pytest.raises(InputError) as info:
        HierarchicalSampler(_tree([3, 3, 3, 1]), 8, samples_per_class=2, parents_per_batch=2, world_size=3)
    assert info.value.message.endswith("but scale 1 has only 4: parents_per_batch 1 with batch_size 4 per process "
                                       "fits, or use at most 1 process")


def test_hierarchical_one_parent_is_singular():
    with pytest.raises(InputError) as info:
        HierarchicalSampler(torch.empty(0, 2, dtype=torch.int64), 2, samples_per_class=2, parents_per_batch=1)
    assert info.value.message == "a batch needs 1 distinct parent but scale 1 has only 0"


def test_three_scale_step_refusal_names_the_step_and_what_fits():
    labels = torch.tensor([[i % 6, i % 2] for i in range(72)])
    with pytest.raises(InputError) as info:
        ThreeScaleSampler(labels, k=4, items_per_batch=10, world_size=2)
    assert (info.value.key, info.value.message) == (
        "items_per_batch", "72 images give 18 items per epoch, fewer than one step of 2 x 10 = 20 items "
        "(10 a batch per process): the largest that fits is a batch of 9 items (72 rows), or use at most 1 process")
    ThreeScaleSampler(labels, k=4, items_per_batch=9, world_size=2)
    ThreeScaleSampler(labels, k=4, items_per_batch=10, world_size=1)
    with pytest.raises(InputError) as info:  # singular counts
        ThreeScaleSampler(labels[:4], k=4, items_per_batch=2)
    assert info.value.message == ("4 images give 1 item per epoch, fewer than one batch of 2 items: the largest that "
                                  "fits is a batch of 1 item (8 rows)")
    with pytest.raises(InputError) as info:
        ThreeScaleSampler(labels[:3], k=4, items_per_batch=1)
    assert info.value.message == ("3 images give 0 items per epoch, fewer than one batch of 1 item: the largest that "
                                  "fits is k 3")


@pytest.mark.parametrize("epoch", [-1, 1.7, "2", True, None])
def test_epoch_batches_refuses_what_set_epoch_refuses(epoch):
    sampler = MPerClassSampler(torch.arange(8) % 4, m=2, batch_size=4)
    if epoch is None:
        assert sampler.epoch_batches() == sampler.epoch_batches(0)
        return
    with pytest.raises(InputError) as info:
        sampler.epoch_batches(epoch)
    assert (info.value.key, info.value.message) == ("epoch", f"expected an integer >= 0, got {epoch!r}")


def test_state_of_another_epoch_length_is_keyed_iterations_per_epoch():
    labels = torch.arange(16) % 4
    state = MPerClassSampler(labels, m=2, batch_size=4, iterations_per_epoch=5).state_dict()
    with pytest.raises(InputError) as info:
        MPerClassSampler(labels, m=2, batch_size=4, iterations_per_epoch=6).load_state_dict(state)
    assert (info.value.key, info.value.message) == (
        "iterations_per_epoch", "sampler state has num_batches=5 but this sampler has 6; an exact resume needs the "
        "same epoch length (iterations_per_epoch) as the saved run")


def test_state_of_another_m_is_keyed_m_not_iterations_per_epoch():
    labels = torch.arange(12) % 4  # 4 classes of 3 images
    state = MPerClassSampler(labels, m=1, batch_size=4).state_dict()  # 12 chunks, 4 a batch: 3 batches
    assert state["num_batches"] == 3
    resumed = MPerClassSampler(labels, m=2, batch_size=4)  # 8 chunks, 2 a batch: 4 batches
    assert resumed.state_dict()["num_batches"] == 4
    with pytest.raises(InputError) as info:
        resumed.load_state_dict(state)
    assert (info.value.key, info.value.message) == (
        "m", "sampler state has m=1 but this sampler has 2; an exact resume needs the same m as the saved run")


def test_state_without_fingerprint_is_refused():
    sampler = MPerClassSampler(torch.arange(16) % 4, m=2, batch_size=4)
    with pytest.raises(InputError) as info:
        sampler.load_state_dict({"epoch": 0, "position": 1})
    assert (info.value.key, info.value.message) == (
        "sampler", "sampler state has no fingerprint (sampler, num_samples, labels_digest, batch_size, seed, "
        "world_size, num_batches, m, scale missing): pass a state from state_dict() of the same sampler")
    assert sampler.state_dict()["position"] == 0  # nothing loaded
    sampler.load_state_dict({**sampler.state_dict(), "position": 1})
    assert sampler.state_dict()["position"] == 1


@pytest.mark.parametrize("change,key,needs", [
    ({"seed": 1}, "seed", "seed"),
    ({"labels": torch.arange(16) % 2}, "labels_digest", "data (its labels)"),
    ({"labels": torch.arange(20) % 4}, "num_samples", "data (its number of items)"),
    ({"batch_size": 8}, "batch_size", "batch size"),
])
def test_state_refusal_names_what_differs(change, key, needs):
    args = {"labels": torch.arange(16) % 4, "m": 2, "batch_size": 4, "seed": 0}
    state = MPerClassSampler(**args).state_dict()
    with pytest.raises(InputError) as info:
        MPerClassSampler(**{**args, **change}).load_state_dict(state)
    assert info.value.key == key
    assert info.value.message.startswith(f"sampler state has {key}=")
    assert info.value.message.endswith(f"an exact resume needs the same {needs} as the saved run")
