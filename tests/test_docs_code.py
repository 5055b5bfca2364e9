"""Every fenced code block of README.md and docs/*.md is checked, as the documentation promises. A fence may be
indented (a block inside a list item); the block is then checked without that indentation.

* ```` ```python ```` blocks run (each in a fresh namespace, from a scratch folder in which ``configs/`` is the
  repository's). A block that cannot run in a test (it needs a dataset on disk or a download) is preceded by
  ``<!-- docs-test: skip: <reason> -->`` and is then only compiled; the reason is mandatory.
* ```` ```bash ```` blocks preceded by ``<!-- docs-test: run -->`` run each ``dynametric ...`` line through the CLI
  (exit status 0 expected); with ``<!-- docs-test: dry-run -->`` each ``dynametric train ...`` line runs with
  ``--dry-run`` added. Other bash blocks (installs, benchmarks, placeholders such as ``RUN/best.ckpt``) are not run.
"""

from __future__ import annotations

import os
import re
import shlex
import textwrap
from pathlib import Path

import pytest

from tests.optional import HAS_PML

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# a fence may be indented (a block inside a list item); its closing fence has the same indentation, and the block's
# lines lose that indentation
_FENCE = re.compile(r"^([ \t]*)```(\w*)[ \t]*\n(.*?)^\1```[ \t]*$", re.S | re.M)
_MARK = re.compile(r"<!--\s*docs-test:\s*(skip|run|dry-run)\s*(?::\s*(.*?))?\s*-->")


def _page_blocks(name: str, text: str) -> list[tuple[str, str, str, str | None, str | None]]:
    """(id, language, code, marker, reason) of every python / bash block of one page's ``text``."""
    out = []
    for m in _FENCE.finditer(text):
        lang = m.group(2)
        if lang not in ("python", "bash"):
            continue
        line = text.count("\n", 0, m.start()) + 1
        before = text[: m.start()].rstrip().rsplit("\n", 1)[-1]
        mark = _MARK.search(before)
        out.append((f"{name}:{line}", lang, textwrap.dedent(m.group(3)),
                    mark.group(1) if mark else None, mark.group(2) if mark else None))
    return out


def _blocks() -> list[tuple[str, str, str, str | None, str | None]]:
    """(id, language, code, marker, reason) of every python / bash block of every page."""
    return [block for page in PAGES
            for block in _page_blocks(str(page.relative_to(REPO)), page.read_text(encoding="utf-8"))]


BLOCKS = _blocks()
PYTHON = [b for b in BLOCKS if b[1] == "python"]
BASH = [b for b in BLOCKS if b[1] == "bash" and b[3] in ("run", "dry-run")]


def test_the_pages_have_code_and_markers_are_well_formed():
    assert len(PYTHON) >= 8 and BASH
    for where, lang, _, mark, reason in BLOCKS:
        if mark == "skip":
            assert lang == "python" and reason, f"{where}: a skipped block needs a reason"
        if mark in ("run", "dry-run"):
            assert lang == "bash", f"{where}: run/dry-run markers are for bash blocks"


def test_indented_blocks_are_collected_and_dedented():
    """A fence inside a list item is indented; its block runs too, without the indentation."""
    text = ("* an item:\n\n  <!-- docs-test: skip: an example -->\n"
            "  ```python\n  x = 1\n  if x:\n      y = 2\n  ```\n\n"
            "```python\nz = 3\n```\n")
    assert _page_blocks("page.md", text) == [("page.md:4", "python", "x = 1\nif x:\n    y = 2\n", "skip", "an example"),
                                             ("page.md:10", "python", "z = 3\n", None, None)]
    # a known indented block of the docs (inside a list item of docs/metrics.md) is among the blocks that run
    indented = [b for b in PYTHON if b[0].startswith("docs/metrics.md:") and "choose_numpy_sort_kernel()" in b[2]]
    assert len(indented) == 1 and indented[0][3] is None
    assert indented[0][2].startswith("from dynametric.cpu_kernels import")


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    (tmp_path / "configs").symlink_to(REPO / "configs", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("where,code,mark", [(b[0], b[2], b[3]) for b in PYTHON], ids=[b[0] for b in PYTHON])
def test_python_block(where, code, mark, scratch):
    compiled = compile(code, where, "exec")
    if mark == "skip":
        return
    if not HAS_PML and re.search(r"pytorch_metric_learning|\bpml_(loss|miner)\b|[\"']pml:", code):
        pytest.skip("the example uses pytorch-metric-learning (the dev extra installs it)")
    import matplotlib

    matplotlib.use("Agg")
    exec(compiled, {"__name__": "__docs__"})  # noqa: S102 - the documented example itself


@pytest.mark.parametrize("where,code,mark", [(b[0], b[2], b[3]) for b in BASH], ids=[b[0] for b in BASH])
def test_bash_block(where, code, mark, scratch, capsys):
    from dynametric.cli import main

    lines = [ln.split(" #", 1)[0].strip() for ln in code.replace("\\\n", " ").splitlines()]
    commands = [shlex.split(ln) for ln in lines if ln.startswith("dynametric ")]
    assert commands, f"{where}: no dynametric command in a block marked {mark}"
    for argv in commands:
        args = argv[1:]
        if mark == "dry-run":
            assert args[0] == "train", f"{where}: dry-run marks only `dynametric train` lines"
            args = [*args, "--dry-run"]
        assert main(args) == 0, f"{where}: {' '.join(argv)}\n{capsys.readouterr().err}"
    assert os.getcwd() == str(scratch)
