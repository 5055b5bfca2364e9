"""Shared helpers of the claim benchmarks (``benchmarks/claim_*.py``): paired differences with confidence intervals
(95 % by default), verdicts with their family-wise (Bonferroni) counterparts, curves and atomic writing of the
Markdown + JSON results.

A *paired difference* compares two methods run on the same seed (same data draw, same initial network, same batch
order where the methods allow it): ``d_i = metric(B, seed i) - metric(A, seed i)``. Its confidence interval at level
``L`` is the Student-t interval ``mean(d) ± t_{(1+L)/2, n-1} · sd(d) / sqrt(n)`` over the ``n`` seeds.

*Family-wise verdicts* (:func:`bonferroni`): a report states ``m`` verdicts, each at the nominal 95 % level; the
family-wise verdict of each applies the same rule to its intervals recomputed at the Bonferroni level
``1 - 0.05 / (m · k)`` (``k``: the number of intervals that verdict's rule reads), so that the chance of *any* wrong
call among the ``m`` is at most 5 %, whatever the dependence between the intervals (docs/benchmarks.md, "Claim
benchmarks: verdicts and multiple comparisons").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from result_files import Legacy, check_replace, parse_json, run_kind, write_json, write_md
from result_files import command_line as command_line  # the claim scripts import it from here

# two-sided 95 % Student-t quantiles t_{0.975, df} for df = 1..30, as tables print them (3 decimals: scipy's values
# rounded); the stored results (at most 10 seeds) were computed with these
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (``df >= 1``): the table's value for
    ``df <= 30``, scipy's beyond (2.021 at 40, 1.984 at 100, 1.962 at 1000; it was 1.96, the normal quantile, for
    every ``df > 30``, an interval too narrow)."""
    if df < 1:
        raise ValueError(f"need at least 2 paired values for an interval, got df={df}")
    if df <= len(_T975):
        return _T975[df - 1]
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def t_critical(df: int, level: float = 0.95) -> float:
    """The two-sided critical value of Student's t for a confidence ``level`` (``0 < level < 1``): the
    ``(1 + level) / 2`` quantile with ``df`` degrees of freedom. At 95 % it is :func:`t975` (the tabulated values the
    published results were computed with); at any other level scipy's ``t.ppf``."""
    if not 0 < level < 1:
        raise ValueError(f"confidence level must lie strictly between 0 and 1, got {level}")
    if math.isclose(level, 0.95, rel_tol=0, abs_tol=1e-12):
        return t975(df)
    if df < 1:
        raise ValueError(f"need at least 2 paired values for an interval, got df={df}")
    from scipy.stats import t

    return float(t.ppf((1 + level) / 2, df))


