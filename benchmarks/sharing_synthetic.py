"""Sharing Matters / MIC on the embedded synthetic hierarchy, zero-shot split (unseen fine classes at test time).

Methods, all with the same model (simple_cnn, two 64-d L2-normalised heads "class" and "shared"), optimiser (Adam,
lr 1e-3, weight decay 4e-4; margin betas lr 5e-4) and budget (``--steps`` class-batch iterations of 8 fine classes x 4
images; the alternating MIC route adds its shared steps on top, as in the paper):

* ``baseline``: margin loss + distance-weighted sampling on the class head only (shared head untrained);
* ``sharing-standard`` / ``sharing-full`` / ``sharing-random``: ``summed`` combination, L_class + alpha * L_share
  (margin loss on t* triplets of that variant) + rho * L_adv;
* ``sharing-standard-noadv``: ``sharing-standard`` without the decorrelation term (rho = 0);
* ``mic``: ``alternating`` combination, shared steps (probability p_aux) on surrogate classes from k-means of
  per-class-standardised low-level features (first conv block, 4x4 pooled), re-clustered on the shared embedding
  every ``--recluster-every`` epochs, label noise 0.2, rho * L_adv on the shared step.

Every method trains on the engine's modules (the baseline and the ``summed`` variants on ``MetricLearningModule``,
MIC on ``AlternatingSharingModule``), driven by a Lightning ``Trainer`` over the engine's class-balanced sampler
(``sharing_engine.py``, shared with ``claim_sharing.py``). The results in ``docs/results/sharing-synthetic.md`` were
produced with the former plain-PyTorch trainer (git commit c67aef0).

Evaluation: leave-one-out on the test split (fine scale, classes never seen in training), Recall@1 and MAP@R of the
class head, the shared head and their concatenation, at the end of the budget (no checkpoint selection; the
validation split is evaluated too and reported next to it). Writes a Markdown table (``--out``) and raw JSON.

    .venv/bin/python benchmarks/sharing_synthetic.py --steps 600 --seeds 0 1 2 --out docs/results/sharing-synthetic.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine_info import machine_line  # noqa: E402
from result_files import add_overwrite_option, check_replace, command_line, write_json, write_md  # noqa: E402
from sharing_engine import StopAfterIterations, build_module, fit, head_metrics  # noqa: E402

from dynametric.data import SyntheticHierarchy  # noqa: E402
from dynametric.losses import MarginLoss  # noqa: E402
from dynametric.losses.decorrelation import DecorrelationLoss  # noqa: E402
from dynametric.methods.mic import MICSettings  # noqa: E402
from dynametric.methods.sharing import SharingParts  # noqa: E402
from dynametric.methods.sharing.alternating import HookPlan  # noqa: E402
from dynametric.miners import DistanceWeightedMiner, InterClassTripletMiner  # noqa: E402
from dynametric.models import build_embedder  # noqa: E402

METHODS = ("baseline", "sharing-standard", "sharing-full", "sharing-random", "sharing-standard-noadv", "mic")
METRICS = ("recall@1", "map@r")
SCRIPT = "sharing_synthetic.py"


@dataclass
class Args:
    steps: int
    seeds: list[int]
    methods: list[str]
    dim: int
    alpha: float
    rho: float
    p_aux: float
    clusters: int
    recluster_every: int
    images_per_class: int
    width: int
    threads: int
    out: Path | None
    json_out: Path | None
    overwrite: bool = False


def run_one(method: str, seed: int, a: Args, train: SyntheticHierarchy, val: SyntheticHierarchy,
            test: SyntheticHierarchy) -> dict[str, Any]:
    """One method on the engine's modules (:mod:`sharing_engine`) for ``a.steps`` class-batch iterations (MIC's
    shared steps come on top), evaluated on the last iterate."""
    torch.manual_seed(seed)
    n_classes = int(train.labels[:, 0].max()) + 1
    model = build_embedder("simple_cnn", embedding_dim=a.dim, num_heads=2, backbone_kwargs={"width": a.width})
    class_loss = MarginLoss(learn_beta=True, num_classes=n_classes)
    class_miner = DistanceWeightedMiner(cutoff=0.5, seed=seed)
    plan = None
    if method == "mic":
        shared_loss = MarginLoss(learn_beta=True, num_classes=a.clusters)
        shared_miner: torch.nn.Module = DistanceWeightedMiner(cutoff=0.5, seed=seed + 1)
        mic = MICSettings.from_kwargs({
            "p_aux": a.p_aux, "adv_step": "shared", "num_clusters": a.clusters, "recluster_every": a.recluster_every,
            "label_noise": 0.2, "standardise": "mean", "feature_layer": "backbone.body.features.3", "m_shared": 4})
        plan = HookPlan("mic", mic.p_aux, mic.adv_step, "class", "shared", 4, 32, seed, mic)
    else:
        shared_loss = MarginLoss(learn_beta=True, num_classes=n_classes)
        variant = method.split("-")[1] if method.startswith("sharing-") else "standard"
        shared_miner = InterClassTripletMiner(variant, seed=seed + 1)
    use_adv = method not in ("baseline", "sharing-standard-noadv")
    dec = DecorrelationLoss(2 * a.dim, hidden=512) if use_adv else None
    parts = SharingParts(class_loss, shared_loss, class_miner, shared_miner, dec)
    kind = "baseline" if method == "baseline" else "alternating" if method == "mic" else "summed"
    module = build_module(kind, model, parts, lr=1e-3, alpha=a.alpha, rho=a.rho, plan=plan)
    t0 = time.perf_counter()
    fit(module, train, seed=seed, callbacks=[StopAfterIterations(a.steps)])
    seconds = time.perf_counter() - t0
    shared_steps = {"baseline": 0, "mic": getattr(module, "shared_steps", 0)}.get(method, a.steps)
    result: dict[str, Any] = {"method": method, "seed": seed, "seconds": seconds, "shared_steps": shared_steps}
    if isinstance(shared_miner, InterClassTripletMiner) and method != "baseline":
        result["tstar_skipped"] = [shared_miner.total_skipped, shared_miner.total_anchors]
    labeler = getattr(module, "labeler", None)
    if labeler is not None:
        result["reclusterings"] = [e for e, _ in labeler.history]
    for split_name, ds in (("test", test), ("val", val)):
        result[split_name] = head_metrics(module.embedder, ds.tensors(), ds.labels[:, :1], METRICS)
    return result


def _fmt(values: list[float]) -> str:
    mean = 100 * statistics.fmean(values)
    sd = 100 * statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{mean:.1f} ± {sd:.1f}"


def table(results: list[dict[str, Any]], split: str, methods: list[str]) -> str:
    lines = ["| method | class R@1 | class MAP@R | shared R@1 | shared MAP@R | concat R@1 | concat MAP@R |",
             "|---|---|---|---|---|---|---|"]
    for m in methods:
        rows = [r for r in results if r["method"] == m]
        if not rows:
            continue
        cells = []
        for head in ("class", "shared", "concat"):
            for k in METRICS:
                cells.append(_fmt([r[split][head][k] for r in rows]))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=0.3)
    ap.add_argument("--rho", type=float, default=100.0)
    ap.add_argument("--p-aux", type=float, default=0.8)
    ap.add_argument("--clusters", type=int, default=30)
    ap.add_argument("--recluster-every", type=int, default=3)
    ap.add_argument("--images-per-class", type=int, default=10)
    ap.add_argument("--width", type=int, default=16, help="simple_cnn base width")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--json", dest="json_out", type=Path, default=None)
    add_overwrite_option(ap)
    a = Args(**vars(ap.parse_args(argv)))
    check_replace([a.out, a.json_out], SCRIPT, "full", a.overwrite)
    torch.set_num_threads(a.threads)
    t0 = time.perf_counter()
    train = SyntheticHierarchy("train", seed=0, images_per_class=a.images_per_class)
    val = SyntheticHierarchy("val", seed=0, images_per_class=a.images_per_class)
    test = SyntheticHierarchy("test", seed=0, images_per_class=a.images_per_class)
    results = []
    for seed in a.seeds:
        for method in a.methods:
            r = run_one(method, seed, a, train, val, test)
            results.append(r)
            print(json.dumps({k: r[k] for k in ("method", "seed", "seconds")} | {"test": r["test"]}), flush=True)
    if a.json_out is not None:
        write_json(a.json_out, {"args": {k: str(v) for k, v in vars(a).items()}, "results": results}, SCRIPT,
                   "full")
    cmd = command_line(SCRIPT, argv)
    text = "\n".join([
        "# Sharing Matters / MIC on the synthetic hierarchy (zero-shot split)",
        "",
        f"Command: `{cmd}`  ",
        f"Machine: {machine_line()} (at the end); total {time.perf_counter() - t0:.0f} s.",
        "",
        f"Setup: SyntheticHierarchy seed 0, {a.images_per_class} images per fine class; train 180 fine classes, "
        f"val 54, test 90 (disjoint fine classes). simple_cnn (width {a.width}), two "
        f"{a.dim}-d heads, Adam lr 1e-3, {a.steps} class-batch iterations (8 classes x 4 images), seeds "
        f"{a.seeds}; alpha_shared {a.alpha}, rho {a.rho}, MIC: K {a.clusters}, p_aux {a.p_aux}, re-cluster every "
        f"{a.recluster_every} epochs, label noise 0.2. Fine-scale leave-one-out, cosine; mean ± std over seeds, %.",
        "",
        "The baseline trains the class head only; its shared head is the untrained random linear head on the trained "
        "backbone (shown for reference; its concat includes it). Numbers are for the last iterate (no checkpoint "
        "selection), so the validation split is reported as a second unseen-class sample, not used for selection.",
        "",
        "## Test split (unseen classes)",
        "",
        table(results, "test", a.methods),
        "",
        "## Validation split (unseen classes, for reference)",
        "",
        table(results, "val", a.methods),
        "",
        "## Run details",
        "",
        "| method | seed | train s | shared steps | t* anchors skipped | re-clustered at epochs |",
        "|---|---|---|---|---|---|",
        *[f"| {r['method']} | {r['seed']} | {r['seconds']:.0f} | {r['shared_steps']} | "
          f"{'/'.join(map(str, r['tstar_skipped'])) if 'tstar_skipped' in r else '-'} | "
          f"{', '.join(map(str, r.get('reclusterings', []))) or '-'} |" for r in results],
        "",
    ])
    if a.out is not None:
        write_md(a.out, text, SCRIPT, "full")
    print(text)
    return 0


if __name__ == "__main__":
    from dynametric.pipeline.run import quiet_lightning

    quiet_lightning()  # Lightning's banners and inapplicable warnings, as `dynametric train` hides them
    raise SystemExit(main())
