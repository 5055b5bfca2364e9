"""PDDM claims on the controlled synthetic benchmark: do quadruplets mined by the learned PDDM score ("local
similarity") beat quadruplets mined by Euclidean distance under the same loss, does PDDM converge faster, and does
its advantage grow when classes have heterogeneous intra-class spread (the feature-density differences PDDM
targets)?

Protocol (every method of a seed and condition starts from the **same** network):

1. *Pretraining* on disjoint synthetic classes: the ``train`` split of another data seed (``1000 + seed``), with every
   fine variant (shape, colour, texture, size) that occurs in this seed's train/val/test splits removed; triplet loss
   + semihard mining, ``--pretrain-steps`` steps.
2. *Fine-tuning* on this seed's ``train`` split for ``--steps`` steps (P x K batches), one of:

   * ``pddm``: ``PDDMLoss`` (E_m + 0.5 E_e, double header), one hard quadruplet per batch mined by the PDDM score
     (the paper's procedure);
   * ``euclid``: the same loss and unit, the quadruplet mined by squared Euclidean distance (hardest positive pair,
     nearest negatives) instead of the PDDM score;
   * ``triplet``: continued triplet loss + semihard mining (the pretraining objective; a reference).

3. Each method's learning rate is picked per seed on the class-disjoint ``val`` split (R@1 at the val-best step)
   from ``--lrs``; test (unseen classes, leave-one-out, fine scale, Euclidean on L2-normalised embeddings) is
   reported at that lr and step. Curves: test R@1 against step and against cumulative training wall time.

   **Step 0 is a checkpoint candidate**: the pretrained start itself is evaluated and can be the val-best step, so
   an arm that never improves on its start is reported as the start. (The Sharing benchmark excludes the start from
   selection.) The analysis therefore also reports every arm minus the start, how many seeds select step 0, picked
   lrs at the edge of ``--lrs``, and the main comparison re-selected with step 0 excluded (from the stored curves).
   Training seconds come from a shared, uncontrolled machine: time-based results are indicative only.

Conditions: ``uniform`` (today's data, every class the same spread) and ``heterogeneous``
(``class_spread=(0.25, 2.0)``: per-class spread factors drawn log-uniformly). Paired differences over seeds (each
redraws data, pretraining and batches) with 95 % t-intervals (``benchmarks/claim_common.py``). Each verdict (the
Verdicts section's and the time to a common level per condition, m in all) is also given family-wise: the same rule
on its interval at the Bonferroni level 1 - 0.05 / m (``claim_common.bonferroni``).

    python benchmarks/claim_pddm.py --out docs/results/claim-pddm.md
    python benchmarks/claim_pddm.py --small --out /tmp/claim-pddm.md          # seconds; used by the tests

``--small`` changes only the *defaults* of the size options (seeds, pretraining and fine-tuning steps, evaluation
interval, image size, network, classes and batch shape; ``--help`` lists the values): an option given explicitly
keeps its value, so ``--small --seeds 5 6`` runs seeds 5 and 6, and the header's Setup line and the ``.json``'s
``args`` hold what ran.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claim_common import (  # noqa: E402
    PLATEAU_PP,
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
    fmt_level,
    last_quarter_gain,
    load_runs,
    mean_curve,
    mean_sd,
    one_interval_rule,
    original_header,
    paired_ci,
    parse_with_small,
    read_finished_results,
    rerender_note,
    run_conditions,
    sign,
    small_help,
    stored_header,
    write_results,
)
from result_files import add_overwrite_option  # noqa: E402

from dynametric.data import SyntheticHierarchy  # noqa: E402
from dynametric.data.samplers import MPerClassSampler  # noqa: E402
from dynametric.losses import PDDMLoss, TripletMarginLoss  # noqa: E402
from dynametric.metrics import evaluate_embeddings  # noqa: E402
from dynametric.miners import TripletMarginMiner  # noqa: E402
from dynametric.miners.pddm import mine_hard_quadruplets  # noqa: E402
from dynametric.models import build_embedder  # noqa: E402

METHODS = ("pddm", "euclid", "triplet")
CONDITIONS = {"uniform": None, "heterogeneous": (0.25, 2.0)}


class EuclidMinedPDDMLoss(PDDMLoss):
    """``PDDMLoss`` whose quadruplet is mined by (negative squared) Euclidean distance instead of the PDDM score."""

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor):  # type: ignore[override]
        with torch.no_grad():
            f = embeddings.detach()
            scores = -torch.cdist(f, f).pow(2)
        return mine_hard_quadruplets(scores, labels, self.mode)


def _variant_key(v: dict) -> tuple:
    return (v["shape"], v["colour"], v["texture"], v["size"])


def build_data(seed: int, spread: tuple[float, float] | None, a: argparse.Namespace) -> dict[str, Any]:
    kw = {"image_size": a.image_size, "images_per_class": a.images_per_class, "class_spread": spread,
          "fine_per_shape": {"train": a.train_per_shape, "val": max(1, a.train_per_shape // 2),
                             "test": max(1, a.train_per_shape // 2)}}
    out: dict[str, Any] = {}
    used: set[tuple] = set()
    for split in ("train", "val", "test"):
        ds = SyntheticHierarchy(split, seed=seed, **kw)
        used |= {_variant_key(v) for v in ds.classes}
        out[split] = (ds.tensors(), ds.labels[:, :1].clone())
    pre = SyntheticHierarchy("train", seed=1000 + seed, **kw)
    keep_fine = torch.tensor([v["fine"] for v in pre.classes if _variant_key(v) not in used])
    mask = torch.isin(pre.labels[:, 0], keep_fine)
    out["pretrain"] = (pre.tensors()[mask], pre.labels[mask, :1].clone())
    out["pretrain_classes"] = int(keep_fine.numel())
    return out


TIMING_CAVEAT = ("Training seconds (the seconds columns, s / step, curves against wall time) were measured on a "
                 "shared machine under uncontrolled load (the same code's s / step varies over more than 10x across "
                 "results files): they are indicative only; compare steps.")

SETUP_KEYS = ("steps", "eval_every", "lrs", "pretrain_steps", "pretrain_lr", "image_size", "width", "depth", "dim",
              "train_per_shape", "images_per_class", "p", "k", "margin")


def _run_key(r: dict[str, Any]) -> tuple[str, str, int, float]:
    return r["method"], r["condition"], r["seed"], float(r["lr"])


def check_setup(path: Path, args: dict[str, Any] | None, a: argparse.Namespace) -> None:
    """Runs kept (``--resume``) or merged from ``path`` must come from this invocation's training setup: one-line
    error naming the first setting that differs. A file without ``args`` (an interrupted invocation) passes; its
    runs carry no setup to compare."""
    if args is None:
        return
    for k in SETUP_KEYS:
        if k == "lrs" and "lrs" in args:
            # a file's lr grid may be part of this invocation's: the lr grid is extended by running only the new
            # lrs (--lrs NEW) and merging (--lrs OLD... NEW --merge ...), or by --resume with the larger grid
            extra = sorted(set(map(float, args["lrs"])) - set(map(float, a.lrs)))
            if extra:
                raise SystemExit(f"{path}: has runs at lr {extra[0]:g}, which this invocation's --lrs {a.lrs} "
                                 f"does not include; give every lr of the files being combined")
            continue
        if k in args and args[k] != getattr(a, k):
            raise SystemExit(f"{path}: was run with --{k.replace('_', '-')} {args[k]}, this invocation has "
                             f"{getattr(a, k)}; runs of different setups cannot be combined")


def check_same_start(path: Path, key: str, have: dict[str, Any] | None, new: dict[str, Any]) -> None:
    """Runs combined for one seed and condition must fine-tune the same pretrained start: the start's val and test
    metrics (stored per ``seed/condition`` under ``pretraining``) must be equal, else a one-line error. Pretraining
    is deterministic for a seed on one thread, so a difference means other code or another machine, whose runs
    would not be paired."""
    if have is None:
        return
    for split in ("val", "test"):
        if split in have and split in new and have[split] != new[split]:
            raise SystemExit(f"{path}: the pretrained start of seed/condition {key} differs ({split} R@1 "
                             f"{have[split]['recall@1']:.4f} against {new[split]['recall@1']:.4f}): its runs cannot "
                             f"be paired with the others (other code or another machine?)")


def select(runs: list[dict[str, Any]]) -> None:
    """Mark, per seed, condition and method, the run of the lr with the best val R@1 (``selected``; ties: the
    first lr run)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["seed"], r["condition"], r["method"]), []).append(r)
    for cands in groups.values():
        best_r = max(cands, key=lambda r: r["val"]["recall@1"])
        for r in cands:
            r["selected"] = r is best_r


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        emb = torch.cat([model(x[i:i + 512]) for i in range(0, len(x), 512)])
    model.train()
    res = evaluate_embeddings(emb, y[:, 0], metrics=["recall@1", "map@r"], k_values=(1,), distance="euclidean")
    return {k: float(res["fine"][k]) for k in ("recall@1", "map@r")}


