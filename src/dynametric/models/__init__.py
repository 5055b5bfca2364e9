"""dynametric.models: backbones (timm, BN-Inception, a small CNN), pooling, embedding heads, the embedder.

See ``docs/models.md``. Entry point: :func:`build_embedder`.
"""

from dynametric.models.backbones import BACKBONES, Backbone, SimpleCNN, available_backbones, create_backbone
from dynametric.models.bninception import BNInception
from dynametric.models.embedder import (
    Embedder,
    LoadReport,
    build_embedder,
    concat_heads,
    default_head_names,
    load_backbone_weights,
)
from dynametric.models.heads import POOLING_MODES, EmbeddingHead, GlobalPool
from dynametric.models.pddm import PDDM

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
    "available_backbones",
    "build_embedder",
    "concat_heads",
    "create_backbone",
    "default_head_names",
    "load_backbone_weights",
]
