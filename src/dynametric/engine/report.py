"""Self-contained ``report.html`` for a training run (inline PNGs via matplotlib; tables only without it).

Sections: summary table (untrained vs trained test metrics per scale), training curves (loss per step,
validation metrics per epoch), per-scale metric bars, a 2-D PCA map of the test embeddings coloured by the
coarsest and the finest class, a retrieval gallery (random queries and their top neighbours, green = same fine
class), the worst queries (lowest finest-scale map@r) with their neighbours, and a multi-scale retrieval view (the
same neighbours judged at every scale, one row per scale).
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynametric.utils.io import atomic_write_text

_CSS = """body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}img{max-width:100%}
h2{border-bottom:1px solid #ddd;padding-bottom:4px}.note{color:#555;font-size:90%}"""


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}"/>'


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))


_COUNT_KEYS = ("num_queries", "excluded_queries", "empty_queries", "kmeans_seed", "kmeans_restarts")
"""Per-scale bookkeeping in an evaluation result, not metrics (the ``mean`` block does not have them)."""


def metrics_table(metrics: dict[str, Any], scale_names: Sequence[str]) -> str:
    test, untrained = metrics.get("test", {}), metrics.get("untrained", {})
    names = [m for m in (test.get(scale_names[0]) or untrained.get(scale_names[0]) or {})
             if m not in _COUNT_KEYS]
    rows = ["<tr><th>scale</th><th>metric</th><th>untrained</th><th>trained (best ckpt)</th><th>gain</th></tr>"]
    for scale in [*scale_names, "mean"]:
        for m in names:
            u = untrained.get(scale, {}).get(m)
            t = test.get(scale, {}).get(m)
            gain = t - u if isinstance(u, float) and isinstance(t, float) else ""
            rows.append(f"<tr><td>{html.escape(scale)}</td><td>{html.escape(m)}</td><td>{_fmt(u)}</td>"
                        f"<td>{_fmt(t)}</td><td>{_fmt(gain)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def _image_array(item: Any) -> np.ndarray:
    if isinstance(item, torch.Tensor):
        x = item.detach().float().cpu()
        if x.dim() == 3 and x.shape[0] in (1, 3):
            x = x.permute(1, 2, 0)
        a = x.numpy()
    else:
        a = np.asarray(item, dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a


def _neighbours(emb: torch.Tensor, queries: Sequence[int], k: int, distance: str) -> torch.Tensor:
    q = emb[list(queries)]
    if distance == "cosine":
        e = torch.nn.functional.normalize(emb, dim=1)
        score = torch.nn.functional.normalize(q, dim=1) @ e.T
    else:
        score = -torch.cdist(q, emb)
    score[torch.arange(len(queries)), torch.as_tensor(list(queries))] = -float("inf")
    return score.topk(k, dim=1).indices


def worst_queries(emb: torch.Tensor, labels: torch.Tensor, distance: str, n: int) -> list[int]:
    """The ``n`` queries with the lowest finest-scale map@r (leave-one-out), worst first, ties by index; queries
    without a relevant item are skipped."""
    from dynametric.metrics import evaluate_embeddings

    _, table = evaluate_embeddings(emb, labels[:, :1], metrics=["map@r"], distance=distance, per_query=True,
                                   scale_names=["s"])
    v = table["s"]["map@r"]
    idx = np.flatnonzero(~np.isnan(v))
    return idx[np.lexsort((idx, v[idx]))][:n].tolist()


def _gallery_figure(plt: Any, dataset: Any, labels: torch.Tensor, queries: Sequence[int],
                    nn_idx: torch.Tensor) -> Any:
    """One row per query: the query (black frame) and its neighbours (green = same fine class, red = different)."""
    k = nn_idx.shape[1]
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.3 * (k + 1), 1.45 * len(queries)), squeeze=False)
    for r, q in enumerate(queries):
        row = [q, *nn_idx[r].tolist()]
        for c, i in enumerate(row):
            ax = axes[r][c]
            ax.imshow(_image_array(dataset[i][0]))
            ax.set_xticks([])
            ax.set_yticks([])
            colour = "black" if c == 0 else ("green" if labels[i, 0] == labels[q, 0] else "red")
            for side in ax.spines.values():
                side.set_color(colour)
                side.set_linewidth(3)
            ax.set_title("query" if c == 0 else f"#{c}", fontsize=7)
    return fig


