"""Results files the benchmark scripts write, and the rule for replacing one.

Every results file a script writes carries a marker naming the script and the kind of run:

- a JSON object gets ``"written_by": {"script": "<script>.py", "run": "<kind>"}``;
- a Markdown file gets the line ``<!-- written by benchmarks/<script>.py (<kind> run) -->`` (at its end).

The kind is ``full``, ``small`` (``--small``'s tiny sizes) or ``partial`` (a subset of a full run, e.g.
``gpu_suite.py --parts a,c``). A script replaces an existing file only when

1. the file was written by the same script (its marker, or a ``legacy`` test the script supplies for files it wrote
   before the markers existed), and
2. a ``small`` or ``partial`` run never replaces a ``full`` run's file,

unless ``--overwrite`` is given; otherwise it stops before running anything with one line naming the file and the
flag. A file that does not exist is always written.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dynametric.utils.io import atomic_write_json, atomic_write_text

KINDS = ("full", "small", "partial")
MARKER_KEY = "written_by"
_MD_MARKER = re.compile(r"<!-- written by benchmarks/(\S+) \((full|small|partial) run\) -->")

# legacy(path, text) -> the kind of a file the script wrote before the markers existed, None if not recognised
Legacy = Callable[[Path, str], "str | None"]


def run_kind(small: bool = False, partial: bool = False) -> str:
    """``small`` wins over ``partial``; neither is ``full``."""
    return "small" if small else "partial" if partial else "full"


def md_marker(script: str, kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"run kind {kind!r}: expected one of {KINDS}")
    return f"<!-- written by benchmarks/{script} ({kind} run) -->"


def find_md_marker(text: str) -> tuple[str, str] | None:
    """``(script, kind)`` of the last marker line in ``text``, None when it has none."""
    found = _MD_MARKER.findall(text)
    return (found[-1][0], found[-1][1]) if found else None


def strip_md_markers(text: str) -> str:
    """``text`` without its marker lines (a re-render appends a fresh one)."""
    return "".join(line for line in text.splitlines(keepends=True) if not _MD_MARKER.fullmatch(line.strip()))


def stamp_md(text: str, script: str, kind: str) -> str:
    body = strip_md_markers(text).rstrip("\n")
    return f"{body}\n\n{md_marker(script, kind)}\n"


def stamp_json(payload: dict[str, Any], script: str, kind: str) -> dict[str, Any]:
    md_marker(script, kind)  # validates kind
    return payload | {MARKER_KEY: {"script": script, "run": kind}}


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command a results file records, to paste (``shlex.join``: an argument with spaces or parentheses stays
    one argument): ``python benchmarks/<script>`` and ``argv`` (``sys.argv[1:]`` when None)."""
    return shlex.join(["python", f"benchmarks/{script}", *(sys.argv[1:] if argv is None else argv)])


def parse_json(text: str) -> Any:
    """``text`` parsed as JSON, None when it is not JSON (the ``legacy`` tests and :func:`owner` judge what it is)."""
    try:
        return json.loads(text)
    except ValueError:
        return None


def owner(path: Path, script: str, legacy: Legacy | None = None) -> tuple[str, str] | None:
    """``(script, kind)`` of the run that wrote ``path`` (an existing file), None when that cannot be told."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    if Path(path).suffix == ".json":
        data = parse_json(text)
        mark = data.get(MARKER_KEY) if isinstance(data, dict) else None
        if isinstance(mark, dict) and mark.get("run") in KINDS and isinstance(mark.get("script"), str):
            return mark["script"], mark["run"]
    else:
        found = find_md_marker(text)
        if found is not None:
            return found
    kind = legacy(Path(path), text) if legacy is not None else None
    return (script, kind) if kind in KINDS else None


def refusal(path: Path, script: str, kind: str, legacy: Legacy | None = None) -> str | None:
    """The one-line reason ``script``'s ``kind`` run may not replace ``path``; None when it may (or it is absent)."""
    path = Path(path)
    if not path.exists():
        return None
    found = owner(path, script, legacy)
    if found is None:
        return (f"{path}: not written by benchmarks/{script} (it has no marker of it); refusing to replace it "
                f"(--overwrite replaces it)")
    if found[0] != script:
        return (f"{path}: written by benchmarks/{found[0]}, not {script}; refusing to replace it "
                f"(--overwrite replaces it)")
    if kind != "full" and found[1] == "full":
        return (f"{path}: holds a full run of benchmarks/{script}; a {kind} run does not replace it "
                f"(--overwrite does, or write elsewhere)")
    return None


def check_replace(paths: list[Path | None], script: str, kind: str, overwrite: bool,
                  legacy: Legacy | None = None) -> None:
    """SystemExit with :func:`refusal`'s line for the first of ``paths`` (None entries skipped) that may not be
    replaced; nothing with ``overwrite``. Scripts call it before running anything."""
    if overwrite:
        return
    for p in paths:
        if p is not None:
            reason = refusal(Path(p), script, kind, legacy)
            if reason is not None:
                raise SystemExit(reason)


def write_json(path: Path, payload: dict[str, Any], script: str, kind: str, **kwargs: Any) -> None:
    """``payload`` with its marker, atomically (``kwargs`` go to ``atomic_write_json``, e.g. ``default=str``)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(path), stamp_json(payload, script, kind), **kwargs)


def write_md(path: Path, text: str, script: str, kind: str) -> None:
    """``text`` with its marker line at the end, atomically."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), stamp_md(text, script, kind))


def add_overwrite_option(parser: Any) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing results file even when another script or a full run wrote it "
                             "(without it a file is replaced only by the same script, and a --small or partial "
                             "run never replaces a full run's)")
