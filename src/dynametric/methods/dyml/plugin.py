"""The ``dyml`` method plug-in: ``method.kwargs`` are the DyML test protocol's options."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynametric.methods.base import Method

if TYPE_CHECKING:
    from dynametric.config import Config


class DyML(Method):
    name = "dyml"
    summary = "the DyML test protocol (engine/dyml.py)"

    def validate(self, cfg: Config) -> Any:
        from dynametric.engine.dyml import DyMLProtocol

        return DyMLProtocol.from_kwargs(cfg.method.kwargs, key="method.kwargs")

    def test_protocol(self, settings: Any) -> Any:
        return settings
