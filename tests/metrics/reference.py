"""Brute-force reference: a full argsort per query in numpy (float64), metrics straight from their definitions."""

from __future__ import annotations

import numpy as np


def brute_force(query, query_labels, gallery=None, gallery_labels=None, *, distance="cosine", k_values=(1, 2, 4, 8),
                query_ids=None, gallery_ids=None, asi_cutoff=None, empty="exclude", score=None):
    """``score``: an optional precomputed ``[Nq, Ng]`` score matrix (higher = closer) used instead of the float64
    one, e.g. the float32 scores the engine computes, to check exactness without float64-vs-float32 near-ties."""
    q = np.asarray(query, dtype=np.float64)
    ql = np.asarray(query_labels).reshape(len(q), -1)
    loo = gallery is None
    g = q if loo else np.asarray(gallery, dtype=np.float64)
    gl = ql if loo else np.asarray(gallery_labels).reshape(len(g), -1)
    if score is not None:
        score = np.asarray(score, dtype=np.float64)
    elif distance == "cosine":
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        gn = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
        score = qn @ gn.T
    else:
        score = -((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    num_scales = ql.shape[1]
    per = [dict() for _ in range(num_scales)]
    names = [f"recall@{k}" for k in k_values] + ["r_precision", "map@r", "map", "asi"]
    for s in range(num_scales):
        for n in names:
            per[s][n] = []
        per[s]["empty"] = 0
    gidx = np.arange(len(g))
    for i in range(len(q)):
        keep = np.ones(len(g), dtype=bool)
        if loo:
            keep[i] = False
        if query_ids is not None:
            gids = query_ids if loo else gallery_ids
            keep &= np.array([gid != query_ids[i] for gid in gids])
        cand = gidx[keep]
        sc = score[i, cand]
        order = np.lexsort((cand, -sc))  # descending score, ties by ascending gallery index
        ranked = cand[order]
        for s in range(num_scales):
            rel = (gl[ranked, s] == ql[i, s]).astype(np.float64)
            r = int(rel.sum())
            if r == 0:
                per[s]["empty"] += 1
                if empty == "count_as_zero":
                    for n in names:
                        per[s][n].append(0.0)
                continue
            hits = np.cumsum(rel)
            prec = hits / np.arange(1, len(rel) + 1)
            for k in k_values:
                per[s][f"recall@{k}"].append(float(rel[:k].any()))
            per[s]["r_precision"].append(rel[:r].sum() / r)
            per[s]["map@r"].append((rel[:r] * prec[:r]).sum() / r)
            per[s]["map"].append((rel * prec).sum() / r)
            cut = r if asi_cutoff is None else asi_cutoff
            ns = np.arange(1, cut + 1)
            h = hits[np.minimum(ns, len(rel)) - 1]
            per[s]["asi"].append((h / ns).sum() / cut)
    out = []
    for s in range(num_scales):
        d = {n: (float(np.mean(per[s][n])) if per[s][n] else float("nan")) for n in names}
        d["empty"] = per[s]["empty"]
        out.append(d)
    return out
