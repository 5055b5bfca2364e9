"""Cut-offs far beyond the gallery: a fixed ASI cut-off ``N`` (QA: ``2**63 - 1`` raised a TypeError, ``10**10`` ran
out of memory building ``H[0..N]``) and ``precision@K`` / ``map@K`` for a huge ``K`` (QA: ``10**20`` raised an
OverflowError). Checked against a float64 brute force from the definitions (docs/metrics.md), on both engines."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
import torch

from dynametric.metrics import evaluate_embeddings

N_ITEMS = 40


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    emb = torch.randn(N_ITEMS, 8, generator=gen, dtype=torch.float64)
    labels = torch.arange(N_ITEMS).reshape(N_ITEMS, 1) % 6  # classes of 6 or 7: R_q = 5 or 6
    return emb, labels


def _hits(emb: torch.Tensor, labels: torch.Tensor) -> list[np.ndarray]:
    """Per query (leave-one-out, cosine): relevance of its gallery (the other 39 items), best first."""
    x = emb / emb.norm(dim=1, keepdim=True)
    sims = (x @ x.T).numpy()
    lab = labels[:, 0].numpy()
    out = []
    for q in range(N_ITEMS):
        others = [g for g in range(N_ITEMS) if g != q]
        order = sorted(others, key=lambda g: -sims[q, g])
        out.append(np.array([lab[g] == lab[q] for g in order], dtype=np.float64))
    return out


def _asi_brute(rel: np.ndarray, n: int) -> float:
    """(1/N) sum_{i<=N} hits(i) / i: ranks past the gallery hold every relevant item (hits = R); that tail's sum
    R (H_N - H_|G|) is taken in 50-digit arithmetic (mpmath), not from the code under test."""
    hits = np.cumsum(rel)
    top = min(n, rel.size)
    head = sum(hits[i - 1] / i for i in range(1, top + 1))
    if n > rel.size:
        mpmath.mp.dps = 50
        head += float(rel.sum() * (mpmath.harmonic(n) - mpmath.harmonic(rel.size)))
    return float(head / n)


@pytest.mark.parametrize("engine", ["cpu", "torch"])
@pytest.mark.parametrize("cutoff", [2**63 - 1, 10**10, N_ITEMS + 5, N_ITEMS - 1, 7])
def test_asi_with_a_cutoff_beyond_the_gallery_is_the_definition(engine: str, cutoff: int) -> None:
    emb, labels = _data()
    rels = _hits(emb, labels)
    want = np.mean([_asi_brute(r, cutoff) for r in rels])
    got = evaluate_embeddings(emb, labels, metrics=["asi"], k_values=(), asi_cutoff=cutoff, ranking_engine=engine,
                              scale_names=["label"])
    assert got["label"]["asi"] == pytest.approx(want, rel=1e-12, abs=0)
    assert want > 0


@pytest.mark.parametrize("engine", ["cpu", "torch"])
@pytest.mark.parametrize("k", [10**20, 2**63 - 1, N_ITEMS + 5, 3])
def test_precision_and_map_at_a_k_beyond_the_gallery_are_the_definition(engine: str, k: int) -> None:
    """docs/metrics.md: precision@k = |{j : rank_j <= k}| / min(k, R_q), map@k = (1/n_k) sum_{i<=k} rel(i) P@i
    with n_k the relevant items in the top k (0 when none); past the gallery, min(k, R_q) = n_k = R_q (a perfect
    ranking scores 1)."""
    emb, labels = _data()
    prec, ap = [], []
    for rel in _hits(emb, labels):
        r = rel.sum()
        top = rel[:min(k, rel.size)]
        denom = min(k, r)
        prec.append(top.sum() / denom)
        ap.append(sum(top[i] * top[:i + 1].sum() / (i + 1) for i in range(top.size)) / max(top.sum(), 1))
    got = evaluate_embeddings(emb, labels, metrics=["recall@K", f"precision@{k}", f"map@{k}"], k_values=(k,),
                              ranking_engine=engine, scale_names=["label"])["label"]
    assert got[f"precision@{k}"] == pytest.approx(np.mean(prec), rel=1e-12, abs=0)
    assert got[f"map@{k}"] == pytest.approx(np.mean(ap), rel=1e-12, abs=0)
    if k > N_ITEMS:
        assert got[f"recall@{k}"] == 1.0 and got[f"precision@{k}"] == 1.0  # every relevant item is ranked
