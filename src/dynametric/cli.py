"""The ``dynametric`` command line. Each subcommand lives in :mod:`dynametric.commands`.

A command module exposes ``register(subparsers)``, which adds its parser and sets ``func`` to a callable
``func(args) -> int`` (the exit status), and ``command_name`` where the command has actions (``data inspect``): the
name its messages start with. Errors derived from :class:`DynametricError` are printed as one
clear line (exit status 2), and so are errors of the file system (``OSError``: permissions, a full disk, a folder
where a file goes: ``<path>: <reason>``); Ctrl-C prints ``interrupted`` (exit status 130, as a shell reports
SIGINT; :class:`~dynametric.errors.Interrupted` adds what to do next, e.g. how to resume), and SIGTERM stops a
command the same way with ``interrupted by SIGTERM`` (exit status 143); a reader that
closes the pipe early (``dynametric search --json | head``) ends it quietly (exit status 141);
anything else is a bug and keeps its traceback.

``dynametric --import MODULE COMMAND ...`` (repeatable) imports ``MODULE`` before the command runs, for the
components it registers (docs/extending.md); a module that cannot be imported is one error line. The modules a
config file lists under ``imports`` (a run's ``config.yaml``, an index's model config, ``train --config``) are said
in a ``note:`` line naming the file before they are imported (their code runs).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Iterator, Sequence
from types import ModuleType

from dynametric import __version__
from dynametric.cpu_kernels import choose_numpy_sort_kernel
from dynametric.errors import DynametricError, os_error_line
from dynametric.utils.limits import resource_error_line


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
    parser.add_argument("--import", dest="plugin_imports", action="append", default=[], metavar="MODULE",
                        help="import MODULE first, for the components it registers (a loss, a dataset format, ...; "
                             "repeatable): dynametric --import mypkg.components train ...; train records the "
                             "modules in the run's config.yaml ('imports:'), so the commands that read the run "
                             "import them too")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        module.register(sub)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)``, except that a command whose parser sets the default ``intermixed`` (the dest of
    its positional ``KEY=VALUE`` words: ``train``'s overrides) takes those words between and after its options too.

    argparse gives a positional only the words before the first option that follows them and leaves later ones over
    as "unrecognized"; those left over that do not start with ``-`` are appended to the positional's list, in the
    order given. A word an option takes as its value stays that option's (``--out a=b`` is the folder ``a=b``).

    An unknown option is the error of the (sub)command it was given to: that command's usage, then
    ``dynametric evaluate: error: unrecognized option --embedings; did you mean --embeddings?`` (exit status 2); the
    hint is the command's closest option, where one is close. argparse alone printed the top-level usage and
    ``dynametric: error: unrecognized arguments: ...`` for any command. A command (or action) word that names none
    but is close to one gets the same hint: ``dynametric: error: argument COMMAND: invalid choice: 'evaluat'; did you
    mean evaluate?`` (argparse alone listed every choice)."""
    _check_command_words(parser, sys.argv[1:] if argv is None else list(argv))
    args, extra = parser.parse_known_args(argv)
    dest = getattr(args, "intermixed", None)
    if dest is not None:
        words = [w for w in extra if not w.startswith("-")]
        setattr(args, dest, [*getattr(args, dest), *words])
        extra = [w for w in extra if w.startswith("-")]
    if extra:
        command = _chosen_parser(parser, args)
        command.error(_unrecognized(command, extra))
    return args


def _check_command_words(parser: argparse.ArgumentParser, words: Sequence[str]) -> None:
    """The usage error of a command (or action: ``index buld``) word close to one of the parser's choices, with the
    closest (difflib); nothing where the words name commands, or are far from every one (argparse's own error then
    lists the choices). A parser with commands takes no option values before its command word, so that word is the
    first one not starting with ``-``; ``--help`` / ``--version`` before it end the check (they answer first)."""
    import difflib

    i = 0
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if sub is None:
            return
        while i < len(words) and words[i].startswith("-"):
            if words[i] in ("--", "-h", "--help", "--version"):
                return
            i += 2 if words[i] in _VALUED_OPTIONS else 1  # --import MODULE: MODULE is no command word
        if i == len(words):
            return
        word = words[i]
        if word not in sub.choices:
            close = difflib.get_close_matches(word, list(sub.choices), n=1, cutoff=0.6)
            if close:
                parser.error(f"argument {sub.metavar or sub.dest}: invalid choice: {word!r}; did you mean {close[0]}?")
            return
        parser, i = sub.choices[word], i + 1


