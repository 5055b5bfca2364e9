"""Miners equal pytorch-metric-learning 2.9 (as index sets), hand-computed cases, distance-weighted sampling law."""

from __future__ import annotations

import math

import pytest
import torch

from dynametric import distances as dm_dist
from dynametric.errors import ConfigError, InputError
from dynametric.miners import (
    MINERS,
    BatchHardMiner,
    DistanceWeightedMiner,
    MultiSimilarityMiner,
    PairMarginMiner,
    TripletMarginMiner,
    build_miner,
    inverse_q_log_weights,
)

# the reference implementation (the dev extra installs it); the module is skipped without it
pml_dist = pytest.importorskip("pytorch_metric_learning.distances")
pml_miners = pytest.importorskip("pytorch_metric_learning.miners")


def as_set(indices) -> set:
    return set(zip(*[t.tolist() for t in indices], strict=True))


def pairs_as_sets(indices) -> tuple[set, set]:
    a1, p, a2, n = indices
    return as_set((a1, p)), as_set((a2, n))


def batch(seed: int, n: int = 24, d: int = 6, classes: int = 4):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(n, d, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g) * 5 + 100
    return emb, labels


DISTS = [
    (lambda: dm_dist.LpDistance(), lambda: pml_dist.LpDistance()),
    (lambda: dm_dist.CosineSimilarity(), lambda: pml_dist.CosineSimilarity()),
    (lambda: dm_dist.LpDistance(power=2), lambda: pml_dist.LpDistance(power=2)),
]


@pytest.mark.parametrize("kind", ["all", "hard", "semihard", "easy"])
@pytest.mark.parametrize("seed", [0, 1])
def test_triplet_margin_miner_equals_pml(kind, seed):
    emb, labels = batch(seed)
    for ours_d, pml_d in DISTS:
        margin = 0.3 if not ours_d().higher_is_closer else 0.2
        ours = TripletMarginMiner(margin=margin, type_of_triplets=kind, distance=ours_d())(emb, labels)
        theirs = pml_miners.TripletMarginMiner(margin=margin, type_of_triplets=kind, distance=pml_d())(emb, labels)
        assert [t.tolist() for t in ours] == [t.tolist() for t in theirs]  # same order too
    ref, ref_labels = batch(seed + 5, n=13)
    ours = TripletMarginMiner(margin=0.3, type_of_triplets=kind)(emb, labels, ref, ref_labels)
    theirs = pml_miners.TripletMarginMiner(margin=0.3, type_of_triplets=kind)(emb, labels, ref, ref_labels)
    assert [t.tolist() for t in ours] == [t.tolist() for t in theirs]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_hard_and_pair_margin_and_ms_miner_equal_pml(seed):
    emb, labels = batch(seed, n=30, classes=6)
    ref, ref_labels = batch(seed + 10, n=19, classes=6)
    for ours_d, pml_d in DISTS:
        for args in [(), (ref, ref_labels)]:
            ours = BatchHardMiner(distance=ours_d())(emb, labels, *args)
            theirs = pml_miners.BatchHardMiner(distance=pml_d())(emb, labels, *args)
            assert [t.tolist() for t in ours] == [t.tolist() for t in theirs]
            kw = {"pos_margin": 0.6, "neg_margin": 1.1} if not ours_d().higher_is_closer else {
                "pos_margin": 0.5, "neg_margin": 0.1}
            ours = PairMarginMiner(distance=ours_d(), **kw)(emb, labels, *args)
            theirs = pml_miners.PairMarginMiner(distance=pml_d(), **kw)(emb, labels, *args)
            assert [t.tolist() for t in ours] == [t.tolist() for t in theirs]
            for eps in (0.1, 0.4):
                ours = MultiSimilarityMiner(epsilon=eps, distance=ours_d())(emb, labels, *args)
                theirs = pml_miners.MultiSimilarityMiner(epsilon=eps, distance=pml_d())(emb, labels, *args)
                assert pairs_as_sets(ours) == pairs_as_sets(theirs)
                assert len(ours[0]) == len(theirs[0]) and len(ours[2]) == len(theirs[2])


