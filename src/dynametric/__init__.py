"""dynametric: hierarchy-aware deep metric learning.

Labels everywhere are ``LongTensor[N, S]``: one column per semantic scale, finest first
(a 1-D label tensor is treated as ``S = 1``). See :mod:`dynametric.labels`.

Where to start:

* :func:`dynametric.metrics.evaluate_embeddings`: retrieval and clustering metrics of embeddings, per scale;
* :func:`dynametric.models.build_embedder`: a backbone + embedding head (``Embedder``, ``save_pretrained`` /
  ``from_pretrained``);
* :func:`dynametric.losses.build_loss` (and :mod:`dynametric.miners`): metric-learning losses by name, under
  pytorch-metric-learning's call;
* :func:`dynametric.pipeline.run_training`: a whole training run from a config (:func:`dynametric.config.load_config`);
* :mod:`dynametric.retrieval`: embed images with a trained model, index and search the embeddings.

The same is on the command line: ``dynametric --help`` (``train``, ``evaluate``, ``embed``, ``index``, ``search``,
...). The docs are in the repository's ``docs/`` folder.

Importing the package itself imports neither torch nor numpy (the label helpers below load on first use), so the
``dynametric`` command can choose numpy's sort kernel before numpy starts (:mod:`dynametric.cpu_kernels`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dynametric.errors import DynametricError, InputError

if TYPE_CHECKING:
    from dynametric.labels import as_label_matrix, select_scale

__version__ = "0.1.0"

__all__ = ["DynametricError", "InputError", "as_label_matrix", "select_scale", "__version__"]


def __dir__() -> list[str]:
    """What a notebook's tab completion offers: the names above and the package's public modules (not the
    typing helpers this file imports)."""
    import pkgutil

    modules = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted({*__all__, *modules})


def __getattr__(name: str) -> Any:
    if name in ("as_label_matrix", "select_scale"):
        from dynametric import labels

        return getattr(labels, name)
    raise AttributeError(f"module 'dynametric' has no attribute {name!r}")
