"""The per-category test results outside metrics.json: report.html's "Per category" section (every value of
``by_category``, category names escaped, only with categories), the end-of-run summary's table (the worst and best
few of many) and the experiment loggers (which leave the block out)."""

from __future__ import annotations

import html
import json
import math
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from dynametric.engine.loggers import flat_metrics
from dynametric.pipeline.report import category_summary, write_report
from tests.browser import INSTALL_HINT, find_chromium, run_headless

EVIL = '<b>&"x'


class CategoryTable(HTMLParser):
    """The rows of report.html's per-category table (``id="per-category"``): each a list of ``(data-v, text)``;
    ``headings``: the page's h2 texts."""

    def __init__(self) -> None:
        super().__init__()
        self.header: list[str] = []
        self.rows: list[list[tuple[str, str]]] = []
        self.headings: list[str] = []
        self._in_table = self._in_h2 = False
        self._cell: list[Any] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("id") == "per-category":
            self._in_table = True
        elif tag == "h2":
            self._in_h2 = True
            self.headings.append("")
        elif self._in_table and tag == "tr":
            self.rows.append([])
        elif self._in_table and tag in ("td", "th"):
            self._cell = [tag, a.get("data-v"), ""]

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif tag == "h2":
            self._in_h2 = False
        elif self._cell is not None and tag == self._cell[0]:
            if tag == "th":
                self.header.append(self._cell[2])
            else:
                self.rows[-1].append((self._cell[1], self._cell[2]))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[2] += data
        elif self._in_h2:
            self.headings[-1] += data


def parse_report(text: str) -> CategoryTable:
    parser = CategoryTable()
    parser.feed(text)
    parser.rows = [r for r in parser.rows if r]  # the header row holds no td
    return parser


def assert_table_matches(parsed: CategoryTable, by_category: dict[str, Any]) -> None:
    """Every row of the HTML table equals the block: the categories in its order, each scale (and ``mean`` with
    several), every metric unrounded (``data-v``) and to 4 decimals (the text), and the query counts."""
    header = parsed.header
    metrics = header[2:-3]
    assert header[:2] == ["category", "scale"] and header[-3:] == ["queries", "num_queries", "excluded_queries"]
    expected = [(c, s) for c, e in by_category.items()
                for s in [*(k for k in e if k != "mean"), *(["mean"] if len(e) > 2 else [])]]
    assert [(r[0][1], r[1][1]) for r in parsed.rows] == expected
    for row, (category, scale) in zip(parsed.rows, expected):
        values = by_category[category][scale]
        for (raw, text), m in zip(row[2:-3], metrics):
            v = values[m]
            if v is None or math.isnan(v):
                assert (raw, text) == ("", "-")
            else:
                assert float(raw) == v and text == f"{v:.4f}"
        counts = [cell[1] for cell in row[-3:]]
        if scale == "mean":
            assert counts == ["", "", ""]
        else:
            n, excluded = values["num_queries"], values["excluded_queries"]
            assert counts == [str(n + excluded), str(n), str(excluded)]


