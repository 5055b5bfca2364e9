"""Batch samplers: composition, coverage, determinism, rank-disjointness, exact resume, errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynametric.data.samplers import HierarchicalSampler, MPerClassSampler, RandomBatchSampler, ThreeScaleSampler
from dynametric.errors import InputError


def hierarchy_labels(n_coarse: int = 3, middle_per_coarse: int = 2, fine_per_middle: int = 3, per_fine: int = 8,
                     seed: int = 0) -> torch.Tensor:
    """[N, 3] labels (fine, middle, coarse), nested, rows shuffled, with non-contiguous raw ids."""
    rows = []
    for c in range(n_coarse):
        for m in range(middle_per_coarse):
            mid = c * middle_per_coarse + m
            for f in range(fine_per_middle):
                fine = mid * fine_per_middle + f
                rows += [(10 * fine + 7, 3 * mid + 1, 100 + c)] * per_fine
    perm = np.random.default_rng(seed).permutation(len(rows))
    return torch.tensor(rows)[perm]


# --------------------------------------------------------------------------------------------------- MPerClass
def test_mperclass_batch_composition_and_full_coverage():
    labels = hierarchy_labels(per_fine=8)  # 18 fine classes x 8 images, m=4 -> 36 chunks, P=4 -> 9 batches
    s = MPerClassSampler(labels, m=4, batch_size=16, seed=3)
    batches = list(s)
    assert len(batches) == len(s) == 9
    for b in batches:
        assert len(b) == 16
        y = labels[b, 0].view(4, 4)  # rows grouped by class, m consecutive rows each
        assert (y == y[:, :1]).all()
        assert len(set(y[:, 0].tolist())) == 4
    seen = Counter(i for b in batches for i in b)
    assert sorted(seen) == list(range(len(labels)))  # every sample visited exactly once
    assert set(seen.values()) == {1}


def test_mperclass_on_coarser_scale_and_every_sample_once():
    labels = hierarchy_labels(per_fine=4)  # 6 middle classes x 12 images
    s = MPerClassSampler(labels, m=6, batch_size=12, scale=1, seed=0)
    batches = list(s)
    assert len(batches) == 6  # 12 chunks / 2 classes per batch
    for b in batches:
        y = labels[b, 1].view(2, 6)
        assert (y == y[:, :1]).all() and y[0, 0] != y[1, 0]
    assert sorted(i for b in batches for i in b) == list(range(len(labels)))


def test_mperclass_small_classes_sampled_with_replacement():
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])  # all classes smaller than m=4
    s = MPerClassSampler(labels, m=4, batch_size=8, iterations_per_epoch=5, seed=1)
    batches = list(s)
    assert len(batches) == 5
    for b in batches:
        y = labels[b].view(2, 4)
        assert (y == y[:, :1]).all() and y[0, 0] != y[1, 0]
    # every sample of a small class appears in its first chunk (replacement only fills up)
    assert set(i for b in batches for i in b) == set(range(len(labels)))


def test_mperclass_determinism_and_epochs():
    labels = hierarchy_labels()
    a = MPerClassSampler(labels, m=4, batch_size=16, seed=5)
    b = MPerClassSampler(labels, m=4, batch_size=16, seed=5)
    c = MPerClassSampler(labels, m=4, batch_size=16, seed=6)
    assert list(a) == list(b)
    assert list(a) != list(c)
    first = list(a)
    a.set_epoch(1)
    b.set_epoch(1)
    assert list(a) == list(b) != first
    a.set_epoch(0)
    assert list(a) == first


def test_mperclass_ranks_disjoint_and_same_epoch():
    labels = hierarchy_labels(per_fine=8)
    ranks = [MPerClassSampler(labels, m=4, batch_size=8, seed=11, rank=r, world_size=3) for r in range(3)]
    per_rank = [list(s) for s in ranks]
    assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(ranks[0]) == 36 // 2 // 3
    flat = [tuple(b) for bs in per_rank for b in bs]
    assert len(set(flat)) == len(flat)
    samples = [i for bs in per_rank for b in bs for i in b]
    assert len(samples) == len(set(samples)) == len(labels)  # disjoint and together they cover the epoch
    # all ranks agree on the global epoch: a step's batches, rank by rank, are the batch one process draws with a
    # batch three times as large (3 x 2 distinct classes)
    single = MPerClassSampler(labels, m=4, batch_size=24, seed=11)
    assert [sum(step, []) for step in zip(*per_rank)] == list(single)


def test_mperclass_resume_mid_epoch_exact():
    labels = hierarchy_labels()
    s = MPerClassSampler(labels, m=4, batch_size=16, seed=2, iterations_per_epoch=7)
    s.set_epoch(4)
    full = list(s)
    it = iter(s)
    got = [next(it) for _ in range(3)]
    state = s.state_dict()
    assert state["epoch"] == 4 and state["position"] == 3
    fresh = MPerClassSampler(labels, m=4, batch_size=16, seed=2, iterations_per_epoch=7)
    fresh.load_state_dict(state)
    rest = list(fresh)
    assert got + rest == full
    assert list(fresh) == full  # the iterator after that starts the epoch from the beginning
    with pytest.raises(InputError, match="seed"):
        MPerClassSampler(labels, m=4, batch_size=16, seed=3, iterations_per_epoch=7).load_state_dict(state)
    with pytest.raises(InputError, match="batch_size"):
        MPerClassSampler(labels, m=4, batch_size=8, seed=2, iterations_per_epoch=7).load_state_dict(state)


def test_mperclass_iterations_beyond_one_pass_keep_balance():
    labels = hierarchy_labels(per_fine=4)  # 18 chunks per pass
    s = MPerClassSampler(labels, m=4, batch_size=12, iterations_per_epoch=12)  # 36 chunks = 2 passes
    counts = Counter(i for b in s for i in b)
    assert sorted(counts) == list(range(len(labels))) and set(counts.values()) == {2}


@settings(max_examples=40, deadline=None)
@given(sizes=st.lists(st.integers(1, 9), min_size=3, max_size=8), m=st.integers(1, 4), p=st.integers(1, 3),
       seed=st.integers(0, 2**31))
def test_mperclass_property_batches_are_pk(sizes, m, p, seed):
    labels = torch.tensor([c for c, n in enumerate(sizes) for _ in range(n)])
    s = MPerClassSampler(labels, m=m, batch_size=m * p, seed=seed)
    batches = list(s)
    for b in batches:
        y = labels[b].view(p, m)
        assert (y == y[:, :1]).all()
        assert len(set(y[:, 0].tolist())) == p
    chunks = [-(-n // m) for n in sizes]
    if p <= len(sizes) and sum(chunks) % p == 0 and max(chunks) <= sum(chunks) // p:
        # the pass can be packed exactly: the epoch is that pass, every sample is visited
        assert len(batches) == sum(chunks) // p
        assert set(i for b in batches for i in b) == set(range(len(labels)))


def test_mperclass_errors():
    labels = torch.tensor([0, 0, 1, 1])
    with pytest.raises(InputError, match="multiple of m"):
        MPerClassSampler(labels, m=3, batch_size=8)
    with pytest.raises(InputError, match="only 2"):
        MPerClassSampler(labels, m=2, batch_size=6)
    with pytest.raises(InputError, match="rank"):
        MPerClassSampler(labels, m=2, batch_size=4, rank=2, world_size=2)
    with pytest.raises(InputError, match="scale"):
        MPerClassSampler(labels, m=2, batch_size=4, scale=1)
    with pytest.raises(InputError, match="position"):
        sampler = MPerClassSampler(labels, m=2, batch_size=4)
        sampler.load_state_dict({**sampler.state_dict(), "epoch": 0, "position": 99})


def test_mperclass_refuses_pml_s_length_before_new_iter_naming_its_equivalent():
    """PML's MPerClassSampler(labels, m, batch_size, length_before_new_iter) counts indices; ours counts batches per
    rank. The argument was a bare TypeError; the message gives the iterations_per_epoch it corresponds to, which
    yields floor(L / batch_size) batches as PML's epoch of floor(L / batch_size) * batch_size indices does."""
    labels = torch.arange(80) % 10
    with pytest.raises(InputError) as err:
        MPerClassSampler(labels, 2, 8, length_before_new_iter=100)
    assert str(err.value) == (
        "key 'length_before_new_iter': length_before_new_iter is pytorch-metric-learning's epoch length in indices; "
        "here the epoch is iterations_per_epoch batches per rank: give iterations_per_epoch=12 "
        "(length_before_new_iter // batch_size // world_size)")
    with pytest.raises(InputError, match=r"give iterations_per_epoch=6 \(length_before_new_iter // batch_size"):
        MPerClassSampler(labels, 2, 8, world_size=2, length_before_new_iter=100)
    sampler = MPerClassSampler(labels, 2, 8, iterations_per_epoch=12)
    assert len(sampler) == 12 and sum(len(b) for b in sampler) == 100 // 8 * 8


