"""Every tuple loss equals pytorch-metric-learning 2.9 (test-only oracle) in value and gradient."""

from __future__ import annotations

import pytest
import torch

from dynametric import distances as dm_dist
from dynametric.losses.circle import CircleLoss
from dynametric.losses.contrastive import ContrastiveLoss
from dynametric.losses.lifted import GeneralizedLiftedStructureLoss, LiftedStructureLoss
from dynametric.losses.margin import MarginLoss
from dynametric.losses.multi_similarity import MultiSimilarityLoss
from dynametric.losses.npairs import NPairsLoss
from dynametric.losses.triplet import TripletMarginLoss

# the reference implementation (the dev extra installs it); the module is skipped without it
pml_dist = pytest.importorskip("pytorch_metric_learning.distances")
pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

DISTANCES = {
    "l2": (dm_dist.LpDistance, pml_dist.LpDistance, {}),
    "sq": (dm_dist.LpDistance, pml_dist.LpDistance, {"power": 2}),
    "cos": (dm_dist.CosineSimilarity, pml_dist.CosineSimilarity, {}),
    # PML's DotProductSimilarity normalises by default; dynametric's does not: compare like with like.
    "dot": (dm_dist.DotProductSimilarity, pml_dist.DotProductSimilarity, {"normalize_embeddings": False}),
}


def make_distance(key: str):
    if key == "default":
        return None, None
    ours, theirs, kw = DISTANCES[key]
    return ours(**kw), theirs(**kw)


# (our class, PML class, kwargs, distance keys to try)
CASES = [
    (ContrastiveLoss, pml_losses.ContrastiveLoss, {}, ["l2", "cos"]),
    (ContrastiveLoss, pml_losses.ContrastiveLoss, {"pos_margin": 0.1, "neg_margin": 0.9}, ["sq"]),
    (TripletMarginLoss, pml_losses.TripletMarginLoss, {}, ["l2", "cos"]),
    (TripletMarginLoss, pml_losses.TripletMarginLoss, {"margin": 0.3, "swap": True}, ["sq", "cos"]),
    (TripletMarginLoss, pml_losses.TripletMarginLoss, {"margin": 0.1, "smooth_loss": True}, ["l2"]),
    (NPairsLoss, pml_losses.NPairsLoss, {}, ["dot", "cos", "l2"]),
    (NPairsLoss, pml_losses.NPairsLoss, {}, ["default"]),
    (LiftedStructureLoss, pml_losses.LiftedStructureLoss, {}, ["l2", "cos"]),
    (LiftedStructureLoss, pml_losses.LiftedStructureLoss, {"neg_margin": 0.7, "pos_margin": 0.1}, ["sq"]),
    (GeneralizedLiftedStructureLoss, pml_losses.GeneralizedLiftedStructureLoss, {}, ["l2", "cos"]),
    (MarginLoss, pml_losses.MarginLoss, {}, ["l2"]),
    (MarginLoss, pml_losses.MarginLoss, {"margin": 0.1, "nu": 0.3, "beta": 0.9, "learn_beta": True}, ["l2", "cos"]),
    (MultiSimilarityLoss, pml_losses.MultiSimilarityLoss, {}, ["cos"]),
    (MultiSimilarityLoss, pml_losses.MultiSimilarityLoss, {"alpha": 1.5, "beta": 20, "base": 0.8}, ["l2"]),
    (CircleLoss, pml_losses.CircleLoss, {}, ["cos"]),
    (CircleLoss, pml_losses.CircleLoss, {"m": 0.25, "gamma": 256}, ["cos"]),
]
IDS = [f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)]


