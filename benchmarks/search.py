"""Search speed and accuracy of the approximate indexes (ivf, hnsw) against the exact flat index, side by side.

Synthetic 128-d data shaped like embeddings (see :func:`make_data`: 100 coarse x 100 fine classes, within-class
variation in a 16-d subspace), cosine metric, queries drawn fresh from the same distribution (not in the
database). For every database size the exact flat index gives the ground truth; recall@10 = |approx top-10 ∩
exact top-10| / 10, averaged over queries. Queries/s = queries / wall time of one batched ``search`` call, after
one warm-up call, best of ``--repeats``. Indexes are built with
:func:`dynametric.retrieval.faiss_ops.build_faiss_index` (the code ``dynametric index build`` runs) and freed before
the next one (peak memory about 3 x N x 512 bytes).

    python benchmarks/search.py                      # 100k and 1M, 1 thread
    python benchmarks/search.py --sizes 20000 --queries 200   # quick check
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import machine_line  # noqa: E402
from result_files import add_overwrite_option, check_replace, command_line, write_json  # noqa: E402

SCRIPT = "search.py"


def make_data(n: int, q: int, dim: int, coarse: int, fine_per_coarse: int, latent: int, seed: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """Embedding-like vectors: a two-level hierarchy of class centres plus low-dimensional within-class variation.

    coarse centres ~ 0.5 N(0, I); fine centres = coarse + 0.5 N(0, I) (``fine_per_coarse`` each); a point = its fine
    centre + 0.5 W z (z ~ N(0, I_latent), W a random [latent, dim] map scaled by 1/sqrt(latent), so the
    within-class spread lives in a ``latent``-d subspace, as in trained embeddings) + 0.1 N(0, I); L2-normalised.
    """
    rng = np.random.default_rng(seed)
    c = 0.5 * rng.standard_normal((coarse, dim), dtype=np.float32)
    f = (np.repeat(c, fine_per_coarse, axis=0)
         + 0.5 * rng.standard_normal((coarse * fine_per_coarse, dim), dtype=np.float32))
    w = rng.standard_normal((latent, dim), dtype=np.float32) / np.sqrt(latent)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, dim), np.float32)
        for lo in range(0, m, 100_000):
            hi = min(m, lo + 100_000)
            cls = rng.integers(0, len(f), hi - lo)
            z = rng.standard_normal((hi - lo, latent), dtype=np.float32)
            out[lo:hi] = f[cls] + 0.5 * (z @ w) + 0.1 * rng.standard_normal((hi - lo, dim), dtype=np.float32)
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out

    return draw(n), draw(q)


def make_clusters(n: int, q: int, dim: int, clusters: int, spread: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic mixture: ``clusters`` centres ~ N(0, I), a point = centre + ``spread`` N(0, I), L2-normalised
    (within-class variation in all 128 dimensions: a hard case for graph search)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)

    def draw(m: int) -> np.ndarray:
        out = np.empty((m, dim), np.float32)
        for lo in range(0, m, 100_000):
            hi = min(m, lo + 100_000)
            c = rng.integers(0, clusters, hi - lo)
            out[lo:hi] = centres[c] + spread * rng.standard_normal((hi - lo, dim), dtype=np.float32)
        out /= np.linalg.norm(out, axis=1, keepdims=True)
        return out

    return draw(n), draw(q)


def timed_search(index: Any, queries: np.ndarray, k: int, repeats: int) -> tuple[np.ndarray, float]:
    index.search(queries[: min(len(queries), 50)], k)  # warm-up
    best = float("inf")
    ids = None
    for _ in range(repeats):
        t = time.perf_counter()
        _, ids = index.search(queries, k)
        best = min(best, time.perf_counter() - t)
    return ids, best


def recall_at(approx: np.ndarray, exact: np.ndarray) -> float:
    k = exact.shape[1]
    hits = (approx[:, :, None] == exact[:, None, :]).any(axis=2).sum(axis=1)
    return float(hits.mean() / k)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--data", choices=["hierarchy", "clusters"], default="hierarchy",
                    help="hierarchy: make_data (default); clusters: make_clusters (isotropic)")
    ap.add_argument("--clusters", type=int, default=1000, help="--data clusters: number of clusters")
    ap.add_argument("--spread", type=float, default=1.0, help="--data clusters: within-cluster std")
    ap.add_argument("--coarse", type=int, default=100, help="coarse classes")
    ap.add_argument("--fine-per-coarse", type=int, default=100, help="fine classes per coarse class")
    ap.add_argument("--latent", type=int, default=16, help="dimension of the within-class variation")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1,
                    help="faiss OpenMP threads for searching (default 1: stable on shared CPUs)")
    ap.add_argument("--build-threads", type=int, default=1, help="faiss OpenMP threads for building (default 1)")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[4, 16, 64])
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=64)
    ap.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", dest="json_out", type=Path, default=None,
                    help="also write the rows (with the command and the machine) as JSON")
    add_overwrite_option(ap)
    args = ap.parse_args(argv)
    check_replace([args.json_out], SCRIPT, "full", args.overwrite)

    import faiss

    from dynametric.retrieval.faiss_ops import build_faiss_index

    build_threads = args.build_threads

    def building() -> None:
        faiss.omp_set_num_threads(build_threads)

    def searching() -> None:
        faiss.omp_set_num_threads(args.threads)
    print(f"# search benchmark: faiss {faiss.__version__}, search {args.threads} thread(s), build {build_threads}, "
          f"{machine_line()}; dim {args.dim}, "
          f"{args.queries} queries, k={args.k}, cosine; data: " + (
              f"{args.clusters} isotropic clusters, spread {args.spread}" if args.data == "clusters" else
              f"{args.coarse}x{args.fine_per_coarse} classes, latent {args.latent}"))
    rows: list[dict[str, Any]] = []
    for n in args.sizes:
        if args.data == "clusters":
            x, q = make_clusters(n, args.queries, args.dim, args.clusters, args.spread, args.seed)
        else:
            x, q = make_data(n, args.queries, args.dim, args.coarse, args.fine_per_coarse, args.latent, args.seed)
        building()
        t = time.perf_counter()
        flat, _ = build_faiss_index(x, "flat", "cosine")
        build = time.perf_counter() - t
        searching()
        exact, secs = timed_search(flat, q, args.k, args.repeats)
        flat_qps = len(q) / secs
        rows.append({"n": n, "kind": "flat", "params": "exact", "build_s": build, "qps": flat_qps, "recall": 1.0})
        del flat
        gc.collect()
        nlist = max(1, int(round(np.sqrt(n))))
        building()
        t = time.perf_counter()
        ivf, _ = build_faiss_index(x, "ivf", "cosine", nlist=nlist, nprobe=1, train_size=min(n, 50 * nlist),
                                   seed=args.seed)
        build = time.perf_counter() - t
        searching()
        for nprobe in args.nprobe:
            ivf.nprobe = nprobe
            ids, secs = timed_search(ivf, q, args.k, args.repeats)
            rows.append({"n": n, "kind": "ivf", "params": f"nlist={nlist} nprobe={nprobe}", "build_s": build,
                         "qps": len(q) / secs, "recall": recall_at(ids, exact)})
        del ivf
        gc.collect()
        building()
        t = time.perf_counter()
        hnsw, _ = build_faiss_index(x, "hnsw", "cosine", m=args.m, ef_construction=args.ef_construction)
        build = time.perf_counter() - t
        searching()
        for ef in args.ef_search:
            hnsw.hnsw.efSearch = ef
            ids, secs = timed_search(hnsw, q, args.k, args.repeats)
            rows.append({"n": n, "kind": "hnsw", "params": f"M={args.m} efC={args.ef_construction} ef={ef}",
                         "build_s": build, "qps": len(q) / secs, "recall": recall_at(ids, exact)})
        del hnsw, x
        gc.collect()
        for r in rows:
            if r["n"] == n:
                r["speedup"] = r["qps"] / flat_qps
                print(f"# n={n} {r['kind']} {r['params']}: build {r['build_s']:.1f} s, {r['qps']:,.0f} queries/s, "
                      f"recall@10 {r['recall']:.3f}", flush=True)
    print()
    print("| vectors | index | parameters | build s | queries/s | speed-up vs flat | recall@10 |")
    print("|---:|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['n']:,} | {r['kind']} | {r['params']} | {r['build_s']:.1f} | {r['qps']:,.0f} | "
              f"{r['speedup']:.1f}x | {r['recall']:.3f} |")
    if args.json_out:
        command = command_line(SCRIPT, argv)
        write_json(args.json_out, {"command": command, "machine": machine_line(), "rows": rows}, SCRIPT, "full")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
