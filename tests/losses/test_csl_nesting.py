"""``CSLLoss(mode="pairs")`` without ``class_paths`` takes labels that do not nest (two rows share a fine label but
differ at a coarser column: a pair positive and negative at once) without a word, as a per-call check would need a
host read; ``check_nesting=True`` checks every call (opt-in), :meth:`CSLLoss.check_nesting_of` a matrix once."""

from __future__ import annotations

import pytest
import torch

from dynametric.errors import InputError
from dynametric.losses import CSLLoss

# rows 1 and 3 share fine 1 but sit in middle 0 and middle 1
BROKEN = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 1, 0], [1, 1, 0]])
NESTED = torch.tensor([[0, 0, 0], [1, 0, 0], [2, 1, 0], [1, 0, 0]])


def _emb(n=4):
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(0))


def test_pairs_mode_takes_such_a_batch_by_default():
    loss = CSLLoss(None, 8, mode="pairs")
    assert loss.check_nesting is False
    assert torch.isfinite(loss(_emb(), BROKEN))  # documented: no per-call check without class_paths


def test_check_nesting_refuses_a_batch_that_does_not_nest():
    loss = CSLLoss(None, 8, mode="pairs", check_nesting=True)
    with pytest.raises(InputError) as info:
        loss(_emb(), BROKEN)
    assert info.value.key == "labels"
    assert info.value.message == (
        "the batch's labels do not nest: rows 1 and 3 share fine label 1 but differ at scale 1 ([1, 0, 0] and "
        "[1, 1, 0]), a pair that is positive and negative at once; each fine class must belong to one parent per "
        "scale")
    expected = CSLLoss(None, 8, mode="pairs")(_emb(), NESTED)
    assert torch.equal(loss(_emb(), NESTED), expected)  # a batch that nests: the same value as without the check


def test_check_nesting_looks_across_the_reference_set():
    loss = CSLLoss(None, 8, mode="pairs", check_nesting=True)
    labels, ref = torch.tensor([[0, 0, 0], [1, 0, 0]]), torch.tensor([[1, 1, 0], [2, 1, 0]])
    with pytest.raises(InputError, match=r"the batch's labels and ref_labels .* rows 1 and 2 share fine label 1"):
        loss(_emb(2), labels, ref_emb=_emb(2), ref_labels=ref)
    loss(_emb(2), labels, ref_emb=_emb(2), ref_labels=torch.tensor([[1, 0, 0], [2, 1, 0]]))


def test_check_nesting_of_a_matrix_and_the_flag_value():
    CSLLoss.check_nesting_of(NESTED)
    with pytest.raises(InputError, match="differ at scale 2"):
        CSLLoss.check_nesting_of(torch.tensor([[0, 0, 0], [0, 0, 1]]), key="train_labels")
    with pytest.raises(InputError, match="check_nesting must be true or false"):
        CSLLoss(None, 8, mode="pairs", check_nesting="yes")
