"""benchmarks/merge_stages.py (the merge path's time per stage, another engine.py beside the current one) at a tiny
size: it reports the block it measured, and it fails when the other engine's ranks differ."""

from __future__ import annotations

from pathlib import Path

import dynametric.metrics.engine as engine
from tests.benchmarks.loader import load_benchmark


def _run(capsys, other: Path) -> tuple[int, str]:
    mod = load_benchmark("merge_stages")
    code = mod.main(["--n", "400", "--classes", "150", "--rows", "24", "--first", "8", "--repeats", "1",
                     "--no-profile", "--old", str(other)])
    return code, capsys.readouterr().out


def test_same_engine_is_identical_and_the_block_is_the_coarsest_classes(capsys):
    code, out = _run(capsys, Path(engine.__file__))
    assert code == 0 and "old engine's ranks and indices identical: True" in out
    _, labels = load_benchmark("eval_speed").make_data(400, 128, 150, 100, 12, 0)
    coarse = labels[:, 2]
    expected = sum(int((coarse == coarse[q]).sum()) - 1 for q in range(8, 32))  # leave-one-out coarsest class
    assert f"block: 24 rows x 400 keys, {expected:,} candidates" in out
    for line in ("merge ", "metrics ", "overhead (64 keys, 8 candidates per row)", "  row sort ", "  ties ",
                 "call overhead / (merge + metrics), one thread: "):
        assert line in out


def test_an_engine_with_other_ranks_fails(tmp_path, capsys):
    text = Path(engine.__file__).read_text()
    wrong = "    out_rank += 1\n    if tied.any():"
    assert text.count(wrong) == 1
    other = tmp_path / "engine_off_by_one.py"
    other.write_text(text.replace(wrong, "    out_rank += 2\n    if tied.any():"))
    code, out = _run(capsys, other)
    assert code == 1 and "old engine's ranks and indices identical: False" in out
