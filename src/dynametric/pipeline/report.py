"""Self-contained ``report.html`` for a training run (inline PNGs via matplotlib; tables only without it).

Sections: summary table (untrained vs trained test metrics per scale), with per-category test results (the
results' ``by_category``) a sortable table per category and scale, training curves (loss and learning rate at the
steps the loggers log them, validation metrics per epoch), per-scale metric bars, a 2-D PCA map of the test
embeddings coloured by the coarsest scale with two or more classes and by the finest class, a retrieval gallery
(random queries and their top neighbours, green = same finest-scale class), the worst queries (lowest finest-scale
map@r) with their neighbours, and, for data with several label scales, a multi-scale retrieval view (the same
neighbours judged at every scale, one row per scale).

:func:`category_summary` is the same per-category block as text, for the end-of-run summary in the terminal.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynametric.config.schema import split_monitor
from dynametric.distances import euclidean_matrix
from dynametric.metrics.categories import category_count
from dynametric.metrics.evaluate import RESULT_COUNT_KEYS
from dynametric.utils.io import atomic_write_text
from dynametric.utils.text import display_width, text_table

_CSS = """body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f0f0f0}img{max-width:100%}
h2{border-bottom:1px solid #ddd;padding-bottom:4px}.note{color:#555;font-size:90%}
table.sortable th{cursor:pointer}td.text{text-align:left}.scroll{max-height:40em;overflow:auto;display:inline-block}
.scroll table{margin:0}.scroll thead th{position:sticky;top:0}"""
# Sorts a table.sortable by the clicked column (again: the other way): every cell's data-v is its number, "" for
# none (always last); equal values keep their order, so sorting by one column then another groups by the second.
_SORT_JS = """<script>function dmSort(th){const t=th.closest("table"),i=th.cellIndex,b=t.tBodies[0];
const d=th.dataset.dir==="asc"?-1:1;for(const h of t.tHead.rows[0].cells)delete h.dataset.dir;
th.dataset.dir=d>0?"asc":"desc";const k=r=>{const v=r.cells[i].dataset.v;return v===undefined||v===""?NaN:Number(v)};
Array.from(b.rows).map((r,n)=>[k(r),n,r]).sort((x,y)=>isNaN(x[0])-isNaN(y[0])||d*(x[0]-y[0])||x[1]-y[1])
.forEach(e=>b.appendChild(e[2]));}</script>"""


def _subplots(nrows: int, ncols: int, **kwargs: Any) -> tuple[Any, Any]:
    """``plt.subplots`` without pyplot: a ``matplotlib.figure.Figure`` of its own, which ``savefig`` writes with
    no backend chosen; the caller's backend (a notebook's inline one) and pyplot's figures are left alone (the
    report switched the process to ``Agg`` before)."""
    from matplotlib.figure import Figure

    figsize = kwargs.pop("figsize", None)
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return f'<img src="data:image/png;base64,{base64.b64encode(buf.getvalue()).decode("ascii")}"/>'


def _fmt(v: Any) -> str:
    """A table cell: a float to 4 decimals, ``-`` for a value that is missing (``None``) or NaN (as the per-category
    table shows them), anything else as text (escaped)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))


_COUNT_KEYS = RESULT_COUNT_KEYS
"""Per-scale bookkeeping in an evaluation result, not metrics (the ``mean`` block does not have them)."""


def tested_weights(selected: Mapping[str, Any] | None) -> str:
    """What the test evaluated, from ``run_info.json``'s ``selected``: ``best.ckpt (epoch E, step S)`` or
    ``final weights`` (``trained`` when not known)."""
    if not selected:
        return "trained"
    if selected.get("checkpoint") == "best.ckpt":
        return f"best.ckpt (epoch {selected.get('epoch')}, step {selected.get('global_step')})"
    return str(selected.get("checkpoint", "trained"))


