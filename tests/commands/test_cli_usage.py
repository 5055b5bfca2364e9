"""Usage errors and flags alike across commands: a command word close to one gets a hint, a group without its
action is a usage error like `data`'s, `index build` names itself in its errors, `-k` is taken by every command with
a `--k`, `explore --k` is checked while parsing, a missing embeddings file is said first."""

from __future__ import annotations

import pytest

from dynametric.cli import build_parser, main, parse_args


def _usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(argv) == 2  # returned, not raised (argparse's SystemExit is caught)
    captured = capsys.readouterr()
    assert captured.out == ""  # usage and error on stderr only
    return captured.err.strip().splitlines()


def test_a_mistyped_command_or_action_gets_the_closest(capsys) -> None:
    err = _usage_error(["evaluat", "--example"], capsys)
    assert err[0].startswith("usage: dynametric [-h]")
    assert err[-1] == "dynametric: error: argument COMMAND: invalid choice: 'evaluat'; did you mean evaluate?"
    err = _usage_error(["merge-embedding", "a", "--out", "b"], capsys)
    assert err[-1].endswith("invalid choice: 'merge-embedding'; did you mean merge-embeddings?")
    err = _usage_error(["index", "buld", "--out", "x"], capsys)
    assert err[0].startswith("usage: dynametric index ")
    assert err[-1] == "dynametric index: error: argument ACTION: invalid choice: 'buld'; did you mean build?"
    err = _usage_error(["zzzz"], capsys)  # close to nothing: argparse's list of the choices
    assert "invalid choice: 'zzzz' (choose from" in err[-1] and "did you mean" not in err[-1]


def test_the_help_before_a_mistyped_command_still_answers(capsys) -> None:
    assert main(["--help", "evaluat"]) == 0 and "usage: dynametric" in capsys.readouterr().out


@pytest.mark.parametrize("group", ["index", "data"])
def test_a_group_without_its_action_is_a_usage_error(group: str, capsys) -> None:
    err = _usage_error([group], capsys)
    assert err[0].startswith(f"usage: dynametric {group} [-h] ACTION")
    assert err[-1] == f"dynametric {group}: error: the following arguments are required: ACTION"


def test_index_build_names_itself_in_its_errors(tmp_path, capsys) -> None:
    assert main(["index", "build", "--embeddings", str(tmp_path / "nope"), "--out", str(tmp_path / "idx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dynametric index build: error: ") and "nope" in err


def test_k_is_taken_short_and_long_wherever_there_is_a_k() -> None:
    parser = build_parser()
    assert parse_args(parser, ["evaluate", "--example", "-k", "3", "5"]).k == [3, 5]
    assert parse_args(parser, ["evaluate", "--example", "--k", "3"]).k == [3]
    assert parse_args(parser, ["search", "--index", "i", "--embeddings", "q.npy", "-k", "3"]).k == 3
    assert parse_args(parser, ["explore", "--index", "i", "-k", "100"]).k == 100


@pytest.mark.parametrize("k", ["101", "0", "two"])
def test_explore_k_out_of_range_is_refused_while_parsing(k: str, capsys) -> None:
    err = _usage_error(["explore", "--index", "does-not-exist", "--k", k], capsys)
    assert err[-1].startswith("dynametric explore: error: argument -k/--k: expected an integer from 1 to 100, got")


def test_explore_k_limit_is_the_explorers() -> None:
    from dynametric.commands.explore import MAX_K
    from dynametric.retrieval.explorer import MAX_K as EXPLORER_MAX_K

    assert MAX_K == EXPLORER_MAX_K


@pytest.mark.parametrize("extra", [[], ["--labels", "labels.csv"]])
def test_evaluate_a_missing_embeddings_file_is_said_first(extra: list[str], tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--embeddings", "nope.npy", *extra]) == 2
    assert capsys.readouterr().err.strip() == "dynametric evaluate: error: nope.npy: file not found"
    (tmp_path / "q.npy").write_bytes(b"")
    assert main(["evaluate", "--embeddings", "q.npy", "--gallery-embeddings", "g.npy", *extra]) == 2
    assert capsys.readouterr().err.strip() == "dynametric evaluate: error: g.npy: file not found"


_PATH_DESTS = {"embeddings", "labels", "gallery_embeddings", "gallery_labels", "query_ids", "gallery_ids",
               "query_categories", "checkpoint", "config", "json_out", "per_query_out", "root", "resume", "out",
               "images", "csv", "image_root", "parts", "index", "image", "query_labels"}


def _actions(parser, name="dynametric"):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                yield from _actions(sub, f"{name} {word}")
        else:
            yield name, action


def test_every_file_option_expands_a_tilde_after_an_equals_sign(monkeypatch, tmp_path, capsys) -> None:
    # A shell expands `--out ~/emb` but passes `--out=~/emb` as typed: the command would write a folder named `~`.
    from dynametric.commands import path_arg, path_text

    monkeypatch.setenv("HOME", str(tmp_path))
    seen = set()
    for name, action in _actions(build_parser()):
        if action.dest in _PATH_DESTS:
            seen.add(action.dest)
            assert action.type in (path_arg, path_text), f"{name} {action.option_strings or action.dest}"
    assert seen == _PATH_DESTS
    args = parse_args(build_parser(), ["embed", "--checkpoint=~/run/best.ckpt", "--csv=~/l.csv", "--out=~/emb"])
    assert (args.checkpoint, args.csv, args.out) == (tmp_path / "run/best.ckpt", tmp_path / "l.csv", tmp_path / "emb")
    args = parse_args(build_parser(), ["evaluate", "--embeddings=~/e.npy", "--json=-"])
    assert (args.embeddings, args.json_out) == (f"{tmp_path}/e.npy", "-")
    monkeypatch.chdir(tmp_path / "..")
    assert main(["evaluate", "--example", "--json=~/x.json"]) == 0
    assert (tmp_path / "x.json").is_file() and not (tmp_path / ".." / "~").exists()
    capsys.readouterr()