def test_mperclass_with_dataloader():
    labels = hierarchy_labels()
    data = torch.utils.data.TensorDataset(torch.arange(len(labels)), labels)
    s = MPerClassSampler(labels, m=4, batch_size=16, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_sampler=s)
    out = [idx.tolist() for idx, _ in loader]
    assert out == list(s)


# --------------------------------------------------------------------------------------------------- ThreeScale
def test_three_scale_item_classes_follow_i_mod_c_in_first_seen_order():
    labels = hierarchy_labels(per_fine=4, seed=4)  # 72 images, K=4 -> 18 items
    s = ThreeScaleSampler(labels, k=4, items_per_batch=3, seed=0)
    assert len(s) == 6 and s.batch_size == 36
    first_seen = [list(dict.fromkeys(labels[:, j].tolist())) for j in range(3)]
    item_classes = []
    for b in s:
        rows = torch.tensor(b).view(3, 3, 4)  # items x scales x K
        for item in rows:
            cls = []
            for j in range(3):
                y = labels[item[j], j]
                assert (y == y[0]).all()  # K images of one class at that scale
                assert len(set(item[j].tolist())) == 4  # drawn without replacement (classes have >= 4 images)
                cls.append(int(y[0]))
            item_classes.append(tuple(cls))
    # the items are exactly i = 0..17 (shuffled): class of scale j is first_seen[j][i mod C_j]
    expected = Counter(tuple(first_seen[j][i % len(first_seen[j])] for j in range(3)) for i in range(18))
    assert Counter(item_classes) == expected


