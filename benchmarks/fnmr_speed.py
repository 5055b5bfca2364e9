"""FNMR@FMR at scale: the time of ``fnmr@fmr`` against the ranking metrics, and (``--old``) against an earlier
``dynametric/metrics/verification.py`` side by side in one process, its values asserted equal.

Query -> gallery on random Gaussian embeddings with three nested scales (``fine`` of ``--classes`` classes,
``middle = fine // 50``, ``coarse = fine // 1000``). Prints the machine line (benchmarks/machine_info.py) and a
markdown table.

Usage::

    python benchmarks/fnmr_speed.py --queries 1000 --gallery 100000
    git show <rev>:src/dynametric/metrics/verification.py > /tmp/old_verification.py
    python benchmarks/fnmr_speed.py --queries 1000 --gallery 100000 --old /tmp/old_verification.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import machine_line  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--gallery", type=int, default=100000)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--classes", type=int, default=5000)
    p.add_argument("--fmr", type=float, nargs="+", default=[1.0, 0.1])
    p.add_argument("--distance", choices=["cosine", "euclidean"], default="cosine")
    p.add_argument("--old", type=Path, default=None, help="an earlier verification.py to time beside this one")
    args = p.parse_args(argv)

    import dynametric.metrics.evaluate as evaluate_module
    from dynametric.metrics import evaluate_embeddings

    rng = np.random.default_rng(0)
    g = rng.standard_normal((args.gallery, args.dim)).astype(np.float32)
    q = rng.standard_normal((args.queries, args.dim)).astype(np.float32)
    gf, qf = rng.integers(0, args.classes, args.gallery), rng.integers(0, args.classes, args.queries)
    gl = np.stack([gf, gf // 50, gf // 1000], 1)
    ql = np.stack([qf, qf // 50, qf // 1000], 1)
    fnmr = [f"fnmr@fmr={format(f, 'g')}" for f in args.fmr]

    def timed(metrics: list[str]) -> tuple[float, dict]:
        t0 = time.perf_counter()
        result = evaluate_embeddings(q, ql, g, gl, metrics=metrics, distance=args.distance)
        return time.perf_counter() - t0, result

    rows = []
    current = evaluate_module.fnmr_at_fmr
    seconds, ours = timed(fnmr)
    rows.append(("fnmr@fmr, this version", seconds))
    if args.old is not None:
        spec = importlib.util.spec_from_file_location("old_verification", args.old)
        assert spec is not None and spec.loader is not None
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        evaluate_module.fnmr_at_fmr = old.fnmr_at_fmr  # type: ignore[attr-defined]
        try:
            seconds_old, theirs = timed(fnmr)
        finally:
            evaluate_module.fnmr_at_fmr = current
        if json.dumps(theirs, sort_keys=True) != json.dumps(ours, sort_keys=True):  # NaN where a scale has none
            raise SystemExit(f"the values differ: {theirs} (old) vs {ours}")
        rows.append((f"fnmr@fmr, {args.old.name}", seconds_old))
    seconds_rank, _ = timed(["recall@k", "map@r"])
    rows.append(("recall@k + map@r (ranking)", seconds_rank))

    print(f"`python benchmarks/fnmr_speed.py {shlex.join(argv if argv is not None else sys.argv[1:])}`")
    print(machine_line())
    print(f"{args.queries} queries x {args.gallery} gallery x {args.dim}, 3 scales, {args.distance}, "
          f"{', '.join(fnmr)}")
    print()
    print("| what | seconds | vs this version |")
    print("|---|---:|---:|")
    for name, sec in rows:
        print(f"| {name} | {sec:.2f} | {sec / seconds:.2f}x |")
    print()
    print("values (fine): " + ", ".join(f"{k} {ours['fine'][k]:.6f}" for k in fnmr))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
