"""Sharing Matters / MIC claim on the controlled synthetic benchmark: does learning what classes *share* (MIC's
clustering route, or DiVA-style t* sharing) improve retrieval of unseen classes at a matched number of updates, and
does it need a split where a factor that varies *within* training classes defines the test classes?

Four data splits, the same images per class and 54 training classes (36 on ``held-out-val-colour``) (``--splits``;
the default runs the first two):

* ``held-out``: ``SyntheticHierarchy(held_out_factor="texture")``: train classes (shape, colour) with texture and
  size varying per image; val classes (shape, size); test classes (shape, texture) with colour varying. Validation
  holds out a *different* factor (size) than test (texture);
* ``today``: the default split (fine classes are (shape, colour, texture, size) variants; disjoint per split);
* ``held-out-val``: ``SyntheticHierarchy(held_out_factor="texture", val_classes="same_factor")``: the same train
  classes as ``held-out``, but val and test both hold out texture on disjoint shapes: val classes (shape, texture)
  for one shape per family (12 classes), test classes (shape, texture) for the other 6 shapes (24 classes).
* ``held-out-val-colour``: ``SyntheticHierarchy(held_out_factor="colour", val_classes="same_factor")``: colour and
  texture swap roles: train classes (shape, texture) with colour and size varying per image; val classes (shape,
  colour) for one shape per family (18 classes), test classes (shape, colour) for the other 6 shapes (36 classes;
  36 training classes, 9 shapes x 4 textures). Colour is visible at 16 px, texture barely is.

Pretrained start (``--pretrain-steps N``, default 0: every method starts from a fresh network): as the paper's
networks start from ImageNet, every method of a (seed, split) starts from a deep copy of one network pretrained on
synthetic classes (disjoint from the seed's classes on ``today`` only, see below): the ``train`` split of
``SyntheticHierarchy(seed=1000 + seed)`` with the default
(shape, colour, texture, size) fine classes, ``--pretrain-per-shape`` of them per shape (val 1, test 1), at the
benchmark's image size and images per class; margin loss (beta learnt) + distance-weighted sampling on *both* heads
(the sum of the two terms; ``sharing_engine.build_module("pretrain")``), Adam lr ``--pretrain-lr`` (default
``--lr``; weight decay 4e-4, betas lr 5e-4), 8 classes x 4 images, N steps, on the engine's
trainer. Every factor is class-defining there, so the start
knows all of them; fine-tuning on the training classes then suppresses the factor that varies within them, which is
what sharing claims to preserve. On ``today``'s split every pretraining variant that is a train/val/test class of the
seed is removed; on the held-out-factor splits nothing can be removed (every (shape, held-out factor) pair of the
test shapes is a test class, so any variant of a test shape overlaps one) and the pretraining classes are used as
drawn: they are **not disjoint** from the test classes there (``held-out-val-colour``, seed 0: 96 of the 144
pretraining classes are sub-variants of a test (shape, colour) class and all 36 test classes are covered;
:func:`pretrain_overlap` counts it per seed and the header reports it).
The start is pretrained once per (seed, removed variants) in an invocation; its val/test metrics are recorded
in every run (``start``) and reported as a reference row with each method's paired difference against it. Model
selection reads only the fine-tuning updates (the start itself is never a candidate).

Methods, same network (simple_cnn, two L2-normalised heads "class" and "shared"), optimiser (Adam, weight decay
4e-4; margin-loss betas lr 5e-4 without weight decay; decorrelation regressor weight decay 1e-6), class batches of 8
classes x 4 images (the engine's ``m_per_class`` sampler), margin loss (beta learnt) + distance-weighted sampling, and
the **same number of parameter updates** ``U = round(steps * (1 + p_aux))``. Every method trains on the engine's
modules, driven by a Lightning ``Trainer`` with ``max_steps = U`` (``sharing_engine.py``):

* ``baseline``: U class steps on the class head (its shared head stays at initialisation):
  ``MetricLearningModule`` with the class-head term only;
* ``sharing``: U ``summed`` steps, L_class + alpha * L_share(t* standard triplets) + rho * L_adv:
  ``MetricLearningModule`` with ``summed_objectives`` (L_adv: ``DecorrelationLoss`` on the ``concat`` head);
* ``mic``: alternating iterations on ``AlternatingSharingModule`` (a class step, then with probability p_aux a shared
  step on 8 surrogate classes x 4 images: k-means of per-class-standardised first-block features, re-clustered on the
  shared embedding every 3 epochs), made faithful to MIC's code: the decorrelation term on **both** steps
  (``adv_step="both"``) and label noise 0.2 **per image** (``label_noise_per="image"``). About ``steps``
  iterations: the run stops at U optimizer steps, the module skipping the shared step of an iteration whose class
  step reached U, so the count matches exactly. Its number of shared steps is recorded.

Model selection: at the first iteration end at or past every multiple of ``--eval-every`` updates (a Lightning
callback, ``sharing_engine.EvalEvery``) the val split is evaluated (leave-one-out, fine scale, cosine) and
the update with the best val R@1 of the class head is reported on test for the class head, the shared head and their
concatenation. Paired differences over seeds (each redraws data, initial network and batches) with 95 %
t-intervals (``benchmarks/claim_common.py``); each verdict is also given family-wise, its interval at the Bonferroni
level 1 - 0.05 / m over the file's m verdicts (``claim_common.bonferroni``). alpha and rho are fixed (``--alpha``,
``--rho``), not tuned, unless ``--alpha-grid`` / ``--rho-grid`` are given: then each method's hyper-parameters are
picked on val per seed and split (:func:`select`): t* sharing's (alpha, rho) jointly, MIC's rho (alpha, the weight of
the shared loss inside one summed step, has no counterpart in MIC's separate shared updates), the baseline has
neither.

Each run records the alpha and rho it was trained with (``alpha`` is ``null`` for the baseline and MIC), so
``--resume`` (this file's runs) and ``--resume-from`` (another results file's runs, e.g. an alpha = 0.3 rho grid) skip
the (method, split, seed, alpha, rho) combinations already run; runs written before ``alpha`` was recorded take the
``args.alpha`` of their file. Files whose setup (steps, sizes, lr, ...) differs are refused.

    python benchmarks/claim_sharing.py --out docs/results/claim-sharing.md
    python benchmarks/claim_sharing.py --splits held-out-val-colour today --pretrain-steps 1500 \
        --alpha-grid 0.1 0.3 1 --rho-grid 0 100 500 1500 --threads 1 --out docs/results/claim-sharing-pretrained.md
    python benchmarks/claim_sharing.py --small --out /tmp/claim-sharing.md      # seconds; used by the tests
    python benchmarks/claim_sharing.py --alpha-grid 0.1 0.3 1 --rho-grid 0 100 500 1500 \
        --resume-from docs/results/claim-sharing-rho.json --out docs/results/claim-sharing-grid.md
    python benchmarks/claim_sharing.py --splits held-out-val held-out today --alpha-grid 0.1 0.3 1 \
        --rho-grid 0 100 500 1500 --resume-from docs/results/claim-sharing-grid.json \
        --out docs/results/claim-sharing-valfix.md     # only the held-out-val runs are new
    python benchmarks/claim_sharing.py --splits held-out-val today --alpha 0.3 --rho 100 --threads 1 \
        --versus docs/results/claim-sharing-valfix.json --out docs/results/claim-sharing-port.md
        # the port to the engine's modules against the former trainer's runs (a parity table heads the file)
    python benchmarks/claim_sharing.py --render-only docs/results/claim-sharing-pretrained.json
        # today's analysis of a finished file's stored runs (nothing retrained): the .md keeps its original header
        # (a pretraining description that called the start "disjoint" is replaced by today's, and the note says so)

``--small`` changes only the *defaults* of the size options (seeds, steps, evaluation interval, image size, network,
images per class, MIC's clusters; ``--help`` lists the values): an option given explicitly keeps its value, so
``--small --seeds 5 6`` runs seeds 5 and 6, and the header's Setup line and the ``.json``'s ``args`` hold what ran.

``--render-only`` finds a ``--versus`` file the ``.json`` recorded beside the ``.json`` first (results files are
kept side by side), then at the recorded path (relative to the repository), then relative to the current directory;
the parity section names it as recorded, so a re-render from any folder gives the same file.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claim_common import (  # noqa: E402
    RERENDERED,
    Claim,
    bonferroni,
    check_results,
    command_line,
    curve_table,
    environment,
    family_line,
    family_record,
    family_summary,
    fmt_ci,
    mean_curve,
    mean_sd,
    one_interval_rule,
    original_header,
    paired_ci,
    parse_with_small,
    read_finished_results,
    rerender_note,
    results_sibling,
    run_conditions,
    small_help,
    stored_header,
    write_results,
)
from result_files import add_overwrite_option  # noqa: E402
from sharing_engine import EvalEvery, build_module, fit, head_metrics  # noqa: E402  (the engine wiring shared with sharing_synthetic)

from dynametric.data import SyntheticHierarchy  # noqa: E402
from dynametric.data.protocol import check_labeled_dataset  # noqa: E402
from dynametric.data.splits import LabelledSubset  # noqa: E402
from dynametric.losses import MarginLoss  # noqa: E402
from dynametric.losses.decorrelation import DecorrelationLoss  # noqa: E402
from dynametric.methods.mic import MICSettings  # noqa: E402
from dynametric.methods.sharing import SharingParts  # noqa: E402
from dynametric.methods.sharing.alternating import HookPlan  # noqa: E402
from dynametric.miners import DistanceWeightedMiner, InterClassTripletMiner  # noqa: E402
from dynametric.models import build_embedder  # noqa: E402

METHODS = ("baseline", "sharing", "mic")
SPLITS = ("held-out", "today", "held-out-val", "held-out-val-colour")
DEFAULT_SPLITS = ("held-out", "today")
HELD_OUT_SPLITS = ("held-out", "held-out-val", "held-out-val-colour")  # each compared with today's when both run
HEADS = ("class", "shared", "concat")
# the arguments that define a run's setup: runs merged by --resume / --resume-from must agree on all of them
SETUP_KEYS = ("steps", "eval_every", "image_size", "width", "depth", "dim", "images_per_class", "lr", "p_aux",
              "clusters", "pretrain_steps", "pretrain_per_shape", "pretrain_lr")
# the value a setup key takes in files written before it existed
SETUP_DEFAULTS = {"pretrain_steps": 0, "pretrain_per_shape": 16, "pretrain_lr": None}
START_ROW = "pretrained start (no fine-tuning)"


def _overlap_text(split: str, a: argparse.Namespace) -> str:
    """One phrase: the pretraining / test overlap of ``split`` over ``a.seeds`` (:func:`pretrain_overlap`)."""
    rows = [pretrain_overlap(split, seed, a) for seed in a.seeds]
    lap = sorted({r["pretrain_overlapping"] for r in rows})
    cov = sorted({r["test_covered"] for r in rows})
    def span(v: list[int]) -> str:
        return f"{v[0]}" if v[0] == v[-1] else f"{v[0]}–{v[-1]}"

    return (f"per seed {span(lap)} of {rows[0]['pretrain_classes']} pretraining classes are sub-variants of a "
            f"test class and {span(cov)} of {rows[0]['test_classes']} test classes are covered")


def split_kwargs(split: str, seed: int, a: argparse.Namespace) -> dict[str, Any]:
    """The ``SyntheticHierarchy`` keyword arguments of a benchmark split."""
    kw: dict[str, Any] = {"seed": seed, "image_size": a.image_size, "images_per_class": a.images_per_class}
    if split == "today":
        return kw | {"fine_per_shape": {"train": 6, "val": 2, "test": 4}}
    return kw | {"held_out_factor": "colour" if split == "held-out-val-colour" else "texture",
                 "val_classes": "other_factor" if split == "held-out" else "same_factor"}


def variant_key(v: dict[str, Any]) -> tuple:
    return v["shape"], v["colour"], v["texture"], v["size"]


def excluded_variants(split: str, seed: int, a: argparse.Namespace) -> frozenset[tuple]:
    """The (shape, colour, texture, size) variants removed from the pretraining classes for ``split``: on ``today``
    every variant of the seed's train/val/test classes; on a held-out-factor split none (its classes leave a factor
    free, so every variant of a test shape overlaps a test class: nothing disjoint could be removed)."""
    if split != "today":
        return frozenset()
    return frozenset(variant_key(v) for name in ("train", "val", "test")
                     for v in SyntheticHierarchy(name, **split_kwargs(split, seed, a)).classes)


def pretrain_overlap(split: str, seed: int, a: argparse.Namespace) -> dict[str, int]:
    """How much the pretraining classes of ``seed`` overlap the ``test`` classes of ``split`` after the removal of
    :func:`excluded_variants`: a pretraining (shape, colour, texture, size) variant overlaps a test class when it
    agrees with it on every factor that the test class fixes (``None`` = left free). Returns the pretraining classes
    kept, how many of them overlap a test class, the test classes and how many of those are covered by at least one
    pretraining class. On ``today`` both counts are 0 by construction; on the held-out-factor splits they are not."""
    exclude = excluded_variants(split, seed, a)
    pre = SyntheticHierarchy("train", seed=1000 + seed, image_size=a.image_size, images_per_class=a.images_per_class,
                             fine_per_shape={"train": a.pretrain_per_shape, "val": 1, "test": 1})
    kept = [v for v in pre.classes if variant_key(v) not in exclude]
    test = SyntheticHierarchy("test", **split_kwargs(split, seed, a)).classes
    factors = ("shape", "colour", "texture", "size")

    def covers(v: dict[str, Any], t: dict[str, Any]) -> bool:
        return all(t[f] is None or t[f] == v[f] for f in factors)

    return {"pretrain_classes": len(kept), "pretrain_overlapping": sum(any(covers(v, t) for t in test) for v in kept),
            "test_classes": len(test), "test_covered": sum(any(covers(v, t) for v in kept) for t in test)}


def pretrain_set(seed: int, exclude: frozenset[tuple], a: argparse.Namespace) -> tuple[LabelledSubset, int, int]:
    """The pretraining images: the ``train`` split of ``SyntheticHierarchy(seed=1000 + seed)`` (default variant
    classes, ``--pretrain-per-shape`` per shape) without the classes in ``exclude``; returns (dataset, classes kept,
    classes drawn)."""
    pre = SyntheticHierarchy("train", seed=1000 + seed, image_size=a.image_size, images_per_class=a.images_per_class,
                             fine_per_shape={"train": a.pretrain_per_shape, "val": 1, "test": 1})
    keep = torch.tensor([v["fine"] for v in pre.classes if variant_key(v) not in exclude], dtype=torch.long)
    idx = torch.isin(pre.labels[:, 0], keep).nonzero().flatten()
    return LabelledSubset(pre, idx, split="pretrain"), int(keep.numel()), len(pre.classes)


def digest(model: torch.nn.Module) -> str:
    """A SHA-256 digest of a network's parameters and buffers (in ``state_dict`` order), 16 hex digits."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def pretrain(seed: int, exclude: frozenset[tuple], a: argparse.Namespace) -> dict[str, Any]:
    """The start network of a seed: ``--pretrain-steps`` steps of the ``pretrain`` module (margin loss + distance
    weighted miner on both heads) on :func:`pretrain_set`, on the engine's trainer; deterministic from ``seed``."""
    torch.manual_seed(seed)
    ds, kept, drawn = pretrain_set(seed, exclude, a)
    model = build_embedder("simple_cnn", embedding_dim=a.dim, num_heads=2,
                           backbone_kwargs={"width": a.width, "depth": a.depth})
    n = int(ds.labels[:, 0].max()) + 1
    parts = SharingParts(MarginLoss(learn_beta=True, num_classes=n), MarginLoss(learn_beta=True, num_classes=n),
                         DistanceWeightedMiner(cutoff=0.5, seed=seed), DistanceWeightedMiner(cutoff=0.5, seed=seed + 1))
    t0 = time.perf_counter()
    lr = a.lr if a.pretrain_lr is None else a.pretrain_lr
    trainer = fit(build_module("pretrain", model, parts, lr=lr), ds, seed=seed, max_steps=a.pretrain_steps)
    if int(trainer.global_step) != a.pretrain_steps:
        raise RuntimeError(f"pretraining ran {trainer.global_step} steps, expected {a.pretrain_steps}")
    model.train()
    return {"model": model, "digest": digest(model), "pretrain_classes": kept, "pretrain_drawn": drawn,
            "pretrain_excluded": drawn - kept, "pretrain_s": round(time.perf_counter() - t0, 1)}


