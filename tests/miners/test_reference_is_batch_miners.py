"""Miners and the reference set that *is* the batch (pytorch-metric-learning 2.9 as test-only oracle): PML drops the
pairs ``(i, i)`` when ``ref_labels is labels`` (the same object), and its ``MultiSimilarityMiner`` never mines an
item with itself when ``ref_emb is embeddings``; equal copies are another reference set. The native miners mine
PML's tuples in the four cases (both objects the batch's, both copies, each one alone), on ``[B]`` labels and on
``[B, S]`` labels whose column the miner selects."""

from __future__ import annotations

import pytest
import torch

from dynametric import distances as dm_dist
from dynametric.miners import MINERS, DistanceWeightedMiner, InterClassTripletMiner, pml_miner

# the reference implementation (the dev extra installs it); the module is skipped without it
pml_dist = pytest.importorskip("pytorch_metric_learning.distances")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")

B, D = 14, 4
CASES = ["same objects", "copies", "ref_labels is labels", "ref_emb is embeddings"]

# settings where the pair (i, i) (distance 0, similarity 1) is mined when it is a positive, so a miner that keeps or
# drops it against PML's rule mines other tuples; labels with singleton classes for the batch-hard miner
MINER_CASES = [
    ("TripletMarginMiner", {"margin": 0.2, "type_of_triplets": "easy"}, "l2"),
    ("TripletMarginMiner", {"margin": 1.5, "type_of_triplets": "all"}, "l2"),
    ("TripletMarginMiner", {"margin": 0.5, "type_of_triplets": "semihard"}, "cos"),
    ("BatchHardMiner", {}, "l2"),
    ("BatchHardMiner", {}, "cos"),
    ("MultiSimilarityMiner", {"epsilon": 1.5}, "cos"),
    ("MultiSimilarityMiner", {"epsilon": 0.1}, "cos"),
    ("PairMarginMiner", {"pos_margin": 1.5, "neg_margin": 0.5}, "cos"),
    ("PairMarginMiner", {"pos_margin": -0.1, "neg_margin": 0.8}, "l2"),
]
DIST = {"l2": (dm_dist.LpDistance, pml_dist.LpDistance), "cos": (dm_dist.CosineSimilarity, pml_dist.CosineSimilarity)}


def batch(seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(B, D, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 3, 4, 5, 1, 0, 2])[torch.randperm(B, generator=g)]
    other = torch.randn(B, D, generator=g, dtype=torch.float64)
    return emb, labels, other


def mine(miner, emb, labels, other, case: str):
    ref_emb, ref_labels = {
        "same objects": (emb, labels),
        "copies": (emb.clone(), labels.clone()),
        "ref_labels is labels": (other, labels),
        "ref_emb is embeddings": (emb, labels.clone()),
    }[case]
    return miner(emb, labels, ref_emb, ref_labels)


def as_sets(out):
    """Triplets as a sorted list; pairs as sorted positive and negative lists (PML orders MS pairs by similarity)."""
    rows = [t.tolist() for t in out]
    if len(rows) == 3:
        return sorted(zip(*rows))
    return sorted(zip(rows[0], rows[1])), sorted(zip(rows[2], rows[3]))


def multi_similarity_brute_force(emb, ref, labels, eps):
    """The multi-similarity rule pair by pair (cosine), the reference labels being the batch's: ``(i, i)`` is no
    pair."""
    s = torch.nn.functional.normalize(emb) @ torch.nn.functional.normalize(ref).t()
    pos_pairs, neg_pairs = [], []
    for i in range(B):
        pos = [j for j in range(B) if j != i and labels[j] == labels[i]]
        neg = [j for j in range(B) if labels[j] != labels[i]]
        if not pos or not neg:
            continue
        hardest_neg = max(float(s[i, j]) for j in neg)
        hardest_pos = min(float(s[i, j]) for j in pos)
        pos_pairs += [(i, j) for j in pos if float(s[i, j]) - eps < hardest_neg]
        neg_pairs += [(i, j) for j in neg if float(s[i, j]) + eps > hardest_pos]
    return sorted(pos_pairs), sorted(neg_pairs)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name,kwargs,dist", MINER_CASES, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(MINER_CASES)])