def metrics_table(metrics: dict[str, Any], scale_names: Sequence[str],
                  selected: Mapping[str, Any] | None = None) -> str:
    """Untrained against trained test metrics per scale; the trained column names the weights tested
    (:func:`tested_weights`), and a last row per scale gives its query counts (queries with a relevant item,
    queries excluded or without one), which the metrics are means over."""
    test, untrained = metrics.get("test", {}), metrics.get("untrained", {})
    # the metrics are what the mean over the scales has: a protocol's per-scale bookkeeping (a DyML protocol's
    # gallery_size, query_in_gallery, ...) is not averaged, and is no metric row
    names = [m for m in (test.get("mean") or test.get(scale_names[0]) or untrained.get("mean")
                         or untrained.get(scale_names[0]) or {}) if m not in _COUNT_KEYS]
    trained = html.escape(tested_weights(selected))
    rows = [f"<tr><th>scale</th><th>metric</th><th>untrained</th><th>{trained}</th><th>gain</th></tr>"]
    for scale in [*scale_names, "mean"]:
        for m in names:
            u = untrained.get(scale, {}).get(m)
            t = test.get(scale, {}).get(m)
            gain = t - u if isinstance(u, float) and isinstance(t, float) else ""
            rows.append(f"<tr><td>{html.escape(scale)}</td><td>{html.escape(m)}</td><td>{_fmt(u)}</td>"
                        f"<td>{_fmt(t)}</td><td>{_fmt(gain)}</td></tr>")
        counts = {k: test.get(scale, {}).get(k) for k in ("num_queries", "excluded_queries", "empty_queries")}
        if scale != "mean" and any(v is not None for v in counts.values()):
            text = ", ".join(f"{k} {_fmt(v)}" for k, v in counts.items() if v is not None)
            rows.append(f"<tr class='counts'><td>{html.escape(scale)}</td><td colspan='4'>test queries: "
                        f"{html.escape(text)}</td></tr>")
    return "<table>" + "".join(rows) + "</table>"


def run_section(run: Mapping[str, Any] | None, monitor: str, seed: int,
                validation: Sequence[Mapping[str, Any]] = ()) -> str:
    """The "Run" section: the weights the test evaluated and why (the validation round and monitored value behind
    ``best.ckpt``, or the reason for the final weights), the seed, the run's notes on the data's scales, and the
    software and machine (``run_info.json``'s ``selected``, ``notes``, ``environment``)."""
    run = run or {}
    selected = run.get("selected") or {}
    lines = [f"tested: {tested_weights(selected)}"]
    if selected.get("checkpoint") == "best.ckpt":
        epoch = selected.get("epoch")
        chosen = next((r for r in validation if r.get("epoch") == epoch), None)
        scale, metric = split_monitor(monitor)
        value = None if chosen is None else chosen.get(scale, {}).get(metric)
        lines.append(f"selected on the validation split by val/{monitor}" +
                     (f" = {_fmt(value)} (epoch {epoch}'s round)" if value is not None else ""))
    elif selected.get("reason"):
        lines.append(f"why: {selected['reason']}")
    lines.append(f"seed: {seed}")
    # the preflight's warnings and notes about the data's scales (run_info.json notes): a monitored scale of one
    # class, a mean averaging such scales in
    lines += [str(n) for n in run.get("notes") or () if isinstance(n, str)]
    env = run.get("environment") or {}
    if env:
        lines.append("software: " + ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items()))
        lines.append(f"machine: {env.get('host', '?')}, {env.get('platform', '?')}; accelerator "
                     f"{env.get('accelerator', '?')}, {run.get('processes', '?')} process(es); started "
                     f"{env.get('started_utc', '?')}")
    return "<h2>Run</h2><ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"


