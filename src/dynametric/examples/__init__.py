"""The bundled example for ``dynametric evaluate --example``: generated deterministically in code, no files.

``make_example()`` returns clustered embeddings of a three-scale hierarchy (``fine`` / ``middle`` / ``coarse``),
like the output of a reasonably trained DyML model: items of one fine class lie near their class centre, fine
centres near their middle centre, and so on, with enough noise that the metrics are well below 1.
"""

from __future__ import annotations

import numpy as np

EXAMPLE_SCALE_NAMES = ("fine", "middle", "coarse")


def make_example(num_items: int = 1200, dim: int = 32, fine: int = 120, middle: int = 24, coarse: int = 6,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``(embeddings float32[N, dim], labels int64[N, 3] finest first, scale names)``, deterministic in ``seed``."""
    if not (coarse <= middle <= fine <= num_items // 2):
        raise ValueError("need coarse <= middle <= fine <= num_items / 2")
    rng = np.random.default_rng(seed)
    fine_labels = np.concatenate([np.repeat(np.arange(fine), 2), rng.integers(0, fine, num_items - 2 * fine)])
    rng.shuffle(fine_labels)
    fine_to_middle = np.arange(fine) % middle
    middle_to_coarse = np.arange(middle) % coarse
    mid_labels = fine_to_middle[fine_labels]
    coarse_labels = middle_to_coarse[mid_labels]
    x = (1.0 * rng.standard_normal((coarse, dim))[coarse_labels]
         + 0.8 * rng.standard_normal((middle, dim))[mid_labels]
         + 0.8 * rng.standard_normal((fine, dim))[fine_labels]
         + 1.5 * rng.standard_normal((num_items, dim)))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    labels = np.stack([fine_labels, mid_labels, coarse_labels], 1).astype(np.int64)
    return x.astype(np.float32), labels, list(EXAMPLE_SCALE_NAMES)
