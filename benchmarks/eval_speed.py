"""Speed and peak memory of ``dynametric.metrics.evaluate_embeddings`` against pytorch-metric-learning.

Contenders, each run in its own subprocess on the same synthetic embeddings (seeded, generated in the child, not
timed), wall time and the child's own peak RSS recorded:

* ``floor``      – the bare chunked matrix product ``Q_chunk @ G.T`` over all query chunks (same chunk size as
  dynametric's row path under the same memory budget, the engine's product library and 64-row grid, written into
  one reused output buffer), nothing else;
* ``dynametric`` – :func:`dynametric.metrics.evaluate_embeddings`, leave-one-out;
* ``pml``        – ``AccuracyCalculator(k="max_bin_count")`` (faiss kNN), once per scale;
* ``dynametric-cli`` – the same evaluation through the command, ``python -m dynametric evaluate`` on a ``.npy``
  and a labels CSV written beforehand (untimed): interpreter start, imports and file reading count, as they do
  for a user; the command chooses numpy's sort kernel itself (``dynametric.cpu_kernels``); peak RSS is the
  command's;
* ``dynametric-avx2`` – ``dynametric`` with numpy's AVX-512 kernels switched off in the child
  (``NPY_DISABLE_CPU_FEATURES``), so numpy sorts with its AVX2 kernel. The engine's full-ranking path is one
  int32 sort per query row, and on some CPUs (AMD Zen 4) numpy's AVX-512 sort is several times slower than its
  AVX2 one; the machine line under the table gives the rate of both on the machine that ran it.

Parts: (a) one scale (the finest, SOP-sized: 60,502 x 128, 11,316 classes), metrics recall@1, r_precision, map@r
(what the peer computes); (b) the same items with three nested scales (11,316 / 100 / 12 classes), dynametric
computing every retrieval metric (recall@1/2/4/8, r_precision, map@r, full-ranking map, asi) at all three scales in
one pass, the peer run once per scale for its three metrics.

Usage (full size, every contender)::

    python benchmarks/eval_speed.py --parts a,b --contenders floor,dynametric,pml

The peer's part (b) peaks near 20 GB: leave it out with ``--skip-peer-b`` on a small machine, or run it in query
slices with ``--peer-query-splits 3`` (the same leave-one-out work, each slice of queries against every item).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from machine_info import machine_line  # noqa: E402
from result_files import add_overwrite_option, check_replace, command_line, write_json  # noqa: E402

SCRIPT = "eval_speed.py"


def make_data(n: int, dim: int, fine: int, middle: int, coarse: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered, L2-normalised embeddings with three nested label scales ``[n, 3]`` (finest first)."""
    rng = np.random.default_rng(seed)
    if n < 2 * fine:
        raise SystemExit(f"--n {n} must be at least twice --classes {fine}")
    fine_labels = np.concatenate([np.repeat(np.arange(fine), 2), rng.integers(0, fine, n - 2 * fine)])
    rng.shuffle(fine_labels)
    fine_to_middle = np.concatenate([np.arange(middle), rng.integers(0, middle, max(fine - middle, 0))])[:fine]
    rng.shuffle(fine_to_middle)
    middle_to_coarse = np.concatenate([np.arange(coarse), rng.integers(0, coarse, max(middle - coarse, 0))])[:middle]
    rng.shuffle(middle_to_coarse)
    mid_labels = fine_to_middle[fine_labels]
    coarse_labels = middle_to_coarse[mid_labels]
    c_c = rng.standard_normal((coarse, dim)).astype(np.float32)
    c_m = rng.standard_normal((middle, dim)).astype(np.float32)
    c_f = rng.standard_normal((fine, dim)).astype(np.float32)
    x = 1.0 * c_c[coarse_labels] + 0.8 * c_m[mid_labels] + 0.9 * c_f[fine_labels]
    x += 1.7 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.stack([fine_labels, mid_labels, coarse_labels], axis=1).astype(np.int64)
    return np.ascontiguousarray(x, dtype=np.float32), labels