def test_three_scale_chunk_layout_matches_multiscale_loss():
    from dynametric.losses.multiscale import three_scale_chunks

    labels = hierarchy_labels()
    s = ThreeScaleSampler(labels, k=2, items_per_batch=5)
    chunks = s.chunk_layout()
    assert len(chunks) == 3 and all(len(c) == 10 for c in chunks)
    for mine, theirs in zip(chunks, three_scale_chunks(s.batch_size, 2, 3)):
        assert torch.equal(mine, theirs)
    assert [sc for sc, _ in s.scale_chunks] == [0, 1, 2]
    b = torch.tensor(next(iter(s)))
    for j, rows in enumerate(chunks):  # each chunk holds 5 pairs of one class at its own scale
        y = labels[b[rows], j].view(5, 2)
        assert (y == y[:, :1]).all()
    for mine, theirs in zip(s.loss_chunks(s.batch_size), chunks):
        assert torch.equal(mine, theirs)


def test_three_scale_uses_all_images_of_a_class_before_repeating():
    labels = torch.tensor([[0, 0, 0]] * 8 + [[1, 0, 0]] * 8)  # K=4: 4 items; fine classes alternate
    s = ThreeScaleSampler(labels, k=4, items_per_batch=1, seed=9)
    fine_rows = [b[:4] for b in s]
    per_class = {0: [], 1: []}
    for rows in fine_rows:
        per_class[int(labels[rows[0], 0])] += rows
    assert sorted(per_class[0]) == list(range(8)) and sorted(per_class[1]) == list(range(8, 16))


def test_three_scale_small_class_with_replacement_and_ranks():
    labels = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 0, 0], [2, 1, 0]] * 3)
    ranks = [ThreeScaleSampler(labels, k=4, items_per_batch=1, seed=1, rank=r, world_size=3) for r in range(3)]
    got = [list(s) for s in ranks]
    assert all(len(g) == 1 for g in got)
    glob = ThreeScaleSampler(labels, k=4, items_per_batch=1, seed=1, iterations_per_epoch=3).epoch_batches()
    assert [g[0] for g in got] == glob
    for b in glob:
        y = labels[b[:4], 0]
        assert (y == y[0]).all()


def test_three_scale_resume_and_determinism():
    labels = hierarchy_labels(per_fine=6)
    a = ThreeScaleSampler(labels, k=3, items_per_batch=4, seed=7)
    a.set_epoch(2)
    full = list(a)
    it = iter(a)
    head = [next(it) for _ in range(4)]
    b = ThreeScaleSampler(labels, k=3, items_per_batch=4, seed=7)
    b.load_state_dict(a.state_dict())
    assert head + list(b) == full
    c = ThreeScaleSampler(labels, k=3, items_per_batch=4, seed=7)
    c.set_epoch(3)
    assert list(c) != full


def _fine_chunk_classes(s: ThreeScaleSampler, labels: torch.Tensor, epoch: int) -> Counter:
    rows = s.chunk_layout()[0]
    return Counter(int(c) for b in s.epoch_batches(epoch) for c in labels[torch.tensor(b)[rows], 0].view(-1, s.k)[:, 0])


