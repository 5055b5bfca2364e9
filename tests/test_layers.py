"""The package's layers point one way: the library never imports the CLI, and no command imports another command.

Shared CLI helpers live in ``dynametric/commands/__init__.py`` and ``dynametric/commands/options.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import dynametric

PACKAGE = Path(dynametric.__file__).parent
SHARED_COMMAND_MODULES = {"dynametric.commands", "dynametric.commands.options"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module ``path`` imports (``from X import y`` also counts ``X.y``, which may be a submodule)."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
    return out


def _command_module(name: str) -> str:
    """The module of ``commands/`` that ``name`` (a module, or a name inside one) belongs to."""
    parts = name.split(".")
    if len(parts) > 2 and ((PACKAGE / "commands" / f"{parts[2]}.py").exists()
                           or (PACKAGE / "commands" / parts[2]).is_dir()):
        return ".".join(parts[:3])
    return "dynametric.commands"  # a name defined in commands/__init__.py


def _violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        is_cli = module == "dynametric.cli" or module == "dynametric.__main__"
        in_commands = module == "dynametric.commands" or module.startswith("dynametric.commands.")
        for line, name in _imports(path):
            if not (name == "dynametric.commands" or name.startswith("dynametric.commands.")):
                continue
            target = _command_module(name)
            where = f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}"
            if not (is_cli or in_commands):
                bad.append(f"library module {where}")
            elif in_commands and module not in SHARED_COMMAND_MODULES:
                if target not in SHARED_COMMAND_MODULES and target != module:
                    bad.append(f"command module {where}")
    return sorted(set(bad))


def test_library_does_not_import_cli_and_commands_do_not_import_each_other():
    assert _violations() == []


def test_the_check_sees_a_violation(tmp_path, monkeypatch):
    """The walker finds both kinds of import, absolute and relative, inside functions too."""
    fake = tmp_path / "dynametric"
    (fake / "commands").mkdir(parents=True)
    (fake / "retrieval").mkdir()
    for f in ("__init__.py", "commands/__init__.py", "commands/options.py", "retrieval/__init__.py"):
        (fake / f).write_text("")
    (fake / "commands" / "search.py").write_text("from dynametric.commands import positive_int\n"
                                                 "from dynametric.commands.options import add_inference_arguments\n")
    (fake / "commands" / "explore.py").write_text("def run():\n    from .search import load_index_model\n")
    (fake / "commands" / "evaluate.py").write_text("")
    (fake / "retrieval" / "embed.py").write_text("import dynametric.commands.evaluate\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", fake)
    found = _violations()
    assert len(found) == 2, found
    assert found == ["command module dynametric/commands/explore.py:2 imports dynametric.commands.search",
                     "library module dynametric/retrieval/embed.py:1 imports dynametric.commands.evaluate"]