def _sections_with_plots(metrics: dict[str, Any], loss_history: Sequence[Sequence[float]],
                         scale_names: Sequence[str], emb: torch.Tensor | None, labels: torch.Tensor | None,
                         dataset: Any, distance: str, monitor: str, seed: int) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[str] = []
    # curves
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
    if loss_history:
        steps, losses = zip(*[(a, b) for a, b in loss_history])
        axes[0].plot(steps, losses, lw=1)
    axes[0].set(title="training loss", xlabel="optimizer step", ylabel="loss")
    hist = metrics.get("validation", [])
    metric = monitor.split("/", 1)[1] if "/" in monitor else "map@r"
    for scale in scale_names:
        pts = [(h["epoch"], h[scale][metric]) for h in hist if scale in h and metric in h[scale]]
        if pts:
            axes[1].plot(*zip(*pts), marker="o", label=scale)
    axes[1].set(title=f"validation {metric}", xlabel="epoch")
    if hist:
        axes[1].legend()
    out.append("<h2>Training curves</h2>" + _png(fig))
    # bars
    test, untrained = metrics.get("test", {}), metrics.get("untrained", {})
    bar_metrics = [m for m in ("recall@1", "map@r", "r_precision", "map", "asi") if m in test.get(scale_names[0], {})]
    if bar_metrics:
        fig, axes = plt.subplots(1, len(bar_metrics), figsize=(3.2 * len(bar_metrics), 3), squeeze=False)
        x = np.arange(len(scale_names))
        for ax, m in zip(axes[0], bar_metrics):
            ax.bar(x - 0.2, [untrained.get(s, {}).get(m, 0) for s in scale_names], 0.4, label="untrained")
            ax.bar(x + 0.2, [test.get(s, {}).get(m, 0) for s in scale_names], 0.4, label="trained")
            ax.set_xticks(x, scale_names)
            ax.set(title=m, ylim=(0, 1))
        axes[0][0].legend()
        out.append("<h2>Per-scale test metrics</h2>" + _png(fig))
    if emb is None or labels is None or len(emb) < 3:
        return out
    # embedding map
    x = emb.float() - emb.float().mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    xy = (x @ v[:2].T).numpy()
    cols = [(labels.shape[1] - 1, "coarsest"), (0, "finest")] if labels.shape[1] > 1 else [(0, "class")]
    fig, axes = plt.subplots(1, len(cols), figsize=(5.5 * len(cols), 4.5), squeeze=False)
    for ax, (c, word) in zip(axes[0], cols):
        lab = labels[:, c].numpy()
        _, codes = np.unique(lab, return_inverse=True)
        ax.scatter(xy[:, 0], xy[:, 1], c=codes, cmap="tab20" if codes.max() < 20 else "nipy_spectral", s=6)
        ax.set(title=f"PCA of test embeddings, colour = {word} class ({scale_names[c]})")
        ax.set_xticks([])
        ax.set_yticks([])
    out.append("<h2>Embedding map</h2>" + _png(fig))
    if dataset is None:
        return out
    # retrieval gallery: random queries, then the worst ones
    rng = np.random.default_rng(seed)
    n_q, k = min(6, len(emb)), min(8, len(emb) - 1)
    queries = sorted(rng.choice(len(emb), size=n_q, replace=False).tolist())
    nn_idx = _neighbours(emb, queries, k, distance)
    out.append("<h2>Retrieval gallery</h2><p class='note'>Each row: a random test query and its top neighbours "
               "(green = same fine class, red = different).</p>"
               + _png(_gallery_figure(plt, dataset, labels, queries, nn_idx)))
    worst = worst_queries(emb, labels, distance, n_q)
    if worst:
        out.append("<h2>Worst queries</h2><p class='note'>The test queries with the lowest map@r at the finest scale "
                   f"({scale_names[0]}; leave-one-out), worst first, and their top neighbours.</p>"
                   + _png(_gallery_figure(plt, dataset, labels, worst, _neighbours(emb, worst, k, distance))))
    # multi-scale view
    if labels.shape[1] > 1:
        n_q2 = min(3, n_q)
        fig, axes = plt.subplots(n_q2 * labels.shape[1], k + 1,
                                 figsize=(1.3 * (k + 1), 1.35 * n_q2 * labels.shape[1]), squeeze=False)
        for r in range(n_q2):
            q = queries[r]
            row = [q, *nn_idx[r].tolist()]
            for s in range(labels.shape[1]):
                rr = r * labels.shape[1] + s
                for c, i in enumerate(row):
                    ax = axes[rr][c]
                    ax.imshow(_image_array(dataset[i][0]))
                    ax.set_xticks([])
                    ax.set_yticks([])
                    ok = labels[i, s] == labels[q, s]
                    colour = "black" if c == 0 else ("green" if ok else "red")
                    for side in ax.spines.values():
                        side.set_color(colour)
                        side.set_linewidth(3)
                    if c == 0:
                        ax.set_ylabel(scale_names[s], fontsize=8)
        out.append("<h2>Multi-scale retrieval</h2><p class='note'>For each query, its top neighbours judged at "
                   "every scale (one row per scale; green = relevant at that scale).</p>" + _png(fig))
    return out


def write_report(path: str | Path, *, metrics: dict[str, Any], loss_history: Sequence[Sequence[float]],
                 scale_names: Sequence[str], config_yaml: str, emb: torch.Tensor | None = None,
                 labels: torch.Tensor | None = None, dataset: Any = None, distance: str = "cosine",
                 monitor: str = "fine/map@r", seed: int = 0, title: str = "dynametric run") -> None:
    """Write the HTML report atomically."""
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head>"
             f"<body><h1>{html.escape(title)}</h1>", "<h2>Test metrics</h2>", metrics_table(metrics, scale_names)]
    try:
        import matplotlib  # noqa: F401

        parts += _sections_with_plots(metrics, loss_history, scale_names, emb, labels, dataset, distance, monitor,
                                      seed)
    except ImportError:
        parts.append("<p class='note'>matplotlib is not installed: plots omitted.</p>")
    parts.append("<h2>Resolved configuration</h2><pre>" + html.escape(config_yaml) + "</pre></body></html>")
    atomic_write_text(path, "\n".join(parts))
