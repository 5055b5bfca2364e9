"""Training engine (Lightning glue): module, data module, DDP gathering, checkpoints, builders, evaluation protocols.
The run that resolves the method plug-in (``dynametric train``) is :mod:`dynametric.pipeline`, a layer above. See
docs/training.md."""

from dynametric.engine.checkpoint import SafeCheckpointIO, load_checkpoint_file, load_embedder_weights
from dynametric.engine.data import MetricDataModule, ResumableBatchSampler, SeededDataset
from dynametric.engine.distributed import all_gather_no_grad, all_gather_with_grad
from dynametric.engine.module import (
    GroupSettings,
    MetricLearningModule,
    NonFiniteLossError,
    OptimSettings,
    parameter_groups,
)
from dynametric.engine.objective import Objective, compute_objective, select_head
from dynametric.engine.trainer import TrainerSettings, build_trainer

__all__ = [
    "GroupSettings", "MetricDataModule", "MetricLearningModule", "NonFiniteLossError", "Objective", "OptimSettings",
    "ResumableBatchSampler", "SafeCheckpointIO", "SeededDataset", "TrainerSettings", "all_gather_no_grad",
    "all_gather_with_grad", "build_trainer", "compute_objective", "load_checkpoint_file", "load_embedder_weights",
    "parameter_groups", "select_head",
]
