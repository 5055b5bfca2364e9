"""benchmarks/result_files.py: a results file is replaced only by the script that wrote it, and a --small or partial
run never replaces a full run's (--overwrite does); the claim scripts apply it to their published files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.benchmarks.loader import load_benchmark

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def test_the_rule_on_marked_files(tmp_path):
    rf = load_benchmark("result_files")
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    assert rf.refusal(md, "a.py", "small") is None  # absent: written
    rf.write_md(md, "table\n", "a.py", "full")
    rf.write_json(js, {"x": 1}, "a.py", "full")
    assert md.read_text() == "table\n\n<!-- written by benchmarks/a.py (full run) -->\n"
    assert json.loads(js.read_text()) == {"x": 1, "written_by": {"script": "a.py", "run": "full"}}
    assert rf.stamp_md(md.read_text(), "a.py", "small").count("written by") == 1  # a rewrite keeps one marker
    for path in (md, js):
        assert rf.refusal(path, "a.py", "full") is None
        assert rf.refusal(path, "a.py", "small") == (f"{path}: holds a full run of benchmarks/a.py; a small run does "
                                                     f"not replace it (--overwrite does, or write elsewhere)")
        assert "partial run does not replace" in rf.refusal(path, "a.py", "partial")
        assert rf.refusal(path, "b.py", "full") == (f"{path}: written by benchmarks/a.py, not b.py; refusing to "
                                                    f"replace it (--overwrite replaces it)")
    rf.write_md(md, "small table\n", "a.py", "small")
    assert rf.refusal(md, "a.py", "small") is None and rf.refusal(md, "a.py", "partial") is None
    foreign = tmp_path / "notes.md"
    foreign.write_text("# hand-written\n")
    with pytest.raises(SystemExit, match=f"^{foreign}: not written by benchmarks/a.py .*replaces it\\)$"):
        rf.check_replace([None, md, foreign], "a.py", "full", False)
    rf.check_replace([foreign], "a.py", "full", True)  # --overwrite
    with pytest.raises(ValueError, match="run kind 'tiny'"):
        rf.md_marker("a.py", "tiny")


def test_claim_scripts_recognise_their_published_results(tmp_path):
    """The published claim files predate the markers: recognised by their header and command, as full runs."""
    common = load_benchmark("claim_common")
    out = tmp_path / "claim-pddm.md"
    shutil.copy(RESULTS / "claim-pddm.md", out)
    shutil.copy(RESULTS / "claim-pddm.json", out.with_suffix(".json"))
    common.check_results(out, "claim_pddm.py", small=False, overwrite=False)  # a full run replaces them
    with pytest.raises(SystemExit, match=f"^{out}: holds a full run of benchmarks/claim_pddm.py; a small run"):
        common.check_results(out, "claim_pddm.py", small=True, overwrite=False)
    common.check_results(out, "claim_pddm.py", small=True, overwrite=True)
    with pytest.raises(SystemExit, match="not written by benchmarks/claim_dyml.py"):
        common.check_results(out, "claim_dyml.py", small=False, overwrite=False)
    # --out at a hand-written page (no .json beside it) is refused, before anything runs
    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n")
    mod = load_benchmark("claim_pddm")
    with pytest.raises(SystemExit, match=f"^{page}: not written by benchmarks/claim_pddm.py"):
        mod.main(["--small", "--out", str(page)])
    assert page.read_text() == "# Benchmarks\n" and not page.with_suffix(".json").exists()
    # a small run over the published results is refused too (it replaced them before)
    before = out.read_bytes()
    with pytest.raises(SystemExit, match="holds a full run"):
        mod.main(["--small", "--out", str(out)])
    assert out.read_bytes() == before
