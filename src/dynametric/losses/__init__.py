"""Metric-learning losses under one contract (see :mod:`dynametric.losses.base`).

``build_loss(name, **kwargs)`` looks ``name`` up in the explicit :data:`LOSSES` dict (class names as in
pytorch-metric-learning). ``distance`` may be given as an object from :mod:`dynametric.distances`, a name
(``"LpDistance"``, ``"SquaredL2Distance"``, ``"CosineSimilarity"``, ``"DotProductSimilarity"`` or the short forms
``"l2"``, ``"squared_l2"``, ``"cosine"``, ``"dot"``) or ``{"name": ..., **kwargs}`` (for configs).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynametric.distances import DISTANCES, build_distance
from dynametric.errors import ConfigError
from dynametric.losses.base import IndicesTuple, MetricLoss, Miner
from dynametric.losses.circle import CircleLoss
from dynametric.losses.contrastive import ContrastiveLoss
from dynametric.losses.csl import CSLLoss
from dynametric.losses.decorrelation import DecorrelationLoss
from dynametric.losses.lifted import GeneralizedLiftedStructureLoss, LiftedStructureLoss
from dynametric.losses.margin import MarginLoss
from dynametric.losses.multi_similarity import MultiSimilarityLoss
from dynametric.losses.multiscale import MultiScaleLoss, ThreeScaleChunks, three_scale_chunks
from dynametric.losses.npairs import NPairsLoss
from dynametric.losses.pddm import PDDMLoss
from dynametric.losses.pml import PMLAwareRegistry, PMLLoss, PMLMiner, pml_loss, pml_miner
from dynametric.losses.proxies import (
    ArcFaceLoss,
    CosFaceLoss,
    NormalizedSoftmaxLoss,
    ProxyAnchorLoss,
    ProxyNCALoss,
    SoftTripleLoss,
)
from dynametric.losses.reducers import (
    AvgNonZeroReducer,
    ClassWeightedReducer,
    DivisorReducer,
    DoNothingReducer,
    MeanReducer,
    MultipleReducers,
    Reducer,
    SumReducer,
    ThresholdReducer,
)
from dynametric.losses.triplet import TripletMarginLoss
from dynametric.pml import missing_attribute
from dynametric.utils.arguments import expected_message, keyword_arguments, misfit, refuse_unknown_arguments
from dynametric.utils.registry import build_registered, unknown_name_message

LOSSES: dict[str, type[MetricLoss]] = PMLAwareRegistry("losses", {
    "ContrastiveLoss": ContrastiveLoss,
    "TripletMarginLoss": TripletMarginLoss,
    "NPairsLoss": NPairsLoss,
    "LiftedStructureLoss": LiftedStructureLoss,
    "GeneralizedLiftedStructureLoss": GeneralizedLiftedStructureLoss,
    "MarginLoss": MarginLoss,
    "MultiSimilarityLoss": MultiSimilarityLoss,
    "CircleLoss": CircleLoss,
    "MultiScaleLoss": MultiScaleLoss,
    "ProxyNCALoss": ProxyNCALoss,
    "ProxyAnchorLoss": ProxyAnchorLoss,
    "NormalizedSoftmaxLoss": NormalizedSoftmaxLoss,
    "CosFaceLoss": CosFaceLoss,
    "ArcFaceLoss": ArcFaceLoss,
    "SoftTripleLoss": SoftTripleLoss,
    "CSLLoss": CSLLoss,
    "PDDMLoss": PDDMLoss,
    "DecorrelationLoss": DecorrelationLoss,
}, PMLLoss)
"""Native losses by name; ``pml:<ClassName>`` names resolve to pytorch-metric-learning's loss of that name wrapped
in :class:`PMLLoss` (see :mod:`dynametric.losses.pml`)."""

def check_loss_arguments(name: str, kwargs: Mapping[str, Any], *, unknown: bool = True) -> None:
    """The keyword arguments ``kwargs`` of loss ``name`` (a class of :data:`LOSSES`; nothing is checked for a
    ``pml:`` name, whose wrapper checks its own) before anything is built, by the rule of the config's factory
    (:mod:`dynametric.utils.arguments`), each error one :class:`ConfigError` keyed by the argument:

    * ``unknown``: a keyword the loss does not take is an :class:`~dynametric.errors.UnknownArgumentError`,
      ``TripletMarginLoss has no argument 'bogus'; its arguments: margin, swap, ...`` (``did you mean 'margin'?``
      for a misspelling);
    * a value of the wrong type for an argument the constructor annotates with a simple type (a number, an
      integer, a bool, a string, a list of them): ``TripletMarginLoss: expected a number for margin, got 'x'
      (str)``. A loss's numeric hyper-parameters must be finite: NaN or inf is ``expected a finite number for
      margin, got nan (float)`` (no loss of the registry takes one as a setting; the miners' cutoffs, where inf
      means none, are not checked here).

    :func:`build_loss` calls it; a run config calls it (``unknown=False``) for every loss term when it loads, keyed
    ``loss.kwargs.<arg>`` (the engine's factory says an unknown keyword with the config's way to drop it)."""
    factory = LOSSES.get(name)  # a dict lookup: a pml: name (built on demand) is not checked here
    if factory is None:
        return
    _, named, open_kwargs, hints = keyword_arguments(factory)
    for arg, value in kwargs.items():
        if unknown:
            refuse_unknown_arguments(name, [arg], named, open_kwargs)
        want = misfit(hints.get(arg), value, finite=True)
        if want is not None:
            raise ConfigError(expected_message(name, arg, want, value), key=arg)


def build_loss(name: str, **kwargs: Any) -> MetricLoss:
    """Instantiate ``LOSSES[name](**kwargs)`` with a clear :class:`ConfigError` for unknown names/arguments, keyed
    as this call names them: ``name`` (an unknown loss), the argument (``distance``, an unexpected keyword, a value
    of the wrong type or a non-finite number: :func:`check_loss_arguments`, before anything is built), else
    ``kwargs``. (A run config's losses are built by the engine, whose errors name the config keys:
    ``loss.name``, ``loss.kwargs.<arg>``.)"""
    if name not in LOSSES:
        raise ConfigError(unknown_name_message(LOSSES, name), key="name")
    check_loss_arguments(name, kwargs)
    if "distance" in kwargs:
        kwargs["distance"] = build_distance(kwargs["distance"], key="distance")
    return build_registered(LOSSES, "loss", name, kwargs, name_key="name")


def __getattr__(name: str) -> Any:
    """``dynametric.losses.<name>`` for a name not defined here: an ``AttributeError`` that, for a
    pytorch-metric-learning loss without a native port (``SupConLoss``), says to use ``pml_loss(name, ...)`` or
    ``pml:<name>`` in a config (for ``CrossBatchMemory`` and the other losses that wrap a loss: the Python call).
    PML is not imported to define this module."""
    raise missing_attribute("losses", __name__, name, LOSSES)


__all__ = [
    "LOSSES",
    "DISTANCES",
    "ArcFaceLoss",
    "CSLLoss",
    "CosFaceLoss",
    "NormalizedSoftmaxLoss",
    "ProxyAnchorLoss",
    "ProxyNCALoss",
    "SoftTripleLoss",
    "CircleLoss",
    "DecorrelationLoss",
    "ContrastiveLoss",
    "GeneralizedLiftedStructureLoss",
    "IndicesTuple",
    "LiftedStructureLoss",
    "MarginLoss",
    "MetricLoss",
    "Miner",
    "MultiScaleLoss",
    "MultiSimilarityLoss",
    "NPairsLoss",
    "PDDMLoss",
    "PMLLoss",
    "PMLMiner",
    "pml_loss",
    "pml_miner",
    "AvgNonZeroReducer",
    "ClassWeightedReducer",
    "DivisorReducer",
    "DoNothingReducer",
    "MeanReducer",
    "MultipleReducers",
    "Reducer",
    "SumReducer",
    "ThresholdReducer",
    "ThreeScaleChunks",
    "TripletMarginLoss",
    "build_distance",
    "build_loss",
    "check_loss_arguments",
    "three_scale_chunks",
]
