"""eval_speed's dynametric-cli contender runs the real command on files and reads back its results."""

import argparse

import torch

from dynametric.metrics import evaluate_embeddings
from tests.benchmarks.loader import load_benchmark


def test_cli_contender_gives_the_library_values():
    eval_speed = load_benchmark("eval_speed")
    x, labels = eval_speed.make_data(400, 16, 60, 8, 3, seed=1)
    args = argparse.Namespace(part="b", device=None, budget=None)
    result: dict = {}
    eval_speed._cli_evaluate(x, labels, args, result)
    want = evaluate_embeddings(torch.from_numpy(x), torch.from_numpy(labels),
                               metrics=eval_speed.part_metrics("b"))
    got = result["values"]
    assert [got[f"s{i}"] for i in range(3)] == [want[name] for name in ("fine", "middle", "coarse")]
    assert result["wall_s_cli"] > 0 and result["child_peak_rss_mb"] > 0
