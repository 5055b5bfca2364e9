"""Every benchmark script's ``main`` runs in-process at tiny sizes (seconds each) and writes what its docs promise:
the table's columns, the JSON's keys, the marker of benchmarks/result_files.py, a pasteable command line."""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import pytest
import torch

from tests.benchmarks.loader import load_benchmark


def _marker(path: Path, script: str, kind: str = "full") -> None:
    if path.suffix == ".json":
        assert json.loads(path.read_text())["written_by"] == {"script": script, "run": kind}
    else:
        assert path.read_text().rstrip("\n").endswith(f"<!-- written by benchmarks/{script} ({kind} run) -->")


def test_loss_speed_writes_markdown_and_json(tmp_path, capsys):
    pytest.importorskip("pytorch_metric_learning")
    mod = load_benchmark("loss_speed")
    md, js = tmp_path / "t.md", tmp_path / "t.json"
    argv = ["--batch-sizes", "8", "--dim", "8", "--repeats", "1", "--min-time", "0", "--losses", "ContrastiveLoss",
            "ProxyAnchorLoss", "--out", str(md), "--json", str(js)]
    assert mod.main(argv) == 0
    text = md.read_text()
    assert text.startswith(f"`python benchmarks/loss_speed.py {shlex.join(argv)}`") and ".venv" not in text
    assert "embedding 8," in text and "| loss | batch | rounds | dynametric ms | PML ms |" in text
    assert "| ContrastiveLoss | 8 | 1 |" in text and "| ProxyAnchorLoss | 8 | 1 |" in text
    data = json.loads(js.read_text())
    assert data["command"] == f"python benchmarks/loss_speed.py {shlex.join(argv)}" and data["dim"] == 8
    assert [(r["loss"], r["batch"]) for r in data["rows"]] == [("ContrastiveLoss", 8), ("ProxyAnchorLoss", 8)]
    assert all(r["ours_ms"] > 0 and r["abs_diff"] < 1e-4 for r in data["rows"]) and data["machine"].startswith("CPU ")
    _marker(md, "loss_speed.py", "partial")  # two of the losses: a partial run
    _marker(js, "loss_speed.py", "partial")
    assert mod.main(argv) == 0  # its own files are replaced
    foreign = tmp_path / "notes.md"
    foreign.write_text("hand-written\n")
    with pytest.raises(SystemExit, match=f"{foreign}: not written by benchmarks/loss_speed.py .*--overwrite"):
        mod.main([*argv[:-4], "--out", str(foreign)])
    assert foreign.read_text() == "hand-written\n"
    assert mod.main([*argv[:-4], "--out", str(foreign), "--overwrite"]) == 0
    _marker(foreign, "loss_speed.py", "partial")
    # a subset of the losses never replaces a table of all of them
    full = mod.to_markdown([], "python benchmarks/loss_speed.py", 1, 8, "CPU x")
    mod.write_md(md, full, "loss_speed.py", "full")
    with pytest.raises(SystemExit, match=f"{md}: holds a full run of benchmarks/loss_speed.py; a partial run"):
        mod.main(argv)


