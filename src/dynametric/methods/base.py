"""What a method plug-in is: the hooks the engine's builders and run call for ``method.name``.

A method is a small object in :data:`dynametric.methods.METHODS` (its key is the ``method.name`` a config gives);
it checks its own keys (``method.kwargs`` and whatever it requires of the rest of the config), says which training
module it needs (the standard :class:`~dynametric.engine.module.MetricLearningModule`, or the alternating module
with a plan) and which test protocol it uses (the ``eval`` section's, or its own). Its losses, miners and models are
ordinary components in ``losses/``, ``miners/`` and ``models/``, named by the config's ``loss`` / ``miner`` /
``extra_losses`` / ``model`` keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynametric.errors import ConfigError

if TYPE_CHECKING:
    from dynametric.config import Config
    from dynametric.engine.protocols import MethodTestProtocol


class Method:
    """A method plug-in. Subclasses set :attr:`name` and override what they change; the defaults are the standard
    run: no options, the standard module, the ``eval`` section's test protocol."""

    name: str | None = None
    summary: str = ""

    def validate(self, cfg: Config) -> Any:
        """Check ``method.kwargs`` (and the keys this method needs elsewhere in ``cfg``); return its resolved
        settings, handed back to :meth:`module_plan` and :meth:`test_protocol`. Errors name the dotted key."""
        for arg in cfg.method.kwargs:
            raise ConfigError(f"method {self.name!r} takes no options", key=f"method.kwargs.{arg}")
        return None

    def module_plan(self, cfg: Config, settings: Any) -> Any:
        """``None``: the standard module; else the plan of the alternating class / shared steps
        (:class:`dynametric.methods.sharing.alternating.HookPlan`)."""
        return None

    def surrogate_classes(self, cfg: Config, settings: Any) -> dict[str, tuple[int, str]]:
        """Loss terms this method trains on labels of its own instead of the data's: ``{term key: (number of
        classes, the config key that sets it)}``, term keys as ``loss`` / ``extra_losses[0]``. The builders fill a
        required ``num_classes`` of those terms with that count and check a given one against it (the data's
        classes for every other term). Default: none."""
        return {}

    def check_data(self, cfg: Config, settings: Any, datasets: Any) -> None:
        """Check the method's keys against the data (:class:`~dynametric.engine.builders.Datasets`, ``None`` in a
        dry run without data) before the loss terms are built; errors name the dotted key. Default: nothing."""

    def check_model(self, cfg: Config, settings: Any, embedder: Any) -> None:
        """Check the method's keys against the built model (the embedder); errors name the dotted key. Default:
        nothing."""

    def test_protocol(self, settings: Any) -> MethodTestProtocol | None:
        """``None``: the ``eval`` section's protocol (leave-one-out or query -> gallery); else the method's own, a
        :class:`~dynametric.engine.protocols.MethodTestProtocol` (``bind``, ``header``, ``split_keys``,
        ``missing_splits_error``, the report-view hooks; e.g.
        :class:`dynametric.methods.dyml.protocol.DyMLProtocol`). The run uses it through that interface only."""
        return None


class Standard(Method):
    """``method.name: null``: the standard run (every method-specific choice is a loss / miner / model key). It
    takes no ``method.kwargs``: one given is refused (it would be ignored)."""

    summary = "the standard engine path"

    def validate(self, cfg: Config) -> Any:
        for arg in cfg.method.kwargs:
            raise ConfigError("method.name is null (the standard run), which takes no method.kwargs; set "
                              "method.name or remove the option", key=f"method.kwargs.{arg}")
        return None