def test_hand_computed_1d_case():
    # points on a line (no normalisation): 0 and 1 are class A, 3 and 3.5 class B.
    emb = torch.tensor([[0.0], [1.0], [3.0], [3.5]])
    labels = torch.tensor([7, 7, -2, -2])
    d = dm_dist.LpDistance(normalize_embeddings=False)
    a, p, n = BatchHardMiner(distance=d)(emb, labels)
    # anchor 0: pos 1 (d=1), hardest neg 2 (d=3); anchor 1: pos 0, neg 2 (d=2); anchor 2: pos 3, neg 1 (d=2);
    # anchor 3: pos 2, neg 1 (d=2.5)
    assert a.tolist() == [0, 1, 2, 3] and p.tolist() == [1, 0, 3, 2] and n.tolist() == [2, 2, 1, 1]
    # semihard with margin 1.8: mu = d_an - d_ap in (0, 1.8]; triplets (a,p,n) and their mu:
    # (0,1,2)=2 (0,1,3)=2.5 (1,0,2)=1 (1,0,3)=1.5 (2,3,0)=2.5 (2,3,1)=1.5 (3,2,0)=3 (3,2,1)=2
    semi = TripletMarginMiner(margin=1.8, type_of_triplets="semihard", distance=d)(emb, labels)
    assert as_set(semi) == {(1, 0, 2), (1, 0, 3), (2, 3, 1)}
    easy = TripletMarginMiner(margin=1.8, type_of_triplets="easy", distance=d)(emb, labels)
    assert len(easy[0]) == 5
    assert len(TripletMarginMiner(margin=1.8, type_of_triplets="hard", distance=d)(emb, labels)[0]) == 0
    # pair margin: positives farther than 0.7 -> (0,1),(1,0); negatives closer than 2.1 -> (1,2),(2,1)
    a1, p, a2, n = PairMarginMiner(pos_margin=0.7, neg_margin=2.1, distance=d)(emb, labels)
    assert as_set((a1, p)) == {(0, 1), (1, 0)} and as_set((a2, n)) == {(1, 2), (2, 1)}
    # multi-similarity on distances, eps=0.6: positive (i,p) kept if d_ip + eps > min_n d_in:
    # row0: 1.6 > 3 no; row1: 1.6 > 2 no; row2: 1.1 > 2 no; row3: 1.1 > 2.5 no -> no positives.
    # negative (i,n) kept if d_in - eps < max_p d_ip: row1: d(1,2)=2 -> 1.4 < 1 no; none.
    ms = MultiSimilarityMiner(epsilon=1.1, distance=d)(emb, labels)
    # eps=1.1: positives: row1 2.1 > 2 yes; row2 1.6 > 2 no; row3 1.6 > 2.5 no; row0 2.1 > 3 no
    assert as_set(ms[:2]) == {(1, 0)}
    # negatives: d_in - 1.1 < max_p d_ip: row1 (1,2): 0.9 < 1 yes; row2 (2,1): 0.9 < 0.5 no
    assert as_set(ms[2:]) == {(1, 2)}


def test_empty_outputs_and_single_class():
    emb = torch.randn(6, 4)
    one_class = torch.zeros(6, dtype=torch.long)
    all_distinct = torch.arange(6)
    for miner in [TripletMarginMiner(), BatchHardMiner(), DistanceWeightedMiner(seed=0)]:
        for labels in (one_class, all_distinct):
            out = miner(emb, labels)
            assert len(out) == 3 and all(t.numel() == 0 and t.dtype == torch.long for t in out)
    ms = MultiSimilarityMiner()(emb, one_class)
    assert len(ms) == 4 and all(t.numel() == 0 for t in ms)
    pm = PairMarginMiner()(emb, all_distinct)
    assert pm[0].numel() == 0
    # an empty batch: no triplets or pairs (BatchHardMiner's argmax over an empty row used to raise)
    for miner in [TripletMarginMiner(), BatchHardMiner(), MultiSimilarityMiner(), PairMarginMiner()]:
        out = miner(torch.randn(0, 4), torch.zeros(0, dtype=torch.long))
        assert all(t.numel() == 0 and t.dtype == torch.long for t in out), miner


