"""`dynametric train` on OML data with query categories: the end-of-run summary and report.html show the test
results per category, the values of metrics.json's ``by_category`` (a category name that is HTML escaped in the
report); the CSV log leaves them out. A run without categories has no such section (tests/commands/test_train.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from dynametric.cli import main
from tests.commands.test_evaluate_categories import write_class_image
from tests.engine.test_report_categories import EVIL, assert_table_matches, parse_report


def _oml_data(root: Path) -> list[str]:
    """8 training classes of 4 images, 4 validation classes of 3; three categories by class, one of them a name
    that is HTML. Returns the categories."""
    rng = np.random.default_rng(0)
    categories = ["cold", "warm", EVIL]
    rows = [["label", "path", "split", "is_query", "is_gallery", "category"]]
    for c in range(12):
        for i in range(4 if c < 8 else 3):
            write_class_image(root, c, i, rng)
            split, flags = ("train", ["", ""]) if c < 8 else ("validation", ["True", "True"])
            rows.append([str(c), f"img/{c}_{i}.png", split, *flags, categories[c % 3]])
    with (root / "df.csv").open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(rows)  # the quote in EVIL: a quoted field, as any CSV writer does
    return categories


def test_oml_run_summary_and_report_show_the_categories(tmp_path: Path, capsys):
    pytest.importorskip("matplotlib")
    root = tmp_path / "oml"
    root.mkdir()
    categories = _oml_data(root)
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "data.format=oml", f"data.root={root}", "data.image_size=8",
                 "data.batch_size=8", "data.m=2", "model.embedding_dim=8", "model.backbone_kwargs={width: 4, depth: 2}",
                 "trainer.max_epochs=1", "trainer.progress_bar=false", "run.report=true",
                 "data.test_split=validation"]) == 0  # leave-one-out on OML's validation rows
    by = json.loads((out / "metrics.json").read_text())["test"]["by_category"]
    assert sorted(by) == sorted(categories) and list(by) == [EVIL, "cold", "warm"]
    # the summary: one row per category (few of them: all, in metrics.json's order) with its queries and values
    lines = capsys.readouterr().out.splitlines()
    at = lines.index("test metrics by query category (3 categories; each value the mean over the category's "
                     "queries):")
    assert lines[at + 1].split() == ["category", "queries", "label", "recall@1", "label", "map@r"]
    for line, (name, entry) in zip(lines[at + 2:at + 5], by.items()):
        label = entry["label"]
        assert line.split() == [name, str(label["num_queries"] + label["excluded_queries"]),
                                f"{label['recall@1']:.4f}", f"{label['map@r']:.4f}"]
    assert lines[at + 5].startswith("wrote ")
    # the report: every value of the block, the name escaped
    text = (out / "report.html").read_text(encoding="utf-8")
    parsed = parse_report(text)
    assert "Per category" in parsed.headings
    assert_table_matches(parsed, by)
    assert [r[0][1] for r in parsed.rows] == list(by)  # one scale (label): one row per category
    assert EVIL not in text and "&lt;b&gt;&amp;&quot;x" in text
    # the loggers receive the overall values only
    header = next(csv.reader((out / "logs" / "metrics.csv").open(encoding="utf-8")))
    assert "test/label/map@r" in header and not [h for h in header if any(c in h for c in categories)]


def test_summary_of_many_categories_points_to_the_full_table() -> None:
    from dynametric.pipeline.run import _summary
    from tests.engine.test_report_categories import _entry

    by = {f"c{i:02d}": _entry(i, 5) for i in range(30)}
    overall = {"recall@1": 0.5, "map@r": 0.4}
    metrics = {"untrained": {"fine": overall, "coarse": overall, "mean": overall},
               "test": {"fine": overall, "coarse": overall, "mean": overall, "by_category": by}}
    for report, where in ((True, "metrics.json (test.by_category) and report.html"),
                          (False, "metrics.json (test.by_category)")):
        lines: list[str] = []
        _summary(metrics, ["fine", "coarse"], lines.append, monitor="coarse/map@r", report=report)
        assert lines[4] == ("test metrics by query category: the 5 worst and 5 best of 30 by coarse/map@r, worst "
                            f"first; 20 omitted (every category: {where}):")
        assert len(lines) == 4 + 1 + 1 + 5 + 1 + 5
    del metrics["test"]["by_category"]
    lines.clear()
    _summary(metrics, ["fine", "coarse"], lines.append, monitor="fine/map@r", report=True)
    assert len(lines) == 4  # the overall table alone
