"""Hypothesis properties of the tuple helpers and of the index-free "all triplets" paths."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynametric.distances import CosineSimilarity, LpDistance
from dynametric.losses import MarginLoss, TripletMarginLoss
from dynametric.losses.tuples import get_all_triplets_indices, pairs_to_triplets, random_triplets

labels_st = st.lists(st.integers(-3, 3), min_size=1, max_size=14)


@settings(max_examples=30, deadline=None)
@given(labels=labels_st, ref=st.one_of(st.none(), labels_st), chunk=st.integers(1, 50))
def test_triplet_enumeration_is_the_brute_force_set_in_pml_order(labels, ref, chunk):
    y = torch.tensor(labels)
    r = None if ref is None else torch.tensor(ref)
    got = get_all_triplets_indices(y, r, triplets_per_chunk=chunk)
    rr = labels if ref is None else ref
    brute = [(a, p, n) for a in range(len(labels)) for p in range(len(rr)) for n in range(len(rr))
             if labels[a] == rr[p] and labels[a] != rr[n] and (ref is not None or a != p)]
    assert list(zip(*[t.tolist() for t in got], strict=True)) == brute
    assert all(t.dtype == torch.long for t in got)


@settings(max_examples=30, deadline=None)
@given(labels=labels_st, seed=st.integers(0, 2**16))
def test_pairs_to_triplets_matches_pml(labels, seed):
    y = torch.tensor(labels)
    lmu = pytest.importorskip("pytorch_metric_learning.utils.loss_and_miner_utils")
    a1, p, a2, n = lmu.get_all_pairs_indices(y)
    g = torch.Generator().manual_seed(seed)
    k1 = torch.rand(len(a1), generator=g) < 0.6
    k2 = torch.rand(len(a2), generator=g) < 0.6
    sub = (a1[k1], p[k1], a2[k2], n[k2])
    assert [t.tolist() for t in pairs_to_triplets(sub)] == [t.tolist() for t in lmu.convert_to_triplets(sub, y)]


@settings(max_examples=20, deadline=None)
@given(labels=st.lists(st.integers(0, 4), min_size=2, max_size=16), seed=st.integers(0, 2**16),
       swap=st.booleans(), smooth=st.booleans(), cosine=st.booleans(), per_class=st.booleans())
def test_index_free_all_triplet_paths_equal_explicit_triplets(labels, seed, swap, smooth, cosine, per_class):
    y = torch.tensor(labels)
    emb = torch.randn(len(labels), 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    triplets = get_all_triplets_indices(y)
    dist = CosineSimilarity() if cosine else LpDistance()
    losses = [TripletMarginLoss(margin=0.3, swap=swap, smooth_loss=smooth, distance=dist),
              MarginLoss(margin=0.2, beta=0.9, nu=0.3, learn_beta=True, num_classes=5 if per_class else None,
                         distance=dist)]
    for loss in losses:
        loss = loss.double()
        e1 = emb.clone().requires_grad_(True)
        e2 = emb.clone().requires_grad_(True)
        dense = loss(e1, y)  # index-free path
        dense.backward()
        sparse = loss(e2, y, triplets)  # explicit triplets path
        sparse.backward()
        torch.testing.assert_close(dense, sparse)
        torch.testing.assert_close(e1.grad, e2.grad)


@settings(max_examples=20, deadline=None)
@given(labels=st.lists(st.integers(0, 3), min_size=2, max_size=16), k=st.integers(1, 4))
def test_random_triplets_are_valid(labels, k):
    y = torch.tensor(labels)
    a, p, n = random_triplets(y, triplets_per_anchor=k, generator=torch.Generator().manual_seed(0))
    assert bool((y[a] == y[p]).all()) and bool((a != p).all()) and bool((y[a] != y[n]).all())
    has_both = [(sum(v == x for v in labels) > 1) and any(v != x for v in labels) for x in labels]
    assert torch.bincount(a, minlength=len(labels)).tolist() == [k if h else 0 for h in has_both]


@pytest.mark.parametrize("smooth", [False, True])
@pytest.mark.parametrize("cosine", [False, True])
def test_all_triplet_hinge_gradcheck(smooth, cosine):
    """The chunked analytic backward of the index-free triplet loss is the true gradient (finite differences)."""
    g = torch.Generator().manual_seed(int(smooth) * 2 + int(cosine))
    emb = torch.randn(9, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    loss = TripletMarginLoss(margin=0.4, smooth_loss=smooth, distance=CosineSimilarity() if cosine else LpDistance())
    assert torch.autograd.gradcheck(lambda e: loss(e, y), (emb,), eps=1e-6, atol=1e-5)
