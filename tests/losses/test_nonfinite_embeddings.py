"""What :meth:`MetricLoss.forward` documents for a non-finite embedding, checked on every loss of the registry: the
gradient is non-finite; the value is NaN too, except for the losses the docstring names (they average only their
non-zero pair / triplet terms, as pytorch-metric-learning does, so a NaN term drops out of the value)."""

from __future__ import annotations

import math

import pytest
import torch

from dynametric.losses import LOSSES, MetricLoss

B, D = 16, 8
FINE = torch.arange(B) % 4
LABELS = torch.stack([FINE, FINE // 2, FINE // 4], 1)
PROXY = {"ProxyNCALoss", "ProxyAnchorLoss", "NormalizedSoftmaxLoss", "CosFaceLoss", "ArcFaceLoss", "SoftTripleLoss"}

# (case id, registry name, factory)
CASES = [(name, name, (lambda n=name: LOSSES[n]())) for name in LOSSES
         if name not in PROXY | {"MultiScaleLoss", "CSLLoss", "PDDMLoss", "DecorrelationLoss"}]
CASES += [(name, name, (lambda n=name: LOSSES[n](4, D))) for name in sorted(PROXY)]
CASES += [
    ("CSLLoss", "CSLLoss", lambda: LOSSES["CSLLoss"](LABELS[:4], D)),
    ("PDDMLoss", "PDDMLoss", lambda: LOSSES["PDDMLoss"](D, dropout=0.0)),
    ("DecorrelationLoss", "DecorrelationLoss", lambda: LOSSES["DecorrelationLoss"](D)),
    ("MultiScaleLoss-triplet", "MultiScaleLoss", lambda: LOSSES["MultiScaleLoss"]("TripletMarginLoss", [1.0, 0.5])),
    ("MultiScaleLoss-contrastive", "MultiScaleLoss",
     lambda: LOSSES["MultiScaleLoss"]("ContrastiveLoss", [1.0, 0.5])),
    ("MultiScaleLoss-ms", "MultiScaleLoss", lambda: LOSSES["MultiScaleLoss"]("MultiSimilarityLoss", [1.0, 0.5])),
]
# the losses whose value may stay finite (named in MetricLoss.forward's docstring)
FINITE_VALUE = {"ContrastiveLoss", "TripletMarginLoss", "MultiScaleLoss-triplet", "MultiScaleLoss-contrastive"}


def test_every_registry_loss_is_covered():
    assert {name for _, name, _ in CASES} == set(LOSSES)


def test_the_docstring_names_the_losses_whose_value_may_stay_finite():
    doc = " ".join((MetricLoss.forward.__doc__ or "").split())
    for name in ("ContrastiveLoss", "TripletMarginLoss", "MultiScaleLoss"):
        assert f"dynametric.losses.{name}`" in doc
    assert "NaN when an embedding is not finite" not in doc
    assert "the value can stay finite while the gradients are NaN" in doc


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("case,name,make", CASES, ids=[c for c, _, _ in CASES])
def test_a_nonfinite_embedding_gives_what_the_docstring_says(case, name, make, bad):
    torch.manual_seed(0)
    loss = make().double()
    emb = torch.randn(B, D, dtype=torch.float64)
    emb[3, 2] = bad
    emb.requires_grad_(True)
    value = loss(emb, LABELS)
    value.backward()
    assert emb.grad is not None and not bool(torch.isfinite(emb.grad).all()), case
    if case in FINITE_VALUE:
        # the NaN terms drop out: the value is that of the other rows' terms (finite), so only the gradient tells
        assert math.isfinite(value.item()), case
    else:
        assert not math.isfinite(value.item()), case
