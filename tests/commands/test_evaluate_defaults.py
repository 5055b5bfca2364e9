"""``dynametric evaluate``'s defaults are the library's: every option of an ``evaluate_embeddings`` keyword argument
either defaults to ``None`` (the library's default, or with ``--checkpoint`` the run's) or to the library's value,
and the help names the library's value, read from :mod:`dynametric.evaluation_defaults` (the parser must not import
torch), the module the library's signature and memory budgets take their values from."""

from __future__ import annotations

import argparse
import inspect
import json

import pytest

from dynametric import evaluation_defaults
from dynametric.cli import build_parser, main
from dynametric.commands import evaluate as command
from dynametric.metrics import DEFAULT_METRICS, evaluate_embeddings
from dynametric.metrics.engine import DEFAULT_MEMORY_BUDGET
from dynametric.metrics.torch_engine import DEFAULT_DEVICE_MEMORY_BUDGET

LIBRARY = inspect.signature(evaluate_embeddings).parameters

# the evaluate_embeddings keyword arguments the command has an option for (device aside: the command's default is
# `auto`, CUDA when there is one, on purpose; the library's None is the CPU engine)
OPTIONS = ("metrics", "k_values", "distance", "memory_budget_bytes", "empty_queries", "asi_cutoff", "nmi_normalizer",
           "kmeans_seed", "kmeans_restarts")

# (module constant, evaluate_embeddings parameter)
CONSTANTS = (("K_VALUES", "k_values"), ("DISTANCE", "distance"), ("EMPTY_QUERIES", "empty_queries"),
             ("ASI_CUTOFF", "asi_cutoff"), ("NMI_NORMALIZER", "nmi_normalizer"), ("KMEANS_SEED", "kmeans_seed"),
             ("KMEANS_RESTARTS", "kmeans_restarts"))


def _help(parser=None) -> str:
    """``dynametric evaluate --help`` with its lines joined (argparse wraps them at the terminal's width)."""
    parser = parser or build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["evaluate"]
    return " ".join(sub.format_help().split())


def test_an_empty_command_line_evaluates_with_the_library_defaults() -> None:
    args = build_parser().parse_args(["evaluate"])
    options, given = command._evaluation_options(args)
    assert given == {}
    assert set(OPTIONS) <= set(options)
    assert {name: options[name] for name in OPTIONS} == {name: LIBRARY[name].default for name in OPTIONS}
    assert options["per_query"] is False and options["device"] == "auto"


def test_the_library_takes_its_defaults_from_the_module_the_command_reads() -> None:
    for constant, parameter in CONSTANTS:
        assert LIBRARY[parameter].default == getattr(evaluation_defaults, constant), parameter
    assert LIBRARY["k_values"].default is evaluation_defaults.K_VALUES
    assert DEFAULT_MEMORY_BUDGET == evaluation_defaults.CPU_MEMORY_BUDGET == 768 * 2**20
    assert DEFAULT_DEVICE_MEMORY_BUDGET == evaluation_defaults.DEVICE_MEMORY_BUDGET == 7 * 2**29
    assert command._DEFAULT_METRICS == DEFAULT_METRICS  # written out for the help: the metric table imports torch


def test_the_help_names_the_library_defaults() -> None:
    text = _help()
    assert f"default: {' '.join(DEFAULT_METRICS)}" in text
    assert f"default {' '.join(map(str, LIBRARY['k_values'].default))};" in text
    for name in ("distance", "empty_queries", "asi_cutoff", "nmi_normalizer", "kmeans_seed", "kmeans_restarts"):
        assert f"default {LIBRARY[name].default}" in text, name
    assert f"default: {DEFAULT_MEMORY_BUDGET / 2**20:g} MiB on the CPU" in text
    assert f"{DEFAULT_DEVICE_MEMORY_BUDGET / 2**30:g} GiB on a GPU" in text
    # the values docs/metrics.md states (a library default changed must change that page too)
    assert "default: 768 MiB on the CPU, 3.5 GiB on a GPU" in text
    assert "default 1 2 4 8;" in text and "default cosine;" in text and "default exclude," in text


def test_a_changed_library_default_changes_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parser reads its defaults and help from the module when it is built: a value changed there is the
    command's (the library's signature is checked to use the same values above)."""
    changed = dict(K_VALUES=(3, 5), DISTANCE="euclidean", EMPTY_QUERIES="count_as_zero", ASI_CUTOFF="7",
                   NMI_NORMALIZER="geometric", KMEANS_SEED=11, KMEANS_RESTARTS=4, CPU_MEMORY_BUDGET=512 * 2**20,
                   DEVICE_MEMORY_BUDGET=5 * 2**30)
    for constant, value in changed.items():
        monkeypatch.setattr(evaluation_defaults, constant, value)
    parser = build_parser()
    args = parser.parse_args(["evaluate"])
    assert (args.asi_cutoff, args.nmi_normalizer, args.kmeans_seed, args.kmeans_restarts) == ("7", "geometric", 11, 4)
    text = _help(parser)
    for expected in ("default 3 5;", "default euclidean;", "default count_as_zero,", "default 7)",
                     "default geometric", "default 11)", "default 4)", "default: 512 MiB on the CPU, 5 GiB on a GPU"):
        assert expected in text, expected


def test_the_command_s_results_are_the_library_s_with_its_defaults(tmp_path, capsys) -> None:
    """End to end: no option given, the command's JSON is ``evaluate_embeddings`` called with no option but the
    command's device."""
    from dynametric.examples import make_example
    from dynametric.utils.io import nan_to_null

    out = tmp_path / "r.json"
    assert main(["evaluate", "--example", "--device", "cpu", "--json", str(out)]) == 0
    q, ql, names = make_example()
    expected = evaluate_embeddings(q, ql, scale_names=names, device="cpu")
    assert json.loads(out.read_text()) == json.loads(json.dumps(nan_to_null(expected)))
    assert f"distance {LIBRARY['distance'].default}, 1200 queries" in capsys.readouterr().out
