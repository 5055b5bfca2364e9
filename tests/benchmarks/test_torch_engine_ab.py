"""torch_engine_ab loads another version of the torch engine (a file or a git revision) and compares it with today's."""

import subprocess
import sys
from pathlib import Path

import pytest

import dynametric.metrics.torch_engine as current
from tests.benchmarks.loader import load_benchmark

SOURCE = Path(current.__file__).read_text(encoding="utf-8")


def test_same_engine_from_a_file_gives_identical_values(tmp_path):
    ab = load_benchmark("torch_engine_ab")
    old = tmp_path / "old_engine.py"
    old.write_text(SOURCE, encoding="utf-8")
    res = ab.run(300, str(old), "cpu", repeats=1)
    assert res["identical"] is True and res["best_s"]["old"] > 0 and res["best_s"]["new"] > 0
    assert current.run_ranking_torch.__module__ == "dynametric.metrics.torch_engine"  # put back after the run


def test_a_different_engine_is_reported(tmp_path):
    ab = load_benchmark("torch_engine_ab")
    old = tmp_path / "wrong_engine.py"
    # an engine that drops the last query's values: the comparison must see it
    old.write_text(SOURCE + "\n\n_right = run_ranking_torch\n\n\ndef run_ranking_torch(*a, **k):\n"
                   "    accs = _right(*a, **k)\n    for acc in accs:\n        for v in acc.values.values():\n"
                   "            v[-1] = 0.0\n    return accs\n", encoding="utf-8")
    assert ab.run(300, str(old), "cpu", repeats=1)["identical"] is False
    assert ab.main(["--old", str(old), "--n", "300", "--repeats", "1"]) == 1


def test_old_engine_from_git_revision():
    ab = load_benchmark("torch_engine_ab")
    root = Path(ab.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    assert ab.run(300, "HEAD", "cpu", repeats=1)["identical"] is True
    with pytest.raises(SystemExit, match="neither a file nor a git revision"):
        ab.load_old("no-such-revision-xyz")


ISOLATED_IMPORT = """
import importlib, importlib.abc, importlib.machinery, os, runpy, sys
SRC = os.path.realpath(sys.argv[2])


class SourceTreeOnly(importlib.abc.MetaPathFinder):
    # as on the bare GPU machine: no dynametric installed (editable or in site-packages, whose other packages stay
    # importable), only the source tree the script lives in, once the script puts it on sys.path
    def find_spec(self, name, path, target=None):
        if name != "dynametric":
            return None
        for entry in sys.path:
            spec = importlib.machinery.PathFinder.find_spec(name, [entry or os.getcwd()])
            if spec is not None and spec.origin and os.path.realpath(spec.origin).startswith(SRC + os.sep):
                return spec
        raise ModuleNotFoundError("No module named 'dynametric'", name=name)


sys.path[:] = [p for p in sys.path if os.path.realpath(p or os.getcwd()) != SRC]  # an editable install's entry
sys.meta_path.insert(0, SourceTreeOnly())
try:
    import dynametric
    raise SystemExit("dynametric still importable before the script ran")
except ModuleNotFoundError:
    pass
runpy.run_path(sys.argv[1], run_name="not_main")  # the script's module-level imports, main() not run
import dynametric
print(os.path.realpath(dynametric.__file__))
"""


@pytest.mark.parametrize("script", ["torch_engine_ab", "gpu_suite"])
def test_script_imports_the_source_trees_dynametric_when_none_is_installed(script, tmp_path):
    """#QA: torch_engine_ab put only benchmarks/ on sys.path, so on the bare GPU machine (the source tree, no install)
    its ``import dynametric`` (through result_files) failed; both scripts add ROOT/src themselves."""
    path = Path(load_benchmark(script).__file__).resolve()
    proc = subprocess.run([sys.executable, "-I", "-c", ISOLATED_IMPORT, str(path), str(path.parent.parent / "src")],
                          capture_output=True, text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == str((path.parent.parent / "src" / "dynametric" / "__init__.py").resolve())


@pytest.mark.parametrize("device, says", [("cuda", "device 'cuda' asked for, but no CUDA GPU is available here"),
                                          ("cuda:1", "device 'cuda:1' asked for, but no CUDA GPU"),
                                          ("gpu0", "unknown device 'gpu0'; expected auto, cpu, cuda, cuda:N")])
@pytest.mark.parametrize("script", ["torch_engine_ab", "gpu_suite"])
def test_a_device_that_is_not_there_is_one_line_and_exit_2(script, device, says, monkeypatch, capsys, tmp_path):
    """#QA: --device cuda without a GPU was a RuntimeError traceback (reset_peak_memory_stats) in the A/B and a
    ConfigError traceback in the suite; --device auto was torch's "Expected one of cpu, cuda" in the A/B."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    mod = load_benchmark(script)
    argv = ["--old", "HEAD", "--n", "300"] if script == "torch_engine_ab" else ["--small", "--parts", "b"]
    out = tmp_path / "r.json"
    assert mod.main([*argv, "--device", device, "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"{script}.py: key '--device': ") and says in err
    assert "Traceback" not in err and not out.exists()


def test_auto_device_and_the_suites_data_and_units(tmp_path, monkeypatch, capsys):
    """--device auto resolves (the CPU here); the A/B builds its data with the suite's part-(a) generator (same
    class proportion: 11,316 fine classes at 60,502 items) and reports peaks in GiB, the suite's unit."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ab = load_benchmark("torch_engine_ab")
    suite = load_benchmark("gpu_suite")
    assert suite.scaled_classes(suite.FULL["eval_n"]) == suite.FULL["eval_classes"] == (11316, 100, 12)
    assert suite.scaled_classes(suite.FULL["cpu_n"]) == suite.FULL["cpu_classes"]
    assert suite.scaled_classes(300) == (56, 56, 12)
    built: list[tuple] = []
    eval_data = ab.eval_data

    def spy(n, dim, classes):
        built.append((n, dim, classes))
        return eval_data(n, dim, classes)

    monkeypatch.setattr(ab, "eval_data", spy)
    monkeypatch.setattr(ab, "peak_gib", lambda dev: 1.5)  # as on a CUDA device: what the A/B prints, and its unit
    out = tmp_path / "ab.json"
    old = tmp_path / "old_engine.py"
    old.write_text(SOURCE, encoding="utf-8")
    assert ab.main(["--old", str(old), "--n", "300", "--repeats", "1", "--device", "auto", "--json", str(out)]) == 0
    assert built == [(300, 128, (56, 56, 12))]
    printed = capsys.readouterr().out
    assert "n=300 device=cpu:" in printed and "device peak: old 1.50 GiB, new 1.50 GiB" in printed
    import json

    res = json.loads(out.read_text())
    assert res["classes"] == [56, 56, 12] and res["peak_gib"] == {"old": 1.5, "new": 1.5} and "peak_gb" not in res
    x, labels = eval_data(300, 128, (56, 56, 12))
    assert x.shape == (300, 128) and len(torch.unique(labels[:, 0])) == 56  # every fine class present