def interval(diffs: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Mean and t-interval at ``level`` of per-seed paired differences ``diffs``, with n and the differences (the
    dictionary :func:`paired_ci` returns). With a single difference the interval is undefined (``lo = hi = nan``)."""
    d = [float(x) for x in diffs]
    if not d:
        raise ValueError("an interval needs at least one paired difference, got none")
    n = len(d)
    mean = statistics.fmean(d)
    if n < 2:
        return {"mean": mean, "lo": math.nan, "hi": math.nan, "n": n, "diffs": d}
    half = t_critical(n - 1, level) * statistics.stdev(d) / math.sqrt(n)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "n": n, "diffs": d}


def paired_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> dict[str, Any]:
    """Paired difference ``b - a`` over seeds: mean, t-interval at ``level`` (95 % by default), n and the per-seed
    differences.

    With a single pair the interval is undefined (``lo = hi = nan``)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired values must have the same, non-zero length, got {len(a)} and {len(b)}")
    return interval([float(y) - float(x) for x, y in zip(a, b, strict=True)], level)


def at_level(ci: dict[str, Any], level: float) -> dict[str, Any]:
    """The interval of :func:`paired_ci`'s ``ci`` recomputed at another confidence ``level`` from its per-seed
    differences (same mean and n; at 0.95 the same interval)."""
    return interval(ci["diffs"], level)


def sign(ci: dict[str, Any]) -> int:
    """+1 if the interval lies above 0, -1 below, 0 if it contains 0 (or is undefined)."""
    if math.isnan(ci["lo"]):
        return 0
    return 1 if ci["lo"] > 0 else -1 if ci["hi"] < 0 else 0


INCONCLUSIVE = "inconclusive"  # the call of every verdict rule that makes no claim


def verdict(ci: dict[str, Any]) -> str:
    """A claim's verdict from the interval of its effect (positive = the claim's direction): ``reproduced`` when it
    lies above 0, ``not reproduced`` below, ``inconclusive`` when it contains 0 (or is undefined)."""
    return "reproduced" if sign(ci) > 0 else "not reproduced" if sign(ci) < 0 else INCONCLUSIVE


def one_interval_rule(cis: dict[str, dict[str, Any]]) -> str:
    """The rule of a verdict on one interval (a :class:`Claim` with a single interval): :func:`verdict`."""
    if len(cis) != 1:
        raise ValueError(f"one_interval_rule reads exactly one interval, got {sorted(cis)}")
    return verdict(next(iter(cis.values())))


FAMILY_ALPHA = 0.05
"""The family-wise error rate of :func:`bonferroni`: the chance that any of a report's family-wise calls is wrong."""

Intervals = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class Claim:
    """One verdict of a report, as :func:`bonferroni` needs it: its ``key`` (as in the results' ``verdicts``), the
    ``rule`` that turns its intervals into a verdict (the same function gives the 95 % call), and the 95 %
    ``intervals`` the rule reads (name -> :func:`paired_ci` dictionary, with the per-seed differences)."""

    key: str
    rule: Callable[[Intervals], str]
    intervals: Intervals

    def verdict(self) -> str:
        """The per-verdict call: the rule on the 95 % intervals."""
        return self.rule(self.intervals)


def bonferroni_level(m: int, k: int = 1, alpha: float = FAMILY_ALPHA) -> float:
    """Confidence level of each interval of a verdict that reads ``k`` intervals, in a family of ``m`` verdicts:
    ``1 - alpha / (m · k)`` (each verdict gets ``alpha / m`` of the error budget, shared among its intervals)."""
    if m < 1 or k < 1:
        raise ValueError(f"a Bonferroni family needs m >= 1 verdicts of k >= 1 intervals, got m={m}, k={k}")
    return 1 - alpha / (m * k)


def bonferroni(claims: Sequence[Claim], alpha: float = FAMILY_ALPHA) -> dict[str, dict[str, Any]]:
    """Family-wise verdicts of a report's ``m = len(claims)`` verdicts: each claim's rule applied to its intervals
    recomputed at :func:`bonferroni_level` (``m``, its number of intervals ``k``). If every interval covers its true
    difference, every call is right (a rule's call is a statement about the true differences that its intervals
    imply); a claim's ``k`` intervals miss with a total chance of at most ``k · alpha / (m · k) = alpha / m``, so some
    interval of the report misses with a chance of at most ``alpha``, for any dependence between them. Returns, per
    key, ``verdict`` (family-wise), ``level``, ``m``, ``k`` and the adjusted ``intervals``."""
    keys = [c.key for c in claims]
    if len(set(keys)) != len(keys):
        raise ValueError(f"verdict keys must be unique within a family, got {keys}")
    m = len(claims)
    out: dict[str, dict[str, Any]] = {}
    for c in claims:
        level = bonferroni_level(m, len(c.intervals), alpha)
        adjusted = {name: at_level(ci, level) for name, ci in c.intervals.items()}
        out[c.key] = {"verdict": c.rule(adjusted), "level": level, "m": m, "k": len(c.intervals),
                      "intervals": adjusted}
    return out


def fmt_level(level: float) -> str:
    """``99.55 %`` (two decimals, trailing zeros dropped: ``95 %``)."""
    return f"{100 * level:.2f}".rstrip("0").rstrip(".") + " %"


def family_line(fw: dict[str, Any], pre: str, shown: str) -> str:
    """The family-wise sub-line of one verdict: its call (and the 95 % call ``pre`` when they differ), ``m``, the
    level of its intervals and ``shown`` (the adjusted intervals, formatted by the script)."""
    k = fw["k"]
    each = f"its interval at {fmt_level(fw['level'])}" if k == 1 else \
        f"its {k} intervals at {fmt_level(fw['level'])} each"
    change = "same call" if fw["verdict"] == pre else f"changed from {pre}"
    return f"  * family-wise (Bonferroni, m = {fw['m']}; {each}): **{fw['verdict']}** ({change}) — {shown}"


def family_record(fw: dict[str, Any]) -> dict[str, Any]:
    """One verdict's family-wise entry for the results' ``verdicts`` (the adjusted intervals without the per-seed
    differences, which the 95 % interval beside it holds)."""
    return {"verdict": fw["verdict"], "level": fw["level"], "m": fw["m"], "k": fw["k"],
            "intervals": {name: {k: v for k, v in ci.items() if k != "diffs"} for name, ci in fw["intervals"].items()}}


def family_summary(claims: Sequence[Claim], fw: dict[str, dict[str, Any]], where: str = "under each",
                   alpha: float = FAMILY_ALPHA) -> tuple[str, dict[str, Any]]:
    """The line at the top of a Verdicts section and the record of the family for the results' ``verdicts``: how
    many of the ``m`` verdicts keep their call under the Bonferroni correction, how many of the conclusive ones (not
    ``inconclusive``) stay conclusive, and which change. ``where``: where the family-wise lines stand."""
    m = len(claims)
    pre = {c.key: c.verdict() for c in claims}
    changed = [k for k in pre if fw[k]["verdict"] != pre[k]]
    conclusive = [k for k in pre if pre[k] != INCONCLUSIVE]
    stay = [k for k in conclusive if fw[k]["verdict"] != INCONCLUSIVE]
    record = {"method": "bonferroni", "alpha": alpha, "m": m, "kept": m - len(changed),
              "conclusive_95": len(conclusive), "conclusive_family_wise": len(stay),
              "changed": {k: {"95": pre[k], "family_wise": fw[k]["verdict"]} for k in changed}}
    kept = (f"of the {len(conclusive)} conclusive at 95 %, {len(stay)} remain{'s' if len(stay) == 1 else ''} "
            f"conclusive" if conclusive else "none was conclusive at 95 %")
    line = (f"Family-wise (Bonferroni over the m = {m} verdict{'s' if m > 1 else ''} of this report, α = {alpha:g} "
            f"for all of them together; a verdict whose rule reads k intervals has each at 1 − {alpha:g} / ({m} · k)): "
            f"**{m - len(changed)} of {m} verdict{'s keep their' if m > 1 else ' keeps its'} call**; {kept}."
            + (" Changed: " + "; ".join(f"{k} ({pre[k]} → {fw[k]['verdict']})" for k in changed) + "." if changed
               else "")
            + f" The bold calls are each verdict's own 95 % call, as before; the family-wise line {where} gives its "
            "call under the correction.\n")
    return line, record


def fmt_ci(ci: dict[str, Any], scale: float = 100.0, digits: int = 2) -> str:
    """``+1.23 [+0.40, +2.06]`` (in percentage points by default; ``digits`` decimals)."""
    if math.isnan(ci["lo"]):
        return f"{scale * ci['mean']:+.{digits}f} [n={ci['n']}]"
    return f"{scale * ci['mean']:+.{digits}f} [{scale * ci['lo']:+.{digits}f}, {scale * ci['hi']:+.{digits}f}]"


def mean_sd(values: Sequence[float], scale: float = 100.0) -> str:
    m = statistics.fmean(values)
    if len(values) < 2:
        return f"{scale * m:.1f}"
    return f"{scale * m:.1f} ± {scale * statistics.stdev(values):.1f}"


def curve_table(curves: dict[str, list[tuple[int, float]]], label: str = "step") -> str:
    """Markdown table of metric-vs-step curves (one column per curve, mean over seeds already taken)."""
    steps = sorted({s for c in curves.values() for s, _ in c})
    names = list(curves)
    lines = [f"| {label} | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for s in steps:
        row = []
        for n in names:
            v = dict(curves[n]).get(s)
            row.append("" if v is None else f"{100 * v:.1f}")
        lines.append(f"| {s} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def mean_curve(runs: Sequence[dict[str, Any]], key: str = "curve", metric: str = "val",
               bin_size: int = 1) -> list[tuple[int, float]]:
    """Mean over runs of ``run[key] = [{"step": s, metric: v, ...}, ...]`` at the steps all runs share; with
    ``bin_size`` > 1 a step is first rounded to the nearest multiple of it (for runs whose evaluation steps are
    off by one, e.g. two updates per iteration)."""
    per_step: dict[int, list[float]] = {}
    for r in runs:
        for point in r[key]:
            step = int(round(int(point["step"]) / bin_size) * bin_size)
            per_step.setdefault(step, []).append(float(point[metric]))
    return [(s, statistics.fmean(v)) for s, v in sorted(per_step.items()) if len(v) == len(runs)]


def git_revision(cwd: Path | None = None) -> str:
    """The short git revision of the repository, ``-dirty`` appended when its tracked files have changes (``unknown``
    outside a checkout)."""
    where = str(cwd or REPOSITORY)
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                             cwd=where).stdout.strip()
        if not rev:
            return "unknown"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, check=False, cwd=where).stdout.strip()
    except OSError:
        return "unknown"
    return rev + ("-dirty" if dirty else "")


