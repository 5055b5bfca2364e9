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
    # matched numbers of updates: exactly round(5 * (1 + 0.8)) = 9 optimizer steps each (MIC's module skips a shared
    # step that would pass max_steps), evaluated at the first iteration end past 4 and 8 updates and at the end
    assert {r["updates"] for r in runs} == {9}
    assert all(r["shared_steps"] > 0 for r in runs if r["method"] == "mic")
    for r in runs:
        steps = [p["step"] for p in r["curve"]]
        assert steps[-1] == 9 and 4 <= steps[0] <= 5 and steps == sorted(set(steps))
        if r["method"] == "baseline":  # one update per iteration: every multiple of --eval-every exactly
            assert steps == [4, 8, 9]


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
def test_sharing_engine_evaluates_every_n_updates_in_eval_mode():
    """benchmarks/sharing_engine.EvalEvery: evaluates the three heads at the first batch end at or past each multiple
    of ``every`` updates and at max_steps, in eval mode (BatchNorm statistics untouched), and leaves train mode on."""
    from types import SimpleNamespace

    from dynametric.models import build_embedder

    se = _load("sharing_engine")
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
