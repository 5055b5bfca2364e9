"""The Sharing Matters / MIC decorrelation term in the loss contract (the module itself is
:class:`dynametric.models.sharing.Decorrelation`).

:class:`DecorrelationLoss` reads the concatenation ``[class; shared]`` of a two-head embedder (engine term with
``head: concat``), so ``dynametric train`` can combine it with the other terms (``summed``, weight ``rho``). Its
``R`` is returned by :meth:`loss_parameters` (the engine's ``loss`` group).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from dynametric.errors import ConfigError, InputError
from dynametric.losses.base import IndicesTuple, MetricLoss, check_count
from dynametric.models.sharing import Decorrelation
from dynametric.tuples import compute_dtype


class DecorrelationLoss(MetricLoss):
    """:class:`Decorrelation` in the loss contract, on the concatenated embedding ``[class; shared]``.

    ``embedding_size`` is the concatenation width; ``class_dim`` / ``shared_dim`` the widths of the first (class)
    and second (shared) part (default: the other's complement, else half each). The engine fills all three from the
    model's two heads (:attr:`reads_head_pair`). Labels and ``indices_tuple`` are ignored (the term needs no labels:
    ``loss(embeddings)`` works; labels given are only checked for their form and row count).
    """

    reads_head_pair = True
    reads_labels = False  # loss(embeddings) works: labels=None needs no indices_tuple

    @classmethod
    def pairs_in_batch(cls, kwargs: Mapping[str, Any]) -> bool:
        return False  # no labels

    def __init__(self, embedding_size: int, class_dim: int | None = None, hidden: int = 512,
                 direction: str = "shared_to_class", grl_scale: float = 1.0, shared_dim: int | None = None) -> None:
        super().__init__(0)
        embedding_size = check_count(embedding_size, "embedding_size")
        hidden = check_count(hidden, "hidden")
        class_dim = None if class_dim is None else check_count(class_dim, "class_dim")
        shared_dim = None if shared_dim is None else check_count(shared_dim, "shared_dim")
        if class_dim is None and shared_dim is not None:
            class_dim = embedding_size - shared_dim
        if class_dim is None:
            if embedding_size % 2:
                raise ConfigError(f"odd embedding_size {embedding_size}: set class_dim", key="class_dim")
            class_dim = embedding_size // 2
        if not 0 < class_dim < embedding_size:
            raise ConfigError(f"class_dim must be in (0, {embedding_size}), got {class_dim}", key="class_dim")
        if shared_dim is not None and class_dim + shared_dim != embedding_size:
            raise ConfigError(f"class_dim + shared_dim must be embedding_size {embedding_size}, got "
                              f"{class_dim} + {shared_dim}", key="shared_dim")
        self.class_dim = int(class_dim)
        self.decorrelation = Decorrelation(self.class_dim, embedding_size - self.class_dim, hidden, direction,
                                           grl_scale)

    def compute_loss(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: IndicesTuple | None,
                     ref_emb: torch.Tensor | None, ref_labels: torch.Tensor | None) -> torch.Tensor:
        if ref_emb is not None:
            raise InputError("DecorrelationLoss takes no reference set", key="ref_emb")
        # computed in R's parameter dtype (its nn.Linear layers take no other: float64 or half-precision embeddings
        # were a dtype error outside autocast; under autocast R still runs in autocast's dtype), returned in
        # compute_dtype (float64 for float64, float32 for fp16/bf16); the gradient arrives in the embeddings' dtype
        x = embeddings.to(next(self.decorrelation.regressor.parameters()).dtype)
        loss = self.decorrelation(x[:, : self.class_dim], x[:, self.class_dim:])
        return loss.to(compute_dtype(embeddings))
