"""Output that stdout's encoding cannot hold: a class name `中` or `🐟`, a path `données` when stdout is a Windows
file in cp1252, a Latin-1 locale or `PYTHONIOENCODING=ascii`. `evaluate`, `search`, `index build` stopped with a
UnicodeEncodeError traceback (status 1), `evaluate --json` before writing its JSON; they now write the characters as
escapes (`\\u4e2d`), as stderr does. Closed stdout (`>&-`) and a full one (`> /dev/full`) are said in one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dynametric.cli import main
from tests.commands.test_train import _one_process_env
from tests.retrieval.conftest import make_run

CLASSES = [("chat_é", "félin"), ("狗", "哺乳类"), ("🐟fish", "水生")]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An embed folder and a flat index of 9 images whose classes (and folder) are named in é / CJK / emoji."""
    root = tmp_path_factory.mktemp("enc") / "données 中 🐟"
    rng = np.random.default_rng(0)
    rows = ["path,fine,coarse"]
    for fine, coarse in CLASSES:
        for j in range(3):
            rel = f"{fine}/img_{j}_ü.png"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / rel)
            rows.append(f"{rel},{fine},{coarse}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    ckpt = make_run(root / "run é")
    assert main(["embed", "--checkpoint", str(ckpt), "--csv", str(root / "labels.csv"), "--out",
                 str(root / "emb 中"), "--workers", "0"]) == 0
    assert main(["index", "build", "--embeddings", str(root / "emb 中"), "--kind", "flat",
                 "--out", str(root / "idx 中")]) == 0
    return {"root": root, "emb": root / "emb 中", "index": root / "idx 中"}


def _cli(*argv: str, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    if "stdout" not in kwargs:
        kwargs["capture_output"] = True
    return subprocess.run([sys.executable, "-m", "dynametric", *argv], env={**_one_process_env(), **(env or {})},
                          timeout=300, **kwargs)


@pytest.mark.parametrize("encoding", ["ascii", "cp1252"])
def test_evaluate_and_search_print_what_stdout_cannot_encode_as_escapes(labelled: dict[str, Path], tmp_path: Path,
                                                                       encoding: str) -> None:
    env = {"PYTHONIOENCODING": encoding}
    out = tmp_path / "r 中.json"
    proc = _cli("evaluate", "--embeddings", str(labelled["emb"]), "--metrics", "map", "--json", str(out), env=env)
    err = proc.stderr.decode(encoding)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert list(json.loads(out.read_text(encoding="utf-8"))) == ["fine", "coarse", "mean"]
    text = proc.stdout.decode(encoding)
    assert "emb \\u4e2d: leave-one-out" in text  # the source folder's 中, escaped

    proc = _cli("search", "--index", str(labelled["index"]), "--embeddings", str(labelled["emb"]), "-k", "2", env=env)
    err = proc.stderr.decode(encoding)
    assert proc.returncode == 0 and "Traceback" not in err, err
    text = proc.stdout.decode(encoding)
    assert "\\u72d7" in text and "\\U0001f41ffish" in text  # 狗 and 🐟, escaped
    assert ("chat_é" if encoding == "cp1252" else "chat_\\xe9") in text  # cp1252 has é

    proc = _cli("index", "build", "--embeddings", str(labelled["emb"]), "--out", str(tmp_path / "idx 中"), env=env)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.decode(encoding).endswith("idx \\u4e2d; scales: fine, coarse\n")


def test_json_on_stdout_is_pure_ascii_json_whatever_the_encoding(labelled: dict[str, Path]) -> None:
    """`--json -` and `search --json` print JSON (ASCII, \\u escapes), which any stdout encoding holds."""
    proc = _cli("search", "--index", str(labelled["index"]), "--embeddings", str(labelled["emb"]), "-k", "1",
                "--json", env={"PYTHONIOENCODING": "ascii"})
    assert proc.returncode == 0, proc.stderr
    names = {hit["labels"]["fine"] for q in json.loads(proc.stdout)["queries"] for hit in q["results"]}
    assert names == {fine for fine, _ in CLASSES}


def test_main_restores_stdout_error_handler(capsys: pytest.CaptureFixture[str]) -> None:
    """main reconfigures stdout while a command runs, and gives it back as it was (a notebook calls main)."""
    before = sys.stdout.errors
    assert main(["evaluate", "--example", "--metrics", "map"]) == 0
    assert sys.stdout.errors == before


@pytest.mark.parametrize("argv, what", [
    (["search", "--index", "IDX", "--embeddings", "EMB"], "search prints its results there"),
    (["evaluate", "--embeddings", "EMB", "--json", "-"], "evaluate prints its results there (--json - prints the JSON "
                                                         "there); give --json OUT.json"),
    (["evaluate", "--embeddings", "EMB"], "evaluate prints its results there (without --json); give --json OUT.json"),
    (["data", "inspect", "--format", "synthetic", "--json"],
     "data inspect prints its report there (--json: the JSON)"),
])
def test_closed_stdout_is_refused_in_one_line(labelled: dict[str, Path], argv: list[str], what: str) -> None:
    """`>&-`: search stopped with an AttributeError traceback, evaluate --json - and data inspect --json exited 0
    having written nothing."""
    subst = {"IDX": str(labelled["index"]), "EMB": str(labelled["emb"]), "ROOT": str(labelled["root"])}
    proc = _cli(*[subst.get(a, a) for a in argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                preexec_fn=_close_stdout)
    command = " ".join(argv[:2]) if argv[0] == "data" else argv[0]
    assert proc.returncode == 2
    assert proc.stderr.decode().strip() == f"dynametric {command}: error: standard output is closed; {what}"


def test_closed_stdout_leaves_a_json_file_written(labelled: dict[str, Path], tmp_path: Path) -> None:
    proc = _cli("evaluate", "--embeddings", str(labelled["emb"]), "--metrics", "map", "--json",
                str(tmp_path / "r.json"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_close_stdout)
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr, proc.stderr
    assert "mean" in json.loads((tmp_path / "r.json").read_text())


def _close_stdout() -> None:  # in the child, before it runs Python: `>&-`
    import os

    os.close(1)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("argv", [
    ["search", "--index", "IDX", "--embeddings", "EMB"],
    ["evaluate", "--embeddings", "EMB", "--metrics", "map"],
    ["evaluate", "--embeddings", "EMB", "--metrics", "map", "--json", "-"],
    ["data", "inspect", "--format", "synthetic"],
    ["index", "build", "--embeddings", "EMB", "--out", "OUT"],
])
def test_a_full_stdout_is_said_to_be_standard_output(labelled: dict[str, Path], tmp_path: Path,
                                                     argv: list[str]) -> None:
    subst = {"IDX": str(labelled["index"]), "EMB": str(labelled["emb"]), "ROOT": str(labelled["root"]),
             "OUT": str(tmp_path / "idx")}
    with open("/dev/full", "w") as full:
        proc = _cli(*[subst.get(a, a) for a in argv], stdout=full, stderr=subprocess.PIPE)
    command = " ".join(argv[:2]) if argv[0] in ("data", "index") else argv[0]
    assert proc.returncode == 2
    assert proc.stderr.decode().strip().splitlines()[-1] == (
        f"dynametric {command}: error: writing to standard output: No space left on device")