def _objective(method: str, dim: int, margin: float) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    if method == "pddm":
        return PDDMLoss(dim, mode="faithful_one_per_batch"), None
    if method == "euclid":
        return EuclidMinedPDDMLoss(dim, mode="faithful_one_per_batch"), None
    return TripletMarginLoss(margin=margin), TripletMarginMiner(margin=margin, type_of_triplets="semihard")


def train(model: torch.nn.Module, method: str, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float, seed: int,
          a: argparse.Namespace, evals: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
          ) -> list[dict[str, Any]]:
    torch.manual_seed(seed)
    loss, miner = _objective(method, a.dim, a.margin)
    groups = [{"params": list(model.parameters())}]
    if list(loss.parameters()):
        groups.append({"params": list(loss.parameters())})
    opt = torch.optim.Adam(groups, lr=lr)
    sampler = MPerClassSampler(y, m=a.k, batch_size=a.p * a.k, scale=0, seed=seed, iterations_per_epoch=steps)
    sampler.set_epoch(0)
    curve: list[dict[str, Any]] = []
    if evals:
        curve.append({"step": 0, "seconds": 0.0, **{k: evaluate(model, *v) for k, v in evals.items()}})
    spent, step = 0.0, 0
    for idx in sampler:
        t0 = time.perf_counter()
        idx_t = torch.as_tensor(idx)
        emb, lab = model(x[idx_t]), y[idx_t]
        value = loss(emb, lab, miner(emb, lab)) if miner is not None else loss(emb, lab)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        spent += time.perf_counter() - t0
        step += 1
        if evals and (step % a.eval_every == 0 or step == steps):
            curve.append({"step": step, "seconds": round(spent, 2), **{k: evaluate(model, *v) for k, v in
                                                                      evals.items()}})
        if step >= steps:
            break
    return curve


