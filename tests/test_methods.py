"""Methods as plug-ins: one registry (``dynametric.methods.METHODS``) that the builders and the run ask; no string
comparisons on method names anywhere else."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import dynametric
from dynametric.config import load_config
from dynametric.engine.module import MetricLearningModule
from dynametric.errors import ConfigError
from dynametric.methods import METHODS, STANDARD, Method, method_for, plan_from_config
from dynametric.methods.dyml.protocol import DyMLProtocol
from dynametric.methods.sharing.alternating import AlternatingSharingModule
from dynametric.pipeline import build_components, method_test_protocol

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = Path(dynametric.__file__).parent


def test_registry_names_its_plugins_and_refuses_unknown_names() -> None:
    assert set(METHODS) == {"dyml", "sharing_alternating", "mic", "pddm"}
    assert all(isinstance(m, Method) and m.name == name for name, m in METHODS.items())
    assert method_for(load_config()) is STANDARD
    with pytest.raises(ConfigError) as info:
        method_for(load_config(overrides=["method.name=dymll"]))
    assert info.value.key == "method.name" and "dyml, sharing_alternating, mic, pddm" in str(info.value)


def test_plugins_give_their_module_plan_and_test_protocol() -> None:
    dyml = load_config(ROOT / "configs" / "dyml" / "vehicle-csl.yaml")
    method = method_for(dyml)
    protocol = method.test_protocol(method.validate(dyml))
    assert protocol == DyMLProtocol.from_kwargs(dyml.method.kwargs) and method.module_plan(dyml, protocol) is None
    assert method_test_protocol(dyml) == protocol and method_test_protocol(load_config()) is None
    sharing = load_config(ROOT / "configs" / "sharing" / "synthetic-alternating.yaml",
                          ["method.kwargs={p_aux: 0.5, m_shared: null}"])
    plan = plan_from_config(sharing)
    assert (plan.name, plan.p_aux, plan.m_shared, plan.shared_batch_size, plan.mic) == \
        ("sharing_alternating", 0.5, sharing.data.m, sharing.data.batch_size, None)
    mic = plan_from_config(load_config(ROOT / "configs" / "mic" / "synthetic.yaml"))
    assert mic.name == "mic" and mic.mic is not None and mic.unaugmented is not None
    assert plan_from_config(dyml) is None and plan_from_config(load_config()) is None
    with pytest.raises(ConfigError) as info:  # the alternating module's needs are checked by both plug-ins
        plan_from_config(load_config(ROOT / "configs" / "mic" / "synthetic.yaml", ["optim.grad_clip=1.0"]))
    assert info.value.key == "optim.grad_clip"


def test_pddm_plugin_checks_its_loss_and_options() -> None:
    cfg = load_config(ROOT / "configs" / "pddm" / "synthetic.yaml", ["method.name=pddm"])
    comps = build_components(cfg, datasets=None)
    assert type(comps.module) is MetricLearningModule
    assert type(comps.objectives[0].loss).__name__ == "PDDMLoss"
    with pytest.raises(ConfigError) as info:
        build_components(load_config(overrides=["method.name=pddm"]), datasets=None)
    assert info.value.key == "loss.name" and "PDDMLoss" in str(info.value)
    with pytest.raises(ConfigError) as info:
        method_for(cfg).validate(load_config(ROOT / "configs" / "pddm" / "synthetic.yaml",
                                             ["method.name=pddm", "method.kwargs.rerank=true"]))
    assert info.value.key == "method.kwargs.rerank"


def test_alternating_plugin_builds_the_alternating_module() -> None:
    cfg = load_config(ROOT / "configs" / "sharing" / "synthetic-alternating.yaml")
    assert isinstance(build_components(cfg, datasets=None).module, AlternatingSharingModule)


def test_no_string_comparisons_on_method_names_outside_the_registry() -> None:
    """A method is wired in dynametric/methods/ only: no ``x == "dyml"`` / ``x in ("mic", ...)`` elsewhere."""
    names = set(METHODS)
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if (PACKAGE / "methods") in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Compare):
                continue
            for operand in [node.left, *node.comparators]:
                consts = [operand] if isinstance(operand, ast.Constant) else \
                    list(operand.elts) if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else []
                if any(isinstance(c, ast.Constant) and c.value in names for c in consts):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not found, f"method names compared outside dynametric/methods/: {found}"