def test_registry_and_errors():
    assert {"TripletMarginMiner", "BatchHardMiner", "DistanceWeightedMiner", "MultiSimilarityMiner",
            "PairMarginMiner"} <= set(MINERS)  # other helpers register more (InterClassTripletMiner)
    m = build_miner("TripletMarginMiner", margin=0.1, type_of_triplets="hard", distance="cosine")
    assert isinstance(m.distance, dm_dist.CosineSimilarity) and m.margin == 0.1
    with pytest.raises(ConfigError, match="unknown miner"):
        build_miner("Nope")
    with pytest.raises(ConfigError, match=r"^key 'margin': BatchHardMiner has no argument 'margin'; its arguments: "
                                          r"distance, scale, collect_stats$"):  # listed, as the command line does
        build_miner("BatchHardMiner", margin=3)
    with pytest.raises(ConfigError, match="type_of_triplets"):
        TripletMarginMiner(type_of_triplets="medium")
    with pytest.raises(ConfigError, match="LpDistance"):
        DistanceWeightedMiner(distance=dm_dist.CosineSimilarity())
    # an upper cutoff at or below the lower one leaves nothing to sample: empty triplets, as in PML
    emb = torch.nn.functional.normalize(torch.randn(12, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    for low, high in [(0.5, 0.4), (0.0, -0.01)]:
        out = DistanceWeightedMiner(cutoff=low, nonzero_loss_cutoff=high)(emb, torch.arange(12) % 3)
        assert len(out) == 3 and all(t.numel() == 0 and t.dtype == torch.long for t in out)
    with pytest.raises(InputError, match="lower_cutoff"):
        DistanceWeightedMiner(cutoff=2.5)
    # a seed is an integer: int() truncated 1.5 to 1 (two seeds, one draw)
    for bad in (1.5, True, "1", 2**64):
        with pytest.raises(ConfigError, match=r"seed must be an integer in \[-2\^63, 2\^64\), got"):
            DistanceWeightedMiner(seed=bad)
    assert DistanceWeightedMiner(seed=-1).generator is not None


def test_inverse_q_log_weights_formula():
    dim = 16
    d = torch.tensor([0.1, 0.5, 0.9, 1.3, 1.7, 1.99995, 2.0], dtype=torch.float64)
    got = inverse_q_log_weights(d, dim)
    for di, gi in zip(d.tolist(), got.tolist(), strict=True):
        dt = min(max(di, 0.5), 2 - 1e-4)
        q = dt ** (dim - 2) * (1 - dt * dt / 4) ** ((dim - 3) / 2)
        assert math.isclose(gi, -math.log(q), rel_tol=1e-9, abs_tol=1e-9)
    capped = inverse_q_log_weights(d, dim, upper_cutoff=1.4)
    assert torch.isinf(capped[d > 1.4]).all() and torch.equal(capped[d <= 1.4], got[d <= 1.4])


def test_distance_weighted_probabilities_and_sampling_law():
    emb, labels = batch(3, n=16, d=5, classes=4)
    miner = DistanceWeightedMiner(seed=0)
    probs = miner.sampling_probabilities(emb, labels, emb, None)
    # reference: 1/q(max(d, 0.5)) over the anchor's negatives, normalised per row (float64 brute force)
    x = torch.nn.functional.normalize(emb.double(), dim=1)
    dist = torch.cdist(x, x).clamp(0.5, 2 - 1e-4)
    w = dist ** (2 - 5) * (1 - dist**2 / 4) ** (-(5 - 3) / 2)
    w = w * (labels[:, None] != labels[None, :])
    torch.testing.assert_close(probs.double(), w / w.sum(1, keepdim=True), rtol=1e-4, atol=1e-7)
    # the sampler follows that law: empirical negative frequencies for anchor 0 over many draws
    emb, labels = batch(3, n=64, d=5, classes=2)
    probs = miner.sampling_probabilities(emb, labels, emb, None)
    a_list, n_list = [], []
    for _ in range(50):
        a, p, n = miner(emb, labels)
        assert bool((labels[a] == labels[p]).all()) and bool((a != p).all()) and bool((labels[a] != labels[n]).all())
        # exactly one triplet per positive pair
        pos_pairs = (labels[:, None] == labels[None, :]).sum() - len(labels)
        assert len(a) == int(pos_pairs)
        a_list.append(a)
        n_list.append(n)
    a, n = torch.cat(a_list), torch.cat(n_list)
    freq = torch.bincount(n[a == 0], minlength=64).double()
    assert freq.sum() > 1000
    freq = freq / freq.sum()
    assert (freq - probs[0].double()).abs().max() < 0.03
    # with an upper cutoff, negatives beyond it are never drawn (unless a row has none left: uniform fallback)
    emb, labels = batch(3, n=16, d=5, classes=4)
    x = torch.nn.functional.normalize(emb.double(), dim=1)
    capped = DistanceWeightedMiner(nonzero_loss_cutoff=1.2)
    pc = capped.sampling_probabilities(emb, labels, emb, None)
    full = torch.cdist(x, x)
    neg = labels[:, None] != labels[None, :]
    rows_ok = ((full <= 1.2) & neg).any(1)
    assert bool((pc[rows_ok][(full[rows_ok] > 1.2)] == 0).all())
    torch.testing.assert_close(pc.sum(1), torch.ones(16, dtype=pc.dtype))


def test_distance_weighted_with_reference_set():
    emb, labels = batch(6, n=12, classes=3)
    ref, ref_labels = batch(7, n=20, classes=3)
    a, p, n = DistanceWeightedMiner(seed=1)(emb, labels, ref, ref_labels)
    assert bool((labels[a] == ref_labels[p]).all()) and bool((labels[a] != ref_labels[n]).all())
    # one triplet per (query, same-label reference) pair; a query may meet an identical reference index
    assert len(a) == int((labels[:, None] == ref_labels[None, :]).sum())
    assert int(n.max()) < 20 and int(p.max()) < 20


def test_distance_weighted_is_reproducible_with_seed():
    emb, labels = batch(4)
    a = DistanceWeightedMiner(seed=5)(emb, labels)
    b = DistanceWeightedMiner(seed=5)(emb, labels)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name", ["TripletMarginMiner", "BatchHardMiner", "PairMarginMiner", "MultiSimilarityMiner",
                                  "DistanceWeightedMiner", "InterClassTripletMiner"])
