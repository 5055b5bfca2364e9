"""Construct an object from an explicit ``{name: class}`` registry, with errors that name the key."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynametric.errors import ConfigError


def build_registered(registry: Mapping[str, Any], kind: str, name: str, kwargs: dict[str, Any], *,
                     name_key: str, args_key: str) -> Any:
    """``registry[name](**kwargs)``; an unknown name or a bad argument is a :class:`ConfigError`
    (``unknown <kind> 'x'; expected one of [...]`` at ``name_key``, ``bad arguments for <kind> 'x': ...`` at
    ``args_key``)."""
    if name not in registry:
        raise ConfigError(f"unknown {kind} {name!r}; expected one of {sorted(registry)}", key=name_key)
    try:
        return registry[name](**kwargs)
    except TypeError as err:
        raise ConfigError(f"bad arguments for {kind} {name!r}: {err}", key=args_key) from err
