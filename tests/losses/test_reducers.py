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