def full_sort_floor(x, labels, device: str = "cpu", chunk_rows: int = 1024, ks: tuple[int, ...] = (1,),
                    normalize: bool = False) -> dict:
    """The plain full-sort floor of a leave-one-out evaluation on a torch device: per chunk of query rows one matmul
    and one stable descending sort (ties by index), then every retrieval metric (recall@k for ``ks``, r_precision,
    map@r, full-ranking map, asi) per scale from dense cumulative sums, accumulated on the device. Nothing else (no
    memory planning, no exclusion by ids, no empty-query bookkeeping beyond skipping ``R_q = 0``). ``x`` and
    ``labels`` are arrays or tensors (already on ``device`` for a fair timing); ``normalize`` L2-normalises first
    (cosine). Returns ``{scale index: {metric: mean}}``; the GPU suite's floor, and it agrees with
    :func:`dynametric.metrics.evaluate_embeddings` to float rounding (a test)."""
    import torch

    dev = torch.device(device)
    xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32) if isinstance(x, np.ndarray) else x,
                         dtype=torch.float32).to(dev)
    if normalize:
        xt = torch.nn.functional.normalize(xt, dim=1)
    lab = torch.as_tensor(np.asarray(labels, dtype=np.int64) if isinstance(labels, np.ndarray) else labels,
                          dtype=torch.int64).to(dev).reshape(len(xt), -1)
    n, num_scales = lab.shape
    names = [f"recall@{k}" for k in ks] + ["r_precision", "map@r", "map", "asi"]
    sums = torch.zeros((num_scales, len(names)), dtype=torch.float64, device=dev)
    defined = torch.zeros(num_scales, dtype=torch.float64, device=dev)
    pos = torch.arange(1, n + 1, device=dev, dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, n, chunk_rows):
            stop = min(n, start + chunk_rows)
            s = xt[start:stop] @ xt.T
            ar = torch.arange(stop - start, device=dev)
            s[ar, ar + start] = float("-inf")
            _, order = torch.sort(s, dim=1, descending=True, stable=True)
            del s
            for sc in range(num_scales):
                rel = lab[order, sc] == lab[start:stop, sc].unsqueeze(1)
                rel[:, -1] = False  # the query itself sorts last (-inf)
                r = rel.sum(1)
                cum = rel.cumsum(1)
                prec = cum / pos
                ok = r > 0
                rr = r.clamp_min(1).to(torch.float64)
                within = pos <= r.unsqueeze(1)
                cols = [(cum[:, k - 1] > 0).to(torch.float64) for k in ks]
                cols.append(cum.gather(1, (r.clamp_min(1) - 1).unsqueeze(1)).squeeze(1) / rr)
                cols.append(torch.where(rel & within, prec, 0.0).sum(1) / rr)
                cols.append(torch.where(rel, prec, 0.0).sum(1) / rr)
                cols.append(torch.where(within, prec, 0.0).sum(1) / rr)
                sums[sc] += torch.stack(cols, 1)[ok].sum(0)
                defined[sc] += ok.sum()
    means = (sums / defined.clamp_min(1).unsqueeze(1)).cpu().tolist()
    return {sc: dict(zip(names, means[sc])) for sc in range(num_scales)}


def machine_description() -> str:
    """The machine line of ``benchmarks/machine_info.py`` plus the library of the engine's CPU score products, how
    it sorts long rows in this process, and numpy's int32 sort rates (part (b) moves with all three)."""
    from dynametric.metrics.engine import _RADIX_MIN_KEYS, _row_sorter
    from dynametric.metrics.products import cpu_matmul_library

    sorter = "torch radix" if _row_sorter(_RADIX_MIN_KEYS) == "torch" else "numpy"
    return (f"{machine_line()}, CPU score products: {cpu_matmul_library()}, rows of {_RADIX_MIN_KEYS:,}+ keys sorted "
            f"by {sorter} (numpy's defaults), {sort_rates()}")


def numpy_avx512_features() -> str:
    """numpy's names of its AVX-512 dispatch targets for the installed numpy (they differ between versions)."""
    from dynametric.cpu_kernels import numpy_avx512_names

    return numpy_avx512_names(np.__version__)


_SORT_PROBE = """
import time, numpy as np
keys = np.random.default_rng(0).integers(-2**31, 2**31, (4, 60502), dtype=np.int64).astype(np.int32)
times = []
for _ in range(5):
    block = keys.copy()
    t0 = time.perf_counter()
    block.sort(axis=1)
    times.append(time.perf_counter() - t0)
print(round(min(times) * 1e6 / 4))
"""


def sort_rates() -> str:
    """numpy's int32 sort of a 60,502-key row (the engine's score keys), in microseconds, with its default SIMD
    kernels and with AVX-512 off (each in a fresh interpreter: numpy picks its kernels at import)."""
    out = []
    for label, env in (("default", {}), ("AVX-512 off", {"NPY_DISABLE_CPU_FEATURES": numpy_avx512_features()})):
        proc = subprocess.run([sys.executable, "-c", _SORT_PROBE], capture_output=True, text=True, check=False,
                              env={**os.environ, **env})
        out.append(f"{label} {proc.stdout.strip() or '?'} us")
    return "numpy int32 sort of a 60,502-key row: " + ", ".join(out)


