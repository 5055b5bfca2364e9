"""The ``dyml`` method plug-in: ``method.kwargs`` are the DyML test protocol's options."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynametric.errors import ConfigError
from dynametric.methods.base import Method

if TYPE_CHECKING:
    from dynametric.config import Config
    from dynametric.engine.protocols import MethodTestProtocol
    from dynametric.methods.dyml.protocol import DyMLProtocol


class DyML(Method):
    """The ``dyml`` method: training as configured, tested with the DyML test protocol, whose options are
    ``method.kwargs`` (:class:`~dynametric.methods.dyml.protocol.DyMLProtocol`)."""

    name = "dyml"
    summary = "the DyML test protocol (methods/dyml/protocol.py)"

    def validate(self, cfg: Config) -> Any:
        from dynametric.data.registry import dyml_variant
        from dynametric.methods.dyml.protocol import DyMLProtocol

        protocol = DyMLProtocol.from_kwargs(cfg.method.kwargs, key="method.kwargs")
        fmt = cfg.data.format
        variant = dyml_variant(fmt)  # the registered reader's, not a guess from the name
        if variant is not None and protocol.variant != "all_in_one" and variant != protocol.variant:
            # dyml-vehicle / -animal test per scale on query_<s> / gallery_<s>, dyml-product on its all-in-one set
            raise ConfigError(f"variant {protocol.variant!r} is the test protocol of {protocol.name} data, but "
                              f"data.format is {fmt!r}; use variant: {variant}",
                              key="method.kwargs.variant")
        return protocol

    def test_protocol(self, settings: Any) -> MethodTestProtocol | None:
        protocol: DyMLProtocol = settings  # validate's
        return protocol
