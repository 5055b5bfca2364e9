"""The class-balanced samplers draw an epoch a step at a time (the first batch after one step's draws, not after the
whole epoch's plan), and the batches are those of the whole-epoch plan the samplers made before, for every sampler,
world size, rank, seed, epoch and resume position (the reference below is that plan's algorithm, kept here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynametric.data import samplers as S
from dynametric.data.samplers import HierarchicalSampler, MPerClassSampler, ThreeScaleSampler


def labels3(n: int = 600, classes: int = 60, seed: int = 0) -> torch.Tensor:
    """[n, 3] labels (fine, middle, coarse) with uneven class sizes, rows shuffled, non-contiguous raw ids."""
    g = np.random.default_rng(seed)
    fine = g.integers(0, classes, n)
    fine[:classes] = np.arange(classes)
    return torch.as_tensor(np.stack([7 * fine + 3, fine // 4, fine // 12], 1))


# -- the whole-epoch plan of the old code (its algorithm, written out): every global batch of the epoch, in order --
def _old_plan_mperclass(s: MPerClassSampler, epoch: int) -> list[np.ndarray]:
    rng = S._rng(s.seed, epoch)
    count = len(s) * s.world_size
    pool = S._ChunkPool(s.members, s.m, rng)
    pool.new_pass()
    all_classes = np.arange(len(s.members))
    per_step = s.classes_per_batch * s.world_size
    batches: list[np.ndarray] = []
    for _ in range(count // s.world_size):
        chosen = pool.pick(all_classes, per_step)
        if chosen is None:
            pool.new_pass()
            chosen = pool.pick(all_classes, per_step)
        batches.extend(S._cut(np.concatenate([pool.take(int(c)) for c in chosen]), s.world_size))
    return batches


def _old_plan_hier(s: HierarchicalSampler, epoch: int) -> list[np.ndarray]:
    rng = S._rng(s.seed, epoch)
    count = len(s) * s.world_size
    pool = S._ChunkPool(s.members, s.k, rng)
    pool.new_pass()
    parent_ids = np.arange(len(s.parents))
    per_step = s.parents_per_batch * s.world_size
    batches: list[np.ndarray] = []
    for _ in range(count // s.world_size):
        left = np.bincount(s.parent_index, weights=pool.remaining, minlength=len(s.parents))
        if np.count_nonzero(left) < per_step:
            pool.new_pass()
            left = np.bincount(s.parent_index, weights=pool.remaining, minlength=len(s.parents))
        parents = S._weighted_pick(rng, parent_ids, left, per_step, s.classes_per_parent)
        rows = [pool.take(int(c)) for p in parents for c in s._pick_children(pool, int(p))]
        batches.extend(S._cut(np.concatenate(rows), s.world_size))
    return batches


def _old_plan_three(s: ThreeScaleSampler, epoch: int) -> list[np.ndarray]:
    rng = S._rng(s.seed, epoch)
    count = len(s) * s.world_size
    n_items = count * s.items_per_batch
    items = epoch * n_items + rng.permutation(n_items)
    queues = [[np.empty(0, dtype=np.int64) for _ in m] for m in s.scale_members]
    rows = np.empty((n_items, s.num_scales, s.k), dtype=np.int64)
    for j, item in enumerate(items.tolist()):
        for sc, members in enumerate(s.scale_members):
            c = item % len(members)
            rows[j, sc] = s._draw(members[c], queues[sc], c, rng)
    return list(rows.reshape(count, -1))


def _old_children(s: HierarchicalSampler) -> list[np.ndarray]:
    return [np.flatnonzero(s.parent_index == i) for i in range(len(s.parents))]


CONFIGS = {
    "mpc": (lambda r, w, seed, it: MPerClassSampler(labels3(), m=4, batch_size=16, seed=seed, rank=r, world_size=w,
                                                    iterations_per_epoch=it), _old_plan_mperclass),
    "mpc_mid": (lambda r, w, seed, it: MPerClassSampler(labels3(seed=3), m=3, batch_size=9, scale=1, seed=seed,
                                                        rank=r, world_size=w, iterations_per_epoch=it),
                _old_plan_mperclass),
    "hier": (lambda r, w, seed, it: HierarchicalSampler(labels3(), batch_size=16, samples_per_class=2,
                                                        parents_per_batch=2, parent_scale=1, seed=seed, rank=r,
                                                        world_size=w, iterations_per_epoch=it), _old_plan_hier),
    "hier_coarse": (lambda r, w, seed, it: HierarchicalSampler(labels3(seed=1), batch_size=24, samples_per_class=4,
                                                               parents_per_batch=1, parent_scale=2, seed=seed,
                                                               rank=r, world_size=w, iterations_per_epoch=it),
                    _old_plan_hier),
    "three": (lambda r, w, seed, it: ThreeScaleSampler(labels3(), k=3, items_per_batch=4, seed=seed, rank=r,
                                                       world_size=w, iterations_per_epoch=it), _old_plan_three),
    "three_two": (lambda r, w, seed, it: ThreeScaleSampler(labels3(seed=2), k=2, items_per_batch=5, scales=[0, 2],
                                                           seed=seed, rank=r, world_size=w, iterations_per_epoch=it),
                  _old_plan_three),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("seed,iterations", [(0, None), (11, 7), (4242, 40)])  # 40: past one pass (new passes)
def test_lazy_batches_equal_the_old_whole_epoch_plan(name, world, seed, iterations):
    make, plan = CONFIGS[name]
    for epoch in (0, 3):
        for rank in range(world):
            s = make(rank, world, seed, iterations)
            s.set_epoch(epoch)
            expected = [b.tolist() for b in plan(s, epoch)[rank::world]]
            assert len(expected) == len(s) > 0
            assert list(iter(s)) == expected
            assert s.epoch_batches(epoch) == expected
            for position in (1, len(s) // 2, len(s) - 1, len(s)):  # a resume replays up to its position
                r = make(rank, world, seed, iterations)
                r.load_state_dict({**s.state_dict(), "epoch": epoch, "position": position})
                assert list(iter(r)) == expected[position:]
                assert r.state_dict()["position"] == len(s)


def _count(monkeypatch, cls, name):
    calls = []
    original = getattr(cls, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(cls, name, counted)
    return calls


@pytest.mark.parametrize("world", [1, 2])
def test_mperclass_first_batch_comes_after_one_step_s_draws(monkeypatch, world):
    s = MPerClassSampler(labels3(), m=4, batch_size=16, world_size=world, iterations_per_epoch=30)
    picks = _count(monkeypatch, S._ChunkPool, "pick")
    it = iter(s)
    assert picks == []  # iter() draws nothing
    first = next(it)
    assert len(picks) == 1 and len(first) == 16  # one step: one pick of world x P classes (a fresh pass)
    next(it)
    assert len(picks) == 2


def test_hierarchical_first_batch_comes_after_one_step_s_draws(monkeypatch):
    s = HierarchicalSampler(labels3(), batch_size=16, samples_per_class=2, parent_scale=1, iterations_per_epoch=30)
    takes = _count(monkeypatch, S._ChunkPool, "take")
    it = iter(s)
    assert takes == []
    assert len(next(it)) == 16
    assert len(takes) == 8  # the step's 2 parents x 4 classes, one chunk each


def test_three_scale_first_batch_comes_after_one_step_s_draws(monkeypatch):
    s = ThreeScaleSampler(labels3(), k=3, items_per_batch=4, world_size=2)
    draws = _count(monkeypatch, ThreeScaleSampler, "_draw")
    it = iter(s)
    assert draws == []
    next(it)
    assert len(draws) == 2 * 4 * 3  # the step's 2 ranks x 4 items x 3 scales
    assert len(s) > 2


def test_a_resume_does_not_keep_the_epoch_s_batches(monkeypatch):
    """A resume at position p replays p steps' draws and yields from there (the steps are not collected)."""
    s = MPerClassSampler(labels3(), m=4, batch_size=16, iterations_per_epoch=30)
    s.load_state_dict({**s.state_dict(), "position": 10})
    picks = _count(monkeypatch, S._ChunkPool, "pick")
    it = iter(s)
    next(it)
    assert 11 <= len(picks) <= 13  # 11 steps (a new pass may add a pick), not the epoch's 30


