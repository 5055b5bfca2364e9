"""`dynametric --help`, every subcommand's `--help` and an argument error answer without importing torch (which
takes seconds): the parsers are built from torch-free modules, the commands import torch when they run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

# runs main(argv) in a fresh interpreter and reports whether torch (or Lightning) was imported
_PROBE = """
import sys
from dynametric.cli import main
try:
    main(sys.argv[1:])
except SystemExit:
    pass
print("IMPORTED:", sorted(m for m in ("torch", "lightning") if m in sys.modules), file=sys.stderr)
"""


def _imported(*argv: str) -> tuple[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _PROBE, *argv], capture_output=True, text=True, env=env,
                          timeout=120)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("IMPORTED:")]
    assert line, proc.stderr
    return line[-1], proc.stdout + proc.stderr


def _commands() -> list[list[str]]:
    import argparse

    from dynametric.cli import build_parser

    out = []

    def walk(parser: argparse.ArgumentParser, words: list[str]) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for word, sub in action.choices.items():
                    out.append([*words, word])
                    walk(sub, [*words, word])

    walk(build_parser(), [])
    return out


def test_help_of_every_command_does_not_import_torch() -> None:
    commands = _commands()
    assert ["data", "inspect"] in commands and ["index", "build"] in commands and ["train"] in commands
    for argv in [[], *commands]:
        line, output = _imported(*argv, "--help")
        assert "usage: dynametric" in output, (argv, output)
        assert line == "IMPORTED: []", (argv, line)


def test_an_argument_error_does_not_import_torch() -> None:
    line, output = _imported("evaluate", "--embedings", "x.npy")
    assert "did you mean --embeddings?" in output and line == "IMPORTED: []"
    line, output = _imported("explore", "--index", "nowhere", "--k", "0")
    assert "--k" in output and line == "IMPORTED: []"


def test_the_data_command_lists_the_registry_formats() -> None:
    """commands/data.py writes out the format names (the registry imports torch): the two lists are equal."""
    from dynametric.commands.data import FORMAT_NAMES
    from dynametric.data.registry import FORMAT_NAMES as REGISTRY

    assert FORMAT_NAMES == REGISTRY
