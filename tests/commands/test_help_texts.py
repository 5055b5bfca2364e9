"""The commands' --help texts are plain text (a module docstring used as a description must not show
reStructuredText markup) and name the defaults the docs promise."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

from dynametric.cli import build_parser

_MARKUP = re.compile(r"``|:(?:func|class|mod|meth|data|attr):`")


def _parsers(parser: argparse.ArgumentParser,
             name: str = "dynametric") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                yield from _parsers(sub, f"{name} {word}")


def _option(command: str, flag: str) -> argparse.Action:
    parser = dict(_parsers(build_parser()))[command]
    return next(a for a in parser._actions if flag in a.option_strings)


def test_no_help_text_shows_markup() -> None:
    found = [name for name, parser in _parsers(build_parser()) if _MARKUP.search(parser.format_help())]
    assert found == []


def test_help_texts_name_the_defaults() -> None:
    shard = _option("dynametric embed", "--shard-size")
    assert shard.default == 4096 and "default 4096" in (shard.help or "")
    budget = _option("dynametric evaluate", "--memory-budget-mb").help or ""
    assert "768 MiB on the CPU" in budget and "3.5 GiB on a GPU" in budget
    assert _option("dynametric data inspect", "-o").option_strings == ["-o", "--option"]


def test_evaluate_help_names_the_clustering_defaults_of_the_metrics() -> None:
    """``--nmi-normalizer``, ``--kmeans-seed``, ``--kmeans-restarts``: each help names its default, which is
    :func:`~dynametric.metrics.evaluate_embeddings`'s (the one training's validation and test use: the run config
    has no such key, so ``--checkpoint`` uses them too)."""
    import inspect

    from dynametric.metrics import evaluate_embeddings

    library = inspect.signature(evaluate_embeddings).parameters
    for flag, name in (("--nmi-normalizer", "nmi_normalizer"), ("--kmeans-seed", "kmeans_seed"),
                       ("--kmeans-restarts", "kmeans_restarts")):
        action = _option("dynametric evaluate", flag)
        assert action.default == library[name].default, flag
        assert f"default {action.default}" in (action.help or ""), flag
