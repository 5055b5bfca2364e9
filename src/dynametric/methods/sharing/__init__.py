"""Sharing Matters (Milbich et al., TPAMI 2020), in one place: the combined loss terms, the optimizer groups and head
evaluation (:mod:`.combination`), the engine's alternating class / shared module (:mod:`.alternating`, also MIC's)
and the ``sharing_alternating`` plug-in (:mod:`.plugin`). Both combinations train on the engine's modules (the
``summed`` one on :class:`~dynametric.engine.module.MetricLearningModule`). The decorrelation module and its loss
are model / loss components (:mod:`dynametric.models.sharing`, registered in ``LOSSES`` as ``DecorrelationLoss``)."""

from dynametric.methods.sharing.combination import (
    EVAL_HEADS,
    SharingParts,
    SharingSettings,
    evaluate_heads,
    sharing_param_groups,
    summed_objectives,
)
from dynametric.methods.sharing.plugin import SharingAlternating

__all__ = ["EVAL_HEADS", "SharingAlternating", "SharingParts", "SharingSettings", "evaluate_heads",
           "sharing_param_groups", "summed_objectives"]
