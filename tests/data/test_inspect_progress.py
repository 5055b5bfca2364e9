"""``data inspect`` decoding every image says how far it is on stderr (images done of how many, and the rate, a line
every few seconds at most) and, for a large listing, that ``--no-verify-images`` skips the decoding; stdout (the
report, ``--json``) is unchanged."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

import pytest

from dynametric.commands import data as data_cmd
from dynametric.data import inspect as inspect_mod
from dynametric.data.inspect import inspect_dataset


class _Clock:
    """A clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_progress_lines_are_spaced_and_end_with_the_total():
    out = io.StringIO()
    clock = _Clock(1.0)  # every result 1 s after the one before: a line every 5 results
    progress = inspect_mod._DecodeProgress(out, "train", 23, 4, clock=clock)
    assert list(progress.track(range(23))) == list(range(23))
    lines = out.getvalue().splitlines()
    assert [line.split("decoded ")[1].split(" ")[0] for line in lines] == ["5/23", "10/23", "15/23", "20/23",
                                                                          "23/23"]
    assert lines[0] == "data inspect: split 'train': decoded 5/23 images (1/s, about 18 s left)"
    assert lines[-1].startswith("data inspect: split 'train': decoded 23/23 images (") and "left" not in lines[-1]


def test_a_quick_split_prints_nothing_and_a_large_one_names_the_way_to_skip_decoding(monkeypatch):
    out = io.StringIO()
    list(inspect_mod._DecodeProgress(out, "val", 40, 4, clock=_Clock(0.01)).track(range(40)))
    assert out.getvalue() == ""
    monkeypatch.setattr(inspect_mod, "LARGE_LISTING", 39)
    list(inspect_mod._DecodeProgress(out, "val", 40, 4, clock=_Clock(0.01)).track(range(40)))
    assert out.getvalue().splitlines() == [
        "data inspect: decoding the 40 images of split 'val' to verify them (4 thread(s); each JPEG twice, "
        "milliseconds per image): --no-verify-images skips the decoding and only checks that the files exist"]


def test_inspect_reports_progress_on_the_stream_it_is_given(csv_root: Path, monkeypatch):
    monkeypatch.setattr(inspect_mod, "PROGRESS_EVERY", 0.0)  # a line for every image
    stream = io.StringIO()
    quiet = inspect_dataset("csv", csv_root)
    loud = inspect_dataset("csv", csv_root, progress=stream)
    assert loud == quiet  # the document is the same
    lines = stream.getvalue().splitlines()
    total = sum(s["images"] for s in quiet["splits"].values())
    assert len(lines) == total and all(" images (" in line for line in lines)
    for split, counts in quiet["splits"].items():
        n = counts["images"]
        assert f"data inspect: split {split!r}: decoded {n}/{n} images" in stream.getvalue()
    stream = io.StringIO()
    inspect_dataset("csv", csv_root, verify_images=False, progress=stream)
    assert stream.getvalue() == ""  # nothing decoded, nothing said


def test_the_command_prints_progress_on_stderr_not_stdout(csv_root: Path, monkeypatch,
                                                          capsys: pytest.CaptureFixture[str]):
    monkeypatch.setattr(inspect_mod, "PROGRESS_EVERY", 0.0)
    monkeypatch.setattr(inspect_mod, "LARGE_LISTING", 0)
    parser = argparse.ArgumentParser(prog="dynametric")
    data_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "inspect", "--format", "csv", "--root", str(csv_root), "--json"])
    args.func(args)
    captured = capsys.readouterr()
    json.loads(captured.out)  # stdout is the document alone
    assert "--no-verify-images skips the decoding" in captured.err and "decoded " in captured.err
