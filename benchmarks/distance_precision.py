"""Euclidean distance matrices: time and error of torch.cdist's two paths and of ``LpDistance`` (docs/losses.md).

Side by side in one process, alternating every round: forward + backward of the ``[B, B]`` distance matrix of
``B`` L2-normalised float32 rows (``ref=None``), and of ``ContrastiveLoss`` / ``TripletMarginLoss`` (``B / 4``
classes of 4) with each distance, for three computations of the matrix:

* ``mm``: ``torch.cdist`` with its default ``compute_mode`` (the matrix product ``|x|^2 + |y|^2 - 2 <x, y>`` above 25
  rows; what ``LpDistance`` computed before it got its own path);
* ``exact``: ``torch.cdist(compute_mode="donot_use_mm_for_euclid_dist")``, one difference per pair;
* ``LpDistance``: the library's distance as it is now (``dynametric.distances.euclidean_matrix``).

Then the error against a float64 computation from differences (reference set = an equal copy of the batch, true
diagonal 0) of cdist's product path, of the centred product alone (``euclidean_matrix(..., recompute_near=False)``:
what ``LpDistance`` computes on a GPU) and of ``LpDistance`` on the CPU, for normalised rows, rows of norm ~115 and
rows with a common offset of 1000; and the value of ``ContrastiveLoss`` with that reference set (each item a
positive of its copy) relative to float64.

    python benchmarks/distance_precision.py --batch-sizes 32 128 256 512 1024 --dims 128 512 --repeats 5 \
        --threads 1 [--variants mm LpDistance] [--json rows.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dynametric import losses as dm
from dynametric.distances import LpDistance, euclidean_matrix

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import machine_line  # noqa: E402
from result_files import add_overwrite_option, check_replace, command_line, write_json  # noqa: E402

SCRIPT = "distance_precision.py"


class _CdistDistance(LpDistance):
    """``LpDistance`` whose matrix is ``torch.cdist`` with one ``compute_mode`` (for the comparison only)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def matrix(self, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return torch.cdist(q, r, compute_mode=self.mode)


class _CentredProduct(LpDistance):
    """``LpDistance`` computed as on a GPU (the centred product, no recomputation of near pairs)."""

    def matrix(self, q: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return euclidean_matrix(q, r, recompute_near=False)


VARIANTS: dict[str, Callable[[], LpDistance]] = {
    "mm": lambda: _CdistDistance("use_mm_for_euclid_dist_if_necessary"),
    "exact": lambda: _CdistDistance("donot_use_mm_for_euclid_dist"),
    "LpDistance": LpDistance,
}
#: only for the errors: what LpDistance computes on a GPU
CENTRED = _CentredProduct
LOSSES = ("ContrastiveLoss", "TripletMarginLoss")


def _once(fn: Callable[[torch.Tensor], torch.Tensor], emb: torch.Tensor) -> float:
    x = emb.clone().requires_grad_(True)
    start = time.perf_counter()
    fn(x).sum().backward()
    return time.perf_counter() - start


def timings(batch: int, dim: int, repeats: int, losses: tuple[str, ...], variants: tuple[str, ...] = tuple(VARIANTS),
            seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(batch, dim, generator=g)
    labels = torch.arange(batch) // 4
    rows = []
    for what in ("distance", *losses):
        fns: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
        for name in variants:
            dist = VARIANTS[name]()
            if what == "distance":
                fns[name] = dist
            else:
                loss = getattr(dm, what)(distance=dist)
                fns[name] = lambda x, loss=loss: loss(x, labels)
        times: dict[str, list[float]] = {name: [] for name in fns}
        for fn in fns.values():  # warm-up
            _once(fn, emb)
        for _ in range(repeats):
            for name, fn in fns.items():
                times[name].append(_once(fn, emb))
        rows.append({"what": what, "batch": batch, "dim": dim,
                     **{f"{k}_ms": 1000 * statistics.median(t) for k, t in times.items()},
                     **{f"{k}_best_ms": 1000 * min(t) for k, t in times.items()}})
    return rows


KINDS = ("normalised", "norm ~115", "offset 1000")


def _rows(kind: str, batch: int, dim: int, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(batch, dim, generator=g)
    if kind == "normalised":
        return torch.nn.functional.normalize(x)
    if kind == "norm ~115":  # random directions, no common offset
        return x * (115 / dim**0.5)
    return 1000 + x  # a common offset, unit spread


def errors(batch: int, dim: int, seed: int = 0) -> list[dict]:
    """For each kind of rows: the largest absolute error of the ``[B, B]`` matrix against a reference set that is
    an equal copy of the batch (true diagonal 0), for cdist's product path (``mm``), the centred product alone (what
    ``LpDistance`` computes on a GPU) and ``LpDistance`` (on the CPU: near pairs recomputed); for normalised rows
    also the relative error of ``ContrastiveLoss`` with that reference set (each item a positive of its copy)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for kind in KINDS:
        emb = _rows(kind, batch, dim, g)
        copy = emb.clone()
        exact64 = torch.cdist(emb.double(), copy.double(), compute_mode="donot_use_mm_for_euclid_dist")
        row: dict = {"batch": batch, "dim": dim, "kind": kind}
        mats = {"mm": torch.cdist(emb, copy), "centred": euclidean_matrix(emb, copy, recompute_near=False),
                "LpDistance": LpDistance(normalize_embeddings=False)(emb, copy)}
        for name, mat in mats.items():
            row[f"{name}_max_abs_err"] = float((mat.double() - exact64).abs().max())
        if kind == "normalised":
            labels = torch.arange(batch) // 4
            want = float(dm.ContrastiveLoss()(emb.double(), labels, ref_emb=copy.double(), ref_labels=labels.clone()))
            for name, make in (("mm", VARIANTS["mm"]), ("centred", CENTRED), ("LpDistance", LpDistance)):
                value = dm.ContrastiveLoss(distance=make())(emb, labels, ref_emb=copy, ref_labels=labels.clone())
                row[f"{name}_contrastive_rel_err"] = abs(float(value) - want) / want
        out.append(row)
    return out


def to_markdown(rows: list[dict], errs: list[dict], command: str, machine: str) -> str:
    lines = [f"`{command}`", "", f"{machine}; float32, L2-normalised rows, median ms per forward + backward "
             "(alternating rounds; the ratios also of the best rounds). — where a computation was not timed.", "",
             "| what | batch | dim | cdist mm ms | cdist exact ms | LpDistance ms | LpDistance / mm (median) | "
             "(best) | exact / mm (median) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def ms(r: dict, key: str) -> str:
        return f"{r[key]:.2f}" if key in r else "—"

    def ratio(r: dict, a: str, b: str) -> str:
        return f"{r[a] / r[b]:.2f}x" if a in r and b in r else "—"

    for r in rows:
        lines.append(f"| {r['what']} | {r['batch']} | {r['dim']} | {ms(r, 'mm_ms')} | {ms(r, 'exact_ms')} | "
                     f"{ms(r, 'LpDistance_ms')} | {ratio(r, 'LpDistance_ms', 'mm_ms')} | "
                     f"{ratio(r, 'LpDistance_best_ms', 'mm_best_ms')} | {ratio(r, 'exact_ms', 'mm_ms')} |")
    lines += ["", "Largest absolute error against float64 (float32 rows; reference set = an equal copy of the batch, "
              "so the true diagonal is 0; the ContrastiveLoss error is relative, normalised rows only):", "",
              "| batch | dim | rows | cdist mm | centred product (GPU path) | LpDistance (CPU) | "
              "ContrastiveLoss, mm | ContrastiveLoss, centred | ContrastiveLoss, LpDistance (CPU) |",
              "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]

    def err(e: dict, key: str) -> str:
        return f"{e[key]:.1e}" if key in e else "—"

    for e in errs:
        lines.append(f"| {e['batch']} | {e['dim']} | {e['kind']} | {err(e, 'mm_max_abs_err')} | "
                     f"{err(e, 'centred_max_abs_err')} | {err(e, 'LpDistance_max_abs_err')} | "
                     f"{err(e, 'mm_contrastive_rel_err')} | {err(e, 'centred_contrastive_rel_err')} | "
                     f"{err(e, 'LpDistance_contrastive_rel_err')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 256, 512, 1024])
    parser.add_argument("--dims", type=int, nargs="+", default=[128, 512])
    parser.add_argument("--repeats", type=int, default=5, help="side-by-side rounds per case (median)")
    parser.add_argument("--losses", nargs="*", default=list(LOSSES), choices=list(LOSSES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                        help="the computations to time (the errors are always of mm and LpDistance)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the rows, the command and the machine here as JSON (atomically)")
    add_overwrite_option(parser)
    args = parser.parse_args(argv)
    check_replace([args.json], SCRIPT, "full", args.overwrite)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, errs = [], []
    for batch in args.batch_sizes:
        for dim in args.dims:
            for row in timings(batch, dim, args.repeats, tuple(args.losses), tuple(args.variants)):
                rows.append(row)
                times = "  ".join(f"{k} {row[f'{k}_ms']:8.2f}" for k in args.variants)
                print(f"{row['what']:18s} B={batch:5d} D={dim:4d} {times} ms", file=sys.stderr, flush=True)
            errs += errors(batch, dim)
    command = command_line(SCRIPT, argv)
    machine = machine_line()
    print(to_markdown(rows, errs, command, machine))
    if args.json is not None:
        write_json(args.json, {"command": command, "machine": machine, "repeats": args.repeats, "rows": rows,
                               "errors": errs}, SCRIPT, "full")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