def part_metrics(part: str) -> list[str]:
    """dynametric's metrics in part (a) (the peer's three) and part (b) (every retrieval metric)."""
    return ["recall@1", "r_precision", "map@r"] if part == "a" else ["recall@K", "r_precision", "map@r", "map", "asi"]


def dynametric_metrics(args: argparse.Namespace) -> list[str]:
    """The metrics the dynametric contenders compute: ``--metrics`` (comma-separated) when given, else the part's."""
    given = getattr(args, "metrics", None)
    return given.split(",") if given else part_metrics(args.part)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(args: argparse.Namespace) -> dict:
    import torch

    x, labels = make_data(args.n, args.dim, args.classes, args.middle, args.coarse, args.seed)
    scales = 1 if args.part == "a" else 3
    labels = labels[:, :scales]
    base_rss = _peak_rss_mb()
    result: dict = {"part": args.part, "contender": args.contender, "rss_before_mb": base_rss}
    t0 = time.perf_counter()
    if args.contender == "floor":
        from dynametric.metrics.engine import _grid_product, plan_chunk_rows
        from dynametric.metrics.products import GalleryProducts

        xt = torch.from_numpy(x)
        # the row path's chunking for small candidate sets (score block + sorted copy, ~10 bytes per score)
        rows = plan_chunk_rows(len(x), len(x), args.budget, max_candidates=16)
        acc = 0.0
        buf = torch.empty((rows, len(x)), dtype=torch.float32)  # reused, as the engine does
        products = GalleryProducts(xt)  # the engine's product library (oneDNN where it works) and 64-row grid
        for start in range(0, len(x), rows):
            stop = min(len(x), start + rows)
            _grid_product(xt, products, start, stop, buf[:stop - start])
            acc += float(buf[0, 0])
        result["chunk_rows"] = rows
    elif args.contender in ("dynametric", "dynametric-avx2"):
        from dynametric.metrics import evaluate_embeddings

        out = evaluate_embeddings(torch.from_numpy(x), torch.from_numpy(labels), metrics=dynametric_metrics(args),
                                  memory_budget_bytes=args.budget, device=args.device)
        result["values"] = out
    elif args.contender == "dynametric-cli":
        # what a user of the command gets: a fresh `dynametric evaluate` process on files (written untimed), its
        # interpreter start, imports and file reading included; it chooses numpy's sort kernel itself
        t0 = _cli_evaluate(x, labels, args, result)
    elif args.contender == "pml":
        from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

        calc = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r"),
                                  k="max_bin_count", device=torch.device("cpu"))
        values = {}
        per_scale = {}
        splits = max(1, args.peer_query_splits)
        for s in range(scales):
            ts = time.perf_counter()
            if splits == 1:
                values[str(s)] = calc.get_accuracy(x, labels[:, s])
            else:
                # the same leave-one-out computation in query slices (each slice against every item, the slice
                # first as the peer requires for ref_includes_query): same work, about 1/splits of the peak memory
                parts = np.array_split(np.arange(len(x)), splits)
                got = []
                for idx in parts:
                    rest = np.setdiff1d(np.arange(len(x)), idx)
                    ref = np.concatenate([x[idx], x[rest]])
                    ref_labels = np.concatenate([labels[idx, s], labels[rest, s]])
                    got.append(calc.get_accuracy(x[idx], labels[idx, s], ref, ref_labels, ref_includes_query=True))
                values[str(s)] = {m: sum(g[m] * len(idx) for g, idx in zip(got, parts)) / len(x) for m in got[0]}
            per_scale[str(s)] = time.perf_counter() - ts
        result["values"] = values
        result["per_scale_s"] = per_scale
    else:  # pragma: no cover - argparse restricts choices
        raise SystemExit(f"unknown contender {args.contender}")
    result["wall_s"] = time.perf_counter() - t0
    result["peak_rss_mb"] = result.get("child_peak_rss_mb", _peak_rss_mb())
    return result