def run_one(method: str, split: str, seed: int, alpha: float | None, rho: float, a: argparse.Namespace,
            data: dict) -> dict[str, Any]:
    """One run on the engine's modules (:mod:`sharing_engine`), trained by a Lightning trainer for exactly
    ``U = round(steps * (1 + p_aux))`` optimizer steps (``max_steps``; MIC's module skips the shared step of an
    iteration whose class step reached it), evaluated every ``--eval-every`` updates (:class:`EvalEvery`). With
    ``data["start"]`` (a pretrained start, :func:`pretrain`) the network is a deep copy of ``data["start"]["model"]``
    and the run records ``start`` (its digest, pretraining classes, val/test metrics)."""
    torch.manual_seed(seed)
    train_set = data["train_set"]
    n_classes = int(train_set.labels[:, 0].max()) + 1
    model = build_embedder("simple_cnn", embedding_dim=a.dim, num_heads=2,
                           backbone_kwargs={"width": a.width, "depth": a.depth})
    start = data.get("start")
    if start is not None:  # built above anyway, so that the random stream after it is the same as from scratch
        model = copy.deepcopy(start["model"])
        start_digest = digest(model)
    class_loss = MarginLoss(learn_beta=True, num_classes=n_classes)
    class_miner = DistanceWeightedMiner(cutoff=0.5, seed=seed)
    plan = None
    if method == "mic":
        shared_loss = MarginLoss(learn_beta=True, num_classes=a.clusters)
        shared_miner: torch.nn.Module = DistanceWeightedMiner(cutoff=0.5, seed=seed + 1)
        groups = min(8, a.clusters)  # 8 surrogate classes x 4 images (fewer clusters: more images each)
        per = 32 // groups
        mic = MICSettings.from_kwargs({
            "p_aux": a.p_aux, "adv_step": "both", "num_clusters": a.clusters, "recluster_every": 3,
            "label_noise": 0.2, "label_noise_per": "image", "standardise": "mean",
            "feature_layer": "backbone.body.features.3", "m_shared": per})
        plan = HookPlan("mic", mic.p_aux, mic.adv_step, "class", "shared", per, groups * per, seed, mic)
    else:
        shared_loss = MarginLoss(learn_beta=True, num_classes=n_classes)
        shared_miner = InterClassTripletMiner("standard", seed=seed + 1)
    dec = DecorrelationLoss(2 * a.dim, hidden=128) if method != "baseline" and rho > 0 else None
    parts = SharingParts(class_loss, shared_loss, class_miner, shared_miner, dec)
    kind = {"baseline": "baseline", "sharing": "summed", "mic": "alternating"}[method]
    module = build_module(kind, model, parts, lr=a.lr, alpha=alpha if alpha is not None else a.alpha, rho=rho,
                          plan=plan)
    budget = round(a.steps * (1 + a.p_aux))
    evals = EvalEvery(a.eval_every, {"val": data["val"], "test": data["test"]})
    t0 = time.perf_counter()
    trainer = fit(module, train_set, seed=seed, max_steps=budget, callbacks=[evals])
    updates = int(trainer.global_step)
    curve = evals.curve
    best = max(curve, key=lambda p: p["val"]["class"]["recall@1"])
    shared_steps = {"baseline": 0, "sharing": updates}.get(method, getattr(module, "shared_steps", 0))
    out = {"method": method, "split": split, "seed": seed, "alpha": alpha if method == "sharing" else None,
           "rho": rho, "best_step": best["step"], "updates": updates, "shared_steps": shared_steps,
           "val": best["val"], "test": best["test"], "train_s": round(time.perf_counter() - t0, 1),
           "curve": [{"step": p["step"], "val": p["val"]["class"]["recall@1"],
                      "test": p["test"]["class"]["recall@1"]} for p in curve]}
    if start is not None:
        out["start"] = {"digest": start_digest, **{k: start[k] for k in ("pretrain_classes", "pretrain_drawn",
                                                                          "pretrain_excluded", "pretrain_s", "val",
                                                                          "test")}}
    return out


