"""The ``sharing_alternating`` method plug-in: Sharing Matters' alternating combination (t* or any miner on the
true labels for the shared head), and :class:`AlternatingMethod`, the base of every method that trains on the
alternating module (MIC's too). The ``summed`` combination needs no plug-in: it is three loss terms."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynametric.errors import ConfigError
from dynametric.methods.base import Method

if TYPE_CHECKING:
    from dynametric.config import Config


class AlternatingMethod(Method):
    """A method on the alternating class / shared module: :meth:`validate` checks what that module needs of the
    config (:func:`~dynametric.methods.sharing.alternating.check_alternating`), then the method's own
    ``method.kwargs`` (:meth:`options`)."""

    def validate(self, cfg: Config) -> Any:
        from dynametric.methods.sharing.alternating import check_alternating

        check_alternating(cfg, str(self.name))
        return self.options(cfg)

    def options(self, cfg: Config) -> Any:
        raise NotImplementedError


class SharingAlternating(AlternatingMethod):
    """The ``sharing_alternating`` method: Sharing Matters' alternating class / shared steps on the alternating
    module; ``method.kwargs`` are its :class:`~dynametric.methods.sharing.alternating.AlternatingSettings`."""

    name = "sharing_alternating"
    summary = "Sharing Matters, alternating class / shared steps"

    def options(self, cfg: Config) -> Any:
        from dynametric.methods.sharing.alternating import AlternatingSettings
        from dynametric.models.embedder import default_head_names

        settings = AlternatingSettings.from_kwargs(cfg.method.kwargs)
        heads = list(cfg.model.head_names or default_head_names(cfg.model.num_heads))
        for arg in ("class_head", "shared_head"):
            head = getattr(settings, arg)
            if head not in heads:
                raise ConfigError(f"unknown head {head!r}; expected one of the model's heads {heads}",
                                  key=f"method.kwargs.{arg}")
        return settings

    def check_data(self, cfg: Config, settings: Any, datasets: Any) -> None:
        """A shared batch takes ``shared_batch_size / m_shared`` distinct classes of the training set (its first label
        column, as the shared step draws them): at most as many as it has."""
        if datasets is None:
            return
        import torch

        from dynametric.labels import as_label_matrix
        from dynametric.methods.sharing.alternating import shared_batch_classes_message

        per = int(settings.m_shared if settings.m_shared is not None else cfg.data.m)
        size = int(settings.shared_batch_size if settings.shared_batch_size is not None else cfg.data.batch_size)
        classes = int(torch.unique(as_label_matrix(datasets.train.labels, name="train_set.labels")[:, 0]).numel())
        if size // per > classes:
            raise ConfigError(shared_batch_classes_message(size // per, per, size, classes),
                              key="method.kwargs.shared_batch_size")

    def module_plan(self, cfg: Config, settings: Any) -> Any:
        from dynametric.methods.sharing.alternating import HookPlan

        return HookPlan(self.name, float(settings.p_aux), settings.adv_step, settings.class_head,
                        settings.shared_head,
                        int(settings.m_shared if settings.m_shared is not None else cfg.data.m),
                        int(settings.shared_batch_size if settings.shared_batch_size is not None
                            else cfg.data.batch_size),
                        int(cfg.trainer.seed), None)
