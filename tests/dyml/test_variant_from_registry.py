"""The DyML variant of a data format comes from the reader registered under the name, not from a `dyml-` prefix:
a DyML reader registered under another name is checked the same way, and a non-DyML format named `dyml-...` is not."""

from __future__ import annotations

import pytest

from dynametric.config import load_config
from dynametric.data import registry
from dynametric.data.dyml import DyMLFormat
from dynametric.data.generic import CSVFormat
from dynametric.errors import ConfigError
from dynametric.methods import method_for


def test_the_variant_is_the_registered_readers(monkeypatch) -> None:
    monkeypatch.setitem(registry.FORMATS, "vehicles-2024", DyMLFormat("vehicle"))
    monkeypatch.setitem(registry.FORMATS, "dyml-lookalike", CSVFormat())
    assert registry.dyml_variant("vehicles-2024") == "vehicle"
    assert registry.dyml_variant("dyml-lookalike") is None and registry.dyml_variant("csv") is None
    assert registry.dyml_variant("dyml-product") == "product"
    cfg = load_config(None, ["method.name=dyml", "method.kwargs={variant: product, query_in_gallery: disjoint}"])
    cfg.data.format = "vehicles-2024"
    with pytest.raises(ConfigError, match="data.format is 'vehicles-2024'; use variant: vehicle"):
        method_for(cfg).validate(cfg)
    cfg.data.format = "dyml-lookalike"  # not a DyML reader: no variant to check against
    method_for(cfg).validate(cfg)
