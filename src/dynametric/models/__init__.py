"""dynametric.models: backbones (timm, BN-Inception, a small CNN), pooling, embedding heads, the embedder.

See ``docs/models.md``. Entry point: :func:`build_embedder`.
"""

from dynametric.models.backbones import BACKBONES, Backbone, SimpleCNN, available_backbones, create_backbone
from dynametric.models.bninception import BNInception
from dynametric.models.embedder import (
    Embedder,
    WeightLoadReport,
    build_embedder,
    concat_heads,
    default_head_names,
    load_backbone_weights,
)
from dynametric.models.heads import POOLING_MODES, EmbeddingHead, GlobalPool
from dynametric.models.pddm import PDDM

LoadReport = WeightLoadReport
"""Former name of :class:`WeightLoadReport` (kept so ``from dynametric.models import LoadReport`` still works;
not the data readers' :class:`dynametric.data.LoadReport`)."""

__all__ = [
    "BACKBONES",
    "BNInception",
    "Backbone",
    "EmbeddingHead",
    "Embedder",
    "GlobalPool",
    "LoadReport",
    "PDDM",
    "POOLING_MODES",
    "SimpleCNN",
    "WeightLoadReport",
    "available_backbones",
    "build_embedder",
    "concat_heads",
    "create_backbone",
    "default_head_names",
    "load_backbone_weights",
]
