"""t* miners: class constraints, skipped anchors, sampling laws (exact chi-square and the analytic sphere law)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from dynametric.errors import ConfigError, InputError
from dynametric.losses import MarginLoss, TripletMarginLoss
from dynametric.miners import MINERS, InterClassTripletMiner, build_miner, inverse_q_log_weights


def _sphere(n: int, d: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True)


@settings(max_examples=40, deadline=None)
@given(labels=st.lists(st.integers(0, 5), min_size=2, max_size=40), seed=st.integers(0, 10_000),
       variant=st.sampled_from(["standard", "full", "random_groups"]))
def test_class_constraints(labels: list[int], seed: int, variant: str) -> None:
    lab = torch.tensor(labels)
    emb = _sphere(len(labels), 8, seed).float()
    miner = InterClassTripletMiner(variant, seed=seed, group_size=3)
    a, p, n = miner(emb, lab)
    assert a.numel() + miner.last_skipped == len(labels)
    assert torch.unique(a).numel() == a.numel()  # one triplet per anchor
    assert (lab[n] != lab[a]).all()  # never the anchor's own class as negative
    assert (p != a).all()
    if variant in ("standard", "full"):
        assert (lab[p] != lab[a]).all() and (lab[p] != lab[n]).all()  # positive from a third class
    # an anchor is skipped only when it really has no candidate
    if variant in ("standard", "full"):
        expect_kept = torch.tensor([(torch.unique(lab[lab != y]).numel() >= 2) for y in lab])
        assert miner.last_skipped == int((~expect_kept).sum())


def test_random_permutes_labels() -> None:
    lab = torch.arange(20).repeat_interleave(2)  # 20 classes x 2
    emb = _sphere(40, 16, 0).float()
    miner = InterClassTripletMiner("random", seed=0)
    own_neg = 0
    for _ in range(30):
        a, p, n = miner(emb, lab)
        assert a.numel() == 40 and miner.last_skipped == 0 and (p != a).all()
        own_neg += int((lab[n] == lab[a]).sum())
        # positives are NOT the true class in general (the surrogate label is a permuted one)
        assert (lab[p] != lab[a]).any()
    # the true class is not kept out of the negatives in `random` (DiVA's default, Milbich et al., TPAMI 2020)
    assert own_neg > 0


def test_random_groups_positive_in_group_negative_outside() -> None:
    lab = torch.arange(16).repeat_interleave(2)
    emb = _sphere(32, 16, 1).float()
    miner = InterClassTripletMiner("random_groups", group_size=4, seed=3)
    a, p, n = miner(emb, lab)
    assert a.numel() == 32
    # anchor-positive edges stay inside groups of 4: connected components have at most 4 members (a positive drawn
    # from the whole batch would link almost everything)
    parent = list(range(32))

    def find(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for x, y in zip(a.tolist(), p.tolist(), strict=True):
        parent[find(x)] = find(y)
    sizes = np.bincount([find(i) for i in range(32)])
    assert sizes.max() <= 4
    assert (lab[n] != lab[a]).all()


def test_skipped_anchors_counted() -> None:
    emb = _sphere(8, 8, 2).float()
    two_classes = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    miner = InterClassTripletMiner("standard", seed=0)
    a, p, n = miner(emb, two_classes)
    assert a.numel() == 0 and miner.last_skipped == 8 and miner.total_skipped == 8
    one_class = torch.zeros(8, dtype=torch.long)
    miner(emb, one_class)
    assert miner.total_skipped == 16 and miner.total_anchors == 16
    # the losses accept the empty tuple (graph-connected zero)
    e = emb.clone().requires_grad_(True)
    loss = MarginLoss()(e, two_classes, miner(e, two_classes))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(e.grad).all()


def _fixture(num_copies: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                                          torch.Tensor]:
    """``num_copies`` copies of one anchor (label 0) against a reference set of 12 candidates of classes 1..12."""
    cand = _sphere(12, dim, seed)
    anchor = _sphere(1, dim, seed + 1)
    d = (cand - anchor).norm(dim=1)
    w = torch.exp(inverse_q_log_weights(d, dim) - inverse_q_log_weights(d, dim).max())
    return (anchor.expand(num_copies, dim).float(), torch.zeros(num_copies, dtype=torch.long), cand.float(),
            torch.arange(1, 13), (w / w.sum()).double())


def _chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0
    return float(stats.chisquare(counts[keep], expected[keep]).pvalue)


@pytest.mark.parametrize("variant", ["standard", "full"])
def test_negative_and_positive_laws_chi_square(variant: str) -> None:
    copies, dim = 20000, 4
    emb, lab, ref, ref_lab, q_neg = _fixture(copies, dim, seed=5)
    miner = InterClassTripletMiner(variant, seed=11)
    a, p_c, n_c = miner(emb, lab, ref, ref_lab)
    assert a.numel() == copies
    neg_counts = np.bincount(n_c.numpy(), minlength=12)
    assert _chi2_pvalue(neg_counts, q_neg.numpy()) > 1e-3
    # exact positive law given the negative law: uniform (standard) or ∝ 1/q (full) over the other 11 classes
    w = q_neg.numpy() if variant == "full" else np.ones(12)
    pos_probs = np.zeros(12)
    for j in range(12):
        for k in range(12):
            if k != j:
                pos_probs[j] += q_neg[k].item() * w[j] / (w.sum() - w[k])
    pos_counts = np.bincount(p_c.numpy(), minlength=12)
    assert _chi2_pvalue(pos_counts, pos_probs) > 1e-3
    # the two laws differ enough that the wrong one is rejected
    other = np.full(12, 1 / 12) if variant == "full" else None
    if other is not None:
        assert _chi2_pvalue(pos_counts, other) < 1e-6


def _sampled_distance_cdf(d: np.ndarray) -> np.ndarray:
    """Law of d(a, n) for points uniform on S^2 in R^3 drawn ∝ 1/q(max(d, 0.5)): q(d) = d/2 on [0, 2], so the
    drawn distance has density ∝ d/0.5 on [0, 0.5) and ∝ 1 on [0.5, 2]: F(d) = d^2/1.75 below 0.5, else
    (d - 0.25)/1.75."""
    return np.where(d < 0.5, d * d / 1.75, (d - 0.25) / 1.75).clip(0, 1)


def test_distance_weighted_negatives_follow_the_analytic_law() -> None:
    emb = _sphere(2000, 3, 7).float()
    lab = torch.arange(2000)  # every point its own class: all others are candidates
    miner = InterClassTripletMiner("standard", seed=1)
    a, _, n = miner(emb, lab)
    d = (emb[a] - emb[n]).norm(dim=1).double().numpy()
    ks = stats.kstest(d, _sampled_distance_cdf)
    assert ks.pvalue > 1e-3, ks
    # a uniform draw (the wrong sampler) follows q itself, F(d) = d^2/4, and is rejected
    g = torch.Generator().manual_seed(0)
    wrong = torch.randint(2000, (2000,), generator=g)
    d_wrong = (emb - emb[wrong]).norm(dim=1).double().numpy()
    assert stats.kstest(d_wrong, _sampled_distance_cdf).pvalue < 1e-6
    assert math.isclose(float(_sampled_distance_cdf(np.array([2.0]))[0]), 1.0)


def test_usable_with_triplet_losses_and_registry() -> None:
    assert MINERS["InterClassTripletMiner"] is InterClassTripletMiner
    miner = build_miner("InterClassTripletMiner", variant="full", seed=0)
    lab = torch.arange(6).repeat_interleave(2)
    emb = _sphere(12, 16, 3).float().requires_grad_(True)
    idx = miner(emb, lab)
    for loss in (TripletMarginLoss(margin=0.2), MarginLoss(learn_beta=True, num_classes=6)):
        value = loss(emb, lab, idx)
        assert value.requires_grad and torch.isfinite(value)
        # the loss is computed on exactly the mined triplets: recompute the triplet loss by hand
    a, p, n = idx
    d = torch.cdist(emb, emb)
    manual = torch.relu(d[a, p] - d[a, n] + 0.2)
    manual = manual.sum() / (manual > 0).sum().clamp_min(1)
    assert torch.allclose(TripletMarginLoss(margin=0.2)(emb, lab, idx), manual, atol=1e-5)


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="variant"):
        InterClassTripletMiner("nope")
    with pytest.raises(ConfigError, match="group_size"):
        InterClassTripletMiner("random_groups", group_size=1)
    with pytest.raises(ConfigError, match="LpDistance"):
        build_miner("InterClassTripletMiner", distance="cosine")
    emb = _sphere(6, 4, 0).float()
    with pytest.raises(InputError, match="ref_emb"):
        InterClassTripletMiner("random")(emb, torch.arange(6), emb.clone(), torch.arange(6))


@pytest.mark.parametrize("variant", ["standard", "full", "random", "random_groups"])
def test_an_empty_batch_mines_no_triplet(variant) -> None:
    miner = InterClassTripletMiner(variant, seed=0)
    a, p, n = miner(torch.randn(0, 16), torch.zeros(0, dtype=torch.long))
    assert a.numel() == p.numel() == n.numel() == 0 and a.dtype == torch.long
    assert miner.last_skipped == 0 and miner.total_anchors == 0


def test_an_empty_reference_set_skips_every_anchor() -> None:
    miner = InterClassTripletMiner("standard", seed=0)
    a, _, _ = miner(torch.randn(3, 16), torch.tensor([0, 1, 2]), torch.randn(0, 16), torch.zeros(0, dtype=torch.long))
    assert a.numel() == 0 and miner.last_skipped == 3
