"""The report's figures at five scales with a root of one class: the per-scale bars' scale names do not run into each
other, the PCA map colours by the coarsest scale that has two or more classes and its two titles do not overlap, and
the retrieval gallery's caption names the finest scale as the data names it."""

from __future__ import annotations

import math

import pytest
import torch

from dynametric.pipeline import report

NAMES = ["item", "sub kind", "kind", "family", "everything"]


def _labels(n: int = 40) -> torch.Tensor:
    fine = torch.arange(n) // 2  # 20 items, 10 sub kinds, 5 kinds, 2 families, one "everything"
    return torch.stack([fine, fine // 2, fine // 4, fine // 10, torch.zeros(n, dtype=torch.long)], 1)


def _figures(tmp_path, monkeypatch, names=NAMES, labels=None):
    pytest.importorskip("matplotlib")
    figs = []
    png = report._png

    def grab(fig):
        figs.append(fig)
        return png(fig)

    monkeypatch.setattr(report, "_png", grab)
    labels = _labels() if labels is None else labels
    emb = torch.randn(len(labels), 8, generator=torch.Generator().manual_seed(0))
    m = {s: {"recall@1": 0.5, "map@r": 0.3} for s in names}
    report.write_report(tmp_path / "r.html", metrics={"test": m, "untrained": m}, loss_history=[(0, 1.0)],
                        scale_names=names, config_yaml="", emb=emb, labels=labels,
                        dataset=[(torch.rand(3, 4, 4), 0)] * len(labels), distance="cosine")
    return figs, (tmp_path / "r.html").read_text(encoding="utf-8")


def _renderer(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return canvas.get_renderer()


def _figure_titled(figs, title):
    return next(f for f in figs if any(ax.get_title() == title for ax in f.axes))


def test_the_per_scale_bars_names_do_not_run_into_each_other_at_five_scales(tmp_path, monkeypatch):
    figs, _ = _figures(tmp_path, monkeypatch)
    fig = _figure_titled(figs, "map@r")
    r = _renderer(fig)
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticklabels() if t.get_text()]
        assert [t.get_text() for t in ticks] == NAMES
        for a, b in zip(ticks, ticks[1:]):
            angle = math.radians(a.get_rotation())
            if angle == 0:  # flat labels: their boxes must not meet
                assert not a.get_window_extent(r).overlaps(b.get_window_extent(r)), (a.get_text(), b.get_text())
            else:  # turned labels are parallel strips: the gap across them must hold a line of text
                ax_ = a.get_window_extent(r).x1, b.get_window_extent(r).x1  # right-anchored: their right ends
                across = (ax_[1] - ax_[0]) * math.sin(angle)
                line = a.get_fontsize() * fig.dpi / 72
                assert across >= line, (a.get_text(), b.get_text(), across, line)
    # three short names stay flat
    few, _ = _figures(tmp_path, monkeypatch, ["fine", "middle", "coarse"], _labels()[:, [0, 2, 3]])
    assert all(t.get_rotation() == 0 for ax in _figure_titled(few, "map@r").axes for t in ax.get_xticklabels())


def test_the_pca_map_colours_by_the_coarsest_scale_with_two_classes_and_its_titles_do_not_overlap(tmp_path,
                                                                                                    monkeypatch):
    figs, _ = _figures(tmp_path, monkeypatch)
    fig = next(f for f in figs if f.get_suptitle() == "PCA of test embeddings")
    left, right = fig.axes
    assert left.get_title() == "colour = family class (coarsest with two or more classes)"
    assert right.get_title() == "colour = item class (finest)"
    assert len(set(left.collections[0].get_array().tolist())) == 2  # two families: two colours (was one)
    assert len(set(right.collections[0].get_array().tolist())) == 20
    r = _renderer(fig)
    assert not left.title.get_window_extent(r).overlaps(right.title.get_window_extent(r))
    assert report.pca_colour_columns(_labels()[:, [0, 4]]) == [(0, "finest")]  # no coarser scale varies
    assert report.pca_colour_columns(_labels()[:, :4]) == [(3, "coarsest"), (0, "finest")]
    assert report.pca_colour_columns(_labels()[:, :1]) == [(0, "class")]


def test_the_gallery_caption_names_the_finest_scale(tmp_path, monkeypatch):
    _, text = _figures(tmp_path, monkeypatch)
    assert "(green = same item class, red = different)" in text
    assert "same fine class" not in text
    _, text = _figures(tmp_path, monkeypatch, ["a<b", *NAMES[1:]])
    assert "(green = same a&lt;b class, red = different)" in text



@pytest.mark.parametrize("names", [["fine"], ["fine", "middle", "coarse"], ["a", "b", "c", "d", "e"]])
def test_the_bar_legend_covers_no_bar(names):
    """Bars of 1.0 (a perfect trained model, an untrained one at 0.9) under the legend: it sat in the first
    panel's best corner, over the bars. The legend's box and every bar's box, in pixels, do not overlap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.patches import Rectangle

    from dynametric.pipeline.report import bars_figure

    metrics = ["recall@1", "map@r", "map"]
    test = {s: {m: 1.0 for m in metrics} for s in names}
    untrained = {s: {m: 0.9 for m in metrics} for s in names}
    fig = bars_figure(test, untrained, names, metrics)
    FigureCanvasAgg(fig).draw()
    renderer = fig.canvas.get_renderer()
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [p.get_window_extent(renderer) for p in ax.patches if isinstance(p, Rectangle)]
    assert len(bars) == 2 * len(names)
    assert all(b.height > 0 for b in bars)
    assert not any(legend.overlaps(b) for b in bars)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["untrained", "trained"]
