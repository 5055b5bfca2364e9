"""``reversed_scales`` factorises each label column once: a labels CSV of thousands of columns made it call
``np.unique`` two or three times per column pair (``evaluate --labels`` of a 50 KB file ran for minutes). Its notes
are those of the pairwise implementation it replaced, which is kept here as the reference."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from dynametric import labels as labels_module
from dynametric.labels import reversed_scales


def _pairwise(labels: np.ndarray, names: Sequence[str]) -> str | None:
    """The implementation before: every pair of columns, each factorised again."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[1] < 2 or labels.shape[0] == 0:
        return None
    for child in range(labels.shape[1] - 1):
        for parent in range(child + 1, labels.shape[1]):
            finer, coarser = labels[:, parent], labels[:, child]
            _, f_code = np.unique(finer, return_inverse=True)
            _, c_code = np.unique(coarser, return_inverse=True)
            if f_code.max() <= c_code.max():
                continue
            pairs = np.unique(f_code.astype(np.int64) * (int(c_code.max()) + 1) + c_code)
            if pairs.size == int(f_code.max()) + 1:
                return (f"the label columns look coarsest first: every {names[parent]} class lies in a single "
                        f"{names[child]} class and there are more {names[parent]} classes "
                        f"({int(f_code.max()) + 1} vs {int(c_code.max()) + 1}); the first column is taken as the "
                        "finest scale, so put the columns finest first")
    return None


def _random_labels(rng: np.random.Generator) -> np.ndarray:
    """Columns that nest in one another (coarsenings of a fine column, in any order), unrelated columns, constant
    and repeated columns, labels negative or large."""
    rows = int(rng.integers(1, 40))
    columns = int(rng.integers(2, 9))
    fine = rng.integers(0, int(rng.integers(1, 16)), rows)
    out = []
    for _ in range(columns):
        pick = rng.integers(0, 5)
        if pick == 0:
            out.append(fine // int(rng.integers(1, 6)))
        elif pick == 1:
            out.append(rng.integers(-3, int(rng.integers(1, 12)), rows))
        elif pick == 2:
            out.append(np.full(rows, int(rng.integers(-5, 5))))
        elif pick == 3 and out:
            out.append(out[int(rng.integers(0, len(out)))] * 7 + 2**40)  # the same partition, other values
        else:
            out.append(fine)
    return np.stack(out, 1).astype(np.int64)


def test_the_notes_are_those_of_the_pairwise_implementation() -> None:
    rng = np.random.default_rng(7)
    noted = 0
    for _ in range(600):
        labels = _random_labels(rng)
        names = [f"c{j}" for j in range(labels.shape[1])]
        expected = _pairwise(labels, names)
        assert reversed_scales(labels, names) == expected, labels.T
        noted += expected is not None
    assert 100 < noted < 500  # both answers were asked for many times


def test_each_column_is_factorised_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """An operation bound, not a time: at most one np.unique per column (the pairwise code made 2 or 3 per pair:
    over 20,000 for these 150 columns)."""
    rng = np.random.default_rng(1)
    labels = np.stack([rng.permutation(np.arange(12) // 2) for _ in range(150)], 1)  # 6 classes each
    labels[:, 100] = np.arange(12) // 6  # 2 classes: later columns whose pairs lie in its halves nest in it
    names = [f"c{j}" for j in range(150)]
    expected = _pairwise(labels, names)
    calls = []
    unique = np.unique

    def counted(*args, **kwargs):
        calls.append(1)
        return unique(*args, **kwargs)

    monkeypatch.setattr(labels_module.np, "unique", counted)
    assert reversed_scales(labels, names) == expected
    assert 0 < len(calls) <= 150


def test_two_thousand_columns_find_the_pair_the_pairwise_code_finds() -> None:
    """The QA file's shape (12 rows, 2,000 columns): every column of 6 classes (no pair to note, and the pairwise
    code compared all 2 million pairs), column 1500 of 2 classes; the first later column whose classes each lie in
    one of its halves is named, as the pairwise code names it (asked of the columns from 1500 on: no earlier column
    can be the coarser one, none has fewer classes than a later one)."""
    rng = np.random.default_rng(3)
    labels = np.stack([rng.permutation(np.arange(12) // 2) for _ in range(2000)], 1)
    labels[:, 1500] = np.arange(12) // 6
    names = [f"s{j}" for j in range(2000)]
    note = reversed_scales(labels, names)
    assert note is not None and "lies in a single s1500 class and there are more" in note
    assert note == _pairwise(labels[:, 1500:], names[1500:])
    labels[:, 1500] = np.arange(12) // 2  # 6 classes like the others: nothing to note
    assert reversed_scales(labels, names) is None