def test_three_scale_every_class_gets_chunks_over_epochs():
    # 100 fine classes of 3 images, K=4: an epoch has floor(300 / 4) = 75 items, fewer than the classes
    fine = torch.arange(100).repeat_interleave(3)
    labels = torch.stack([fine, fine // 10, fine // 50], 1)
    s = ThreeScaleSampler(labels, k=4, items_per_batch=5, seed=3)
    assert len(s) == 15  # 75 items, all in whole batches
    per_epoch = [_fine_chunk_classes(s, labels, e) for e in range(4)]
    assert sorted(per_epoch[0]) == list(range(75))  # epoch 0 as DyML: items 0..74 -> classes 0..74
    assert sorted(per_epoch[1]) == sorted([*range(75, 100), *range(50)])  # items 75..149: the window moves on
    for e in range(3):  # ceil(100 / 75) = 2 consecutive epochs give every class a chunk
        assert set(per_epoch[e]) | set(per_epoch[e + 1]) == set(range(100))
    total = sum(per_epoch, Counter())  # epochs 0..3 hold items 0..299: every class exactly 3 times
    assert set(total.values()) == {3} and len(total) == 100
    # the other scales: every middle and coarse class, every epoch
    for e in range(4):
        b = torch.tensor(s.epoch_batches(e))
        mid, coarse = s.chunk_layout()[1], s.chunk_layout()[2]
        assert set(labels[b[:, mid], 1].view(-1).tolist()) == set(range(10))
        assert set(labels[b[:, coarse], 2].view(-1).tolist()) == {0, 1}
    # deterministic per (seed, epoch) and exactly resumable in a later epoch
    again = ThreeScaleSampler(labels, k=4, items_per_batch=5, seed=3)
    again.set_epoch(6)
    full = list(again)
    assert full == s.epoch_batches(6) and full != s.epoch_batches(5)
    it = iter(again)
    head = [next(it) for _ in range(7)]
    resumed = ThreeScaleSampler(labels, k=4, items_per_batch=5, seed=3)
    resumed.load_state_dict(again.state_dict())
    assert head + list(resumed) == full


def test_three_scale_errors():
    labels = hierarchy_labels(per_fine=1)  # 18 images
    with pytest.raises(InputError, match="items_per_batch"):
        ThreeScaleSampler(labels, k=4, items_per_batch=8)
    with pytest.raises(InputError, match="scales"):
        ThreeScaleSampler(labels, k=2, items_per_batch=2, scales=[0, 3])
    with pytest.raises(InputError, match="rows"):
        ThreeScaleSampler(labels, k=2, items_per_batch=2).chunk_layout(10)


# --------------------------------------------------------------------------------------------------- Hierarchical
def test_hierarchical_batches_share_parents():
    labels = hierarchy_labels(n_coarse=3, middle_per_coarse=2, fine_per_middle=3, per_fine=8)
    s = HierarchicalSampler(labels, batch_size=24, samples_per_class=4, parents_per_batch=2, scale=0,
                            parent_scale=1, seed=0)
    batches = list(s)
    assert len(batches) == len(s) == 36 // 6
    for b in batches:
        rows = torch.tensor(b).view(2, 3, 4)  # parents x classes x K
        fine = labels[rows, 0]
        mid = labels[rows, 1]
        assert (fine == fine[..., :1]).all()
        assert (mid == mid[:, :1, :1]).all()  # every class of a parent group shares that parent
        assert mid[0, 0, 0] != mid[1, 0, 0]
        assert len(set(fine[..., 0].flatten().tolist())) == 6  # distinct fine classes
    seen = Counter(i for b in batches for i in b)
    assert len(seen) == len(labels) and set(seen.values()) == {1}


@pytest.mark.parametrize("seed", range(4))
def test_hierarchical_exact_coverage_when_groups_do_not_divide_parents(seed):
    labels = hierarchy_labels(per_fine=8)  # 6 parents x 3 classes x 2 chunks; groups of 2 classes per parent
    s = HierarchicalSampler(labels, batch_size=16, samples_per_class=4, parents_per_batch=2, seed=seed)
    seen = Counter(i for b in s for i in b)
    assert len(s) == 9 and len(seen) == len(labels) and set(seen.values()) == {1}


@pytest.mark.parametrize("seed", range(4))
def test_hierarchical_exact_coverage_on_uneven_tree(seed):
    rows, fine = [], 0
    for parent, n_kids in enumerate([2, 4, 6, 2, 4]):  # 4, 8, 12, 4, 8 chunks: whole groups of 2, 18 groups
        for _ in range(n_kids):
            rows += [(fine, parent)] * 8
            fine += 1
    labels = torch.tensor(rows)
    s = HierarchicalSampler(labels, batch_size=16, samples_per_class=4, parents_per_batch=2, seed=seed)
    seen = Counter(i for b in s for i in b)
    assert len(s) == 9 and len(seen) == len(labels) and set(seen.values()) == {1}


def test_hierarchical_repeats_classes_when_parent_is_small_and_checks_tree():
    # parents 0 and 1 have two classes each, parent 2 one: its groups of two classes repeat class 4
    labels = torch.tensor([[0, 0]] * 5 + [[1, 0]] * 5 + [[2, 1]] * 5 + [[3, 1]] * 5 + [[4, 2]] * 5)
    s = HierarchicalSampler(labels, batch_size=8, samples_per_class=2, parents_per_batch=2, iterations_per_epoch=6)
    repeated = 0
    for b in s:
        rows = torch.tensor(b).view(2, 2, 2)
        assert (labels[rows, 1] == labels[rows, 1][:, :1, :1]).all()
        for group in rows:
            if int(labels[group[0, 0], 1]) == 2:
                assert labels[group, 0].unique().tolist() == [4]
                assert len(set(group.view(-1).tolist())) >= 3  # 5 images: the repeat is another chunk
                repeated += 1
            else:
                assert len(labels[group[:, 0], 0].unique()) == 2
    assert repeated > 0
    # a batch that only repeated classes could fill is refused, naming the largest that fits (2 x 2 x 2)
    with pytest.raises(InputError) as info:
        HierarchicalSampler(labels, batch_size=12, samples_per_class=2, parents_per_batch=2)
    assert (info.value.key, info.value.message) == (
        "batch_size", "a batch needs 2 parents (scale 1) with 3 distinct classes (scale 0) each (batch_size 12 / "
        "(samples_per_class 2 x parents_per_batch 2)) but the parent with the 2nd most classes has 2: the largest "
        "batch is batch_size 8")
    bad = torch.tensor([[0, 0], [0, 1], [1, 1]])
    with pytest.raises(InputError, match="parents"):
        HierarchicalSampler(bad, batch_size=2, samples_per_class=1, parents_per_batch=2)
    with pytest.raises(InputError, match="only 3"):
        HierarchicalSampler(labels, batch_size=8, samples_per_class=1, parents_per_batch=4)


def test_hierarchical_ranks_disjoint_and_resume():
    labels = hierarchy_labels(fine_per_middle=2, per_fine=8)  # 6 parents x 2 classes x 2 chunks: packs exactly
    ranks = [HierarchicalSampler(labels, batch_size=16, samples_per_class=4, seed=4, rank=r, world_size=2)
             for r in range(2)]
    got = [list(s) for s in ranks]
    assert len(got[0]) == len(got[1]) == 24 // 4 // 2
    samples = [i for g in got for b in g for i in b]
    assert len(samples) == len(set(samples)) == len(labels)
    r1 = ranks[1]
    it = iter(r1)
    head = [next(it), next(it)]
    again = HierarchicalSampler(labels, batch_size=16, samples_per_class=4, seed=4, rank=1, world_size=2)
    again.load_state_dict(r1.state_dict())
    assert head + list(again) == got[1]
    with pytest.raises(InputError, match="world_size"):
        HierarchicalSampler(labels, batch_size=16, samples_per_class=4, seed=4).load_state_dict(r1.state_dict())


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(["mperclass", "three", "hier"]), epoch=st.integers(0, 5), cut=st.integers(0, 6),
       world=st.integers(1, 3), seed=st.integers(0, 2**31))
def test_property_resume_at_any_position_and_rank(kind, epoch, cut, world, seed):
    labels = hierarchy_labels(per_fine=6)

    def make(rank: int):
        if kind == "mperclass":
            return MPerClassSampler(labels, m=3, batch_size=9, seed=seed, rank=rank, world_size=world)
        if kind == "three":
            return ThreeScaleSampler(labels, k=3, items_per_batch=2, seed=seed, rank=rank, world_size=world)
        return HierarchicalSampler(labels, batch_size=12, samples_per_class=2, seed=seed, rank=rank,
                                   world_size=world)

    per_rank = []
    for rank in range(world):
        s = make(rank)
        s.set_epoch(epoch)
        full = list(s)
        per_rank.append(full)
        pos = min(cut, len(full))
        it = iter(s)
        head = [next(it) for _ in range(pos)]
        resumed = make(rank)
        resumed.load_state_dict(s.state_dict())
        assert head + list(resumed) == full
    flat = [tuple(b) for bs in per_rank for b in bs]
    assert len({len(bs) for bs in per_rank}) == 1
    assert len(set(flat)) == len(flat)  # no batch is given to two ranks


@settings(max_examples=20, deadline=None)
@given(n_parents=st.integers(2, 5), kids=st.lists(st.integers(1, 4), min_size=5, max_size=5),
       per_class=st.integers(1, 5), k=st.integers(1, 3), classes_per_parent=st.integers(1, 3),
       seed=st.integers(0, 2**31))
def test_property_hierarchical_groups_share_parent(n_parents, kids, per_class, k, classes_per_parent, seed):
    rows = []
    fine = 0
    for p in range(n_parents):
        for _ in range(kids[p]):
            rows += [(fine, p)] * per_class
            fine += 1
    labels = torch.tensor(rows)
    classes_per_parent = min(classes_per_parent, sorted(kids[:n_parents])[-2])  # two parents can fill a group
    s = HierarchicalSampler(labels, batch_size=2 * classes_per_parent * k, samples_per_class=k,
                            parents_per_batch=2, seed=seed)
    for b in s:
        grid = torch.tensor(b).view(2, classes_per_parent, k)
        fine_l, parent_l = labels[grid, 0], labels[grid, 1]
        assert (fine_l == fine_l[..., :1]).all()
        assert (parent_l == parent_l[:, :1, :1]).all() and parent_l[0, 0, 0] != parent_l[1, 0, 0]
        for g in range(2):  # classes in a group are distinct whenever the parent has enough classes
            n_kids = kids[int(parent_l[g, 0, 0])]
            assert len(set(fine_l[g, :, 0].tolist())) == min(n_kids, classes_per_parent)


def test_three_scale_batches_feed_multiscale_loss_chunkwise():
    from dynametric.data.synthetic import SyntheticHierarchy
    from dynametric.losses.multiscale import MultiScaleLoss

    ds = SyntheticHierarchy("train", images_per_class=4, fine_per_shape={"train": 2})
    s = ThreeScaleSampler(ds.labels, k=2, items_per_batch=4, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=s)
    x, y = next(iter(loader))
    assert x.shape == (24, 3, 32, 32) and y.shape == (24, 3)
    emb = torch.randn(24, 8, requires_grad=True)
    loss = MultiScaleLoss("TripletMarginLoss", num_scales=3, chunks=s.loss_chunks)
    value = loss(emb, y)
    value.backward()
    assert torch.isfinite(value) and len(loss.last_scale_losses) == 3
    # only the rows of a scale's chunk enter that scale's loss: moving the other rows changes nothing at scale 0
    rows0 = s.chunk_layout()[0]
    other = torch.ones(24, dtype=torch.bool)
    other[rows0] = False
    emb2 = emb.detach().clone()
    emb2[other] = torch.randn(int(other.sum()), 8)
    loss(emb2, y)
    first = loss.last_scale_losses[0]
    loss(emb.detach(), y)
    assert torch.allclose(first, loss.last_scale_losses[0])


def test_resume_refuses_other_labels():
    labels = hierarchy_labels()
    s = MPerClassSampler(labels, m=4, batch_size=16)
    other = labels.clone()
    other[0, 0] = 9999
    with pytest.raises(InputError, match="labels_digest"):
        MPerClassSampler(other, m=4, batch_size=16).load_state_dict(s.state_dict())


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 7), min_size=2, max_size=7), k=st.integers(1, 4), ipb=st.integers(1, 3),
       seed=st.integers(0, 2**31))
