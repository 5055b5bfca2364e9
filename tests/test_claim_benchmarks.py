"""The claim benchmarks (benchmarks/claim_*.py): the shared paired-CI helper against scipy, the Euclidean-mined
PDDM control, and a seconds-long ``--small`` run of every command so that they never rot."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import pytest
import torch

from tests.benchmarks.loader import load_benchmark

VERDICTS = {"reproduced", "not reproduced", "inconclusive"}


def test_paired_ci_matches_the_t_interval():
    stats = pytest.importorskip("scipy.stats")
    common = load_benchmark("claim_common")
    a = [0.50, 0.52, 0.47, 0.55, 0.49, 0.51]
    b = [0.53, 0.52, 0.50, 0.58, 0.50, 0.56]
    ci = common.paired_ci(a, b)
    d = [y - x for x, y in zip(a, b, strict=True)]
    lo, hi = stats.t.interval(0.95, len(d) - 1, loc=sum(d) / len(d), scale=stats.sem(d))
    assert ci["n"] == 6 and ci["mean"] == pytest.approx(sum(d) / 6)
    assert ci["lo"] == pytest.approx(lo, abs=1e-4) and ci["hi"] == pytest.approx(hi, abs=1e-4)
    assert common.sign(ci) == 1  # every difference >= 0, interval above 0
    assert common.sign(common.paired_ci(b, a)) == -1
    assert common.sign(common.paired_ci([0.1, 0.2, 0.3], [0.2, 0.1, 0.3])) == 0
    assert math.isnan(common.paired_ci([0.1], [0.2])["lo"])
    for df in (1, 4, 9, 29):
        assert common.t975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-3)
    with pytest.raises(ValueError):
        common.paired_ci([0.1, 0.2], [0.3])


@pytest.mark.parametrize(("df", "quantile"), [(1, 12.706), (2, 4.303), (10, 2.228), (30, 2.042), (31, 2.040),
                                             (40, 2.021), (100, 1.984), (1000, 1.962), (10**6, 1.960)])
def test_t975_is_students_quantile_for_any_df(df, quantile):
    # beyond 30 degrees of freedom it was 1.96, the normal quantile (2.021 at 40): intervals of more than 31 seeds
    # came out too narrow
    common = load_benchmark("claim_common")
    assert common.t975(df) == pytest.approx(quantile, abs=5e-4)


def test_t975_decreases_with_df_across_the_table():
    common = load_benchmark("claim_common")
    values = [common.t975(df) for df in range(1, 200)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize("level", [0.5, 0.8, 0.9, 0.99, 1 - 0.05 / 7, 1 - 0.05 / 11, 1 - 0.05 / 33])
@pytest.mark.parametrize("df", [1, 2, 4, 9, 29, 100])
def test_t_critical_at_other_levels_is_scipys_two_sided_quantile(df, level):
    stats = pytest.importorskip("scipy.stats")
    common = load_benchmark("claim_common")
    # the two-sided critical value: the (1 + level) / 2 quantile (not the level's own, a one-sided value)
    assert common.t_critical(df, level) == pytest.approx(stats.t.ppf((1 + level) / 2, df), rel=1e-12)
    assert common.t_critical(df, level) == pytest.approx(stats.t.interval(level, df)[1], rel=1e-9)
    if 2 <= df <= 10:  # an interval of df + 1 paired values at that level, against scipy's
        a = [0.50, 0.52, 0.47, 0.55, 0.49, 0.51, 0.40, 0.45, 0.60, 0.52, 0.48][: df + 1]
        b = [x + 0.01 * (i % 3) + 0.005 for i, x in enumerate(a)]
        ci = common.paired_ci(a, b, level)
        d = [y - x for x, y in zip(a, b, strict=True)]
        lo, hi = stats.t.interval(level, df, loc=sum(d) / len(d), scale=stats.sem(d))
        assert ci["lo"] == pytest.approx(lo, rel=1e-9) and ci["hi"] == pytest.approx(hi, rel=1e-9)
        assert common.at_level(common.paired_ci(a, b), level) == ci  # recomputed from the stored differences


def test_t_critical_at_95_keeps_the_tabulated_values_of_the_published_results():
    common = load_benchmark("claim_common")
    for df in range(1, 31):
        assert common.t_critical(df) == common.t_critical(df, 0.95) == common.t975(df)
    assert common.t_critical(4, 1 - 0.05) == 2.776  # the table's, not scipy's 2.7764...: nothing published moves
    a, b = [0.50, 0.52, 0.47, 0.55, 0.49], [0.53, 0.52, 0.50, 0.58, 0.50]
    assert common.at_level(common.paired_ci(a, b), 0.95) == common.paired_ci(a, b)
    for level in (0.0, 1.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            common.t_critical(4, level)
    with pytest.raises(ValueError, match="df=0"):
        common.t_critical(0, 0.99)


def test_a_verdict_reproduced_at_95_is_inconclusive_family_wise_by_hand():
    """Differences (2, 3, 4) pp: mean 3, sd 1, n 3, se 1/sqrt(3). At 95 %: 3 ± 4.303 / sqrt(3) = [0.516, 5.484],
    reproduced. In a family of m = 2 single-interval verdicts each interval is at 1 - 0.05 / 2 = 97.5 %; with 2
    degrees of freedom Student's quantile has the closed form t_p = (2p - 1) / sqrt(2p (1 - p)), so t_0.9875 =
    0.975 / sqrt(2 · 0.9875 · 0.0125) = 6.20535 and the interval is 3 ± 3.58266 = [-0.583, 6.583]: inconclusive."""
    common = load_benchmark("claim_common")
    zeros = [0.0, 0.0, 0.0]
    effect = common.paired_ci(zeros, [0.02, 0.03, 0.04])
    assert effect["lo"] == pytest.approx(0.03 - 0.04303 / math.sqrt(3), abs=1e-12)
    null = common.paired_ci(zeros, [0.001, -0.001, 0.0])
    claims = [common.Claim("effect", common.one_interval_rule, {"ci": effect}),
              common.Claim("null", common.one_interval_rule, {"ci": null})]
    assert [c.verdict() for c in claims] == ["reproduced", "inconclusive"]
    fw = common.bonferroni(claims)
    assert (fw["effect"]["m"], fw["effect"]["k"], fw["effect"]["level"]) == (2, 1, 0.975)
    t = 0.975 / math.sqrt(2 * 0.9875 * 0.0125)
    assert t == pytest.approx(6.20535, abs=1e-5)
    adjusted = fw["effect"]["intervals"]["ci"]
    assert adjusted["lo"] == pytest.approx(0.03 - t * 0.01 / math.sqrt(3), abs=1e-12) == pytest.approx(-0.0058266,
                                                                                                       abs=1e-7)
    assert adjusted["hi"] == pytest.approx(0.0658266, abs=1e-7) and adjusted["mean"] == pytest.approx(0.03)
    assert fw["effect"]["verdict"] == "inconclusive" and fw["null"]["verdict"] == "inconclusive"
    line, record = common.family_summary(claims, fw)
    assert "m = 2 verdicts" in line and "**1 of 2 verdicts keep their call**" in line
    assert "of the 1 conclusive at 95 %, 0 remain conclusive" in line and "effect (reproduced → inconclusive)" in line
    assert record == {"method": "bonferroni", "alpha": 0.05, "m": 2, "kept": 1, "conclusive_95": 1,
                      "conclusive_family_wise": 0,
                      "changed": {"effect": {"95": "reproduced", "family_wise": "inconclusive"}}}
    shown = common.family_line(fw["effect"], "reproduced", "x")
    assert shown == ("  * family-wise (Bonferroni, m = 2; its interval at 97.5 %): **inconclusive** (changed from "
                     "reproduced) — x")
    # alone (m = 1) the family-wise interval is the 95 % one, the tabulated quantile included: the call stands
    alone = common.bonferroni(claims[:1])
    assert alone["effect"]["verdict"] == "reproduced" and alone["effect"]["intervals"]["ci"] == effect


def test_bonferroni_counts_the_verdicts_and_shares_each_ones_alpha_among_its_intervals():
    common = load_benchmark("claim_common")
    ci = common.paired_ci([0.0, 0.0, 0.0, 0.0], [0.02, 0.03, 0.04, 0.03])
    two = common.Claim("two", lambda x: common.verdict(x["a"]) if common.sign(x["b"]) else "inconclusive",
                       {"a": ci, "b": ci})
    ones = [common.Claim(f"one{i}", common.one_interval_rule, {"ci": ci}) for i in range(4)]
    fw = common.bonferroni([two, *ones])
    assert {k: v["m"] for k, v in fw.items()} == dict.fromkeys(["two", "one0", "one1", "one2", "one3"], 5)
    assert fw["two"]["k"] == 2 and fw["two"]["level"] == pytest.approx(1 - 0.05 / 10)
    assert fw["one0"]["k"] == 1 and fw["one0"]["level"] == pytest.approx(1 - 0.05 / 5)
    assert fw["two"]["intervals"]["a"] == common.at_level(ci, 1 - 0.05 / 10)
    # each verdict's share is alpha / m: the levels' miss rates add up to alpha over the report
    assert sum(v["k"] * (1 - v["level"]) for v in fw.values()) == pytest.approx(0.05)
    assert common.bonferroni_level(11, 3) == pytest.approx(1 - 0.05 / 33)
    assert common.fmt_level(1 - 0.05 / 11) == "99.55 %" and common.fmt_level(0.95) == "95 %"
    with pytest.raises(ValueError, match="unique"):
        common.bonferroni([ones[0], ones[0]])
    with pytest.raises(ValueError, match="m >= 1"):
        common.bonferroni_level(0)
    with pytest.raises(ValueError, match="exactly one interval"):
        common.one_interval_rule({"a": ci, "b": ci})


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


@pytest.mark.parametrize(("script", "name", "summary", "changed"), [
    ("claim_dyml", "claim-dyml", "**8 of 11 verdicts keep their call**; of the 3 conclusive at 95 %, 0 remain",
     "  * family-wise (Bonferroni, m = 11; its interval at 99.55 %): **inconclusive** (changed from reproduced "
     "(non-inferior within δ)) — csl − fine at c=0 +0.22 [-1.84, +2.28] pp."),
    ("claim_pddm", "claim-pddm-9600", "**6 of 7 verdicts keep their call**; of the 3 conclusive at 95 %, 2 remain",
     "uniform **inconclusive** (changed from not reproduced), triplet − PDDM steps -3040 [-8426, +2346]"),
    ("claim_sharing", "claim-sharing-rho", "**3 of 4 verdicts keep their call**; of the 1 conclusive at 95 %, 0 "
     "remain", "  * family-wise (Bonferroni, m = 4; its interval at 98.75 %): **inconclusive** (changed from "
     "reproduced) — class head +1.32 [-0.28, +2.92] pp."),
])
def test_published_results_re_render_byte_identically_with_their_family_wise_verdicts(tmp_path, script, name,
                                                                                      summary, changed):
    """The stored claim files are today's rendering of their runs (``--render-only``, nothing retrained): the
    family-wise lines included, a verdict that is conclusive at 95 % but not under the correction among them. The
    published files predate the results markers and are kept without them, so the rendering's marker (the .md's
    last line, the .json's ``written_by``) is the only difference."""
    for suffix in (".md", ".json"):
        (tmp_path / f"{name}{suffix}").write_bytes((RESULTS / f"{name}{suffix}").read_bytes())
    assert load_benchmark(script).main(["--render-only", str(tmp_path / f"{name}.json")]) == 0
    text = (tmp_path / f"{name}.md").read_text(encoding="utf-8")
    marker = f"\n\n<!-- written by benchmarks/{script}.py (full run) -->\n"
    assert text.endswith(marker) and text[: -len(marker)] + "\n" == (RESULTS / f"{name}.md").read_text(encoding="utf-8")
    rendered = json.loads((tmp_path / f"{name}.json").read_text(encoding="utf-8"))
    assert rendered.pop("written_by") == {"script": f"{script}.py", "run": "full"}
    assert rendered == json.loads((RESULTS / f"{name}.json").read_text(encoding="utf-8"))
    assert summary in text and changed in text


