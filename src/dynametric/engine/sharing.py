"""Former home of the alternating class / shared module: it lives in :mod:`dynametric.methods.sharing.alternating`
(Sharing Matters' and MIC's method packages); these names stay importable from here."""

from dynametric.methods.sharing.alternating import (
    AlternatingSettings,
    AlternatingSharingModule,
    HookPlan,
    check_alternating,
    plan_from_config,
    split_objectives,
    unaugmented_view,
)

__all__ = ["AlternatingSettings", "AlternatingSharingModule", "HookPlan", "check_alternating", "plan_from_config",
           "split_objectives", "unaugmented_view"]
