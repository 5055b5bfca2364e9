"""The ``mic`` method plug-in: MIC's clustering route on the alternating class / shared module."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynametric.errors import ConfigError
from dynametric.methods.sharing.plugin import AlternatingMethod

if TYPE_CHECKING:
    from dynametric.config import Config


class MIC(AlternatingMethod):
    """Shared steps on surrogate classes (k-means of per-class-standardised backbone features); ``method.kwargs``
    are :class:`~dynametric.methods.mic.clustering.MICSettings`."""

    name = "mic"
    summary = "MIC: surrogate classes from clustering for the shared head, alternating steps"

    def options(self, cfg: Config) -> Any:
        from dynametric.methods.mic.clustering import MICSettings

        mic = MICSettings.from_kwargs(cfg.method.kwargs)
        if mic.combination != "alternating":
            raise ConfigError("method 'mic' runs the alternating combination; for a summed shared term use "
                              "extra_losses with method.name null", key="method.kwargs.combination")
        return mic

    def surrogate_classes(self, cfg: Config, settings: Any) -> dict[str, tuple[int, str]]:
        """Every term on the shared head trains on the cluster ids: ``num_clusters`` classes."""
        terms = [("loss", cfg.loss)] + [(f"extra_losses[{i}]", t) for i, t in enumerate(cfg.extra_losses)]
        count = (int(settings.num_clusters), "method.kwargs.num_clusters")
        return {key: count for key, term in terms if term.head == "shared"}

    def module_plan(self, cfg: Config, settings: Any) -> Any:
        from dynametric.methods.sharing.alternating import HookPlan, unaugmented_view

        return HookPlan(self.name, float(settings.p_aux), settings.adv_step, "class", "shared",
                        int(settings.m_shared), int(cfg.data.batch_size), int(cfg.trainer.seed), settings,
                        unaugmented_view(cfg))