def test_pddm_mining(tmp_path, capsys):
    js = tmp_path / "m.json"
    assert load_benchmark("pddm_mining").main(["--dim", "8", "--hidden", "16", "--batches", "4", "6", "--repeats", "1",
                                               "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "| batch | pairs (i<j) | score_matrix ms |" in out and "| 4 | 6 |" in out and "| 6 | 15 |" in out
    data = json.loads(js.read_text())
    assert data["dim"] == 8 and [r["pairs"] for r in data["rows"]] == [6, 15]
    assert {"score_s", "mine_faithful_s", "loss_per_pair_s"} <= set(data["rows"][0])
    _marker(js, "pddm_mining.py")


def test_search(tmp_path, capsys):
    pytest.importorskip("faiss")
    js = tmp_path / "s.json"
    argv = ["--sizes", "300", "--dim", "8", "--queries", "10", "--data", "clusters", "--clusters", "8", "--k", "5",
            "--nprobe", "2", "--ef-search", "16", "--m", "4", "--ef-construction", "16", "--repeats", "1",
            "--json", str(js)]
    assert load_benchmark("search").main(argv) == 0
    assert "| vectors | index | parameters | build s | queries/s | speed-up vs flat | recall@10 |" in \
        capsys.readouterr().out
    data = json.loads(js.read_text())
    assert data["command"] == f"python benchmarks/search.py {shlex.join(argv)}" and data["machine"].startswith("CPU ")
    rows = data["rows"]
    assert {r["n"] for r in rows} == {300} and len({r["kind"] for r in rows}) >= 2
    assert all(0.0 <= r["recall"] <= 1.0 and r["qps"] > 0 for r in rows)
    assert any(r["recall"] == 1.0 for r in rows)  # the flat index is exact
    _marker(js, "search.py")


def test_train_throughput(tmp_path, capsys):
    js = tmp_path / "t.json"
    assert load_benchmark("train_throughput").main(
        ["--backbones", "simple_cnn", "--image-size", "16", "--batch-size", "8", "--m", "2", "--steps", "1",
         "--warmup", "1", "--repeats", "1", "--embedding-dim", "8", "--json", str(js)]) == 0
    assert "| backbone | floor img/s (wall) | pipeline img/s (wall) |" in capsys.readouterr().out
    data = json.loads(js.read_text())
    (row,) = data["rows"]
    assert row["backbone"] == "simple_cnn" and row["floor_img_s"] > 0 and row["pipeline_img_s"] > 0
    assert row["ratio_wall"] == pytest.approx(row["pipeline_img_s"] / row["floor_img_s"])
    assert set(data["overhead_cpu_ms_per_batch"]) == {"fetch_ms", "loss_miner_ms"} and data["args"]["steps"] == 1
    _marker(js, "train_throughput.py")


def test_data_throughput(tmp_path, capsys):
    js = tmp_path / "d.json"
    assert load_benchmark("data_throughput").main(
        ["--images", "4", "--width", "40", "--height", "30", "--workers", "0", "--repeats", "1", "--batch-size", "2",
         "--sampler-images", "400", "--sampler-classes", "40", "--json", str(js)]) == 0
    out = capsys.readouterr().out
    assert "| pipeline | s per pass | images/s | vs decode floor |" in out and "| sampler | batches/epoch |" in out
    data = json.loads(js.read_text())
    assert set(data["pipeline"]) == {"decode floor (PIL open + RGB)", "decode + transform, plain loop",
                                     "DataLoader num_workers=0"}
    assert len(data["samplers"]) == 3 and data["synthetic"]["images"] > 0
    _marker(js, "data_throughput.py")


def test_eval_speed_main(tmp_path, capsys):
    js = tmp_path / "e.json"
    argv = ["--n", "300", "--dim", "8", "--classes", "30", "--middle", "6", "--coarse", "2", "--parts", "b",
            "--contenders", "dynametric", "--json", str(js)]
    assert load_benchmark("eval_speed").main(argv) == 0
    assert "| part | contender | wall s | peak RSS MB | x vs floor | peer / contender |" in capsys.readouterr().out
    data = json.loads(js.read_text())
    assert [(r["part"], r["contender"]) for r in data["results"]] == [("b", "dynametric")]
    assert all(r["wall_s"] > 0 for r in data["results"]) and data["command"].startswith("python benchmarks/eval_speed")
    _marker(js, "eval_speed.py")


def test_dyml_synthetic_keeps_the_quoting_of_its_command(tmp_path, capsys):
    mod = load_benchmark("dyml_synthetic")
    md, js = tmp_path / "r.md", tmp_path / "r.json"
    argv = ["--seeds", "0", "--steps", "1", "--items", "2", "--k", "2", "--dim", "8", "--image-size", "8",
            "--methods", "fine-only", "CSL (PxK)", "--out", str(md), "--json", str(js)]
    assert mod.main(argv) == 0
    text = md.read_text()
    first = text.splitlines()[0]
    assert first == f"<!-- generated by: python benchmarks/dyml_synthetic.py {shlex.join(argv)} -->"
    assert shlex.split(first[len("<!-- generated by: "):-len(" -->")])[2:] == argv  # pastes back to the same argv
    assert "| fine-only | 1 |" in text and "| CSL (PxK) | 1 |" in text
    runs = json.loads(js.read_text())["runs"]
    assert sorted(r["method"] for r in runs) == ["CSL (PxK)", "fine-only"]
    assert {"asi", "map", "recall@1"} <= set(runs[0]["result"]["mean"])
    _marker(md, "dyml_synthetic.py")
    _marker(js, "dyml_synthetic.py")
    # --resume keeps the runs (also of a bare list, the file before the markers) and trains none
    js.write_text(json.dumps(runs))
    capsys.readouterr()
    assert mod.main([*argv, "--resume"]) == 0
    assert "seed 0" not in capsys.readouterr().out.split("| method")[0]
    assert mod.read_runs(js) == runs  # nothing trained: the file is left as it was


def test_pddm_synthetic_report_and_rebuild(tmp_path, capsys):
    mod = load_benchmark("pddm_synthetic")
    md, js = tmp_path / "p.md", tmp_path / "p.json"
    argv = ["--methods", "pddm_faithful", "triplet_semihard", "--seeds", "0", "--steps", "2", "--eval-every", "1",
            "--batch-size", "8", "--m", "2", "--dim", "8", "--rerank-k", "2", "--images-per-class", "2",
            "--out", str(md), "--json", str(js)]
    assert mod.main(argv) == 0
    data = json.loads(js.read_text())
    assert data["command"] == f"python benchmarks/pddm_synthetic.py {shlex.join(argv)}"
    assert [r["method"] for r in data["runs"]] == ["pddm_faithful", "triplet_semihard"]
    text = md.read_text()
    assert "| method | R@1 | R@2 | R@4 | R@8 | MAP@R | s/step |" in text and "| pddm_faithful | euclidean |" in text
    assert "| triplet_semihard |" in text and data["env"] in text
    _marker(md, "pddm_synthetic.py")
    _marker(js, "pddm_synthetic.py")
    rebuilt = tmp_path / "again.md"
    assert mod.main(["--seeds", "0", "--from-json", str(js), "--out", str(rebuilt)]) == 0
    assert rebuilt.read_text() == text


def test_sharing_synthetic(tmp_path, capsys):
    md, js = tmp_path / "s.md", tmp_path / "s.json"
    argv = ["--steps", "2", "--seeds", "0", "--methods", "baseline", "mic", "--dim", "8", "--images-per-class", "2",
            "--width", "4", "--clusters", "8", "--out", str(md), "--json", str(js)]
    assert load_benchmark("sharing_synthetic").main(argv) == 0
    text = md.read_text()
    assert f"Command: `python benchmarks/sharing_synthetic.py {shlex.join(argv)}`" in text
    assert "## Test split (unseen classes)" in text and "| baseline | 0 |" in text and "| mic | 0 |" in text
    data = json.loads(js.read_text())
    assert [r["method"] for r in data["results"]] == ["baseline", "mic"]
    assert {"recall@1", "map@r"} <= set(next(iter(data["results"][0]["test"].values())))
    _marker(md, "sharing_synthetic.py")
    _marker(js, "sharing_synthetic.py")


def test_pml_test_suite_arguments_and_swapped_classes(tmp_path, capsys):
    pytest.importorskip("pytorch_metric_learning")
    mod = load_benchmark("pml_test_suite")
    with pytest.raises(SystemExit):  # --pml-repo is required
        mod.main([])
    with pytest.raises(SystemExit):
        mod.main(["--pml-repo", str(tmp_path / "missing")])
    assert "has no losses/ and miners/ test folders" in capsys.readouterr().err
    # the run itself starts PML's own test files in pytest subprocesses (tens of seconds): what it swaps is checked
    names = mod.swapped_names()
    assert {"ContrastiveLoss", "TripletMarginLoss", "MultiSimilarityMiner"} <= set(names) and names == sorted(names)


if sys.platform != "linux":  # pragma: no cover - the CI runs Linux
    pytestmark = pytest.mark.skip("the scripts read /proc")


def test_sampler_speed_prints_its_table(capsys):
    mod = load_benchmark("sampler_speed")
    assert mod.main(["--rows", "2000", "--classes", "200"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "`python benchmarks/sampler_speed.py --rows 2000 --classes 200`" and lines[1].startswith("CPU ")
    rows = [line for line in lines if line.startswith("| `")]
    assert [r.split("`")[1].split("(")[0] for r in rows] == ["MPerClassSampler", "HierarchicalSampler",
                                                             "ThreeScaleSampler"]
    for row in rows:  # batches, then four non-negative times
        cells = [c.strip() for c in row.strip("|").split("|")][1:]
        assert int(cells[0]) > 0 and all(float(c) >= 0 for c in cells[1:])


def test_fnmr_speed_times_this_version_beside_an_older_one(capsys):
    mod = load_benchmark("fnmr_speed")
    here = Path(__file__).resolve().parents[2] / "src" / "dynametric" / "metrics" / "verification.py"
    argv = ["--queries", "40", "--gallery", "300", "--dim", "8", "--classes", "30", "--old", str(here)]
    assert mod.main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"`python benchmarks/fnmr_speed.py {shlex.join(argv)}`\nCPU ")
    assert "| fnmr@fmr, this version |" in out and "| fnmr@fmr, verification.py |" in out
    assert "| recall@k + map@r (ranking) |" in out and "values (fine): fnmr@fmr=1 " in out


def test_decode_ahead(tmp_path, capsys):
    js = tmp_path / "d.json"
    argv = ["--images", "8", "--wh", "40", "30", "--backbone", "simple_cnn", "--size", "16", "--batch", "4",
            "--workers", "0", "--repeats", "1", "--data", str(tmp_path / "jpegs"), "--json", str(js)]
    assert load_benchmark("decode_ahead").main(argv) == 0
    data = json.loads(js.read_text())
    assert data["command"] == f"python benchmarks/decode_ahead.py {' '.join(argv)}" and data["images"] == 8
    row = data["rows"][0]
    assert row["ahead_img_s"] > 0 and row["plain_img_s"] > 0 and row["floor_img_s"] > 0
    assert len(list((tmp_path / "jpegs" / "imgs").glob("*.jpg"))) == 8
    out = capsys.readouterr().out
    assert "repeat 1: decoded ahead " in out and "median: decoded ahead " in out and "CPU " in out
    _marker(js, "decode_ahead.py")
    if not torch.cuda.is_available():
        assert load_benchmark("decode_ahead").main(["--device", "cuda"]) == 2
        assert capsys.readouterr().err.startswith("error: ")
