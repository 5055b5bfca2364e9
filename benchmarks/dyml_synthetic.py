"""DyML on the embedded synthetic hierarchy: single-scale training, multi-scale baselines and CSL, same budget.

Every method trains the same model (``simple_cnn``, max pooling, L2-normalised embedding) for the same number of
optimiser steps on batches of the same size, then is tested with the DyML all-in-one protocol
(:func:`dynametric.engine.dyml.evaluate_all_in_one`: leave-one-out on the class-disjoint ``test`` split, relevance
per scale, ``query_in_gallery=detect``) reporting ASI / mAP / R@1 per scale and their mean.

Methods (Sun et al., CVPR 2021):

* ``fine-only`` / ``coarse-only``: Multi-Similarity on one label column, fine-level P x K batches;
* ``<loss> (3-chunk)``: ``MultiScaleLoss`` of the loss per scale on DyML's three-scale sampler, each scale's loss on
  its own chunk (``negatives: chunk``);
* ``<loss> (PxK)``: the same per-scale sum on plain fine-level P x K batches (every scale sees the whole batch);
* ``CSL (PxK)`` / ``CSL (3-chunk)``: the proxy form of Cross-Scale Learning on either sampler.

Usage::

    python benchmarks/dyml_synthetic.py --seeds 0 1 --steps 300 --out docs/results/dyml-synthetic.md
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from dynametric.data import SyntheticHierarchy
from dynametric.data.samplers import MPerClassSampler, ThreeScaleSampler
from dynametric.engine.dyml import DyMLProtocol, evaluate_all_in_one, image_digests
from dynametric.losses import (
    CircleLoss,
    CosFaceLoss,
    CSLLoss,
    MultiScaleLoss,
    MultiSimilarityLoss,
    NPairsLoss,
    ThreeScaleChunks,
    TripletMarginLoss,
)
from dynametric.models import build_embedder
from dynametric.utils.io import atomic_write_json, atomic_write_text

SCALES = ("fine", "middle", "coarse")
BASELINES: dict[str, Callable[[int], torch.nn.Module]] = {}


def _per_scale(name: str, num_classes: list[int], dim: int) -> Callable[[int], torch.nn.Module]:
    def make(s: int) -> torch.nn.Module:
        if name == "Triplet":
            return TripletMarginLoss(margin=0.1)
        if name == "N-pair":
            return NPairsLoss()
        if name == "MS":
            return MultiSimilarityLoss()
        if name == "CosFace":
            return CosFaceLoss(num_classes=num_classes[s], embedding_size=dim)
        if name == "Circle":
            return CircleLoss(m=0.25, gamma=64)
        raise KeyError(name)

    return make


def build_method(method: str, train_labels: torch.Tensor, dim: int, k: int,
                 gamma: float = 32.0) -> tuple[torch.nn.Module | None, str]:
    """``(loss, sampler kind)`` for a method name; sampler kind is ``pxk`` or ``chunk``; ``untrained``: no loss."""
    num_classes = [int(train_labels[:, s].max()) + 1 for s in range(3)]
    if method == "untrained":
        return None, "pxk"
    if method == "fine-only":
        return MultiSimilarityLoss(scale=0), "pxk"
    if method == "coarse-only":
        return MultiSimilarityLoss(scale=2), "pxk"
    base, _, layout = method.partition(" (")
    sampler = "chunk" if layout.startswith("3-chunk") else "pxk"
    if base == "CSL":
        return CSLLoss.from_labels(train_labels, embedding_size=dim, gamma=gamma), sampler
    if base == "CSL pairs":  # in-batch samples in place of proxies (Sun et al., CVPR 2021, csl_mode: pairs)
        return CSLLoss(None, embedding_size=dim, gamma=gamma, mode="pairs"), sampler
    chunks = ThreeScaleChunks(k, 3) if sampler == "chunk" else None
    return MultiScaleLoss(_per_scale(base, num_classes, dim), chunks=chunks, num_scales=3), sampler


METHODS = ["untrained", "fine-only", "coarse-only",
           *[f"{b} ({lay})" for b in ("Triplet", "N-pair", "MS", "CosFace", "Circle") for lay in ("3-chunk", "PxK")],
           "CSL (3-chunk)", "CSL (PxK)"]


def run_one(method: str, seed: int, steps: int, items: int, k: int, dim: int, lr: float, proxy_lr: float,
            train: SyntheticHierarchy, test: SyntheticHierarchy, test_digests: list[str], gamma: float = 32.0) -> dict:
    torch.manual_seed(seed)
    model = build_embedder(backbone="simple_cnn", embedding_dim=dim, pooling="max", normalize=True)
    labels = train.labels
    loss, sampler_kind = build_method(method, labels, dim, k, gamma)
    batch = items * 3 * k  # identical images per step for every method
    if sampler_kind == "chunk":
        sampler = ThreeScaleSampler(labels, k=k, items_per_batch=items, seed=seed, iterations_per_epoch=steps)
    else:
        sampler = MPerClassSampler(labels, m=k, batch_size=batch, scale=0, seed=seed, iterations_per_epoch=steps)
    if loss is None:
        steps = 0
    groups = [{"params": list(model.parameters()), "lr": lr}]
    loss_params = [] if loss is None else list(loss.parameters())
    if loss_params:
        groups.append({"params": loss_params, "lr": proxy_lr})
    opt = torch.optim.Adam(groups, weight_decay=1e-4)
    images = train.tensors()
    t0 = time.perf_counter()
    model.train()
    done = 0
    value = torch.zeros(())
    sampler.set_epoch(0)
    for idx in sampler if steps > 0 else []:
        assert loss is not None
        idx_t = torch.as_tensor(idx)
        x = images[idx_t]
        x = torch.where(torch.rand(len(idx), 1, 1, 1) < 0.5, x, x.flip(3))  # horizontal flip augmentation
        value = loss(model(x), labels[idx_t])
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        done += 1
        if done >= steps:
            break
    train_s = time.perf_counter() - t0
    model.eval()
    with torch.no_grad():
        timgs = test.tensors()
        emb = torch.cat([model(timgs[i:i + 256]) for i in range(0, len(timgs), 256)])
    res = evaluate_all_in_one(emb, test.labels, DyMLProtocol("all_in_one", "detect"), scale_names=list(SCALES),
                              digests=test_digests)
    return {"method": method, "seed": seed, "steps": done, "batch": batch, "train_s": round(train_s, 1),
            "final_loss": float(value.detach()), "result": res}


def _fmt(values: list[float]) -> str:
    m = sum(values) / len(values)
    if len(values) == 1:
        return f"{100 * m:.1f}"
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
    return f"{100 * m:.1f} ± {100 * sd:.1f}"


def table(runs: list[dict], methods: list[str]) -> str:
    cols = [(s, m) for s in (*SCALES, "mean") for m in ("asi", "map", "recall@1")]
    short = {"asi": "ASI", "map": "mAP", "recall@1": "R@1"}
    head = "| method | seeds | " + " | ".join(f"{s} {short[m]}" for s, m in cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for method in methods:
        rs = [r for r in runs if r["method"] == method]
        if not rs:
            continue
        cells = [_fmt([r["result"][s][m] for r in rs]) for s, m in cols]
        lines.append(f"| {method} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--items", type=int, default=8, help="three-scale items per batch (batch = items x 3 x k)")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--proxy-lr", type=float, default=1e-2)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--csl-gamma", type=float, default=32.0)
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None, help="markdown results file")
    ap.add_argument("--json", type=Path, default=None, help="raw per-run results")
    ap.add_argument("--resume", action="store_true", help="keep the runs already in --json, run only the others")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    runs = json.loads(args.json.read_text()) if args.resume and args.json and args.json.is_file() else []
    for seed in args.seeds:
        if all(any(r["method"] == m and r["seed"] == seed for r in runs) for m in args.methods):
            continue
        train = SyntheticHierarchy(split="train", seed=seed, image_size=args.image_size)
        test = SyntheticHierarchy(split="test", seed=seed, image_size=args.image_size)
        digests = image_digests(test)
        for method in args.methods:
            if any(r["method"] == method and r["seed"] == seed for r in runs):
                continue
            r = run_one(method, seed, args.steps, args.items, args.k, args.dim, args.lr, args.proxy_lr, train, test,
                        digests, args.csl_gamma)
            runs.append(r)
            m = r["result"]["mean"]
            print(f"seed {seed} {method:<18} mean ASI {m['asi']:.3f} mAP {m['map']:.3f} R@1 {m['recall@1']:.3f} "
                  f"(fine R@1 {r['result']['fine']['recall@1']:.3f}, coarse R@1 "
                  f"{r['result']['coarse']['recall@1']:.3f}) {r['train_s']}s", flush=True)
            if args.json:
                atomic_write_json(args.json, runs)
    text = table(runs, args.methods)
    print(text)
    if args.out:
        cmd = "python benchmarks/dyml_synthetic.py " + " ".join(sys.argv[1:] if argv is None else argv)
        meta = {"seeds": args.seeds, "steps": args.steps, "batch": args.items * 3 * args.k, "dim": args.dim}
        atomic_write_text(args.out, f"<!-- generated by: {cmd} -->\n{text}\n\n<!-- {json.dumps(meta)} -->\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