def _family_lines(text: str, m: int) -> list[tuple[str, str]]:
    """(verdict bullet, family-wise line) pairs of a report's Verdicts section; checks its summary line names m."""
    section = text.split("\n## Verdicts\n", 1)[1].split("\n## ", 1)[0]
    assert section.startswith(f"\nFamily-wise (Bonferroni over the m = {m} verdict")
    rows = section.strip("\n").split("\n")
    return [(rows[i - 1], row) for i, row in enumerate(rows) if row.startswith("  * family-wise")]


def test_euclid_mined_quadruplet_is_the_hardest_by_distance():
    pddm = load_benchmark("claim_pddm")
    loss = pddm.EuclidMinedPDDMLoss(2)
    # class 0: points 0, 1, 2 (0 and 2 farthest apart, 1.2); class 1: point 3 next to 2, point 4 next to 0 (1.0 apart)
    f = torch.tensor([[0.0, 0.0], [0.6, 0.0], [1.2, 0.0], [1.1, 0.1], [0.1, 0.1]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1, 1])
    i, j, k, l = loss.mine(f, y)
    assert (int(i), int(j)) == (0, 2)  # the most distant positive pair
    assert (int(k), int(l)) == (4, 3)  # the nearest negative of each


def _run_small(name: str, tmp_path: Path, *extra: str) -> dict:
    mod = load_benchmark(name)
    out = tmp_path / f"{name}.md"
    assert mod.main(["--small", "--out", str(out), *extra]) == 0
    text = out.read_text()
    payload = json.loads(out.with_suffix(".json").read_text())
    assert "## Verdicts" in text and f"benchmarks/{name}.py --small" in text and "Wall time" in text
    assert payload["verdicts"] and payload["runs"]
    for v in payload["verdicts"].values():
        if isinstance(v, dict) and "verdict" in v:
            assert v["verdict"] in VERDICTS
    return payload