def test_a_scale_the_labels_do_not_have_is_an_input_error_as_for_losses(name):
    """Column 3 of [B, 3] labels (or -4) was a bare IndexError from inside the miner."""
    emb = torch.nn.functional.normalize(torch.randn(12, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    labels = torch.stack([torch.arange(12) // 2, torch.arange(12) // 4, torch.arange(12) // 6], dim=1)
    assert MINERS[name](scale=-3)(emb, labels) is not None  # the coarsest column, counted from the end
    for scale in (3, -4):
        with pytest.raises(InputError) as err:
            MINERS[name](scale=scale)(emb, labels)
        assert err.value.key == "labels" and err.value.message == \
            f"scale {scale} out of range for labels with 3 scale(s)"
    with pytest.raises(InputError) as err:  # a column the batch has but the reference set does not
        MINERS[name](scale=2)(emb, labels, emb, labels[:, :1])
    assert (err.value.key, err.value.message) == ("ref_labels", "scale 2 out of range for labels with 1 scale(s)")


MINER_NAMES = ["TripletMarginMiner", "BatchHardMiner", "PairMarginMiner", "MultiSimilarityMiner",
               "DistanceWeightedMiner", "InterClassTripletMiner"]


@pytest.mark.parametrize("name", MINER_NAMES)
@pytest.mark.parametrize("scale", [1.0, True, "1", None])
def test_a_scale_that_is_no_integer_is_the_losses_input_error(name, scale):
    """A float scale was a raw IndexError, True a RuntimeError from tuples.py, "1" a TypeError (losses refused them
    with this message; build_miner passes scale=1.0 through to the call)."""
    emb = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.stack([torch.arange(8) // 2, torch.arange(8) // 4], dim=1)
    with pytest.raises(InputError) as err:
        MINERS[name](scale=scale)(emb, labels)
    assert (err.value.key, err.value.message) == ("labels", f"scale {scale!r} is not a label column (an integer)")
    with pytest.raises(InputError) as err:  # built from a config-like call too
        build_miner(name, scale=scale)(emb, labels)
    assert err.value.message == f"scale {scale!r} is not a label column (an integer)"


@pytest.mark.parametrize("name", MINER_NAMES)
def test_ref_labels_without_ref_emb_is_refused_as_by_the_losses(name):
    """They were silently ignored (the losses and docs/losses.md: an error)."""
    from dynametric.losses import TripletMarginLoss

    emb, labels = batch(2, n=8)
    with pytest.raises(InputError) as mined:
        MINERS[name]()(emb, labels, None, labels.clone())
    with pytest.raises(InputError) as lost:
        TripletMarginLoss()(emb, labels, None, None, labels.clone())
    assert (mined.value.key, mined.value.message) == (lost.value.key, lost.value.message) == \
        ("ref_emb", "ref_emb and ref_labels must be given together")
