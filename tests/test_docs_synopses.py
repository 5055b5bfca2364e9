"""The command synopses of the docs (the plain fenced blocks that start with ``dynametric <command>``) name exactly
the options of the command's parser, the choices they spell out (``--kind flat|ivf|hnsw``) are the parser's, and
an option shown with a default value (``[--batch-size 64]``) has that default."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from dynametric.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
_OPTION = re.compile(r"(?<![\w-])(--?[a-z][a-z-]*)(?:[ =]([^\s\[\]()]+))?")


def _plain_blocks(text: str) -> list[tuple[int, list[str]]]:
    """``(line, lines)`` of every fenced block without a language tag (fences read in order, so a closing fence
    is never taken for an opening one)."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            if current is None:
                current, start = ([] if line.strip() == "```" else None), number
                if current is None:
                    current = ["<tagged>"]
            else:
                if current[:1] != ["<tagged>"]:
                    blocks.append((start, current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def _synopses() -> list[tuple[str, str, str]]:
    """``(where, command, text)`` of every synopsis: a plain block's ``dynametric ...`` line with its indented
    continuation lines, showing optional parts in ``[...]`` (one block may hold several commands)."""
    synopses = []
    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for start, lines in _plain_blocks(page.read_text(encoding="utf-8")):
            found: list[list[str]] = []
            for raw in lines:
                if raw.startswith("dynametric "):
                    found.append([raw])
                elif found and raw.startswith(" "):
                    found[-1].append(raw)
            for group in found:
                if "[" not in "".join(group):  # an example command line, not a synopsis
                    continue
                words = group[0].split()
                command = " ".join(words[1:3]) if words[1] in ("index", "data") else words[1]
                synopses.append((f"{page.relative_to(REPO)}:{start}", command, " ".join(group)))
    return synopses


SYNOPSES = _synopses()


def _parser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    for word in command.split():
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[word]
    return parser


def test_the_synopses_are_found() -> None:
    commands = {c for _, c, _ in SYNOPSES}
    assert {"embed", "merge-embeddings", "index build", "search", "export", "explore", "data inspect"} <= commands


@pytest.mark.parametrize("where,command,text", SYNOPSES, ids=[f"{w}:{c}" for w, c, _ in SYNOPSES])
def test_a_synopsis_matches_the_parser(where: str, command: str, text: str) -> None:
    parser = _parser(command)
    actions = {s: a for a in parser._actions for s in a.option_strings if s not in ("-h", "--help")}
    shown = {m.group(1): m.group(2) for m in _OPTION.finditer(text.split(None, 2 if " " in command else 1)[-1])}
    unknown = sorted(set(shown) - set(actions))
    assert not unknown, f"{where}: `dynametric {command}` has no option {unknown}"
    missing = sorted({a.option_strings[-1] for a in actions.values() if not set(a.option_strings) & set(shown)})
    assert not missing, f"{where}: the synopsis of `dynametric {command}` lacks {missing}"
    for flag, value in shown.items():
        action = actions[flag]
        if value is None or action.nargs == 0:
            continue
        if "|" in value and action.choices is not None:
            assert set(value.split("|")) == {str(c) for c in action.choices}, f"{where}: {flag} {value}"
        elif re.fullmatch(r"[0-9]+(\.[0-9]+)?(e-?[0-9]+)?", value) and action.default is not None:
            assert float(value) == float(action.default), f"{where}: {flag} {value} but the default is {action.default}"


def _section(text: str, heading: str) -> str:
    """The text of the ``## heading`` section of a page, up to the next ``## `` heading."""
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start: end if end >= 0 else len(text)]


def test_the_evaluate_section_of_metrics_md_lists_every_option() -> None:
    """docs/metrics.md's CLI section is where the README sends a reader for every option of `dynametric
    evaluate`: it names each option of the command's parser and no option the parser lacks."""
    actions = [a for a in _parser("evaluate")._actions if a.option_strings and "--help" not in a.option_strings]
    flags = {s for a in actions for s in a.option_strings}
    section = _section((REPO / "docs" / "metrics.md").read_text(encoding="utf-8"), "## CLI: `dynametric evaluate`")
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", section))
    missing = sorted(a.option_strings[-1] for a in actions if not set(a.option_strings) & named)
    assert not missing, f"docs/metrics.md, CLI: `dynametric evaluate` lacks {missing}"
    unknown = sorted(named - flags - {"--help"})
    assert not unknown, f"docs/metrics.md, CLI: `dynametric evaluate` names options it does not have: {unknown}"
    assert {"--config", "--split", "--set", "--precision", "--batch-size", "--workers"} <= flags  # the parser's
