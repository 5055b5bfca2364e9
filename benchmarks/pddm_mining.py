"""PDDM mining cost: pairs scored per second and the time of the mining / loss steps.

For each batch size ``m`` (default 64, 128, 256) with embedding size ``D`` and PDDM width ``H``, measured side by
side in one process:

* ``score_matrix``: all-pairs scores (no grad, dropout off) with the position-stream factorisation, ``i < j`` only;
  "pairs/s" counts the ``m (m - 1) / 2`` distinct pairs (the ``m^2`` matrix is their mirror).
* ``naive``: the same pairs through ``score_pairs`` (position stream evaluated per pair, no factorisation).
* ``mine``: ``score_matrix`` + :func:`mine_hard_quadruplets` (both modes; mining itself is index work).
* ``loss fwd+bwd``: a full ``PDDMLoss`` forward and backward (faithful and per-positive-pair), m/4 classes x 4.

Run:  ``python benchmarks/pddm_mining.py --dim 512 --hidden 1024 --batches 64 128 256 --repeats 5``
Prints a Markdown table (median over ``--repeats`` after one warm-up) and, with ``--json PATH``, writes the
numbers atomically.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dynametric.losses.pddm import PDDMLoss
from dynametric.miners.pddm import mine_hard_quadruplets
from dynametric.models.pddm import PDDM

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import machine_line  # noqa: E402
from result_files import add_overwrite_option, check_replace, write_json  # noqa: E402

SCRIPT = "pddm_mining.py"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_time(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_batch(unit: PDDM, m: int, repeats: int, device: torch.device) -> dict:
    """All timings for one batch size ``m`` (m/4 classes x 4 images)."""
    dim, hidden = unit.embedding_dim, unit.hidden_dim
    f = torch.nn.functional.normalize(torch.randn(m, dim, device=device), dim=1)
    labels = torch.arange(m, device=device) // 4
    iu, ju = torch.triu_indices(m, m, offset=1, device=device)
    pairs = iu.numel()

    def score() -> torch.Tensor:
        with torch.no_grad():
            return unit.score_matrix(f, deterministic=True)

    def naive() -> torch.Tensor:
        with torch.no_grad():
            step = unit.pairs_per_chunk()
            return torch.cat([unit.score_pairs(f[iu[s:s + step]], f[ju[s:s + step]], deterministic=True)
                              for s in range(0, pairs, step)])

    def mine(mode: str) -> Callable[[], object]:
        return lambda: mine_hard_quadruplets(score(), labels, mode)

    def loss_step(mode: str) -> Callable[[], object]:
        loss = PDDMLoss(dim, hidden_dim=hidden, mode=mode).to(device)
        emb = torch.randn(m, dim, device=device, requires_grad=True)

        def step() -> None:
            emb.grad = None
            loss.zero_grad(set_to_none=True)
            loss(emb, labels).backward()

        return step

    t_score = _median_time(score, repeats, device)
    t_naive = _median_time(naive, repeats, device)
    return {
        "batch": m, "pairs": pairs,
        "score_s": t_score, "pairs_per_s": pairs / t_score,
        "naive_s": t_naive, "naive_pairs_per_s": pairs / t_naive,
        "mine_faithful_s": _median_time(mine("faithful_one_per_batch"), repeats, device),
        "mine_per_pair_s": _median_time(mine("per_positive_pair"), repeats, device),
        "loss_faithful_s": _median_time(loss_step("faithful_one_per_batch"), repeats, device),
        "loss_per_pair_s": _median_time(loss_step("per_positive_pair"), repeats, device),
    }


def run(dim: int, hidden: int, batches: list[int], repeats: int, device: torch.device, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    unit = PDDM(dim, hidden_dim=hidden, dropout=0.5).to(device)
    return [bench_batch(unit, m, repeats, device) for m in batches]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the numbers to this JSON file")
    add_overwrite_option(parser)
    args = parser.parse_args(argv)
    check_replace([args.json], SCRIPT, "full", args.overwrite)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rows = run(args.dim, args.hidden, args.batches, args.repeats, device, args.seed)
    print(f"PDDM D={args.dim} H={args.hidden}, device {device}, median of {args.repeats}; {machine_line()}")
    print()
    print("| batch | pairs (i<j) | score_matrix ms | pairs/s | naive pairs/s | speed-up | mine faithful ms "
          "| mine per-pair ms | loss fwd+bwd faithful ms | loss fwd+bwd per-pair ms |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['batch']} | {r['pairs']} | {1e3 * r['score_s']:.2f} | {r['pairs_per_s']:.3g} "
              f"| {r['naive_pairs_per_s']:.3g} | {r['naive_s'] / r['score_s']:.2f}x "
              f"| {1e3 * r['mine_faithful_s']:.2f} | {1e3 * r['mine_per_pair_s']:.2f} "
              f"| {1e3 * r['loss_faithful_s']:.2f} | {1e3 * r['loss_per_pair_s']:.2f} |")
    if args.json:
        write_json(args.json, {"dim": args.dim, "hidden": args.hidden, "device": str(device),
                               "machine": machine_line(), "rows": rows}, SCRIPT, "full")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
