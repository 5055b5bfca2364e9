"""The ``dynametric`` command line. Each subcommand lives in :mod:`dynametric.commands`.

A command module exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a callable
``func(args) -> int`` (the exit status). Errors derived from :class:`DynametricError` are printed as one
clear line (exit status 2); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from types import ModuleType

from dynametric import __version__
from dynametric.errors import DynametricError


def _command_modules() -> list[ModuleType]:
    # Explicit list: adding a subcommand means adding its module here.
    from dynametric.commands import data, embed, evaluate, explore, export, index, search, train

    return [evaluate, data, train, embed, index, search, export, explore]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dynametric",
        description="Hierarchy-aware deep metric learning: train, evaluate, embed and search.",
    )
    parser.add_argument("--version", action="version", version=f"dynametric {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except DynametricError as exc:
        print(f"dynametric {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