_VALUED_OPTIONS = ("--import",)
"""The top-level options that take a value (the next word)."""


def _chosen_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command that ``args`` chose: ``dynametric evaluate``'s, ``dynametric data inspect``'s;
    the top-level one where no command was chosen."""
    while True:
        sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, sub.dest, None) if sub is not None else None
        if sub is None or name not in sub.choices:
            return parser
        parser = sub.choices[name]


def _unrecognized(parser: argparse.ArgumentParser, extra: Sequence[str]) -> str:
    """``unrecognized option --embedings; did you mean --embeddings?``: the words left over, each option with the
    parser's closest option string (difflib) where one is close."""
    import difflib

    options = [w for w in extra if w.startswith("-") and len(w) > 1]
    if not options:  # a word no positional takes
        return f"unrecognized arguments: {' '.join(extra)}"
    # compared without their dashes, which every option shares (with them `--bogus` was "close" to `--out`)
    known = {opt.lstrip("-"): opt for opt in sorted(parser._option_string_actions, key=len)}

    def hint(word: str) -> str | None:
        name = word.split("=", 1)[0].lstrip("-")  # --embedings=E.npy
        close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
        return known[close[0]] if close else None

    if len(options) == 1 and options[0].split("=", 1)[0] == "--import" and "--import" not in known.values():
        return (f"unrecognized option {options[0]}; --import is an option of dynametric itself, given before the "
                f"command: dynametric --import MODULE {parser.prog.split(' ', 1)[-1]} ...")
    if len(options) == 1:
        near = hint(options[0])
        return f"unrecognized option {options[0]}" + (f"; did you mean {near}?" if near else "")
    parts = [w + (f" (did you mean {near}?)" if (near := hint(w)) else "") for w in options]
    return f"unrecognized options {', '.join(parts)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``dynametric`` with the words ``argv`` (``sys.argv[1:]`` when ``None``) and return its exit status: 0 done
    (``--help`` and ``--version`` too, after printing), 2 a usage error (argparse's usage and ``error:`` line on
    stderr, as for any other error), 130 / 143 interrupted, ... (docs/reliability.md). It raises no ``SystemExit``
    of its own, so ``main([...]) == 0`` works from Python alike for every outcome; the console script and ``python
    -m dynametric`` call ``sys.exit(main())``, which gives the shell the same status."""
    choose_numpy_sort_kernel()  # before any command module imports numpy (docs/metrics.md, Speed on your CPU)
    parser = build_parser()
    try:
        args = parse_args(parser, argv)
    except SystemExit as exc:  # argparse's exit: --help, --version, a usage error (after printing what it prints)
        return _exit_status(exc.code)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 0
    command = getattr(args, "command_name", None) or args.command  # a command with actions names the action too
    from dynametric.utils.registry import import_notes_to

    with _sigterm_stops_like_ctrl_c() as sigterm, import_notes_to(_import_note), _stdout_prints_any_text(), \
            _process_state_kept():
        try:
            if args.plugin_imports:  # before the command reads its config or checks a name (docs/extending.md)
                from dynametric.utils.registry import import_modules

                import_modules(args.plugin_imports, "--import")
            status = int(args.func(args) or 0)
            from dynametric.commands import flush_stdout

            flush_stdout()  # what is still buffered: a full disk is said now, naming standard output, not at exit
            return status
        except DynametricError as exc:
            from dynametric.data.base import unwrap_worker_error  # a loader worker's error: its own line, no traceback

            # the other ranks' processes rank 0 started name their rank: an error of their own (an image of their
            # shard) would else be said nowhere, one they share with rank 0 is told apart from rank 0's line
            rank = _other_rank()
            print(f"dynametric {command}: error{f' (rank {rank})' if rank else ''}: {unwrap_worker_error(exc)}",
                  file=sys.stderr)
            return 2
        except BrokenPipeError:  # `dynametric search --json | head`: the reader left; stop quietly, as `yes | head`
            _silence_stdout()
            return 141  # 128 + SIGPIPE, the status a shell gives a program killed by a broken pipe
        except OSError as exc:  # the file system said no (permissions, disk full, a folder where a file goes)
            print(f"dynametric {command}: error: {os_error_line(exc)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: one line, no traceback; outputs are written atomically
            next_step = getattr(exc, "next_step", None)  # dynametric.errors.Interrupted: e.g. how to resume
            terminated = sigterm.received or getattr(exc, "sigterm", False)
            if not _other_rank():
                print(f"dynametric {command}: interrupted{' by SIGTERM' if terminated else ''}"
                      + (f" ({next_step})" if next_step else ""), file=sys.stderr)
            return 143 if terminated else 130  # 128 + the signal, as a shell reports a process it ended
        except Exception as exc:
            if (line := resource_error_line(exc, command)) is not None:  # out of memory, of open files: one line
                print(f"dynametric {command}: error: {line}", file=sys.stderr)
                return 2
            # another rank's process stopped by SIGTERM while it waited for rank 0 in a collective: rank 0 closed the
            # connection (its own stop), and the collective's error is how the stop reached this process
            if sigterm.received and _other_rank():
                return 143
            raise


def _exit_status(code: object) -> int:
    """The status ``sys.exit(code)`` gives the shell: ``None`` 0, an integer itself, anything else printed on
    stderr and 1."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _import_note(line: str) -> None:
    """A config file's ``imports`` about to run (:func:`dynametric.utils.registry.announce_imports`): ``note: importing
    helpers (imports: of RUN/config.yaml; this runs their code)`` on stderr, before the import (rank 0 alone)."""
    if not _other_rank():
        print(f"note: {line}", file=sys.stderr, flush=True)


