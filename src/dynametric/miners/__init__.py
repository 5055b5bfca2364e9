"""Miners: ``miner(embeddings, labels, ref_emb=None, ref_labels=None) -> indices tuple`` (pairs ``(a1, p, a2, n)``
or triplets ``(a, p, n)``), usable with any tuple loss. ``build_miner(name, **kwargs)`` looks ``name`` up in the
explicit :data:`MINERS` dict (class names as in pytorch-metric-learning)."""

from __future__ import annotations

from typing import Any

from dynametric.distances import build_distance
from dynametric.errors import ConfigError
from dynametric.miners.base import Miner
from dynametric.miners.distance_weighted import DistanceWeightedMiner, inverse_q_log_weights
from dynametric.miners.inter_class import InterClassTripletMiner
from dynametric.miners.multi_similarity import MultiSimilarityMiner
from dynametric.miners.pml import PMLMiner, pml_miner
from dynametric.miners.triplet_margin import BatchHardMiner, PairMarginMiner, TripletMarginMiner
from dynametric.pml import PMLAwareRegistry, missing_attribute
from dynametric.utils.arguments import keyword_arguments, refuse_unknown_arguments
from dynametric.utils.registry import build_registered, unknown_name_message

MINERS: dict[str, type[Miner]] = PMLAwareRegistry("miners", {
    "TripletMarginMiner": TripletMarginMiner,
    "BatchHardMiner": BatchHardMiner,
    "DistanceWeightedMiner": DistanceWeightedMiner,
    "MultiSimilarityMiner": MultiSimilarityMiner,
    "PairMarginMiner": PairMarginMiner,
    "InterClassTripletMiner": InterClassTripletMiner,
}, PMLMiner)
"""Native miners by name; ``pml:<ClassName>`` resolves to pytorch-metric-learning's miner in :class:`PMLMiner`."""


def build_miner(name: str, **kwargs: Any) -> Miner:
    """Instantiate ``MINERS[name](**kwargs)`` with a clear :class:`ConfigError` for unknown names/arguments, keyed
    as this call names them: ``name`` (an unknown miner), the argument (``distance``; an unexpected keyword, before
    anything is built, which lists the miner's arguments as the command line does:
    :class:`~dynametric.errors.UnknownArgumentError`), else ``kwargs``. A value the miner cannot use is its own
    error, at the call where it is read (a ``scale`` that is no integer: as the losses say it). (A run config's
    miners are built by the engine, whose errors name the config keys: ``miner.name``, ``miner.kwargs.<arg>``.)"""
    if name not in MINERS:
        raise ConfigError(unknown_name_message(MINERS, name), key="name")
    factory = MINERS.get(name)  # a dict lookup: a pml: name (built on demand) checks its own arguments
    if factory is not None:
        _, named, open_kwargs, _ = keyword_arguments(factory)
        refuse_unknown_arguments(name, kwargs, named, open_kwargs)
    if "distance" in kwargs:
        kwargs["distance"] = build_distance(kwargs["distance"], key="distance")
    return build_registered(MINERS, "miner", name, kwargs, name_key="name")


def __getattr__(name: str) -> Any:
    """``dynametric.miners.<name>`` for a name not defined here: an ``AttributeError`` that, for a
    pytorch-metric-learning miner without a native port (``BatchEasyHardMiner``), says to use
    ``pml_miner(name, ...)`` or ``pml:<name>`` in a config. PML is not imported to define this module."""
    raise missing_attribute("miners", __name__, name, MINERS)


__all__ = [
    "MINERS",
    "BatchHardMiner",
    "DistanceWeightedMiner",
    "InterClassTripletMiner",
    "Miner",
    "PMLMiner",
    "MultiSimilarityMiner",
    "PairMarginMiner",
    "TripletMarginMiner",
    "build_miner",
    "pml_miner",
    "inverse_q_log_weights",
]
