"""benchmarks/gpu_suite.py --small runs end to end on the CPU (so the one-command GPU suite never rots): every
part produces figures, dynametric's metrics equal the plain full-sort floor's, and only the suite's own section of
the markdown file is replaced."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.benchmarks.loader import load_benchmark

pytest.importorskip("pytorch_metric_learning")



def test_small_suite_runs_and_writes_only_its_section(tmp_path: Path) -> None:
    suite = load_benchmark("gpu_suite")
    docs = tmp_path / "benchmarks.md"
    docs.write_text(f"# Benchmarks\n\nkept above\n\n{suite.BEGIN}\nold figures\n{suite.END}\n\nkept below\n")
    out = tmp_path / "suite.json"
    assert suite.main(["--small", "--json", str(out), "--docs", str(docs), "--data", str(tmp_path / "jpegs")]) == 0
    res = json.loads(out.read_text())
    a, c, d = res["a"], res["c"], res["d"]
    assert a["n"] == 1200 and a["max_diff_vs_floor"] <= 1e-5 and a["max_diff_vs_pml"] <= 1e-5
    assert all(math.isfinite(a[k]) and a[k] > 0 for k in ("dynametric_s", "pml_s", "floor_s"))
    assert len(res["b"]) == 14 and all(r["ours_ms"] > 0 for r in res["b"])
    assert c["images"] == 32 and c["ours_img_s"] > 0 and c["floor_img_s"] > 0 and c["decode"] == "gpu"
    assert d["steps_timed"] == 3 and d["ours_img_s"] > 0 and d["floor_img_s"] > 0
    assert len(list((tmp_path / "jpegs" / "imgs").glob("*.jpg"))) == 32
    e = res["e"]  # the CPU engine at 1 and 2 threads (same results, checked inside the part), then at 1 thread
    # with torch's BLAS for the products where the engine uses oneDNN
    from dynametric.metrics.products import cpu_matmul_library

    libraries = [r["library"] for r in e["rows"]]
    assert e["n"] == 1200 and all(r["s"] > 0 for r in e["rows"])
    if cpu_matmul_library() == "onednn":
        assert [r["threads"] for r in e["rows"]] == [1, 2, 1] and libraries == ["onednn", "onednn", "blas"]
        assert 0 <= e["rows"][2]["max_diff"] < 1e-3  # 32-d products: the libraries agree up to near-tie rounding
    else:
        assert [r["threads"] for r in e["rows"]] == [1, 2] and libraries == ["blas", "blas"]
    assert "numpy int32 sort" in e["sort_rates"]
    names = [name for name, _ in res["checks"]]
    assert any(n.startswith("(a) >= 5x") for n in names) and any(n.startswith("(d)") for n in names)
    text = docs.read_text()
    assert text.startswith("# Benchmarks\n\nkept above\n\n") and text.endswith("\n\nkept below\n")
    assert "old figures" not in text and text.count(suite.BEGIN) == 1 and "**(c) embedding JPEG files**" in text
    assert "**(e) CPU ranking engine, threads**" in text
    assert "--small" in text and "no CUDA device" in text
