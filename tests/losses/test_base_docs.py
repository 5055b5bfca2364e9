"""The loss contract's module docstring (:mod:`dynametric.losses.base`) says which losses take the common options
``reducer=`` / ``embedding_regularizer=`` / ``collect_stats=``: checked against every loss of the registry."""

from __future__ import annotations

import inspect
import re

import dynametric.losses.base as base
from dynametric.losses import LOSSES

COMMON = ("reducer", "embedding_regularizer", "embedding_reg_weight", "collect_stats")


def _takes(cls: type, name: str) -> bool:
    params = inspect.signature(cls).parameters
    if name in params:
        return True
    # the proxy losses pass **kwargs on to MetricLoss.__init__
    return any(p.kind is p.VAR_KEYWORD for p in params.values()) and issubclass(cls, base.MetricLoss) and \
        name in inspect.signature(base.MetricLoss).parameters


def test_the_losses_without_the_common_options_are_the_ones_the_docstring_names():
    doc = " ".join((base.__doc__ or "").split())
    start = doc.index("except the four losses")
    named = set(re.findall(r"dynametric\.losses\.(\w+)`", doc[start:start + 600]))
    without = {name for name, cls in LOSSES.items() if not all(_takes(cls, arg) for arg in COMMON)}
    assert named == without == {"MultiScaleLoss", "CSLLoss", "PDDMLoss", "DecorrelationLoss"}
    for name in without:  # none of the three
        assert not any(_takes(LOSSES[name], arg) for arg in COMMON), name
