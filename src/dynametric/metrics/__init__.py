"""dynametric.metrics: exact, chunked, multi-scale retrieval and clustering metrics (see ``docs/metrics.md``)."""

from dynametric.metrics.clustering import CLUSTER_METRIC_TABLE, contingency, kmeans_assign, nmi_score, pairwise_f1
from dynametric.metrics.engine import DEFAULT_MEMORY_BUDGET, plan_chunk_rows
from dynametric.metrics.evaluate import (
    ALL_METRICS,
    DEFAULT_METRICS,
    default_scale_names,
    evaluate_embeddings,
)
from dynametric.metrics.ranking import METRIC_TABLE, RankMetric, harmonic_numbers, metrics_from_sorted_ranks
from dynametric.metrics.torch_engine import DEFAULT_DEVICE_MEMORY_BUDGET

__all__ = [
    "ALL_METRICS",
    "CLUSTER_METRIC_TABLE",
    "DEFAULT_DEVICE_MEMORY_BUDGET",
    "DEFAULT_MEMORY_BUDGET",
    "DEFAULT_METRICS",
    "METRIC_TABLE",
    "contingency",
    "default_scale_names",
    "evaluate_embeddings",
    "harmonic_numbers",
    "kmeans_assign",
    "metrics_from_sorted_ranks",
    "nmi_score",
    "pairwise_f1",
    "plan_chunk_rows",
    "RankMetric",
]
