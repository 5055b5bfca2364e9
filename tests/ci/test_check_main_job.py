"""``.ci/check_main_job.py``, the CI check of the README's main job, on fake run folders: ``metrics.json`` built
with the project's own evaluation (``evaluate_embeddings``: the structure ``dynametric train`` writes) and
``report.html`` written by the project's own ``write_report``. The metrics checks run with ``--no-browser``; the
report checks render in headless Chromium and are required in CI (``.ci/run`` installs Chromium)."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dynametric.metrics import evaluate_embeddings
from dynametric.pipeline.report import write_report
from tests.browser import INSTALL_HINT, find_chromium

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / ".ci" / "check_main_job.py"
SCALES = ["fine", "middle", "coarse"]
CHROMIUM = find_chromium()
needs_browser = [pytest.mark.ci_required,
                 pytest.mark.skipif(CHROMIUM is None, reason=f"the report check needs Chromium ({INSTALL_HINT})")]


def _labels(n: int = 36) -> torch.Tensor:
    fine = torch.arange(n) % 12
    return torch.stack([fine, fine // 2, fine // 6], dim=1)  # 12 fine, 6 middle, 2 coarse classes


def _metrics() -> dict:
    """untrained = random embeddings, trained = embeddings clustered by fine class (above at every scale)."""
    g = torch.Generator().manual_seed(0)
    labels = _labels()
    untrained = torch.randn(len(labels), 16, generator=g)
    centres = torch.randn(12, 16, generator=g)
    trained = centres[labels[:, 0]] + 0.05 * torch.randn(len(labels), 16, generator=g)
    ev = dict(metrics=["recall@k", "map@r", "r_precision"], scale_names=SCALES)
    return {"untrained": evaluate_embeddings(untrained, labels, **ev),
            "validation": [{"epoch": 0, **evaluate_embeddings(trained, labels, **ev)}],
            "test": evaluate_embeddings(trained, labels, **ev)}, trained, labels


@pytest.fixture(scope="module")
def good_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ci") / "runs" / "20261204-000000-abcdef12"
    run.mkdir(parents=True)
    metrics, emb, labels = _metrics()
    for s in SCALES:  # the premise of the good run: trained above untrained everywhere
        for m in ("map@r", "recall@1"):
            assert metrics["test"][s][m] > metrics["untrained"][s][m]
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    # the report's plots from four test items (fewer panels to draw, same sections)
    sub = torch.tensor([0, 12, 1, 13])  # two fine classes, two items each
    g = torch.Generator().manual_seed(1)
    dataset = [(torch.rand(3, 16, 16, generator=g), int(labels[i, 0])) for i in sub]
    write_report(run / "report.html", metrics=metrics, loss_history=[(i, 1.0 / (i + 1)) for i in range(20)],
                 scale_names=SCALES, config_yaml="run:\n  seed: 0\n", emb=emb[sub], labels=labels[sub],
                 dataset=dataset)
    return run


def _copy(run: Path, dest: Path, *, metrics: dict | None = None, html: str | None = None,
          drop: tuple[str, ...] = ()) -> Path:
    new = dest / "runs" / run.name
    new.mkdir(parents=True)
    for name in ("metrics.json", "report.html"):
        if name in drop:
            continue
        text = (run / name).read_text(encoding="utf-8")
        if name == "metrics.json" and metrics is not None:
            text = json.dumps(metrics)
        if name == "report.html" and html is not None:
            text = html
        (new / name).write_text(text, encoding="utf-8")
    return new


def check(run: Path, *args: str) -> tuple[int, list[str], str]:
    """(exit status, FAIL lines, stdout) of the script as CI runs it."""
    res = subprocess.run([sys.executable, str(SCRIPT), str(run), *args], capture_output=True, text=True,
                         timeout=120, cwd=run.parent.parent)
    fails = [line for line in res.stderr.splitlines() if line.strip()]
    assert all(line.startswith("FAIL ") for line in fails), res.stderr
    return res.returncode, fails, res.stdout


# --- metrics.json (no browser) ------------------------------------------------------------------------------------

def test_good_metrics_pass(good_run: Path, tmp_path: Path) -> None:
    rc, fails, out = check(good_run, "--no-browser", "--out", str(tmp_path / "out"))
    assert (rc, fails) == (0, [])
    assert "metrics OK" in out
    for s in SCALES:  # the printed table holds a row per scale with the untrained and trained values
        row = next(line for line in out.splitlines() if line.split()[:1] == [s])
        m = json.loads((good_run / "metrics.json").read_text())
        assert f"{m['untrained'][s]['map@r']:.4f}" in row and f"{m['test'][s]['recall@1']:.4f}" in row
    assert not (tmp_path / "out").exists()  # --no-browser writes nothing


@pytest.mark.parametrize("metric", ["map@r", "recall@1"])
@pytest.mark.parametrize("delta", [0.0, -0.01])  # equal is not above
def test_scale_not_above_untrained_fails(good_run: Path, tmp_path: Path, metric: str, delta: float) -> None:
    metrics = json.loads((good_run / "metrics.json").read_text())
    metrics["test"]["middle"][metric] = metrics["untrained"]["middle"][metric] + delta
    run = _copy(good_run, tmp_path, metrics=metrics)
    rc, fails, out = check(run, "--no-browser")
    assert rc == 1 and len(fails) == 1, fails
    assert re.search(rf"FAIL .*metrics\.json: middle/{re.escape(metric)} trained [0-9.]+ is not above untrained",
                     fails[0]), fails
    assert "metrics OK" not in out


def test_missing_metrics_fails_with_one_line(good_run: Path, tmp_path: Path) -> None:
    run = _copy(good_run, tmp_path, drop=("metrics.json",))
    rc, fails, out = check(run, "--no-browser")
    assert rc == 1 and fails == [f"FAIL {run / 'metrics.json'}: missing"]
    assert "OK" not in out


@pytest.mark.parametrize("mutate, expected", [
    (lambda m: m.pop("untrained"), "expected objects under 'untrained' and 'test'"),
    (lambda m: m["untrained"].pop("coarse"), "scales differ between 'untrained'"),
    (lambda m: m["test"]["fine"].update({"map@r": None}), "fine/map@r is not a finite number"),
    (lambda m: m["test"]["coarse"].update({"recall@1": float("nan")}), "coarse/recall@1 is not a finite number"),
], ids=["no-untrained", "scales-differ", "null-value", "nan-value"])
def test_malformed_metrics_fail(good_run: Path, tmp_path: Path, mutate, expected: str) -> None:
    metrics = json.loads((good_run / "metrics.json").read_text())
    mutate(metrics)
    run = _copy(good_run, tmp_path, metrics=metrics)
    rc, fails, _ = check(run, "--no-browser")
    assert rc == 1 and any(expected in f for f in fails), fails


def test_invalid_json_fails(good_run: Path, tmp_path: Path) -> None:
    run = _copy(good_run, tmp_path)
    (run / "metrics.json").write_text('{"untrained": {', encoding="utf-8")
    rc, fails, _ = check(run, "--no-browser")
    assert rc == 1 and len(fails) == 1 and "metrics.json: not valid JSON" in fails[0], fails


# --- report.html in headless Chromium (required in CI) ------------------------------------------------------------

@needs_browser[0]
@needs_browser[1]
def test_good_run_passes(good_run: Path, tmp_path: Path) -> None:
    before = sorted(p.name for p in good_run.iterdir())
    rc, fails, out = check(good_run, "--out", str(tmp_path / "out"))
    assert (rc, fails) == (0, []), out
    assert "main job OK" in out and "report.html renders with all 7 sections" in out
    assert re.search(r"rendered DOM: \d+ headings, (\d+)/\1 plots decoded", out), out
    assert (tmp_path / "out" / "report.png").is_file()
    assert sorted(p.name for p in good_run.iterdir()) == before  # the run folder is left as it was


@needs_browser[0]
@needs_browser[1]
def test_report_missing_section_and_corrupted_plot_fail(good_run: Path, tmp_path: Path) -> None:
    """One broken report (one browser run, to keep the suite fast) with two independent faults: each gets its own
    FAIL line naming it, and nothing else fails."""
    html = (good_run / "report.html").read_text(encoding="utf-8")
    assert html.count("<h2>Embedding map</h2>") == 1
    html = html.replace("<h2>Embedding map</h2>", "<h3>Embedding map</h3>")  # the section's heading is gone
    plots = re.findall(r'data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(plots) >= 5
    raw = base64.b64decode(plots[1])
    broken = base64.b64encode(raw[:40] + bytes(len(raw) - 40)).decode()  # PNG header kept, image data zeroed
    run = _copy(good_run, tmp_path, html=html.replace(plots[1], broken))
    rc, fails, _ = check(run, "--out", str(tmp_path / "out"))
    assert rc == 1 and len(fails) == 2, fails
    assert any("report.html: rendered page lacks section(s) ['Embedding map']" in f for f in fails), fails
    assert any(f"report.html: {len(plots) - 1} of {len(plots)} images decoded" in f for f in fails), fails


def test_protocol_block_is_not_a_scale(good_run: Path, tmp_path: Path) -> None:
    """Query -> gallery runs record their protocol beside the scales under 'test'; it is not checked as a scale."""
    metrics = json.loads((good_run / "metrics.json").read_text())
    metrics["test"]["protocol"] = {"name": "query_gallery", "query_split": "query", "gallery_split": "gallery"}
    run = _copy(good_run, tmp_path, metrics=metrics)
    rc, fails, out = check(run, "--no-browser")
    assert (rc, fails) == (0, []) and "metrics OK" in out
    assert not any(line.split()[:1] == ["protocol"] for line in out.splitlines())
