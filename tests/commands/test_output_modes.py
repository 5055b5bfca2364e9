"""`evaluate --json` and `export --out` over a file the user protected: a 0600 file stays 0600, a read-only one
is refused with one line naming it (both were replaced, exit status 0, as a 0644 file)."""

from __future__ import annotations

import stat
from pathlib import Path

import numpy as np
import pytest

from dynametric.cli import main

GOOD = "fine,coarse\n" + "".join(f"{i % 4},{i % 2}\n" for i in range(12))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def evaluate(tmp_path: Path) -> list[str]:
    emb = tmp_path / "e.npy"
    np.save(emb, np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32))
    lab = tmp_path / "labels.csv"
    lab.write_text(GOOD)
    return ["evaluate", "--embeddings", str(emb), "--labels", str(lab)]


def test_evaluate_json_keeps_the_mode_of_the_result_it_replaces(tmp_path, evaluate, capsys) -> None:
    out = tmp_path / "w" / "o.json"
    assert main([*evaluate, "--json", str(out)]) == 0
    first = out.read_text()
    out.chmod(0o600)
    out.write_text(first.replace("{", "{ ", 1))  # still an earlier result, changed so the replacement shows
    assert main([*evaluate, "--json", str(out)]) == 0
    assert _mode(out) == 0o600 and out.read_text() == first


def test_evaluate_json_over_a_read_only_result_is_refused(tmp_path, evaluate, capsys) -> None:
    out = tmp_path / "w" / "o.json"
    assert main([*evaluate, "--json", str(out)]) == 0
    before = out.read_bytes()
    out.chmod(0o444)
    capsys.readouterr()
    try:
        assert main([*evaluate, "--json", str(out)]) == 2
    finally:
        mode = _mode(out)
        out.chmod(0o644)
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert "queries" not in captured.out  # refused before the evaluation, not after it
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert err.endswith(f"{out} key '--json': is read-only (mode 0444); not replaced: make it writable "
                        "(chmod u+w) to have it replaced, or write to another path"), err
    assert mode == 0o444 and out.read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["o.json"]


def test_export_out_keeps_the_mode_of_the_export_it_replaces(tiny_ckpt, tmp_path, capsys) -> None:
    out = tmp_path / "m.pt"
    argv = ["export", "--checkpoint", str(tiny_ckpt), "--out", str(out), "--no-check"]
    assert main(argv) == 0
    out.chmod(0o600)
    out.with_name("m.pt.json").chmod(0o640)
    assert main(argv) == 0
    assert _mode(out) == 0o600 and _mode(out.with_name("m.pt.json")) == 0o640
    sidecar = out.with_name("m.pt.json").read_bytes()
    out.chmod(0o444)
    capsys.readouterr()
    try:
        assert main(argv) == 2
    finally:
        out.chmod(0o644)
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{out} key '--out': is read-only (mode 0444); not replaced" in err, err
    assert out.with_name("m.pt.json").read_bytes() == sidecar  # its description not replaced either
