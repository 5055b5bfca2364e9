"""Output paths whose bytes are not UTF-8 (`--out $'m\\xe9.pt'` in a UTF-8 locale: Python holds the byte as a
surrogate escape). `export` wrote the file, then stopped with a TypeError traceback when it loaded it back to check it
(torch.jit.load and onnxruntime take a name as UTF-8 text); `train` stopped with a UnicodeEncodeError traceback writing
its config.yaml, whose first line names the run folder. Now export succeeds, train refuses such a folder name in one
line, and run_training writes the header with the byte as `\\xe9`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dynametric.cli import main
from dynametric.retrieval.export import run_exported
from tests.optional import onnx_case

LATIN1 = os.fsdecode(b"m\xe9")  # 'm\udce9': what Python makes of the Latin-1 byte in a UTF-8 locale


@pytest.fixture(autouse=True)
def _utf8_file_names() -> None:
    if os.fsencode("\udce9") != b"\xe9":  # pragma: no cover - a file system encoding without surrogate escapes
        pytest.skip("needs a file system encoding that keeps undecodable bytes (surrogateescape)")


@pytest.mark.parametrize("suffix", [".pt", onnx_case(".onnx")])
def test_export_to_a_name_that_is_not_utf8(run_ckpt: Path, tmp_path: Path, capsys, suffix: str) -> None:
    out = tmp_path / f"{LATIN1}{suffix}"
    assert main(["export", "--checkpoint", str(run_ckpt), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert os.listdir(os.fsencode(tmp_path)) and sorted(os.listdir(os.fsencode(tmp_path))) == sorted(
        [b"m\xe9" + suffix.encode(), b"m\xe9" + suffix.encode() + b".json"])
    info = json.loads((tmp_path / f"{LATIN1}{suffix}.json").read_text(encoding="utf-8"))
    assert info["max_abs_diff"] <= 1e-4  # it was loaded back and compared
    images = torch.rand(2, 3, *info["input"]["shape"][2:])
    assert run_exported(out, images).shape == (2, 16)  # the library's loader reads such a file too


def test_train_refuses_a_run_folder_name_that_is_not_utf8(tmp_path: Path, capsys) -> None:
    folder = tmp_path / os.fsdecode(b"run\xe9")
    for argv, key in ((["train", "--out", str(folder), "trainer.max_epochs=1"], "--out"),
                      (["train", "--resume", str(folder)], "--resume")):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err == (f"dynametric train: error: key '{key}': run folder {tmp_path}/run\\xe9: its name is not UTF-8 "
                       "text, which the run writes into config.yaml and report.html; give a UTF-8 name\n")
    assert os.listdir(tmp_path) == []  # nothing made


_RUN_TWICE = """
import json, os, sys
from dynametric.config import load_config
from dynametric.pipeline import run_training
tmp = sys.argv[1]
cfg = load_config(os.path.join(tmp, "tiny.yaml"), ["trainer.max_epochs=1", "run.report=true", "data.workers=0"])
folder = os.path.join(tmp, os.fsdecode(b"run\\xe9"))
lines = []
run_training(cfg, folder, progress=False, log=lines.append, note=lines.append)
run_training(load_config(os.path.join(folder, "config.yaml")), folder, resume=True, progress=False,
             log=lines.append, note=lines.append)
print(json.dumps(lines))
"""


def test_run_training_names_such_a_folder_with_escapes_in_config_yaml(tmp_path: Path) -> None:
    """The Python API: config.yaml's first line names the folder as text (`\\xe9`), and a second start of the same
    folder is recognised as this run's (the header is compared in the same form). In a child process: Lightning's
    own log lines and warnings name the folder with its surrogate escape, which pytest-xdist cannot send from a
    worker (the worker crashes instead of reporting)."""
    import subprocess
    import sys

    from tests.commands.test_train import TINY

    (tmp_path / "tiny.yaml").write_text(TINY)
    out = subprocess.run([sys.executable, "-c", _RUN_TWICE, str(tmp_path)], capture_output=True)
    assert out.returncode == 0, out.stderr.decode("utf-8", "backslashreplace")[-3000:]
    lines = json.loads(out.stdout.decode("utf-8").splitlines()[-1])
    folder = tmp_path / os.fsdecode(b"run\xe9")
    header = (folder / "config.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith(f"# written by dynametric train for the run folder {tmp_path}/run\\xe9 (process ")
    assert f"run folder: {tmp_path}/run\\xe9" in lines
    assert np.isfinite(json.loads((folder / "metrics.json").read_text())["test"]["mean"]["map@r"])
    assert "dynametric run run\\xe9" in (folder / "report.html").read_text(encoding="utf-8")  # the report's title
    assert not any("was moved or copied" in line for line in lines)  # the header named this very folder
