"""An unknown option is the error of the command it was given to: that command's usage and prog, and the closest
option of that command as a hint (argparse alone printed the top-level usage and ``dynametric: error:
unrecognized arguments: ...`` for every command)."""

from __future__ import annotations

import pytest

from dynametric.cli import main


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[str]:
    assert main(argv) == 2  # returned, not raised (argparse's SystemExit is caught)
    captured = capsys.readouterr()
    assert captured.out == ""
    return captured.err.strip().splitlines()


def test_typo_on_a_subcommand_names_the_subcommand_and_its_closest_option(capsys):
    err = _refused(["evaluate", "--embedings", "E.npy", "--labels", "L.csv"], capsys)
    assert err[0].startswith("usage: dynametric evaluate [-h] [--embeddings EMBEDDINGS]")
    assert err[-1] == "dynametric evaluate: error: unrecognized option --embedings; did you mean --embeddings?"
    err = _refused(["train", "--dryrun"], capsys)
    assert err[0].startswith("usage: dynametric train ")
    assert err[-1] == "dynametric train: error: unrecognized option --dryrun; did you mean --dry-run?"


def test_nested_actions_top_level_and_several_options(capsys):
    err = _refused(["data", "inspect", "--format", "csv", "--root", ".", "--wokers", "2"], capsys)
    assert err[0].startswith("usage: dynametric data inspect ")
    assert err[-1] == "dynametric data inspect: error: unrecognized option --wokers; did you mean --workers?"
    err = _refused(["--verison"], capsys)
    assert err[0].startswith("usage: dynametric [-h]")
    assert err[-1] == "dynametric: error: unrecognized option --verison; did you mean --version?"
    # --OPTION=VALUE is matched by its name; each unknown option gets its own hint
    err = _refused(["evaluate", "--embedings=E.npy", "--lables", "L.csv"], capsys)
    assert err[-1] == ("dynametric evaluate: error: unrecognized options --embedings=E.npy (did you mean "
                       "--embeddings?), --lables (did you mean --labels?)")


def test_nothing_close_gives_no_hint_and_a_stray_word_is_named(capsys):
    err = _refused(["evaluate", "--zzzzqq"], capsys)
    assert err[-1] == "dynametric evaluate: error: unrecognized option --zzzzqq"
    err = _refused(["evaluate", "stray"], capsys)
    assert err[-1] == "dynametric evaluate: error: unrecognized arguments: stray"
