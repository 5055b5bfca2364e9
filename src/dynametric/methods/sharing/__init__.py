"""Sharing Matters (Milbich et al., TPAMI 2020), in one place: the combinations and head evaluation
(:mod:`.combination`), the engine's alternating class / shared module (:mod:`.alternating`, also MIC's) and the
``sharing_alternating`` plug-in (:mod:`.plugin`). The decorrelation module and its loss are model / loss components
(:mod:`dynametric.models.sharing`, registered in ``LOSSES`` as ``DecorrelationLoss``)."""

from dynametric.methods.sharing.combination import (
    ADV_STEPS,
    AUX_SOURCES,
    COMBINATIONS,
    EVAL_HEADS,
    SharingParts,
    SharingSettings,
    SharingTrainer,
    evaluate_heads,
    sharing_param_groups,
    summed_objectives,
)
from dynametric.methods.sharing.plugin import SharingAlternating

__all__ = ["ADV_STEPS", "AUX_SOURCES", "COMBINATIONS", "EVAL_HEADS", "SharingAlternating", "SharingParts",
           "SharingSettings", "SharingTrainer", "evaluate_heads", "sharing_param_groups", "summed_objectives"]
