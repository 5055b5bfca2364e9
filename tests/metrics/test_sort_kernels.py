"""The engine's results do not depend on which SIMD kernel numpy sorts with (numpy picks it from the CPU at import;
``NPY_DISABLE_CPU_FEATURES`` switches its AVX-512 kernels off, see docs/metrics.md, *Speed on your CPU*)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.benchmarks.loader import load_benchmark

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import json, sys
import numpy as np, torch
import dynametric.metrics.engine as engine
from dynametric.metrics import evaluate_embeddings
calls = []
merged = engine._merged_ranks
engine._merged_ranks = lambda *a, **k: calls.append(1) or merged(*a, **k)
rng = np.random.default_rng(3)
x = torch.from_numpy(rng.standard_normal((600, 8)).astype(np.float32))
x[::4] = x[1::4]  # exact duplicates: tied scores, broken by gallery index
fine = torch.arange(600) // 5
labels = torch.stack([fine, fine // 10, fine // 40], 1)
out = evaluate_embeddings(x, labels, metrics=["recall@K", "r_precision", "map@r", "map", "asi"])
json.dump({"metrics": out, "merge_calls": len(calls)}, sys.stdout)
"""


def test_same_results_with_numpy_avx512_sort_kernels_switched_off():
    features = load_benchmark("eval_speed").numpy_avx512_features()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    runs = []
    for extra in ({}, {"NPY_DISABLE_CPU_FEATURES": features}):
        proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, check=True,
                              env={**env, **extra}, timeout=300)
        runs.append(json.loads(proc.stdout))
    assert runs[0] == runs[1]
    # the coarse scale has 3 classes of 200 items: its candidate sets were ranked on the merge path
    assert runs[0]["merge_calls"] > 0
    assert 0.0 < runs[0]["metrics"]["coarse"]["map"] < 1.0


def test_machine_line_reports_both_sort_rates():
    line = load_benchmark("eval_speed").sort_rates()
    assert line.startswith("numpy int32 sort of a 60,502-key row: default ")
    rates = [part.rsplit(" ", 2)[-2] for part in line.split(": ", 1)[1].split(", ")]
    assert len(rates) == 2 and all(r.isdigit() and int(r) > 0 for r in rates)
