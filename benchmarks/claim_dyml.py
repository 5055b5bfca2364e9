"""DyML claim on the controlled synthetic benchmark: does summing a loss over scales hurt the fine scale once the
coarse groups stop being visually coherent, while CSL does not, and does CSL improve its own fine-level baseline?

Within each loss *family* three objectives are trained from the same initial network, on the same data and the
same batches (one sampler seed per seed):

* ``fine``: the family's loss on the fine labels only (CSL's own fine-level baseline for the CSL families);
* ``summed``: the same loss applied at every scale and summed (scale ``l`` uses its own labels and margin ``m_l``);
* ``csl``: Cross-Scale Learning (fine positives, negatives graded by scale, margins ``m_l``) in the family's form.

Families: ``proxy`` (CSL's proxy form: fine = CSL with weights (1, 0, 0); summed = one single-scale CSL-form proxy
loss per scale, proxies per class of that scale; csl = ``CSLLoss``), ``pairs`` (the same with in-batch samples in
place of proxies, ``mode="pairs"``), ``triplet`` (fine / summed Triplet, margins m_l; no CSL form), ``ms``
(Multi-Similarity fine / summed; no CSL form) and ``panchor`` (Proxy Anchor, Kim et al. 2020: fine = Proxy Anchor on
fine labels, margin d_0; summed = one Proxy Anchor per scale with its own proxies and margin d_l; csl =
:class:`GradedProxyAnchorLoss`, Proxy Anchor's positive term on fine proxies plus one negative term per scale with
margin d_l; d_l = m_l / 2.5 = 0.1 / 0.14 / 0.18, alpha = gamma). CosFace is not a separate family: at CSL's scale
and margins CosFace *is* the ``proxy`` family (CSL's fine term with the own proxy as the only positive is CosFace's
cross-entropy, see ``tests/benchmarks/test_claim_dyml.py``), so a proxy loss of a different form was added instead.

Samplers (``--sampler``): ``pxk`` (P x K fine-level batches; every term sees the whole batch) or ``three-chunk``
(DyML's three-scale sampler, ``ThreeScaleSampler``: every item holds K images of a fine, of a middle and of a coarse
class, P / 3 items per batch, so both samplers feed the same number of images per step). With ``three-chunk`` every
objective embeds the whole batch (same BatchNorm statistics) and each scale's term uses only its own chunk with its
own labels (the paper's ``negatives: chunk``): fine = the fine term on the fine chunk; summed = the scale-l term on
chunk l, summed; csl = CSL's level-l term (fine positives, level-l negatives) on chunk l, summed.

Data: ``SyntheticHierarchy`` with ``coarse_coherence`` c in
{1, 0.5, 0} (0.5 is realised as one coherent group of three, see docs/data.md); a seed redraws the data (fine
variants, pixels, which group stays coherent), the initial network and the batches.

Model selection: every ``--eval-every`` steps the class-disjoint ``val`` split is evaluated (DyML all-in-one
leave-one-out, ASI per scale); the checkpoint with the best val mean ASI is reported on ``test`` (the test value at
that step; test never chooses anything). Claims are paired differences over seeds with 95 % t-intervals
(``benchmarks/claim_common.py``).

    # P x K (docs/results/claim-dyml.md), then DyML's three-chunk sampler paired with it:
    python benchmarks/claim_dyml.py --steps 400 --families proxy pairs triplet ms panchor --out RESULTS.md
    python benchmarks/claim_dyml.py --steps 400 --families proxy pairs triplet ms panchor --sampler three-chunk
        --compare RESULTS.json --out SAMPLER.md                              # (one command line)
    # converged budget (docs/results/claim-dyml-long.md): one part per family and coherence set, then merged:
    python benchmarks/claim_dyml.py --steps 800 --eval-every 100 --coherence 1.0 0.0 --families ms --out PART.md
    python benchmarks/claim_dyml.py --steps 800 --eval-every 100 --families proxy pairs triplet ms panchor
        --merge PART.json ... --versus RESULTS.json --out LONG.md            # (one command line)
    python benchmarks/claim_dyml.py --small --out /tmp/claim-dyml.md          # seconds; used by the tests
    # re-derive a stored file's tables and verdicts from its runs (no training; the .json's runs stay as they are):
    python benchmarks/claim_dyml.py --render-only docs/results/claim-dyml-long.json

``--small`` changes only the *defaults* of the size options (seeds, coherence, steps, evaluation interval, image
size, network, classes and batch shape; ``--help`` lists the values): an option given explicitly keeps its value, so
``--small --seeds 5 6`` runs seeds 5 and 6, and the header's Setup line and the ``.json``'s ``args`` hold what ran.

Verdict rules (``analyse``): "summed falls below fine-only as coherence drops" and "CSL improves its own baseline"
need intervals on the claimed side of 0; "CSL pays no such penalty" is a non-inferiority test with margin
``NONINFERIORITY_PP`` (see :func:`no_penalty_verdict`). Inconclusive verdicts print the intervals' half-width, about
the smallest difference these seeds can detect. Each verdict is also given family-wise: the same rule on its k
intervals at the Bonferroni level 1 - 0.05 / (m k), m = the file's number of verdicts (``claim_common.bonferroni``).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from claim_common import (  # noqa: E402
    PLATEAU_PP,
    Claim,
    Intervals,
    bonferroni,
    check_results,
    command_line,
    curve_table,
    environment,
    family_line,
    family_record,
    family_summary,
    fmt_ci,
    last_quarter_gain,
    load_runs,
    mean_curve,
    mean_sd,
    original_header,
    paired_ci,
    parse_with_small,
    read_finished_results,
    rerender_note,
    results_sibling,
    run_conditions,
    sign,
    small_help,
    stored_header,
    write_results,
)
from result_files import add_overwrite_option  # noqa: E402

from dynametric.data import SyntheticHierarchy  # noqa: E402
from dynametric.data.samplers import MPerClassSampler, ThreeScaleSampler  # noqa: E402
from dynametric.losses import CSLLoss, MultiSimilarityLoss, ProxyAnchorLoss, TripletMarginLoss  # noqa: E402
from dynametric.losses.proxies import masked_log1p_sum_exp  # noqa: E402
from dynametric.methods.dyml.protocol import DyMLProtocol, evaluate_all_in_one, image_digests  # noqa: E402
from dynametric.models import build_embedder  # noqa: E402

SCALES = ("fine", "middle", "coarse")
MARGINS = (0.25, 0.35, 0.45)
FAMILIES: dict[str, tuple[str, ...]] = {"proxy": ("fine", "summed", "csl"), "pairs": ("fine", "summed", "csl"),
                                        "triplet": ("fine", "summed"), "ms": ("fine", "summed"),
                                        "panchor": ("fine", "summed", "csl")}
SAMPLERS = ("pxk", "three-chunk")


def _pa_margin(s: int) -> float:
    return MARGINS[s] / 2.5  # Proxy Anchor / triplet margins 0.1 / 0.14 / 0.18


class GradedProxyAnchorLoss(torch.nn.Module):
    """Proxy Anchor in CSL's form (benchmark-local; no published counterpart): one proxy per *fine* class, Proxy
    Anchor's positive term on fine labels, and one negative term per scale ``l`` whose negatives of proxy ``c`` are
    the samples whose scale-``l`` label differs from ``c``'s, with margin ``d_l``::

        L = 1/|P+| sum_{c in P+} log(1 + sum_{i: y0_i = c} e^{-alpha (s_ic - d_0)})
            + sum_l 1/C sum_c log(1 + sum_{i: yl_i != yl_c} e^{alpha (s_ic + d_l)})

    With a single scale this is Proxy Anchor exactly. Fine ids must be ``0 .. C-1`` (the synthetic hierarchy's).
    :meth:`terms` gives ``[pos + neg_0, neg_1, neg_2]`` so that a term can be evaluated on its own batch chunk.
    """

    def __init__(self, train_labels: torch.Tensor, embedding_size: int, alpha: float,
                 margins: tuple[float, ...]) -> None:
        super().__init__()
        paths = torch.unique(train_labels, dim=0)  # one row per fine class, sorted by fine id
        if not torch.equal(paths[:, 0], torch.arange(len(paths))):
            raise ValueError("GradedProxyAnchorLoss needs fine ids 0 .. C-1, each with one label path")
        self.register_buffer("paths", paths)
        self.alpha, self.margins = float(alpha), tuple(float(m) for m in margins)
        self.proxies = torch.nn.Parameter(torch.empty(len(paths), embedding_size))
        with torch.no_grad():  # Proxy Anchor's initialisation (same draw as ProxyAnchorLoss of the same shape)
            torch.nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def terms(self, emb: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        norm = torch.nn.functional.normalize
        cos = norm(emb, dim=1) @ norm(self.proxies.to(emb.dtype), dim=1).t()
        pos_mask = labels[:, :1] == self.paths[:, 0][None, :]  # [B, C]
        pos = masked_log1p_sum_exp(self.alpha * (self.margins[0] - cos), pos_mask, dim=0)
        out = [pos.sum() / pos_mask.any(dim=0).sum().clamp_min(1)]
        for s, m in enumerate(self.margins):
            neg_mask = labels[:, s:s + 1] != self.paths[:, s][None, :]
            out.append(masked_log1p_sum_exp(self.alpha * (cos + m), neg_mask, dim=0).sum() / len(self.paths))
        return [out[0] + out[1], *out[2:]]

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return sum(self.terms(emb, labels))


class PerScaleSum(torch.nn.Module):
    """``sum_l loss_l(emb, labels[:, l])`` with one single-scale loss per scale (``None``: scale not used); with
    ``chunks`` (row indices per scale, DyML's three-chunk batches) scale ``l``'s loss sees only chunk ``l``."""

    def __init__(self, losses: list[torch.nn.Module | None], columns: list[int]) -> None:
        super().__init__()
        self.losses = torch.nn.ModuleList([x for x in losses if x is not None])
        self.columns = [c for x, c in zip(losses, columns, strict=True) if x is not None]

    def forward(self, emb: torch.Tensor, labels: torch.Tensor,
                chunks: list[torch.Tensor] | None = None) -> torch.Tensor:
        if chunks is None:
            return sum(loss(emb, labels[:, c:c + 1]) for loss, c in zip(self.losses, self.columns, strict=True))
        return sum(loss(emb[chunks[c]], labels[chunks[c], c:c + 1])
                   for loss, c in zip(self.losses, self.columns, strict=True))


class ChunkedCSL(torch.nn.Module):
    """A CSL-form loss on three-chunk batches: level ``l``'s term (fine positives, level-``l`` negatives) on chunk
    ``l`` only, summed over levels; on the whole batch without ``chunks``."""

    def __init__(self, loss: torch.nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, emb: torch.Tensor, labels: torch.Tensor,
                chunks: list[torch.Tensor] | None = None) -> torch.Tensor:
        if chunks is None:
            return self.loss(emb, labels)
        total = emb.new_zeros(())
        for s, rows in enumerate(chunks):
            t = self.loss.terms(emb[rows], labels[rows])
            if t is not None:  # CSL pairs mode: no anchor of the chunk has an in-batch positive
                total = total + t[s]
        return total


def build_loss(family: str, variant: str, train_labels: torch.Tensor, dim: int, gamma: float) -> torch.nn.Module:
    scales = [0] if variant == "fine" else [0, 1, 2]
    if variant == "csl":
        if family == "proxy":
            return ChunkedCSL(CSLLoss.from_labels(train_labels, embedding_size=dim, gamma=gamma, margins=MARGINS))
        if family == "panchor":
            return ChunkedCSL(GradedProxyAnchorLoss(train_labels, dim, gamma, tuple(_pa_margin(s) for s in range(3))))
        return ChunkedCSL(CSLLoss(None, embedding_size=dim, gamma=gamma, margins=MARGINS, mode="pairs"))
    losses: list[torch.nn.Module | None] = []
    for s in scales:
        if family == "proxy":
            ids = train_labels[:, s].unique().unsqueeze(1)
            losses.append(CSLLoss(ids, embedding_size=dim, gamma=gamma, margins=(MARGINS[s],)))
        elif family == "pairs":
            losses.append(CSLLoss(None, embedding_size=dim, gamma=gamma, margins=(MARGINS[s],), mode="pairs"))
        elif family == "triplet":
            losses.append(TripletMarginLoss(margin=MARGINS[s] / 2.5))  # 0.1 / 0.14 / 0.18
        elif family == "ms":
            losses.append(MultiSimilarityLoss())
        elif family == "panchor":
            losses.append(ProxyAnchorLoss(int(train_labels[:, s].max()) + 1, dim, margin=_pa_margin(s), alpha=gamma))
        else:
            raise SystemExit(f"unknown family {family!r}; expected one of {sorted(FAMILIES)}")
    return PerScaleSum(losses, scales)


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, digests: list[str]) -> dict:
    model.eval()
    with torch.no_grad():
        emb = torch.cat([model(images[i:i + 512]) for i in range(0, len(images), 512)])
    model.train()
    res = evaluate_all_in_one(emb, labels, DyMLProtocol("all_in_one", "detect"), scale_names=list(SCALES),
                              digests=digests)
    return {s: {m: float(res[s][m]) for m in ("asi", "map", "recall@1")} for s in (*SCALES, "mean")}


def run_one(family: str, variant: str, seed: int, c: float, a: argparse.Namespace, data: dict) -> dict[str, Any]:
    train, (vx, vl, vd), (tx, tl, td) = data["train"], data["val"], data["test"]
    torch.manual_seed(seed)
    model = build_embedder(backbone="simple_cnn", embedding_dim=a.dim, pooling="max", normalize=True,
                           backbone_kwargs={"width": a.width, "depth": a.depth})
    loss = build_loss(family, variant, train.labels, a.dim, a.gamma)
    groups = [{"params": list(model.parameters()), "lr": a.lr}]
    if list(loss.parameters()):
        groups.append({"params": list(loss.parameters()), "lr": a.lr * 10})
    opt = torch.optim.Adam(groups, weight_decay=1e-4)
    sampler: MPerClassSampler | ThreeScaleSampler
    chunks: list[torch.Tensor] | None = None
    if a.sampler == "pxk":
        sampler = MPerClassSampler(train.labels, m=a.k, batch_size=a.p * a.k, scale=0, seed=seed,
                                   iterations_per_epoch=a.steps)
    else:  # same images per step: P x K = (P / 3 items) x 3 scales x K
        sampler = ThreeScaleSampler(train.labels, k=a.k, items_per_batch=a.p // 3, seed=seed,
                                    iterations_per_epoch=a.steps)
        chunks = sampler.chunk_layout()
    sampler.set_epoch(0)
    images, labels = data["train_x"], train.labels
    gen = torch.Generator().manual_seed(seed)
    curve: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    step = 0
    for idx in sampler:
        idx_t = torch.as_tensor(idx)
        x = images[idx_t]
        x = torch.where(torch.rand(len(idx), 1, 1, 1, generator=gen) < 0.5, x, x.flip(3))
        value = loss(model(x), labels[idx_t]) if chunks is None else loss(model(x), labels[idx_t], chunks)
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        step += 1
        if step % a.eval_every == 0 or step == a.steps:
            v, t = evaluate(model, vx, vl, vd), evaluate(model, tx, tl, td)
            curve.append({"step": step, "val": v["mean"]["asi"], "val_fine": v["fine"]["asi"],
                          "test": t["mean"]["asi"], "test_fine": t["fine"]["asi"], "val_result": v, "result": t,
                          "loss": float(value.detach())})
        if step >= a.steps:
            break
    best = max(curve, key=lambda p: p["val"])
    return {"family": family, "variant": variant, "sampler": a.sampler, "seed": seed, "coherence": c,
            "best_step": best["step"],
            "val": best["val_result"], "test": best["result"], "train_s": round(time.perf_counter() - t0, 1),
            "curve": [{k: p[k] for k in ("step", "val", "val_fine", "test", "test_fine", "loss")} for p in curve]}


def _get(runs: list[dict], family: str, variant: str, c: float, seeds: list[int], scale: str) -> list[float]:
    by_seed = {r["seed"]: r["test"][scale]["asi"] for r in runs
               if r["family"] == family and r["variant"] == variant and r["coherence"] == c}
    return [by_seed[s] for s in seeds]


def _within(ci: dict[str, Any], bound: float) -> bool:
    """The whole interval lies within ``±bound``: no effect of that size (an equivalence test)."""
    return -bound < ci["lo"] and ci["hi"] < bound


NONINFERIORITY_PP = 1.0
"""δ of the "CSL pays no such penalty" verdict, in fine-ASI percentage points. The claim is non-inferiority of CSL to
the fine-only objective at the lowest coherence: ``reproduced (non-inferior within δ)`` needs the 95 % interval of
``csl - fine`` to lie above ``-δ``. δ was fixed *after* the first results had been seen (the earlier rule counted
any interval containing 0 as "no penalty"); 1 pp is the equivalence bound the other two DyML verdicts already use
("no effect" = the interval within ±1 pp) and a sixth to a tenth of the 6–11 pp penalty the summed objective shows
against fine-only in these grids."""

NO_PENALTY_VERDICTS = ("reproduced (non-inferior within δ)", "not reproduced (penalty)", "inconclusive")


def no_penalty_verdict(ci: dict[str, Any], delta_pp: float = NONINFERIORITY_PP) -> str:
    """Non-inferiority verdict on ``ci`` (a paired ``csl - fine`` interval, ASI as a fraction): ``reproduced
    (non-inferior within δ)`` if its lower bound is above ``-δ``; ``not reproduced (penalty)`` if it lies wholly below
    0 and reaches below ``-δ`` (a significant loss that cannot be said to be smaller than δ); otherwise (an interval
    that contains 0 but reaches below ``-δ``, or is undefined) ``inconclusive``."""
    if math.isnan(ci["lo"]):
        return NO_PENALTY_VERDICTS[2]
    delta = delta_pp / 100
    if ci["lo"] > -delta:
        return NO_PENALTY_VERDICTS[0]
    if ci["hi"] < 0:
        return NO_PENALTY_VERDICTS[1]
    return NO_PENALTY_VERDICTS[2]


def summed_penalty_rule(cis: Intervals) -> str:
    """"summed falls below fine-only on the fine scale as coherence drops": ``reproduced`` when the change of the
    (summed − fine) gap from the highest to the lowest coherence (``change_of_gap``) and the gap at the lowest
    (``gap_at_lowest``) both lie below 0; ``not reproduced`` when either lies above 0 or the change lies within ±1 pp
    (no change of that size); otherwise ``inconclusive``."""
    drop, at_lo = cis["change_of_gap"], cis["gap_at_lowest"]
    if sign(drop) < 0 and sign(at_lo) < 0:
        return "reproduced"
    if sign(drop) > 0 or sign(at_lo) > 0 or _within(drop, 0.01):
        return "not reproduced"
    return "inconclusive"


def no_penalty_rule(cis: Intervals) -> str:
    """"CSL pays no such penalty": :func:`no_penalty_verdict` on ``csl_minus_fine_at_lowest``."""
    return no_penalty_verdict(cis["csl_minus_fine_at_lowest"])


def own_baseline_rule(cis: Intervals) -> str:
    """"CSL improves its own fine-level baseline (mean ASI)": ``reproduced`` when csl − fine lies above 0 at every
    coherence (one interval each); ``not reproduced`` when it lies below 0 at some coherence or within ±1 pp at all;
    otherwise ``inconclusive``."""
    own = list(cis.values())
    if all(sign(x) > 0 for x in own):
        return "reproduced"
    if any(sign(x) < 0 for x in own) or all(_within(x, 0.01) for x in own):
        return "not reproduced"
    return "inconclusive"


def half_width(ci: dict[str, Any]) -> float:
    """Half the width of a paired interval (the fraction's units): about the smallest true difference that this many
    seeds at this noise level would show as significant (roughly half the time)."""
    return (ci["hi"] - ci["lo"]) / 2


def _detectable(*cis: dict[str, Any]) -> str:
    widths = [100 * half_width(ci) for ci in cis if not math.isnan(ci["lo"])]
    if not widths:
        return ""
    span = f"{min(widths):.1f}" if len(widths) == 1 else f"{min(widths):.1f}–{max(widths):.1f}"
    return (f" Interval half-width ±{span} pp: a true difference smaller than about that cannot be told from zero "
            f"with these seeds.")


def _minus(x: list[float], y: list[float]) -> list[float]:
    return [a - b for a, b in zip(x, y, strict=True)]


def _by_seed(runs: list[dict], family: str, variant: str, c: float, scale: str) -> dict[int, float]:
    return {r["seed"]: r["test"][scale]["asi"] for r in runs
            if r["family"] == family and r["variant"] == variant and r["coherence"] == c}


def sampler_section(runs: list[dict], compare: list[dict], a: argparse.Namespace) -> tuple[list[str], dict]:
    """Paired ``this sampler - the other`` test ASI per family / objective / coherence, over the seeds both files
    hold (a seed fixes the data and the initial network, so only the batches differ)."""
    other = sorted({r.get("sampler", "pxk") for r in compare})
    name = f"{a.sampler} − {'/'.join(other)}"
    lines = [f"\n## Sampler: {name} (paired by seed: same data, same initial network; test ASI, percentage "
             "points, 95 % t-interval)\n",
             "| family | objective | coherence | seeds | fine ASI | mean ASI |", "|---|---|---|---|---|---|"]
    out: dict[str, Any] = {}
    for fam in a.families:
        for var in FAMILIES[fam]:
            for c in a.coherence:
                mine_f, theirs_f = _by_seed(runs, fam, var, c, "fine"), _by_seed(compare, fam, var, c, "fine")
                seeds = sorted(set(mine_f) & set(theirs_f))
                if len(seeds) < 2:
                    continue
                mine_m, theirs_m = _by_seed(runs, fam, var, c, "mean"), _by_seed(compare, fam, var, c, "mean")
                row = {"fine": paired_ci([theirs_f[s] for s in seeds], [mine_f[s] for s in seeds]),
                       "mean": paired_ci([theirs_m[s] for s in seeds], [mine_m[s] for s in seeds])}
                out[f"{fam}/{var}@{c:g}"] = row
                lines.append(f"| {fam} | {var} | {c:g} | {len(seeds)} | {fmt_ci(row['fine'])} | "
                             f"{fmt_ci(row['mean'])} |")
    if not out:
        return [f"\n## Sampler: {name}\n", "No family / objective / coherence has at least two seeds in both "
                "files."], {}
    ups = sum(sign(r["mean"]) > 0 for r in out.values())
    downs = sum(sign(r["mean"]) < 0 for r in out.values())
    lines.append(f"\nMean ASI: {a.sampler} is significantly above the other sampler in {ups}, below in {downs} and "
                 f"level within noise in {len(out) - ups - downs} of the {len(out)} cells.")
    return lines, {"difference": name, "cells": out, "above": ups, "below": downs}


def analyse(runs: list[dict], a: argparse.Namespace, compare: list[dict] | None = None,
            versus: Path | None = None) -> tuple[str, dict[str, Any]]:
    seeds, cs = a.seeds, a.coherence
    lines: list[str] = []
    verdicts: dict[str, Any] = {}
    lines.append("## Test ASI at the val-selected step (%, mean ± sd over seeds)\n")
    lines.append("| family | objective | coherence | fine ASI | middle ASI | coarse ASI | mean ASI | mean R@1 | "
                 "val-best step |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    for fam in a.families:
        for var in FAMILIES[fam]:
            for c in cs:
                rs = [r for r in runs if r["family"] == fam and r["variant"] == var and r["coherence"] == c]
                if not rs:
                    continue
                cells = [mean_sd([r["test"][s]["asi"] for r in rs]) for s in (*SCALES, "mean")]
                cells.append(mean_sd([r["test"]["mean"]["recall@1"] for r in rs]))
                steps = statistics.median(r["best_step"] for r in rs)
                lines.append(f"| {fam} | {var} | {c:g} | " + " | ".join(cells) + f" | {steps:g} |")
    lines.append("\n## Paired differences (test ASI, percentage points, 95 % t-interval over "
                 f"{len(seeds)} seeds)\n")
    lines.append("| family | coherence | summed − fine (fine ASI) | csl − fine (fine ASI) | csl − summed (fine ASI) "
                 "| summed − fine (mean ASI) | csl − fine (mean ASI) |")
    lines.append("|---|---|---|---|---|---|---|")
    cis: dict[str, Any] = {}
    for fam in a.families:
        has_csl = "csl" in FAMILIES[fam]
        for c in cs:
            fine_f, sum_f = (_get(runs, fam, v, c, seeds, "fine") for v in ("fine", "summed"))
            fine_m, sum_m = (_get(runs, fam, v, c, seeds, "mean") for v in ("fine", "summed"))
            row = {"summed-fine/fine": paired_ci(fine_f, sum_f), "summed-fine/mean": paired_ci(fine_m, sum_m)}
            if has_csl:
                csl_f, csl_m = _get(runs, fam, "csl", c, seeds, "fine"), _get(runs, fam, "csl", c, seeds, "mean")
                row |= {"csl-fine/fine": paired_ci(fine_f, csl_f), "csl-summed/fine": paired_ci(sum_f, csl_f),
                        "csl-fine/mean": paired_ci(fine_m, csl_m)}
            cis[f"{fam}@{c:g}"] = row
            cell = [fmt_ci(row[k]) if k in row else "—" for k in
                    ("summed-fine/fine", "csl-fine/fine", "csl-summed/fine", "summed-fine/mean", "csl-fine/mean")]
            lines.append(f"| {fam} | {c:g} | " + " | ".join(cell) + " |")
    hi, lo = max(cs), min(cs)
    lines.append("\n## Verdicts\n")
    # each verdict: its Claim (rule + 95 % intervals), its bullet, and how its adjusted intervals are shown
    entries: list[tuple[Claim, str, Callable[[Intervals], str]]] = []
    for fam in a.families:
        # claim 1: the summed loss falls below single-scale (fine ASI) as coherence drops
        d_hi = _minus(_get(runs, fam, "summed", hi, seeds, "fine"), _get(runs, fam, "fine", hi, seeds, "fine"))
        d_lo = _minus(_get(runs, fam, "summed", lo, seeds, "fine"), _get(runs, fam, "fine", lo, seeds, "fine"))
        drop = paired_ci(d_hi, d_lo)
        at_lo = cis[f"{fam}@{lo:g}"]["summed-fine/fine"]
        claim = Claim(f"{fam}/summed-penalty", summed_penalty_rule, {"change_of_gap": drop, "gap_at_lowest": at_lo})
        v1 = claim.verdict()
        verdicts[claim.key] = {"verdict": v1, "change_of_gap": drop, "gap_at_lowest": at_lo}
        entries.append((claim, f"* **{fam}: summed falls below fine-only on the fine scale as coherence drops** — "
                        f"**{v1}**. (summed − fine) fine ASI at c={lo:g} minus at c={hi:g}: {fmt_ci(drop)} pp; "
                        f"at c={lo:g}: {fmt_ci(at_lo)} pp." + _detectable(drop),
                        lambda x: f"c={lo:g} minus c={hi:g} {fmt_ci(x['change_of_gap'])} pp; at "
                        f"c={lo:g} {fmt_ci(x['gap_at_lowest'])} pp."))
        if "csl" not in FAMILIES[fam]:
            continue
        e_lo = cis[f"{fam}@{lo:g}"]["csl-fine/fine"]
        vs_sum = cis[f"{fam}@{lo:g}"]["csl-summed/fine"]
        claim = Claim(f"{fam}/csl-no-penalty", no_penalty_rule, {"csl_minus_fine_at_lowest": e_lo})
        v2 = claim.verdict()
        verdicts[claim.key] = {"verdict": v2, "delta_pp": NONINFERIORITY_PP,
                               "csl_minus_fine_at_lowest": e_lo, "csl_minus_summed_at_lowest": vs_sum}
        entries.append((claim, f"* **{fam}: CSL pays no such penalty** (non-inferior to fine-only within "
                        f"δ = {NONINFERIORITY_PP:g} pp) — **{v2}**. At c={lo:g}, fine ASI csl − fine "
                        f"{fmt_ci(e_lo)} pp (lower bound vs −δ), csl − summed {fmt_ci(vs_sum)} pp (reported, not "
                        f"part of the rule).",
                        lambda x: f"csl − fine at c={lo:g} {fmt_ci(x['csl_minus_fine_at_lowest'])} pp."))
        own = {f"{c:g}": cis[f"{fam}@{c:g}"]["csl-fine/mean"] for c in cs}
        claim = Claim(f"{fam}/csl-beats-own-baseline", own_baseline_rule, own)
        v3 = claim.verdict()
        verdicts[claim.key] = {"verdict": v3, "mean_asi_gain": own}
        entries.append((claim, f"* **{fam}: CSL improves its own fine-level baseline (mean ASI)** — **{v3}**. "
                        "csl − fine: " + ", ".join(f"c={c} {fmt_ci(x)}" for c, x in own.items()) + " pp."
                        + (_detectable(*own.values()) if v3 == "inconclusive" else ""),
                        lambda x: "csl − fine: " + ", ".join(f"c={c} {fmt_ci(ci)}" for c, ci in x.items()) + " pp."))
    if entries:
        claims = [c for c, _, _ in entries]
        fw = bonferroni(claims)
        summary, verdicts["family_wise"] = family_summary(claims, fw)
        lines.append(summary)
        for claim, bullet, show in entries:
            lines.append(bullet)
            lines.append(family_line(fw[claim.key], claim.verdict(), show(fw[claim.key]["intervals"])))
            verdicts[claim.key]["family_wise"] = family_record(fw[claim.key])
    if compare:
        extra, verdicts["sampler"] = sampler_section(runs, compare, a)
        lines.extend(extra)
    if versus:
        extra, verdicts["versus"] = versus_section(verdicts, versus)
        lines.extend(extra)
    extra, verdicts["convergence"] = convergence_section(runs, a)
    lines.extend(extra)
    for c in sorted(cs, reverse=True):
        lines.append(f"\n## Curves (val mean ASI, %, mean over seeds; every objective, coherence {c:g})\n")
        curves = {f"{r_f} {r_v}": mean_curve([r for r in runs if r["family"] == r_f and r["variant"] == r_v
                                              and r["coherence"] == c])
                  for r_f in a.families for r_v in FAMILIES[r_f]}
        lines.append(curve_table({k: v for k, v in curves.items() if v}))
    return "\n".join(lines), verdicts


def convergence_section(runs: list[dict], a: argparse.Namespace) -> tuple[list[str], dict[str, Any]]:
    """Per family / objective / coherence: how much the last quarter of the step budget adds to the val-selected
    model, i.e. the mean over seeds of (best val mean ASI at steps <= budget) - (best at steps <= 3/4 budget)."""
    quarter = 0.75 * a.steps
    lines = [f"\n## Convergence (val mean ASI, pp, mean over seeds: best over all {a.steps} steps minus best over "
             f"the first {quarter:g}; converged if below {PLATEAU_PP:g} pp)\n",
             "| family | objective | coherence | best val mean ASI | gain in the last quarter | converged |",
             "|---|---|---|---|---|---|"]
    out: dict[str, Any] = {}
    for fam in a.families:
        for var in FAMILIES[fam]:
            for c in a.coherence:
                rs = [r for r in runs if r["family"] == fam and r["variant"] == var and r["coherence"] == c]
                res = last_quarter_gain([[(p["step"], p["val"]) for p in r["curve"]] for r in rs], a.steps)
                if res is None:
                    continue
                best, gain = res[0], 100 * res[1]
                out[f"{fam}/{var}@{c:g}"] = {"best_val": best, "gain_pp": gain, "converged": gain < PLATEAU_PP}
                lines.append(f"| {fam} | {var} | {c:g} | {100 * best:.1f} | {gain:.2f} | "
                             f"{'yes' if gain < PLATEAU_PP else '**no**'} |")
    done = sum(v["converged"] for v in out.values())
    lines.append(f"\n{done} of {len(out)} cells meet the criterion.")
    return lines, {"criterion_pp": PLATEAU_PP, "converged": done, "cells": out}


def versus_section(verdicts: dict[str, Any], versus: Path) -> tuple[list[str], dict[str, Any]]:
    """Each verdict here next to the same verdict in another results file (e.g. the same grid at another budget)."""
    theirs = json.loads(versus.read_text(encoding="utf-8"))
    other = theirs.get("verdicts", {})
    steps = theirs.get("args", {}).get("steps", "?")
    lines = [f"\n## Verdicts here vs `{versus.name}` ({steps} steps)\n", "| claim | here | there | changed |",
             "|---|---|---|---|"]
    out: dict[str, Any] = {}
    for key, v in verdicts.items():
        if not isinstance(v, dict) or "verdict" not in v:
            continue
        there = other.get(key, {}).get("verdict", "—")
        out[key] = {"here": v["verdict"], "there": there, "changed": there != v["verdict"]}
        lines.append(f"| {key} | {v['verdict']} | {there} | {'**yes**' if out[key]['changed'] else 'no'} |")
    changed = sum(v["changed"] for v in out.values())
    lines.append(f"\n{changed} of {len(out)} verdicts differ.")
    return lines, {"file": versus.name, "steps": steps, "changed": changed, "cells": out}


_FAMILY_TEXT = (
    "Objectives per family: `fine` = the family's loss on fine labels only; `summed` = the same loss at every scale "
    "(that scale's labels, margin and, for proxy losses, its own proxies), summed; `csl` = the CSL form (one proxy "
    "per fine class or in-batch samples, fine-level positives, negatives graded by scale, margins growing with the "
    "scale). `proxy` = CSL's proxy form (its `fine` is CSL with weights (1, 0, 0), which is also CosFace at scale "
    "gamma and margin m_0); `pairs` = CSL's in-batch form; `triplet`, `ms` (Multi-Similarity): no CSL form; "
    "`panchor` = Proxy Anchor (margins d_l = 0.1 / 0.14 / 0.18, alpha = gamma) whose `csl` form (ours: no published "
    "one) keeps Proxy Anchor's positive term on fine proxies and adds one negative term per scale (negatives of a "
    "proxy at scale l: the samples whose scale-l label differs from the proxy's; margin d_l).")
OBJECTIVES = {
    "pxk": _FAMILY_TEXT + " Sampler: P x K fine-level batches; every term sees the whole batch.",
    "three-chunk": _FAMILY_TEXT + " Sampler: DyML's three-scale sampler (every item holds K images of a fine, K of a "
    "middle and K of a coarse class; P / 3 items per batch, so the same number of images per step as P x K). Every "
    "objective embeds the whole batch (same BatchNorm statistics); each term sees only its own chunk with its own "
    "labels (the paper's `negatives: chunk`): `fine` = the fine term on the fine chunk (a third of the batch), "
    "`summed` = scale l's term on chunk l, `csl` = CSL's level-l term (fine positives, level-l negatives) on chunk "
    "l, summed over l.",
}


def previous_invocations(path: Path) -> list[dict[str, Any]]:
    """The invocations recorded in an earlier results ``.json`` (``[]`` if none or not recorded)."""
    if not path.is_file():
        return []
    prev = json.loads(path.read_text(encoding="utf-8"))
    if "invocations" in prev:
        return list(prev["invocations"])
    if "new_runs" in prev:  # written before the history was kept: its own invocation only
        return [{"command": prev["command"], "wall_s": prev["wall_s"], "new_runs": prev["new_runs"]}]
    return []


_SETUP = ("sampler", "steps", "eval_every", "image_size", "width", "depth", "dim", "train_per_shape",
          "images_per_class", "p", "k", "lr", "gamma")


def _key(r: dict[str, Any]) -> tuple[str, str, int, float]:
    return r["family"], r["variant"], r["seed"], r["coherence"]


def _check_setup(path: Path, a: argparse.Namespace, finished: bool) -> None:
    """Runs kept or merged from ``path`` must come from the same training setup as this invocation."""
    if not path.is_file():
        if finished:
            raise SystemExit(f"{path}: no such results file")
        return
    args = json.loads(path.read_text(encoding="utf-8")).get("args")
    if args is None:
        if finished:
            raise SystemExit(f"{path}: not a finished results file (no 'args'; its invocation is still running or "
                             f"was interrupted: finish it with --resume first)")
        return
    for name in _SETUP:
        if name in args and args[name] != getattr(a, name):
            raise SystemExit(f"{path}: was run with --{name.replace('_', '-')} {args[name]}, this invocation has "
                             f"{getattr(a, name)}; runs of different setups cannot be combined")


def render_only(json_path: Path, overwrite: bool = False) -> int:
    """Re-derive a finished results file's tables and verdicts from its stored runs (no training). The ``.md`` keeps
    its original header (command, timings, setup) with one added line saying it was re-rendered; the ``.json`` keeps
    its runs, arguments and invocation history and gets the new ``verdicts``."""
    data = read_finished_results(json_path)
    small = bool(data["args"].get("small"))
    check_results(json_path.with_suffix(".md"), "claim_dyml.py", small, overwrite)
    a = argparse.Namespace(**({"compare": None, "versus": None, "sampler": "pxk"} | data["args"]))
    compare_path = results_sibling(a.compare, json_path, "compare")
    versus_path = results_sibling(a.versus, json_path, "versus")
    compare = ([r for r in load_runs(compare_path) if r.get("sampler", "pxk") != a.sampler]
               if compare_path is not None else [])
    body, verdicts = analyse(data["runs"], a, compare, versus_path)
    lines, _ = stored_header(json_path)
    head = original_header(lines)
    note = rerender_note("claim_dyml.py", json_path)
    write_results(json_path.with_suffix(".md"), f"{head}\n\n{note}\n\n{body}", data | {"verdicts": verdicts},
                  "claim_dyml.py", small)
    print(body)
    return 0


# --small's defaults (parse_with_small: an option given explicitly keeps its value)
SMALL = {"seeds": [0, 1], "steps": 6, "eval_every": 3, "image_size": 8, "width": 4, "depth": 2, "dim": 8,
         "train_per_shape": 2, "images_per_class": 3, "p": 6, "k": 2, "coherence": [1.0, 0.0]}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (``--small``'s preset applied, explicit options kept; its checks as one-line errors)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--coherence", type=float, nargs="+", default=[1.0, 0.5, 0.0])
    ap.add_argument("--families", nargs="+", default=["proxy", "pairs", "triplet"], choices=sorted(FAMILIES))
    ap.add_argument("--sampler", default="pxk", choices=SAMPLERS,
                    help="pxk: P x K fine-level batches; three-chunk: DyML's three-scale sampler (P / 3 items)")
    ap.add_argument("--compare", type=Path, default=None, metavar="JSON",
                    help="results .json of the other sampler (same setup and seeds): adds paired sampler differences")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--eval-every", type=int, default=50)
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--width", type=int, default=8, help="simple_cnn base width")
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--train-per-shape", type=int, default=8, help="fine training classes per shape")
    ap.add_argument("--images-per-class", type=int, default=8)
    ap.add_argument("--p", type=int, default=12, help="classes per batch (three-chunk: P / 3 items; P divisible by 3)")
    ap.add_argument("--k", type=int, default=4, help="images per class in a batch")
    ap.add_argument("--lr", type=float, default=3e-3, help="network lr (learnable proxies: 10x)")
    ap.add_argument("--gamma", type=float, default=32.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--small", action="store_true", help=small_help(SMALL))
    add_overwrite_option(ap)
    ap.add_argument("--resume", action="store_true", help="keep the runs already in the --out .json")
    ap.add_argument("--merge", type=Path, nargs="+", default=[], metavar="JSON",
                    help="add the runs and invocation history of other finished results .json files of the same "
                         "sampler and setup (e.g. invocations that ran disjoint --seeds in parallel)")
    ap.add_argument("--versus", type=Path, default=None, metavar="JSON",
                    help="a results .json of the same grid (e.g. at another --steps): list which verdicts differ")
    ap.add_argument("--out", type=Path, default=None, help="Markdown results; the .json goes next to it")
    ap.add_argument("--render-only", type=Path, default=None, metavar="JSON",
                    help="re-derive the analysis of a finished results .json from its stored runs and rewrite its "
                         ".md (the original header kept) and the .json's verdicts; trains nothing, runs unchanged")
    a = parse_with_small(ap, argv, SMALL)
    if a.render_only is None and a.out is None:
        ap.error("--out is required (unless --render-only)")
    if a.render_only is None and a.sampler == "three-chunk" and (a.p % 3 or a.p < 3):
        ap.error(f"--p {a.p}: the three-chunk sampler needs P divisible by 3 (P / 3 items of 3 x K images)")
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.render_only is not None:
        return render_only(a.render_only, a.overwrite)
    check_results(a.out, "claim_dyml.py", a.small, a.overwrite)
    torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    runs = load_runs(a.out.with_suffix(".json")) if a.resume else []
    other = {r.get("sampler", "pxk") for r in runs} - {a.sampler}
    if other:
        raise SystemExit(f"{a.out.with_suffix('.json')} holds {sorted(other)} runs; --resume needs runs of "
                         f"--sampler {a.sampler} only (one results file per sampler, compare with --compare)")
    history = previous_invocations(a.out.with_suffix(".json")) if a.resume else []
    if a.resume:
        _check_setup(a.out.with_suffix(".json"), a, finished=False)
    for path in a.merge:
        _check_setup(path, a, finished=True)
        theirs = load_runs(path)
        if {r.get("sampler", "pxk") for r in theirs} - {a.sampler}:
            raise SystemExit(f"{path}: holds runs of another sampler than --sampler {a.sampler}")
        have = {_key(r) for r in runs}
        twice = sorted({_key(r) for r in theirs} & have)
        if twice:
            raise SystemExit(f"{path}: run {twice[0]} (family, objective, seed, coherence) is already in the runs "
                             f"being merged; merge files of disjoint seeds or coherences")
        runs.extend(theirs)
        history.extend(previous_invocations(path))
    kept = len(runs)
    per_shape = {"train": a.train_per_shape, "val": max(1, a.train_per_shape // 3),
                 "test": max(1, a.train_per_shape // 2)}
    for seed in a.seeds:
        for c in a.coherence:
            todo = [(f, v) for f in a.families for v in FAMILIES[f]
                    if not any(r["family"] == f and r["variant"] == v and r["seed"] == seed and r["coherence"] == c
                               for r in runs)]
            if not todo:
                continue
            kw = {"seed": seed, "image_size": a.image_size, "images_per_class": a.images_per_class,
                  "fine_per_shape": per_shape, "coarse_coherence": c}
            train = SyntheticHierarchy("train", **kw)
            data: dict[str, Any] = {"train": train, "train_x": train.tensors()}
            for split in ("val", "test"):
                ds = SyntheticHierarchy(split, **kw)
                data[split] = (ds.tensors(), ds.labels, image_digests(ds))
            for fam, var in todo:
                r = run_one(fam, var, seed, c, a, data)
                runs.append(r)
                print(f"seed {seed} c={c:g} {fam:<8} {var:<7} test fine ASI {r['test']['fine']['asi']:.3f} "
                      f"mean ASI {r['test']['mean']['asi']:.3f} (step {r['best_step']}, {r['train_s']}s)",
                      flush=True)
                write_results(a.out, "(in progress)\n", {"runs": runs}, "claim_dyml.py", a.small)
    wall = time.perf_counter() - t_start
    compare = [r for r in load_runs(a.compare) if r.get("sampler", "pxk") != a.sampler] if a.compare else []
    body, verdicts = analyse(runs, a, compare, a.versus)
    cmd = command_line("claim_dyml.py", argv)
    runs_s = sum(r["train_s"] for r in runs)
    batches = (f"P x K = {a.p} x {a.k} fine-level batches" if a.sampler == "pxk" else
               f"DyML three-chunk batches of {a.p // 3} items x 3 scales x {a.k} images (each scale's term on its "
               f"own chunk)")
    history.append({"command": cmd, "wall_s": round(wall, 1), "new_runs": len(runs) - kept})
    unrecorded = len(runs) - sum(h["new_runs"] for h in history)
    calls = "; ".join(f"{h['new_runs']} runs in {h['wall_s'] / 60:.1f} min"
                      + ("" if h["command"] == cmd else f" by `{h['command']}`") for h in history if h["new_runs"])
    if not history[-1]["new_runs"]:
        calls += ("; " if calls else "") + "this invocation trained none (it rendered the runs kept in the .json)"
    head = (f"# DyML claim on the controlled synthetic benchmark ({a.sampler} sampler)\n\nCommand: `{cmd}`  \n"
            f"Run time: the {len(runs)} runs took {runs_s / 60:.1f} min together (each run's own training + "
            f"evaluation time, summed: what one process needs to reproduce the file).  \nWall time per invocation "
            f"(`--resume` keeps the runs already in the file and trains the missing ones; the command above unless "
            f"named): {calls}"
            + (f"; {unrecorded} runs from earlier invocations whose wall time was not recorded" if unrecorded else "")
            + f".  \n{run_conditions().capitalize()}, shared machine: {environment()}.\n\n"
            f"{OBJECTIVES[a.sampler]}\n\nSetup: SyntheticHierarchy {a.image_size}x{a.image_size}, "
            f"{a.train_per_shape} train / {per_shape['val']} val / {per_shape['test']} test fine classes per shape, "
            f"{a.images_per_class} images per class, coarse_coherence {a.coherence}; simple_cnn width {a.width} "
            f"depth {a.depth}, max pooling, {a.dim}-d L2-normalised; Adam lr {a.lr:g} (proxies {10 * a.lr:g}), "
            f"weight decay 1e-4, {a.steps} steps of {batches}, flips; margins "
            f"{MARGINS}, gamma {a.gamma:g}; seeds {a.seeds} (each redraws data, init and batches). Val-selected "
            f"checkpoint (best val mean ASI, evaluated every {a.eval_every} steps), reported on test.\n")
    write_results(a.out, head + "\n" + body, {
        "command": cmd, "wall_s": round(wall, 1), "runs_s": round(runs_s, 1), "new_runs": len(runs) - kept,
        "invocations": history,
        "args": vars(a) | {"out": str(a.out), "compare": None if a.compare is None else str(a.compare),
                           "merge": [str(m) for m in a.merge], "versus": None if a.versus is None else str(a.versus)},
        "verdicts": verdicts, "runs": runs}, "claim_dyml.py", a.small)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
