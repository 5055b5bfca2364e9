"""Gradient reversal and the decorrelation term L_adv (Milbich et al., TPAMI 2020)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dynametric.engine.objective import Objective, compute_objective
from dynametric.errors import ConfigError, InputError
from dynametric.losses import LOSSES, build_loss
from dynametric.losses.decorrelation import DecorrelationLoss
from dynametric.models.sharing import Decorrelation, GradientReversal, grad_reverse


@pytest.mark.parametrize("scale", [1.0, 0.5, 3.0])
def test_grl_identity_forward_reversed_scaled_backward(scale: float) -> None:
    x = torch.randn(5, 7, requires_grad=True)
    c = torch.randn(5, 7)
    y = GradientReversal(scale)(x)
    assert torch.equal(y, x)
    (y * c).sum().backward()
    assert torch.allclose(x.grad, -scale * c)
    x2 = torch.randn(3, requires_grad=True)
    (grad_reverse(x2, scale) ** 2).sum().backward()
    assert torch.allclose(x2.grad, -scale * 2 * x2.detach())
    with pytest.raises(ConfigError):
        GradientReversal(-1.0)


def _reference_ladv(dec: Decorrelation, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """L_adv written out without GRL (same forward value)."""
    cn, sn = F.normalize(c, dim=1), F.normalize(s, dim=1)
    if dec.direction == "shared_to_class":
        pred, target = F.normalize(dec.regressor(sn), dim=1), cn
    else:
        pred, target = F.normalize(dec.regressor(cn), dim=1), sn
    b, d = target.shape
    total = torch.zeros(())
    for i in range(b):  # literal double sum of the formula
        for k in range(d):
            total = total + (target[i, k] * pred[i, k]) ** 2
    return -total / (b * d)


def _no_grl(dec: Decorrelation, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    pred = F.normalize(dec.regressor(F.normalize(s, dim=1)), dim=1)
    return -(F.normalize(c, dim=1) * pred).pow(2).mean()


@pytest.mark.parametrize("direction", ["shared_to_class", "class_to_shared"])
def test_value_and_gradient_directions(direction: str) -> None:
    torch.manual_seed(0)
    dec = Decorrelation(6, 4, hidden=16, direction=direction, grl_scale=1.0)
    assert isinstance(dec.regressor[0], torch.nn.Linear)
    src = 4 if direction == "shared_to_class" else 6
    assert dec.regressor[0].in_features == src and dec.regressor[2].out_features == 10 - src
    c = torch.randn(5, 6, requires_grad=True)
    s = torch.randn(5, 4, requires_grad=True)
    value = dec(c, s)
    ref = _reference_ladv(dec, c, s)
    assert torch.allclose(value, ref, atol=1e-6) and float(value.detach()) <= 0.0
    g_c, g_s, g_r = torch.autograd.grad(value, [c, s, dec.regressor[0].weight])
    r_c, r_s, r_r = torch.autograd.grad(ref, [c, s, dec.regressor[0].weight])
    # the embeddings get the reversed gradient (they are pushed to decorrelate) ...
    assert torch.allclose(g_c, -r_c, atol=1e-6) and torch.allclose(g_s, -r_s, atol=1e-6)
    assert g_c.abs().sum() > 0 and g_s.abs().sum() > 0
    # ... while R gets the plain gradient of L_adv (it learns to predict one head from the other)
    assert torch.allclose(g_r, r_r, atol=1e-6)


def test_regressor_learns_and_heads_decorrelate() -> None:
    """Minimising L_adv by gradient descent on R lowers it; the same step on the embeddings raises it."""
    torch.manual_seed(1)
    dec = Decorrelation(8, 8, hidden=32)
    base = torch.randn(64, 8)
    c = F.normalize(base + 0.1 * torch.randn(64, 8), dim=1)
    s = F.normalize(base, dim=1)
    opt = torch.optim.Adam(dec.parameters(), lr=3e-2)
    first = float(dec(c, s).detach())
    for _ in range(50):
        opt.zero_grad()
        dec(c, s).backward()
        opt.step()
    learned = float(dec(c, s).detach())
    assert learned < first - 0.02  # R predicts the class embedding from the shared one
    for p in dec.parameters():
        p.requires_grad_(False)

    def move(loss_fn: object) -> float:
        c_var, s_var = c.clone().requires_grad_(True), s.clone().requires_grad_(True)
        opt_e = torch.optim.SGD([c_var, s_var], lr=2.0)
        for _ in range(20):
            opt_e.zero_grad()
            loss_fn(c_var, s_var).backward()  # type: ignore[operator]
            opt_e.step()
        return float(dec(c_var, s_var).detach())

    reversed_step = move(dec)  # through the GRL: the embeddings remove the correlation
    plain_step = move(lambda a, b: _no_grl(dec, a, b))  # without GRL they would increase it
    assert reversed_step > learned + 1e-3 and plain_step < learned - 1e-3


def test_decorrelation_loss_on_the_concat_head_through_the_engine_objective() -> None:
    torch.manual_seed(2)
    assert LOSSES["DecorrelationLoss"] is DecorrelationLoss
    loss = build_loss("DecorrelationLoss", embedding_size=20, hidden=8)
    assert loss.class_dim == 10 and loss.loss_parameters()  # R is in the loss group
    outputs = {"class": F.normalize(torch.randn(6, 10), dim=1), "shared": F.normalize(torch.randn(6, 10), dim=1)}
    labels = torch.arange(6)
    total, terms = compute_objective(outputs, labels, [Objective(loss, None, "concat", 7.0, "adv")])
    direct = loss.decorrelation(outputs["class"], outputs["shared"])
    assert torch.allclose(total, 7.0 * direct) and torch.allclose(terms["adv"], direct)
    with pytest.raises(ConfigError):
        DecorrelationLoss(embedding_size=9)
    with pytest.raises(InputError):
        loss.decorrelation(torch.randn(3, 10), torch.randn(3, 9))
    with pytest.raises(ConfigError):
        Decorrelation(direction="sideways")


def test_an_empty_batch_gives_a_graph_connected_zero_not_nan() -> None:
    loss = DecorrelationLoss(8)
    x = torch.randn(0, 8, requires_grad=True)
    value = loss(x, torch.zeros(0))
    assert value.item() == 0.0 and not torch.isnan(value) and value.requires_grad
    value.backward()
    assert x.grad is not None and x.grad.shape == (0, 8)
    assert all(p.grad is None or not p.grad.any() for p in loss.parameters())
    with pytest.raises(InputError, match="built for widths"):  # the width is still checked on an empty batch
        loss(torch.randn(0, 7), torch.zeros(0))
