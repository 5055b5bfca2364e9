"""Embedding a dataset split with a trained checkpoint (``dynametric evaluate --checkpoint``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from dynametric.engine.checkpoint import load_embedder_weights
from dynametric.engine.objective import select_head
from dynametric.errors import ConfigError


@torch.no_grad()
def embed_dataset(model: nn.Module, dataset: Any, *, head: str | None = None, batch_size: int = 128,
                  num_workers: int = 0, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embeddings [N, D] float32, labels [N, S])`` of every item of ``dataset``, in order (eval mode)."""
    was = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    if progress:
        from tqdm import tqdm

        loader = tqdm(loader, desc="embedding", unit="batch")
    embs, labs = [], []
    try:
        for images, labels in loader:
            embs.append(select_head(model(images), head).float().cpu())
            labs.append(labels.reshape(len(labels), -1).cpu())
    finally:
        model.train(was)
    return torch.cat(embs), torch.cat(labs)


@dataclass
class CheckpointEmbeddings:
    query: torch.Tensor
    query_labels: torch.Tensor
    gallery: torch.Tensor | None
    gallery_labels: torch.Tensor | None
    scale_names: list[str]
    description: str


def embed_from_checkpoint(checkpoint: str | Path, config: str | Path | None = None, *, split: str | None = None,
                          overrides: Sequence[str] = (), head: str | None = None,
                          progress: bool = False) -> CheckpointEmbeddings:
    """Build the configured model, load ``checkpoint`` (weights_only), embed a split.

    ``config`` defaults to ``config.yaml`` beside the checkpoint (a run folder). With ``eval.protocol:
    query_gallery`` (and no ``split``) the ``eval.query_split`` and ``eval.gallery_split`` are embedded.
    """
    from dynametric.config import load_config
    from dynametric.engine.builders import build_model, eval_head, load_split

    checkpoint = Path(checkpoint)
    if config is None:
        config = checkpoint.parent / "config.yaml"
        if not config.is_file():
            raise ConfigError(f"no --config given and no config.yaml beside {checkpoint}", key="--config")
    cfg = load_config(config, overrides)
    model = build_model(cfg)
    load_embedder_weights(model, checkpoint)
    head = head if head is not None else eval_head(cfg)
    bs, workers = cfg.data.eval_batch_size, cfg.data.workers
    if split is None and cfg.eval.protocol == "query_gallery":
        qd = load_split(cfg, cfg.eval.query_split, train=False)
        gd = load_split(cfg, cfg.eval.gallery_split, train=False)
        q, ql = embed_dataset(model, qd, head=head, batch_size=bs, num_workers=workers, progress=progress)
        g, gl = embed_dataset(model, gd, head=head, batch_size=bs, num_workers=workers, progress=progress)
        names = list(getattr(qd, "scale_names", []) or [])
        desc = f"{checkpoint}: {cfg.data.format} {cfg.eval.query_split} -> {cfg.eval.gallery_split}"
        return CheckpointEmbeddings(q, ql, g, gl, names, desc)
    split = split or cfg.data.test_split
    ds = load_split(cfg, split, train=False)
    q, ql = embed_dataset(model, ds, head=head, batch_size=bs, num_workers=workers, progress=progress)
    names = list(getattr(ds, "scale_names", []) or [])
    return CheckpointEmbeddings(q, ql, None, None, names, f"{checkpoint}: {cfg.data.format} split {split!r}")