def test_property_three_scale_items(sizes, k, ipb, seed):
    rows = [(c, c // 2, c // 4) for c, n in enumerate(sizes) for _ in range(n)]
    labels = torch.tensor(rows)[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))]
    n_items = len(rows) // k
    if n_items < ipb:
        with pytest.raises(InputError):
            ThreeScaleSampler(labels, k=k, items_per_batch=ipb, seed=seed)
        return
    s = ThreeScaleSampler(labels, k=k, items_per_batch=ipb, seed=seed)
    assert len(s) == n_items // ipb
    first_seen = [list(dict.fromkeys(labels[:, j].tolist())) for j in range(3)]
    got = Counter()
    for b in s:
        item_rows = torch.tensor(b).view(ipb, 3, k)
        for item in item_rows:
            key = []
            for j in range(3):
                y = labels[item[j], j]
                assert (y == y[0]).all()
                n_c = int((labels[:, j] == y[0]).sum())
                if n_c >= k:
                    assert len(set(item[j].tolist())) == k  # without replacement when the class is big enough
                key.append(int(y[0]))
            got[tuple(key)] += 1
    # the batches hold len(s) * ipb of the n_items items i -> (first_seen[j][i mod C_j])_j
    possible = Counter(tuple(first_seen[j][i % len(first_seen[j])] for j in range(3)) for i in range(n_items))
    assert sum(got.values()) == len(s) * ipb
    assert all(got[key] <= possible[key] for key in got)