def _other_rank() -> int | None:
    """The rank of this process when it is one of a multi-process ``train`` run's other ranks that rank 0 started
    (Lightning's script launcher, :func:`dynametric.commands.train.started_by_rank_0`), else ``None``. Such a process
    stops on the same signals as rank 0, which alone prints the ``interrupted`` line (the others keep their exit
    status and say nothing), and names its rank in its own ``error:`` line."""
    import os

    from dynametric.commands.train import started_by_rank_0

    if not started_by_rank_0():
        return None
    local = os.environ.get("LOCAL_RANK", "")
    return int(local) if local.isdigit() and int(local) > 0 else None  # the launcher sets it (1, 2, ...)


def _signal_launched_ranks(signum: int) -> None:
    """Pass a signal on to the processes Lightning's script launcher started from this one for the other ranks
    (:func:`dynametric.engine.trainer.signal_launched_ranks`); nothing where no Lightning trainer was built."""
    trainer = sys.modules.get("dynametric.engine.trainer")
    if trainer is not None:
        with contextlib.suppress(Exception):  # a signal handler: never an error of its own
            trainer.signal_launched_ranks(signum)


class _SigtermState:
    received = False


@contextlib.contextmanager
def _sigterm_stops_like_ctrl_c() -> Iterator[_SigtermState]:
    """While a command runs, SIGTERM (``timeout``, ``docker stop``, a batch system's preemption, ``kill``) stops it
    as Ctrl-C does: a ``KeyboardInterrupt`` where the command is, so its clean-up runs (``train`` keeps its
    checkpoints and says how to resume, ``embed`` keeps its finished shards, nothing is left half-written), then
    :func:`main` prints ``interrupted by SIGTERM`` and returns 143 (128 + 15). Python's default handler ended the
    process at once (status 143 from a shell, nothing said); inside Lightning's loops, which catch SIGTERM
    themselves, ``train`` exited with status 0 as if finished.

    In rank 0 of a multi-process ``train`` run the signal is first passed on to the processes Lightning's launcher
    started for the other ranks, so that a SIGTERM sent to rank 0 alone stops every rank (each with status 143; rank
    0 alone prints the line). A second SIGTERM, or one received by a forked child (a data-loading worker), ends the
    process as the default handler does. Nothing is installed outside the main thread or where the program already
    handles SIGTERM (a program calling :func:`main` with its own handler keeps it)."""
    import os
    import signal
    import threading

    state = _SigtermState()
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None):
        yield state
        return
    pid = os.getpid()

    def stop(signum: int, frame: object) -> None:
        if os.getpid() == pid:  # rank 0 of a multi-process run: every rank stops (a signal sent to rank 0 alone)
            _signal_launched_ranks(signum)
        if state.received or os.getpid() != pid:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        state.received = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield state
    finally:
        signal.signal(signal.SIGTERM, previous)


