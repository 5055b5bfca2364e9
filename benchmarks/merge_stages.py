"""Where the CPU engine's merge path spends its time on one block of rows, and how much of it is per-call overhead.

On the data of ``eval_speed.py`` part (b) (leave-one-out, three nested scales; the coarsest class is each row's
candidate set), the scores of ``--rows`` query rows are computed once (untimed); then, one thread, median of
``--repeats`` runs:

* ``merge``: :func:`dynametric.metrics.engine._merged_ranks` on the block (keys, row sort, candidate location);
* ``metrics``: the engine's per-block metrics (:class:`~dynametric.metrics.engine._ChunkMetrics`, every retrieval
  metric at every scale) on the ranks it returned;
* ``stages``: the same work stage by stage, as the engine calls it (keys, row sort, candidate gathering, sorting
  the candidates, binary searches, tie detection and counting);
* ``overhead``: the same calls on rows of 64 keys with 8 candidates each (almost no work per call: what is left
  is the Python and numpy call overhead per row, which a batched implementation could save at most); ``merge`` and
  ``overhead`` once more with the engine's two ranking threads (wall time: the threads contend for the GIL);
* a cProfile of ``merge`` (the functions' own time).

``--old PATH`` times another ``engine.py`` (e.g. ``git show main:src/dynametric/metrics/engine.py > /tmp/old.py``)
on the same block, alternating with the current one, and checks that both return identical ranks and indices.
``--avx2`` re-runs the script with numpy's AVX-512 kernels switched off (numpy reads that only at import)::

    python benchmarks/merge_stages.py --rows 512 --avx2
    python benchmarks/merge_stages.py --rows 512 --avx2 --old /tmp/old.py --repeats 7
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import io
import os
import pstats
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import median_seconds  # noqa: E402


def _load_engine(path: str, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{path}: not a Python file that can be imported")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


def _block(eng: ModuleType, n: int, classes: int, rows: int, first: int):
    """The block's scores (numpy ``[rows, n]``) and its candidate ranges, as ``run_ranking`` builds them."""
    import numpy as np
    import torch
    from eval_speed import make_data

    x, labels = make_data(n, 128, classes, 100, 12, 0)
    q, _, scoring = eng.prepare_for_ranking("cosine", torch.from_numpy(x), None)
    lab = torch.from_numpy(labels)
    problem = eng.RankingProblem(query=q, gallery=q, query_labels=lab, gallery_labels=lab, distance=scoring,
                                 leave_one_out=True)
    cs = eng.build_candidate_sets(lab, lab)
    stop = min(n, first + rows)
    with torch.no_grad():
        scores = eng.scores_block(problem, first, stop).numpy()
    position = np.empty(n, dtype=np.int64)
    position[cs.order.numpy()] = np.arange(n, dtype=np.int64)
    ranges = (cs.order.numpy(), cs.lo[first:stop].numpy(), cs.hi[first:stop].numpy(), position[first:stop])
    return scores, ranges, labels[first:stop], labels, cs.parents


def _tiny_block(rows: int):
    """Rows of 64 keys, 8 candidates each (distinct scores): the work per call is negligible."""
    import numpy as np

    rng = np.random.default_rng(1)
    scores = rng.standard_normal((rows, 64)).astype(np.float32)
    order = np.arange(64, dtype=np.int64)
    lo = np.zeros(rows, dtype=np.int64)
    hi = np.full(rows, 8, dtype=np.int64)
    return scores, (order, lo, hi, np.full(rows, -1, dtype=np.int64))


