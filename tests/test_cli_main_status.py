"""``dynametric.cli.main(argv)`` returns the exit status from Python for every outcome (argparse's usage errors,
``--help`` and ``--version`` raised ``SystemExit`` while other errors returned 2), and the command line, which calls
``sys.exit(main())``, gives the shell the same status and output as before."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dynametric import __version__
from dynametric.cli import _exit_status, main


@pytest.mark.parametrize(("argv", "status", "stream", "text"), [
    (["--help"], 0, "out", "usage: dynametric"),
    (["evaluate", "--help"], 0, "out", "usage: dynametric evaluate"),
    (["--version"], 0, "out", __version__),
    (["train", "--bogus-option"], 2, "err", "dynametric train: error: unrecognized option --bogus-option"),
    (["nosuchcommand"], 2, "err", "dynametric: error: argument"),
    (["evaluate"], 2, "err", "dynametric evaluate: error:"),  # a command's own error: returned before as well
])
def test_main_returns_the_status_and_prints_what_the_command_line_prints(argv, status, stream, text, capsys):
    assert main(argv) == status
    captured = capsys.readouterr()
    assert text in (captured.out if stream == "out" else captured.err)


@pytest.mark.parametrize(("argv", "status"), [(["--help"], 0), (["--version"], 0), (["train", "--bogus"], 2)])
def test_the_command_line_exits_with_the_same_status(argv, status):
    done = subprocess.run([sys.executable, "-m", "dynametric", *argv], capture_output=True, text=True,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == status
    here = subprocess.run([sys.executable, "-c", "import sys; from dynametric.cli import main; print(main())",
                           *argv], capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert here.returncode == 0 and here.stdout.splitlines()[-1] == str(status)
    assert here.stderr == done.stderr  # the same lines on stderr
    assert "\n".join(here.stdout.splitlines()[:-1]) == done.stdout.rstrip("\n")


def test_exit_status_follows_sys_exit():
    assert _exit_status(None) == 0 and _exit_status(0) == 0 and _exit_status(2) == 2
    assert _exit_status("a message") == 1
