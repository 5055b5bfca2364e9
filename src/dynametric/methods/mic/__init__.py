"""MIC (Roth, Brattoli, Ommer, ICCV 2019): the clustering route (:mod:`.clustering`) and its plug-in
(:mod:`.plugin`, ``method.name: mic``), which trains on the alternating module of :mod:`dynametric.methods.sharing`."""

from dynametric.methods.mic.clustering import (
    STANDARDISATIONS,
    MICSettings,
    SurrogateLabeler,
    kmeans,
    layer_features,
    sample_surrogate_batch,
    standardise_per_class,
)
from dynametric.methods.mic.plugin import MIC

__all__ = ["MIC", "STANDARDISATIONS", "MICSettings", "SurrogateLabeler", "kmeans", "layer_features",
           "sample_surrogate_batch", "standardise_per_class"]