def environment() -> str:
    """One line: the machine (:func:`machine_info.machine_line`: CPU model, family/model/stepping and ISA level,
    usable CPUs, torch version and threads, load average) and the git revision (``-dirty`` with local changes)."""
    from machine_info import machine_line

    return f"{machine_line()}, git {git_revision()}"


def run_conditions() -> str:
    """``nice <n>, <t> torch thread(s)``, measured in this process (what the results header states)."""
    import torch

    nice = os.getpriority(os.PRIO_PROCESS, 0) if hasattr(os, "getpriority") else "unknown"
    threads = torch.get_num_threads()
    return f"nice {nice}, {threads} torch thread{'' if threads == 1 else 's'}"


def small_help(small: dict[str, Any]) -> str:
    """The ``--help`` text of ``--small`` (:func:`parse_with_small`'s rule, with the preset spelt out)."""
    def value(v: Any) -> str:
        return " ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) if isinstance(v, list) else \
            f"{v:g}" if isinstance(v, float) else str(v)

    preset = ", ".join(f"--{k.replace('_', '-')} {value(v)}" for k, v in small.items())
    return (f"a seconds-long smoke run: changes the defaults to {preset}; an option given explicitly keeps its "
            f"value (--small --seeds 5 6 runs seeds 5 and 6)")


