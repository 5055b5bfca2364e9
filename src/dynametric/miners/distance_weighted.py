"""Distance-weighted sampling (Wu, Manmatha, Smola, Krähenbühl, "Sampling Matters in Deep Embedding Learning",
ICCV 2017).

For points uniform on the unit sphere in ``R^D`` pairwise distances have density
``q(d) ∝ d^(D-2) (1 - d^2/4)^((D-3)/2)``. A negative is drawn with probability ``∝ 1/q(max(d, cutoff))``.
This module works in log space (METHODS §2.3):

``log w = (2 - D) log d~ - (D - 3)/2 log(1 - d~^2/4)``, ``d~ = clamp(d, lower_cutoff, 2 - 1e-4)``.

Callers mask non-candidates (e.g. set them to ``-inf``), subtract the row maximum, exponentiate and normalise.
"""

from __future__ import annotations

import torch

from dynametric.errors import InputError

#: Largest distance used inside the log (distances between unit vectors are at most 2; ``1 - d^2/4`` must stay > 0).
MAX_UNIT_SPHERE_DISTANCE = 2.0 - 1e-4


def inverse_q_log_weights(
    dist: torch.Tensor,
    dim: int,
    lower_cutoff: float = 0.5,
    upper_cutoff: float | None = None,
) -> torch.Tensor:
    """Return ``log(1 / q(d~))`` elementwise for Euclidean distances ``dist`` between unit vectors in ``R^dim``.

    ``q`` is the density of pairwise distances of points uniform on the unit sphere (Wu et al. 2017, eq. 1).
    Distances are clamped to ``[lower_cutoff, 2 - 1e-4]`` (the lower cutoff of 0.5 is the paper's). With
    ``upper_cutoff`` (the paper's optional 1.4, off by default), entries with ``d > upper_cutoff`` get ``-inf``
    (probability 0). Computed in float32 (or float64 for float64 input); not normalised, not masked otherwise.
    """
    if dim < 2:
        raise InputError(f"embedding dimension must be >= 2 for distance-weighted sampling, got {dim}", key="dim")
    if not 0.0 <= lower_cutoff < 2.0:
        raise InputError(f"lower_cutoff must be in [0, 2), got {lower_cutoff}", key="lower_cutoff")
    if upper_cutoff is not None and upper_cutoff <= lower_cutoff:
        raise InputError(
            f"upper_cutoff ({upper_cutoff}) must be larger than lower_cutoff ({lower_cutoff})", key="upper_cutoff"
        )
    work = dist if dist.dtype == torch.float64 else dist.float()
    d = work.clamp(min=max(lower_cutoff, 1e-12), max=MAX_UNIT_SPHERE_DISTANCE)
    log_w = (2.0 - float(dim)) * torch.log(d) - (float(dim) - 3.0) / 2.0 * torch.log1p(-0.25 * d * d)
    if upper_cutoff is not None:
        log_w = log_w.masked_fill(work > upper_cutoff, float("-inf"))
    return log_w
