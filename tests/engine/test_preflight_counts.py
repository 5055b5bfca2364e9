"""``check_validation_queries`` counts each class's items (from distinct sequences) instead of collecting them: the
same verdicts and messages as the per-class sets it built before, without a pass over the sequence ids per column."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from dynametric.config import load_config
from dynametric.engine.preflight import check_validation_queries
from dynametric.errors import ConfigError

SCALES = ["fine", "middle", "coarse"]


def _has_relevant(labels: torch.Tensor, col: int, sequences) -> bool:
    """The rule, written with sets: some class of ``col`` has two items (from two sequences)."""
    groups: dict = {}
    for i, label in enumerate(labels[:, col].tolist()):
        groups.setdefault(label, set()).add(sequences[i] if sequences is not None else i)
    return any(len(v) >= 2 for v in groups.values())


@pytest.mark.parametrize("seed", range(40))
def test_verdict_matches_the_rule_on_random_data(seed):
    g = np.random.default_rng(seed)
    n = int(g.integers(1, 12))
    labels = torch.as_tensor(np.stack([g.integers(-3, 12, n), g.integers(0, 3, n), g.integers(0, 2, n)], 1))
    kinds = [None, [str(x) for x in g.integers(0, 3, n)], [int(x) for x in g.integers(0, 2, n)],
             [("s", 1) if x else 1.0 for x in g.integers(0, 2, n)]]
    sequences = kinds[seed % 4]
    val = SimpleNamespace(labels=labels, sequence_ids=sequences)
    for scale, cols in (("fine", [0]), ("coarse", [2]), ("mean", [0, 1, 2])):
        ok = all(_has_relevant(labels, c, sequences) for c in cols)
        if ok:
            check_validation_queries(load_config(), val, f"{scale}/map@r", SCALES)
        else:
            bad = SCALES[next(c for c in cols if not _has_relevant(labels, c, sequences))]
            other = "from another sequence " if sequences is not None else ""
            with pytest.raises(ConfigError, match=f"no {bad} class there has two images {other}"):
                check_validation_queries(load_config(), val, f"{scale}/map@r", SCALES)


class _Counted(list):
    """Sequence ids that count how they are read."""

    reads = 0

    def __getitem__(self, i):
        type(self).reads += 1
        return super().__getitem__(i)

    def __iter__(self):
        type(self).reads += 1
        return super().__iter__()


def test_the_sequence_ids_are_read_once_not_per_row_and_column():
    n = 200
    fine = torch.arange(n) // 2
    labels = torch.stack([fine, fine // 5, fine // 50], 1)
    _Counted.reads = 0
    seq = _Counted(f"s{i % 7}" for i in range(n))
    check_validation_queries(load_config(), SimpleNamespace(labels=labels, sequence_ids=seq), "mean/map@r", SCALES)
    assert _Counted.reads == 1  # one pass over the ids (was one read per row per column: 600)
