"""The PDDM unit: a Position-Dependent Deep Metric that scores a pair of embeddings.

Huang, Loy, Tang, "Local Similarity-Aware Deep Feature Embedding", NIPS 2016.
For a pair ``(i, j)``::

    u = |f_i - f_j|,  v = (f_i + f_j) / 2
    u' = normalise(ReLU(W_u u + b_u)),  v' = normalise(ReLU(W_v v + b_v))      (per pair, along features)
    c  = ReLU(W_c [u'; v'] + b_c),      S_ij = w_s^T c + b_s                     (higher = more similar)

``S`` is symmetric by construction: ``|a - b|`` and ``a + b`` are bitwise symmetric in floating point.
All-pairs scores use the exact position-stream factorisation ``W_v v_ij + b_v = ((W_v f_i + b_v) +
(W_v f_j + b_v)) / 2``: one ``[m, H]`` product, then broadcasting. The difference stream is evaluated only
for ``i < j`` (mirrored), in chunks of pairs sized by a memory cap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dynametric.errors import ConfigError, InputError

__all__ = ["PDDM", "default_hidden_dim"]

_NORM_EPS = 1e-12


def _unit_rows(x: torch.Tensor) -> torch.Tensor:
    """Rows L2-normalised in ``x``'s dtype, except half precision: float16 / bfloat16 rows are normalised in float32
    and returned in ``x``'s dtype (under float16 autocast on the CPU the norm would be float16, where ``_NORM_EPS`` is
    0, so an all-zero row, a dead ReLU stream, would give 0/0 = NaN). float64 stays float64 (exact gradients)."""
    if x.dtype in (torch.float16, torch.bfloat16):
        return F.normalize(x.float(), p=2, dim=-1, eps=_NORM_EPS).to(x.dtype)
    return F.normalize(x, p=2, dim=-1, eps=_NORM_EPS)
DEFAULT_CHUNK_BYTES = 256 * 2**20


def default_hidden_dim(embedding_dim: int, cap: int = 1024) -> int:
    """Hidden width ``H``: 1024, or the embedding size when that is smaller (our choice: the paper leaves it open)."""
    return min(cap, embedding_dim)


class PDDM(nn.Module):
    """PDDM similarity unit ``S(f_i, f_j) -> R`` (Huang et al., NIPS 2016).

    Args:
        embedding_dim: ``D``, the size of the embeddings it scores.
        hidden_dim: ``H``; ``None`` gives :func:`default_hidden_dim` (``min(1024, D)``).
        dropout: dropout probability after each hidden fc + ReLU (default 0.5, "on": the paper leaves it open;
            ``0`` turns it off). Applied only in
            training mode and never when scores are asked for with ``deterministic=True`` (used for mining).
        max_chunk_bytes: memory cap for one chunk of pairs in the all-pairs scoring (float32 estimate of
            the per-pair intermediates).
    """

    def __init__(
        self,
        embedding_dim: int,
        hidden_dim: int | None = None,
        dropout: float = 0.5,
        max_chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        super().__init__()
        if int(embedding_dim) < 1:
            raise ConfigError(f"PDDM embedding_dim must be >= 1, got {embedding_dim}", key="embedding_dim")
        hidden = default_hidden_dim(int(embedding_dim)) if hidden_dim is None else int(hidden_dim)
        if hidden < 1:
            raise ConfigError(f"PDDM hidden_dim must be >= 1, got {hidden_dim}", key="hidden_dim")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"PDDM dropout must be in [0, 1), got {dropout}", key="dropout")
        if int(max_chunk_bytes) < 1:
            raise ConfigError(f"PDDM max_chunk_bytes must be >= 1, got {max_chunk_bytes}", key="max_chunk_bytes")
        self.embedding_dim = int(embedding_dim)
        self.hidden_dim = hidden
        self.dropout = float(dropout)
        self.max_chunk_bytes = int(max_chunk_bytes)
        self.fc_u = nn.Linear(self.embedding_dim, hidden)
        self.fc_v = nn.Linear(self.embedding_dim, hidden)
        self.fc_c = nn.Linear(2 * hidden, hidden)
        self.fc_s = nn.Linear(hidden, 1)

    # ------------------------------------------------------------------ internals
    def _check(self, x: torch.Tensor, name: str) -> None:
        if x.dim() != 2 or x.shape[1] != self.embedding_dim:
            raise InputError(
                f"PDDM expects [N, {self.embedding_dim}] embeddings, got shape {tuple(x.shape)}", key=name
            )

    def _drop(self, x: torch.Tensor, deterministic: bool) -> torch.Tensor:
        if self.dropout > 0.0 and self.training and not deterministic:
            return F.dropout(x, p=self.dropout, training=True)
        return x

    def _head(self, hu: torch.Tensor, hv: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """From the pre-activation stream outputs ``W_u u + b_u`` and ``W_v v + b_v`` to the scores ``[P]``."""
        u = _unit_rows(self._drop(F.relu(hu), deterministic))
        v = _unit_rows(self._drop(F.relu(hv), deterministic))
        c = self._drop(F.relu(self.fc_c(torch.cat([u, v], dim=-1))), deterministic)
        return self.fc_s(c).squeeze(-1)

    def pairs_per_chunk(self) -> int:
        """How many pairs one chunk of the all-pairs scoring holds under ``max_chunk_bytes``."""
        per_pair = 4 * (self.embedding_dim + 8 * self.hidden_dim)
        return max(1, self.max_chunk_bytes // per_pair)

    def _score_index_pairs(
        self, a: torch.Tensor, a_pos: torch.Tensor, ia: torch.Tensor,
        b: torch.Tensor, b_pos: torch.Tensor, ib: torch.Tensor, deterministic: bool,
    ) -> torch.Tensor:
        """Scores of ``(a[ia[t]], b[ib[t]])`` for every ``t``, chunked; ``*_pos = fc_v(x)`` precomputed."""
        out = []
        step = self.pairs_per_chunk()
        for start in range(0, ia.numel(), step):
            sa, sb = ia[start:start + step], ib[start:start + step]
            hu = self.fc_u((a[sa] - b[sb]).abs())
            hv = 0.5 * (a_pos[sa] + b_pos[sb])
            out.append(self._head(hu, hv, deterministic))
        if not out:
            return a.new_zeros(0)
        return torch.cat(out)

    # ------------------------------------------------------------------ public API
    def forward(self, a: torch.Tensor, b: torch.Tensor, *, deterministic: bool = False) -> torch.Tensor:
        """Row-aligned scores ``S(a[t], b[t])`` -> ``[P]`` (inputs ``[P, D]``)."""
        return self.score_pairs(a, b, deterministic=deterministic)

    def score_pairs(self, a: torch.Tensor, b: torch.Tensor, *, deterministic: bool = False) -> torch.Tensor:
        """Row-aligned scores ``S(a[t], b[t])`` for ``[P, D]`` inputs, straight from the unit's definition."""
        self._check(a, "a")
        self._check(b, "b")
        if a.shape[0] != b.shape[0]:
            raise InputError(f"score_pairs needs equal row counts, got {a.shape[0]} and {b.shape[0]}", key="b")
        hu = self.fc_u((a - b).abs())
        hv = self.fc_v(0.5 * (a + b))
        return self._head(hu, hv, deterministic)

    def score_index_pairs(
        self, f: torch.Tensor, i: torch.Tensor, j: torch.Tensor, *, deterministic: bool = False
    ) -> torch.Tensor:
        """Scores of the pairs ``(f[i[t]], f[j[t]])`` using the position-stream factorisation."""
        self._check(f, "embeddings")
        pos = self.fc_v(f)
        return self._score_index_pairs(f, pos, i.long(), f, pos, j.long(), deterministic)

    def score_matrix(
        self, f: torch.Tensor, *, deterministic: bool = False, diagonal: float = float("-inf")
    ) -> torch.Tensor:
        """All-pairs scores ``[m, m]`` of a batch ``f: [m, D]`` in one vectorised pass.

        Only ``i < j`` is evaluated (in memory-capped chunks) and mirrored, so the result is exactly
        symmetric; the diagonal (a sample with itself) is masked with ``diagonal``.
        """
        self._check(f, "embeddings")
        m = f.shape[0]
        iu, ju = torch.triu_indices(m, m, offset=1, device=f.device)
        pos = self.fc_v(f)
        s = self._score_index_pairs(f, pos, iu, f, pos, ju, deterministic)
        out = torch.full((m, m), diagonal, dtype=s.dtype if s.numel() else f.dtype, device=f.device)
        out = out.index_put((iu, ju), s).index_put((ju, iu), s)
        return out

    def score_cross(
        self, q: torch.Tensor, r: torch.Tensor, *, deterministic: bool = True
    ) -> torch.Tensor:
        """Scores of every query against every reference, ``[nq, nr]`` (chunked; no masking)."""
        self._check(q, "query")
        self._check(r, "reference")
        nq, nr = q.shape[0], r.shape[0]
        iq = torch.arange(nq, device=q.device).repeat_interleave(nr)
        ir = torch.arange(nr, device=q.device).repeat(nq)
        s = self._score_index_pairs(q, self.fc_v(q), iq, r, self.fc_v(r), ir, deterministic)
        return s.reshape(nq, nr)

    def score_candidates(
        self, q: torch.Tensor, r: torch.Tensor, candidates: torch.Tensor, *, deterministic: bool = True
    ) -> torch.Tensor:
        """Scores ``S(q[a], r[candidates[a, b]])`` -> ``[nq, k]`` for a ``LongTensor[nq, k]`` of candidates."""
        self._check(q, "query")
        self._check(r, "reference")
        if candidates.dim() != 2 or candidates.shape[0] != q.shape[0]:
            raise InputError(
                f"candidates must be [{q.shape[0]}, k], got shape {tuple(candidates.shape)}", key="candidates"
            )
        k = candidates.shape[1]
        iq = torch.arange(q.shape[0], device=q.device).repeat_interleave(k)
        s = self._score_index_pairs(q, self.fc_v(q), iq, r, self.fc_v(r), candidates.reshape(-1).long(),
                                    deterministic)
        return s.reshape(q.shape[0], k)

    def extra_repr(self) -> str:
        return (
            f"embedding_dim={self.embedding_dim}, hidden_dim={self.hidden_dim}, dropout={self.dropout}, "
            f"max_chunk_bytes={self.max_chunk_bytes}"
        )