def _is_value(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def _category_metrics(by_category: Mapping[str, Mapping[str, Any]]) -> tuple[list[str], list[str]]:
    """(scale names, metric names) of a ``by_category`` block, as its first entry lists them."""
    first = next(iter(by_category.values()))
    scales = [k for k in first if k != "mean"]
    metrics = [m for m in (first.get("mean") or first[scales[0]]) if m not in _COUNT_KEYS]
    return scales, metrics


def category_table(by_category: Mapping[str, Mapping[str, Any]], overall_only: Sequence[str] = ()) -> str:
    """The report's "Per category" section: one row per category and scale (and the category's ``mean`` with several
    scales), in the order of ``by_category`` (as ``metrics.json`` lists it), with the category's query count
    (``queries`` = ``num_queries`` + ``excluded_queries``); sortable by any column (a click in the browser; the page
    stays self-contained). Category names are user text: escaped. Every cell's ``data-v`` holds its value (the
    metric values unrounded; a category's and a scale's position in the block), which the sorting reads.
    ``overall_only``: the test metrics without per-category values (named in the note)."""
    scales, metrics = _category_metrics(by_category)
    head = ["category", "scale", *metrics, "queries", "num_queries", "excluded_queries"]
    rows = []
    for c, (category, entry) in enumerate(by_category.items()):
        own = [k for k in entry if k != "mean"]
        for scale in own + (["mean"] if len(own) > 1 else []):
            values = entry[scale]
            pos = own.index(scale) if scale in own else len(own)
            cells = [f'<td class="text" data-v="{c}">{html.escape(str(category))}</td>',
                     f'<td class="text" data-v="{pos}">{html.escape(scale)}</td>']
            for m in metrics:
                v = values.get(m)
                cells.append(f'<td data-v="{float(v)!r}">{v:.4f}</td>' if _is_value(v) else '<td data-v="">-</td>')
            if scale == "mean":
                cells += ['<td data-v=""></td>'] * 3
            else:
                counts = (int(values.get("num_queries", 0)), int(values.get("excluded_queries", 0)))
                cells += [f'<td data-v="{n}">{n}</td>' for n in (sum(counts), *counts)]
            rows.append("<tr>" + "".join(cells) + "</tr>")
    count = category_count(len(by_category))
    note = (f"<p class='note'>The test metrics of each query category ({count}; "
            f"{', '.join(html.escape(s) for s in scales)}): each value is the mean over the category's queries, so "
            "the overall value (<em>Test metrics</em>) is their mean weighted by <code>num_queries</code>; "
            "<code>queries</code> also counts the excluded ones (no relevant item)"
            + (f"; {html.escape(', '.join(overall_only))}: overall only" if overall_only else "")
            + ". Click a column to sort by it; the rows come as in <code>metrics.json</code> "
            "(<code>test.by_category</code>).</p>")
    header = "".join(f'<th onclick="dmSort(this)">{html.escape(h)}</th>' for h in head)
    return (note + f'<div class="scroll"><table class="sortable" id="per-category"><thead><tr>{header}</tr></thead>'
            "<tbody>" + "".join(rows) + "</tbody></table></div>")


def _display_name(name: str, width: int = 32) -> str:
    """A category name for the terminal: non-printable characters escaped, names wider than ``width`` terminal
    columns shortened."""
    text = name if name.isprintable() else name.encode("unicode_escape").decode("ascii")
    if display_width(text) <= width:
        return text
    while display_width(text) > width - 3:  # terminal columns: a CJK character takes two
        text = text[:-1]
    return text + "..."


def category_summary(by_category: Mapping[str, Mapping[str, Any]], scale_names: Sequence[str], monitor: str,
                     where: str = "metrics.json (test.by_category)", max_rows: int = 20, edge: int = 5) -> list[str]:
    """The per-category test results as text lines for the end-of-run summary: one row per category with its query
    count and, per scale, ``recall@1`` and ``map@r`` (those of them the results hold, else their first two metrics),
    plus a column for the monitored metric (``monitor``, ``<scale>/<metric>``) when it is not one of those. Up to
    ``max_rows`` categories all of them, in the block's order; more: the ``edge`` worst and ``edge`` best by the
    monitored metric (else the finest scale's ``map@r`` or first metric), worst first, with a line saying how many
    are omitted and ``where`` the full table is."""
    own, available = _category_metrics(by_category)
    scales = [s for s in scale_names if s in own] or own
    main = [m for m in ("recall@1", "map@r") if m in available] or available[:2]
    columns = [(s, m) for s in scales for m in main]
    mon_scale, mon_metric = split_monitor(monitor)
    if mon_metric in available and mon_scale in [*scales, "mean"]:
        key = (mon_scale, mon_metric)
        if key not in columns:
            columns.append(key)
    else:
        key = (scales[0], "map@r" if "map@r" in available else main[0])

    def value(entry: Mapping[str, Any], scale: str, metric: str) -> Any:
        return entry.get(scale, {}).get(metric)

    header = ["category", "queries", *(f"{s} {m}" for s, m in columns)]
    items = list(by_category.items())
    omitted = split_at = 0
    if len(items) > max_rows:
        ranked = sorted((i for i in items if _is_value(value(i[1], *key))), key=lambda i: value(i[1], *key))
        shown = ranked if len(ranked) <= 2 * edge else [*ranked[:edge], *ranked[-edge:]]
        omitted = len(items) - len(shown)
        split_at = edge if len(ranked) > 2 * edge else len(shown)
        items = shown
    rows = []
    for category, entry in items:
        first = entry.get(scales[0], {})
        queries = int(first.get("num_queries", 0)) + int(first.get("excluded_queries", 0))
        cells = [_display_name(str(category)), str(queries)]
        for s, m in columns:
            v = value(entry, s, m)
            cells.append(f"{v:.4f}" if _is_value(v) else "-")
        rows.append(cells)
    table = text_table([header, *rows])

    if not omitted:
        count = category_count(len(by_category))
        return [f"test metrics by query category ({count}; each value the mean over the category's queries):",
                *table]
    worst, best = rows[:split_at], rows[split_at:]
    title = (f"test metrics by query category: the {len(worst)} worst and {len(best)} best of {len(by_category)} "
             f"by {key[0]}/{key[1]}, worst first; {omitted} omitted (every category: {where}):"
             if best else f"test metrics by query category: the {len(worst)} of {len(by_category)} with a "
             f"{key[0]}/{key[1]} value, worst first; {omitted} omitted (every category: {where}):")
    middle = [f"... {category_count(omitted)} omitted ..."] if best else []
    return [title, table[0], *table[1:split_at + 1], *middle, *table[split_at + 1:]]


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
        score = -euclidean_matrix(q, emb)  # near pairs exact on the CPU (docs/losses.md)
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


def _gallery_figure(dataset: Any, labels: torch.Tensor, queries: Sequence[int],
                    nn_idx: torch.Tensor) -> Any:
    """One row per query: the query (black frame) and its neighbours (green = same class at the finest scale, label
    column 0; red = different)."""
    k = nn_idx.shape[1]
    fig, axes = _subplots(len(queries), k + 1, figsize=(1.3 * (k + 1), 1.45 * len(queries)), squeeze=False)
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


def pca_colour_columns(labels: torch.Tensor) -> list[tuple[int, str]]:
    """The label columns the report's PCA map colours its points by, with a word for each: the coarsest column
    with two or more classes (a root of one class would colour every point alike), then the finest;
    ``[(0, "finest")]`` alone where no coarser column has two classes, ``[(0, "class")]`` for one column."""
    if labels.shape[1] == 1:
        return [(0, "class")]
    last = labels.shape[1] - 1
    for c in range(last, 0, -1):
        if int(torch.unique(labels[:, c]).numel()) >= 2:
            word = "coarsest" if c == last else "coarsest with two or more classes"
            return [(c, word), (0, "finest")]
    return [(0, "finest")]


def _wrapped(name: str, width: int = 12) -> str:
    """A scale name as a tick or title label: broken at spaces into lines of about ``width`` characters (a word
    longer than that stays whole)."""
    import textwrap

    return "\n".join(textwrap.wrap(name, width, break_long_words=False, break_on_hyphens=False)) or name


def _tick_style(names: Sequence[str]) -> dict[str, Any]:
    """The per-scale bar chart's tick labels: turned 35 degrees (anchored at their right end, under their bar)
    where four or more scales, or a long name, would run into each other on a panel 3.2 inches wide."""
    if len(names) >= 4 or sum(len(n) for n in names) > 24:
        return {"rotation": 35, "ha": "right", "rotation_mode": "anchor"}
    return {}


def validation_curves(history: Sequence[Mapping[str, Any]], scale_names: Sequence[str],
                      monitor: str) -> dict[str, list[tuple[int, float]]]:
    """The report's validation curves: per scale, ``(epoch, value)`` of the monitored metric in every round that has
    it, and the ``mean`` over the scales too when the monitor is a ``mean/...`` one (the curve best.ckpt was chosen
    on)."""
    scale_of, metric = split_monitor(monitor) if "/" in monitor else ("", "map@r")
    scales = [*scale_names, "mean"] if scale_of == "mean" else list(scale_names)
    curves = {}
    for scale in scales:
        pts = [(int(h["epoch"]), h[scale][metric]) for h in history
               if isinstance(h.get(scale), Mapping) and metric in h[scale]]
        if pts:
            curves[scale] = pts
    return curves


def no_validation_text(run: Mapping[str, Any] | None) -> str:
    """What the validation panel of a run without validation rounds says: ``no validation split`` (``run_info``'s
    ``val_images`` is 0), else ``no validation round ran`` (e.g. training stopped before the first one)."""
    return "no validation split" if (run or {}).get("val_images") == 0 else "no validation round ran"


def bars_figure(test: Mapping[str, Any], untrained: Mapping[str, Any], scale_names: Sequence[str],
                bar_metrics: Sequence[str]) -> Any:
    """The per-scale test metrics as bars, untrained beside trained, one panel per metric. The legend sits in a
    band above the value 1 that no bar reaches (the metrics are in [0, 1]; the axis is drawn to 1.18 with ticks up
    to 1 only), so it never covers a bar (it sat in the first panel's best corner, over bars of 1.0)."""
    fig, axes = _subplots(1, len(bar_metrics), figsize=(3.2 * len(bar_metrics), 3), squeeze=False)
    x = np.arange(len(scale_names))
    for ax, m in zip(axes[0], bar_metrics):
        ax.bar(x - 0.2, [untrained.get(s, {}).get(m, 0) for s in scale_names], 0.4, label="untrained")
        ax.bar(x + 0.2, [test.get(s, {}).get(m, 0) for s in scale_names], 0.4, label="trained")
        ax.set_xticks(x, [_wrapped(s) for s in scale_names], **_tick_style(scale_names))
        ax.set(title=m, ylim=(0, 1.18), yticks=[0, 0.25, 0.5, 0.75, 1])
    axes[0][0].legend(loc="upper center", ncol=2, fontsize=8, frameon=False, borderaxespad=0.1, handlelength=1.2,
                      columnspacing=0.8)
    return fig


def _sections_with_plots(metrics: dict[str, Any], loss_history: Sequence[Sequence[float]],
                         scale_names: Sequence[str], emb: torch.Tensor | None, labels: torch.Tensor | None,
                         dataset: Any, distance: str, monitor: str, seed: int,
                         lr_history: Mapping[str, Sequence[Sequence[float]]] | None = None,
                         run: Mapping[str, Any] | None = None) -> list[str]:
    out: list[str] = []
    # curves: the loss and learning rate at the loggers' steps (train/loss_step, train/lr), validation per epoch
    lrs = {name: pts for name, pts in (lr_history or {}).items() if pts}
    fig, axes = _subplots(1, 3 if lrs else 2, figsize=(16 if lrs else 11, 3.5))
    if loss_history:
        steps, losses = zip(*[(a, b) for a, b in loss_history])
        axes[0].plot(steps, losses, lw=1)
    axes[0].set(title="training loss", xlabel="optimizer step", ylabel="loss")
    hist = metrics.get("validation", [])
    metric = monitor.split("/", 1)[1] if "/" in monitor else "map@r"
    for scale, pts in validation_curves(hist, scale_names, monitor).items():
        axes[1].plot(*zip(*pts), marker="o", label=scale, ls="--" if scale == "mean" else "-")
    axes[1].set(title=f"validation {metric}", xlabel="epoch")
    note = ""
    if hist:
        axes[1].legend()
    else:
        text = no_validation_text(run)
        axes[1].text(0.5, 0.5, text, ha="center", va="center", transform=axes[1].transAxes, color="#555")
        note = f"<p class='note'>Validation {metric}: {html.escape(text)}.</p>"
    if lrs:
        for name, pts in lrs.items():
            axes[2].plot(*zip(*pts), lw=1, label=name.removeprefix("train/lr/") if name != "train/lr" else "lr")
        axes[2].set(title="learning rate", xlabel="optimizer step")
        if len(lrs) > 1:
            axes[2].legend()
    out.append("<h2>Training curves</h2>" + note + _png(fig))
    # bars
    test, untrained = metrics.get("test", {}), metrics.get("untrained", {})
    bar_metrics = [m for m in ("recall@1", "map@r", "r_precision", "map", "asi") if m in test.get(scale_names[0], {})]
    if bar_metrics:
        out.append("<h2>Per-scale test metrics</h2>" + _png(bars_figure(test, untrained, scale_names, bar_metrics)))
    if emb is None or labels is None or len(emb) < 3:
        return out
    # embedding map
    x = emb.float() - emb.float().mean(0)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    xy = (x @ v[:2].T).numpy()
    cols = pca_colour_columns(labels)
    fig, axes = _subplots(1, len(cols), figsize=(5.5 * len(cols), 4.5), squeeze=False)
    for ax, (c, word) in zip(axes[0], cols):
        lab = labels[:, c].numpy()
        _, codes = np.unique(lab, return_inverse=True)
        ax.scatter(xy[:, 0], xy[:, 1], c=codes, cmap="tab20" if codes.max() < 20 else "nipy_spectral", s=6)
        ax.set_title(_wrapped(f"colour = {scale_names[c]} class ({word})", 60), fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("PCA of test embeddings")
    out.append("<h2>Embedding map</h2>" + _png(fig))
    if dataset is None:
        return out
    # retrieval gallery: random queries, then the worst ones
    rng = np.random.default_rng(seed)
    n_q, k = min(6, len(emb)), min(8, len(emb) - 1)
    queries = sorted(rng.choice(len(emb), size=n_q, replace=False).tolist())
    nn_idx = _neighbours(emb, queries, k, distance)
    out.append("<h2>Retrieval gallery</h2><p class='note'>Each row: a random test query and its top neighbours "
               f"(green = same {html.escape(scale_names[0])} class, red = different).</p>"
               + _png(_gallery_figure(dataset, labels, queries, nn_idx)))
    worst = worst_queries(emb, labels, distance, n_q)
    if worst:
        out.append("<h2>Worst queries</h2><p class='note'>The test queries with the lowest map@r at the finest scale "
                   f"({scale_names[0]}; leave-one-out), worst first, and their top neighbours.</p>"
                   + _png(_gallery_figure(dataset, labels, worst, _neighbours(emb, worst, k, distance))))
    # multi-scale view
    if labels.shape[1] > 1:
        n_q2 = min(3, n_q)
        fig, axes = _subplots(n_q2 * labels.shape[1], k + 1,
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
                 monitor: str = "fine/map@r", seed: int = 0, title: str = "dynametric run",
                 record: Mapping[str, Any] | None = None, run: Mapping[str, Any] | None = None,
                 lr_history: Mapping[str, Sequence[Sequence[float]]] | None = None) -> None:
    """Write the HTML report atomically. ``record``: the training module's record (``run_info.json``'s entries of
    :meth:`~dynametric.engine.module.MetricLearningModule.run_record`), shown as a section when not empty;
    ``run``: ``run_info.json``'s entries so far (the selected weights, the environment: :func:`run_section`).
    ``loss_history``: ``[step, loss]`` at the steps the loggers log ``train/loss_step``; ``lr_history``: the module's
    ``{"train/lr" or "train/lr/<group>": [[step, lr], ...]}`` (a third curve, when given)."""
    selected = (run or {}).get("selected")
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{_CSS}</style></head>"
             f"<body><h1>{html.escape(title)}</h1>", run_section(run, monitor, seed, metrics.get("validation") or ()),
             "<h2>Test metrics</h2>", metrics_table(metrics, scale_names, selected)]
    by_category = metrics.get("test", {}).get("by_category")
    if by_category:
        test = metrics["test"]
        split = set(_category_metrics(by_category)[1])
        first = test.get(scale_names[0], {}) if scale_names else {}
        overall_only = [m for m in first if m not in _COUNT_KEYS and m not in split]
        parts += ["<h2>Per category</h2>", category_table(by_category, overall_only), _SORT_JS]
    try:
        import matplotlib  # noqa: F401

        parts += _sections_with_plots(metrics, loss_history, scale_names, emb, labels, dataset, distance, monitor,
                                      seed, lr_history, run)
    except ImportError:
        parts.append("<p class='note'>matplotlib is not installed: plots omitted.</p>")
    if record:
        parts.append("<h2>Training record</h2><pre>" + html.escape(json.dumps(dict(record), indent=1)) + "</pre>")
    parts.append("<h2>Resolved configuration</h2><pre>" + html.escape(config_yaml) + "</pre></body></html>")
    atomic_write_text(path, "\n".join(parts))