def _cli_evaluate(x: np.ndarray, labels: np.ndarray, args: argparse.Namespace, result: dict) -> float:
    """Run ``python -m dynametric evaluate`` on ``x``/``labels`` saved to files; returns the timer's start (set
    after the files are written) and fills ``result`` (values, the child's peak RSS)."""
    with tempfile.TemporaryDirectory(prefix="eval_speed_cli_") as tmp:
        emb, lab, out = (os.path.join(tmp, name) for name in ("emb.npy", "labels.csv", "out.json"))
        np.save(emb, x)
        np.savetxt(lab, labels, fmt="%d", delimiter=",", header=",".join(f"s{i}" for i in range(labels.shape[1])),
                   comments="")
        cmd = [sys.executable, "-m", "dynametric", "evaluate", "--embeddings", emb, "--labels", lab, "--metrics",
               *dynametric_metrics(args), "--device", args.device or "cpu", "--json", out]
        if args.budget is not None:
            cmd += ["--memory-budget-mb", str(max(1, args.budget // 2**20))]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        result["wall_s_cli"] = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"dynametric evaluate failed (exit status {proc.returncode}): {proc.stderr.strip()}")
        with open(out, encoding="utf-8") as fh:
            result["values"] = json.load(fh)
    result["child_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=60502)
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--classes", type=int, default=11316)
    p.add_argument("--middle", type=int, default=100)
    p.add_argument("--coarse", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--budget", type=int, default=None, help="dynametric memory budget in bytes (default: engine's)")
    p.add_argument("--parts", default="a,b")
    p.add_argument("--device", default=None, help="device for the dynametric contender (default: the CPU engine)")
    p.add_argument("--contenders", default="floor,dynametric,pml")
    p.add_argument("--skip-peer-b", action="store_true", help="do not run pytorch-metric-learning on part (b)")
    p.add_argument("--peer-query-splits", type=int, default=1,
                   help="run the peer in this many query slices (same work, ~1/splits of its peak memory)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated metrics for the dynametric contenders instead of the part's (e.g. "
                        "fnmr@fmr=1 to measure the verification metric's time and memory); the peer is unchanged")
    p.add_argument("--json", default=None,
                   help="write all results (with the command and the machine) to this JSON file")
    add_overwrite_option(p)
    p.add_argument("--worker", nargs=3, metavar=("PART", "CONTENDER", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if not args.worker:
        check_replace([None if args.json is None else Path(args.json)], SCRIPT, "full", args.overwrite)
    if args.worker:
        args.part, args.contender, out = args.worker
        res = worker(args)
        with open(out, "w", encoding="utf-8") as fh:
            json.dump(res, fh)
        return 0

    results = []
    for part in args.parts.split(","):
        for contender in args.contenders.split(","):
            if contender == "pml" and part == "b" and args.skip_peer_b:
                continue
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "r.json")
                cmd = [sys.executable, __file__, "--n", str(args.n), "--dim", str(args.dim), "--classes",
                       str(args.classes), "--middle", str(args.middle), "--coarse", str(args.coarse), "--seed",
                       str(args.seed), "--peer-query-splits", str(args.peer_query_splits), "--worker", part, contender,
                       out]
                if args.budget is not None:
                    cmd[2:2] = ["--budget", str(args.budget)]
                if args.device is not None:
                    cmd[2:2] = ["--device", args.device]
                if args.metrics:
                    cmd[2:2] = ["--metrics", args.metrics]
                env = dict(os.environ)
                if contender == "dynametric-avx2":
                    env["NPY_DISABLE_CPU_FEATURES"] = numpy_avx512_features()
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, check=False, env=env)
                total = time.perf_counter() - t0
                if proc.returncode != 0:
                    print(f"[{part}/{contender}] failed with exit status {proc.returncode}", flush=True)
                    results.append({"part": part, "contender": contender, "failed": proc.returncode})
                    continue
                with open(out, encoding="utf-8") as fh:
                    res = json.load(fh)
                res["process_s"] = total
                results.append(res)
                print(f"[{part}/{contender}] wall {res['wall_s']:.2f} s, peak RSS {res['peak_rss_mb']:.0f} MB "
                      f"(before the timed call: {res['rss_before_mb']:.0f} MB, imports and data)", flush=True)
    print()
    print(f"machine: {machine_description()}")
    print("| part | contender | wall s | peak RSS MB | x vs floor | peer / contender |")
    print("|---|---|---|---|---|---|")
    for res in results:
        if "failed" in res:
            print(f"| {res['part']} | {res['contender']} | failed | | | |")
            continue
        floor = next((r for r in results if r["part"] == res["part"] and r["contender"] == "floor"
                      and "wall_s" in r), None)
        peer = next((r for r in results if r["part"] == res["part"] and r["contender"] == "pml"
                     and "wall_s" in r), None)
        vs_floor = f"{res['wall_s'] / floor['wall_s']:.2f}" if floor else "–"
        speedup = f"{peer['wall_s'] / res['wall_s']:.2f}" if peer else "–"
        print(f"| {res['part']} | {res['contender']} | {res['wall_s']:.2f} | {res['peak_rss_mb']:.0f} | "
              f"{vs_floor} | {speedup} |")
    if args.json:
        command = command_line(SCRIPT, argv)
        write_json(Path(args.json), {"command": command, "machine": machine_description(), "results": results},
                   SCRIPT, "full")
    return 0


if __name__ == "__main__":
    sys.exit(main())
