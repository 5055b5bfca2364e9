"""Parameter dtypes and float64 gradients: a ``pml:`` loss never converts its parameters in place (PML's
``cast_types`` made float32 proxies float64 on a float64 call, and Adam's float32 state then crashed), and
PDDMLoss / DecorrelationLoss keep float64 inputs in float64 (their row normalisation ran in float32)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynametric.losses import DecorrelationLoss, PDDMLoss

PROXY_LOSSES = [
    ("ProxyAnchorLoss", {"num_classes": 4, "embedding_size": 6}),
    ("SubCenterArcFaceLoss", {"num_classes": 4, "embedding_size": 6}),
    ("NormalizedSoftmaxLoss", {"num_classes": 4, "embedding_size": 6}),
    ("MarginLoss", {"learn_beta": True, "num_classes": 4}),
]


@pytest.mark.parametrize(("name", "kwargs"), PROXY_LOSSES, ids=[n for n, _ in PROXY_LOSSES])
def test_pml_loss_keeps_its_parameters_dtype_through_a_float64_call_and_adam(name, kwargs):
    pytest.importorskip("pytorch_metric_learning")
    from dynametric.losses import pml_loss

    torch.manual_seed(0)
    loss = pml_loss(name, **kwargs)
    params = loss.loss_parameters()
    assert params and all(p.dtype == torch.float32 for p in params)
    opt = torch.optim.Adam(params, lr=1e-3)
    x = torch.randn(8, 6)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    for step, dtype in enumerate((torch.float32, torch.float64, torch.float32)):
        emb = x.to(dtype).detach().clone().requires_grad_(True)
        out = loss(emb, labels)
        assert torch.isfinite(out), step
        out.backward()
        assert emb.grad is not None and emb.grad.dtype == dtype  # the gradient in the embeddings' own dtype
        assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in params), step
        opt.step()  # crashed at step 1: "expected dtype float for `end` but got dtype double"
        opt.zero_grad()
    assert all(p.dtype == torch.float32 for p in params)


def test_pml_loss_of_float64_embeddings_equals_its_float32_copy_when_the_parameters_are_float32():
    """The maths run in the parameters' dtype: a float64 call gives exactly the loss of the float32 embeddings."""
    pytest.importorskip("pytorch_metric_learning")
    from dynametric.losses import pml_loss

    torch.manual_seed(0)
    loss = pml_loss("ProxyAnchorLoss", num_classes=4, embedding_size=6)
    x = torch.randn(8, 6)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert loss(x.double(), labels).item() == loss(x, labels).item()


def test_pml_loss_converted_to_float64_computes_in_float64():
    """A loss converted with .double() keeps float64 parameters also for float32 embeddings (PML converted them to
    float32 in place), and computes in float64."""
    pytest.importorskip("pytorch_metric_learning")
    from dynametric.losses import pml_loss

    torch.manual_seed(0)
    loss = pml_loss("ProxyAnchorLoss", num_classes=4, embedding_size=6).double()
    x = torch.randn(8, 6)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    out = loss(x, labels)
    assert out.dtype == torch.float64
    assert all(p.dtype == torch.float64 for p in loss.loss_parameters())
    assert out.item() == loss(x.double(), labels).item()


def test_pddm_loss_float64_gradcheck():
    torch.manual_seed(0)
    loss = PDDMLoss(4, hidden_dim=4, dropout=0.0, mode="per_positive_pair").double()
    x = torch.randn(8, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.arange(8) % 4
    assert torch.autograd.gradcheck(lambda e: loss(e, labels), (x,), eps=1e-6, atol=1e-6)


def test_decorrelation_loss_float64_equals_a_float64_computation():
    """Value and the gradient of R's parameters equal the float64 formula ``-mean((c * unit(R(s)))^2)`` with ``c``,
    ``s`` the unit class / shared halves (a gradcheck on the embeddings does not apply: the gradient-reversal layer
    flips their gradient by design)."""
    torch.manual_seed(0)
    loss = DecorrelationLoss(4, hidden=4).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    regressor = loss.decorrelation.regressor
    c, s = F.normalize(x[:, :2], dim=1), F.normalize(x[:, 2:], dim=1)
    expected = -(c * F.normalize(regressor(s), dim=1)).pow(2).mean()
    out = loss(x)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=1e-14, atol=0)
    params = list(regressor.parameters())
    for got, want in zip(torch.autograd.grad(out, params), torch.autograd.grad(expected, params)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-15)