@pytest.mark.parametrize("name", ["claim_dyml", "claim_pddm", "claim_sharing"])
def test_small_changes_defaults_and_explicit_options_win(name):
    """--small replaces the defaults of its preset's options; an option given explicitly keeps its value (before,
    --small overwrote it silently: --small --seeds 5 6 ran seeds 0 and 1 under a header naming 5 6)."""
    mod = load_benchmark(name)
    full = mod.parse_args(["--out", "x.md"])
    small = mod.parse_args(["--small", "--out", "x.md"])
    for key, value in mod.SMALL.items():
        assert getattr(small, key) == value != getattr(full, key), key  # each preset value is not the default
    mixed = mod.parse_args(["--small", "--seeds", "5", "6", "--steps", "7", "--image-size", "12", "--out", "x.md"])
    assert (mixed.seeds, mixed.steps, mixed.image_size) == ([5, 6], 7, 12)
    assert {k: getattr(mixed, k) for k in mod.SMALL if k not in ("seeds", "steps", "image_size")} == \
        {k: v for k, v in mod.SMALL.items() if k not in ("seeds", "steps", "image_size")}
    # the same explicit value as the preset's, or the full run's default given explicitly, is kept too
    assert mod.parse_args(["--small", "--steps", str(full.steps), "--out", "x.md"]).steps == full.steps
    assert mod.SMALL["seeds"] is not small.seeds  # the preset's lists are not shared with the namespace
    with pytest.raises(ValueError, match="not options"):
        mod.parse_with_small(argparse.ArgumentParser(), ["--small"], {"steps": 1})
    assert "an option given explicitly keeps its value" in mod.parse_args.__doc__ + mod.small_help(mod.SMALL)


def test_small_does_not_bypass_the_checks_on_explicit_options():
    dyml = load_benchmark("claim_dyml")
    with pytest.raises(SystemExit):  # --p 4 with the three-chunk sampler is refused under --small as without it
        dyml.parse_args(["--small", "--sampler", "three-chunk", "--p", "4", "--out", "x.md"])
    assert dyml.parse_args(["--small", "--sampler", "three-chunk", "--out", "x.md"]).p == 6


@pytest.mark.usefixtures("one_torch_thread")
def test_claim_dyml_small(tmp_path):
    p = _run_small("claim_dyml", tmp_path, "--families", "pairs", "--seeds", "0", "2")
    assert {(r["variant"], r["coherence"]) for r in p["runs"]} == {(v, c) for v in ("fine", "summed", "csl")
                                                                   for c in (1.0, 0.0)}
    # the explicit --seeds beat --small's [0, 1]: the runs, the recorded args and the header's Setup line agree
    assert {r["seed"] for r in p["runs"]} == {0, 2} and p["args"]["seeds"] == [0, 2]
    assert "seeds [0, 2] (each redraws" in (tmp_path / "claim_dyml.md").read_text()
    assert {"pairs/summed-penalty", "pairs/csl-no-penalty", "pairs/csl-beats-own-baseline"} <= set(p["verdicts"])
    # family-wise: m = 3 verdicts (summed penalty: 2 intervals, no penalty: 1, own baseline: one per coherence, 2)
    assert p["verdicts"]["family_wise"]["m"] == 3
    common = load_benchmark("claim_common")
    for key, k, name in (("summed-penalty", 2, "change_of_gap"), ("csl-no-penalty", 1, "csl_minus_fine_at_lowest"),
                         ("csl-beats-own-baseline", 2, "0")):
        v = p["verdicts"][f"pairs/{key}"]
        fw = v["family_wise"]
        assert (fw["m"], fw["k"]) == (3, k) and fw["level"] == pytest.approx(1 - 0.05 / (3 * k))
        ci95 = v[name] if name != "0" else v["mean_asi_gain"]["0"]
        assert fw["intervals"][name]["lo"] == pytest.approx(common.at_level(ci95, fw["level"])["lo"])
    pairs = _family_lines((tmp_path / "claim_dyml.md").read_text(), 3)
    assert len(pairs) == 3 and all(b.startswith("* **pairs: ") for b, _ in pairs)
    assert [f.split(";")[0] for _, f in pairs] == ["  * family-wise (Bonferroni, m = 3"] * 3
    assert "its 2 intervals at 99.17 % each" in pairs[0][1] and "its interval at 98.33 %" in pairs[1][1]


