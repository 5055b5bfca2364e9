"""Miners mine float64 input in float64, exactly as pytorch-metric-learning (test-only oracle), including near-ties
that a float32 comparison decides the other way; PML distance objects, collect_stats, PML's empty cases."""

from __future__ import annotations

import pytest
import torch

from dynametric.miners import (
    BatchHardMiner,
    DistanceWeightedMiner,
    MultiSimilarityMiner,
    PairMarginMiner,
    TripletMarginMiner,
)

# the reference implementation (the dev extra installs it); the module is skipped without it
pml_dist = pytest.importorskip("pytorch_metric_learning.distances")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

SEEDS = range(6)
TYPES = ["all", "hard", "semihard", "easy"]


def batch(seed: int, n: int = 14, d: int = 3, classes: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def tie_margins(emb, labels, seed: int, k: int = 3) -> list[float]:
    """Margins equal (in float64) to the triplet margin d_an - d_ap of ``k`` random triplets: every one of them
    sits exactly on a decision boundary of the miner."""
    mat = pml_dist.LpDistance()(emb)
    same = labels[:, None] == labels[None, :]
    not_self = ~torch.eye(len(labels), dtype=torch.bool)
    a, p, n = torch.nonzero(same[:, :, None] & ~same[:, None, :] & not_self[:, :, None], as_tuple=True)
    pick = torch.randperm(a.numel(), generator=torch.Generator().manual_seed(seed))[:k]
    return [float(mat[a[i], n[i]] - mat[a[i], p[i]]) for i in pick]


def as_lists(out):
    return [t.tolist() for t in out]


def test_triplet_margin_miner_float64_ties_equal_pml():
    differs_in_float32 = 0
    for seed in SEEDS:
        emb, labels = batch(seed)
        for margin in tie_margins(emb, labels, seed) + [0.0, 0.2]:
            for kind in TYPES:
                ours = TripletMarginMiner(margin=margin, type_of_triplets=kind)(emb, labels)
                theirs = pml_miners.TripletMarginMiner(margin=margin, type_of_triplets=kind)(emb, labels)
                assert as_lists(ours) == as_lists(theirs), (seed, margin, kind)
                f32 = pml_miners.TripletMarginMiner(margin=margin, type_of_triplets=kind)(emb.float(), labels)
                differs_in_float32 += as_lists(f32) != as_lists(theirs)
    assert differs_in_float32 > 0  # the cases do contain float32/float64 disagreements


def test_pair_margin_miner_float64_ties_equal_pml():
    differs_in_float32 = 0
    for seed in SEEDS:
        emb, labels = batch(seed)
        mat = pml_dist.LpDistance()(emb)
        same = labels[:, None] == labels[None, :]
        pos = torch.nonzero(same & ~torch.eye(len(labels), dtype=torch.bool))
        neg = torch.nonzero(~same)
        # margins equal to actual positive / negative pair distances: those pairs sit on the boundary
        for i in range(4):
            pos_margin, neg_margin = float(mat[tuple(pos[3 * i])]), float(mat[tuple(neg[5 * i])])
            ours = PairMarginMiner(pos_margin, neg_margin)(emb, labels)
            theirs = pml_miners.PairMarginMiner(pos_margin=pos_margin, neg_margin=neg_margin)(emb, labels)
            assert as_lists(ours) == as_lists(theirs), (seed, pos_margin, neg_margin)
            f32 = pml_miners.PairMarginMiner(pos_margin=pos_margin, neg_margin=neg_margin)(emb.float(), labels)
            differs_in_float32 += as_lists(f32) != as_lists(theirs)
    assert differs_in_float32 > 0


def test_batch_hard_miner_breaks_float64_near_ties_as_pml():
    # anchor 0 at the origin; negatives 2 and 3 at distances 1 + 1e-12 and 1: equal in float32, not in float64
    emb = torch.tensor([[0.0, 0.0], [0.5, 0.0], [1.0 + 1e-12, 0.0], [1.0, 0.0], [1.2, 0.1]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 0])
    dist = pml_dist.LpDistance(normalize_embeddings=False)
    ours = BatchHardMiner(distance=pml_dist.LpDistance(normalize_embeddings=False))(emb, labels)
    theirs = pml_miners.BatchHardMiner(distance=dist)(emb, labels)
    assert as_lists(ours) == as_lists(theirs)
    assert ours[2][0] == 3  # the truly closest negative (a float32 comparison would take index 2)
    for seed in SEEDS:
        emb, labels = batch(seed)
        for d in (pml_dist.LpDistance(), pml_dist.CosineSimilarity(), pml_dist.LpDistance(power=2)):
            assert as_lists(BatchHardMiner(distance=d)(emb, labels)) == as_lists(
                pml_miners.BatchHardMiner(distance=d)(emb, labels))


def test_multi_similarity_miner_float64_ties_equal_pml():
    differs_in_float32 = 0
    for seed in SEEDS:
        emb, labels = batch(seed)
        s = pml_dist.CosineSimilarity()(emb)
        same = labels[:, None] == labels[None, :]
        hardest_neg = s.masked_fill(same, -2).amax(1)
        pos = torch.nonzero(same & ~torch.eye(len(labels), dtype=torch.bool))
        # epsilon = s_ip - max_n s_in: the positive pair (i, p) sits exactly on the keep/drop boundary
        for i, p in pos[::5].tolist()[:4]:
            eps = float(s[i, p] - hardest_neg[i])
            ours = MultiSimilarityMiner(epsilon=eps)(emb, labels)
            theirs = pml_miners.MultiSimilarityMiner(epsilon=eps)(emb, labels)
            f32 = pml_miners.MultiSimilarityMiner(epsilon=eps)(emb.float(), labels)
            # PML sorts each row's pairs by similarity; compare the sets
            for o, t, h in ((ours[:2], theirs[:2], f32[:2]), (ours[2:], theirs[2:], f32[2:])):
                want = set(zip(*as_lists(t), strict=True))
                assert set(zip(*as_lists(o), strict=True)) == want, (seed, eps)
                differs_in_float32 += set(zip(*as_lists(h), strict=True)) != want
    assert differs_in_float32 > 0


def test_miners_keep_float32_and_mine_half_in_float32():
    emb, labels = batch(0)
    for dtype in (torch.float32, torch.float64):
        e = emb.to(dtype)
        assert as_lists(TripletMarginMiner(margin=0.1)(e, labels)) == as_lists(
            pml_miners.TripletMarginMiner(margin=0.1)(e, labels))
    half = TripletMarginMiner(margin=0.1)(emb.half(), labels)
    assert all(t.dtype == torch.long for t in half)


def test_distance_weighted_miner_empty_cases_as_pml():
    emb, labels = batch(1, n=32, d=8)
    for cutoff, nonzero in [(0.0, -0.01), (0.5, 0.5)]:
        ours = DistanceWeightedMiner(cutoff, nonzero)(emb, labels)
        theirs = pml_miners.DistanceWeightedMiner(cutoff, nonzero)(emb, labels)
        assert [t.numel() for t in ours] == [t.numel() for t in theirs] == [0, 0, 0]
    a, p, n = DistanceWeightedMiner(0.0, 1.2)(emb, labels)  # a window that keeps negatives still mines
    assert a.numel() > 0 and bool((torch.cdist(torch.nn.functional.normalize(emb[a]),
                                                 torch.nn.functional.normalize(emb[n])).diag() <= 1.2).all())


@pytest.mark.parametrize("cls,pml_cls,kwargs", [
    (TripletMarginMiner, pml_miners.TripletMarginMiner, {"margin": 0.3}),
    (PairMarginMiner, pml_miners.PairMarginMiner, {"pos_margin": 0.3, "neg_margin": 0.9}),
    (BatchHardMiner, pml_miners.BatchHardMiner, {}),
    (BatchHardMiner, pml_miners.BatchHardMiner, {"distance": pml_dist.CosineSimilarity()}),
    (BatchHardMiner, pml_miners.BatchHardMiner, {"distance": pml_dist.DotProductSimilarity(normalize_embeddings=False,
                                                                                           power=2)}),
    (MultiSimilarityMiner, pml_miners.MultiSimilarityMiner, {}),
])
def test_collect_stats_equal_pml(cls, pml_cls, kwargs):
    """Every statistic PML records (its _record_these_stats), with PML's value: BatchHardMiner lacked
    easiest_triplet, hardest_triplet, easiest_pos_pair and easiest_neg_pair, and triplet miners num_pos_pairs /
    num_neg_pairs (which PML sets to 0), although the docs said every miner had them."""
    ours = cls(**kwargs, collect_stats=True)
    theirs = pml_cls(**kwargs, collect_stats=True)
    for seed in (2, 3):
        emb, labels = batch(seed)
        torch.manual_seed(seed)
        ours(emb, labels)
        torch.manual_seed(seed)
        theirs(emb, labels)
        assert len(theirs._record_these_stats) >= 3
        for name in theirs._record_these_stats:
            assert getattr(ours, name) == pytest.approx(getattr(theirs, name), rel=1e-9), name


def test_batch_hard_stats_reset_without_triplets_and_are_not_kept_without_collect_stats():
    emb, labels = batch(4)
    ours, theirs = BatchHardMiner(collect_stats=True), pml_miners.BatchHardMiner(collect_stats=True)
    ours(emb, labels)
    one_class = torch.zeros_like(labels)
    ours(emb, one_class)  # no negatives, no triplets: every statistic back to 0, as PML's reset leaves them
    theirs(emb, one_class)
    for name in theirs._record_these_stats:
        assert getattr(ours, name) == getattr(theirs, name) == 0, name
    dwm = DistanceWeightedMiner(collect_stats=True)  # samples by its own law (docs), so only the counts' names
    a, _, _ = dwm(emb, labels)
    assert (dwm.num_triplets, dwm.num_pos_pairs, dwm.num_neg_pairs) == (a.numel(), 0, 0)
    quiet = BatchHardMiner()
    quiet(emb, labels)
    assert not any(hasattr(quiet, name) for name in [*BatchHardMiner.STATS, "num_triplets", "num_pos_pairs"])
