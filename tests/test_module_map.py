"""docs/architecture.md's "Module map" has one row for every module of the package and names no module that does
not exist, so a newcomer finds every file there and the map cannot fall behind the code.

Which files are modules (the rule of :func:`package_modules`): every ``.py`` file under ``src/dynametric``
(``__pycache__`` aside, ``__main__.py`` included), except an ``__init__.py`` that defines no function and no class
at its top level, i.e. one that only imports, re-exports, sets ``__all__`` or aliases names. An ``__init__.py``
with code of its own (a registry's constructor, a lazy ``__getattr__``, argparse checkers) is a module and has a row.

A row is a table row of the section whose first cell is one path in backticks, relative to ``src/dynametric``
(``data/device_decode.py``); its last cell lists the module's main public names in backticks, and each
of them must be defined or imported at the top level of that module.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "dynametric"
DOC = REPO / "docs" / "architecture.md"
HEADING = "## Module map"

_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|", re.M)
_PY_PATH = re.compile(r"`([A-Za-z0-9_./]+\.py)`")
_IDENTIFIER = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def _defines_code(init: Path) -> bool:
    """Whether an ``__init__.py`` defines a function or a class at its top level."""
    tree = ast.parse(init.read_text(encoding="utf-8"))
    return any(isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for node in tree.body)


def package_modules(package: Path = PACKAGE) -> set[str]:
    """The modules the map must list, as POSIX paths relative to ``package`` (see the module docstring)."""
    out = set()
    for path in package.rglob("*.py"):
        if "__pycache__" in path.parts:
            continue
        if path.name == "__init__.py" and not _defines_code(path):
            continue
        out.add(path.relative_to(package).as_posix())
    return out


def map_section(text: str) -> str:
    """The ``## Module map`` section of a page: from its heading to the next ``## `` heading or the end."""
    start = text.index(f"\n{HEADING}\n")
    end = text.find("\n## ", start + 1)
    return text[start: end if end >= 0 else len(text)]


def top_level_names(module: Path) -> set[str]:
    """Names a module binds at its top level: functions, classes, assignments, imports (not under ``if``)."""
    names = set()
    for node in ast.parse(module.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((alias.asname or alias.name).split(".")[0] for alias in node.names)
    return names


def map_problems(section: str, modules: set[str], package: Path = PACKAGE) -> list[str]:
    """Everything wrong with a module map ``section`` for the package's ``modules``, one line each."""
    problems = []
    rows = _ROW.findall(section)
    seen: set[str] = set()
    for path in rows:
        if path in seen:
            problems.append(f"{path}: more than one row")
        seen.add(path)
    problems += [f"{path}: a module without a row" for path in sorted(modules - seen)]
    problems += [f"{path}: a row for no module (deleted, renamed, or an __init__.py without code)"
                 for path in sorted(seen - modules)]
    problems += [f"{path}: named in the section but not a file under src/dynametric"
                 for path in sorted(set(_PY_PATH.findall(section))) if not (package / path).is_file()]
    for line in section.splitlines():
        row = _ROW.match(line)
        if not row or row.group(1) not in modules:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3:
            problems.append(f"{row.group(1)}: {len(cells)} cells, expected 3 (module, what it holds, names)")
            continue
        defined = top_level_names(package / row.group(1))
        problems += [f"{row.group(1)}: no top-level name {name!r}"
                     for name in _IDENTIFIER.findall(cells[2]) if name not in defined]
    return problems


def test_the_module_map_lists_every_module_once_and_nothing_else():
    section = map_section(DOC.read_text(encoding="utf-8"))
    assert map_problems(section, package_modules()) == []


def test_the_top_paragraph_links_the_module_map():
    text = DOC.read_text(encoding="utf-8")
    intro = text.split("\n## ", 1)[0]
    assert "(#module-map)" in intro


def test_the_module_rule(tmp_path):
    """Plain modules and ``__main__.py`` count; an ``__init__.py`` counts only with a function or class of its own;
    ``__pycache__`` never."""
    pkg = tmp_path / "pkg"
    (pkg / "sub" / "__pycache__").mkdir(parents=True)
    (pkg / "empty").mkdir()
    (pkg / "__init__.py").write_text('"""Doc."""\nfrom pkg.a import f\n\n__all__ = ["f"]\nALIAS = f\n')
    (pkg / "a.py").write_text("def f():\n    return 1\n")
    (pkg / "__main__.py").write_text("import sys\n")
    (pkg / "sub" / "__init__.py").write_text("def __getattr__(name):\n    raise AttributeError(name)\n")
    (pkg / "sub" / "__pycache__" / "x.py").write_text("")
    (pkg / "empty" / "__init__.py").write_text("")
    (pkg / "empty" / "thing.py").write_text("class Thing:\n    pass\n")
    assert package_modules(pkg) == {"a.py", "__main__.py", "sub/__init__.py", "empty/thing.py"}


def test_the_check_catches_a_missing_a_stale_and_a_doubled_row(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    pass\n\nX = 1\n")
    (tmp_path / "b.py").write_text("")
    (tmp_path / "c.py").write_text("from os import path as p\n")
    section = ("\n## Module map\n\n| Module | What | Names |\n|---|---|---|\n"
               "| `a.py` | one | `f`, `X`, `g` |\n| `a.py` | again | |\n| `gone.py` | deleted | |\n"
               "| `c.py` | two cells |\n\nSee also `old/path.py` and `b.py`.\n")
    assert map_problems(section, {"a.py", "b.py", "c.py"}, tmp_path) == [
        "a.py: more than one row",
        "b.py: a module without a row",
        "gone.py: a row for no module (deleted, renamed, or an __init__.py without code)",
        "gone.py: named in the section but not a file under src/dynametric",
        "old/path.py: named in the section but not a file under src/dynametric",
        "a.py: no top-level name 'g'",
        "c.py: 2 cells, expected 3 (module, what it holds, names)",
    ]
