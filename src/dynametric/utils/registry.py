"""Construct an object from an explicit ``{name: class}`` registry, with errors that name the key."""

from __future__ import annotations

import contextlib
import contextvars
import difflib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from dynametric.errors import ConfigError, first_sentence

IMPORT_HINT = ("a component registered by your own code needs its module imported first: "
               "dynametric --import MODULE ..., or 'imports:' in a config")
"""Said after every unknown component name (loss, miner, sampler, dataset format, method): the name may be one a
user's module registers, which the run did not import (docs/extending.md)."""


def with_import_hint(message: str) -> str:
    """``message`` (an unknown component name's) followed by :data:`IMPORT_HINT`, in the same line."""
    if message.rstrip().endswith("?"):  # ... did you mean 'csv'? A component ...
        return f"{message.rstrip()} {IMPORT_HINT[0].upper()}{IMPORT_HINT[1:]}"
    return f"{message}; {IMPORT_HINT}"


def unknown_name_message(registry: Mapping[str, Any], name: Any, kind: str = "name") -> str:
    """The one-line message of a ``name`` that ``registry`` does not hold: the registry's own ``unknown_message``
    where it has one (the loss and miner registries, :class:`dynametric.pml.PMLAwareRegistry`: what was probably
    meant, pytorch-metric-learning's names included), else ``unknown <kind> 'x'`` with the closest names, or all of
    them; then :data:`IMPORT_HINT` (but after a ``pml:`` name's). The one wording of every configured component's
    unknown name (config loading and the engine's factory)."""
    own = getattr(registry, "unknown_message", None)
    if callable(own):  # a pml: name is pytorch-metric-learning's, never a user's module's: no import hint
        pml = isinstance(name, str) and name.strip().lower().startswith("pml")
        return str(own(name)) if pml else with_import_hint(str(own(name)))
    close = difflib.get_close_matches(name, list(registry), n=3, cutoff=0.6) if isinstance(name, str) else []
    hint = (f"; did you mean {', '.join(repr(c) for c in close)}?" if close
            else f"; available: {', '.join(sorted(registry))}")
    return with_import_hint(f"unknown {kind} {name!r}{hint}")


def qualified_name(obj: Any) -> str:
    """``module.QualifiedName`` of a registry entry: a class or function itself, the function of a
    ``functools.partial``, else the class of an instance (a dataset format, a method). What a run records of each
    component (``components`` in ``run_info.json`` and the checkpoints)."""
    import functools
    import inspect

    if isinstance(obj, functools.partial):
        obj = obj.func
    target = obj if isinstance(obj, type) or inspect.isroutine(obj) else type(obj)
    return f"{target.__module__}.{target.__qualname__}"


def check_module_names(names: Any, key: str) -> list[str]:
    """``names`` as a list of module names (dotted Python identifiers: ``mypkg.components``); anything else is a
    :class:`ConfigError` on ``key`` (an entry's on ``key[i]``)."""
    if not isinstance(names, (list, tuple)):
        raise ConfigError(f"expected a list of module names (e.g. [mypkg.components]), got {names!r} "
                          f"({type(names).__name__})", key=key)
    for i, name in enumerate(names):
        if isinstance(name, str) and name.endswith(".py") and name[:-3] and all(
                part.isidentifier() for part in name[:-3].split(".")):  # a file name: refused before anything runs
            raise ConfigError(f"expected a module name, got the file name {name!r}: write {name[:-3]} (a module "
                              "name, not a file)", key=f"{key}[{i}]")
        if not isinstance(name, str) or not name or not all(part.isidentifier() for part in name.split(".")):
            raise ConfigError(f"expected a module name (Python identifiers joined by '.', e.g. mypkg.components), "
                              f"got {name!r} ({type(name).__name__})", key=f"{key}[{i}]")
    return list(names)


class ConfigImportWarning(UserWarning):
    """The modules a config file lists under ``imports`` are about to be imported, which runs their code: the
    warning :func:`announce_imports` gives in Python (``Embedder.from_pretrained(run_dir)``, ``load_config``); the
    ``dynametric`` command prints the same text as a ``note:`` line instead (:func:`import_notes_to`)."""


_note_sink: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar(
    "dynametric_import_note_sink", default=None)
"""Where :func:`announce_imports` says what it imports: ``None`` = a :class:`ConfigImportWarning` (a context
variable: a command's block sets it for its own thread and context only, and puts the previous one back)."""


