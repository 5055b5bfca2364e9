"""Input forms of the loss call: ragged label rows, CSL's ref_labels key, DecorrelationLoss without labels, the
sign of a zero loss."""

import math

import numpy as np
import pytest
import torch

from dynametric.errors import InputError
from dynametric.labels import as_label_matrix
from dynametric.losses import CSLLoss, DecorrelationLoss, TripletMarginLoss
from dynametric.miners import build_miner


@pytest.mark.parametrize("ragged, row, width", [([[0, 0], [1]], 1, "1 column"),
                                                ([[0, 0], [1, 1], [2]], 2, "1 column"),
                                                ([[0, 0], 1], 1, "a single number")])
def test_ragged_label_rows_are_one_input_error_naming_the_row(ragged, row, width):
    with pytest.raises(InputError, match=rf"label rows have different lengths: row 0 has 2 columns, row {row} "
                                         rf"has {width}") as info:
        as_label_matrix(ragged, name="ref_labels")
    assert info.value.key == "ref_labels"
    assert "\n" not in str(info.value)


def test_ragged_labels_in_a_loss_and_a_miner_name_their_argument():
    emb = torch.randn(2, 4)
    with pytest.raises(InputError, match="label rows have different lengths") as info:
        TripletMarginLoss()(emb, [[0, 0], [1]])
    assert info.value.key == "labels"
    with pytest.raises(InputError, match="label rows have different lengths") as info:
        TripletMarginLoss()(emb, [0, 1], None, torch.randn(2, 4), [[0, 0], [1]])
    assert info.value.key == "ref_labels"
    with pytest.raises(InputError, match="label rows have different lengths") as info:
        build_miner("TripletMarginMiner")(emb, [[0, 0], [1]])
    assert info.value.key == "labels"


def _csl_pairs():
    y = torch.arange(24) // 2
    paths = torch.stack([y, y // 2, y // 4], 1)
    return CSLLoss.from_labels(paths, 8, mode="pairs"), paths


def test_csl_pairs_reports_ref_labels_of_the_wrong_width_under_ref_labels():
    loss, paths = _csl_pairs()
    with pytest.raises(InputError, match=r"CSLLoss expects ref_labels \[M, 3\]") as info:
        loss(torch.randn(24, 8), paths, None, torch.randn(5, 8), torch.arange(5))
    assert info.value.key == "ref_labels"


def test_csl_pairs_reports_a_ref_labels_row_against_the_class_paths_under_ref_labels():
    loss, paths = _csl_pairs()
    ref = paths[:5].clone()
    ref[3, 1] = 5  # fine class 1 (path [1, 0, 0]) given the middle class 5
    with pytest.raises(InputError, match=r"ref_labels row 3 has label path \[1, 5, 0\] but fine class 1 was "
                                         r"registered with path \[1, 0, 0\]") as info:
        loss(torch.randn(24, 8), paths, None, torch.randn(5, 8), ref)
    assert info.value.key == "ref_labels"
    # the batch's own labels are still reported under labels
    bad = paths.clone()
    bad[3, 1] = 5
    with pytest.raises(InputError, match=r"batch row 3 has label path") as info:
        loss(torch.randn(24, 8), bad)
    assert info.value.key == "labels"


def test_decorrelation_loss_works_without_labels_with_the_value_it_has_with_labels():
    torch.manual_seed(0)
    loss = DecorrelationLoss(8, hidden=16)
    emb = torch.randn(6, 8, requires_grad=True)
    without = loss(emb)
    with_labels = loss(emb, torch.arange(6))
    assert without.item() == with_labels.item()
    assert without.item() != 0.0
    without.backward()
    assert emb.grad is not None and emb.grad.abs().sum() > 0
    with pytest.raises(InputError, match="expected 6 label rows") as info:  # labels given are still checked
        loss(emb, torch.arange(5))
    assert info.value.key == "labels"


def test_losses_that_read_labels_still_need_them():
    with pytest.raises(InputError, match="needs labels or an indices_tuple"):
        TripletMarginLoss()(torch.randn(4, 3))


def test_zero_loss_is_positive_zero_for_embeddings_of_negative_sum():
    emb = torch.full((1, 4), -1.0, requires_grad=True)  # one row: no triplet, the zero loss
    value = TripletMarginLoss()(emb, torch.tensor([0]))
    assert value.item() == 0.0 and math.copysign(1.0, value.item()) == 1.0  # PML's 0.0, not -0.0
    value.backward()
    assert torch.equal(emb.grad, torch.zeros(1, 4))  # still on the graph, zero gradient
    nan = TripletMarginLoss()(torch.full((1, 4), float("nan")), np.array([0]))
    assert math.isnan(nan.item())  # a non-finite batch is still seen
