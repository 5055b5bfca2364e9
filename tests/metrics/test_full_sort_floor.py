"""The benchmarks' plain full-sort floor (what the GPU suite compares the torch engine with) agrees with the engine."""

from __future__ import annotations

import pytest

from dynametric.metrics import evaluate_embeddings
from tests.benchmarks.loader import load_benchmark


def test_full_sort_floor_matches_engine():
    mod = load_benchmark("eval_speed")
    x, labels = mod.make_data(400, 16, 60, 10, 3, seed=1)
    floor = mod.full_sort_floor(x, labels, chunk_rows=150, ks=(1, 4))
    metrics = ["recall@1", "recall@4", "r_precision", "map@r", "map", "asi"]
    ours = evaluate_embeddings(x, labels, metrics=metrics, ranking_engine="torch", scale_names=["a", "b", "c"])
    for sc, name in enumerate(["a", "b", "c"]):
        assert set(floor[sc]) == set(metrics)
        for m in metrics:
            assert floor[sc][m] == pytest.approx(ours[name][m], abs=1e-6)
