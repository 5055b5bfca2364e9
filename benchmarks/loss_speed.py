"""Forward+backward time of every dynametric tuple loss vs pytorch-metric-learning on the same inputs.

Side by side in one process: for each loss and batch size the two implementations are timed alternately on the
same embeddings (``[B, 512]``, ``B / 4`` classes of 4, as an m-per-class sampler gives) and the median of the
repeats is reported, with the value difference as a sanity check.

    python benchmarks/loss_speed.py --batch-sizes 128 1024 --repeats 7 [--out table.md] [--json table.json]

``--out`` (the markdown table) and ``--json`` (the rows, the command and the machine) are written atomically; an
existing file is replaced only when this script wrote it, unless ``--overwrite`` (benchmarks/result_files.py).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from pytorch_metric_learning import losses as pml

from dynametric import losses as dm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import machine_line  # noqa: E402
from result_files import (  # noqa: E402
    add_overwrite_option,
    check_replace,
    command_line,
    run_kind,
    write_json,
    write_md,
)

# name -> (dynametric factory, PML factory, PML feasible at this batch size?)
CASES: dict[str, tuple[Callable, Callable, Callable[[int], bool]]] = {
    "ContrastiveLoss": (dm.ContrastiveLoss, pml.ContrastiveLoss, lambda b: True),
    "TripletMarginLoss": (dm.TripletMarginLoss, pml.TripletMarginLoss, lambda b: True),
    "NPairsLoss": (dm.NPairsLoss, pml.NPairsLoss, lambda b: True),
    # PML's original lifted loss builds a (#pos pairs x #neg pairs) mask: ~13 GB of float at B = 1024.
    "LiftedStructureLoss": (dm.LiftedStructureLoss, pml.LiftedStructureLoss, lambda b: b <= 256),
    "GeneralizedLiftedStructureLoss": (dm.GeneralizedLiftedStructureLoss, pml.GeneralizedLiftedStructureLoss,
                                       lambda b: True),
    "MarginLoss": (dm.MarginLoss, pml.MarginLoss, lambda b: True),
    "MultiSimilarityLoss": (dm.MultiSimilarityLoss, pml.MultiSimilarityLoss, lambda b: True),
    "CircleLoss": (dm.CircleLoss, pml.CircleLoss, lambda b: True),
}
SCRIPT = "loss_speed.py"
TRIPLET_ENUMERATING = {"TripletMarginLoss", "MarginLoss"}

# Proxy/classification losses: built with num_classes (= B / 4 here) and embedding_size; PML's loss gets a copy of
# our initial weights (name -> weight attribute), so both compute the same value.
PROXY_CASES: dict[str, str] = {"ProxyNCALoss": "proxies", "ProxyAnchorLoss": "proxies", "NormalizedSoftmaxLoss": "W",
                               "CosFaceLoss": "W", "ArcFaceLoss": "W", "SoftTripleLoss": "fc"}
for _name in PROXY_CASES:
    CASES[_name] = (getattr(dm, _name), getattr(pml, _name), lambda b: True)


def _proxy_pair(name: str, num_classes: int, dim: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    ours = getattr(dm, name)(num_classes, dim)
    theirs = getattr(pml, name)(num_classes=num_classes, embedding_size=dim)
    getattr(theirs, PROXY_CASES[name]).data.copy_(getattr(ours, PROXY_CASES[name]).data)
    return ours, theirs


def time_once(loss: torch.nn.Module, emb: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    x = emb.clone().requires_grad_(True)
    start = time.perf_counter()
    value = loss(x, labels)
    value.backward()
    return time.perf_counter() - start, float(value.detach())


def bench(name: str, batch: int, dim: int, repeats: int, min_time: float = 2.0, seed: int = 0) -> dict:
    ours_cls, pml_cls, feasible = CASES[name]
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, dim, generator=g)
    labels = torch.arange(batch) // 4
    if name in PROXY_CASES:
        ours, theirs = _proxy_pair(name, int(labels.max()) + 1, dim)
    else:
        ours, theirs = ours_cls(), pml_cls()
    run_pml = feasible(batch)
    t_ours, t_pml = [], []
    v_ours = v_pml = float("nan")
    time_once(ours, emb, labels)  # warm-up
    if run_pml:
        time_once(theirs, emb, labels)
    # at least `repeats` rounds, more (up to 101) while the case has used less than `min_time` seconds, so that fast
    # cases get enough samples for a stable median on a loaded machine
    while len(t_ours) < repeats or (sum(t_ours) + sum(t_pml) < min_time and len(t_ours) < 101):
        t, v_ours = time_once(ours, emb, labels)
        t_ours.append(t)
        if run_pml:
            t, v_pml = time_once(theirs, emb, labels)
            t_pml.append(t)
    ours_ms = 1000 * statistics.median(t_ours)
    pml_ms = 1000 * statistics.median(t_pml) if t_pml else float("nan")
    best = min(t_pml) / min(t_ours) if t_pml else float("nan")
    return {"loss": name, "batch": batch, "ours_ms": ours_ms, "pml_ms": pml_ms, "rounds": len(t_ours),
            "speedup": pml_ms / ours_ms if t_pml else float("nan"), "best_speedup": best,
            "abs_diff": abs(v_ours - v_pml)}


def to_markdown(rows: list[dict], command: str, repeats: int, dim: int = 512, machine: str | None = None) -> str:
    lines = [f"`{command}`", "", f"{machine or machine_line()}; embedding {dim}, "
             f"4 images per class, median of >= {repeats} alternating rounds (more for fast cases), "
             "ms per forward + backward.", "",
             "| loss | batch | rounds | dynametric ms | PML ms | PML / dynametric (median) | (best of rounds) | "
             "abs value diff |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        pml_ms = "infeasible" if r["pml_ms"] != r["pml_ms"] else f"{r['pml_ms']:.1f}"
        speed = "—" if r["speedup"] != r["speedup"] else f"{r['speedup']:.2f}x"
        diff = "—" if r["abs_diff"] != r["abs_diff"] else f"{r['abs_diff']:.1e}"
        best = "—" if r["best_speedup"] != r["best_speedup"] else f"{r['best_speedup']:.2f}x"
        lines.append(f"| {r['loss']} | {r['batch']} | {r['rounds']} | {r['ours_ms']:.1f} | {pml_ms} | {speed} | "
                     f"{best} | {diff} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1024])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=7, help="minimum number of side-by-side rounds")
    parser.add_argument("--min-time", type=float, default=2.0, help="keep repeating (<= 101 rounds) until this many s")
    parser.add_argument("--losses", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown table here (atomically)")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the rows, the command and the machine here as JSON (atomically)")
    add_overwrite_option(parser)
    args = parser.parse_args(argv)
    kind = run_kind(partial=set(args.losses) != set(CASES))  # a subset of the losses never replaces all of them
    check_replace([args.out, args.json], SCRIPT, kind, args.overwrite)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    for batch in args.batch_sizes:
        for name in args.losses:
            row = bench(name, batch, args.dim, args.repeats, args.min_time)
            rows.append(row)
            print(f"{name:32s} B={batch:5d} ours {row['ours_ms']:9.1f} ms  pml {row['pml_ms']:9.1f} ms  "
                  f"x{row['speedup']:.2f} (best x{row['best_speedup']:.2f})  diff {row['abs_diff']:.1e}",
                  file=sys.stderr, flush=True)
    command = command_line(SCRIPT, argv)
    machine = machine_line()
    table = to_markdown(rows, command, args.repeats, args.dim, machine)
    print(table)
    if args.out is not None:
        write_md(args.out, table, SCRIPT, kind)
    if args.json is not None:
        write_json(args.json, {"command": command, "machine": machine, "dim": args.dim, "repeats": args.repeats,
                               "min_time": args.min_time, "rows": rows}, SCRIPT, kind)
    bad = [r for r in rows if r["speedup"] == r["speedup"] and r["speedup"] < 1.0]
    slow_triplets = [r for r in rows if r["loss"] in TRIPLET_ENUMERATING and r["batch"] >= 1024
                     and r["speedup"] == r["speedup"] and r["speedup"] < 2.0]
    for r in bad:
        print(f"TARGET MISSED: {r['loss']} at B={r['batch']} is slower than PML", file=sys.stderr)
    for r in slow_triplets:
        print(f"TARGET MISSED: {r['loss']} at B={r['batch']} is less than 2x faster than PML", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
