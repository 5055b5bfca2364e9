"""Which reducers take a loss's whole multi-entry dictionary: decided by type (a declared ``whole_dict`` on
dynametric's reducers, isinstance for pytorch-metric-learning's), so subclasses keep the behaviour of their base."""

from __future__ import annotations

import pytest
import torch

from dynametric.losses.reducers import (
    DoNothingReducer,
    MeanReducer,
    MultipleReducers,
    SumReducer,
    apply_reducer,
    takes_whole_dict,
)


def _loss_dict() -> dict:
    return {"pos_loss": {"losses": torch.tensor([1.0, 3.0]), "indices": torch.arange(2), "reduction_type": "element"},
            "neg_loss": {"losses": torch.tensor([2.0, 4.0, 6.0]), "indices": torch.arange(3),
                         "reduction_type": "element"}}


class _RecordsCalls:
    """Mixed into a whole-dict reducer: records the entries of each call (the old class-name check handed a renamed
    subclass one entry at a time)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seen: list[list[str]] = []

    def forward(self, loss_dict, embeddings, labels):
        self.seen.append(sorted(loss_dict))
        return super().forward(loss_dict, embeddings, labels)  # type: ignore[misc]


class RecordingReducers(_RecordsCalls, MultipleReducers):
    """A renamed subclass of ours."""


class KeepEverything(DoNothingReducer):
    pass


def test_a_subclass_of_a_whole_dict_reducer_gets_the_whole_dict() -> None:
    emb, labels = torch.zeros(5, 2), torch.arange(5)
    recording = RecordingReducers({"pos_loss": SumReducer()})
    total = apply_reducer(recording, _loss_dict(), emb, labels)
    assert recording.seen == [["neg_loss", "pos_loss"]]  # one call with both entries
    assert float(total) == pytest.approx(4.0 + 4.0)  # sum of pos (1 + 3) + mean of neg (2, 4, 6)
    kept = apply_reducer(KeepEverything(), _loss_dict(), emb, labels)
    assert sorted(kept) == ["neg_loss", "pos_loss"] and torch.equal(kept["neg_loss"]["losses"], _loss_dict()[
        "neg_loss"]["losses"])
    assert takes_whole_dict(recording) and takes_whole_dict(KeepEverything()) and takes_whole_dict(DoNothingReducer())


def test_any_other_reducer_reduces_each_entry_and_the_results_are_summed() -> None:
    class MeanByAnotherName(MeanReducer):
        pass

    reducer = MeanByAnotherName()
    assert not takes_whole_dict(reducer) and not takes_whole_dict(lambda d, e, labels: 0.0)
    total = apply_reducer(reducer, _loss_dict(), torch.zeros(5, 2), torch.arange(5))
    assert float(total) == pytest.approx(2.0 + 4.0)  # mean of pos + mean of neg


def test_pml_whole_dict_reducers_and_their_subclasses() -> None:
    pml_reducers = pytest.importorskip("pytorch_metric_learning.reducers")

    class PMLRecording(_RecordsCalls, pml_reducers.MultipleReducers):
        pass

    recording = PMLRecording({"pos_loss": pml_reducers.SumReducer()})
    total = apply_reducer(recording, _loss_dict(), torch.zeros(5, 2), torch.arange(5))
    assert recording.seen == [["neg_loss", "pos_loss"]]
    assert float(total) == pytest.approx(4.0 + 4.0)
    assert takes_whole_dict(pml_reducers.DoNothingReducer())
    assert not takes_whole_dict(pml_reducers.MeanReducer())


@pytest.mark.parametrize("label", [-1, 3, 7])
def test_class_weighted_reducer_refuses_a_label_without_a_weight(label):
    """A negative label took weights[-1] silently, one >= len(weights) was a raw IndexError."""
    from dynametric.errors import InputError
    from dynametric.losses import ContrastiveLoss
    from dynametric.losses.reducers import ClassWeightedReducer

    emb = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 0, 1, 1, 2, label])
    loss = ContrastiveLoss(reducer=ClassWeightedReducer(torch.tensor([1.0, 2.0, 3.0])))
    with pytest.raises(InputError) as err:
        loss(emb, labels)
    assert (err.value.key, err.value.message) == (
        "labels",
        f"label {label} has no class weight: ClassWeightedReducer has 3 weights, so labels must lie in [0, 2]")


def test_class_weighted_reducer_weights_each_element_by_its_anchors_class():
    """Hand-computed: element losses [1, 2, 3] of rows labelled [2, 0, 1] with weights [10, 20, 30] -> mean of
    [30, 20, 60]."""
    from dynametric.losses.reducers import ClassWeightedReducer

    d = {"loss": {"losses": torch.tensor([1.0, 2.0, 3.0]), "indices": torch.arange(3), "reduction_type": "element"}}
    out = apply_reducer(ClassWeightedReducer([10.0, 20.0, 30.0]), d, torch.zeros(3, 2), torch.tensor([2, 0, 1]))
    assert out.item() == pytest.approx((30.0 + 20.0 + 60.0) / 3)