@contextlib.contextmanager
def import_notes_to(sink: Callable[[str], None]) -> Iterator[None]:
    """While the block runs, :func:`announce_imports` hands its line to ``sink`` (the command line prints it as
    ``note: ...`` on stderr) instead of warning."""
    token = _note_sink.set(sink)
    try:
        yield
    finally:
        _note_sink.reset(token)


def modules_to_run(names: Sequence[str]) -> list[str]:
    """The modules of ``names`` that importing would run: not imported yet, and found (a top-level package looked up
    on ``sys.path`` without running anything; a module not found is an error of :func:`import_modules` instead)."""
    import importlib.util
    import sys

    out = []
    for name in names:
        if name in sys.modules or name in out:
            continue
        top = name.split(".")[0]
        try:
            found = top in sys.modules or importlib.util.find_spec(top) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            out.append(name)
    return out


def announce_imports(names: Sequence[str], config: Any) -> None:
    """Say, before they are imported, which of the modules ``names`` that the config file ``config`` lists under
    ``imports`` will run (:func:`modules_to_run`): ``importing helpers (imports: of RUN/config.yaml; this runs their
    code)``, as a :class:`ConfigImportWarning` or to the sink of :func:`import_notes_to` (the command line's
    ``note:`` line). Nothing when every module is imported already (or not found). The warning names the first
    line outside the ``dynametric`` package (:func:`dynametric.cpu_kernels.outside_package_level`): the user's code
    that loaded the config."""
    run = modules_to_run(names)
    if not run:
        return
    _say(f"importing {', '.join(run)} (imports: of {config}; this runs their code)")


def _say(line: str) -> None:
    """``line`` to the sink of :func:`import_notes_to` (the command line's ``note:`` line), else as a
    :class:`ConfigImportWarning` naming the first line outside the ``dynametric`` package
    (:func:`dynametric.cpu_kernels.outside_package_level`): the user's code that loaded the config."""
    import warnings

    sink = _note_sink.get()
    if sink is not None:
        sink(line)
    else:
        from dynametric.cpu_kernels import outside_package_level

        # the user's line that loaded the config (load_config, from_pretrained), not the loader's inside dynametric
        warnings.warn(line, ConfigImportWarning, stacklevel=outside_package_level())


_SourceStamp = tuple[int, int, str]  # the source file's (modification time in ns, size, SHA-256 of its bytes)
_IMPORTED: dict[str, tuple[Any, str, _SourceStamp]] = {}
"""For each module :func:`import_modules` imported (or first found imported): the module's ``__spec__`` then (a
reload or a new import gives the module a new one), its source file and that file's stamp then."""


_FOR_WORKERS: list[str] = []
"""Every module :func:`import_modules` imported in this process (a config's ``imports``, ``--import``), in order:
what a data-loading worker imports again (:func:`modules_for_workers`)."""


def modules_for_workers() -> tuple[str, ...]:
    """The modules a config's ``imports`` or ``--import`` had this process import, in order. A DataLoader worker
    started by ``spawn`` or ``forkserver`` (macOS's default; Python 3.14's on Linux) begins in a fresh interpreter
    and has only what unpickling its dataset imports: a module that registers something process-wide (a Pillow
    image plugin such as ``pillow_heif.register_heif_opener()``, a dataset format) is imported there again by
    :func:`import_in_worker`; a forked worker has them already (a second import is a lookup). Only those this
    process still holds (``sys.modules``: one a program removed is not imported again)."""
    import sys

    return tuple(name for name in _FOR_WORKERS if name in sys.modules)


def import_in_worker(names: Sequence[str], worker_id: int | None = None) -> None:
    """Import ``names`` in a data-loading worker (:func:`modules_for_workers`; the main process imported them, so
    they import here too). One that cannot be imported here (its folder left ``sys.path`` since) is passed over:
    the worker is then as it was without this, and an image it cannot read is said as such."""
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - the main process imported it; a worker without it reads as before
            continue


def _source_stamp(path: str, digest_of: _SourceStamp | None = None) -> _SourceStamp | None:
    """``path``'s stamp; where ``digest_of`` has the same time and size, its digest is taken without reading."""
    import hashlib
    import os

    try:
        st = os.stat(path)
        if digest_of is not None and digest_of[:2] == (st.st_mtime_ns, st.st_size):
            return digest_of
        with open(path, "rb") as fh:
            digest = hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, digest