Candidate = tuple[float | None, float]  # (alpha, rho); alpha None where the method has none


def candidates(method: str, alphas: list[float], rhos: list[float]) -> list[Candidate]:
    """The (alpha, rho) grid of a method, in tie-break order (ascending alpha, then rho): the baseline has neither,
    MIC only rho."""
    rs = sorted({float(r) for r in rhos})
    if method == "baseline":
        return [(None, 0.0)]
    if method == "mic":
        return [(None, r) for r in rs]
    return [(al, r) for al in sorted({float(v) for v in alphas}) for r in rs]


def grids_of(a: argparse.Namespace) -> tuple[list[float], list[float], dict[str, list[Candidate]]]:
    """The alpha and rho values of an invocation (``--alpha-grid`` / ``--rho-grid``, else the fixed ``--alpha`` /
    ``--rho``) and every method's (alpha, rho) grid (:func:`candidates`)."""
    alphas = sorted({float(v) for v in a.alpha_grid}) if a.alpha_grid else [a.alpha]
    rhos = sorted({float(v) for v in a.rho_grid}) if a.rho_grid else [a.rho]
    return alphas, rhos, {m: candidates(m, alphas, rhos) for m in METHODS}


def run_key(r: dict[str, Any]) -> tuple[str, str, int, float | None, float]:
    return r["method"], r["split"], int(r["seed"]), r["alpha"], float(r["rho"])


