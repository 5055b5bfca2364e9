"""The package's layers point one way: the library never imports the CLI, no command imports another command, and
the packages import only the layers below them (the table in docs/architecture.md), with no import cycles.

Shared CLI helpers live in ``dynametric/commands/__init__.py`` and ``dynametric/commands/options.py``.

What counts as an import (one rule for every check here): every ``import`` / ``from ... import`` statement anywhere in
a module: at the top, inside functions (a lazy import is still a dependency), and under ``if TYPE_CHECKING:`` (the
walker does not tell them apart, so a type-only import is an edge too: an annotation that names a class of a layer
above is a dependency on that layer). ``from X import y`` counts ``X`` and ``X.y`` (a submodule when there is one),
so importing a name from a package's ``__init__`` is an edge to that ``__init__``. The imports listed in
:data:`ALLOWED_UPWARD` (documented, lazy call-ups) are left out of both cycle checks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

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


# ------------------------------------------------------------------------------------------ layers and cycles

LAYERS: list[set[str]] = [
    {"errors", "examples", "cpu_kernels", "evaluation_defaults"},
    {"labels", "utils", ""},  # "" is the package itself (dynametric/__init__.py: errors, labels, __version__)
    {"distances"},
    {"tuples", "pml"},  # what a miner hands to a loss; pytorch-metric-learning lookup
    {"metrics", "miners", "models"},
    {"losses"},  # a loss may use a miner (MultiScaleLoss, PDDMLoss) and a model part (PDDM, Decorrelation)
    {"data"},  # the DyML sampler hands the loss its chunk layout (losses.multiscale.ThreeScaleChunks)
    {"config"},
    {"engine"},  # the engine never imports the method plug-ins
    {"methods"},  # plug-ins build on the engine (MetricLearningModule, Objective, the DyML protocol)
    {"pipeline"},  # the run: resolves the method plug-in and hands its choices to the engine
    {"retrieval"},
    {"commands"},
    {"cli", "__main__"},
]
"""Bottom-up: a module may import its own package and the layers below it (``dynametric.<name>``, a package or a
top-level module). Same-layer imports between packages are allowed but may not form a cycle."""

ALLOWED_UPWARD = {
    ("dynametric.models.hub", "dynametric.retrieval.hub"):
        "Embedder.from_pretrained(run_dir) / push_to_hub(run_dir) hand a run folder (it needs the config and the "
        "engine) to the application layer; only when a run folder is given (models.hub._run_folders)",
}
"""Imports that point up a layer on purpose: ``(importer, imported module) -> why``."""

KNOWN_CYCLES: list[set[str]] = []
"""Package cycles still to be untangled; a cycle not listed here fails the test. (#17 removed the last one,
``engine <-> methods``: the run that asks the method registry moved up to ``dynametric.pipeline``.)"""

KNOWN_MODULE_CYCLES: dict[frozenset[str], str] = {
    frozenset({"dynametric.losses", "dynametric.losses.multiscale", "dynametric.losses.pml"}):
        "a registry that holds a loss built from the registry: MultiScaleLoss(base='<name>') looks the per-scale "
        "loss up in LOSSES (losses/__init__.py), which lists MultiScaleLoss; pml_loss(weights=...) builds one",
    frozenset({"dynametric.models.embedder", "dynametric.models.hub"}):
        "Embedder.from_pretrained / save_pretrained / push_to_hub delegate to models/hub.py, whose from_pretrained "
        "rebuilds an Embedder (build_embedder); both lazily, inside one package",
}
"""Module-level cycles (strongly connected components of the module graph) that stay, each inside one package and
for the reason given; any other module cycle fails :func:`test_no_module_level_import_cycles_but_the_known_ones`."""


def _modules(package: Path) -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(package.rglob("*.py"))}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module of the package that ``name`` (a module, or a name defined in one) belongs to."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _group(module: str) -> str:
    """``dynametric.<name>``: the package or top-level module ``module`` belongs to (``dynametric`` for itself)."""
    return ".".join(module.split(".")[:2])


def _edges() -> list[tuple[str, int, str]]:
    """``(importer, line, imported module)`` for every import of one package module by another."""
    modules = _modules(PACKAGE)
    out = []
    for module, path in modules.items():
        for line, name in _imports(path):
            target = _resolve(name, modules)
            if target is not None and target != module:
                out.append((module, line, target))
    return out


def _rank(group: str) -> int:
    name = group.partition(".")[2]
    for rank, layer in enumerate(LAYERS):
        if name in layer:
            return rank
    raise AssertionError(f"{group} is in no layer of tests/test_layers.py LAYERS (add it, and to docs/architecture.md)")


def _upward_imports() -> list[str]:
    bad = []
    for module, line, target in _edges():
        if _group(module) == _group(target) or (module, target) in ALLOWED_UPWARD:
            continue
        if _rank(_group(target)) > _rank(_group(module)):
            bad.append(f"{module}:{line} imports {target} (a layer above)")
    return sorted(set(bad))


def _cycles(edges: list[tuple[str, str]]) -> list[set[str]]:
    """The strongly connected components with more than one node (Tarjan, iterative)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.add(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def _package_cycles() -> list[set[str]]:
    return _cycles([(_group(a), _group(b)) for a, _, b in _edges()
                    if _group(a) != _group(b) and (a, b) not in ALLOWED_UPWARD])


def test_no_package_imports_a_layer_above():
    assert _upward_imports() == []


def test_no_import_cycles_between_packages_but_the_known_ones():
    cycles = _package_cycles()
    assert [c for c in cycles if c not in KNOWN_CYCLES] == []
    # the cycles #17 removed stay removed: losses <-> miners, losses <-> models (DecorrelationLoss), and
    # models -> config / engine / retrieval (the hub)
    fixed = {"dynametric.losses", "dynametric.miners", "dynametric.models", "dynametric.tuples",
             "dynametric.distances", "dynametric.pml", "dynametric.data"}
    assert [c for c in cycles if c & fixed] == []


def _module_cycles() -> list[set[str]]:
    return _cycles([(a, b) for a, _, b in _edges() if (a, b) not in ALLOWED_UPWARD])


def test_no_module_level_import_cycles_but_the_known_ones():
    """No two modules import each other, directly or around a circle (e.g. ``engine.builders <-> engine.preflight``,
    ``engine.protocols <-> methods.dyml.protocol``, ``engine.builders -> methods -> engine.builders``), but the
    known ones."""
    cycles = _module_cycles()
    assert [sorted(c) for c in cycles if frozenset(c) not in KNOWN_MODULE_CYCLES] == []
    # the engine, the method plug-ins, the run, the configuration and the data are in no cycle at all
    untangled = ("dynametric.engine", "dynametric.methods", "dynametric.pipeline", "dynametric.config",
                 "dynametric.data", "dynametric.retrieval")
    assert [sorted(c) for c in cycles if any(_group(m) in untangled for m in c)] == []


def test_the_engine_never_imports_the_method_plugins():
    """The method plug-ins build on the engine; the engine receives their choices (the training module, the test
    protocol) from the run above both (:mod:`dynametric.pipeline`), not by asking the registry."""
    bad = [f"{a}:{line} imports {b}" for a, line, b in _edges()
           if _group(a) == "dynametric.engine" and _group(b) == "dynametric.methods"]
    assert bad == []


def test_losses_and_miners_do_not_import_each_other_at_module_level():
    """Miners never import a loss; what both need is below them (tuples, distances, pml, miners.base)."""
    bad = [f"{a}:{line} imports {b}" for a, line, b in _edges()
           if _group(a) == "dynametric.miners" and _group(b) == "dynametric.losses"]
    assert bad == []
    module_cycles = _cycles([(a, b) for a, _, b in _edges() if {_group(a), _group(b)} <= {"dynametric.losses",
                                                                                         "dynametric.miners"}
                             and _group(a) != _group(b)])
    assert module_cycles == []


def test_the_layer_checks_see_an_upward_import_and_a_cycle(tmp_path, monkeypatch):
    fake = tmp_path / "dynametric"
    for pkg in ("losses", "miners", "models", "engine", "methods"):
        (fake / pkg).mkdir(parents=True)
        (fake / pkg / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "miners" / "base.py").write_text("def f():\n    from dynametric.losses.base import MetricLoss\n")
    (fake / "losses" / "base.py").write_text("from ..miners.base import f\n")
    (fake / "models" / "hub.py").write_text("import dynametric.engine.builders\n")
    (fake / "engine" / "builders.py").write_text("from dynametric.models import hub\n"
                                                 "def f():\n    from dynametric.engine.preflight import g\n")
    (fake / "engine" / "preflight.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                                  "    from .builders import f\n")
    (fake / "engine" / "run.py").write_text("from dynametric.methods import x\n")
    (fake / "methods" / "x.py").write_text("from dynametric.engine import run\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", fake)
    assert _upward_imports() == ["dynametric.engine.run:1 imports dynametric.methods (a layer above)",
                                 "dynametric.engine.run:1 imports dynametric.methods.x (a layer above)",
                                 "dynametric.miners.base:2 imports dynametric.losses.base (a layer above)",
                                 "dynametric.models.hub:1 imports dynametric.engine.builders (a layer above)"]
    assert sorted(map(sorted, _package_cycles())) == [
        ["dynametric.engine", "dynametric.methods", "dynametric.models"],  # engine <-> methods, engine <-> models
        ["dynametric.losses", "dynametric.miners"]]
    with pytest.raises(AssertionError, match="losses"):
        test_losses_and_miners_do_not_import_each_other_at_module_level()
    # module level: builders <-> preflight (a lazy import one way, a TYPE_CHECKING one back) <-> models.hub, and
    # engine.run <-> methods.x
    assert sorted(map(sorted, _module_cycles())) == [
        ["dynametric.engine.builders", "dynametric.engine.preflight", "dynametric.models.hub"],
        ["dynametric.engine.run", "dynametric.methods.x"],
        ["dynametric.losses.base", "dynametric.miners.base"]]
    with pytest.raises(AssertionError, match="engine.preflight"):
        test_no_module_level_import_cycles_but_the_known_ones()
    with pytest.raises(AssertionError, match="engine.run:1 imports dynametric.methods"):
        test_the_engine_never_imports_the_method_plugins()