def _stages(eng: ModuleType, scores, cands, counts, repeats: int) -> dict[str, float]:
    """Each stage of the merge path timed separately over the block (one thread), in the engine's groups."""
    import numpy as np

    c, n = scores.shape
    g = eng._group_rows(n)
    fbuf = np.empty((g, n), dtype=np.float32)
    kbuf = np.empty((g, n), dtype=np.int32)
    sbuf = np.empty((g, n), dtype=np.int32)
    starts = np.zeros(c + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    groups = [(r0, min(c, r0 + g)) for r0 in range(0, c, g)]
    keys = {r0: eng._score_keys(scores[r0:r1], fbuf, kbuf).copy() for r0, r1 in groups}
    srt = {r0: np.sort(keys[r0], axis=1) for r0, _ in groups}
    cand = {r0: cands.group(r0, r1) for r0, r1 in groups}

    def bounds_rows(r0, r1):
        b = [0, *np.cumsum(counts[r0:r1]).tolist()]
        rows = np.empty(b[-1], dtype=np.int64)
        for i in range(r1 - r0):
            rows[b[i]:b[i + 1]] = i
        return b, rows

    br = {r0: bounds_rows(r0, r1) for r0, r1 in groups}
    sc = {r0: eng._sorted_candidates(keys[r0], cand[r0], br[r0][1], br[r0][0]) for r0, _ in groups}

    def t_keys():
        for r0, r1 in groups:
            eng._score_keys(scores[r0:r1], fbuf, kbuf)

    def t_sort():
        for r0, r1 in groups:
            s = sbuf[:r1 - r0]
            np.copyto(s, keys[r0])
            s.sort(axis=1)

    def t_gather():
        for r0, r1 in groups:
            cands.group(r0, r1)
            bounds_rows(r0, r1)

    def t_cand_sort():
        for r0, _ in groups:
            eng._sorted_candidates(keys[r0], cand[r0], br[r0][1], br[r0][0])

    def t_search():
        for r0, r1 in groups:
            b, _ = br[r0]
            ck = sc[r0][0]
            out = np.empty(b[-1], dtype=np.int64)
            for i in range(r1 - r0):
                out[b[i]:b[i + 1]] = np.searchsorted(srt[r0][i], ck[b[i]:b[i + 1]])

    def t_ties():
        for r0, r1 in groups:
            b, rows = br[r0]
            ck, idx = sc[r0]
            before = np.empty(b[-1], dtype=np.int64)
            for i in range(r1 - r0):
                before[b[i]:b[i + 1]] = np.searchsorted(srt[r0][i], ck[b[i]:b[i + 1]])
            nxt = before + 1
            tied = srt[r0].reshape(-1)[rows * n + np.minimum(nxt, n - 1)] == ck
            tied &= nxt < n
            before += 1
            if tied.any():
                eng._add_tie_counts(keys[r0], rows, b, ck, idx, tied, before)

    out = {name: median_seconds(fn, repeats) for name, fn in
           (("keys", t_keys), ("row sort", t_sort), ("candidate gathering", t_gather),
            ("candidate sort", t_cand_sort), ("search + ties (incl. search)", t_ties), ("search", t_search))}
    out["ties"] = out.pop("search + ties (incl. search)") - out["search"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=30251)
    p.add_argument("--classes", type=int, default=5658)
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--first", type=int, default=0, help="first query row of the block")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--avx2", action="store_true", help="numpy's AVX-512 kernels off (re-runs this script)")
    p.add_argument("--old", default=None, help="another engine.py to time against the current one, alternating")
    p.add_argument("--no-profile", action="store_true")
    args = p.parse_args(argv)
    if args.avx2 and "NPY_DISABLE_CPU_FEATURES" not in os.environ:
        from eval_speed import numpy_avx512_features

        env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": numpy_avx512_features()}
        return subprocess.call([sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:])], env=env)

    import torch
    from machine_info import machine_line

    from dynametric.metrics import engine as eng

    torch.set_num_threads(1)
    scores, ranges, qlabels, labels, parents = _block(eng, args.n, args.classes, args.rows, args.first)
    c, n = scores.shape
    print(f"machine: {machine_line()}; row sorter: {eng._row_sorter(n)}; NPY_DISABLE_CPU_FEATURES="
          f"{os.environ.get('NPY_DISABLE_CPU_FEATURES', '')!r}")

    with ThreadPoolExecutor(2) as pool:
        return _measure(args, eng, pool, scores, ranges, qlabels, labels, parents)


def _measure(args: argparse.Namespace, eng: ModuleType, pool: ThreadPoolExecutor, scores, ranges, qlabels, labels,
             parents) -> int:
    import numpy as np

    from dynametric.metrics.ranking import harmonic_numbers, resolve_metrics

    c, n = scores.shape

    def run(module: ModuleType, sc=scores, rg=ranges, threads: int = 1):
        cands = module._RangeCandidates(*rg)
        counts = cands.counts()
        return module._merged_ranks(sc, cands, counts, pool if threads > 1 else None, threads)

    cands = eng._RangeCandidates(*ranges)
    counts = cands.counts()
    print(f"block: {c} rows x {n} keys, {int(counts.sum()):,} candidates ({counts.mean():.0f} per row)")
    specs = resolve_metrics((1, 2, 4, 8), ("r_precision", "map@r", "map", "asi"))
    gl = [np.ascontiguousarray(labels[:, s]) for s in range(labels.shape[1])]
    job = eng._ChunkMetrics.for_chunk(counts, qlabels, gl, parents, specs, None, harmonic_numbers(n))
    ranks, gidx, _ = run(eng)

    def metrics():
        step = job.block_rows()
        for lo in range(0, c, step):
            job(lo, min(c, lo + step), ranks, gidx)

    tiny_scores, tiny_ranges = _tiny_block(c)
    per_row = {
        "merge": median_seconds(lambda: run(eng), args.repeats),
        "metrics": median_seconds(metrics, args.repeats),
        "overhead (64 keys, 8 candidates per row)": median_seconds(
            lambda: run(eng, tiny_scores, tiny_ranges), args.repeats),
        "merge, 2 threads (wall)": median_seconds(lambda: run(eng, threads=2), args.repeats),
        "overhead, 2 threads (wall)": median_seconds(lambda: run(eng, tiny_scores, tiny_ranges, 2), args.repeats),
    }
    for name, t in per_row.items():
        print(f"{name:45s} {t * 1e6 / c:9.1f} us per row")
    share = per_row["overhead (64 keys, 8 candidates per row)"] / (per_row["merge"] + per_row["metrics"])
    print(f"call overhead / (merge + metrics), one thread: {100 * share:.1f} %")
    print("stages of merge (engine's functions, its groups of rows):")
    for name, t in _stages(eng, scores, cands, counts, args.repeats).items():
        print(f"  {name:43s} {t * 1e6 / c:9.1f} us per row")
    if not args.no_profile:
        prof = cProfile.Profile()
        prof.enable()
        run(eng)
        prof.disable()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(18)
        print(text.getvalue())
    if args.old:
        old = _load_engine(args.old, "merge_stages_other_engine")
        o_ranks, o_gidx, _ = run(old)
        same = np.array_equal(o_ranks, ranks) and np.array_equal(o_gidx, gidx)
        print(f"old engine's ranks and indices identical: {same}")
        times: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(args.repeats):
            for name, module in (("old", old), ("new", eng)):
                t0 = time.perf_counter()
                run(module)
                times[name].append(time.perf_counter() - t0)
        for name, ts in times.items():
            print(f"{name}: merge median {statistics.median(ts) * 1e6 / c:.1f} us per row "
                  f"(runs {', '.join(f'{t * 1e6 / c:.0f}' for t in ts)})")
        if not same:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