def _entry(seed: int, n: int, scales=("fine", "coarse"), nan: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i, s in enumerate(scales):
        base = ((seed * 37 + i * 11) % 97) / 97
        out[s] = {"recall@1": base, "map@r": float("nan") if nan else base / 2 + 0.1 / (seed + 1),
                  "num_queries": n, "excluded_queries": i, "empty_queries": i}
    out["mean"] = {m: sum(out[s][m] for s in scales) / len(scales) for m in ("recall@1", "map@r")}
    return out


def _metrics(by_category: dict[str, Any] | None) -> dict[str, Any]:
    test = {"fine": {"recall@1": 0.5, "map@r": 0.4, "nmi": 0.7, "num_queries": 9, "excluded_queries": 1},
            "coarse": {"recall@1": 0.6, "map@r": 0.5, "nmi": 0.8, "num_queries": 8, "excluded_queries": 2},
            "mean": {"recall@1": 0.55, "map@r": 0.45, "nmi": 0.75}}
    if by_category is not None:
        test["by_category"] = by_category
    return {"untrained": {k: v for k, v in test.items() if k != "by_category"}, "validation": [], "test": test}


@pytest.mark.parametrize("plots", [True, False])
def test_report_per_category_section_holds_every_value_escaped(tmp_path: Path, monkeypatch, plots: bool):
    if plots:
        pytest.importorskip("matplotlib")
    else:  # the section is a table: there without matplotlib too
        import sys

        monkeypatch.setitem(sys.modules, "matplotlib", None)
    by = {"7": _entry(1, 4), EVIL: _entry(2, 3), "fish": _entry(3, 2, nan=True)}
    write_report(tmp_path / "r.html", metrics=_metrics(by), loss_history=[], scale_names=["fine", "coarse"],
                 config_yaml="")
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    parsed = parse_report(text)
    assert "Per category" in parsed.headings
    assert parsed.headings.index("Per category") == parsed.headings.index("Test metrics") + 1
    assert_table_matches(parsed, by)
    assert EVIL not in text and "&lt;b&gt;&amp;&quot;x" in text  # user text escaped, the parser reads it back
    assert "nmi: overall only" in text and "(3 categories; fine, coarse)" in text
    # self-contained: the sorting is inline, nothing is fetched
    assert "function dmSort" in text and "src=\"http" not in text and "<link" not in text


def test_report_without_categories_has_no_per_category_section(tmp_path: Path):
    write_report(tmp_path / "r.html", metrics=_metrics(None), loss_history=[], scale_names=["fine", "coarse"],
                 config_yaml="")
    text = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Per category" not in text and "per-category" not in text and "dmSort" not in text


def test_category_summary_lists_few_categories_in_order():
    by = {"7": _entry(1, 4), EVIL: _entry(2, 3), "tab\there": _entry(3, 2, nan=True)}
    lines = category_summary(by, ["fine", "coarse"], "fine/map@r")
    assert lines[0] == "test metrics by query category (3 categories; each value the mean over the category's queries):"
    assert lines[1].split() == ["category", "queries", "fine", "recall@1", "fine", "map@r", "coarse", "recall@1",
                                "coarse", "map@r"]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["7", EVIL, "tab\\there"]  # a control character is shown escaped
    for row, entry in zip(rows, by.values()):
        assert row[1] == str(entry["fine"]["num_queries"] + entry["fine"]["excluded_queries"])
        expect = [entry[s][m] for s in ("fine", "coarse") for m in ("recall@1", "map@r")]
        assert row[2:] == ["-" if math.isnan(v) else f"{v:.4f}" for v in expect]
    # a monitored metric that is not a main one gets its own column (here the mean over the scales)
    lines = category_summary(by, ["fine", "coarse"], "mean/recall@1")
    assert lines[1].split()[-2:] == ["mean", "recall@1"]
    assert lines[2].split()[-1] == f"{by['7']['mean']['recall@1']:.4f}"


def test_category_summary_of_many_categories_shows_the_worst_and_best():
    by = {f"c{i:02d}": _entry(i, 5 + i) for i in range(30)}
    by["c03"] = _entry(3, 8, nan=True)  # no value: never among the worst
    lines = category_summary(by, ["fine", "coarse"], "fine/map@r", where="metrics.json (test.by_category)")
    ranked = sorted((c for c in by if c != "c03"), key=lambda c: by[c]["fine"]["map@r"])
    assert lines[0] == ("test metrics by query category: the 5 worst and 5 best of 30 by fine/map@r, worst first; "
                        "20 omitted (every category: metrics.json (test.by_category)):")
    names = [line.split()[0] for line in lines[2:]]
    assert names == [*ranked[:5], "...", *ranked[-5:]]
    assert lines[7] == "... 20 categories omitted ..."
    values = [float(line.split()[3]) for line in lines[2:] if not line.startswith("...")]
    assert values == sorted(values)
    assert len(category_summary({k: by[k] for k in list(by)[:20]}, ["fine", "coarse"], "fine/map@r")) == 22
    # a monitored metric without per-category values (nmi, f1: overall only) ranks by the finest scale's map@r, as
    # docs/training.md says; one with values ranks by itself
    assert category_summary(by, ["fine", "coarse"], "coarse/nmi") == lines
    by_recall = category_summary(by, ["fine", "coarse"], "coarse/recall@1")
    assert "of 30 by coarse/recall@1, worst first" in by_recall[0]
    ranked = sorted((c for c in by if c != "c03"), key=lambda c: by[c]["coarse"]["recall@1"])
    assert [line.split()[0] for line in by_recall[2:]] == [*ranked[:5], "...", *ranked[-5:]]


def test_loggers_leave_the_per_category_block_out():
    """A result with a real ``by_category`` block (``evaluate_embeddings`` with query categories, one of them named
    like a scale) logs exactly what the same result without it logs: the block holds one dict per category, no
    number one level down, so ``flat_metrics`` (the numbers one level down) never reaches it. A flattening that went
    deeper, or a block with a number of its own, would log ``test/by_category/...`` names: this fails then."""
    import numpy as np

    from dynametric.metrics import evaluate_embeddings

    rng = np.random.default_rng(0)
    emb, labels = rng.normal(size=(12, 4)).astype(np.float32), np.repeat(np.arange(4), 3)
    results = evaluate_embeddings(emb, labels, metrics=["recall@1", "map@r"], device="cpu",
                                  query_categories=[EVIL, "fine", 7] * 4)
    assert set(results["by_category"]) == {EVIL, "fine", "7"}
    flat = flat_metrics("test", results)
    assert flat == flat_metrics("test", {k: v for k, v in results.items() if k != "by_category"})
    assert set(flat) >= {"test/fine/recall@1", "test/fine/map@r", "test/mean/map@r"}
    assert not any("by_category" in k or EVIL in k or k.count("/") != 2 for k in flat)


CHROMIUM = find_chromium()
# Appended to a copy of the report: click column headings of the per-category table and record the row order.
_CLICKS = """<script>window.addEventListener("load", () => {
  const t = document.getElementById("per-category"), th = Array.from(t.tHead.rows[0].cells);
  const order = () => Array.from(t.tBodies[0].rows).map(r => [r.cells[0].textContent, r.cells[1].textContent]);
  const click = name => th.find(h => h.textContent === name).click();
  const out = {initial: order()};
  click("map@r"); out.asc = order(); click("map@r"); out.desc = order();
  click("scale"); click("category"); out.restored = order();
  const p = document.createElement("pre"); p.id = "probe"; p.textContent = JSON.stringify(out);
  document.body.appendChild(p);
});</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason=f"the sorting test needs Chromium ({INSTALL_HINT})")
def test_per_category_table_sorts_in_the_browser(tmp_path: Path):
    by = {"7": _entry(1, 4), EVIL: _entry(2, 3), "fish": _entry(3, 2, nan=True)}
    write_report(tmp_path / "r.html", metrics=_metrics(by), loss_history=[], scale_names=["fine", "coarse"],
                 config_yaml="")
    page = tmp_path / "probe.html"
    page.write_text((tmp_path / "r.html").read_text(encoding="utf-8").replace("</body>", _CLICKS + "</body>"),
                    encoding="utf-8")
    res = run_headless(["--virtual-time-budget=5000", "--dump-dom", page.as_uri()], binary=CHROMIUM,
                       profile_dir=tmp_path / "profile")
    found = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.S)
    assert found, res.stderr[-500:]
    got = json.loads(html.unescape(found.group(1)))
    rows = [[c, s] for c, e in by.items() for s in ("fine", "coarse", "mean")]
    assert got["initial"] == rows and got["restored"] == rows
    value = {(c, s): by[c][s]["map@r"] for c, s in rows}
    defined = [r for r in rows if not math.isnan(value[tuple(r)])]
    missing = [r for r in rows if math.isnan(value[tuple(r)])]  # no value: last either way
    assert got["asc"] == sorted(defined, key=lambda r: value[tuple(r)]) + missing
    assert got["desc"] == sorted(defined, key=lambda r: -value[tuple(r)]) + missing


def test_a_mean_monitor_has_its_validation_curve():
    """With trainer.monitor mean/map@r the validation plot drew the scales but not the mean best.ckpt was chosen on."""
    from dynametric.pipeline.report import validation_curves

    hist = [{"epoch": e, "fine": {"map@r": 0.1 * e}, "coarse": {"map@r": 0.2 * e}, "mean": {"map@r": 0.15 * e}}
            for e in (0, 1)]
    assert validation_curves(hist, ["fine", "coarse"], "mean/map@r") == {
        "fine": [(0, 0.0), (1, 0.1)], "coarse": [(0, 0.0), (1, 0.2)], "mean": [(0, 0.0), (1, 0.15)]}
    assert list(validation_curves(hist, ["fine", "coarse"], "fine/map@r")) == ["fine", "coarse"]


def test_a_protocols_per_scale_bookkeeping_is_no_metric_row():
    """A DyML protocol's test result holds, per scale, bookkeeping beside the metrics (gallery_size,
    query_in_gallery, ...): they were rows of the metrics table ('detect' as a metric value); the metrics are the
    keys of the mean over the scales."""
    from dynametric.pipeline.report import metrics_table

    scale = {"recall@1": 0.5, "map@r": 0.25, "num_queries": 10, "gallery_size": 40, "query_in_gallery": "detect",
             "self_excluded_by": "identity (index)"}
    result = {"fine": scale, "coarse": dict(scale), "mean": {"recall@1": 0.5, "map@r": 0.25}}
    html = metrics_table({"untrained": result, "test": result}, ["fine", "coarse"])
    for key in ("gallery_size", "query_in_gallery", "self_excluded_by", "detect"):
        assert key not in html, key
    assert html.count("<td>recall@1</td>") == 3 and html.count("<td>map@r</td>") == 3  # fine, coarse, mean

    # a test block without a mean takes its names from its own first scale, not the untrained mean (map@r was lost)
    html = metrics_table({"test": {"fine": {"recall@1": 0.5, "map@r": 0.25, "num_queries": 10}},
                          "untrained": {"fine": {"recall@1": 0.1, "map@r": 0.05}, "mean": {"recall@1": 0.1}}},
                         ["fine"])
    assert "<td>map@r</td>" in html and "<td>recall@1</td>" in html
