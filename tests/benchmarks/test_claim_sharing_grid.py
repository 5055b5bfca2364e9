"""benchmarks/claim_sharing.py's hyper-parameter grid: (alpha, rho) picked jointly on validation only, earlier runs
(including ones written before runs recorded alpha) reused through --resume-from / --resume, runs of another setup
refused, and the reported run time summed over the runs, so a resumed invocation does not report 0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.benchmarks.loader import load_benchmark


def _run(method, alpha, rho, val_r1, val_map, test_r1, seed=0, split="held-out"):
    heads = lambda r1, m: {h: {"recall@1": r1, "map@r": m} for h in ("class", "shared", "concat")}  # noqa: E731
    return {"method": method, "split": split, "seed": seed, "alpha": alpha, "rho": rho,
            "val": heads(val_r1, val_map), "test": heads(test_r1, 0.0)}


def test_select_reads_validation_only_and_breaks_ties_in_grid_order():
    b = load_benchmark("claim_sharing")
    grids = {m: b.candidates(m, [1.0, 0.1, 0.3], [100, 0]) for m in b.METHODS}
    assert grids["sharing"][:2] == [(0.1, 0.0), (0.1, 100.0)] and len(grids["sharing"]) == 6
    assert grids["mic"] == [(None, 0.0), (None, 100.0)] and grids["baseline"] == [(None, 0.0)]
    runs = [
        # seed 0: a tie on val R@1 goes to the higher val MAP@R, whatever the test figures say
        _run("sharing", 0.1, 0.0, 0.50, 0.20, 0.90),
        _run("sharing", 0.3, 100.0, 0.50, 0.30, 0.10),
        _run("sharing", 1.0, 0.0, 0.40, 0.90, 0.99),
        _run("sharing", 3.0, 0.0, 0.99, 0.99, 0.99),  # outside the grid: never picked
        # seed 1: an exact tie on both goes to the earlier grid entry (smaller alpha, then smaller rho)
        _run("sharing", 1.0, 0.0, 0.60, 0.30, 0.50, seed=1),
        _run("sharing", 0.3, 100.0, 0.60, 0.30, 0.50, seed=1),
        _run("sharing", 0.3, 0.0, 0.60, 0.30, 0.50, seed=1),
        _run("mic", None, 0.0, 0.20, 0.10, 0.30),
        _run("mic", None, 100.0, 0.25, 0.10, 0.05),
        _run("baseline", None, 0.0, 0.10, 0.10, 0.10),
    ]
    chosen = b.select(runs, grids)
    picked = {k: (r["alpha"], r["rho"]) for k, r in chosen.items()}
    assert picked == {("sharing", "held-out", 0): (0.3, 100.0), ("sharing", "held-out", 1): (0.3, 0.0),
                      ("mic", "held-out", 0): (None, 100.0), ("baseline", "held-out", 0): (None, 0.0)}
    assert all("selected" not in r for r in runs)  # select() does not modify the runs
    for r in runs:  # scrambling the test figures changes nothing
        r["test"] = {h: {"recall@1": 1.0 - r["test"][h]["recall@1"], "map@r": 0.5} for h in r["test"]}
    assert {k: (r["alpha"], r["rho"]) for k, r in b.select(runs, grids).items()} == picked
    # restricted to alpha 1.0 (the sensitivity table): seed 0 then has only (1.0, 0)
    sub = b.select(runs, grids | {"sharing": [c for c in grids["sharing"] if c[0] == 1.0]})
    assert (sub[("sharing", "held-out", 0)]["alpha"], sub[("sharing", "held-out", 0)]["rho"]) == (1.0, 0.0)


@pytest.mark.usefixtures("one_torch_thread")
def test_alpha_grid_reuses_earlier_runs_and_reports_summed_run_time(tmp_path: Path, capsys):
    b = load_benchmark("claim_sharing")
    common = ["--small", "--splits", "held-out", "--methods", "baseline", "sharing"]
    rho_md = tmp_path / "rho.md"
    assert b.main([*common, "--alpha", "0.3", "--rho-grid", "0", "100", "--out", str(rho_md)]) == 0
    old = json.loads(rho_md.with_suffix(".json").read_text())
    assert {(r["method"], r["alpha"], r["rho"]) for r in old["runs"]} == {
        ("baseline", None, 0.0), ("sharing", 0.3, 0.0), ("sharing", 0.3, 100.0)}
    for r in old["runs"]:  # the format before runs recorded alpha: it comes from the file's args.alpha
        del r["alpha"]
    rho_md.with_suffix(".json").write_text(json.dumps(old))

    grid_md = tmp_path / "grid.md"
    argv = [*common, "--alpha-grid", "1", "0.3", "--rho-grid", "0", "100", "--out", str(grid_md)]
    capsys.readouterr()
    assert b.main([*argv, "--resume-from", str(rho_md.with_suffix(".json"))]) == 0
    printed = capsys.readouterr().out
    assert printed.count("sharing  α 1, ρ") == 4 and "α 0.3" not in printed.split("## ")[0]  # only alpha 1 is new
    p = json.loads(grid_md.with_suffix(".json").read_text())
    runs = p["runs"]
    assert len(runs) == 2 + 8
    assert sorted((r["seed"], r["alpha"], r["rho"]) for r in runs if r["method"] == "sharing") == sorted(
        (s, al, rho) for s in (0, 1) for al in (0.3, 1.0) for rho in (0.0, 100.0))
    reused = [r for r in runs if "source" in r]
    assert len(reused) == 6 and all(r["source"] == str(rho_md.with_suffix(".json")) for r in reused)
    for r in reused:  # reused verbatim, apart from the alpha tag and the selection mark
        orig = next(o for o in old["runs"] if (o["method"], o["seed"], o["rho"]) == (r["method"], r["seed"], r["rho"]))
        assert {k: v for k, v in r.items() if k not in ("alpha", "source", "selected")} == {
            k: v for k, v in orig.items() if k != "selected"}
    # exactly one run per (method, seed) selected, the one select() picks on val
    chosen = b.select(runs, {m: b.candidates(m, [0.3, 1.0], [0.0, 100.0]) for m in b.METHODS})
    for r in runs:
        assert r["selected"] == (chosen[(r["method"], r["split"], r["seed"])] is r)
    text = grid_md.read_text()
    sel = chosen[("sharing", "held-out", 1)]
    assert f"| held-out | sharing | {b._hp(chosen[('sharing', 'held-out', 0)])} | {b._hp(sel)} |" in text
    assert "jointly" in text and "## Sensitivity: α fixed" in text and "validation classes only" in text
    assert p["verdicts"]["sharing/held-out/val-test-corr"] == pytest.approx(
        b._within_seed_corr([r for r in runs if r["method"] == "sharing"]))
    assert p["verdicts"]["sharing/held-out/selected"]["1"] == {"alpha": sel["alpha"], "rho": sel["rho"]}
    assert p["verdicts"]["sharing/held-out"]["verdict"] in {"reproduced", "not reproduced", "inconclusive"}
    total = sum(r["train_s"] for r in runs)
    assert total > 0 and p["wall_s"] == pytest.approx(total, abs=0.06)
    assert "the sum of the 10 runs' own timers (training and the val/test evaluations; 6 of them reused" in text

    # a resumed invocation with nothing left to run still reports the runs' summed time, not its own few seconds
    capsys.readouterr()
    assert b.main([*argv, "--resume"]) == 0
    assert "(update " not in capsys.readouterr().out  # no progress line: nothing re-run
    again = json.loads(grid_md.with_suffix(".json").read_text())
    assert again["wall_s"] == p["wall_s"] and len(again["runs"]) == 10


def test_within_seed_correlation_removes_the_seed_means():
    b = load_benchmark("claim_sharing")
    # seed 1 sits 0.5 higher on both splits: raw correlation would be near +1; within seed, val and test disagree
    runs = [_run("sharing", 0.1, 0.0, v + off, 0.0, t + off, seed=s)
            for s, off in ((0, 0.0), (1, 0.5)) for v, t in ((0.1, 0.3), (0.2, 0.2), (0.3, 0.1))]
    assert b._within_seed_corr(runs) == pytest.approx(-1.0)
    assert b._within_seed_corr(runs[:2]) is None


def test_runs_of_another_setup_are_refused(tmp_path: Path):
    b = load_benchmark("claim_sharing")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"args": {"steps": 300, "alpha": 0.3}, "runs": []}))
    with pytest.raises(SystemExit, match=r"other.json: args.steps is 300 but this invocation uses 5"):
        b.main(["--small", "--resume-from", str(other), "--out", str(tmp_path / "x.md")])
    with pytest.raises(SystemExit, match="no such file"):
        b.main(["--small", "--resume-from", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x.md")])
    legacy = tmp_path / "legacy.json"
    legacy.write_text(json.dumps({"runs": [{"method": "sharing", "split": "today", "seed": 0, "rho": 0.0}]}))
    with pytest.raises(SystemExit, match=r"runs\[0\] has no 'alpha' and the file has no args.alpha"):
        b.main(["--small", "--resume-from", str(legacy), "--out", str(tmp_path / "x.md")])
    assert not (tmp_path / "x.md").exists()


@pytest.mark.usefixtures("one_torch_thread")
def test_held_out_val_split_builds_same_factor_validation(tmp_path: Path, monkeypatch):
    b = load_benchmark("claim_sharing")
    built: list[tuple[str, dict]] = []
    real = b.SyntheticHierarchy

    def spy(split, **kw):
        built.append((split, kw))
        return real(split, **kw)

    monkeypatch.setattr(b, "SyntheticHierarchy", spy)
    out = tmp_path / "valfix.md"
    assert b.main(["--small", "--splits", "held-out-val", "today", "--methods", "baseline", "sharing",
                   "--alpha-grid", "0.1", "1", "--rho-grid", "0", "--out", str(out)]) == 0
    held = [kw for _, kw in built if "held_out_factor" in kw]
    assert len(held) == 2 * 3 and all(kw["held_out_factor"] == "texture" and kw["val_classes"] == "same_factor"
                                      for kw in held)
    p = json.loads(out.with_suffix(".json").read_text())
    assert {(r["split"], r["method"]) for r in p["runs"]} == {
        (s, m) for s in ("held-out-val", "today") for m in ("baseline", "sharing")}
    assert "sharing/held-out-val/val-test-corr" in p["verdicts"] and "sharing/held-out-val" in p["verdicts"]
    assert "Does val track test during training?" in out.read_text()
    assert "sharing/split-effect/held-out-val" in p["verdicts"]
    assert "gain on the held-out-val split minus gain on today's split" in out.read_text()
    # the default split choice is unchanged
    assert b.DEFAULT_SPLITS == ("held-out", "today")


def test_checkpoint_corr_is_within_run():
    b = load_benchmark("claim_sharing")

    def run(vals, tests):
        return {"curve": [{"step": i, "val": v, "test": t} for i, (v, t) in enumerate(zip(vals, tests))]}

    # two runs with very different levels: centred per run, val and test move together (r = 1) although pooled
    # raw values would anti-correlate
    assert b._checkpoint_corr([run([0.1, 0.2, 0.3], [0.9, 1.0, 1.1]), run([0.8, 0.9, 1.0], [0.1, 0.2, 0.3])]) \
        == pytest.approx(1.0)
    assert b._checkpoint_corr([run([0.1, 0.3, 0.2], [0.3, 0.1, 0.2])]) == pytest.approx(-1.0)
    assert b._checkpoint_corr([run([0.1, 0.2], [0.1, 0.1])]) is None  # no test variation
    assert b._checkpoint_corr([run([0.1], [0.2])]) is None
