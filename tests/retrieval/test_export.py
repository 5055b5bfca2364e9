"""Exported embedders (TorchScript, ONNX) give the eager model's embeddings within 1e-4 (max absolute difference),
on a batch size other than the one used for export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dynametric.cli import main
from dynametric.errors import DynametricError
from dynametric.models import build_embedder
from dynametric.retrieval.export import (
    SingleOutput,
    check_export,
    example_input,
    export_onnx,
    export_torchscript,
    run_exported,
)
from tests.optional import onnx_case

ATOL = 1e-4


@pytest.fixture(scope="module")
def two_head_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_embedder(backbone="simple_cnn", embedding_dim=8, num_heads=2, head_dims=[8, 4],
                          backbone_kwargs={"width": 4, "depth": 2}).eval()


@pytest.mark.parametrize("fmt", ["torchscript", onnx_case("onnx")])
def test_exported_model_matches_eager(two_head_model, tmp_path: Path, fmt: str) -> None:
    """Two heads named ``class`` / ``shared`` (Sharing Matters): the frozen trace and the ONNX fallback handle the
    keyword-named submodule; the concatenated head is exported."""
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "m.pt")
    if fmt == "onnx":
        assert export_onnx(two_head_model, out, example_input(3, 32, batch=2), head="concat") == "torchscript"
    else:
        export_torchscript(two_head_model, out, example_input(3, 32, batch=2), head="concat")
    probe = example_input(3, 32, batch=5, seed=7)
    got = run_exported(out, probe)
    with torch.no_grad():
        ref = SingleOutput(two_head_model, "concat")(probe).numpy()
    assert got.shape == (5, 12)
    assert np.max(np.abs(got - ref)) <= ATOL
    assert check_export(two_head_model, out, probe, "concat", ATOL) <= ATOL
    # a different model does not pass the check (the comparison can fail)
    other = build_embedder(backbone="simple_cnn", embedding_dim=8, num_heads=2, head_dims=[8, 4],
                           backbone_kwargs={"width": 4, "depth": 2}).eval()
    with pytest.raises(DynametricError, match="differs from the eager model"):
        check_export(other, out, probe, "concat", ATOL)


@pytest.mark.parametrize(("name", "fmt", "exporter"), [("embedder.pt", "torchscript", "torch.jit.trace+freeze"),
                                                     onnx_case("embedder.onnx", "onnx", "dynamo")])
def test_export_command_writes_model_and_sidecar(run_ckpt: Path, tmp_path: Path, capsys, name, fmt, exporter) -> None:
    out = tmp_path / name
    assert main(["export", "--checkpoint", str(run_ckpt), "--out", str(out)]) == 0
    info = json.loads((tmp_path / f"{name}.json").read_text())
    assert info["format"] == fmt and info["exporter"] == exporter
    assert info["input"]["shape"] == ["batch", 3, 32, 32]
    assert info["max_abs_diff"] <= info["tolerance"] == ATOL
    assert info["model"]["weights_hash"]
    assert "max |diff|" in capsys.readouterr().out


def test_export_never_overwrites_a_file_it_did_not_write(run_ckpt: Path, tmp_path: Path, capsys) -> None:
    """--out onto the user's own file (or beside the user's own .json) is refused and both stay as they were; an
    earlier export of the same file is replaced; a suffix that does not fit the format is one line."""
    mine = tmp_path / "mine.pt"
    mine.write_text("MYDATA")
    assert main(["export", "--checkpoint", str(run_ckpt), "--out", str(mine)]) == 2
    err = capsys.readouterr().err.strip()
    assert "exists and is not an earlier export of dynametric" in err and str(mine) in err and "\n" not in err
    assert mine.read_text() == "MYDATA" and not (tmp_path / "mine.pt.json").exists()
    side = tmp_path / "other.onnx.json"
    side.write_text("MYJSON")
    assert main(["export", "--checkpoint", str(run_ckpt), "--out", str(tmp_path / "other.onnx")]) == 2
    assert str(side) in capsys.readouterr().err
    assert side.read_text() == "MYJSON" and not (tmp_path / "other.onnx").exists()
    out = tmp_path / "model.pt"
    assert main(["export", "--checkpoint", str(run_ckpt), "--out", str(out)]) == 0
    assert "max_abs_diff" in json.loads((tmp_path / "model.pt.json").read_text())
    assert main(["export", "--checkpoint", str(run_ckpt), "--out", str(out), "--no-check"]) == 0  # its own: replaced
    assert "max_abs_diff" not in json.loads((tmp_path / "model.pt.json").read_text()) and out.stat().st_size > 0
    for name, extra, needle in (("emb.txt", [], "a torchscript export is written to a .pt / .pth / .ts file"),
                                ("emb.pt", ["--format", "onnx"], "an onnx export is written to a .onnx file")):
        capsys.readouterr()
        assert main(["export", "--checkpoint", str(run_ckpt), "--out", str(tmp_path / name), *extra]) == 2
        assert needle in capsys.readouterr().err
        assert not (tmp_path / name).exists()


def test_a_sidecar_of_the_users_own_is_named_as_such(run_ckpt: Path, tmp_path: Path, capsys) -> None:
    """The user's own `fresh.pt.json` beside a new `--out fresh.pt` read `fresh.pt.json: exists and is not an earlier
    export ... (no sidecar fresh.pt.json naming it)`; it says what the file is in the way of."""
    side = tmp_path / "fresh.pt.json"
    side.write_text('{"mine": true}')
    assert main(["export", "--checkpoint", str(run_ckpt), "--out", str(tmp_path / "fresh.pt")]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dynametric export: error: {side} key '--out': exists and is not the sidecar of an earlier export of "
        "dynametric (export --out fresh.pt writes its description to fresh.pt.json); it is not overwritten: choose "
        "another --out, or remove the file yourself")
    assert side.read_text() == '{"mine": true}' and not (tmp_path / "fresh.pt").exists()
    mine = tmp_path / "mine.pt"
    mine.write_text("MYDATA")
    assert main(["export", "--checkpoint", str(run_ckpt), "--out", str(mine)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dynametric export: error: {mine} key '--out': exists and is not an earlier export of dynametric (no sidecar "
        "mine.pt.json naming it); it is not overwritten: choose another --out, or remove the file yourself")


def test_export_removes_what_a_killed_export_of_its_file_left(run_ckpt: Path, tmp_path: Path) -> None:
    """A killed (or, before, aborted) export left `.m.pt.XXXXXXXX.tmp` beside `--out`, which no command removed: the
    next export of that file removes its own and its sidecar's, nothing else; a refused export removes nothing."""
    stale = [tmp_path / ".m.pt.ab12cd34.tmp", tmp_path / ".m.pt.json.x_y_z_09.tmp"]
    kept = [tmp_path / ".m.pt.AB12CD34.tmp", tmp_path / ".other.pt.ab12cd34.tmp", tmp_path / ".m.pt.ab12cd3.tmp",
            tmp_path / "m.pt.ab12cd34.tmp", tmp_path / ".m.pt.ab12cd34.tmp.bak"]
    for p in stale + kept:
        p.write_text("x")
    (tmp_path / "m.pt.json").write_text("{}")  # the user's: the export is refused and removes nothing
    assert main(["export", "--checkpoint", str(run_ckpt), "--out", str(tmp_path / "m.pt"), "--no-check"]) == 2
    assert all(p.read_text() == "x" for p in stale + kept)
    (tmp_path / "m.pt.json").unlink()
    assert main(["export", "--checkpoint", str(run_ckpt), "--out", str(tmp_path / "m.pt"), "--no-check"]) == 0
    assert not any(p.exists() for p in stale) and all(p.read_text() == "x" for p in kept)
    assert (tmp_path / "m.pt").stat().st_size > 0
