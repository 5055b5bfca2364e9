"""PDDM loss: hard quadruplet mining by a learned PDDM unit plus the joint objective ``E_m + lambda * E_e``.

Huang, Loy, Tang, "Local Similarity-Aware Deep Feature Embedding", NIPS 2016 (the
paper's PDDM unit, hard quadruplet mining and double-header hinge loss).
For a mined quadruplet ``(i, j, k, l)`` (``(i, j)`` positive, ``k`` / ``l`` the hardest negatives of ``i`` / ``j``
by PDDM score)::

    E_m = [alpha + S_ik - S_ij]_+ + [alpha + S_jl - S_ij]_+          (double-header hinge on PDDM scores)
    E_e = [beta + D_ij - D_ik]_+ + [beta + D_ij - D_jl]_+            (Euclidean embedding loss, D = ||f_a - f_b||^2)

The triplet variant ("PDDM + Triplet", the paper's ablation) keeps one header: ``[alpha + S_ik - S_ij]_+`` and
``[beta + D_ij - D_ik]_+``. The PDDM unit lives inside the loss, so :meth:`loss_parameters` hands its weights
to the engine's loss optimizer group and they train end to end with the backbone.

Mining scores all ``m (m - 1) / 2`` pairs without gradient (dropout off); the loss then re-scores only the
selected pairs with gradient (dropout on in training), which is the same as indexing a differentiable
all-pairs matrix but costs ``O(Q)`` instead of ``O(m^2)`` memory in the backward pass.

Host reads per call: none in the faithful mode (a degenerate batch is a flag on the device that zeroes the loss,
the counters stay on the device until read); one in the per-pair mode (the number of positive pairs, a shape).
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F

from dynametric.errors import ConfigError, InputError
from dynametric.losses.base import IndicesTuple, MetricLoss, check_count
from dynametric.miners.pddm import MINING_MODES, NAN_SCORES, _faithful_quadruplet, mine_hard_quadruplets
from dynametric.models.pddm import DEFAULT_CHUNK_BYTES, PDDM
from dynametric.tuples import compute_dtype

__all__ = ["PDDMLoss"]

_DEGENERATE = "batch without a positive pair or without a negative"  # the zero-loss reason, said once

VARIANTS = ("quadruplet", "triplet")
EMBEDDING_DISTANCES = ("squared", "euclidean")
REDUCTIONS = ("mean", "mean_nonzero")


class PDDMLoss(MetricLoss):
    """Joint PDDM objective ``E_m + lambda * E_e`` on hard quadruplets mined by the PDDM score.

    Args:
        embedding_dim: ``D`` of the embeddings (sizes the PDDM unit).
        hidden_dim: PDDM width ``H`` (``None``: ``min(1024, D)``).
        dropout: PDDM dropout after each hidden fc (a value the paper leaves open).
        mode: ``"faithful_one_per_batch"`` (the paper's, one quadruplet per batch) or ``"per_positive_pair"``
            (library option: one quadruplet per positive pair, losses averaged).
        variant: ``"quadruplet"`` (double header, the paper's main method) or ``"triplet"`` (one header).
        alpha, beta, lambda_: margins of ``E_m`` / ``E_e`` and the weight of ``E_e`` (0.5, 1.0, 0.5 [U]).
        embedding_distance: ``"squared"`` (``||f_a - f_b||^2``, default) or ``"euclidean"`` in ``E_e``.
        normalize_embeddings: L2-normalise ``f`` before the unit and ``E_e`` (default true, so ``D in [0, 4]``).
        reduction: per-pair mode only: ``"mean"`` over all quadruplets or ``"mean_nonzero"`` over those with a
            non-zero loss.
        scale: label column used for positives/negatives (0 = finest).

    Counters (per instance, never reset by the loss): ``num_batches``, ``num_degenerate_batches`` (no positive
    pair or no negative: loss 0, graph-connected), ``num_quadruplets`` (the last two kept on the device and read
    when asked for); :meth:`stats` returns them with the last batch's ``E_m`` and ``E_e``.

    NaN scores off the diagonal (a diverged unit or NaN embeddings): the per-pair mode raises :class:`InputError`
    in the call; the faithful mode, which reads nothing on the host in the call, returns a NaN loss for that batch
    (a run's ``trainer.nonfinite`` then stops or skips the step) and :meth:`stats` raises the same error.

    :meth:`loss_parts` gives the last batch's ``E_m``, ``E_e`` (reduced as the loss is, so
    ``loss = E_m + lambda_ * E_e``), ``quadruplets`` (mined in the batch) and ``degenerate`` (1 for a batch without a
    quadruplet, else 0) as tensors; a training run logs them as ``train/<term>/<part>``.
    """

    mines_own_tuples = True

    def __init__(
        self,
        embedding_dim: int,
        hidden_dim: int | None = None,
        dropout: float = 0.5,
        mode: str = "faithful_one_per_batch",
        variant: str = "quadruplet",
        alpha: float = 0.5,
        beta: float = 1.0,
        lambda_: float = 0.5,
        embedding_distance: str = "squared",
        normalize_embeddings: bool = True,
        reduction: str = "mean",
        max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        scale: int = 0,
    ) -> None:
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 0:
            raise ConfigError(f"scale must be a label column index 0..S-1 (0 = finest), got {scale!r}", key="scale")
        super().__init__(scale=scale)
        if mode not in MINING_MODES:
            raise ConfigError(f"unknown PDDM mode {mode!r}; expected one of {MINING_MODES}", key="mode")
        if variant not in VARIANTS:
            raise ConfigError(f"unknown PDDM variant {variant!r}; expected one of {VARIANTS}", key="variant")
        if embedding_distance not in EMBEDDING_DISTANCES:
            raise ConfigError(
                f"unknown embedding_distance {embedding_distance!r}; expected one of {EMBEDDING_DISTANCES}",
                key="embedding_distance",
            )
        if reduction not in REDUCTIONS:
            raise ConfigError(f"unknown reduction {reduction!r}; expected one of {REDUCTIONS}", key="reduction")
        for key, value in (("alpha", alpha), ("beta", beta), ("lambda_", lambda_)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise ConfigError(f"expected a number >= 0 for {key}, got {value!r} ({type(value).__name__})",
                                  key=key)
            if not float(value) >= 0.0:
                raise ConfigError(f"PDDMLoss {key} must be a number >= 0, got {value}", key=key)
        embedding_dim = check_count(embedding_dim, "embedding_dim")
        hidden_dim = None if hidden_dim is None else check_count(hidden_dim, "hidden_dim")
        max_chunk_bytes = check_count(max_chunk_bytes, "max_chunk_bytes")
        self.unit = PDDM(embedding_dim, hidden_dim=hidden_dim, dropout=dropout, max_chunk_bytes=max_chunk_bytes)
        self.mode = mode
        self.variant = variant
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.lambda_ = float(lambda_)
        self.embedding_distance = embedding_distance
        self.normalize_embeddings = bool(normalize_embeddings)
        self.reduction = reduction
        self.num_batches = 0
        # quadruplets, degenerate batches, batches with NaN scores (faithful mode): on the device, read on demand
        self._counts: torch.Tensor | None = None
        self._last: dict[str, torch.Tensor] = {}

    def _counters(self, device: torch.device) -> torch.Tensor:
        if self._counts is None:
            self._counts = torch.zeros(3, dtype=torch.long, device=device)
        elif self._counts.device != device:
            self._counts = self._counts.to(device)
        return self._counts

    def _read_counts(self) -> list[int]:
        return [0, 0, 0] if self._counts is None else [int(v) for v in self._counts.tolist()]

    @property
    def num_quadruplets(self) -> int:
        """Quadruplets mined so far (a host read of the device counter)."""
        return self._read_counts()[0]

    @property
    def num_degenerate_batches(self) -> int:
        """Batches without a positive pair or without a negative so far (a host read of the device counter)."""
        return self._read_counts()[1]

    def stats(self) -> dict[str, float]:
        """Counters and the last batch's loss parts (for logging). Raises :class:`InputError` if a batch so far had
        NaN scores off the diagonal (faithful mode, whose call does not look)."""
        quadruplets, degenerate, nan = self._read_counts()
        if nan:
            raise InputError(NAN_SCORES, key="scores")
        return {
            "num_batches": float(self.num_batches),
            "num_degenerate_batches": float(degenerate),
            "num_quadruplets": float(quadruplets),
            **{k: float(self._last[k]) for k in ("E_m", "E_e") if k in self._last},  # converted here, not per step
        }

    def loss_parts(self) -> dict[str, torch.Tensor]:
        """The last batch's ``E_m``, ``E_e`` (``loss = E_m + lambda_ * E_e``), ``quadruplets`` and ``degenerate``:
        detached 0-dim tensors on the embeddings' device (empty before the first call)."""
        return dict(self._last)

    def _embedding_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        diff = a - b
        if self.embedding_distance == "squared":
            return (diff * diff).sum(dim=-1)
        return torch.linalg.vector_norm(diff, dim=-1)  # subgradient 0 at a == b (no NaN)

    def mine(self, embeddings: torch.Tensor, labels: torch.Tensor) -> IndicesTuple:
        """Quadruplets ``(i, j, k, l)`` of a batch (already normalised if configured) under the current unit."""
        return mine_hard_quadruplets(self._mining_scores(embeddings), labels, self.mode)

    def _unit_input(self, f: torch.Tensor) -> torch.Tensor:
        """``f`` in the unit's parameter dtype: its ``nn.Linear`` layers take no other (float64 or half-precision
        embeddings were a ``mat1 and mat2 must have the same dtype`` error outside autocast); under autocast the
        layers still run in autocast's dtype, as before. The gradient flows back through the conversion."""
        return f.to(self.unit.fc_s.weight.dtype)

    def _mining_scores(self, embeddings: torch.Tensor) -> torch.Tensor:
        """All-pairs unit scores for mining: no gradient, dropout off."""
        with torch.no_grad():
            return self.unit.score_matrix(self._unit_input(embeddings.detach()), deterministic=True)

    def compute_loss(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        indices_tuple: IndicesTuple | None,
        ref_emb: torch.Tensor | None,
        ref_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        if indices_tuple is not None:
            raise InputError("PDDMLoss mines its own quadruplets by PDDM score; pass indices_tuple=None",
                             key="indices_tuple")
        if ref_emb is not None:
            raise InputError("PDDMLoss mines within the batch; ref_emb/ref_labels are not supported", key="ref_emb")
        # the embedding terms in compute_dtype (float64 stays float64, fp16/bf16 in float32, as every tuple loss);
        # the unit's scores in its parameters' dtype, then converted to that dtype too
        f = embeddings.to(compute_dtype(embeddings))
        f = F.normalize(f, p=2, dim=-1, eps=1e-12) if self.normalize_embeddings else f
        self.num_batches += 1
        counts = self._counters(embeddings.device)
        flags: tuple[torch.Tensor, torch.Tensor] | None = None  # faithful: (has a quadruplet, NaN scores), on device
        if self.mode == "faithful_one_per_batch" and f.shape[0] > 0:
            (i, j, k, l), valid, nan = _faithful_quadruplet(self._mining_scores(f), labels)
            flags = (valid, nan)
            counts.add_(torch.stack([valid, ~valid, nan]).long())
            # a debug message: the flag is read only while debug logging is on, until the message is said
            self._log_once.when(_DEGENERATE, lambda: not bool(valid),
                                lambda: f"PDDMLoss: {_DEGENERATE}; returning a zero loss")
        else:
            i, j, k, l = self.mine(f, labels)  # per pair: one host read, the pair count
            if i.numel() == 0:
                counts[1].add_(1)
                zero = embeddings.new_zeros((), dtype=torch.float32).detach()
                self._last = {"E_m": zero, "E_e": zero, "quadruplets": zero, "degenerate": torch.ones_like(zero)}
                return self.zero_loss(embeddings, _DEGENERATE)
            counts[0].add_(int(i.numel()))
        triplet = self.variant == "triplet"
        # One differentiable pass over the selected pairs: (i, j), (i, k) and, for quadruplets, (j, l).
        first = torch.cat([i, i] if triplet else [i, i, j])
        second = torch.cat([j, k] if triplet else [j, k, l])
        s = self.unit.score_index_pairs(self._unit_input(f), first, second).to(f.dtype)
        s = s.reshape(2 if triplet else 3, i.numel())
        d = self._embedding_distance(f[first], f[second]).reshape(s.shape)
        s_pos, d_pos = s[0], d[0]
        e_m = F.relu(self.alpha + s[1] - s_pos)
        e_e = F.relu(self.beta + d_pos - d[1])
        if not triplet:
            e_m = e_m + F.relu(self.alpha + s[2] - s_pos)
            e_e = e_e + F.relu(self.beta + d_pos - d[2])
        per_quad = e_m + self.lambda_ * e_e
        if self.reduction == "mean_nonzero":
            nonzero = per_quad > 0
            denom = nonzero.sum().clamp(min=1)
            loss = (per_quad * nonzero).sum() / denom
            part_m, part_e = (e_m.detach() * nonzero).sum() / denom, (e_e.detach() * nonzero).sum() / denom
        else:
            loss = per_quad.mean()
            part_m, part_e = e_m.detach().mean(), e_e.detach().mean()
        if flags is not None:
            valid, nan = flags
            # a degenerate batch mined placeholder indices: its loss and parts are multiplied by 0 (a zero still
            # connected to the graph, zero gradients); NaN scores make the loss NaN rather than leave it finite
            keep = valid.to(loss.dtype)
            loss = torch.where(nan, torch.full_like(loss, float("nan")), loss * keep)
            part_m, part_e = part_m * keep, part_e * keep
            count = valid.to(torch.float32)
            self._last = {"E_m": part_m, "E_e": part_e, "quadruplets": count, "degenerate": 1.0 - count}
            return loss
        # the count is a host number already (a shape): torch.full writes it on the device without a host wait
        count = torch.full((), float(i.numel()), dtype=torch.float32, device=embeddings.device)
        self._last = {"E_m": part_m, "E_e": part_e, "quadruplets": count, "degenerate": torch.zeros_like(count)}
        return loss