def test_build_sampler_registry():
    from dynametric.data.samplers import SAMPLERS, build_sampler
    from dynametric.errors import ConfigError

    labels = hierarchy_labels()
    s = build_sampler("MPerClassSampler", labels, m=4, batch_size=16, seed=3)
    assert list(s) == list(MPerClassSampler(labels, m=4, batch_size=16, seed=3))
    assert set(SAMPLERS) == {"MPerClassSampler", "ThreeScaleSampler", "HierarchicalSampler"}
    with pytest.raises(ConfigError, match="unknown sampler"):
        build_sampler("RandomSampler", labels)
    with pytest.raises(ConfigError, match="items_per_batch"):
        build_sampler("MPerClassSampler", labels, m=4, batch_size=16, items_per_batch=3)


@pytest.mark.parametrize("drop_last", [False, True])
def test_a_batch_sampler_given_as_sampler_is_refused(drop_last):
    """PML's MPerClassSampler is an index sampler, passed as sampler=; ours (same name) is a batch sampler: used the
    PML way it silently gave one batch of shape [5, 8] (five of our batches as one). Now the loader's first
    iteration raises, and batch_sampler= still gives P x K batches."""
    from torch.utils.data import DataLoader, TensorDataset

    labels = torch.arange(40) // 4  # 10 classes x 4
    ds = TensorDataset(torch.randn(40, 3), labels)
    hier = torch.stack([labels, labels // 2], dim=1)
    samplers = [MPerClassSampler(labels, m=4, batch_size=8), HierarchicalSampler(hier, batch_size=8,
                samples_per_class=2, parents_per_batch=2), ThreeScaleSampler(hierarchy_labels(), k=2,
                items_per_batch=1), RandomBatchSampler(40, 8)]
    for sampler in samplers:
        with pytest.raises(InputError, match=r"yields whole batches: pass it as DataLoader\(dataset, "
                           r"batch_sampler=sampler\) without batch_size, not as sampler=") as err:
            next(iter(DataLoader(ds, batch_size=8, sampler=sampler, drop_last=drop_last)))
        assert "\n" not in str(err.value) and "key 'sampler'" in str(err.value)
    sampler = samplers[0]
    batches = [b[1].tolist() for b in DataLoader(ds, batch_sampler=sampler)]
    assert len(batches) == len(sampler) == 5
    assert all(len(b) == 8 and sorted(Counter(b).values()) == [4, 4] for b in batches)
    assert list(iter(sampler)) == sampler.epoch_batches()  # iterating it directly is unchanged
    random = samplers[3]  # the random sampler too: batch_sampler= gives its batches, iterating it directly as well
    assert [b[1].shape[0] for b in DataLoader(ds, batch_sampler=random)] == [8] * 5
    assert [len(b) for b in random] == [8] * 5


# --------------------------------------------------------------------------------------------------- Random
def test_random_sampler_refuses_fewer_items_than_one_step():
    from dynametric.data.samplers import RandomBatchSampler

    with pytest.raises(InputError, match=r"^key 'batch_size': 10 items give no batch: one step takes batch_size 32 x "
                                         r"1 rank\(s\) = 32 items; lower the batch size$"):
        RandomBatchSampler(10, 32)
    with pytest.raises(InputError, match="10 items give no batch"):
        RandomBatchSampler(10, 32, iterations_per_epoch=4)  # was [32, 8, 0, 0]: a short batch and empty ones
    with pytest.raises(InputError, match=r"= 40 items"):
        RandomBatchSampler(30, 20, world_size=2, rank=1)
    for kwargs, key in (({"batch_size": 0}, "batch_size"), ({"rank": 2, "world_size": 2}, "rank"),
                        ({"iterations_per_epoch": 0}, "iterations_per_epoch")):
        with pytest.raises(InputError) as info:
            RandomBatchSampler(**{"num_samples": 100, "batch_size": 4, **kwargs})
        assert info.value.key == key
    assert [len(b) for b in RandomBatchSampler(32, 32)] == [32]  # exactly one step


@pytest.mark.parametrize("n, bs, world, iterations", [(100, 32, 2, 5), (10, 3, 1, 7), (50, 7, 3, 4), (64, 8, 2, 9)])
def test_random_sampler_batches_are_full_and_never_repeat_an_item(n, bs, world, iterations):
    from dynametric.data.samplers import RandomBatchSampler

    ranks = [list(RandomBatchSampler(n, bs, seed=3, rank=r, world_size=world, iterations_per_epoch=iterations))
             for r in range(world)]
    per_pass = n // (bs * world)
    for batches in ranks:
        assert len(batches) == iterations and all(len(b) == bs and len(set(b)) == bs for b in batches)
    for step in range(iterations):  # the ranks' batches of one step are disjoint and come from one pass
        rows = [x for batches in ranks for x in batches[step]]
        assert len(set(rows)) == bs * world
    for start in range(0, iterations, per_pass):  # a pass uses each item at most once
        rows = [x for batches in ranks for b in batches[start:start + per_pass] for x in b]
        assert len(rows) == len(set(rows))
    # the epoch's first pass is what it was (a seeded permutation of the items); later epochs differ
    first = RandomBatchSampler(n, bs, seed=3, rank=0, world_size=world)
    assert list(first) == ranks[0][:per_pass]
    first.set_epoch(1)
    assert list(first) != ranks[0][:per_pass]


# --------------------------------------------------------------------------------------------------- QA findings
@pytest.mark.parametrize("make", [
    lambda seed: RandomBatchSampler(100, 8, seed=seed),
    lambda seed: MPerClassSampler(torch.arange(40) // 4, 4, 8, seed=seed),
    lambda seed: ThreeScaleSampler(hierarchy_labels(), k=2, items_per_batch=2, seed=seed),
    lambda seed: HierarchicalSampler(hierarchy_labels(), 8, samples_per_class=2, seed=seed),
])
@pytest.mark.parametrize("seed", [-1, 2**32, 2**64 + 3, 1.5, True, "3"])
def test_every_sampler_refuses_a_seed_outside_0_to_2_32(make, seed):
    # -1 was 2**64 - 1 (or numpy's ValueError at the first iteration of RandomBatchSampler), 2**64 + 3 was 3,
    # 1.5 was 1
    with pytest.raises(InputError) as info:
        make(seed)
    assert (info.value.key, info.value.message) == (
        "seed", f"expected a seed, an integer in [0, 4294967295] (2**32 - 1), got {seed!r}")
    assert make(2**32 - 1).seed == 2**32 - 1 and make(np.int64(3)).seed == 3


@pytest.mark.parametrize("key, value", [("parent_scale", 1.0), ("parent_scale", True), ("scale", False),
                                        ("scale", 0.0)])
def test_hierarchical_scales_must_be_integers(key, value):
    labels = hierarchy_labels()
    kwargs = {"scale": 0, "parent_scale": 1, key: value}
    with pytest.raises(InputError) as info:
        HierarchicalSampler(labels, 8, samples_per_class=2, **kwargs)
    assert (info.value.key, info.value.message) == (key, f"expected an integer (a label column), got {value!r}")


@pytest.mark.parametrize("scales, message", [
    ([0, 0], "expected distinct label columns in increasing order (finest first, e.g. [0, 2]), got [0, 0]"),
    ([2, 1, 0], "expected distinct label columns in increasing order (finest first, e.g. [0, 2]), got [2, 1, 0]"),
    ("01", "expected a non-empty list of label columns (integers, finest first, e.g. [0, 2]), got '01'"),
    ([], "expected a non-empty list of label columns (integers, finest first, e.g. [0, 2]), got []"),
    ([0, True], "expected a non-empty list of label columns (integers, finest first, e.g. [0, 2]), got [0, True]"),
    ([0, 1.0], "expected a non-empty list of label columns (integers, finest first, e.g. [0, 2]), got [0, 1.0]"),
    ([-1, 0], "expected label columns in [0, 3), got [-1, 0]"),
    ([0, 3], "expected label columns in [0, 3), got [0, 3]"),
])
def test_three_scale_refuses_bad_scales(scales, message):
    with pytest.raises(InputError) as info:
        ThreeScaleSampler(hierarchy_labels(), k=2, items_per_batch=2, scales=scales)
    assert (info.value.key, info.value.message) == ("scales", message)


def test_three_scale_with_two_of_three_scales_has_two_chunks_per_item():
    from dynametric.data.samplers import SamplerSettings

    labels = hierarchy_labels()  # fine, middle, coarse
    settings = SamplerSettings(batch_size=16, m=2, options={"scales": [0, 2]})
    s = ThreeScaleSampler.from_settings(labels, settings)
    assert (s.items_per_batch, s.batch_size, s.num_scales) == (4, 16, 2)  # 16 / (2 x 2 scales), not 16 / (2 x 3)
    b = torch.tensor(s.epoch_batches(0)[0])
    assert len(b) == 16
    layout = s.chunk_layout()
    assert [c.tolist() for c in layout] == [[0, 1, 4, 5, 8, 9, 12, 13], [2, 3, 6, 7, 10, 11, 14, 15]]
    for col, rows in zip([0, 2], layout):  # chunk i: K images of one class of column scales[i]
        y = labels[b[rows], col].view(4, 2)
        assert (y == y[:, :1]).all()
    chunks = ThreeScaleSampler.loss_chunks_for(2, 3, {"scales": [0, 2]})  # the loss cuts what the sampler lays out
    assert [c.tolist() for c in chunks(16)] == [c.tolist() for c in layout]
    with pytest.raises(InputError) as info:  # 18 rows are not whole items of 2 x 2 images
        ThreeScaleSampler.from_settings(labels, SamplerSettings(batch_size=18, m=2, options={"scales": [0, 2]}))
    assert (info.value.key, info.value.message) == (
        "batch_size", "batch_size 18 must be a multiple of m x scales = 2 x 2 = 4 (an item holds m images at each "
        "of its 2 scale(s))")


def test_three_scale_epochs_take_consecutive_windows_of_items():
    # 100 fine classes of 3 images, K=4: D = 75 items, 4 per batch -> 18 batches of 72 items; epoch e uses items
    # 72e .. 72e + 71 (class = item mod 100), so no item (class) is skipped between epochs
    fine = torch.arange(100).repeat_interleave(3)
    labels = torch.stack([fine, fine // 10, fine // 50], 1)
    s = ThreeScaleSampler(labels, k=4, items_per_batch=4, seed=3)
    assert len(s) == 18
    per_epoch = [_fine_chunk_classes(s, labels, e) for e in range(3)]
    assert per_epoch[0] == Counter(range(72))  # was a random 72 of items 0..74
    assert per_epoch[1] == Counter([*range(72, 100), *range(44)])
    assert per_epoch[2] == Counter(range(44, 100)) + Counter(range(16))
    for e in range(2):  # ceil(100 / 72) = 2 consecutive epochs give every class a chunk
        assert set(per_epoch[e]) | set(per_epoch[e + 1]) == set(range(100))


def test_hierarchical_batch_larger_than_the_tree_is_refused_naming_the_largest():
    fine = np.arange(120) // 4  # 30 classes of 4 images, 3 under each of 10 parents
    labels = torch.as_tensor(np.stack([fine, fine // 3], 1))
    with pytest.raises(InputError) as info:  # was 800 rows of 24 distinct images
        HierarchicalSampler(labels, 800, samples_per_class=4, parents_per_batch=2)
    assert (info.value.key, info.value.message) == (
        "batch_size", "a batch needs 2 parents (scale 1) with 100 distinct classes (scale 0) each (batch_size 800 / "
        "(samples_per_class 4 x parents_per_batch 2)) but the parent with the 2nd most classes has 3: the largest "
        "batch is batch_size 24")
    s = HierarchicalSampler(labels, 24, samples_per_class=4, parents_per_batch=2)
    for b in s:
        assert len(set(b)) == 24  # the largest batch repeats no image
    with pytest.raises(InputError, match="but scale 0 has only 30: the largest batch is batch_size 120$"):
        MPerClassSampler(labels, 4, 124)


@pytest.mark.parametrize("epoch", [-1, 1.7, "3", True, None])
def test_an_epoch_that_is_not_an_integer_from_0_is_one_line(epoch) -> None:
    """set_epoch and load_state_dict took any value: -1 failed at the next batch with numpy's SeedSequence traceback,
    1.7 / "3" / True ran epochs 1 / 3 / 1."""
    labels = torch.arange(8).repeat_interleave(4)
    for sampler in (MPerClassSampler(labels, m=4, batch_size=8), RandomBatchSampler(32, batch_size=8)):
        with pytest.raises(InputError) as info:
            sampler.set_epoch(epoch)
        assert info.value.key == "epoch" and str(info.value) == f"key 'epoch': expected an integer >= 0, got {epoch!r}"
        sampler.set_epoch(np.int64(2))  # numpy integers are integers
        assert sampler.epoch == 2 and isinstance(sampler.epoch, int)
    sampler = MPerClassSampler(labels, m=4, batch_size=8)
    with pytest.raises(InputError) as info:
        sampler.load_state_dict({**sampler.state_dict(), "epoch": epoch})
    assert info.value.key == "epoch"
