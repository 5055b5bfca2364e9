"""Reading a run's ``logs/metrics.csv`` in the tests of what a training run logs."""

from __future__ import annotations

import csv
from pathlib import Path

TINY_SYNTHETIC = [
    "data.options={images_per_class: 4, image_size: 16, fine_per_shape: {train: 2, val: 1, test: 1}}",
    "model.backbone_kwargs={width: 8, depth: 2}", "model.embedding_dim=8", "data.batch_size=16",
    "data.iterations_per_epoch=2", "data.eval_batch_size=64", "trainer.log_every_n_steps=1", "run.report=false"]
"""Overrides of a config on the synthetic data for a run of seconds: 18 training classes x 4 images of 16 x 16, a
2-block CNN, 8-d embeddings, 2 iterations per epoch."""


def train_epoch_rows(run_dir: Path) -> list[dict[str, float]]:
    """The rows of ``run_dir/logs/metrics.csv`` that hold the epoch means of the training values (the row with
    ``train/loss_epoch``, or the step counts of the alternating module), in order: ``{column: value}`` of their
    non-empty ``train/`` cells, plus ``epoch`` and ``step``. The per-step values (``train/loss_step``, the learning
    rates ``train/lr``, ``train/lr/<group>``) are not epoch means: left out."""
    out = []
    with (run_dir / "logs" / "metrics.csv").open(encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            cells = {k: float(v) for k, v in row.items() if k.startswith("train/") and v not in ("", None)
                     and not k.endswith("_step") and k != "train/lr" and not k.startswith("train/lr/")}
            if cells:
                out.append({"epoch": float(row["epoch"]), "step": float(row["step"]), **cells})
    return out
