"""The ``sharing_alternating`` method plug-in: Sharing Matters' alternating combination (t* or any miner on the
true labels for the shared head). The ``summed`` combination needs no plug-in: it is three loss terms."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynametric.methods.base import Method

if TYPE_CHECKING:
    from dynametric.config import Config


class SharingAlternating(Method):
    name = "sharing_alternating"
    summary = "Sharing Matters, alternating class / shared steps"

    def validate(self, cfg: Config) -> Any:
        from dynametric.methods.sharing.alternating import AlternatingSettings, check_alternating

        check_alternating(cfg, self.name)
        return AlternatingSettings.from_kwargs(cfg.method.kwargs)

    def module_plan(self, cfg: Config, settings: Any) -> Any:
        from dynametric.methods.sharing.alternating import HookPlan

        return HookPlan(self.name, float(settings.p_aux), settings.adv_step, settings.class_head,
                        settings.shared_head,
                        int(settings.m_shared if settings.m_shared is not None else cfg.data.m),
                        int(settings.shared_batch_size if settings.shared_batch_size is not None
                            else cfg.data.batch_size),
                        int(cfg.trainer.seed), None)
