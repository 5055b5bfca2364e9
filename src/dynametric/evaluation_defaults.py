"""The defaults of :func:`dynametric.metrics.evaluate_embeddings` that ``dynametric evaluate`` shows and uses, in a
module that imports only ``typing``.

The function's signature and the ranking engines' memory budgets are these values, and the command's parser, which
must not import torch (``dynametric evaluate --help`` answers at once; tests/test_cli_imports.py), reads them here:
a default changed here changes the library and the command together (tests/commands/test_evaluate_defaults.py)."""

from __future__ import annotations

from typing import Final

K_VALUES: tuple[int, ...] = (1, 2, 4, 8)
"""``k_values``: the cut-offs ``recall@K`` (``precision@K``, ``map@K``) expands over."""
DISTANCE: Final = "cosine"
"""``distance``: ``cosine`` or ``euclidean``."""
EMPTY_QUERIES: Final = "exclude"
"""``empty_queries``: a query without a relevant item is excluded and counted (``exclude``) or scores 0
(``count_as_zero``)."""
ASI_CUTOFF = "R_q"
"""``asi_cutoff``: the ASI cut-off ``N``, ``R_q`` (each query's number of relevant items) or a positive integer."""
NMI_NORMALIZER = "arithmetic"
"""``nmi_normalizer``: the arithmetic or geometric mean of the two entropies."""
KMEANS_SEED = 0
"""``kmeans_seed``: the seed of the k-means clustering behind ``nmi`` and ``f1``."""
KMEANS_RESTARTS = 1
"""``kmeans_restarts``: k-means runs per scale, the one of lowest inertia kept."""
CPU_MEMORY_BUDGET = 768 * 2**20
"""Working-memory budget in bytes of the CPU ranking engine when ``memory_budget_bytes`` is ``None``
(:data:`dynametric.metrics.engine.DEFAULT_MEMORY_BUDGET`)."""
DEVICE_MEMORY_BUDGET = 7 * 2**29
"""Working-memory budget in bytes of the torch ranking engine on a device when ``memory_budget_bytes`` is ``None``
(:data:`dynametric.metrics.torch_engine.DEFAULT_DEVICE_MEMORY_BUDGET`, 3.5 GiB)."""