def run_both(ours, theirs, emb, labels, indices=None, ref=None, ref_labels=None):
    e1 = emb.clone().requires_grad_(True)
    e2 = emb.clone().requires_grad_(True)
    r1 = r2 = None
    if ref is not None:
        r1 = ref.clone().requires_grad_(True)
        r2 = ref.clone().requires_grad_(True)
    v1 = ours(e1, labels, indices, r1, ref_labels)
    v2 = theirs(e2, labels, indices, r2, ref_labels)
    v1.backward()
    v2.backward()
    torch.testing.assert_close(v1.detach(), v2.detach().to(v1.dtype).reshape(()), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(e1.grad, e2.grad, rtol=1e-4, atol=1e-6)
    if ref is not None:
        torch.testing.assert_close(r1.grad, r2.grad, rtol=1e-4, atol=1e-6)
    return v1


def batch(seed: int, n: int = 24, d: int = 8, classes: int = 5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g, dtype=dtype)
    labels = torch.randint(0, classes, (n,), generator=g) * 13 - 20  # arbitrary integer values
    return emb, labels


@pytest.mark.parametrize("case", CASES, ids=IDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equal_to_pml_no_miner(case, seed):
    ours_cls, pml_cls, kwargs, dist_keys = case
    emb, labels = batch(seed)
    for key in dist_keys:
        d_ours, d_pml = make_distance(key)
        ours = ours_cls(distance=d_ours, **kwargs).double()
        theirs = pml_cls(distance=d_pml, **kwargs).double()
        if key == "default":
            assert type(ours.distance).__name__ == type(theirs.distance).__name__
        value = run_both(ours, theirs, emb, labels)
        assert torch.isfinite(value)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_equal_to_pml_with_miner_outputs(case):
    ours_cls, pml_cls, kwargs, dist_keys = case
    emb, labels = batch(7, n=20, classes=4)
    d_ours, d_pml = make_distance(dist_keys[0])
    miners = [
        pml_miners.PairMarginMiner(pos_margin=0.5, neg_margin=1.2),  # pairs
        pml_miners.TripletMarginMiner(margin=0.3, type_of_triplets="semihard"),  # triplets
        pml_miners.MultiSimilarityMiner(epsilon=0.2),
    ]
    for miner in miners:
        indices = miner(emb.float(), labels)
        ours = ours_cls(distance=d_ours, **kwargs).double()
        theirs = pml_cls(distance=d_pml, **kwargs).double()
        run_both(ours, theirs, emb, labels, indices)


# NPairs does not support ref_emb; swap with ref_emb is defined differently from PML on purpose (documented).
REF_CASES = [(i, c) for i, c in zip(IDS, CASES, strict=True) if c[0] is not NPairsLoss and not c[2].get("swap")]


@pytest.mark.parametrize("case", [c for _, c in REF_CASES], ids=[i for i, _ in REF_CASES])
def test_equal_to_pml_with_ref_emb(case):
    ours_cls, pml_cls, kwargs, dist_keys = case
    emb, labels = batch(3, n=12, classes=4)
    ref, ref_labels = batch(4, n=17, classes=4)
    d_ours, d_pml = make_distance(dist_keys[0])
    ours = ours_cls(distance=d_ours, **kwargs).double()
    theirs = pml_cls(distance=d_pml, **kwargs).double()
    run_both(ours, theirs, emb, labels, ref=ref, ref_labels=ref_labels)


def test_margin_loss_per_class_beta_matches_pml_including_beta_gradient():
    emb, _ = batch(5, n=20)
    labels = torch.randint(0, 6, (20,), generator=torch.Generator().manual_seed(5))
    kwargs = {"margin": 0.1, "nu": 0.2, "beta": 0.8, "learn_beta": True, "num_classes": 6}
    ours = MarginLoss(**kwargs).double()
    theirs = pml_losses.MarginLoss(**kwargs).double()
    run_both(ours, theirs, emb, labels)
    torch.testing.assert_close(ours.beta.grad, theirs.beta.grad)
    assert ours.loss_parameters() == [ours.beta]


def test_random_triplets_per_anchor_statistics():
    """An integer triplets_per_anchor samples that many valid triplets per anchor (random, so checked by property)."""
    emb, labels = batch(11, n=30, classes=4)
    loss = TripletMarginLoss(triplets_per_anchor=3, margin=10.0)  # margin so large that every triplet is active
    from dynametric.losses.tuples import random_triplets

    a, p, n = random_triplets(labels, triplets_per_anchor=3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.bincount(a, minlength=30), torch.full((30,), 3))
    assert bool((labels[a] == labels[p]).all()) and bool((a != p).all()) and bool((labels[a] != labels[n]).all())
    value = loss(emb.float(), labels)
    dist = dm_dist.LpDistance()(emb.float())
    lo = (dist[a, p] - dist.max() + 10.0).min()
    assert value > lo


@pytest.mark.parametrize("cls", [TripletMarginLoss, MarginLoss])
def test_random_triplets_per_anchor_draw_other_triplets_than_pml_under_one_seed(cls):
    """As documented (docs/losses.md, the module docstrings): an integer triplets_per_anchor samples with torch's
    generator in one vectorised draw, not PML's per-class loop, so one seed gives other triplets than PML's and
    another value; on the same triplets (here: ours, given to PML as a miner's output) the values are equal."""
    from dynametric.losses.tuples import convert_to_triplets

    emb, labels = batch(12, n=30, classes=4)
    ours = cls(triplets_per_anchor=3).double()
    torch.manual_seed(0)
    value = ours(emb, labels)
    torch.manual_seed(0)
    triplets = convert_to_triplets(None, labels, None, 3)  # the draw the loss made
    theirs = getattr(pml_losses, cls.__name__)(triplets_per_anchor=3).double()
    torch.testing.assert_close(value, theirs(emb, labels, triplets))
    torch.manual_seed(0)
    assert theirs(emb, labels).item() != pytest.approx(value.item(), rel=1e-6)
