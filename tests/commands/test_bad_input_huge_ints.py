"""Integer options whose value goes to faiss (a C int) or sizes a batch loop: a value past 2**31 - 1 is a one-line
usage error (exit 2) naming the option, not a faiss TypeError / OverflowError or an islice ValueError traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynametric.cli import main

HUGE = str(10**20)
EXPECTED = "expected an integer from 1 to 2147483647, got "


def _usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "Traceback" not in "\n".join(err)
    return err[-1]


@pytest.mark.parametrize("option, value", [("--m", "4294967296"), ("--ef-construction", HUGE), ("--ef-search", HUGE),
                                           ("--nlist", HUGE), ("--nprobe", HUGE), ("--m", "0")])
def test_index_build_bounds_the_values_faiss_takes(tmp_path: Path, capsys, option: str, value: str) -> None:
    line = _usage_error(capsys, ["index", "build", "--embeddings", str(tmp_path / "e"), "--kind", "hnsw", option,
                                 value, "--out", str(tmp_path / "i")])
    assert line == f"dynametric index build: error: argument {option}: {EXPECTED}{value!r}"


@pytest.mark.parametrize("value", [HUGE, str(2**31), "-1"])
def test_index_build_ivf_seed_is_bounded(tmp_path: Path, capsys, value: str) -> None:
    line = _usage_error(capsys, ["index", "build", "--embeddings", str(tmp_path / "e"), "--kind", "ivf", "--seed",
                                 value, "--out", str(tmp_path / "i")])
    assert line == f"dynametric index build: error: argument --seed: expected an integer from 0 to 2147483647, got " \
                   f"{value!r}"


@pytest.mark.parametrize("argv", [
    ["evaluate", "--checkpoint", "RUN/best.ckpt"],
    ["embed", "--checkpoint", "RUN/best.ckpt", "--out", "E"],
    ["search", "--index", "I", "--image", "q.png"],
])
def test_batch_size_is_bounded(tmp_path: Path, capsys, argv: list[str]) -> None:
    line = _usage_error(capsys, [*argv, "--batch-size", "99999999999999999999"])
    assert line.endswith(f"argument --batch-size: {EXPECTED}'99999999999999999999'")
    assert _usage_error(capsys, [*argv, "--batch-size", "2147483648"]).endswith(f"{EXPECTED}'2147483648'")