def parse_with_small(ap: argparse.ArgumentParser, argv: Sequence[str] | None,
                     small: dict[str, Any]) -> argparse.Namespace:
    """``ap.parse_args(argv)``, where ``--small`` replaces the *defaults* of the options in ``small`` (dest ->
    value): an option the user gave explicitly wins over the preset (``--small --seeds 5 6`` runs seeds 5 and 6),
    so the namespace, the results header and the recorded ``args`` hold what actually ran. A key of ``small`` that
    is no option of ``ap`` is a programming error (ValueError)."""
    dests = {action.dest for action in ap._actions}
    unknown = sorted(set(small) - dests)
    if unknown:
        raise ValueError(f"--small preset names {unknown}, which are not options of this parser")
    a = ap.parse_args(argv)
    if getattr(a, "small", False):
        ap.set_defaults(**{k: list(v) if isinstance(v, list) else v for k, v in small.items()})
        a = ap.parse_args(argv)
    return a


def claim_legacy(script: str) -> Legacy:
    """Recognises the results of ``script`` written before the markers (:mod:`result_files`): a ``.json`` whose
    ``command`` is ``python benchmarks/<script> ...``, an in-progress ``.json`` (only ``runs``, ``args``,
    ``invocations``), a ``.md`` whose header says ``Command: `python benchmarks/<script>`` or that reads
    ``(in progress)``; its kind is ``small`` when it was run with ``--small``."""
    prefix = f"python benchmarks/{script}"

    def legacy(path: Path, text: str) -> str | None:
        if path.suffix == ".json":
            data = parse_json(text)
            if not isinstance(data, dict):
                return None
            args = data.get("args") if isinstance(data.get("args"), dict) else {}
            command = data.get("command")
            if isinstance(command, str) and command.startswith(prefix):
                return "small" if args.get("small") or " --small" in command else "full"
            if "runs" in data and set(data) <= {"runs", "args", "invocations"}:
                return "small" if args.get("small") else "full"
            return None
        if text.strip() == "(in progress)":
            return "full"
        head = text.split("\n## ", 1)[0]
        if f"Command: `{prefix}" in head:
            command = head.split(f"Command: `{prefix}", 1)[1].split("`", 1)[0]
            return "small" if " --small" in command else "full"
        return None

    return legacy


def results_paths(out: Path) -> list[Path | None]:
    return [Path(out), Path(out).with_suffix(".json")]


def check_results(out: Path, script: str, small: bool, overwrite: bool) -> None:
    """Before a claim run: SystemExit with one line when ``out`` (``.md``) or its ``.json`` may not be replaced
    (:func:`result_files.check_replace`: written by another script or by hand, or a ``--small`` run over a full
    run's results, without ``--overwrite``)."""
    check_replace(results_paths(out), script, run_kind(small), overwrite, claim_legacy(script))


def write_results(out: Path, markdown: str, payload: dict[str, Any], script: str, small: bool) -> None:
    """Write ``out`` (``.md``) and its ``.json`` sibling atomically, each with the marker of ``script``'s run
    (:mod:`result_files`; ``small``: a ``--small`` run)."""
    out = Path(out)
    kind = run_kind(small)
    write_md(out, markdown, script, kind)
    write_json(out.with_suffix(".json"), payload, script, kind)


PLATEAU_PP = 0.5  # a cell has converged when the last quarter of the budget adds less than this to its best val


