"""A module a config's ``imports:`` lists that was edited after this process imported it is not read again
(Python's import caching): that is said, once per load, as the other import notes are (a ``ConfigImportWarning`` in
Python, ``note:`` on the command line); before, the old code stayed registered without a word (a notebook)."""

from __future__ import annotations

import importlib
import os
import sys
import uuid
import warnings
from pathlib import Path

import pytest

from dynametric.cli import main
from dynametric.config import load_config
from dynametric.utils.registry import ConfigImportWarning, import_notes_to


@pytest.fixture
def helper(tmp_path: Path):
    """A fresh module name on sys.path (``NAME.py`` in tmp_path); removed from sys.modules and sys.path after."""
    name = f"dm_helper_{uuid.uuid4().hex[:8]}"
    sys.path.insert(0, str(tmp_path))
    try:
        yield name, tmp_path / f"{name}.py"
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def _edit(path: Path, version: int) -> None:
    """A new version of the file, its modification time 10 s later than before (a coarse clock cannot hide it)."""
    before = path.stat().st_mtime_ns if path.exists() else None
    path.write_text(f"VERSION = {version}\n", encoding="utf-8")
    if before is not None:
        os.utime(path, ns=(before + 10**10, before + 10**10))


def _notes(name: str) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_config(None, [f"imports=[{name}]"])
    return [str(w.message) for w in caught if w.category is ConfigImportWarning]


def _line(name: str, path: Path) -> str:
    return (f"module {name} changed since this process imported it ({path}); the old code is used (restart, or "
            f"importlib.reload({name}))")


def test_an_edited_module_is_said_once_per_load_and_a_reload_ends_it(helper):
    name, path = helper
    _edit(path, 1)
    assert _notes(name) == []  # imported now (a command line list: not announced)
    assert _notes(name) == []  # unchanged: nothing to say
    _edit(path, 2)
    assert _notes(name) == [_line(name, path)]
    assert sys.modules[name].VERSION == 1  # the old code is what is used, as the line says
    assert _notes(name) == [_line(name, path)]  # every load that uses the old code says so
    importlib.reload(sys.modules[name])
    assert sys.modules[name].VERSION == 2 and _notes(name) == []
    seen = []
    _edit(path, 3)
    with import_notes_to(seen.append), warnings.catch_warnings():
        warnings.simplefilter("error", ConfigImportWarning)  # the sink gets it instead of a warning
        load_config(None, [f"imports=[{name}]"])
    assert seen == [_line(name, path)]


def test_a_module_the_user_imported_is_recorded_at_the_first_load_and_a_touch_is_no_change(helper, monkeypatch):
    """Imported by the user's own code: recorded when a config first lists it (nothing said then, whatever its
    bytecode records: a stale .pyc kept by PYTHONDONTWRITEBYTECODE gave a false note), then an edit of its content is
    said; a file touched without a change is not."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    name, path = helper
    _edit(path, 1)
    importlib.import_module(name)
    sys.modules.pop(name)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # the .pyc of version 1 stays, version 2 is imported
    _edit(path, 2)
    importlib.import_module(name)
    assert sys.modules[name].VERSION == 2
    assert _notes(name) == []  # the code in use is the file's: nothing to say (was: 'changed since ...')
    stamp = path.stat().st_mtime_ns + 10**10
    os.utime(path, ns=(stamp, stamp))  # touched, same content
    assert _notes(name) == []
    _edit(path, 3)
    assert _notes(name) == [_line(name, path)]
    assert _notes(name) == [_line(name, path)]


def test_the_command_line_says_it_as_a_note(helper, tmp_path, capsys):
    name, path = helper
    _edit(path, 1)
    config = tmp_path / "run.yaml"
    config.write_text(f"imports: [{name}]\n", encoding="utf-8")
    assert main(["train", "--config", str(config), "--dry-run"]) == 0
    assert "changed since" not in capsys.readouterr().err
    _edit(path, 2)
    assert main(["train", "--config", str(config), "--dry-run"]) == 0
    assert f"note: {_line(name, path)}\n" in capsys.readouterr().err
