"""torch_engine_ab loads another version of the torch engine (a file or a git revision) and compares it with today's."""

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
