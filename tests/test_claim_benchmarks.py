"""The claim benchmarks (benchmarks/claim_*.py): the shared paired-CI helper against scipy, the Euclidean-mined
PDDM control, and a seconds-long ``--small`` run of every command so that they never rot."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
VERDICTS = {"reproduced", "not reproduced", "inconclusive"}


def _load(name: str):
    path = ROOT / "benchmarks" / f"{name}.py"
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_paired_ci_matches_the_t_interval():
    stats = pytest.importorskip("scipy.stats")
    common = _load("claim_common")
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


def test_euclid_mined_quadruplet_is_the_hardest_by_distance():
    pddm = _load("claim_pddm")
    loss = pddm.EuclidMinedPDDMLoss(2)
    # class 0: points 0, 1, 2 (0 and 2 farthest apart, 1.2); class 1: point 3 next to 2, point 4 next to 0 (1.0 apart)
    f = torch.tensor([[0.0, 0.0], [0.6, 0.0], [1.2, 0.0], [1.1, 0.1], [0.1, 0.1]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1, 1])
    i, j, k, l = loss.mine(f, y)
    assert (int(i), int(j)) == (0, 2)  # the most distant positive pair
    assert (int(k), int(l)) == (4, 3)  # the nearest negative of each


def _run_small(name: str, tmp_path: Path, *extra: str) -> dict:
    mod = _load(name)
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


@pytest.mark.usefixtures("one_torch_thread")
def test_claim_dyml_small(tmp_path):
    p = _run_small("claim_dyml", tmp_path, "--families", "pairs")
    assert {(r["variant"], r["coherence"]) for r in p["runs"]} == {(v, c) for v in ("fine", "summed", "csl")
                                                                   for c in (1.0, 0.0)}
    assert {"pairs/summed-penalty", "pairs/csl-no-penalty", "pairs/csl-beats-own-baseline"} <= set(p["verdicts"])


@pytest.mark.usefixtures("one_torch_thread")
def test_claim_sharing_small(tmp_path):
    p = _run_small("claim_sharing", tmp_path, "--splits", "held-out", "--methods", "baseline", "mic")
    runs = p["runs"]
    assert {r["method"] for r in runs} == {"baseline", "mic"}
    assert len({r["updates"] for r in runs}) == 1  # matched numbers of updates
    assert all(r["shared_steps"] > 0 for r in runs if r["method"] == "mic")


@pytest.mark.usefixtures("one_torch_thread")
def test_claim_pddm_small(tmp_path):
    p = _run_small("claim_pddm", tmp_path, "--conditions", "heterogeneous", "--lrs", "1e-4", "1e-3")
    runs = p["runs"]
    for m in ("pddm", "euclid", "triplet"):
        mine = [r for r in runs if r["method"] == m]
        assert sum(r["selected"] for r in mine) == 2  # one lr per seed, picked on val
        # every method starts from the same pretrained network
        assert len({json.dumps(r["start"]) for r in mine if r["seed"] == 0}) == 1
    assert len({json.dumps(r["start"]) for r in runs if r["seed"] == 0}) == 1


@pytest.mark.usefixtures("one_torch_thread")
def test_claim_pddm_merge_of_per_condition_files(tmp_path):
    """Two per-condition files merged give the cross-condition verdict, the same selected runs as each file, the
    convergence check and the summed wall time; a file with another setup is refused."""
    pddm = _load("claim_pddm")
    (tmp_path / "u").mkdir()
    (tmp_path / "h").mkdir()
    u = _run_small("claim_pddm", tmp_path / "u", "--conditions", "uniform")
    h = _run_small("claim_pddm", tmp_path / "h", "--conditions", "heterogeneous")
    out = tmp_path / "m.md"
    files = [str(tmp_path / c / "claim_pddm.json") for c in ("u", "h")]
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
    with pytest.raises(SystemExit, match="setup differs"):
        pddm.main(["--small", "--margin", "0.3", "--merge", str(tmp_path / "u" / "claim_pddm.json"), "--out",
                   str(tmp_path / "x.md")])


def test_last_quarter_gain_by_hand():
    common = _load("claim_common")
    # seed 1: best 0.5 by step 75 of 100, 0.6 at 100 -> gain 0.1; seed 2: no gain
    curves = [[(0, 0.1), (50, 0.5), (100, 0.6)], [(0, 0.3), (75, 0.4), (100, 0.35)]]
    best, gain = common.last_quarter_gain(curves, 100)
    assert best == pytest.approx(0.5) and gain == pytest.approx(0.05)
    assert common.last_quarter_gain([[(80, 0.1)]], 100) is None
