"""`dynametric evaluate` under bad input: every case is exit status 2 with one line naming the file (and line or
option) and what was expected, never a traceback or a silently accepted value."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest

from dynametric.cli import main


@pytest.fixture
def emb(tmp_path: Path) -> Path:
    path = tmp_path / "e.npy"
    np.save(path, np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32))
    return path


def _labels(tmp_path: Path, data: bytes | str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


GOOD = "fine,coarse\n" + "".join(f"{i % 4},{i % 2}\n" for i in range(12))


def _one_line_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main(["evaluate", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    return err.splitlines()[-1]


@pytest.mark.parametrize("body, expected", [
    ("fine\n" + "1\n" * 11 + "1" + "0" * 30 + "\n", r"labels.csv:13: column 'fine': label 10{30} does not fit in int64 "
     r"\(labels are signed 64-bit integers\)"),
    (b"fine\n\xe9\xff\n", r"labels.csv:2: not UTF-8 text: byte 0xe9 at column 1 cannot be decoded \(save the file "
                            r"as UTF-8\)"),  # was "at byte 5"
    ("fine\n", r"labels.csv: no label rows after the header"),
    ("fine\n1\x002\n", r"labels.csv: contains NUL bytes"),
    ("fine\n" + "x\n" * 12, r"labels.csv:2: column 'fine': expected an integer label, got 'x'"),
])
def test_bad_label_files(tmp_path, emb, capsys, body, expected) -> None:
    lab = _labels(tmp_path, body)

    assert re.search(expected, _one_line_error(capsys, "--embeddings", str(emb), "--labels", str(lab)))


def test_a_labels_header_that_names_no_scales_is_an_error_at_line_1(tmp_path, emb, capsys) -> None:
    """`fine,mean` stopped with `key 'scale_names': need 2 distinct scale names other than 'mean'`: no file, no
    line, a key the user never set."""
    body = "".join(f"{i % 4},{i % 2}\n" for i in range(12))
    for header, message in (
            ("fine,mean", "a scale column cannot be named 'mean' (an evaluation reports the mean over the scales "
                          "under it); got ['fine', 'mean']"),
            ("fine,protocol", "a scale column cannot be named 'protocol' (an evaluation reports what the evaluation "
                              "protocol excluded under it); got ['fine', 'protocol']"),
            ("fine, ", "header column 2 has no name (empty or blank); every label column needs a scale name (it names "
                       "the scale in results), got ['fine', '']")):
        lab = _labels(tmp_path, f"{header}\n{body}")
        line = _one_line_error(capsys, "--embeddings", str(emb), "--labels", str(lab))
        assert line == f"dynametric evaluate: error: {lab}:1: {message}"


def test_blank_lines_at_the_end_of_a_labels_csv_are_ignored(tmp_path, emb, capsys) -> None:
    """Were an error (`labels.csv:14: empty line`), where the dataset readers ignore them. A blank line between
    rows stays one: row k labels embedding k, and in a one-column file a blank line is an empty label."""
    assert main(["evaluate", "--embeddings", str(emb), "--labels", str(_labels(tmp_path, GOOD))]) == 0
    expected = capsys.readouterr().out
    lab = _labels(tmp_path, GOOD + "\n \n\t\n\n")
    assert main(["evaluate", "--embeddings", str(emb), "--labels", str(lab)]) == 0
    assert capsys.readouterr().out == expected
    assert _one_line_error(capsys, "--embeddings", str(emb), "--labels", str(_labels(tmp_path, GOOD + ",\n"))) == (
        f"dynametric evaluate: error: {lab}:14: column 'fine': expected an integer label, got ''")  # a row, not blank
    one = "fine\n" + "".join(f"{i % 4}\n" for i in range(6)) + "\n" + "".join(f"{i % 4}\n" for i in range(6, 12))
    assert _one_line_error(capsys, "--embeddings", str(emb), "--labels", str(_labels(tmp_path, one))) == (
        f"dynametric evaluate: error: {lab}:8: blank line between label rows (row k labels embedding k, and in a "
        "one-column file a blank line is an empty label; blank lines are allowed only at the end of the file)")


def test_utf8_bom_is_not_part_of_the_first_scale_name(tmp_path, emb, capsys) -> None:
    lab = _labels(tmp_path, b"\xef\xbb\xbf" + GOOD.encode())
    assert main(["evaluate", "--embeddings", str(emb), "--labels", str(lab)]) == 0
    table = capsys.readouterr().out
    assert "\ufeff" not in table and "\nfine " in table


def test_unreadable_labels_file(tmp_path, emb, capsys, monkeypatch) -> None:
    lab = _labels(tmp_path, GOOD)
    real = Path.read_bytes

    def denied(self: Path) -> bytes:  # what a 000 permission gives a non-root user
        if self == lab:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    assert _one_line_error(capsys, "--embeddings", str(emb), "--labels", str(lab)).endswith(
        f"{lab}: Permission denied")


def test_json_onto_a_folder_and_onto_a_full_disk(tmp_path, emb, capsys, monkeypatch) -> None:
    lab = _labels(tmp_path, GOOD)
    (tmp_path / "out").mkdir()
    line = _one_line_error(capsys, "--embeddings", str(emb), "--labels", str(lab), "--json", str(tmp_path / "out"))
    assert line.endswith(f"{tmp_path / 'out'} key '--json': is a folder; expected the path of a file to write")

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    target = tmp_path / "r.json"
    line = _one_line_error(capsys, "--embeddings", str(emb), "--labels", str(lab), "--json", str(target))
    assert "No space left on device" in line and "nothing was left half-written" in line
    assert not target.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("argv, expected", [
    (["--memory-budget-mb", "-5"], "argument --memory-budget-mb: expected a positive finite number, got '-5'"),
    (["--memory-budget-mb", "nan"], "argument --memory-budget-mb: expected a positive finite number, got 'nan'"),
    (["--kmeans-restarts", "0"], "argument --kmeans-restarts: expected a positive integer, got '0'"),
    (["--k", "1", "0"], "argument -k/--k: expected a positive integer, got '0'"),
])
def test_impossible_option_values(tmp_path, emb, capsys, argv, expected) -> None:
    lab = _labels(tmp_path, GOOD)
    assert main(["evaluate", "--embeddings", str(emb), "--labels", str(lab), *argv]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(expected)


@pytest.mark.parametrize("metric", ["abc", "", "1e", "200", "-1", "nan"])
def test_a_bad_fnmr_percentage_says_what_is_expected(tmp_path, emb, capsys, metric) -> None:
    """`fnmr@fmr=abc` quoted float()'s `could not convert string to float: 'abc'`, not what was expected."""
    line = _one_line_error(capsys, "--embeddings", str(emb), "--labels", str(_labels(tmp_path, GOOD)),
                           "--metrics", f"fnmr@fmr={metric}")
    assert line == (f"dynametric evaluate: error: key 'metrics': bad metric 'fnmr@fmr={metric}': fnmr@fmr=<p> needs "
                    f"a percentage p in [0, 100], got {metric!r}")


