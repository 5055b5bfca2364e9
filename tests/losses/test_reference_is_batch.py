"""The reference set that *is* the batch (pytorch-metric-learning 2.9 as test-only oracle): PML drops the pairs
``(i, i)`` when ``ref_labels is labels`` (the same object), whatever ``ref_emb`` is; equal copies are another
reference set whose item ``i`` is a positive of batch item ``i`` at distance 0. Every native loss with a PML
namesake gives PML's value and gradient in the four cases (both objects the batch's, both copies, and each one
alone), on ``[B]`` labels and on ``[B, S]`` labels whose column the loss selects."""

from __future__ import annotations

import pytest
import torch

from dynametric import distances as dm_dist
from dynametric.errors import InputError
from dynametric.losses import LOSSES, CSLLoss, MultiScaleLoss, pml_loss

# the reference implementation (the dev extra installs it); the module is skipped without it
pml_dist = pytest.importorskip("pytorch_metric_learning.distances")
pml_losses = pytest.importorskip("pytorch_metric_learning.losses")

B, D, C = 16, 6, 4

# settings where the pair (i, i) at distance 0 (similarity 1) changes the value, so a loss that keeps or drops it
# against PML's rule fails
PAIR_LOSSES = [
    ("ContrastiveLoss", {"pos_margin": 1.5, "neg_margin": 0.2}, "cos"),
    ("ContrastiveLoss", {"pos_margin": 0.0, "neg_margin": 1.2}, "l2"),
    ("TripletMarginLoss", {"margin": 1.0}, "l2"),
    ("TripletMarginLoss", {"margin": 0.5, "swap": True}, "l2"),
    ("TripletMarginLoss", {"margin": 0.4, "smooth_loss": True}, "cos"),
    ("LiftedStructureLoss", {}, "l2"),
    ("GeneralizedLiftedStructureLoss", {}, "l2"),
    ("MarginLoss", {}, "l2"),
    ("MarginLoss", {"margin": 0.1, "nu": 0.2, "beta": 0.9, "learn_beta": True, "num_classes": C}, "l2"),
    ("MultiSimilarityLoss", {}, "cos"),
    ("CircleLoss", {"m": 0.4, "gamma": 8}, "cos"),
]
DIST = {"l2": (dm_dist.LpDistance, pml_dist.LpDistance), "cos": (dm_dist.CosineSimilarity, pml_dist.CosineSimilarity)}
CASES = ["same objects", "copies", "ref_labels is labels", "ref_emb is embeddings"]

# PML refuses a reference set on these ("ref_emb is not supported") unless it is the batch's own objects
NO_REFERENCE = [
    ("NPairsLoss", None, {}),
    ("ProxyNCALoss", "proxies", {"softmax_scale": 2.0}),
    ("ProxyAnchorLoss", "proxies", {"margin": 0.2, "alpha": 16}),
    ("NormalizedSoftmaxLoss", "W", {"temperature": 0.2}),
    ("CosFaceLoss", "W", {"margin": 0.3, "scale": 16}),
    ("ArcFaceLoss", "W", {"margin": 20.0, "scale": 16}),
    ("SoftTripleLoss", "fc", {"centers_per_class": 3, "la": 8}),
]


def batch(seed: int = 9):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, D, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (B,), generator=g)
    other = torch.randn(B, D, generator=g, dtype=torch.float64)
    return emb, labels, other


def call(loss, emb, labels, other, case: str, column=None):
    """``loss(e, labels, ref_emb=..., ref_labels=...)`` in one of the four cases; ``column`` selects what PML gets
    (``None``: the labels as they are). Returns the value and the gradients of the embeddings and of ``other``."""
    e = emb.clone().requires_grad_(True)
    o = other.clone().requires_grad_(True)
    lab = labels if column is None else column
    ref_emb, ref_labels = {
        "same objects": (e, lab),
        "copies": (e.clone(), lab.clone()),
        "ref_labels is labels": (o, lab),
        "ref_emb is embeddings": (e, lab.clone()),
    }[case]
    value = loss(e, lab, ref_emb=ref_emb, ref_labels=ref_labels)
    value.backward()
    return value.detach().reshape(()), e.grad, o.grad


