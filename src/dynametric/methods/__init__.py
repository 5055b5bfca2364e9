"""Methods as plug-ins: one registry, :data:`METHODS`, from ``method.name`` to a :class:`~.base.Method`.

Each method has its own package here: ``dyml/`` (the DyML test protocol), ``sharing/`` (Sharing Matters: the
summed combination, the alternating class / shared module), ``mic/`` (MIC's clustering route on the alternating
module) and ``pddm/`` (PDDM's pieces and its config check). The run (:mod:`dynametric.pipeline`, the layer above)
asks :func:`method_for` and calls the plug-in's hooks; the engine below never imports this package, and nothing
else compares method names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynametric.errors import ConfigError
from dynametric.methods.base import Method, Standard
from dynametric.methods.dyml.plugin import DyML
from dynametric.methods.mic.plugin import MIC
from dynametric.methods.pddm.plugin import PDDMMethod
from dynametric.methods.sharing.plugin import SharingAlternating

if TYPE_CHECKING:
    from dynametric.config import Config

METHODS: dict[str, Method] = {m.name: m for m in (DyML(), SharingAlternating(), MIC(), PDDMMethod())
                              if m.name is not None}
"""``method.name`` -> plug-in. A new method: a package here with a :class:`Method` subclass, added to this dict."""

STANDARD = Standard()


def method_for(cfg: Config) -> Method:
    """The plug-in of ``cfg.method.name`` (``null``: the standard run); an unknown name is a :class:`ConfigError`
    on ``method.name``."""
    name = cfg.method.name
    if name is None:
        return STANDARD
    if name not in METHODS:
        from dynametric.utils.registry import with_import_hint

        raise ConfigError(with_import_hint(f"unknown method {name!r}; the engine's methods are {', '.join(METHODS)} "
                                           "(other methods are configured through loss/miner/model keys)"),
                          key="method.name")
    return METHODS[name]


def plan_from_config(cfg: Config) -> Any:
    """The alternating module's plan of a config (:class:`dynametric.methods.sharing.alternating.HookPlan`),
    validated; ``None``: the method, if any, trains on the standard module."""
    method = method_for(cfg)
    return method.module_plan(cfg, method.validate(cfg))


__all__ = ["METHODS", "STANDARD", "Method", "method_for", "plan_from_config"]