def _changed_since_import(name: str, module: Any) -> str | None:
    """The source file of the imported module ``name`` when its content changed after the stamp recorded for it
    (when :func:`import_modules` imported it, or first found it imported: a module the user imported earlier is
    recorded then, as is a reloaded one), else ``None``. A file touched without a change is not a change; a module
    without a ``.py`` source (zip, extension, namespace package) is never one."""
    path = getattr(module, "__file__", None)
    if not isinstance(path, str) or not path.endswith(".py"):
        return None
    spec = getattr(module, "__spec__", None)
    known = _IMPORTED.get(name)
    if known is None or known[0] is not spec or known[1] != path:  # not recorded yet, or reloaded: recorded now
        stamp = _source_stamp(path)
        if stamp is not None:
            _IMPORTED[name] = (spec, path, stamp)
        return None
    now = _source_stamp(path, digest_of=known[2])
    if now is None or now[2] == known[2][2]:
        return None
    return path


def _record_import(name: str) -> None:
    import sys

    module = sys.modules.get(name)
    path = getattr(module, "__file__", None)
    stamp = _source_stamp(path) if isinstance(path, str) and path.endswith(".py") else None
    if stamp is not None:
        _IMPORTED[name] = (getattr(module, "__spec__", None), str(path), stamp)


def import_modules(names: Any, key: str) -> None:
    """Import each module of ``names`` (:func:`check_module_names`), in order, for what it registers (a loss in
    ``LOSSES``, a dataset format in ``FORMATS``, ...: docs/extending.md). A module that cannot be imported is a
    :class:`ConfigError` on ``key``: ``cannot import 'x.y' (ModuleNotFoundError: No module named 'x')``. Importing
    runs the module's code: only modules installed in this environment or on ``sys.path`` are found (a config's
    modules are said first: :func:`announce_imports`).

    A module imported already is not read again (Python's import caching): where its source file was modified
    since this process imported it, that is said, as :func:`announce_imports` says its line (a
    :class:`ConfigImportWarning`, or the command line's ``note:``): ``module X changed since this process imported
    it; the old code is used (restart, or importlib.reload(X))``: what it registered is the old code's."""
    import importlib
    import sys

    for name in check_module_names(names, key):
        loaded = sys.modules.get(name)
        if loaded is not None:
            changed = _changed_since_import(name, loaded)
            if changed is not None:
                _say(f"module {name} changed since this process imported it ({changed}); the old code is used "
                     f"(restart, or importlib.reload({name}))")
        try:
            importlib.import_module(name)
        except SystemExit as exc:  # sys.exit() at import: one line, not the module's exit status without a word
            raise ConfigError(f"cannot import {name!r} (it called sys.exit({exc.code!r}) at import)", key=key) from None
        except ModuleNotFoundError as exc:
            where = ""
            if exc.name is not None and exc.name == name.split(".")[0]:  # the module itself is not found
                where = ("; is it on PYTHONPATH? the dynametric command does not search the current folder; only "
                         "for code you trust (importing runs it): PYTHONPATH=. dynametric ...")
            raise ConfigError(f"cannot import {name!r} ({type(exc).__name__}: {first_sentence(exc)}){where}",
                              key=key) from exc
        except Exception as exc:  # noqa: BLE001 - whatever the module raised on import is said in the one line
            raise ConfigError(f"cannot import {name!r} ({type(exc).__name__}: {first_sentence(exc)})",
                              key=key) from exc
        if loaded is None:
            _record_import(name)
        if name not in _FOR_WORKERS:
            _FOR_WORKERS.append(name)


def build_registered(registry: Mapping[str, Any], kind: str, name: str, kwargs: dict[str, Any], *,
                     name_key: str, args_key: str | None = None) -> Any:
    """``registry[name](**kwargs)``; an unknown name or a bad argument is a :class:`ConfigError`
    (``unknown <kind> 'x'; expected one of [...]`` at ``name_key``, ``bad arguments for <kind> 'x': ...`` at
    ``args_key``; without one, at the argument the error names, ``'margn'`` of ``unexpected keyword argument
    'margn'``, else at ``kwargs``: the keys of a Python call, whose arguments are its keywords)."""
    if name not in registry:
        raise ConfigError(f"unknown {kind} {name!r}; expected one of {sorted(registry)}", key=name_key)
    try:
        return registry[name](**kwargs)
    except TypeError as err:
        if args_key is None:
            named = [k for k in kwargs if f"'{k}'" in str(err)]
            args_key = named[0] if len(named) == 1 else "kwargs"
        raise ConfigError(f"bad arguments for {kind} {name!r}: {err}", key=args_key) from err