def analyse(runs: list[dict], a: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    seeds = a.seeds
    sel = [r for r in runs if r.get("selected")]

    def vals(method: str, cond: str, key: str = "test", metric: str = "recall@1") -> list[float]:
        by = {r["seed"]: (r[key][metric] if key == "test" else r[key]) for r in sel
              if r["method"] == method and r["condition"] == cond}
        return [by[s] for s in seeds]

    lines = ["## Test at the val-selected lr and step (%, mean ± sd over seeds)\n",
             "| condition | method | R@1 | MAP@R | mean test R@1 over the curve | picked lrs | val-best step | "
             "s / step |", "|---|---|---|---|---|---|---|---|"]
    for cond in a.conditions:
        for m in a.methods:
            rs = [r for r in sel if r["method"] == m and r["condition"] == cond]
            if not rs:
                continue
            lines.append(f"| {cond} | {m} | {mean_sd([r['test']['recall@1'] for r in rs])} | "
                         f"{mean_sd([r['test']['map@r'] for r in rs])} | {mean_sd([r['auc'] for r in rs])} | "
                         f"{', '.join(format(r['lr'], 'g') for r in rs)} | "
                         f"{statistics.median(r['best_step'] for r in rs):g} | "
                         f"{statistics.fmean(r['s_per_step'] for r in rs):.3f} |")
    lines += [f"\n## Paired differences (percentage points, 95 % t-interval over {len(seeds)} seeds)\n",
              "| condition | comparison | test R@1 | test MAP@R | mean test R@1 over the curve |",
              "|---|---|---|---|---|"]
    cis: dict[str, Any] = {}
    for cond in a.conditions:
        for x, y in (("euclid", "pddm"), ("triplet", "pddm"), ("triplet", "euclid")):
            if x not in a.methods or y not in a.methods:
                continue
            row = {"r1": paired_ci(vals(x, cond), vals(y, cond)),
                   "map": paired_ci(vals(x, cond, metric="map@r"), vals(y, cond, metric="map@r")),
                   "auc": paired_ci(vals(x, cond, "auc"), vals(y, cond, "auc"))}
            cis[f"{cond}/{y}-{x}"] = row
            lines.append(f"| {cond} | {y} − {x} | {fmt_ci(row['r1'])} | {fmt_ci(row['map'])} | "
                         f"{fmt_ci(row['auc'])} |")
    verdicts: dict[str, Any] = {}
    lines.append("\n## Verdicts\n")
    # the time-to-level verdicts (their own section, further down) belong to the report's family too
    speed_lines, speed_out = time_to_level_section(sel, a)
    speed = {cond: Claim(f"time-to-level/{cond}", one_interval_rule, {"steps": v["steps"]})
             for cond, v in speed_out.items()}
    entries: list[tuple[Claim, str]] = []  # the Verdicts section's claims and their bullets
    for cond in a.conditions:
        if f"{cond}/pddm-euclid" in cis:
            ci = cis[f"{cond}/pddm-euclid"]["r1"]
            claim = Claim(f"local-similarity/{cond}", one_interval_rule, {"ci": ci})
            verdicts[claim.key] = {"verdict": claim.verdict(), "ci": ci}
            entries.append((claim, f"* **PDDM-mined beats Euclidean-mined quadruplets under the same loss ({cond})** "
                            f"— **{claim.verdict()}**: test R@1 {fmt_ci(ci)} pp."))
        if f"{cond}/pddm-triplet" in cis:
            ci = cis[f"{cond}/pddm-triplet"]["auc"]
            claim = Claim(f"convergence/{cond}", one_interval_rule, {"ci": ci})
            verdicts[claim.key] = {"verdict": claim.verdict(), "ci": ci}
            entries.append((claim, f"* **PDDM converges faster than the triplet baseline ({cond}; mean test R@1 "
                            f"over the {a.steps}-step curve)** — **{claim.verdict()}**: {fmt_ci(ci)} pp (final: "
                            f"{fmt_ci(cis[f'{cond}/pddm-triplet']['r1'])} pp)."))
    if len(a.conditions) == 2 and all(f"{c}/pddm-euclid" in cis for c in a.conditions):
        g = {c: [p - e for p, e in zip(vals("pddm", c), vals("euclid", c), strict=True)] for c in a.conditions}
        ci = paired_ci(g["uniform"], g["heterogeneous"])
        claim = Claim("density", one_interval_rule, {"ci": ci})
        verdicts[claim.key] = {"verdict": claim.verdict(), "ci": ci}
        entries.append((claim, f"* **PDDM's advantage over Euclidean mining grows with heterogeneous class spread** "
                        f"— **{claim.verdict()}**: (pddm − euclid) heterogeneous minus uniform {fmt_ci(ci)} pp."))
    claims = [c for c, _ in entries] + list(speed.values())
    fw = bonferroni(claims) if claims else {}
    if claims:
        summary, verdicts["family_wise"] = family_summary(
            claims, fw, "under each (for the time-to-level verdicts: below their table)" if speed else "under each")
        lines.append(summary)
    for claim, bullet in entries:
        lines.append(bullet)
        lines.append(family_line(fw[claim.key], claim.verdict(), f"{fmt_ci(fw[claim.key]['intervals']['ci'])} pp."))
        verdicts[claim.key]["family_wise"] = family_record(fw[claim.key])
    if speed:
        level = fmt_level(next(fw[c.key]["level"] for c in speed.values()))
        shown = []
        for cond, claim in speed.items():
            f = fw[claim.key]
            speed_out[cond]["family_wise"] = family_record(f)
            change = "same call" if f["verdict"] == claim.verdict() else f"changed from {claim.verdict()}"
            shown.append(f"{cond} **{f['verdict']}** ({change}), triplet − PDDM steps "
                         f"{fmt_ci(f['intervals']['steps'], 1.0, 0)}")
        speed_lines.append(f"\nFamily-wise (Bonferroni, m = {len(claims)}; each interval at {level}): "
                           + "; ".join(shown) + ".")
    start_lines, verdicts["versus_start"] = start_section(runs, sel, a)
    lines += start_lines
    for cond in a.conditions:
        key = f"local-similarity/{cond}"
        e = verdicts["versus_start"].get(f"{cond}/euclid")
        if key in verdicts and e is not None and sign(e["ci"]) <= 0:
            verdicts[key]["caveat"] = "euclid-does-not-improve-on-start"
            lines.append(f"* **Caveat ({cond}):** the Euclidean-mined arm does not improve on its pretrained start "
                         f"(euclid − start {fmt_ci(e['ci'])} pp), so PDDM − Euclidean shows that Euclidean mining "
                         f"fails here, not that PDDM's local similarity beats a working Euclidean miner.")
    conv_lines, verdicts["convergence_check"] = convergence_section(sel, a)
    lines += conv_lines
    verdicts["time_to_level"] = speed_out
    lines += speed_lines
    for cond in a.conditions:
        lines.append(f"\n## Curves, {cond}: test R@1 (%) against step, mean over seeds (val-selected lr)\n")
        curves = {m: mean_curve([r for r in sel if r["method"] == m and r["condition"] == cond], metric="test_r1")
                  for m in a.methods}
        lines.append(curve_table(curves))
        secs = {m: statistics.fmean(r["s_per_step"] for r in sel if r["method"] == m and r["condition"] == cond)
                for m in a.methods}
        lines.append("\nAgainst wall time: multiply the step by the method's training seconds per step ("
                     + ", ".join(f"{m} {s:.3f} s" for m, s in secs.items()) + "; per-run curves with cumulative "
                     f"seconds are in the JSON). {TIMING_CAVEAT}")
    return "\n".join(lines), verdicts


def _best_after_start(run: dict[str, Any]) -> dict[str, Any]:
    """The run's val-best curve point among steps > 0 (the start excluded; ties: the earliest)."""
    return max((p for p in run["curve"] if p["step"] > 0), key=lambda p: p["val"])


def start_section(runs: list[dict], sel: list[dict], a: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """Every arm against the pretrained start (test R@1 at the val-selected lr and step minus the start's, paired by
    seed); seeds whose selected checkpoint is step 0; picked lrs at the edge of the grid; and PDDM − Euclidean
    re-selected with step 0 excluded (the Sharing benchmark's policy), from the stored curves."""
    seeds, lo_lr, hi_lr = a.seeds, min(a.lrs), max(a.lrs)
    lines = ["\n## Against the start (step 0 is a checkpoint candidate here; test R@1, pp, 95 % t-interval)\n",
             "| condition | method | − start | seeds selecting step 0 | picked lr at the grid edge | seeds with "
             "best step 0 at lr ≥ 10 × smallest |", "|---|---|---|---|---|---|"]
    out: dict[str, Any] = {}
    for cond in a.conditions:
        for m in a.methods:
            by = {r["seed"]: r for r in sel if r["method"] == m and r["condition"] == cond}
            if any(s not in by for s in seeds):
                continue
            ci = paired_ci([by[s]["start"]["test"]["recall@1"] for s in seeds],
                           [by[s]["test"]["recall@1"] for s in seeds])
            zero = sum(by[s]["best_step"] == 0 for s in seeds)
            edge = sum(by[s]["lr"] in (lo_lr, hi_lr) for s in seeds) if len(a.lrs) > 1 else 0
            high = [r for r in runs if r["method"] == m and r["condition"] == cond and r["lr"] >= 10 * lo_lr]
            high_zero = f"{sum(r['best_step'] == 0 for r in high)} of {len(high)}" if high else "—"
            out[f"{cond}/{m}"] = {"ci": ci, "step0_selected": zero, "lr_at_edge": edge, "step0_at_high_lr": high_zero}
            lines.append(f"| {cond} | {m} | {fmt_ci(ci)} | {zero} of {len(seeds)} | {edge} of {len(seeds)} | "
                         f"{high_zero} |")
    lines.append(f"\nThe lr grid is {a.lrs}; a picked lr at its edge means a smaller (or larger) lr was not tried.")
    lines.append("\n### PDDM − Euclidean with step 0 excluded from selection (re-selected from the stored curves)\n")
    lines += ["| condition | pddm − euclid, test R@1 (step 0 excluded) | as reported (step 0 allowed) |",
              "|---|---|---|"]
    for cond in a.conditions:
        vals: dict[str, list[float]] = {}
        for m in ("pddm", "euclid"):
            per_seed = []
            for s in seeds:
                cands = [r for r in runs if r["method"] == m and r["condition"] == cond and r["seed"] == s]
                if not cands or any(len(r["curve"]) < 2 for r in cands):
                    break
                best = max((_best_after_start(r) for r in cands), key=lambda p: p["val"])
                per_seed.append(best["test_r1"])
            vals[m] = per_seed
        if len(vals["pddm"]) == len(seeds) == len(vals["euclid"]) and len(seeds) > 1:
            ci = paired_ci(vals["euclid"], vals["pddm"])
            both = paired_ci([r["test"]["recall@1"] for s in seeds for r in sel if r["seed"] == s
                              and r["method"] == "euclid" and r["condition"] == cond],
                             [r["test"]["recall@1"] for s in seeds for r in sel if r["seed"] == s
                              and r["method"] == "pddm" and r["condition"] == cond])
            out[f"{cond}/pddm-euclid-excluding-start"] = ci
            lines.append(f"| {cond} | {fmt_ci(ci)} | {fmt_ci(both)} |")
    return lines, out


def reach(curve: list[dict], level: float) -> tuple[int, float]:
    """The first evaluated (step, cumulative training seconds) at which val R@1 is at least ``level``."""
    point = next(p for p in curve if p["val"] >= level - 1e-12)
    return point["step"], point["seconds"]


def time_to_level_section(sel: list[dict], a: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """Convergence speed measured directly: per seed, the common level is the lower of PDDM's and triplet's best val
    R@1 minus :data:`PLATEAU_PP`; each method's steps and training seconds to first reach it (val-selected lr), and
    their paired difference (positive = PDDM faster)."""
    lines = [f"\n## Time to a common level (val R@1 at the selected lr; per seed the level is the lower of PDDM's "
             f"and triplet's best minus {PLATEAU_PP:g} pp; evaluated every {a.eval_every} steps)\n",
             "| condition | level (val R@1 %) | PDDM steps | triplet steps | triplet − PDDM steps | PDDM s | "
             "triplet s | triplet − PDDM s | verdict: PDDM faster |", "|---|---|---|---|---|---|---|---|---|"]
    out: dict[str, Any] = {}
    if not {"pddm", "triplet"} <= set(a.methods):
        return [], out
    for cond in a.conditions:
        runs = {(r["method"], r["seed"]): r for r in sel if r["condition"] == cond}
        seeds = [s for s in a.seeds if ("pddm", s) in runs and ("triplet", s) in runs]
        if len(seeds) < 2:
            continue
        levels, steps, secs = [], {"pddm": [], "triplet": []}, {"pddm": [], "triplet": []}
        for s in seeds:
            level = min(max(p["val"] for p in runs[(m, s)]["curve"]) for m in ("pddm", "triplet")) - PLATEAU_PP / 100
            levels.append(level)
            for m in ("pddm", "triplet"):
                st, sec = reach(runs[(m, s)]["curve"], level)
                steps[m].append(float(st))
                secs[m].append(float(sec))
        ci_steps = paired_ci(steps["pddm"], steps["triplet"])
        ci_secs = paired_ci(secs["pddm"], secs["triplet"])
        v = one_interval_rule({"steps": ci_steps})
        out[cond] = {"verdict": v, "steps": ci_steps, "seconds": ci_secs, "levels": levels,
                     "pddm_steps": steps["pddm"], "triplet_steps": steps["triplet"]}
        lines.append(f"| {cond} | {100 * statistics.fmean(levels):.1f} | {statistics.fmean(steps['pddm']):.0f} | "
                     f"{statistics.fmean(steps['triplet']):.0f} | {fmt_ci(ci_steps, 1.0, 0)} | "
                     f"{statistics.fmean(secs['pddm']):.1f} | {statistics.fmean(secs['triplet']):.1f} | "
                     f"{fmt_ci(ci_secs, 1.0, 1)} | {v} |")
    if out:
        lines.append(f"\nThe verdict uses steps. {TIMING_CAVEAT}")
    return lines, out


def convergence_section(sel: list[dict], a: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """Per condition and method, at the val-selected lr: how much the last quarter of the fine-tuning budget adds to
    the best val R@1 (mean over seeds of best over all steps minus best over the first three quarters)."""
    quarter = 0.75 * a.steps
    lines = [f"\n## Convergence (val R@1 at the selected lr, pp, mean over seeds: best over all {a.steps} steps "
             f"minus best over the first {quarter:g}; converged if below {PLATEAU_PP:g} pp)\n",
             "| condition | method | best val R@1 | gain in the last quarter | converged |", "|---|---|---|---|---|"]
    out: dict[str, Any] = {}
    for cond in a.conditions:
        for m in a.methods:
            rs = [r for r in sel if r["method"] == m and r["condition"] == cond]
            res = last_quarter_gain([[(p["step"], p["val"]) for p in r["curve"]] for r in rs], a.steps)
            if res is None:
                continue
            best, gain = res[0], 100 * res[1]
            out[f"{cond}/{m}"] = {"best_val": best, "gain_pp": gain, "converged": gain < PLATEAU_PP}
            ok = "yes" if gain < PLATEAU_PP else "**no**"
            lines.append(f"| {cond} | {m} | {100 * best:.1f} | {gain:.2f} | {ok} |")
    done = sum(v["converged"] for v in out.values())
    lines.append(f"\n{done} of {len(out)} cells meet the criterion.")
    return lines, {"criterion_pp": PLATEAU_PP, "converged": done, "cells": out}




def render_only(json_path: Path, overwrite: bool = False) -> int:
    """Tables and verdicts of a finished results file re-derived from its stored runs (no training); the ``.md``
    keeps its original header plus one line saying so, the ``.json`` keeps its runs and gets the new verdicts."""
    data = read_finished_results(json_path)
    small = bool(data["args"].get("small"))
    check_results(json_path.with_suffix(".md"), "claim_pddm.py", small, overwrite)
    a = argparse.Namespace(**data["args"])
    runs = data["runs"]
    select(runs)
    body, verdicts = analyse(runs, a)
    lines, _ = stored_header(json_path)
    head = original_header(lines)
    note = rerender_note("claim_pddm.py", json_path)
    write_results(json_path.with_suffix(".md"), f"{head}\n\n{note}\n\n{body}",
                  data | {"verdicts": verdicts, "runs": runs},
                  "claim_pddm.py", small)
    print(body)
    return 0


# --small's defaults (parse_with_small: an option given explicitly keeps its value)
SMALL = {"seeds": [0, 1], "pretrain_steps": 3, "steps": 4, "eval_every": 2, "image_size": 8, "width": 4, "depth": 2,
         "dim": 8, "train_per_shape": 2, "images_per_class": 3, "p": 4, "k": 2}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--small``'s preset applied, explicit options kept)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=list(CONDITIONS))
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 1e-3])
    ap.add_argument("--pretrain-steps", type=int, default=200)
    ap.add_argument("--pretrain-lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--train-per-shape", type=int, default=8)
    ap.add_argument("--images-per-class", type=int, default=8)
    ap.add_argument("--p", type=int, default=8)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--margin", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--small", action="store_true", help=small_help(SMALL))
    add_overwrite_option(ap)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--merge", type=Path, nargs="+", default=[], metavar="JSON",
                    help="add the runs of these results files (e.g. one per condition, run in parallel, or new lrs of "
                         "a finished grid) before the analysis; their setup must equal this invocation's, their lrs "
                         "be among its --lrs, their pretrained starts equal")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--render-only", type=Path, default=None, metavar="JSON",
                    help="re-derive a finished results .json's analysis from its stored runs and rewrite its .md "
                         "(original header kept) and the .json's verdicts; trains nothing, runs unchanged")
    a = parse_with_small(ap, argv, SMALL)
    if a.render_only is None and a.out is None:
        ap.error("--out is required (unless --render-only)")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.render_only is not None:
        return render_only(a.render_only, a.overwrite)
    check_results(a.out, "claim_pddm.py", a.small, a.overwrite)
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    runs = load_runs(a.out.with_suffix(".json")) if a.resume else []
    info: dict[str, Any] = {}
    info_from: dict[str, Path] = {}  # the results file each stored pretrained start came from (named in errors)
    invocations: list[dict[str, Any]] = []
    if a.resume and a.out.with_suffix(".json").is_file():
        previous = json.loads(a.out.with_suffix(".json").read_text(encoding="utf-8"))
        check_setup(a.out.with_suffix(".json"), previous.get("args"), a)
        invocations += [i for i in previous.get("invocations", []) if i.get("wall_s")]
        info.update(previous.get("pretraining", {}))
        info_from.update(dict.fromkeys(previous.get("pretraining", {}), a.out.with_suffix(".json")))
    for path in a.merge:
        payload = json.loads(path.read_text(encoding="utf-8"))
        if "args" not in payload:
            raise SystemExit(f"{path}: not a finished results file (no 'args'): finish it with --resume first")
        check_setup(path, payload["args"], a)
        have = {_run_key(r) for r in runs}
        twice = sorted({_run_key(r) for r in payload.get("runs", [])} & have)
        if twice:
            raise SystemExit(f"{path}: run {twice[0]} (method, condition, seed, lr) is already in the runs being "
                             f"merged; merge files of disjoint seeds, conditions or lrs")
        runs += payload.get("runs", [])
        for key, start in payload.get("pretraining", {}).items():
            check_same_start(path, key, info.get(key), start)
            info[key], info_from[key] = start, path
        invocations += payload.get("invocations", [{"command": payload.get("command"),
                                                    "wall_s": payload.get("wall_s")}])
    for seed in a.seeds:
        for cond in a.conditions:
            if all(any(r["seed"] == seed and r["condition"] == cond and r["method"] == m and r["lr"] == lr
                       for r in runs) for m in a.methods for lr in a.lrs):
                continue
            data = build_data(seed, CONDITIONS[cond], a)
            torch.manual_seed(seed)
            start = build_embedder(backbone="simple_cnn", embedding_dim=a.dim, pooling="max", normalize=True,
                                   backbone_kwargs={"width": a.width, "depth": a.depth})
            t0 = time.perf_counter()
            train(start, "triplet", *data["pretrain"], a.pretrain_steps, a.pretrain_lr, seed + 500, a)
            start_eval = {"val": evaluate(start, *data["val"]), "test": evaluate(start, *data["test"])}
            check_same_start(info_from.get(f"{seed}/{cond}", a.out.with_suffix(".json")), f"{seed}/{cond}",
                             info.get(f"{seed}/{cond}"), start_eval)
            info[f"{seed}/{cond}"] = {"pretrain_classes": data["pretrain_classes"],
                                      "pretrain_s": round(time.perf_counter() - t0, 1), **start_eval}
            for m in a.methods:
                for lr in a.lrs:
                    if any(r["seed"] == seed and r["condition"] == cond and r["method"] == m and r["lr"] == lr
                           for r in runs):
                        continue
                    model = copy.deepcopy(start)
                    t1 = time.perf_counter()
                    curve = train(model, m, *data["train"], a.steps, lr, seed, a,
                                  evals={"val": data["val"], "test": data["test"]})
                    best = max(curve, key=lambda p: p["val"]["recall@1"])
                    r = {"method": m, "condition": cond, "seed": seed, "lr": lr, "best_step": best["step"],
                         "val": best["val"], "test": best["test"], "start": start_eval,
                         "auc": statistics.fmean(p["test"]["recall@1"] for p in curve),
                         "s_per_step": curve[-1]["seconds"] / max(1, curve[-1]["step"]),
                         "run_s": round(time.perf_counter() - t1, 1),
                         "curve": [{"step": p["step"], "seconds": p["seconds"], "val": p["val"]["recall@1"],
                                    "test_r1": p["test"]["recall@1"]} for p in curve]}
                    runs.append(r)
                    print(f"seed {seed} {cond:<13} {m:<7} lr {lr:g}: val R@1 {best['val']['recall@1']:.3f} test "
                          f"R@1 {best['test']['recall@1']:.3f} (start {start_eval['test']['recall@1']:.3f}, step "
                          f"{best['step']}, {r['run_s']}s)", flush=True)
                    write_results(a.out, "(in progress)\n", {"runs": runs, "invocations": invocations,
                                                              "pretraining": info}, "claim_pddm.py", a.small)
    select(runs)
    wall = time.perf_counter() - t_start
    body, verdicts = analyse(runs, a)
    cmd = command_line("claim_pddm.py", argv)
    invocations.append({"command": cmd, "wall_s": round(wall, 1)})
    total = sum(float(i.get("wall_s") or 0) for i in invocations)
    # merged parts (one per condition) run in parallel: the longest part, then this merging invocation; stated only
    # when every merged file is one part (a merged file that is itself a merge, e.g. an lr grid extended later, ran
    # at another time: its parts did not run side by side with this merge's)
    parts_only = bool(a.merge) and len(invocations) == len(a.merge) + 1
    side_by_side = (max(float(i.get("wall_s") or 0) for i in invocations[:-1]) + wall) / 60 if parts_only else 0.0
    head = (f"# PDDM claims on the controlled synthetic benchmark\n\nCommand: `{cmd}`  \n"
            f"Wall time: {total / 60:.1f} min, the sum of {len(invocations)} invocation(s) (" +
            "; ".join(f"`{i['command']}` {float(i.get('wall_s') or 0) / 60:.1f} min" for i in invocations) +
            f"; {run_conditions()}, shared machine: {environment()})" +
            (f"; the parts ran side by side, one per core, so on 2 cores the file reproduces in {side_by_side:.1f} min"
             if parts_only else "") + "."
            f"\n\nSetup: {a.image_size}x{a.image_size} images, {a.train_per_shape} train / "
            f"{max(1, a.train_per_shape // 2)} val / {max(1, a.train_per_shape // 2)} test fine classes per shape, "
            f"{a.images_per_class} images per class; simple_cnn width {a.width} depth {a.depth}, {a.dim}-d "
            f"L2-normalised; pretraining {a.pretrain_steps} steps triplet (margin {a.margin:g}) + semihard, Adam "
            f"{a.pretrain_lr:g}, on another seed's classes minus every variant of this seed; fine-tuning {a.steps} "
            f"steps of P x K = {a.p} x {a.k}, Adam, lr picked per seed and method on val (evaluated every "
            f"{a.eval_every} steps) from {a.lrs}; seeds {a.seeds}.\n")
    write_results(a.out, head + "\n" + body, {"command": cmd, "wall_s": round(total, 1), "invocations": invocations,
                                              "args": vars(a) | {"out": str(a.out), "merge": [str(p) for p in a.merge]},
                                              "verdicts": verdicts,
                                              "pretraining": info, "runs": runs}, "claim_pddm.py", a.small)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
