"""Hard quadruplet mining by PDDM score: hand-built disagreement case, brute force, ties, degenerate batches."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynametric.errors import ConfigError, InputError
from dynametric.miners.pddm import hardest_negatives, mine_hard_quadruplets
from tests.pddm.helpers import LABELS, XS, points, position_unit


def test_mining_follows_pddm_not_euclidean_on_hand_built_batch() -> None:
    unit = position_unit()
    f = points(XS)
    s = unit.score_matrix(f)
    d = torch.cdist(f, f)
    # Euclidean hardness: farthest positive pair is (4, 5); nearest negative of 0 is 4 (x = 0.4)
    pos = (LABELS[:, None] == LABELS[None, :]) & torch.ones(6, 6, dtype=torch.bool).triu(1)
    far = d.masked_fill(~pos, -1).argmax()
    assert (int(far) // 6, int(far) % 6) == (4, 5)
    assert int(d[0].masked_fill(LABELS == 0, float("inf")).argmin()) == 4
    # PDDM hardness: the tight pair near the origin (0, 1) has the lowest score, and the most similar
    # negative of both ends is the far-right point 5 (x = 10), the Euclidean *easiest* negative.
    i, j, k, l = mine_hard_quadruplets(s, LABELS)
    assert (i.tolist(), j.tolist(), k.tolist(), l.tolist()) == ([0], [1], [5], [5])


def test_per_positive_pair_mode_on_hand_built_batch() -> None:
    unit = position_unit()
    s = unit.score_matrix(points(XS))
    i, j, k, l = mine_hard_quadruplets(s, LABELS, "per_positive_pair")
    # positive pairs (0,1), (2,3), (4,5); hardest negative by score: rows of classes 0/1 -> 5, class 2 -> 3
    assert list(zip(i.tolist(), j.tolist(), k.tolist(), l.tolist())) == [(0, 1, 5, 5), (2, 3, 5, 5), (4, 5, 3, 3)]


def _brute_force(s: torch.Tensor, labels: list[int], mode: str) -> list[tuple[int, int, int, int]]:
    m = len(labels)
    pairs = [(a, b) for a, b in itertools.combinations(range(m), 2) if labels[a] == labels[b]]
    if not pairs or len(set(labels)) < 2:
        return []

    def hard_neg(r: int) -> int:
        best = None
        for c in range(m):  # first strictly larger wins, so ties keep the lowest index
            if labels[c] != labels[r] and (best is None or s[r, c] > s[r, best]):
                best = c
        return best

    if mode == "faithful_one_per_batch":
        best_pair = pairs[0]
        for p in pairs:
            if s[p] < s[best_pair]:
                best_pair = p
        pairs = [best_pair]
    return [(a, b, hard_neg(a), hard_neg(b)) for a, b in pairs]


@settings(max_examples=60, deadline=None)
@given(
    labels=st.lists(st.integers(0, 3), min_size=1, max_size=9),
    seed=st.integers(0, 2**16),
    quantise=st.booleans(),
    mode=st.sampled_from(["faithful_one_per_batch", "per_positive_pair"]),
)
def test_mining_equals_brute_force(labels: list[int], seed: int, quantise: bool, mode: str) -> None:
    m = len(labels)
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(m, m, generator=gen)
    if quantise:  # many exact ties: checks the lowest-index rule
        s = s.round()
    s = (s + s.T) / 2
    s.fill_diagonal_(float("nan"))  # the diagonal is never read
    got = mine_hard_quadruplets(s, torch.tensor(labels), mode)
    assert list(zip(*[t.tolist() for t in got])) == _brute_force(s, labels, mode)


def test_degenerate_batches_give_empty_indices() -> None:
    s = torch.randn(4, 4)
    for labels in ([1, 1, 1, 1], [0, 1, 2, 3], [7]):
        t = torch.tensor(labels)
        out = mine_hard_quadruplets(s[: len(labels), : len(labels)], t)
        assert all(x.numel() == 0 and x.dtype == torch.long for x in out)


def test_a_negative_scoring_minus_infinity_is_still_a_negative() -> None:
    s = torch.tensor([[0.0, 5.0, float("-inf")], [5.0, 0.0, 1.0], [float("-inf"), 1.0, 0.0]])
    idx, _ = hardest_negatives(s, torch.tensor([0, 0, 1]))
    assert idx.tolist() == [2, 2, 1]  # row 0's only negative is 2, however dissimilar (not the masked entry 0)
    i, j, k, l = mine_hard_quadruplets(s, torch.tensor([0, 0, 1]))
    assert (i.tolist(), j.tolist(), k.tolist(), l.tolist()) == ([0], [1], [2], [2])


def test_hardest_negatives_reports_rows_without_negatives() -> None:
    s = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [2.0, 3.0, 0.0]])
    idx, has = hardest_negatives(s, torch.tensor([0, 0, 1]))
    assert idx.tolist() == [2, 2, 1] and has.tolist() == [True, True, True]
    _, has = hardest_negatives(s, torch.tensor([0, 0, 0]))
    assert not has.any()


def test_mining_validation() -> None:
    with pytest.raises(ConfigError, match="mode"):
        mine_hard_quadruplets(torch.zeros(2, 2), torch.tensor([0, 0]), "all")
    with pytest.raises(InputError, match="square"):
        mine_hard_quadruplets(torch.zeros(2, 3), torch.tensor([0, 0]))
    with pytest.raises(InputError, match="one label scale"):
        mine_hard_quadruplets(torch.zeros(2, 2), torch.tensor([[0, 0], [0, 1]]))
    s = torch.zeros(3, 3)
    s[0, 1] = s[1, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        mine_hard_quadruplets(s, torch.tensor([0, 0, 1]))


def test_an_empty_batch_mines_nothing() -> None:
    scores, labels = torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    idx, has = hardest_negatives(scores, labels)
    assert idx.shape == (0,) and has.shape == (0,)
    for mode in ("faithful_one_per_batch", "per_positive_pair"):
        assert all(t.numel() == 0 for t in mine_hard_quadruplets(scores, labels, mode))


@settings(max_examples=80, deadline=None)
@given(
    labels=st.lists(st.integers(0, 3), min_size=1, max_size=9),
    seed=st.integers(0, 2**16),
    infinite=st.sampled_from([0.0, float("inf"), float("-inf")]),
)
def test_faithful_quadruplet_on_the_device_equals_brute_force(labels: list[int], seed: int, infinite: float) -> None:
    """The loss's read-free faithful mining (one masked minimum over the flattened matrix, then the first positive
    entry equal to it) picks the brute force's quadruplet, ties to the lowest (i, j) included, also where scores are
    +-inf (a +inf positive score must not tie with the masked-out entries); a degenerate batch is flagged."""
    from dynametric.miners.pddm import _faithful_quadruplet

    m = len(labels)
    gen = torch.Generator().manual_seed(seed)
    s = torch.randint(-2, 3, (m, m), generator=gen).float()  # many exact ties
    if infinite:
        s[torch.rand(m, m, generator=gen) < 0.3] = infinite
    s.fill_diagonal_(float("nan"))  # the diagonal is never read
    expected = _brute_force(s, labels, "faithful_one_per_batch")
    quad, valid, nan = _faithful_quadruplet(s, torch.tensor(labels))
    assert bool(valid) == bool(expected) and not bool(nan)
    if expected:
        assert [tuple(int(t) for t in quad)] == expected
    assert list(zip(*[t.tolist() for t in mine_hard_quadruplets(s, torch.tensor(labels))])) == expected


@pytest.mark.parametrize("mode", ["faithful_one_per_batch", "per_positive_pair"])
@pytest.mark.parametrize("where,labels", [((0, 1), [0, 0, 1]), ((0, 2), [0, 0, 1]), ((2, 0), [0, 0, 1]),
                                          ((0, 1), [0, 1, 2]), ((1, 2), [5, 5, 5])])
def test_nan_off_the_diagonal_raises_in_every_batch(mode: str, where: tuple[int, int], labels: list[int]) -> None:
    """On a positive pair, a negative, or in a batch without a positive pair or without a negative: the same error
    (the per-pair mode finds it with its one read, the faithful mode with a flag read by the public function)."""
    s = torch.zeros(3, 3)
    s[where] = float("nan")
    with pytest.raises(InputError) as info:
        mine_hard_quadruplets(s, torch.tensor(labels), mode)
    assert str(info.value) == "key 'scores': PDDM scores contain NaN off the diagonal"
    s = torch.zeros(3, 3).fill_diagonal_(float("nan"))
    assert len(mine_hard_quadruplets(s, torch.tensor(labels), mode)[0]) == (0 if len(set(labels)) != 2 else 1)
