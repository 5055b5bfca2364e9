"""When the class-balanced batch samplers pay for an epoch: constructor, first batch, whole epoch, resume at half.

One process; labels ``fine = i mod C``, ``middle = fine // 10``, ``coarse = fine // 500`` of ``--rows`` items. For
each sampler: the constructor's time, then (from the constructor's end) ``next(iter(sampler))`` — the first batch —
and the rest of the epoch, then a resume at half the epoch (``load_state_dict`` with ``position = len // 2``, then
the remaining batches). Prints a markdown table after the machine line (benchmarks/machine_info.py).

Usage::

    python benchmarks/sampler_speed.py --rows 1000000 --classes 50000
    python benchmarks/sampler_speed.py --rows 1000000 --classes 200000 --samplers m_per_class
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import machine_line  # noqa: E402

SAMPLERS = ("m_per_class", "hierarchical", "three_scale")


def build(name: str, labels: torch.Tensor):
    from dynametric.data.samplers import HierarchicalSampler, MPerClassSampler, ThreeScaleSampler

    if name == "m_per_class":
        return MPerClassSampler(labels, m=4, batch_size=256), "MPerClassSampler(m=4, batch_size=256)"
    if name == "hierarchical":
        return (HierarchicalSampler(labels, batch_size=80, samples_per_class=4, parents_per_batch=2),
                "HierarchicalSampler(batch_size=80, samples_per_class=4, parents_per_batch=2)")
    return ThreeScaleSampler(labels, k=4, items_per_batch=20), "ThreeScaleSampler(k=4, items_per_batch=20)"


def measure(name: str, labels: torch.Tensor) -> dict:
    t0 = time.perf_counter()
    sampler, label = build(name, labels)
    t1 = time.perf_counter()
    sampler.set_epoch(0)
    it = iter(sampler)
    next(it)
    t2 = time.perf_counter()
    n = 1 + sum(1 for _ in it)
    t3 = time.perf_counter()
    state = {**sampler.state_dict(), "position": len(sampler) // 2}
    sampler.load_state_dict(state)
    t4 = time.perf_counter()
    rest = sum(1 for _ in iter(sampler))
    t5 = time.perf_counter()
    return {"sampler": label, "batches": n, "constructor_s": t1 - t0, "first_batch_s": t2 - t1,
            "epoch_s": t3 - t1, "resume_s": t5 - t4, "resumed_batches": rest}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=50_000)
    parser.add_argument("--samplers", nargs="+", choices=SAMPLERS, default=list(SAMPLERS))
    args = parser.parse_args(argv)
    fine = np.arange(args.rows) % args.classes
    labels = torch.from_numpy(np.stack([fine, fine // 10, fine // 500], 1))
    print(f"`python benchmarks/sampler_speed.py {shlex.join(sys.argv[1:] if argv is None else argv)}`")
    print(machine_line())
    print(f"\n| sampler (C = {args.classes:,} classes, {args.rows:,} rows) | batches | constructor s | first batch s "
          "| whole epoch s | resume at half s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in args.samplers:
        r = measure(name, labels)
        print(f"| `{r['sampler']}` | {r['batches']} | {r['constructor_s']:.2f} | {r['first_batch_s']:.2f} | "
              f"{r['epoch_s']:.2f} | {r['resume_s']:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