@pytest.mark.usefixtures("one_torch_thread")
def test_claim_sharing_small(tmp_path):
    p = _run_small("claim_sharing", tmp_path, "--splits", "held-out", "--methods", "baseline", "mic")
    runs = p["runs"]
    assert {r["method"] for r in runs} == {"baseline", "mic"}
    # matched numbers of updates: exactly round(5 * (1 + 0.8)) = 9 optimizer steps each (MIC's module skips a shared
    # step that would pass max_steps), evaluated at the first iteration end past 4 and 8 updates and at the end
    assert {r["updates"] for r in runs} == {9}
    assert all(r["shared_steps"] > 0 for r in runs if r["method"] == "mic")
    for r in runs:
        steps = [p["step"] for p in r["curve"]]
        assert steps[-1] == 9 and 4 <= steps[0] <= 5 and steps == sorted(set(steps))
        if r["method"] == "baseline":  # one update per iteration: every multiple of --eval-every exactly
            assert steps == [4, 8, 9]
    # the default (no pretraining) output keeps its structure: no start record, row or comparison
    assert p["args"]["pretrain_steps"] == 0
    assert all(set(r) == {"method", "split", "seed", "alpha", "rho", "best_step", "updates", "shared_steps", "val",
                          "test", "train_s", "curve", "selected"} for r in runs)
    assert not any("vs-start" in k for k in p["verdicts"])
    assert set(p["verdicts"]) == {"mic/held-out", "end-of-budget", "family_wise"}
    text = (tmp_path / "claim_sharing.md").read_text()
    # one verdict: the family-wise interval is the 95 % one (m = 1) and the call stands
    assert p["verdicts"]["family_wise"]["m"] == 1 and "**1 of 1 verdict keeps its call**" in text
    assert p["verdicts"]["mic/held-out"]["family_wise"]["verdict"] == p["verdicts"]["mic/held-out"]["verdict"]
    [(bullet, line)] = _family_lines(text, 1)
    assert bullet.startswith("* **mic improves") and "m = 1; its interval at 95 %" in line and "(same call)" in line
    assert "pretrained start" not in text and "no pretraining" in text


@pytest.mark.usefixtures("one_torch_thread")
def test_claim_sharing_pretrained_start_two_processes_and_merge(tmp_path):
    """--pretrain-steps: every method of a (seed, split) starts from the same pretrained network (one digest per
    seed and split; the held-out-factor split and today's differ, as do the seeds); the start row and the paired
    differences against it appear; two processes (one split each) merge with --resume-from into one file without
    training anything, and a from-scratch invocation refuses to merge them."""
    cs = load_benchmark("claim_sharing")
    common = ["--small", "--pretrain-steps", "3", "--methods", "baseline", "sharing"]
    files = {}
    for split in ("held-out-val-colour", "today"):
        files[split] = tmp_path / f"{split}.md"
        assert cs.main([*common, "--splits", split, "--out", str(files[split])]) == 0
    merged = tmp_path / "merged.md"
    assert cs.main([*common, "--splits", "held-out-val-colour", "today", "--resume-from",
                    *(str(f.with_suffix(".json")) for f in files.values()), "--out", str(merged)]) == 0
    p = json.loads(merged.with_suffix(".json").read_text())
    runs = p["runs"]
    assert len(runs) == 8 and all("source" in r for r in runs)  # 2 methods x 2 splits x 2 seeds, none retrained
    digests: dict[tuple, set] = {}
    for r in runs:
        digests.setdefault((r["split"], r["seed"]), set()).add(r["start"]["digest"])
    assert len(digests) == 4
    assert all(len(d) == 1 for d in digests.values())  # one start per (split, seed), shared by every method
    assert len({next(iter(d)) for d in digests.values()}) == 4  # seeds differ; today's removed variants differ
    for r in runs:
        assert r["start"]["pretrain_excluded"] == (0 if r["split"] != "today" else 144 - r["start"]["pretrain_classes"])
        assert set(r["start"]["test"]) == {"class", "shared", "concat"}
        assert r["best_step"] > 0  # the start is a reference, never a selected checkpoint
    assert {r["start"]["pretrain_excluded"] > 0 for r in runs if r["split"] == "today"} == {True}
    text = merged.read_text()
    assert text.count(f"| {cs.START_ROW} |") == 2 and "pretrained 3 steps" in text
    assert {f"{m}/{s}/vs-start" for m in ("baseline", "sharing") for s in ("held-out-val-colour", "today")} <= set(
        p["verdicts"])
    assert "sharing/split-effect/held-out-val-colour" in p["verdicts"]
    # the start's recorded test metrics are the start network's: pretraining is deterministic from the seed
    a = cs.main.__globals__["argparse"].Namespace(**(p["args"] | {"out": merged}))
    start = cs.pretrain(0, cs.excluded_variants("today", 0, a), a)
    ds = cs.SyntheticHierarchy("test", **cs.split_kwargs("today", 0, a))
    rec = next(r["start"] for r in runs if (r["split"], r["seed"]) == ("today", 0))
    assert start["digest"] == rec["digest"]
    assert cs.head_metrics(start["model"], ds.tensors(), ds.labels[:, :1])["class"] == rec["test"]["class"]
    # runs of one (split, seed) that start from different networks are flagged, not silently averaged
    pa = json.loads(files["today"].with_suffix(".json").read_text())
    next(r for r in pa["runs"] if r["seed"] == 1 and r["method"] == "sharing")["start"]["digest"] = "0" * 16
    files["today"].with_suffix(".json").write_text(json.dumps(pa))
    assert cs.main([*common, "--splits", "today", "--resume", "--out", str(files["today"])]) == 0
    assert "today/1/start-digests" in json.loads(files["today"].with_suffix(".json").read_text())["verdicts"]
    assert "start from different networks" in files["today"].read_text()
    with pytest.raises(SystemExit, match="pretrain_steps"):
        cs.main(["--small", "--splits", "today", "--resume-from", str(files["today"].with_suffix(".json")),
                 "--out", str(tmp_path / "scratch.md")])