@pytest.mark.parametrize("parent_scale", [1, 2])
def test_hierarchical_children_are_the_classes_of_each_parent_in_order(parent_scale):
    s = HierarchicalSampler(labels3(n=900, classes=90, seed=6), batch_size=8, samples_per_class=2,
                            parents_per_batch=2, parent_scale=parent_scale)
    old = _old_children(s)
    assert len(s.children) == len(old) == len(s.parents)
    for new, ref in zip(s.children, old):
        assert new.tolist() == ref.tolist() and new.dtype == np.int64
    # the parents in first-seen order of the classes, each class's position among them
    lab = labels3(n=900, classes=90, seed=6)
    parent_of = {int(f): int(p) for f, p in zip(lab[:, 0], lab[:, parent_scale])}
    assert [s.parents[i] for i in s.parent_index] == [parent_of[int(c)] for c in s.classes]


def test_hierarchical_names_the_first_class_with_two_parents():
    lab = labels3(n=300, classes=30)
    fine = lab[:, 0].tolist()
    bad = [i for i, f in enumerate(fine) if f in (7 * 5 + 3, 7 * 9 + 3)]
    lab[bad[-1], 1] = 99  # class 38 (or 66) gets a second parent
    lab[bad[0], 1] = 98
    first_seen = [c for c in dict.fromkeys(fine) if c in (38, 66)]
    with pytest.raises(S.InputError, match=rf"class {first_seen[0]} of scale 0 has 2 parents at scale 1"):
        HierarchicalSampler(lab, batch_size=8, samples_per_class=2)


def test_hierarchical_groups_classes_by_parent_without_a_pass_per_class(monkeypatch):
    """The classes' parents and the parents' classes come from a few whole-array operations, not one ``np.unique``
    (or one scan of every class) per class or per parent: 90 classes under 23 parents take a handful of calls."""
    uniques = _count(monkeypatch, np, "unique")
    scans = _count(monkeypatch, np, "flatnonzero")
    s = HierarchicalSampler(labels3(n=900, classes=90, seed=6), batch_size=8, samples_per_class=2,
                            parents_per_batch=2, parent_scale=1)
    assert len(s.classes) == 90 and len(s.parents) == 23
    assert len(uniques) <= 3 and len(scans) <= 2