def select(runs: list[dict], grids: dict[str, list[Candidate]]) -> dict[tuple[str, str, int], dict]:
    """The validation-only selection: for each (method, split, seed), among the runs whose (alpha, rho) is in
    ``grids[method]``, the one with the highest val class-head R@1 (at its own val-best update); ties go to the higher
    val class-head MAP@R, then to the earlier grid entry (smaller alpha, then smaller rho). Test figures are never
    read. Runs outside the grid are ignored. Returns ``{(method, split, seed): run}``; ``runs`` is not modified."""
    groups: dict[tuple[str, str, int], list[dict]] = {}
    for r in runs:
        grid = grids.get(r["method"])
        if grid is not None and (r["alpha"], float(r["rho"])) in grid:
            groups.setdefault((r["method"], r["split"], int(r["seed"])), []).append(r)
    chosen = {}
    for k, cands in groups.items():
        grid = grids[k[0]]
        chosen[k] = max(cands, key=lambda r: (r["val"]["class"]["recall@1"], r["val"]["class"]["map@r"],
                                              -grid.index((r["alpha"], float(r["rho"])))))
    return chosen


def import_runs(path: Path, a: argparse.Namespace, required: bool) -> list[dict]:
    """The runs of an earlier results file, checked against this invocation's setup (:data:`SETUP_KEYS`); runs
    written before ``alpha`` was recorded take the file's ``args.alpha`` (t* sharing) or ``None``."""
    if not path.is_file():
        if required:
            raise SystemExit(f"error: --resume-from {path}: no such file")
        return []
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise SystemExit(f"error: {path}: not a results JSON file ({e})") from None
    args = payload.get("args", {})
    for k in SETUP_KEYS:
        have = args.get(k, SETUP_DEFAULTS.get(k))  # keys newer than the file: their default (e.g. no pretraining)
        if (k in args or k in SETUP_DEFAULTS) and have != getattr(a, k):
            raise SystemExit(f"error: {path}: args.{k} is {have!r}{'' if k in args else ' (absent: the default)'} "
                             f"but this invocation uses {getattr(a, k)!r}; runs of a different setup cannot be merged")
    return with_alpha(payload.get("runs", []), args, path)


def with_alpha(runs: list[dict], args: dict[str, Any], path: Path) -> list[dict]:
    """Copies of ``runs``; a run written before ``alpha`` was recorded takes ``args.alpha`` (t* sharing) or
    ``None`` (the baseline, MIC)."""
    out = []
    for i, r in enumerate(runs):
        r = dict(r)
        if "alpha" not in r:
            if r["method"] == "sharing" and "alpha" not in args:
                raise SystemExit(f"error: {path}: runs[{i}] has no 'alpha' and the file has no args.alpha")
            r["alpha"] = float(args["alpha"]) if r["method"] == "sharing" else None
        out.append(r)
    return out


def _values(chosen: dict[tuple[str, str, int], dict], method: str, split: str, seeds: list[int], head: str,
            metric: str = "recall@1", where: str = "test") -> list[float]:
    return [chosen[(method, split, s)][where][head][metric] for s in seeds]


def _within_seed_corr(runs: list[dict]) -> float | None:
    """Pearson correlation of val and test class-head R@1 over ``runs``, each centred on its seed's mean."""
    by: dict[int, list[dict]] = {}
    for r in runs:
        by.setdefault(int(r["seed"]), []).append(r)
    v: list[float] = []
    t: list[float] = []
    for rs in by.values():
        mv = statistics.fmean(r["val"]["class"]["recall@1"] for r in rs)
        mt = statistics.fmean(r["test"]["class"]["recall@1"] for r in rs)
        v += [r["val"]["class"]["recall@1"] - mv for r in rs]
        t += [r["test"]["class"]["recall@1"] - mt for r in rs]
    if len(v) < 3 or statistics.pstdev(v) == 0 or statistics.pstdev(t) == 0:
        return None
    return statistics.correlation(v, t)


def _checkpoint_corr(runs: list[dict]) -> float | None:
    """Pearson correlation of val and test class-head R@1 over the evaluated updates (``curve``) of ``runs``, each
    centred on its run's mean: does val track test *during* training, whatever the hyper-parameters?"""
    v: list[float] = []
    t: list[float] = []
    for r in runs:
        if len(r["curve"]) < 2:
            continue
        mv = statistics.fmean(p["val"] for p in r["curve"])
        mt = statistics.fmean(p["test"] for p in r["curve"])
        v += [p["val"] - mv for p in r["curve"]]
        t += [p["test"] - mt for p in r["curve"]]
    if len(v) < 3 or statistics.pstdev(v) == 0 or statistics.pstdev(t) == 0:
        return None
    return statistics.correlation(v, t)


def _hp(r: dict[str, Any]) -> str:
    if r["method"] == "baseline":
        return "–"
    return (f"α {r['alpha']:g}, " if r["alpha"] is not None else "") + f"ρ {r['rho']:g}"


def _paired_rows(chosen: dict, a: argparse.Namespace, methods: list[str]) -> tuple[list[str], dict[str, Any]]:
    lines, cis = [], {}
    for split in a.splits:
        base = _values(chosen, "baseline", split, a.seeds, "class")
        for m in methods:
            row = {h: paired_ci(base, _values(chosen, m, split, a.seeds, h)) for h in HEADS}
            cis[f"{split}/{m}"] = row
            lines.append(f"| {split} | {m} | " + " | ".join(fmt_ci(row[h]) for h in HEADS) + " |")
    return lines, cis


def start_of(chosen: dict[tuple[str, str, int], dict], split: str, seed: int) -> dict[str, Any] | None:
    """The pretrained start's record (``run["start"]``) of a (split, seed), taken from the first method's run (every
    method's run carries the same one; :func:`analyse` reports digests that disagree); ``None`` for from-scratch
    runs."""
    recs = [r["start"] for (m, sp, sd), r in chosen.items() if sp == split and sd == seed and "start" in r]
    return recs[0] if recs else None


