"""A zero loss (no tuple, one class, an empty miner) stays connected to everything the loss was given and holds:
the embeddings, ``ref_emb`` and the loss's learnable parameters each get a zero gradient, never ``None``. A parameter
left out of the graph breaks DDP with ``find_unused_parameters=False`` (Lightning's default; the engine puts the
losses inside the DDP module) at the next step: "Expected to have finished reduction in the prior iteration"."""

from __future__ import annotations

import pytest
import torch

from dynametric.losses import MarginLoss, TripletMarginLoss
from dynametric.losses.reducers import AvgNonZeroReducer, MeanReducer

EMPTY = torch.empty(0, dtype=torch.long)


def _grads(out: torch.Tensor, inputs: list[torch.Tensor]) -> list[torch.Tensor | None]:
    return list(torch.autograd.grad(out, inputs, allow_unused=True))


def _assert_zero_grads(out: torch.Tensor, inputs: list[torch.Tensor]) -> None:
    assert out.item() == 0.0
    grads = _grads(out, inputs)
    for i, g in enumerate(grads):
        assert g is not None, f"input {i} is not in the graph"
        assert torch.equal(g, torch.zeros_like(inputs[i])), i


# ------------------------------------------------------------------------------------------ pml: losses (finding 1)

@pytest.mark.parametrize("kwargs", [{}, {"num_classes": 3}])
def test_pml_loss_with_learned_beta_connects_it_when_the_miner_found_nothing(kwargs):
    pytest.importorskip("pytorch_metric_learning")
    from dynametric.losses import pml_loss

    loss = pml_loss("MarginLoss", learn_beta=True, nu=0.1, **kwargs)
    params = loss.loss_parameters()
    assert len(params) == 1 and params[0].shape == ((3,) if kwargs else (1,))
    x = torch.randn(6, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    out = loss(x, labels, (EMPTY, EMPTY, EMPTY))
    _assert_zero_grads(out, [x, *params])


def test_pml_proxy_loss_connects_its_proxies_on_an_empty_batch():
    pytest.importorskip("pytorch_metric_learning")
    from dynametric.losses import pml_loss

    loss = pml_loss("ProxyAnchorLoss", num_classes=3, embedding_size=4)
    x = torch.randn(0, 4, requires_grad=True)
    out = loss(x, torch.zeros(0, dtype=torch.long))
    _assert_zero_grads(out, [x, *loss.loss_parameters()])


def test_pml_loss_with_a_nan_parameter_gives_nan_as_the_native_zero_loss():
    pytest.importorskip("pytorch_metric_learning")
    from dynametric.losses import pml_loss

    x = torch.randn(6, 4)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    for loss in (pml_loss("MarginLoss", learn_beta=True, nu=0.1), MarginLoss(learn_beta=True, nu=0.1)):
        with torch.no_grad():
            loss.loss_parameters()[0].fill_(float("nan"))
        assert torch.isnan(loss(x, labels, (EMPTY, EMPTY, EMPTY))), type(loss).__name__


def test_pml_loss_value_and_gradient_unchanged_on_a_batch_with_tuples():
    """The connecting zero adds nothing: value and gradients equal PML's own loss object's."""
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.losses import MarginLoss as PMLMarginLoss

    from dynametric.losses import PMLLoss

    torch.manual_seed(0)
    x = torch.randn(8, 4, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    ours = PMLLoss(PMLMarginLoss(learn_beta=True, nu=0.1))
    theirs = PMLMarginLoss(learn_beta=True, nu=0.1)
    a = ours(x, labels)
    b = theirs(x, labels)
    assert a.item() > 0 and a.item() == b.item()
    ga = _grads(a, [x, ours.loss.beta])
    gb = _grads(b, [x, theirs.beta])
    assert all(torch.equal(u, v) for u, v in zip(ga, gb))
    assert ga[1].abs().sum() > 0


# ------------------------------------------------------------------------------------ native zero paths (finding 3)

def test_zero_loss_connects_ref_emb():
    """TripletMarginLoss on a one-class batch against a reference set: no negative, a zero loss; ``ref_emb`` gets
    a zero gradient (``torch.autograd.grad`` raised: it was not in the graph)."""
    x = torch.randn(4, 3, requires_grad=True)
    ref = torch.randn(5, 3, requires_grad=True)
    loss = TripletMarginLoss()
    out = loss(x, torch.zeros(4, dtype=torch.long), None, ref, torch.zeros(5, dtype=torch.long))
    _assert_zero_grads(out, [x, ref])
    assert loss._call_ref_emb is None  # nothing of the call is kept on the object


def test_zero_loss_connects_ref_emb_for_an_empty_miner_output():
    x = torch.randn(4, 3, requires_grad=True)
    ref = torch.randn(5, 3, requires_grad=True)
    loss = MarginLoss(learn_beta=True)
    out = loss(x, torch.arange(4) % 2, (EMPTY, EMPTY, EMPTY), ref, torch.arange(5) % 2)
    _assert_zero_grads(out, [x, ref, loss.beta])


def test_zero_loss_is_nan_for_a_nan_reference_embedding():
    ref = torch.randn(5, 3)
    ref[2, 1] = float("nan")
    out = TripletMarginLoss()(torch.randn(4, 3), torch.zeros(4, dtype=torch.long), None, ref,
                              torch.zeros(5, dtype=torch.long))
    assert torch.isnan(out)


@pytest.mark.parametrize("reducer", [MeanReducer(), AvgNonZeroReducer()], ids=["mean", "avg_nonzero"])
def test_reducer_zero_connects_the_loss_parameters(reducer):
    """MarginLoss(learn_beta=True, reducer=...) on a one-class batch: beta's gradient was None."""
    x = torch.randn(4, 3, requires_grad=True)
    loss = MarginLoss(learn_beta=True, nu=0.1, reducer=reducer)
    out = loss(x, torch.zeros(4, dtype=torch.long))
    _assert_zero_grads(out, [x, loss.beta])


def test_reducer_zero_connects_the_parameters_when_every_triplet_loss_is_zero():
    """AvgNonZeroReducer with tuples whose losses are all 0 (well-separated classes: relu(0.01 - 1.2 + 0.2) and
    relu(1.2 - 2 + 0.2)): beta still gets a (zero) gradient."""
    x = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0], [-1.0, 0.01]], requires_grad=True)  # d_ap .01, d_an 2
    loss = MarginLoss(margin=0.2, beta=1.2, learn_beta=True, reducer=AvgNonZeroReducer())
    out = loss(x, torch.tensor([0, 0, 1, 1]))
    _assert_zero_grads(out, [x, loss.beta])


def test_reducer_zero_connects_ref_emb():
    x = torch.randn(4, 3, requires_grad=True)
    ref = torch.randn(5, 3, requires_grad=True)
    loss = TripletMarginLoss(reducer=MeanReducer())
    out = loss(x, torch.arange(4) % 2, (EMPTY, EMPTY, EMPTY), ref, torch.arange(5) % 2)
    _assert_zero_grads(out, [x, ref])


def test_reducer_value_and_gradient_unchanged_on_a_batch_with_tuples():
    """The reducer gets the embeddings plus a connected zero: the same value and embedding gradient as the same
    loss with its parameter frozen (no connecting zero is added then)."""
    torch.manual_seed(0)
    x = torch.randn(8, 3, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    learned = MarginLoss(learn_beta=True, reducer=MeanReducer())
    frozen = MarginLoss(learn_beta=True, reducer=MeanReducer())
    frozen.beta.requires_grad_(False)
    a, b = learned(x, labels), frozen(x, labels)
    assert a.item() > 0 and a.item() == b.item()
    assert torch.equal(_grads(a, [x])[0], _grads(b, [x])[0])