def test_claim_sharing_pretraining_removes_exactly_the_seed_variants(tmp_path):
    """The today-split exclusion: the pretraining classes lose exactly the variants of the seed's train/val/test
    classes (and nothing else); the held-out-factor splits remove none; the old files (no pretraining keys) merge
    only with from-scratch invocations."""
    from types import SimpleNamespace

    cs = load_benchmark("claim_sharing")
    a = SimpleNamespace(image_size=8, images_per_class=2, pretrain_per_shape=16)
    for seed in (0, 1):
        used = set()
        for name, n in (("train", 6), ("val", 2), ("test", 4)):
            ds = cs.SyntheticHierarchy(name, seed=seed, image_size=8, images_per_class=2,
                                       fine_per_shape={"train": 6, "val": 2, "test": 4})
            keys = {(v["shape"], v["colour"], v["texture"], v["size"]) for v in ds.classes}
            assert len(keys) == 9 * n
            used |= keys
        assert cs.excluded_variants("today", seed, a) == used and len(used) == 108
        pre = cs.SyntheticHierarchy("train", seed=1000 + seed, image_size=8, images_per_class=2,
                                    fine_per_shape={"train": 16, "val": 1, "test": 1})
        sub, kept, drawn = cs.pretrain_set(seed, frozenset(used), a)
        want = {v["fine"] for v in pre.classes if (v["shape"], v["colour"], v["texture"], v["size"]) not in used}
        assert drawn == 144 and kept == len(want) < 144 and set(sub.labels[:, 0].tolist()) == want
        assert len(sub) == 2 * kept and torch.equal(sub.labels, pre.labels[sub.indices])
        for split in ("held-out", "held-out-val", "held-out-val-colour"):
            assert cs.excluded_variants(split, seed, a) == frozenset()
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"args": {"steps": 5}, "runs": []}))
    scratch = {"steps": 5, "pretrain_per_shape": 16, "pretrain_lr": None}
    assert cs.import_runs(old, SimpleNamespace(pretrain_steps=0, **scratch), True) == []
    with pytest.raises(SystemExit, match="absent: the default"):
        cs.import_runs(old, SimpleNamespace(pretrain_steps=1500, **scratch), True)


@pytest.mark.usefixtures("one_torch_thread")
def test_claim_pddm_small(tmp_path):
    p = _run_small("claim_pddm", tmp_path, "--conditions", "heterogeneous", "--lrs", "1e-4", "1e-3",
                   "--eval-every", "1")
    runs = p["runs"]
    # the explicit --eval-every beats --small's 2: every one of the 4 steps (and the start) is evaluated
    assert {tuple(pt["step"] for pt in r["curve"]) for r in runs} == {(0, 1, 2, 3, 4)}
    assert "(evaluated every 1 steps)" in (tmp_path / "claim_pddm.md").read_text()
    for m in ("pddm", "euclid", "triplet"):
        mine = [r for r in runs if r["method"] == m]
        assert sum(r["selected"] for r in mine) == 2  # one lr per seed, picked on val
        # every method starts from the same pretrained network
        assert len({json.dumps(r["start"]) for r in mine if r["seed"] == 0}) == 1
    assert len({json.dumps(r["start"]) for r in runs if r["seed"] == 0}) == 1
    # m = 3: local similarity and convergence (one condition, no density verdict) and the time-to-level verdict,
    # whose family-wise call stands below its own table
    assert p["verdicts"]["family_wise"]["m"] == 3
    assert p["verdicts"]["time_to_level"]["heterogeneous"]["family_wise"]["level"] == pytest.approx(1 - 0.05 / 3)
    text = (tmp_path / "claim_pddm.md").read_text()
    pairs = _family_lines(text, 3)
    assert [b.split(" (")[0] for b, _ in pairs] == ["* **PDDM-mined beats Euclidean-mined quadruplets under the same "
                                                    "loss", "* **PDDM converges faster than the triplet baseline"]
    speed = text.split("\n## Time to a common level", 1)[1].split("\n## ", 1)[0]
    assert "\nFamily-wise (Bonferroni, m = 3; each interval at 98.33 %): heterogeneous **" in speed