def analyse(runs: list[dict], a: argparse.Namespace, grids: dict[str, list[Candidate]]) -> tuple[str, dict[str, Any]]:
    seeds = a.seeds
    chosen = select(runs, grids)
    starts = {(sp, sd): start_of(chosen, sp, sd) for sp in a.splits for sd in seeds}
    lines = ["## Test at the val-selected update (%, mean ± sd over seeds)\n",
             "| split | method | class R@1 | class MAP@R | shared R@1 | shared MAP@R | concat R@1 | concat MAP@R | "
             "updates | val-best update |", "|---|---|---|---|---|---|---|---|---|---|"]
    for split in a.splits:
        for m in a.methods:
            rs = [chosen[(m, split, s)] for s in seeds if (m, split, s) in chosen]
            if not rs:
                continue
            cells = [mean_sd([r["test"][h][k] for r in rs]) for h in HEADS for k in ("recall@1", "map@r")]
            lines.append(f"| {split} | {m} | " + " | ".join(cells)
                         + f" | {statistics.median(r['updates'] for r in rs):g} | "
                         f"{statistics.median(r['best_step'] for r in rs):g} |")
        st = [starts[(split, s)] for s in seeds]
        if all(x is not None for x in st):
            cells = [mean_sd([x["test"][h][k] for x in st if x is not None]) for h in HEADS
                     for k in ("recall@1", "map@r")]
            lines.append(f"| {split} | {START_ROW} | " + " | ".join(cells) + " | 0 | – |")
    verdicts: dict[str, Any] = {}
    for split in a.splits:
        for s in seeds:
            ds = sorted({r["start"]["digest"] for (m, sp, sd), r in chosen.items()
                         if (sp, sd) == (split, s) and "start" in r})
            if len(ds) > 1:  # e.g. runs merged from processes whose pretraining was not bit-identical
                lines.append(f"\n**Warning:** the selected runs of split {split}, seed {s} start from different "
                             f"networks (digests {', '.join(ds)}); the start row uses the first method's.")
                verdicts[f"{split}/{s}/start-digests"] = ds
    if all(x is not None for x in starts.values()):
        lines += ["\n## Paired differences against the pretrained start (test R@1, percentage points, 95 % "
                  f"t-interval over {len(seeds)} seeds; each head against the same head of the start)\n",
                  "Below 0: fine-tuning on the training classes loses what the start knew about the test classes.\n",
                  "| split | method | class head | shared head | concat |", "|---|---|---|---|---|"]
        for split in a.splits:
            for m in a.methods:
                row = {h: paired_ci([starts[(split, s)]["test"][h]["recall@1"] for s in seeds],  # type: ignore[index]
                                    _values(chosen, m, split, seeds, h)) for h in HEADS}
                verdicts[f"{m}/{split}/vs-start"] = row
                lines.append(f"| {split} | {m} | " + " | ".join(fmt_ci(row[h]) for h in HEADS) + " |")
    if any(len(g) > 1 for g in grids.values()):
        lines += ["\n## Hyper-parameters picked on val, per seed\n",
                  "| split | method | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                  "|---|---|" + "---|" * len(seeds)]
        for split in a.splits:
            for m in a.methods:
                if len(grids[m]) > 1:
                    lines.append(f"| {split} | {m} | " + " | ".join(_hp(chosen[(m, split, s)]) for s in seeds)
                                 + " |")
                    verdicts[f"{m}/{split}/selected"] = {
                        str(s): {"alpha": chosen[(m, split, s)]["alpha"], "rho": chosen[(m, split, s)]["rho"]}
                        for s in seeds}
        lines += ["\n## The grid (mean over seeds; test shown for information, the choice reads val only)\n",
                  "| split | method | α | ρ | val class R@1 | test class R@1 | test concat R@1 | picked (seeds) |",
                  "|---|---|---|---|---|---|---|---|"]
        for split in a.splits:
            for m in a.methods:
                if len(grids[m]) < 2:
                    continue
                for al, rho in grids[m]:
                    rs = [r for r in runs if r["method"] == m and r["split"] == split and r["seed"] in seeds
                          and (r["alpha"], float(r["rho"])) == (al, rho)]
                    if not rs:
                        continue
                    n_pick = sum(chosen.get((m, split, s)) is r for r in rs for s in seeds)
                    lines.append(f"| {split} | {m} | {'–' if al is None else f'{al:g}'} | {rho:g} | "
                                 + " | ".join(mean_sd([r[w]["class" if h == "c" else "concat"]["recall@1"]
                                                       for r in rs]) for w, h in (("val", "c"), ("test", "c"),
                                                                                  ("test", "x")))
                                 + f" | {n_pick} of {len(rs)} |")
        agree, track = [], []
        for split in a.splits:
            for m in a.methods:
                grid_runs = [r for r in runs if r["method"] == m and r["split"] == split and r["seed"] in seeds
                             and (r["alpha"], float(r["rho"])) in grids[m]]
                r_vt = _within_seed_corr(grid_runs)
                if len(grids[m]) > 1 and r_vt is not None:
                    agree.append(f"{split} {m} {r_vt:+.2f}")
                    verdicts[f"{m}/{split}/val-test-corr"] = r_vt
                r_ck = _checkpoint_corr(grid_runs)
                if r_ck is not None:
                    track.append(f"{split} {m} {r_ck:+.2f}")
                    verdicts[f"{m}/{split}/val-test-corr-checkpoints"] = r_ck
        if agree:
            lines.append("\nDoes val predict test across the grid? Pearson correlation of val and test class-head R@1 "
                         "over the grid's runs, each centred on its seed's mean (near 0 or below: picking on val "
                         "cannot find what helps test): " + "; ".join(agree) + ".")
        if track:
            lines.append("\nDoes val track test during training? The same correlation over every evaluated update "
                         "of the grid's runs, each centred on its run's mean: " + "; ".join(track) + ".")
    if "baseline" not in a.methods:
        return "\n".join(lines), verdicts
    lines += ["\n## Paired differences against the baseline's class head (test R@1, percentage points, 95 % "
              f"t-interval over {len(seeds)} seeds)\n",
              "| split | method | class head | shared head | concat |", "|---|---|---|---|---|"]
    rows, cis = _paired_rows(chosen, a, list(a.methods))
    lines += rows
    lines.append("\n## Verdicts\n")
    entries: list[tuple[Claim, str]] = []
    for m in [x for x in a.methods if x != "baseline"]:
        for split in a.splits:
            best_head = max(HEADS, key=lambda h: cis[f"{split}/{m}"][h]["mean"])
            ci = cis[f"{split}/{m}"]["class"]
            claim = Claim(f"{m}/{split}", one_interval_rule, {"class_head_gain": ci})
            v = claim.verdict()
            verdicts[claim.key] = {"verdict": v, "class_head_gain": ci, "best_head": best_head,
                                   "shared_head_gain": cis[f"{split}/{m}"]["shared"],
                                   "concat_gain": cis[f"{split}/{m}"]["concat"]}
            other = cis[f"{split}/{m}"]
            entries.append((claim, f"* **{m} improves unseen-class R@1 over the baseline at matched updates ({split} "
                            f"split, class head)** — **{v}**: {fmt_ci(ci)} pp; shared {fmt_ci(other['shared'])}, "
                            f"concat {fmt_ci(other['concat'])}."))
    if entries:
        claims = [c for c, _ in entries]
        fw = bonferroni(claims)
        summary, verdicts["family_wise"] = family_summary(claims, fw)
        lines.append(summary)
        for claim, bullet in entries:
            lines.append(bullet)
            lines.append(family_line(fw[claim.key], claim.verdict(),
                                     f"class head {fmt_ci(fw[claim.key]['intervals']['class_head_gain'])} pp."))
            verdicts[claim.key]["family_wise"] = family_record(fw[claim.key])
    for held in [s for s in HELD_OUT_SPLITS if s in a.splits and "today" in a.splits]:
        for m in [x for x in a.methods if x != "baseline"]:
            gain = {s: [x - y for x, y in zip(_values(chosen, m, s, seeds, "class"),
                                              _values(chosen, "baseline", s, seeds, "class"), strict=True)]
                    for s in (held, "today")}
            d = paired_ci(gain["today"], gain[held])
            verdicts[f"{m}/split-effect" + ("" if held == "held-out" else f"/{held}")] = d
            lines.append(f"* {m}: gain on the {held} split minus gain on today's split: {fmt_ci(d)} pp.")
    alphas = sorted({al for al, _ in grids.get("sharing", []) if al is not None})
    if len(alphas) > 1:
        lines += ["\n## Sensitivity: α fixed, ρ picked on val (not the verdicts; paired differences as above)\n",
                  "| split | method | class head | shared head | concat |", "|---|---|---|---|---|"]
        for al in alphas:
            sub = select(runs, grids | {"sharing": [c for c in grids["sharing"] if c[0] == al]})
            rows, cis_al = _paired_rows(sub, a, ["sharing"])
            lines += [row.replace("| sharing |", f"| sharing, α = {al:g} |") for row in rows]
            verdicts[f"sharing/alpha={al:g}"] = {k: v["class"] for k, v in cis_al.items()}
    end_lines, verdicts["end-of-budget"] = end_of_budget(runs, a, grids, starts)
    lines += end_lines
    lines.append("\n## Curves (val R@1 of the class head, %, mean over seeds, by update)\n")
    curves = {f"{s} {m}": mean_curve([chosen[(m, s, sd)] for sd in seeds], bin_size=a.eval_every)
              for s in a.splits for m in a.methods}
    lines.append(curve_table(curves, "update"))
    return "\n".join(lines), verdicts


def end_of_budget(runs: list[dict], a: argparse.Namespace, grids: dict[str, list[Candidate]],
                  starts: dict[tuple[str, int], dict[str, Any] | None]) -> tuple[list[str], dict[str, Any]]:
    """The secondary comparison, without checkpoint selection: every method's class head after its whole budget of
    updates (the last curve point), its (alpha, rho) picked on the val class-head R@1 at that same final update (ties:
    the earlier grid entry). Paired differences against the baseline and, with a pretrained start, against the
    start: does sharing slow down what fine-tuning on the training classes loses?"""
    best: dict[tuple[str, str, int], tuple[tuple[float, int], dict[str, float]]] = {}
    for r in runs:
        grid = grids.get(r["method"])
        if grid is None or (r["alpha"], float(r["rho"])) not in grid or not r.get("curve"):
            continue
        k = (r["method"], r["split"], int(r["seed"]))
        last = r["curve"][-1]
        rank = (float(last["val"]), -grid.index((r["alpha"], float(r["rho"]))))
        if k not in best or rank > best[k][0]:
            best[k] = (rank, last)
    final = {k: point for k, (_, point) in best.items()}
    seeds = a.seeds
    if not all((m, sp, s) in final for m in a.methods for sp in a.splits for s in seeds):
        return [], {}
    has_start = all(starts.get((sp, s)) is not None for sp in a.splits for s in seeds)
    lines = ["\n## At the end of the budget, without checkpoint selection (class head, test R@1; (α, ρ) picked on "
             "val at the final update; a secondary comparison, not the verdicts)\n",
             "| split | method | test R@1 (%) | − baseline (pp) |" + (" − start (pp) |" if has_start else ""),
             "|---|---|---|---|" + ("---|" if has_start else "")]
    out: dict[str, Any] = {}
    for sp in a.splits:
        base = [final[("baseline", sp, s)]["test"] for s in seeds] if "baseline" in a.methods else None
        for m in a.methods:
            vals = [final[(m, sp, s)]["test"] for s in seeds]
            row: dict[str, Any] = {"test": vals}
            cells = [mean_sd(vals)]
            if base is not None:
                row["vs_baseline"] = paired_ci(base, vals)
                cells.append("–" if m == "baseline" else fmt_ci(row["vs_baseline"]))
            if has_start:
                start_r1 = [starts[(sp, s)]["test"]["class"]["recall@1"] for s in seeds]  # type: ignore[index]
                row["vs_start"] = paired_ci(start_r1, vals)
                cells.append(fmt_ci(row["vs_start"]))
            out[f"{m}/{sp}"] = row
            lines.append(f"| {sp} | {m} | " + " | ".join(cells) + " |")
    return lines, out


def versus(runs: list[dict], old_path: Path, a: argparse.Namespace,
           shown: str | Path | None = None) -> tuple[str, dict[str, Any]]:
    """Parity of this file's runs against ``old_path``'s (an earlier trainer's results, same setup): per split and
    method, test class-head R@1 mean ± sd of the new and the old runs with the same (method, split, seed, alpha,
    rho), the paired difference new - old with a 95 % t-interval, and the mean run time (``train_s``) of each.
    The text names the file ``shown`` (default ``old_path``): ``--render-only`` shows the path as recorded, so the
    section's heading, which :func:`keep_readings` matches, does not depend on where the file was found."""
    old = {run_key(r): r for r in import_runs(old_path, a, required=True)}
    shown = old_path if shown is None else shown
    lines = [f"## Parity with the runs of {shown}\n",
             "Test class-head R@1 at the val-selected update (%, mean ± sd over seeds) of the runs here and of the "
             f"runs of {shown} with the same (method, split, seed, α, ρ); new − old paired over seeds (percentage "
             "points, 95 % t-interval); mean run time (s, training and the val/test evaluations).\n",
             "| split | method | α | ρ | seeds | new | old | new − old | new s/run | old s/run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    out: dict[str, Any] = {}
    groups: dict[tuple[str, str, float | None, float], list[dict]] = {}
    for r in runs:
        if "source" not in r and run_key(r) in old:
            groups.setdefault((r["split"], r["method"], r["alpha"], float(r["rho"])), []).append(r)
    for (split, m, al, rho), rs in sorted(groups.items(), key=lambda kv: (a.splits.index(kv[0][0]),
                                                                             METHODS.index(kv[0][1]))):
        rs = sorted(rs, key=lambda r: int(r["seed"]))
        olds = [old[run_key(r)] for r in rs]
        new_v = [r["test"]["class"]["recall@1"] for r in rs]
        old_v = [o["test"]["class"]["recall@1"] for o in olds]
        ci = paired_ci(old_v, new_v)
        t_new = statistics.fmean(float(r["train_s"]) for r in rs)
        t_old = statistics.fmean(float(o["train_s"]) for o in olds)
        out[f"{split}/{m}"] = {"new": new_v, "old": old_v, "diff": ci, "new_s": t_new, "old_s": t_old}
        lines.append(f"| {split} | {m} | {'–' if al is None else f'{al:g}'} | {rho:g} | {len(rs)} | "
                     f"{mean_sd(new_v)} | {mean_sd(old_v)} | {fmt_ci(ci)} | {t_new:.1f} | {t_old:.1f} |")
    return "\n".join(lines) + "\n", out


PRETRAIN_FROM = "every method of a (seed, split) starts from a copy of one network pretrained "
PRETRAIN_TO = " (wall time includes the pretraining)"


def pretrain_text(runs: list[dict], a: argparse.Namespace) -> str:
    """The header's description of the start: the pretraining (from :data:`PRETRAIN_FROM` to :data:`PRETRAIN_TO`),
    with the pretraining / test overlap of every held-out-factor split (:func:`pretrain_overlap`) and the classes kept
    of drawn per split, read from the runs' ``start`` records; without pretraining, one phrase saying so."""
    if a.pretrain_steps <= 0:
        return "every method starts from a freshly initialised network (no pretraining)"
    pre_lr = a.lr if a.pretrain_lr is None else a.pretrain_lr
    kept = {s: sorted({(r["start"]["pretrain_classes"], r["start"]["pretrain_drawn"]) for r in runs
                       if r["split"] == s and "start" in r}) for s in a.splits}
    return (f"{PRETRAIN_FROM}{a.pretrain_steps} steps "
            f"on synthetic classes (the train split of SyntheticHierarchy(seed=1000 + seed), "
            f"{a.pretrain_per_shape} (shape, colour, texture, size) classes per shape; margin loss + "
            f"distance-weighted sampling on both heads, Adam lr {pre_lr:g}, "
            "8 x 4 class batches); removed from "
            "them: on today's split every variant that is a train/val/test class of the seed, on the "
            "held-out-factor splits none (every variant of a test shape overlaps a test class, so there the "
            "start is NOT disjoint from the test classes: " + "; ".join(
                f"{s}: {_overlap_text(s, a)}" for s in a.splits if s != "today") + "); pretraining "
            "classes kept of drawn: " + "; ".join(f"{s} " + ", ".join(f"{k}/{d}" for k, d in kept[s])
                                                  for s in a.splits) + PRETRAIN_TO)


FALSE_DISJOINT = "on disjoint synthetic classes"
CORRECTED = "Corrected: the Setup line first said"


READING = "Reading:"


def keep_readings(old_body: str, body: str) -> str:
    """``body`` with the hand-written paragraphs of ``old_body`` (those starting with :data:`READING`, written into a
    results file after it was produced) put back at the end of the section of the same ``## `` heading (at the end
    of ``body`` if that section is gone)."""
    def sections(text: str) -> list[str]:
        return text.split("\n## ")

    readings: dict[str, list[str]] = {}
    for sec in sections(old_body):
        paras = [x.strip("\n") for x in sec.split("\n\n")]
        kept = [x for x in paras if x.startswith(READING)]
        if kept:
            readings[sec.split("\n", 1)[0]] = kept
    out = []
    for sec in sections(body):
        title = sec.split("\n", 1)[0]
        extra = readings.pop(title, [])
        out.append(sec if not extra else sec.rstrip("\n") + "\n\n" + "\n\n".join(extra) + "\n")
    rest = [x for v in readings.values() for x in v]
    return "\n## ".join(out) + ("\n\n" + "\n\n".join(rest) + "\n" if rest else "")


def render_only(json_path: Path, overwrite: bool = False) -> int:
    """Re-derive a finished results file's tables and verdicts from its stored runs (no training; a ``--versus``
    parity table from the file it names). The ``.md`` keeps its original header (command, timings, setup) with one
    added line saying it was re-rendered, except that a pretraining description calling the start "disjoint"
    (:data:`FALSE_DISJOINT`, true on today's split only) is replaced by today's (:func:`pretrain_text`, with the
    overlap counts), which the added line says; hand-written ``Reading:`` paragraphs of the old ``.md`` are kept
    (:func:`keep_readings`); the ``.json`` keeps its runs, arguments and command and gets the new
    ``verdicts``."""
    data = read_finished_results(json_path)
    small = bool(data["args"].get("small"))
    check_results(json_path.with_suffix(".md"), "claim_sharing.py", small, overwrite)
    # keys newer than the file take their defaults (SETUP_DEFAULTS: no pretraining), as import_runs reads them
    a = argparse.Namespace(**({"alpha_grid": None, "rho_grid": None, "versus": None} | SETUP_DEFAULTS
                              | data["args"]))
    _, _, grids = grids_of(a)
    runs = with_alpha(data["runs"], data["args"], json_path)
    body, verdicts = analyse(runs, a, grids)
    versus_path = results_sibling(a.versus, json_path, "versus")
    if versus_path is not None:
        parity, verdicts["versus"] = versus(runs, versus_path, a, shown=a.versus)
        body = parity + "\n" + body
    lines, old_body = stored_header(json_path)
    body = keep_readings("## " + old_body if old_body else "", body)
    corrected = any(line.startswith(RERENDERED) and CORRECTED in line for line in lines)  # by an earlier rendering
    head = original_header(lines)
    if FALSE_DISJOINT in head:
        i = head.index(PRETRAIN_FROM)
        j = head.index(PRETRAIN_TO, i) + len(PRETRAIN_TO)
        head = head[:i] + pretrain_text(runs, a) + head[j:]
        corrected = True
    fix = (f" {CORRECTED} the start was pretrained \"{FALSE_DISJOINT}\", which holds on "
           f"today's split only; the pretraining description above is today's: the same pretraining, removals and "
           f"classes kept of drawn, now with the overlap of the pretraining and test classes counted by "
           f"pretrain_overlap.")
    note = rerender_note("claim_sharing.py", json_path, " except one corrected statement" if corrected else "") \
        + (fix if corrected else "")
    write_results(json_path.with_suffix(".md"), f"{head}\n\n{note}\n\n{body}", data | {"verdicts": verdicts},
                  "claim_sharing.py", small)
    print(body)
    return 0


# --small's defaults (parse_with_small: an option given explicitly keeps its value)
SMALL = {"seeds": [0, 1], "steps": 5, "eval_every": 4, "image_size": 8, "width": 4, "depth": 2, "dim": 8,
         "images_per_class": 4, "clusters": 4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--small``'s preset applied, explicit options kept; its checks as one-line errors)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--splits", nargs="+", default=list(DEFAULT_SPLITS), choices=SPLITS,
                    help="held-out-val: val and test hold out the same factor (default: held-out today)")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--steps", type=int, default=300, help="MIC iterations; every method gets steps*(1+p_aux) updates")
    ap.add_argument("--eval-every", type=int, default=60, help="updates between val evaluations")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--images-per-class", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--alpha", type=float, default=0.3)
    ap.add_argument("--alpha-grid", type=float, nargs="*", default=None,
                    help="pick t* sharing's alpha (jointly with rho) per seed and split on val from these values "
                         "(default: fixed --alpha)")
    ap.add_argument("--rho", type=float, default=100.0)
    ap.add_argument("--rho-grid", type=float, nargs="*", default=None,
                    help="pick rho per seed and method on val from these values (default: fixed --rho)")
    ap.add_argument("--p-aux", type=float, default=0.8)
    ap.add_argument("--clusters", type=int, default=10)
    ap.add_argument("--pretrain-steps", type=int, default=0,
                    help="start every method from a network pretrained this many steps on other synthetic classes "
                         "(disjoint on today's split only; default 0: from scratch)")
    ap.add_argument("--pretrain-lr", type=float, default=None,
                    help="Adam lr of the pretraining (default: --lr, the fine-tuning lr)")
    ap.add_argument("--pretrain-per-shape", type=int, default=16,
                    help="pretraining fine classes per shape (SyntheticHierarchy(seed=1000 + seed) train split)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--small", action="store_true", help=small_help(SMALL))
    add_overwrite_option(ap)
    ap.add_argument("--resume", action="store_true", help="keep the runs already in --out's .json")
    ap.add_argument("--resume-from", type=Path, nargs="+", default=[],
                    help="also reuse the runs of these results .json files (same setup required)")
    ap.add_argument("--versus", type=Path, default=None,
                    help="an earlier results .json of the same setup: a parity table (this file's runs against its "
                         "runs with the same method, split, seed, alpha and rho) heads the results")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--render-only", type=Path, default=None, metavar="JSON",
                    help="re-derive the analysis of a finished results .json from its stored runs and rewrite its "
                         ".md (the original header kept, a 'disjoint' pretraining description corrected) and the "
                         ".json's verdicts; trains nothing, runs unchanged")
    a = parse_with_small(ap, argv, SMALL)
    if a.render_only is not None:
        return a
    if a.out is None:
        ap.error("--out is required (unless --render-only)")
    for name in ("alpha_grid", "rho_grid"):
        if any(v < 0 for v in getattr(a, name) or []):
            ap.error(f"--{name.replace('_', '-')} values must be >= 0")
    if a.pretrain_steps < 0 or a.pretrain_per_shape < 1:
        ap.error("--pretrain-steps must be >= 0 and --pretrain-per-shape >= 1")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.render_only is not None:
        return render_only(a.render_only, a.overwrite)
    check_results(a.out, "claim_sharing.py", a.small, a.overwrite)
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    runs = import_runs(a.out.with_suffix(".json"), a, required=False) if a.resume else []
    done = {run_key(r) for r in runs}
    for path in a.resume_from:
        for r in import_runs(path, a, required=True):
            if run_key(r) not in done:
                done.add(run_key(r))
                runs.append(r | {"source": r.get("source", str(path))})
    alphas, rhos, grids = grids_of(a)
    args_json = vars(a) | {"out": str(a.out), "resume_from": [str(p) for p in a.resume_from],
                           "versus": None if a.versus is None else str(a.versus)}
    starts: dict[tuple[int, frozenset[tuple]], dict[str, Any]] = {}  # pretrained once per (seed, removed variants)
    for seed in a.seeds:
        for split in a.splits:
            todo = [(m, al, rho) for m in a.methods for al, rho in grids[m]
                    if (m, split, seed, al, rho) not in done]
            if not todo:
                continue
            kw = split_kwargs(split, seed, a)
            data: dict[str, Any] = {}
            for name in ("train", "val", "test"):
                ds = SyntheticHierarchy(name, **kw)
                if name == "train":  # the engine's training set: the in-memory dataset itself (a LabeledDataset)
                    data["train_set"] = check_labeled_dataset(ds, "train")
                else:
                    data[name] = (ds.tensors(), ds.labels[:, :1])
            if a.pretrain_steps > 0:
                key = (seed, excluded_variants(split, seed, a))
                if key not in starts:
                    starts[key] = pretrain(seed, key[1], a)
                    print(f"seed {seed} pretrained start for {split}: {starts[key]['pretrain_classes']} classes "
                          f"({starts[key]['pretrain_excluded']} removed), {starts[key]['pretrain_s']}s", flush=True)
                start = dict(starts[key])
                for name in ("val", "test"):
                    start[name] = head_metrics(start["model"], *data[name])
                data["start"] = start
            for m, al, rho in todo:
                r = run_one(m, split, seed, al, rho, a, data)
                runs.append(r)
                done.add(run_key(r))
                print(f"seed {seed} {split:<8} {m:<8} {_hp(r)} test class R@1 "
                      f"{r['test']['class']['recall@1']:.3f} concat {r['test']['concat']['recall@1']:.3f} "
                      f"(update {r['best_step']}/{r['updates']}, {r['train_s']}s)", flush=True)
                write_results(a.out, "(in progress)\n", {"args": args_json, "runs": runs}, "claim_sharing.py", a.small)
    chosen = select(runs, grids)
    for r in runs:
        r["selected"] = any(c is r for c in chosen.values())
    pre_s = {(int(r["seed"]), r["start"]["digest"]): float(r["start"]["pretrain_s"]) for r in runs if "start" in r}
    run_s = sum(float(r["train_s"]) for r in runs) + sum(pre_s.values())
    n_imported = sum("source" in r for r in runs)
    invocation_s = time.perf_counter() - t_start
    body, verdicts = analyse(runs, a, grids)
    if a.versus is not None:
        parity, verdicts["versus"] = versus(runs, a.versus, a)
        body = parity + "\n" + body
    cmd = command_line("claim_sharing.py", argv)
    if a.alpha_grid or a.rho_grid:
        share_hp = (f"alpha ∈ {alphas} × rho ∈ {rhos} picked jointly" if len(alphas) > 1
                    else f"alpha {alphas[0]:g} fixed, rho ∈ {rhos} picked")
        hp = (f"t* sharing: {share_hp}; MIC: rho ∈ {rhos} (MIC's separate shared "
              f"updates have no alpha); the baseline has neither. Selection, per seed, split and method, on the "
              f"validation classes only: the highest val class-head R@1 at the run's val-best update; ties go to "
              f"the higher val class-head MAP@R, then to the smaller alpha, then the smaller rho")
    else:
        hp = f"alpha {a.alpha:g}, rho {a.rho:g} (fixed, not tuned)"
    pre = pretrain_text(runs, a)
    src = (f"; {n_imported} of them reused from {', '.join(sorted({r['source'] for r in runs if 'source' in r}))}"
           if n_imported else "")
    head = (f"# Sharing / MIC claim on the controlled synthetic benchmark\n\nCommand: `{cmd}`  \n"
            f"Wall time: {run_s / 60:.1f} min, the sum of the {len(runs)} runs' own timers (training and the "
            f"val/test evaluations{src}; this invocation {invocation_s / 60:.1f} min); {run_conditions()}, "
            f"shared machine: {environment()}."
            f"\n\nSetup: {a.image_size}x{a.image_size} images, {a.images_per_class} per class, 54 training classes "
            f"in every split{' but held-out-val-colour (36)' if 'held-out-val-colour' in a.splits else ''}; "
            f"simple_cnn width {a.width} depth {a.depth}, two {a.dim}-d heads; Adam lr {a.lr:g}; "
            f"{round(a.steps * (1 + a.p_aux))} updates for every method (MIC: about {a.steps} iterations, p_aux "
            f"{a.p_aux:g}), trained on the engine's modules by a Lightning trainer; {pre}; {hp}; MIC K={a.clusters}, "
            f"decorrelation on both "
            f"steps, label noise 0.2 per image; seeds {a.seeds}. Checkpoint: best val class-head R@1 "
            f"(every {a.eval_every} updates).\n")
    write_results(a.out, head + "\n" + body, {"command": cmd, "wall_s": round(run_s, 1),
                                              "invocation_s": round(invocation_s, 1), "args": args_json,
                                              "verdicts": verdicts, "runs": runs}, "claim_sharing.py", a.small)
    print(body)
    return 0


if __name__ == "__main__":
    from dynametric.pipeline.run import quiet_lightning

    quiet_lightning()  # Lightning's banners and inapplicable warnings, as `dynametric train` hides them
    raise SystemExit(main())
