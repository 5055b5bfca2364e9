"""The registry of ``run.logger`` names, in a module that imports nothing heavy (the config check reads it).

``LOGGERS`` maps a name to what builds that logger: dynametric's own four are entries whose value is their own name
(``"csv"``, ``"tensorboard"``, ``"wandb"``, ``"mlflow"``: built by :func:`dynametric.engine.loggers.build_logger`,
with the run folder, resume and MLflow store handling it gives them); a user's module adds a **factory**
``factory(run_dir, **run.logger_options) -> lightning.pytorch.loggers.Logger`` under a new name (docs/extending.md).
A value that is another built-in's name is an alias (``LOGGERS["tb"] = "tensorboard"``).
"""

from __future__ import annotations

from typing import Any, Final

BUILT_IN_LOGGERS: Final = ("csv", "tensorboard", "wandb", "mlflow")
"""dynametric's own loggers, built by name."""

LOGGERS: dict[str, Any] = {name: name for name in BUILT_IN_LOGGERS}
"""``run.logger`` name -> a built-in logger's name, or a factory ``(run_dir, **options) -> Logger``."""


def logger_names() -> list[str]:
    """The names ``run.logger`` accepts now (the live registry: a user's module may have added some)."""
    return list(LOGGERS)


def built_in_kind(name: str) -> str | None:
    """The built-in logger ``name`` stands for (itself or an alias's target), ``None`` for a user's factory or an
    unknown name."""
    entry = LOGGERS.get(name)
    return entry if isinstance(entry, str) and entry in BUILT_IN_LOGGERS else None
