"""Short reprs of the retrieval objects (:class:`~dynametric.retrieval.index.RetrievalIndex`, ``embed``'s
:class:`~dynametric.retrieval.embed.EmbeddingSet`): values cut, name lists bounded, whatever the size."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

#: the most names a short repr lists (scale names), and the most characters of one value it shows
REPR_NAMES, REPR_TEXT = 6, 60


def repr_text(value: Any, limit: int = REPR_TEXT) -> str:
    """``repr(str(value))`` cut to about ``limit`` characters (``...`` in the middle: a path keeps its file name)."""
    text = str(value)
    if len(text) > limit:
        half = (limit - 3) // 2
        text = f"{text[:half]}...{text[-half:]}"
    return repr(text)


def repr_names(names: Sequence[Any] | None) -> str:
    """The first :data:`REPR_NAMES` of ``names``, each cut (:func:`repr_text`), then how many more: a bounded list."""
    names = [] if names is None else list(names)  # a numpy array of names has no truth value
    shown = ", ".join(repr_text(n, 30) for n in names[:REPR_NAMES])
    return f"[{shown}{f', ... +{len(names) - REPR_NAMES} more' if len(names) > REPR_NAMES else ''}]"


def repr_model(model: Mapping[str, Any] | None) -> str:
    """The producing model's identity in a repr: its checkpoint and head (what names it), cut; ``-`` when unknown."""
    if not model:
        return "-"
    head = model.get("head")
    return repr_text(model.get("checkpoint", "?")) + (f" head {repr_text(head, 30)}" if head else "")

