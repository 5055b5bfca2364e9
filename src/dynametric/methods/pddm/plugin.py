"""The ``pddm`` method plug-in: PDDM (Huang, Loy, Tang, NIPS 2016) trains on the standard module with
``PDDMLoss`` (its unit and its hard-quadruplet mining inside the loss) and tests with the ``eval`` section's protocol;
the plug-in checks that the config has a PDDM loss term. ``method.name: null`` with the same loss runs the same
training (the configs in ``configs/pddm/`` leave it null)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynametric.errors import ConfigError
from dynametric.methods.base import Method

if TYPE_CHECKING:
    from dynametric.config import Config

PDDM_LOSS = "PDDMLoss"


class PDDMMethod(Method):
    """The ``pddm`` method: the standard module with a ``PDDMLoss`` term (checked by :meth:`validate`; the method has
    no options of its own), tested with the ``eval`` section's protocol."""

    name = "pddm"
    summary = "PDDM: the PDDM unit's loss on the standard module"

    def validate(self, cfg: Config) -> Any:
        super().validate(cfg)  # no options of its own
        names = [cfg.loss.name, *(t.name for t in cfg.extra_losses)]
        if PDDM_LOSS not in names:
            raise ConfigError(f"method 'pddm' needs a {PDDM_LOSS} term (loss.name or extra_losses[i].name), got "
                              f"{names}", key="loss.name")
        return None