def test_a_budget_below_one_byte_is_refused(tmp_path, emb, capsys) -> None:
    # int(1e-7 * 2**20) is 0 bytes: it ran with a zero budget (one row per chunk) instead of saying so
    line = _one_line_error(capsys, "--embeddings", str(emb), "--labels", str(_labels(tmp_path, GOOD)),
                           "--memory-budget-mb", "1e-7")
    assert line.endswith("key '--memory-budget-mb': 1e-07 MB is less than one byte")


@pytest.mark.parametrize("budget", [0, -5, 1.5, True, "1e6"])
def test_library_budget_must_be_a_positive_integer(budget) -> None:
    from dynametric.errors import ConfigError
    from dynametric.metrics import evaluate_embeddings

    with pytest.raises(ConfigError, match=r"key 'memory_budget_bytes': memory_budget_bytes must be a positive "
                                          r"integer \(bytes\) or None, got "):
        evaluate_embeddings(np.eye(4, dtype=np.float32), [0, 0, 1, 1], memory_budget_bytes=budget)


@pytest.mark.parametrize("value, works, expected", [
    ("openblas", True, "key 'DYNAMETRIC_CPU_MATMUL': got 'openblas'; expected auto, onednn or blas (environment "
                       "variable)"),
    ("onednn", False, "key 'DYNAMETRIC_CPU_MATMUL': onednn required, but torch's oneDNN matrix product does not work "
                      "in this torch build"),
])
def test_bad_cpu_matmul_variable(tmp_path, emb, capsys, monkeypatch, value, works, expected) -> None:
    from dynametric.metrics import products

    monkeypatch.setenv(products.CPU_MATMUL_ENV, value)
    monkeypatch.setattr(products, "_onednn_works", lambda: works)
    products.cpu_matmul_library.cache_clear()  # the library is chosen once per process: choose again here
    try:
        err = _one_line_error(capsys, "--embeddings", str(emb), "--labels", str(_labels(tmp_path, GOOD)))
    finally:
        monkeypatch.undo()
        products.cpu_matmul_library.cache_clear()
    assert err.startswith(f"dynametric evaluate: error: {expected}")


# ------------------------------------------------- --checkpoint: the run's test protocol checked as `train` checks it


def test_dyml_scales_the_data_lacks_are_named_as_train_names_them(tmp_path, capsys) -> None:
    from tests.dyml.helpers import write_release
    from tests.dyml.test_train_hook import TINY

    root = write_release(tmp_path / "dyml_vehicle", "vehicle")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(TINY.format(fmt="dyml-vehicle", root=root, variant="vehicle", mode="detect", loss="{name: CSLLoss}")
                   .replace("max_epochs: 2", "max_epochs: 1").replace("report: true", "report: false"))
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    capsys.readouterr()
    scales = "method.kwargs.scales=[fine,mid,coarse]"
    expected = ("<command line> key 'method.kwargs.scales': scale 'mid' has no query_mid / gallery_mid split; "
                "expected scale names of the data: fine, middle, coarse; did you mean 'middle'?")
    assert main(["train", "--config", str(cfg), "--dry-run", scales]) == 2
    assert capsys.readouterr().err.strip() == f"dynametric train: error: {expected}"
    assert _one_line_error(capsys, "--checkpoint", str(tmp_path / "run" / "best.ckpt"), "--set", scales) == (
        f"dynametric evaluate: error: {expected}")