STDOUT_ERRORS = "dynametric.printable"
"""The error handler :func:`main` gives stdout while a command runs (:func:`_stdout_prints_any_text`)."""


def _printable(exc: UnicodeError) -> tuple[str, int]:
    """The :data:`STDOUT_ERRORS` handler: a character the stream's encoding lacks written as its escape
    (``\\u4e2d``, ``\\xe9``: Python's ``backslashreplace``), and a byte of a file name that is not UTF-8 (held as a
    surrogate escape) as ``\\xNN``, as :func:`dynametric.data.readers.printable_path` shows it."""
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    text = exc.object[exc.start:exc.end]
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF
                   else c.encode("ascii", "backslashreplace").decode("ascii") for c in text), exc.end


@contextlib.contextmanager
def _stdout_prints_any_text() -> Iterator[None]:
    """While a command runs, stdout writes a character its encoding cannot (a class name ``中`` when stdout is a
    Windows file in cp1252, a Latin-1 locale, ``PYTHONIOENCODING=ascii``; a file name that is not UTF-8) as an
    escape instead of stopping the command with a ``UnicodeEncodeError`` (Python's stdout is ``strict``; stderr
    already writes escapes). The stream's own error handler is restored when :func:`main` returns (it may be called
    in a notebook); a stream that is not a text file with an encoding (``None`` when stdout is closed, a test's
    capture) is left as it is."""
    import codecs

    stream = sys.stdout
    errors = getattr(stream, "errors", None)
    if not isinstance(stream, io.TextIOWrapper) or errors not in ("strict", "surrogateescape"):
        yield
        return
    try:
        codecs.lookup_error(STDOUT_ERRORS)
    except LookupError:
        codecs.register_error(STDOUT_ERRORS, _printable)
    try:
        stream.reconfigure(errors=STDOUT_ERRORS)
    except (ValueError, OSError):  # closed, or a flush of what it holds failed: left as it is
        yield
        return
    try:
        yield
    finally:
        with contextlib.suppress(ValueError, OSError):
            stream.reconfigure(errors=errors)


_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero")
"""The loggers :func:`dynametric.pipeline.run.quiet_lightning` sets to ``WARNING``."""
_RUN_VARIABLES = ("DYNAMETRIC_RUN_CONFIG", "DYNAMETRIC_RUN_DIR")
"""What ``train`` publishes in the environment for the processes of the other ranks it may start
(:data:`dynametric.commands.train.CONFIG_ENV`, :data:`dynametric.pipeline.run_folder.RUN_DIR_ENV`)."""


@contextlib.contextmanager
def _process_state_kept() -> Iterator[None]:
    """What a command changes in the process for its own run is as it was when :func:`main` returns (a notebook calls
    it; docs/extending.md): the warning filters :func:`~dynametric.pipeline.run.quiet_lightning` added (those that
    were there before stay, and so do the filters of the libraries the command imported, e.g. numpy's), the levels
    of the loggers it set, and the variables of :data:`_RUN_VARIABLES` (set, while the run goes on, for the other
    ranks' processes Lightning's launcher starts from this one; they inherit them as they start)."""
    import logging
    import os
    import warnings

    levels = {name: logging.getLogger(name).level for name in _LIGHTNING_LOGGERS}
    variables = {name: os.environ.get(name) for name in _RUN_VARIABLES}
    filters = list(warnings.filters)
    try:
        yield
    finally:
        run = sys.modules.get("dynametric.pipeline.run")
        if run is not None:  # imported: train may have quieted Lightning
            with warnings.catch_warnings():  # the filters quiet_lightning adds, found on an empty list
                warnings.resetwarnings()
                run.quiet_lightning()
                quiet = list(warnings.filters)
            kept = [f for f in warnings.filters if f in filters or f not in quiet]
            if len(kept) < len(warnings.filters):
                warnings.resetwarnings()  # empties the list and tells the warning machinery it changed
                warnings.filters.extend(kept)  # type: ignore[attr-defined]  # a list (typeshed: Sequence)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for name, value in variables.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush of what is still buffered for the closed pipe
    does not raise again at exit."""
    import os

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (e.g. captured by a test)
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
