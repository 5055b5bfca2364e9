"""PDDM vs triplet baselines on the embedded synthetic hierarchy (zero-shot: test fine classes are unseen).

Methods (same model, data, sampler, optimizer, batch size and number of steps for all):

* ``pddm_faithful``   PDDMLoss, one hard quadruplet per batch (the paper's procedure)
* ``pddm_per_pair``   PDDMLoss, one quadruplet per positive pair (library option, not the paper's)
* ``pddm_triplet``    PDDMLoss, faithful mining, single header ("PDDM + Triplet" ablation; opt-in)
* ``triplet_semihard``           TripletMarginLoss(margin) + TripletMarginMiner(semihard)
* ``triplet_distance_weighted``  TripletMarginLoss(margin) + DistanceWeightedMiner(cutoff 0.5)

Every ``--eval-every`` steps the test split is embedded and evaluated leave-one-out at the fine scale (unseen
classes): Recall@1/2/4/8 and MAP@R (metric vs step = convergence). At the end, PDDM runs are also evaluated with
the top-``--rerank-k`` Euclidean neighbours re-ranked by the learned PDDM unit. No model selection is done
(fixed budget), so the test split is never used to choose anything.

Run (writes the Markdown report and the raw JSON atomically):
    python benchmarks/pddm_synthetic.py --seeds 0 1 2 --steps 400 --eval-every 50 \
        --out docs/results/pddm-synthetic.md --json docs/results/pddm-synthetic.json

This is a plain PyTorch loop over library components (the Lightning engine is not needed for it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dynametric.data import SyntheticHierarchy
from dynametric.data.samplers import MPerClassSampler
from dynametric.losses import PDDMLoss, TripletMarginLoss
from dynametric.metrics import evaluate_embeddings
from dynametric.miners import DistanceWeightedMiner, TripletMarginMiner
from dynametric.models import build_embedder
from dynametric.retrieval.pddm_rerank import pddm_rerank, recall_at_k_from_ranking

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claim_common import environment  # noqa: E402
from result_files import (  # noqa: E402
    add_overwrite_option,
    check_replace,
    command_line,
    parse_json,
    write_json,
    write_md,
)

SCRIPT = "pddm_synthetic.py"


def _legacy(path: Path, text: str) -> str | None:
    """A ``--json`` file of this script from before the markers (``setup``, ``runs``, ``command``, ``env``)."""
    if path.suffix != ".json":
        return None
    data = parse_json(text)
    ok = isinstance(data, dict) and {"setup", "runs", "command", "env"} <= set(data) and SCRIPT in str(data["command"])
    return "full" if ok else None

METHODS = ("pddm_faithful", "pddm_per_pair", "pddm_triplet", "triplet_semihard", "triplet_distance_weighted")
DEFAULT_METHODS = ("pddm_faithful", "pddm_per_pair", "triplet_semihard", "triplet_distance_weighted")
METRICS = ("recall@1", "recall@2", "recall@4", "recall@8", "map@r")


@dataclass
class Setup:
    steps: int
    eval_every: int
    batch_size: int
    m: int
    dim: int
    lr: float
    margin: float
    rerank_k: int
    data_seed: int
    images_per_class: int


def build_objective(method: str, dim: int, margin: float, seed: int) -> tuple[nn.Module, nn.Module | None]:
    """(loss, miner) of a method."""
    if method == "pddm_faithful":
        return PDDMLoss(dim, mode="faithful_one_per_batch"), None
    if method == "pddm_per_pair":
        return PDDMLoss(dim, mode="per_positive_pair"), None
    if method == "pddm_triplet":
        return PDDMLoss(dim, mode="faithful_one_per_batch", variant="triplet"), None
    if method == "triplet_semihard":
        return TripletMarginLoss(margin=margin), TripletMarginMiner(margin=margin, type_of_triplets="semihard")
    if method == "triplet_distance_weighted":
        return TripletMarginLoss(margin=margin), DistanceWeightedMiner(cutoff=0.5, seed=seed)
    raise SystemExit(f"unknown method {method!r}; expected one of {METHODS}")


@torch.no_grad()
def embed(model: nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    model.eval()
    out = torch.cat([model(images[i:i + batch]) for i in range(0, images.shape[0], batch)])
    model.train()
    return out


def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    emb = embed(model, images)
    res = evaluate_embeddings(emb, labels[:, 0], metrics=list(METRICS), k_values=(1, 2, 4, 8), distance="euclidean")
    return {k: float(res["fine"][k]) for k in METRICS}


def train_one(method: str, seed: int, setup: Setup, train: SyntheticHierarchy, test_images: torch.Tensor,
              test_labels: torch.Tensor, log: Callable[[str], None]) -> dict:
    torch.manual_seed(seed)
    model = build_embedder(backbone="simple_cnn", pretrained=False, embedding_dim=setup.dim, normalize=True)
    loss, miner = build_objective(method, setup.dim, setup.margin, seed)
    params = [{"params": list(model.parameters())}]
    loss_params = [p for p in loss.parameters() if p.requires_grad]
    if loss_params:
        params.append({"params": loss_params})
    opt = torch.optim.Adam(params, lr=setup.lr)
    sampler = MPerClassSampler(train.labels, m=setup.m, batch_size=setup.batch_size, scale=0, seed=seed)
    images = train.tensors()
    curve = [{"step": 0, **evaluate(model, test_images, test_labels)}]
    step, epoch, train_time = 0, 0, 0.0
    while step < setup.steps:
        sampler.set_epoch(epoch)
        for batch in sampler:
            if step >= setup.steps:
                break
            t0 = time.perf_counter()
            idx = torch.as_tensor(batch)
            emb = model(images[idx])
            labels = train.labels[idx]
            value = loss(emb, labels, miner(emb, labels)) if miner is not None else loss(emb, labels)
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            train_time += time.perf_counter() - t0
            step += 1
            if step % setup.eval_every == 0 or step == setup.steps:
                curve.append({"step": step, "loss": float(value.detach()),
                              **evaluate(model, test_images, test_labels)})
                log(f"  {method} seed {seed} step {step}: R@1 {curve[-1]['recall@1']:.3f} "
                    f"MAP@R {curve[-1]['map@r']:.3f}")
        epoch += 1
    out: dict = {"method": method, "seed": seed, "curve": curve, "final": curve[-1],
                 "train_seconds_per_step": train_time / max(1, setup.steps)}
    if isinstance(loss, PDDMLoss):
        loss.eval()
        emb = embed(model, test_images)
        res = pddm_rerank(loss.unit, emb, k=setup.rerank_k)
        ks = tuple(k for k in (1, 2, 4, 8) if k <= setup.rerank_k)
        out["rerank"] = {
            "euclidean": recall_at_k_from_ranking(res.euclidean_indices, test_labels[:, 0], k_values=ks),
            "pddm": recall_at_k_from_ranking(res.indices, test_labels[:, 0], k_values=ks),
        }
        out["degenerate_batches"] = loss.num_degenerate_batches
    return out


def _ms(values: list[float]) -> str:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{100 * mean:.1f} ± {100 * sd:.1f}"


def report(runs: list[dict], setup: Setup, methods: list[str], seeds: list[int], command: str, env: str) -> str:
    by = {m: [r for r in runs if r["method"] == m] for m in methods}
    lines = [
        "# PDDM on the synthetic hierarchy (zero-shot fine classes)",
        "",
        "Produced by:",
        "",
        "```bash",
        command,
        "```",
        "",
        f"Environment: {env}. Model: `simple_cnn`, {setup.dim}-d L2-normalised embedding; Adam lr {setup.lr} "
        f"(PDDM unit in its own parameter group, same lr); {setup.steps} steps of {setup.batch_size} images "
        f"({setup.batch_size // setup.m} fine classes x {setup.m}); seeds {seeds} (model init and sampler; the data "
        f"seed is {setup.data_seed}). Data: `SyntheticHierarchy` 32x32, {setup.images_per_class} images per fine "
        "class; train on the `train` split, evaluate leave-one-out on the `test` split, whose fine classes are "
        "disjoint from training (zero-shot). Metrics at the **fine** scale, in %, mean ± std over seeds. "
        f"Triplet margin {setup.margin}; PDDM defaults alpha 0.5, beta 1.0, lambda 0.5, H = D, dropout 0.5. "
        "No model selection: every number is the last step's.",
        "",
        "## Final retrieval (fine scale, unseen classes)",
        "",
        "| method | R@1 | R@2 | R@4 | R@8 | MAP@R | s/step |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in methods:
        rs = by[m]
        cells = [_ms([r["final"][k] for r in rs]) for k in METRICS]
        sps = statistics.fmean(r["train_seconds_per_step"] for r in rs)
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {sps:.3f} |")
    steps = [p["step"] for p in by[methods[0]][0]["curve"]]
    for metric in ("recall@1", "map@r"):
        lines += ["", f"## Convergence: fine {metric} (%) vs step, mean over seeds", "",
                  "| method | " + " | ".join(str(s) for s in steps) + " |",
                  "|---|" + "---:|" * len(steps)]
        for m in methods:
            vals = [statistics.fmean(r["curve"][i][metric] for r in by[m]) for i in range(len(steps))]
            lines.append(f"| {m} | " + " | ".join(f"{100 * v:.1f}" for v in vals) + " |")
    pddm = [m for m in methods if m.startswith("pddm")]
    if pddm:
        ks = list(by[pddm[0]][0]["rerank"]["euclidean"])
        lines += ["", f"## PDDM re-ranking of the top-{setup.rerank_k} Euclidean neighbours (fine, %)", "",
                  "| method | ranking | " + " | ".join(k.replace("recall", "R") for k in ks) + " |",
                  "|---|---|" + "---:|" * len(ks)]
        for m in pddm:
            for kind in ("euclidean", "pddm"):
                lines.append(f"| {m} | {kind} | " + " | ".join(
                    _ms([r["rerank"][kind][k] for r in by[m]]) for k in ks) + " |")
        degenerate = {m: sum(r.get("degenerate_batches", 0) for r in by[m]) for m in pddm}
        lines += ["", f"Degenerate PDDM batches (no positive pair or no negative), summed over seeds: {degenerate}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), choices=METHODS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--m", type=int, default=4)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--margin", type=float, default=0.2)
    parser.add_argument("--rerank-k", type=int, default=8)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--images-per-class", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="Markdown report path")
    parser.add_argument("--json", type=Path, default=None, help="raw results path")
    parser.add_argument("--from-json", default=None,
                        help="do not train: rebuild the report from a (possibly partial) --json file")
    add_overwrite_option(parser)
    args = parser.parse_args(argv)
    check_replace([args.out] if args.from_json else [args.out, args.json], SCRIPT, "full", args.overwrite, _legacy)
    if args.from_json:
        with open(args.from_json, encoding="utf-8") as fh:
            saved = json.load(fh)
        runs = [r for r in saved["runs"] if r["seed"] in args.seeds]  # --seeds selects saved runs here
        methods = list(dict.fromkeys(r["method"] for r in runs))
        seeds = sorted({r["seed"] for r in runs})
        complete = [m for m in methods if {r["seed"] for r in runs if r["method"] == m} == set(seeds)]
        text = report([r for r in runs if r["method"] in complete], Setup(**saved["setup"]), complete, seeds,
                      saved.get("command", "(command not recorded)"), saved.get("env", "(not recorded)"))
        print(text)
        if args.out:
            write_md(args.out, text, SCRIPT, "full")
        return 0
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    setup = Setup(args.steps, args.eval_every, args.batch_size, args.m, args.dim, args.lr, args.margin,
                  args.rerank_k, args.data_seed, args.images_per_class)
    train = SyntheticHierarchy(split="train", seed=args.data_seed, images_per_class=args.images_per_class)
    test = SyntheticHierarchy(split="test", seed=args.data_seed, images_per_class=args.images_per_class)
    test_images, test_labels = test.tensors(), test.labels

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"train {len(train)} images / {int(train.labels[:, 0].unique().numel())} fine classes; "
        f"test {len(test)} / {int(test_labels[:, 0].unique().numel())}")
    command = command_line(SCRIPT, argv)
    env = environment()  # the machine line and the git revision (-dirty with local changes)
    runs = []
    for seed in args.seeds:
        for method in args.methods:
            runs.append(train_one(method, seed, setup, train, test_images, test_labels, log))
            if args.json:  # keep partial results if the run is cut short
                write_json(args.json, {"setup": vars(setup), "command": command, "env": env, "runs": runs}, SCRIPT,
                           "full")
    text = report(runs, setup, list(args.methods), list(args.seeds), command, env)
    print(text)
    if args.out:
        write_md(args.out, text, SCRIPT, "full")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