def last_quarter_gain(curves: Sequence[Sequence[tuple[float, float]]], steps: float) -> tuple[float, float] | None:
    """The convergence check of the claim files: ``curves`` are per-seed ``(step, val metric)`` lists of one cell.
    Returns ``(mean best val, gain)`` where gain is the mean over seeds of (best val at steps <= ``steps``) minus
    (best val at steps <= 3/4 ``steps``), both in the metric's units; ``None`` if a curve has no point in the first
    three quarters. A cell counts as converged when ``100 * gain < PLATEAU_PP``."""
    quarter = 0.75 * steps
    if not curves or not all(any(s <= quarter for s, _ in c) for c in curves):
        return None
    best = [max(v for s, v in c if s <= steps) for c in curves]
    early = [max(v for s, v in c if s <= quarter) for c in curves]
    return statistics.fmean(best), statistics.fmean(b - e for b, e in zip(best, early, strict=True))


def previous_wall(path: Path | None) -> float:
    """``wall_s`` recorded by an earlier invocation (``--resume`` adds its own time to it); 0 if none."""
    if path is None or not Path(path).is_file():
        return 0.0
    try:
        return float(json.loads(Path(path).read_text(encoding="utf-8")).get("wall_s", 0.0))
    except ValueError:
        return 0.0


def load_runs(path: Path | None) -> list[dict[str, Any]]:
    """Runs kept from an earlier invocation (``--resume``); ``[]`` if there is no file."""
    if path is None or not Path(path).is_file():
        return []
    return list(json.loads(Path(path).read_text(encoding="utf-8")).get("runs", []))


# ------------------------------------------------------------------------------------------- --render-only
RERENDERED = "Re-rendered from the stored runs with "


REPOSITORY = Path(__file__).resolve().parents[1]


def results_sibling(path: str | None, json_path: Path, key: str = "") -> Path | None:
    """A results path recorded in a finished file's ``args`` (``key``, named in the error), resolved independently of
    the current directory first: the file of that name beside ``json_path`` (results files are kept side by side,
    e.g. in ``docs/results/``), else the recorded path itself if it is absolute or else relative to the repository,
    else (last) relative to the current directory; ``None`` when none was recorded. SystemExit with one line when
    the file is in none of these places (a re-render would silently drop the section it feeds)."""
    if not path:
        return None
    p = Path(path)
    candidates = [json_path.parent / p.name, p if p.is_absolute() else REPOSITORY / p, p]
    for c in candidates:
        if c.is_file():
            return c
    raise SystemExit(f"{json_path}: args.{key or 'path'} {path!r}: no such file beside it ({candidates[0]}), at "
                     f"{candidates[1]} or in the current directory")


def read_finished_results(json_path: Path) -> dict[str, Any]:
    """The stored results of a finished invocation (``--render-only``); SystemExit with one line otherwise."""
    if not json_path.is_file():
        raise SystemExit(f"{json_path}: no such results file")
    data = json.loads(json_path.read_text(encoding="utf-8"))
    if "args" not in data:
        raise SystemExit(f"{json_path}: not a finished results file (no 'args'): nothing to render")
    return dict(data)


def stored_header(json_path: Path) -> tuple[list[str], str]:
    """The header lines of ``json_path``'s ``.md`` (everything before its first ``## `` section; ``# <stem>`` when
    there is none) and the text after that first ``\n## `` (empty when there is none)."""
    md_path = json_path.with_suffix(".md")
    old = md_path.read_text(encoding="utf-8") if md_path.is_file() else ""
    head, _, old_body = old.partition("\n## ") if "\n## " in old else (f"# {json_path.stem}\n", "", "")
    return head.rstrip("\n").split("\n"), old_body


def original_header(lines: Sequence[str]) -> str:
    """The header of :func:`stored_header`'s ``lines`` without an earlier re-render's note (:data:`RERENDERED`)
    and without the blank lines that stood before it, so that re-rendering an unchanged ``.json`` twice gives the
    same bytes."""
    return "\n".join(line for line in lines if not line.startswith(RERENDERED)).rstrip("\n")


def rerender_note(script: str, json_path: Path, header_clause: str = "") -> str:
    """The line a re-rendered ``.md`` gets below its original header; ``header_clause`` qualifies "the header above
    is the original invocation's" (e.g. a corrected statement)."""
    return (f"{RERENDERED}`python benchmarks/{script} --render-only {json_path.name}`: the runs and the header above "
            f"are the original invocation's{header_clause}, the tables and verdicts below are today's analysis of "
            f"them (nothing was retrained).")