@pytest.mark.usefixtures("one_torch_thread")
def test_sharing_engine_evaluates_every_n_updates_in_eval_mode():
    """benchmarks/sharing_engine.EvalEvery: evaluates the three heads at the first batch end at or past each multiple
    of ``every`` updates and at max_steps, in eval mode (BatchNorm statistics untouched), and leaves train mode on."""
    from types import SimpleNamespace

    from dynametric.models import build_embedder

    se = load_benchmark("sharing_engine")
    torch.manual_seed(0)
    model = build_embedder("simple_cnn", embedding_dim=4, num_heads=2, backbone_kwargs={"width": 4, "depth": 2})
    model.train()
    x, y = torch.rand(12, 3, 8, 8), torch.arange(4).repeat(3).unsqueeze(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cb = se.EvalEvery(4, {"val": (x, y)})
    trainer = SimpleNamespace(global_step=0, max_steps=9)
    for step in (1, 3, 5, 6, 8, 9):  # MIC-like jumps: 3 -> 5 crosses 4, 6 -> 8 reaches 8, 9 is max_steps
        trainer.global_step = step
        cb.on_train_batch_end(trainer, SimpleNamespace(embedder=model), None, None, 0)
    assert [p["step"] for p in cb.curve] == [5, 8, 9]
    assert model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.eval()
    assert cb.curve[-1]["val"] == se.head_metrics(model, x, y)
    assert set(cb.curve[0]["val"]) == {"class", "shared", "concat"}


@pytest.mark.usefixtures("one_torch_thread")
def test_claim_sharing_pretrain_lr_defaults_to_lr(tmp_path):
    """--pretrain-lr: absent, the pretraining uses --lr (the same start as before the option existed); given, a
    different start; a file pretrained at another lr is refused by --resume-from."""
    cs = load_benchmark("claim_sharing")
    common = ["--small", "--pretrain-steps", "3", "--methods", "baseline", "--seeds", "0", "--splits", "today"]

    def start(name: str, *extra: str) -> str:
        out = tmp_path / f"{name}.md"
        assert cs.main([*common, *extra, "--out", str(out)]) == 0
        return json.loads(out.with_suffix(".json").read_text())["runs"][0]["start"]["digest"]

    default = start("default")
    assert start("same", "--pretrain-lr", "1e-3") == default  # --small keeps --lr at 1e-3
    assert start("other", "--pretrain-lr", "1e-2") != default
    with pytest.raises(SystemExit):
        cs.main([*common, "--resume-from", str(tmp_path / "other.json"), "--out", str(tmp_path / "x.md")])


def test_claim_sharing_end_of_budget_reads_the_final_update_only():
    """The secondary comparison picks (alpha, rho) on the val R@1 of the *final* update (not the val-best one),
    and its paired differences are final test R@1 minus the baseline's (and minus the start's)."""
    import argparse

    cs = load_benchmark("claim_sharing")

    def run(m, seed, alpha, rho, curve):
        return {"method": m, "split": "today", "seed": seed, "alpha": alpha, "rho": rho,
                "curve": [{"step": s, "val": v, "test": t} for s, v, t in curve]}

    runs = []
    for seed, shift in ((0, 0.0), (1, 0.02)):
        runs.append(run("baseline", seed, None, 0.0, [(60, 0.9, 0.9), (120, 0.2, 0.30 + shift)]))
        # the second candidate wins at the end (val 0.5 > 0.4) although the first had the best val overall
        runs.append(run("sharing", seed, 0.1, 0.0, [(60, 0.99, 0.99), (120, 0.4, 0.10)]))
        runs.append(run("sharing", seed, 0.3, 0.0, [(60, 0.1, 0.1), (120, 0.5, 0.35 + 2 * shift)]))
    a = argparse.Namespace(methods=["baseline", "sharing"], splits=["today"], seeds=[0, 1])
    grids = {"baseline": [(None, 0.0)], "sharing": [(0.1, 0.0), (0.3, 0.0)]}
    starts = {("today", s): {"test": {"class": {"recall@1": r1}}} for s, r1 in ((0, 0.40), (1, 0.44))}
    lines, out = cs.end_of_budget(runs, a, grids, starts)
    assert out["sharing/today"]["test"] == pytest.approx([0.35, 0.39])
    assert out["sharing/today"]["vs_baseline"]["mean"] == pytest.approx(0.06)  # (0.05 + 0.07) / 2
    assert out["baseline/today"]["vs_start"]["mean"] == pytest.approx(-0.11)  # (-0.10 - 0.12) / 2
    assert any("| today | sharing | 37.0 ± 2.8 |" in line for line in lines)


def test_claim_pddm_merge_of_per_condition_files(tmp_path):
    """Two per-condition files merged give the cross-condition verdict, the same selected runs as each file, the
    convergence check and the summed wall time; a file with another setup is refused."""
    pddm = load_benchmark("claim_pddm")
    (tmp_path / "u").mkdir()
    (tmp_path / "h").mkdir()
    u = _run_small("claim_pddm", tmp_path / "u", "--conditions", "uniform")
    h = _run_small("claim_pddm", tmp_path / "h", "--conditions", "heterogeneous")
    out = tmp_path / "m.md"
    files = [str(tmp_path / c / "claim_pddm.json") for c in ("u", "h")]
    for path, minutes in zip(files, (10, 20)):  # as if the parts had run 10 and 20 minutes, side by side
        payload = json.loads(Path(path).read_text())
        payload["invocations"][0]["wall_s"] = payload["wall_s"] = 60.0 * minutes
        Path(path).write_text(json.dumps(payload))
    assert pddm.main(["--small", "--merge", *files, "--out", str(out)]) == 0
    m = json.loads(out.with_suffix(".json").read_text())
    assert len(m["runs"]) == len(u["runs"]) + len(h["runs"])
    picked = {(r["seed"], r["condition"], r["method"], r["lr"]) for r in m["runs"] if r["selected"]}
    assert picked == {(r["seed"], r["condition"], r["method"], r["lr"]) for r in u["runs"] + h["runs"]
                      if r["selected"]}
    assert m["verdicts"]["density"]["verdict"] in VERDICTS
    assert set(m["verdicts"]["convergence_check"]["cells"]) == {f"{c}/{x}" for c in ("uniform", "heterogeneous")
                                                               for x in ("pddm", "euclid", "triplet")}
    assert m["wall_s"] == pytest.approx(sum(i["wall_s"] for i in m["invocations"]), abs=0.2)
    assert len(m["invocations"]) == 3
    # the header sums the invocations (30 min and the merge) and says the side-by-side time: the longer part + merge
    assert "reproduces in 20.0 min" in out.read_text() and "Wall time: 30.0 min" in out.read_text()
    with pytest.raises(SystemExit, match="was run with --margin 0.2, this invocation has 0.3"):
        pddm.main(["--small", "--margin", "0.3", "--merge", str(tmp_path / "u" / "claim_pddm.json"), "--out",
                   str(tmp_path / "x.md")])


def test_claim_pddm_lr_grid_extended_by_merging_a_run_of_the_new_lr(tmp_path):
    """A finished grid plus a run of only the new lr, merged with the union grid, gives exactly the runs and picks of
    running the whole grid at once (pretraining is deterministic); a file whose lr is outside --lrs, and a file
    whose pretrained start differs, are refused with one line each."""
    pddm = load_benchmark("claim_pddm")
    for d in ("old", "new", "whole"):
        (tmp_path / d).mkdir()
    _run_small("claim_pddm", tmp_path / "old", "--conditions", "uniform", "--lrs", "1e-4")
    _run_small("claim_pddm", tmp_path / "new", "--conditions", "uniform", "--lrs", "1e-3")
    whole = _run_small("claim_pddm", tmp_path / "whole", "--conditions", "uniform", "--lrs", "1e-4", "1e-3")
    old, new = (str(tmp_path / d / "claim_pddm.json") for d in ("old", "new"))
    out = tmp_path / "merged.md"
    assert pddm.main(["--small", "--conditions", "uniform", "--lrs", "1e-4", "1e-3", "--merge", old, new,
                      "--out", str(out)]) == 0
    merged = json.loads(out.with_suffix(".json").read_text())

    def key(r):
        return r["method"], r["seed"], r["lr"]

    def strip(r):  # timings differ between invocations; everything else must not
        return {k: v for k, v in r.items() if k not in ("run_s", "s_per_step", "curve")} | {
            "curve": [(c["step"], c["val"], c["test_r1"]) for c in r["curve"]]}

    assert sorted(map(strip, merged["runs"]), key=key) == sorted(map(strip, whole["runs"]), key=key)
    for v in ("local-similarity/uniform", "convergence/uniform", "versus_start"):
        assert merged["verdicts"][v] == whole["verdicts"][v]
    assert "from [0.0001, 0.001]" in out.read_text()
    with pytest.raises(SystemExit, match="has runs at lr 0.001, which this invocation's --lrs"):
        pddm.main(["--small", "--conditions", "uniform", "--lrs", "1e-4", "--merge", old, new,
                   "--out", str(tmp_path / "x.md")])
    payload = json.loads(Path(new).read_text())
    payload["pretraining"]["0/uniform"]["val"]["recall@1"] += 0.125
    Path(new).write_text(json.dumps(payload))
    with pytest.raises(SystemExit, match="the pretrained start of seed/condition 0/uniform differs"):
        pddm.main(["--small", "--conditions", "uniform", "--lrs", "1e-4", "1e-3", "--merge", old, new,
                   "--out", str(tmp_path / "y.md")])
    # found while training the missing lr's runs: the error names the merged file the stored start came from
    with pytest.raises(SystemExit, match=f"^{re.escape(new)}: the pretrained start of seed/condition 0/uniform"):
        pddm.main(["--small", "--conditions", "uniform", "--lrs", "1e-3", "1e-2", "--merge", new,
                   "--out", str(tmp_path / "z.md")])


def test_last_quarter_gain_by_hand():
    common = load_benchmark("claim_common")
    # seed 1: best 0.5 by step 75 of 100, 0.6 at 100 -> gain 0.1; seed 2: no gain
    curves = [[(0, 0.1), (50, 0.5), (100, 0.6)], [(0, 0.3), (75, 0.4), (100, 0.35)]]
    best, gain = common.last_quarter_gain(curves, 100)
    assert best == pytest.approx(0.5) and gain == pytest.approx(0.05)
    assert common.last_quarter_gain([[(80, 0.1)]], 100) is None


def test_pddm_time_to_a_common_level_by_hand():
    """Per seed the level is the lower of PDDM's and triplet's best val R@1 minus PLATEAU_PP; each method's first
    evaluated step (and cumulative seconds) at or above it, paired as triplet − PDDM (positive = PDDM faster)."""
    from types import SimpleNamespace

    pddm = load_benchmark("claim_pddm")
    drop = pddm.PLATEAU_PP / 100

    def run(method, seed, vals):
        return {"method": method, "seed": seed, "condition": "uniform", "selected": True,
                "curve": [{"step": 100 * i, "seconds": 2.0 * i, "val": v} for i, v in enumerate(vals)]}

    sel = [run("pddm", 0, [0.1, 0.2, 0.3, 0.5]), run("triplet", 0, [0.1, 0.45, 0.6, 0.6]),
           run("pddm", 1, [0.1, 0.4, 0.4, 0.4]), run("triplet", 1, [0.1, 0.2, 0.5, 0.5]),
           run("euclid", 0, [0.9, 0.9, 0.9, 0.9])]  # not part of the comparison
    a = SimpleNamespace(methods=("pddm", "euclid", "triplet"), conditions=("uniform",), seeds=[0, 1], eval_every=100)
    lines, out = pddm.time_to_level_section(sel, a)
    res = out["uniform"]
    # seed 0: level 0.5 - drop; pddm first reaches it at step 300, triplet at 200 (0.45 at step 100 is below it)
    assert res["levels"] == pytest.approx([0.5 - drop, 0.4 - drop])
    assert res["pddm_steps"] == [300.0, 100.0] and res["triplet_steps"] == [200.0, 200.0]
    assert res["steps"]["diffs"] == [-100.0, 100.0] and res["seconds"]["diffs"] == [-2.0, 2.0]
    assert res["verdict"] == "inconclusive"
    assert any(line.startswith("| uniform | ") for line in lines)


@pytest.mark.usefixtures("one_torch_thread")
def test_claim_pddm_resume_checks_setup_merge_rejects_duplicates_and_render_only(tmp_path):
    """--resume over a file of another setup and --merge of a run that is already present both stop with a one-line
    error; --render-only re-derives the analysis (every arm against the start, step 0 excluded) without training."""
    pddm = load_benchmark("claim_pddm")
    p = _run_small("claim_pddm", tmp_path, "--conditions", "uniform")
    out = tmp_path / "claim_pddm.md"
    with pytest.raises(SystemExit, match="was run with --margin 0.2, this invocation has 0.5"):
        pddm.main(["--small", "--conditions", "uniform", "--resume", "--margin", "0.5", "--out", str(out)])
    assert json.loads(out.with_suffix(".json").read_text())["runs"] == p["runs"]  # nothing relabelled
    with pytest.raises(SystemExit, match="is already in the runs being merged"):
        pddm.main(["--small", "--conditions", "uniform", "--merge", str(out.with_suffix(".json")),
                   str(out.with_suffix(".json")), "--out", str(tmp_path / "twice.md")])
    rendered = []
    for _ in range(2):  # a second rendering of the unchanged .json gives the same bytes
        assert pddm.main(["--render-only", str(out.with_suffix(".json"))]) == 0
        rendered.append((out.read_bytes(), out.with_suffix(".json").read_bytes()))
    assert rendered[0] == rendered[1]
    again = json.loads(out.with_suffix(".json").read_text())
    assert again["runs"] == p["runs"] and again["invocations"] == p["invocations"]
    start = again["verdicts"]["versus_start"]
    assert {"uniform/pddm", "uniform/euclid", "uniform/triplet", "uniform/pddm-euclid-excluding-start"} <= set(start)
    for m in ("pddm", "euclid", "triplet"):  # - start is the selected test R@1 minus the start's, per seed
        sel = sorted((r for r in p["runs"] if r["method"] == m and r["selected"]), key=lambda r: r["seed"])
        want = [r["test"]["recall@1"] - r["start"]["test"]["recall@1"] for r in sel]
        assert start[f"uniform/{m}"]["ci"]["diffs"] == pytest.approx(want)
    text = out.read_text()
    assert text.count(load_benchmark("claim_common").RERENDERED) == 1
    assert "## Against the start" in text and "indicative only" in text


def test_claim_sharing_pretraining_overlap_is_counted_per_split():
    """On today's split the pretraining classes are disjoint from the test classes; on held-out-val-colour they are
    not: seed 0 has 96 of 144 pretraining classes inside a test (shape, colour) class, covering all 36."""
    import argparse

    sharing = load_benchmark("claim_sharing")
    a = argparse.Namespace(image_size=16, images_per_class=8, pretrain_per_shape=16, seeds=[0])
    colour = sharing.pretrain_overlap("held-out-val-colour", 0, a)
    assert colour == {"pretrain_classes": 144, "pretrain_overlapping": 96, "test_classes": 36, "test_covered": 36}
    today = sharing.pretrain_overlap("today", 0, a)
    assert today["pretrain_overlapping"] == 0 and today["test_covered"] == 0
    assert "96 of 144" in sharing._overlap_text("held-out-val-colour", a)


@pytest.mark.usefixtures("one_torch_thread")
def test_claim_sharing_render_only_keeps_runs_and_header_and_corrects_disjoint(tmp_path):
    """--render-only re-derives the tables and verdicts from the stored runs without training: runs, args and
    command unchanged, the header kept with one re-rendered note (not repeated on a second rendering, which changes
    nothing), a hand-written ``Reading:`` paragraph kept in its section; a header written before the overlap fix
    ("on disjoint synthetic classes") gets today's pretraining description and a note saying what was corrected."""
    cs = load_benchmark("claim_sharing")
    out = tmp_path / "r.md"
    assert cs.main(["--small", "--pretrain-steps", "3", "--splits", "held-out-val-colour", "--methods", "baseline",
                    "sharing", "--out", str(out)]) == 0
    before = json.loads(out.with_suffix(".json").read_text())
    text = out.read_text()
    head, body = text.split("\n## ", 1)
    assert "NOT disjoint" in head and cs.FALSE_DISJOINT not in head
    # the header and body as stored before the fix, with a hand-written reading and a stale verdict
    old_head = head.replace(" steps on synthetic classes", " steps " + cs.FALSE_DISJOINT)
    fixed = old_head[old_head.index(", so there the start is NOT"):old_head.index("); pretraining")]
    old_head = old_head.replace(fixed, "")
    reading = "Reading: written by hand."
    body = body.replace("\n## Paired differences against the baseline",
                        f"\n{reading}\n\n## Paired differences against the baseline", 1)
    out.write_text(f"{old_head}\n## {body}")
    stale = before | {"verdicts": before["verdicts"] | {"sharing/held-out-val-colour": {"verdict": "stale"}}}
    out.with_suffix(".json").write_text(json.dumps(stale))
    rendered = []
    for _ in range(2):
        assert cs.main(["--render-only", str(out.with_suffix(".json"))]) == 0
        rendered.append(out.read_text())
    assert rendered[0] == rendered[1]  # idempotent: the note is not repeated, no blank lines pile up
    after = json.loads(out.with_suffix(".json").read_text())
    assert {k: v for k, v in after.items() if k != "verdicts"} == {k: v for k, v in before.items() if k != "verdicts"}
    assert after["verdicts"] == before["verdicts"]  # the same runs give the same verdicts
    new = rendered[0]
    assert new.split("\n## ", 1)[0].startswith(head.split("\n\nSetup:", 1)[0])  # command and wall time kept
    assert head.split("\n\n")[-1].strip() in new  # today's pretraining description, overlap counts included
    assert cs.FALSE_DISJOINT not in new.split(cs.RERENDERED, 1)[0]
    assert new.count(cs.RERENDERED) == 1 and new.count(cs.CORRECTED) == 1 and new.count(reading) == 1
    section = new.split("\n## Paired differences against the baseline", 1)[0].rsplit("\n## ", 1)[1]
    assert section.rstrip().endswith(reading)  # back at the end of the section it was written in
    with pytest.raises(SystemExit, match="no such results file"):
        cs.main(["--render-only", str(tmp_path / "missing.json")])


@pytest.mark.usefixtures("one_torch_thread")
def test_claim_sharing_render_only_finds_versus_beside_the_json_from_any_folder(tmp_path, monkeypatch):
    """A ``--versus`` path recorded relative to the folder a file was made in: ``--render-only`` from another folder
    reads the file beside the ``.json``, the parity section keeps the recorded name in its heading and the hand-written
    ``Reading:`` paragraph stays in that section, so the rendering reproduces the ``.md`` byte for byte (before, the
    heading named the path where the file was found and the paragraph moved to the end of the file)."""
    cs = load_benchmark("claim_sharing")
    results = tmp_path / "results"
    results.mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path)
    assert cs.main(["--small", "--splits", "held-out", "--methods", "baseline", "--out", "results/old.md"]) == 0
    # a port's file: the same runs (so the parity table pairs all of them), recorded with --versus results/old.json
    old = json.loads((results / "old.json").read_text())
    (results / "new.json").write_text(json.dumps(old | {"args": old["args"] | {"versus": "results/old.json"}}))
    (results / "new.md").write_text((results / "old.md").read_text())
    assert cs.main(["--render-only", "results/new.json"]) == 0
    heading = "## Parity with the runs of results/old.json\n"
    text = (results / "new.md").read_text()
    assert text.count(heading) == 1 and "| held-out | baseline | – | 0 | 2 |" in text
    reading = "Reading: written by hand."
    parity, rest = text.split(heading, 1)[1].split("\n## ", 1)
    with_reading = text.split(heading, 1)[0] + heading + parity.rstrip("\n") + f"\n\n{reading}\n\n## " + rest
    (results / "new.md").write_text(with_reading)
    monkeypatch.chdir(tmp_path / "elsewhere")  # results/old.json is not there
    for _ in range(2):
        assert cs.main(["--render-only", str(results / "new.json")]) == 0
        assert (results / "new.md").read_text() == with_reading