def assert_equal_calls(ours, theirs):
    (v1, g1, o1), (v2, g2, o2) = ours, theirs
    torch.testing.assert_close(v1, v2.to(v1.dtype), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(g1, g2, rtol=1e-7, atol=1e-10)
    if o2 is None:
        assert o1 is None or not bool(o1.any())
    else:
        torch.testing.assert_close(o1, o2, rtol=1e-7, atol=1e-10)


# swap with another ref_emb differs from PML on purpose (docs/losses.md): that one combination is left out
PAIR_CASES = [(loss, case) for loss in PAIR_LOSSES for case in CASES
              if not (loss[1].get("swap") and case == "ref_labels is labels")]


@pytest.mark.parametrize("loss,case", PAIR_CASES, ids=[f"{loss[0]}-{PAIR_LOSSES.index(loss)}-{case}"
                                                       for loss, case in PAIR_CASES])
def test_tuple_losses_follow_pml_reference_rule(loss, case):
    name, kwargs, dist = loss
    emb, labels, other = batch()
    ours_d, pml_d = DIST[dist]
    theirs = getattr(pml_losses, name)(distance=pml_d(), **kwargs).double()
    pml_call = call(theirs, emb, labels, other, case)
    ours = LOSSES[name](distance=ours_d(), **kwargs).double()
    assert_equal_calls(call(ours, emb, labels, other, case), pml_call)
    # [B, S] labels: the identity is the caller's objects, before the loss selects its column
    matrix = torch.stack([labels, labels // 2, torch.zeros_like(labels)], 1)
    for scale in (0, 1):
        ours = LOSSES[name](distance=ours_d(), scale=scale, **kwargs).double()
        theirs = getattr(pml_losses, name)(distance=pml_d(), **kwargs).double()
        column = matrix[:, scale]
        mine_call = call(ours, emb, matrix, other, case)
        assert_equal_calls(mine_call, call(theirs, emb, column, other, case, column=column))


def test_the_reported_case():
    """The QA report's numbers: seed 9, 16 x 6 float64, 4 classes; PML's LiftedStructureLoss is 8.4038 with the
    batch's own objects as the reference set, 6.9796 with copies."""
    torch.manual_seed(9)
    e = torch.randn(16, 6, dtype=torch.float64)
    lab = torch.randint(0, 4, (16,))
    loss = LOSSES["LiftedStructureLoss"]()
    assert loss(e, lab, ref_emb=e, ref_labels=lab).item() == pytest.approx(8.403839608758, rel=1e-10)
    assert loss(e, lab, ref_emb=e.clone(), ref_labels=lab.clone()).item() == pytest.approx(6.979552748039, rel=1e-10)
    assert loss(e, lab).item() == pytest.approx(8.403839608758, rel=1e-10)


@pytest.mark.parametrize("name,attr,kwargs", NO_REFERENCE, ids=[n for n, _, _ in NO_REFERENCE])
def test_losses_without_reference_set_accept_the_batchs_own_objects(name, attr, kwargs):
    """PML's ``ref_not_supported`` accepts ``ref_emb is embeddings and ref_labels is labels`` (the plain call) and
    refuses anything else; so do these losses (with an InputError keyed ``ref_emb``)."""
    emb, labels, other = batch(3)
    if attr is None:
        ours, theirs = LOSSES[name](**kwargs).double(), getattr(pml_losses, name)(**kwargs).double()
    else:
        ours = LOSSES[name](C, D, **kwargs).double()
        theirs = getattr(pml_losses, name)(num_classes=C, embedding_size=D, **kwargs).double()
        getattr(theirs, attr).data.copy_(getattr(ours, attr).data)
    assert_equal_calls(call(ours, emb, labels, other, "same objects"), call(theirs, emb, labels, other, "same objects"))
    for case in CASES[1:]:
        with pytest.raises(ValueError, match="ref_emb is not supported"):
            call(theirs, emb, labels, other, case)
        with pytest.raises(InputError, match="ref_emb"):
            call(ours, emb, labels, other, case)


@pytest.mark.parametrize("case", CASES)
def test_pml_adapter_keeps_the_identity_through_its_column(case):
    """``pml_loss`` selects the column of [B, S] labels for PML: the batch's own label object stays one object."""
    emb, labels, other = batch(5)
    matrix = torch.stack([labels // 2, labels], 1)
    ours = pml_loss("LiftedStructureLoss", label_scale=1)
    column = matrix[:, 1]
    assert_equal_calls(call(ours, emb, matrix, other, case),
                       call(pml_losses.LiftedStructureLoss(), emb, column, other, case, column=column))


def test_multiscale_and_csl_follow_the_rule_on_their_label_matrices():
    """MultiScaleLoss (each scale's loss gets its column; PML per scale as the oracle) and CSL (pairs mode): the
    batch's own objects are the plain call, copies keep the pairs (i, i) as positives."""
    emb, labels, other = batch(6)
    matrix = torch.stack([labels, labels // 2], 1)
    multi = MultiScaleLoss(lambda s: LOSSES["LiftedStructureLoss"](), weights=[1.0, 0.5])
    for case in CASES:
        expected = sum(w * call(pml_losses.LiftedStructureLoss(), emb, matrix[:, s], other, case,
                                column=matrix[:, s])[0] for s, w in enumerate((1.0, 0.5)))
        torch.testing.assert_close(call(multi, emb, matrix, other, case)[0], expected, rtol=1e-9, atol=1e-12)
    csl = CSLLoss(None, D, mode="pairs", margins=(0.25, 0.35))
    plain = csl(emb, matrix)
    assert csl(emb, matrix, ref_emb=emb, ref_labels=matrix).item() == pytest.approx(plain.item(), rel=1e-12)
    copies = csl(emb, matrix, ref_emb=emb.clone(), ref_labels=matrix.clone())
    assert abs(copies.item() - plain.item()) > 1e-3  # the pairs (i, i), similarity 1, are positives of the copies