def test_a_split_the_data_lacks_names_the_split_option(tmp_path, capsys) -> None:
    """`--split` chose the split: the error names it (the data layer's word for it, `split`, was printed)."""
    from tests.retrieval.conftest import make_run

    ckpt = make_run(tmp_path / "run", dim=8)
    assert _one_line_error(capsys, "--checkpoint", str(ckpt), "--split", "vall") == (
        "dynametric evaluate: error: key '--split': split must be one of ['train', 'val', 'test'], got 'vall'")


def test_protocol_and_eval_keys_given_with_set_name_the_command_line(tmp_path, capsys) -> None:
    """A bad eval or protocol key given with `--set` is named with its origin, as `train KEY=VALUE` names it: the
    query -> gallery checks (raised while the splits are read) and the distance (refused only by the metrics
    before) said `key 'eval.query_in_gallery': ...` and `key 'distance': ...`."""
    from tests.retrieval.conftest import make_run

    ckpt = make_run(tmp_path / "run", dim=8)
    qg = ("--set", "eval.protocol=query_gallery", "--set", "eval.query_split=test")
    assert _one_line_error(capsys, "--checkpoint", str(ckpt), *qg, "--set", "eval.gallery_split=val", "--set",
                           "eval.query_in_gallery=true") == (
        "dynametric evaluate: error: <command line> key 'eval.query_in_gallery': is true, but the items of split "
        "'test' are not files, so nothing tells which query is in the gallery")
    # the key the check names was set by the run's config file: its file and line, as train names them
    line = next(i for i, text in enumerate((tmp_path / "run" / "config.yaml").read_text().splitlines(), 1)
                if "query_in_gallery" in text)
    assert _one_line_error(capsys, "--checkpoint", str(ckpt), *qg, "--set", "eval.gallery_split=test").startswith(
        f"dynametric evaluate: error: {tmp_path / 'run' / 'config.yaml'}:{line} key 'eval.query_in_gallery': is "
        "false, but 900 of the 900 queries of split 'test' are also in the gallery split 'test'")
    assert _one_line_error(capsys, "--checkpoint", str(ckpt), "--set", "eval.distance=manhattan") == (
        "dynametric evaluate: error: <command line> key 'eval.distance': expected one of ['cosine', 'euclidean'], "
        "got 'manhattan'")
    assert main(["train", "--dry-run", "eval.distance=manhattan"]) == 2  # train refuses it as the config loads too
    assert capsys.readouterr().err.strip() == (
        "dynametric train: error: <command line> key 'eval.distance': expected one of ['cosine', 'euclidean'], got "
        "'manhattan'")


def test_the_dataset_root_and_reader_options_are_named_as_the_run_sets_them(tmp_path, capsys) -> None:
    """The data readers' errors about the root said `key 'root': ...` (and a missing root `/data: dataset root not
    found`): a run names `data.root` and `data.options.<name>` with where they were set, as `train` does."""
    from tests.retrieval.conftest import make_run

    ckpt = make_run(tmp_path / "run", dim=8)
    config = tmp_path / "run" / "config.yaml"
    line = next(i for i, text in enumerate(config.read_text().splitlines(), 1) if text.strip() == "root: null")
    assert _one_line_error(capsys, "--checkpoint", str(ckpt), "--set", "data.format=csv") == (
        f"dynametric evaluate: error: {config}:{line} key 'data.root': a dataset root directory is required "
        "(expected a CSV file with columns path, split, <scales...> or a folder holding it)")
    missing = tmp_path / "missing"
    assert _one_line_error(capsys, "--checkpoint", str(ckpt), "--set", "data.format=cub200", "--set",
                           f"data.root={missing}") == (
        f"dynametric evaluate: error: <command line> key 'data.root': dataset root not found: {missing} (expected "
        "CUB_200_2011 with images.txt)")
    assert _one_line_error(capsys, "--checkpoint", str(ckpt), "--set", "data.options.images_per_class=two") == (
        "dynametric evaluate: error: <command line> key 'data.options.images_per_class': images_per_class must be "
        "an integer >= 1, got 'two'")  # was a TypeError traceback
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "labels.csv").write_text("path,split,fine\na.png,test,0\n")
    assert _one_line_error(capsys, "--checkpoint", str(ckpt), "--set", "data.format=csv", "--set",
                           f"data.root={tmp_path / 'data'}", "--set", "data.options.image_root=imgs").startswith(
        "dynametric evaluate: error: <command line> key 'data.options.image_root': folder not found: ")
