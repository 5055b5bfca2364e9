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
        groups = int(cfg.data.batch_size) // int(mic.m_shared)  # a shared batch: that many distinct clusters
        if groups > int(mic.num_clusters):
            raise ConfigError(f"a shared batch takes {groups} distinct clusters (data.batch_size {cfg.data.batch_size} "
                              f"/ m_shared {mic.m_shared}), more than num_clusters {mic.num_clusters}: expected "
                              f"num_clusters >= {groups} (or a larger m_shared)", key="method.kwargs.num_clusters")
        return mic

    def surrogate_classes(self, cfg: Config, settings: Any) -> dict[str, tuple[int, str]]:
        """Every term on the shared head trains on the cluster ids: ``num_clusters`` classes."""
        count = (int(settings.num_clusters), "method.kwargs.num_clusters")
        return {key: count for key, term, _ in cfg.loss_terms() if term.head == "shared"}

    def check_data(self, cfg: Config, settings: Any, datasets: Any) -> None:
        """k-means clusters the training images: ``num_clusters`` can be at most their number."""
        if datasets is None:
            return
        n = len(datasets.train)
        if int(settings.num_clusters) > n:
            raise ConfigError(f"{settings.num_clusters} clusters of {n} training images: expected at most {n} "
                              "(k-means clusters the training images)", key="method.kwargs.num_clusters")

    def check_model(self, cfg: Config, settings: Any, embedder: Any) -> None:
        """``feature_layer`` must name a module of the built model (its features start the clustering)."""
        import difflib

        names = [n for n, _ in embedder.named_modules() if n]
        if settings.feature_layer not in names:
            close = difflib.get_close_matches(settings.feature_layer, names, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; e.g. {', '.join(names[:8])}"
            raise ConfigError(f"the model has no module {settings.feature_layer!r} (expected a name from the "
                              f"embedder's named_modules()){hint}", key="method.kwargs.feature_layer")

    def module_plan(self, cfg: Config, settings: Any) -> Any:
        from dynametric.methods.sharing.alternating import HookPlan, unaugmented_view

        return HookPlan(self.name, float(settings.p_aux), settings.adv_step, "class", "shared",
                        int(settings.m_shared), int(cfg.data.batch_size), int(cfg.trainer.seed), settings,
                        unaugmented_view(cfg))
