"""Any pytorch-metric-learning miner on dynametric's ``[B, S]`` labels: :class:`PMLMiner` and :func:`pml_miner`
(see :mod:`dynametric.losses.pml` for the loss side and the ``pml:<ClassName>`` config names)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dynametric.errors import ConfigError
from dynametric.miners.base import IndicesTuple, Miner, check_embeddings
from dynametric.pml import _instantiate, check_label_scale, check_object_arguments, resolve_class


class PMLMiner(Miner):
    """A pytorch-metric-learning miner object applied to label column ``label_scale`` (its attribute ``scale``, as
    on every dynametric miner)."""

    def __init__(self, miner: nn.Module, label_scale: int = 0) -> None:
        super().__init__(check_label_scale(label_scale))
        if not isinstance(miner, nn.Module) or not callable(miner) or isinstance(miner, Miner):
            raise ConfigError(f"PMLMiner wraps a pytorch-metric-learning miner object, got {miner!r}", key="miner")
        # PML calls its distance at each mining: a name kept there would fail then
        check_object_arguments({"distance": getattr(miner, "distance", None)})
        self.miner = miner

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
    ) -> IndicesTuple:
        check_embeddings(embeddings, ref_emb)
        labels, ref_col = self.label_columns(embeddings, labels, ref_emb, ref_labels)  # refuses one without the other
        return self.miner(embeddings, labels, ref_emb, ref_col)

    def extra_repr(self) -> str:
        return f"label_scale={self.scale}"


def pml_miner(miner: str | type | nn.Module, /, label_scale: int = 0, **kwargs: Any) -> PMLMiner:
    """A PML miner (class name, class or object; positional-only) on label column ``label_scale``; ``kwargs`` go to
    the PML class."""
    return PMLMiner(_instantiate("miners", resolve_class("miners", miner, key="miner"), kwargs),
                    label_scale=check_label_scale(label_scale))
