"""Construct an object from an explicit ``{name: class}`` registry, with errors that name the key."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from dynametric.errors import ConfigError


def unknown_name_message(registry: Mapping[str, Any], name: Any, kind: str = "name") -> str:
    """The one-line message of a ``name`` that ``registry`` does not hold: the registry's own ``unknown_message``
    where it has one (the loss and miner registries, :class:`dynametric.pml.PMLAwareRegistry`: what was probably
    meant, pytorch-metric-learning's names included), else ``unknown <kind> 'x'`` with the closest names, or all of
    them. The one wording of every configured component's unknown name (config loading and the engine's factory)."""
    own = getattr(registry, "unknown_message", None)
    if callable(own):
        return str(own(name))
    close = difflib.get_close_matches(name, list(registry), n=3, cutoff=0.6) if isinstance(name, str) else []
    hint = (f"; did you mean {', '.join(repr(c) for c in close)}?" if close
            else f"; available: {', '.join(sorted(registry))}")
    return f"unknown {kind} {name!r}{hint}"


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
