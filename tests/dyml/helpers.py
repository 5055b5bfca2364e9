"""Brute-force reference metrics and tiny DyML releases for the DyML protocol tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def brute_force(q: torch.Tensor, ql: list[int], g: torch.Tensor, gl: list[int],
                excluded: list[set[int]] | None = None, ks: tuple[int, ...] = (1, 10, 20)) -> dict[str, float]:
    """Per-query loops: cosine ranking (ties by gallery index), ASI with N = R_q, full mAP, R@K hit rate;
    queries without a relevant item are skipped. ``excluded[i]``: gallery indices removed for query ``i``."""
    qn = torch.nn.functional.normalize(q.double(), dim=1)
    gn = torch.nn.functional.normalize(g.double(), dim=1)
    sums = {"asi": 0.0, "map": 0.0, **{f"recall@{k}": 0.0 for k in ks}}
    n = 0
    for i in range(q.shape[0]):
        sims = (gn @ qn[i]).tolist()
        cand = [j for j in range(g.shape[0]) if not excluded or j not in excluded[i]]
        order = sorted(cand, key=lambda j: (-sims[j], j))
        rel = [1 if gl[j] == ql[i] else 0 for j in order]
        r = sum(rel)
        if r == 0:
            continue
        n += 1
        hits, ap, asi = 0, 0.0, 0.0
        for rank, x in enumerate(rel, start=1):
            hits += x
            if x:
                ap += hits / rank
            if rank <= r:
                asi += hits / rank
        sums["map"] += ap / r
        sums["asi"] += asi / r
        for k in ks:
            sums[f"recall@{k}"] += 1.0 if any(rel[:k]) else 0.0
    if n == 0:
        return {"num_queries": 0}
    return {k: v / n for k, v in sums.items()} | {"num_queries": n}


def write_png(path: Path, seed: int, size: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def write_release(root: Path, variant: str, *, fine_per_middle: int = 2, middles_per_coarse: int = 2,
                  coarse: int = 2, images: int = 4, copy_query: bool = True) -> Path:
    """A tiny DyML release (glued headers, comma + space, non-contiguous raw ids, files named ``<int>.jpg``,
    PNG bytes inside). Vehicle/Animal: bmk_<level>/{query,gallery}; with ``copy_query`` the first query of every
    level also appears byte-identical (same file name) in its gallery. Product: mini-bmk_all_in_one, where one
    image is stored twice under two names."""
    def csv(rows: list[tuple], head: str) -> str:
        return head + "\n".join(", ".join(str(v) for v in r) for r in rows) + "\n"

    counter = iter(range(10_000))
    rows = []
    for c in range(coarse):
        for m in range(middles_per_coarse):
            for f in range(fine_per_middle):
                fine = 1000 + 37 * ((c * middles_per_coarse + m) * fine_per_middle + f)  # gaps in the raw ids
                for _ in range(images):
                    k = next(counter)
                    rows.append((f"{k}.jpg", 10 + 5 * c, 100 + 3 * (c * middles_per_coarse + m), fine))
    for r in rows:
        write_png(root / "train" / "imgs" / r[0], seed=int(r[0][:-4]))
    (root / "train" / "label.csv").write_text(csv(rows, "fname, coarse_id, middle_id, fine_id"))
    if variant == "product":
        test = [(f"{5000 + i}.jpg", 10 + 5 * ((i % 6) // 4), 100 + (i % 6) // 2, 7000 + (i % 6)) for i in range(18)]
        for r in test:
            write_png(root / "mini-bmk_all_in_one" / "imgs" / r[0], seed=int(r[0][:-4]))
        dup = (f"{5100}.jpg", *test[0][1:])  # byte-identical copy of the first image under another name
        (root / "mini-bmk_all_in_one" / "imgs" / dup[0]).write_bytes(
            (root / "mini-bmk_all_in_one" / "imgs" / test[0][0]).read_bytes())
        test.append(dup)
        (root / "mini-bmk_all_in_one" / "label.csv").write_text(csv(test, "fname, coarse_id, middle_id, fine_id"))
        return root
    for li, level in enumerate(("fine", "middle", "coarse")):
        q = [(f"{6000 + 100 * li + i}.jpg", 50 + (i % 3)) for i in range(6)]
        g = [(f"{6050 + 100 * li + i}.jpg", 50 + (i % 3)) for i in range(9)]
        d = root / f"bmk_{level}"
        for part, items in (("query", q), ("gallery", g)):
            for fname, _ in items:
                write_png(d / part / fname, seed=int(fname[:-4]))
        if copy_query:
            (d / "gallery" / q[0][0]).write_bytes((d / "query" / q[0][0]).read_bytes())
            g = [*g, q[0]]
        (d / "query.csv").write_text(csv(q, "fname, labels"))
        (d / "gallery.csv").write_text(csv(g, "fname, labels"))
    return root