def test_miners_follow_pml_reference_rule(name, kwargs, dist, case):
    emb, labels, other = batch()
    ours_d, pml_d = DIST[dist]
    theirs = as_sets(mine(getattr(pml_miners, name)(distance=pml_d(), **kwargs), emb, labels, other, case))
    if name == "MultiSimilarityMiner" and case == "ref_labels is labels":
        # PML's quirk, left out on purpose (docs/losses.md): its miner drops (i, i) from the label masks but does not
        # mask the diagonal of its sorting matrices when ref_emb is another tensor, so it lists every (i, i) both as
        # a positive and as a negative pair; dynametric lists it as neither
        # (its thresholds then count s_ii as a positive's similarity, so other pairs change too): the expected pairs
        # are the rule brute-forced in float64 with (i, i) neither positive nor negative
        self_pairs = [(i, i) for i in range(B)]
        assert set(self_pairs) <= set(theirs[0]) and set(self_pairs) <= set(theirs[1])
        theirs = multi_similarity_brute_force(emb, other, labels, kwargs["epsilon"])
    assert as_sets(mine(MINERS[name](distance=ours_d(), **kwargs), emb, labels, other, case)) == theirs
    # [B, S] labels: the identity is the caller's objects, before the miner selects its column
    matrix = torch.stack([labels // 2, labels], 1)
    got = as_sets(mine(MINERS[name](distance=ours_d(), scale=1, **kwargs), emb, matrix, other, case))
    assert got == as_sets(mine(MINERS[name](distance=ours_d(), **kwargs), emb, labels, other, case))
    # and PML's own miner through the adapter (PML's output as it is)
    adapted = pml_miner(getattr(pml_miners, name)(distance=pml_d(), **kwargs), label_scale=1)
    assert as_sets(mine(adapted, emb, matrix, other, case)) == as_sets(
        mine(getattr(pml_miners, name)(distance=pml_d(), **kwargs), emb, labels, other, case))


def test_batch_hard_drops_the_anchor_whose_only_positive_is_itself():
    """A singleton class in the batch against its own objects: no positive, so no triplet of that anchor (PML);
    against copies its copy is a positive at distance 0."""
    emb, labels, _ = batch()
    singleton = int(torch.nonzero(labels == 3).flatten()[0])
    miner = MINERS["BatchHardMiner"]()
    a, p, _ = miner(emb, labels, emb, labels)
    assert singleton not in a.tolist()
    a, p, _ = miner(emb, labels, emb.clone(), labels.clone())
    assert p[a == singleton].tolist() == [singleton]


@pytest.mark.parametrize("case", CASES)
def test_distance_weighted_miner_positive_self_pairs_follow_the_labels_rule(case):
    """Random draws (another sampling law than PML's, docs/losses.md): the rule is checked on what is drawn. With
    ``ref_labels is labels`` no triplet has ``p == a``; with copies of the labels every anchor's own copy is one of
    its positives (each positive is listed once per anchor)."""
    emb, labels, other = batch()
    miner = DistanceWeightedMiner(cutoff=0.0, nonzero_loss_cutoff=10.0, seed=0)
    a, p, n = mine(miner, torch.nn.functional.normalize(emb), labels, torch.nn.functional.normalize(other), case)
    assert bool((labels[a] == labels[p]).all()) and bool((labels[a] != labels[n]).all())
    self_pairs = int((a == p).sum())
    if case in ("same objects", "ref_labels is labels"):
        assert self_pairs == 0
    else:
        assert self_pairs == int(torch.unique(a).numel()) > 0


def test_inter_class_random_variants_take_the_batchs_own_objects_as_the_batch():
    """``ref_emb=embeddings, ref_labels=labels`` is the plain call: the variants that permute the batch accept it
    and draw what the plain call draws (same seed); another reference set is refused."""
    emb, labels, other = batch()
    emb = torch.nn.functional.normalize(emb)
    for variant in ("random", "random_groups"):
        plain = InterClassTripletMiner(variant=variant, seed=3)(emb, labels)
        same = InterClassTripletMiner(variant=variant, seed=3)(emb, labels, emb, labels)
        assert [t.tolist() for t in same] == [t.tolist() for t in plain]
        with pytest.raises(Exception, match="needs ref_emb=None"):
            InterClassTripletMiner(variant=variant, seed=3)(emb, labels, emb.clone(), labels.clone())
