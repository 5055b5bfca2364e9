"""The report's training curves: the learning rate beside the loss, and a validation panel that says why it is
empty (a run without a validation split showed empty axes and no word)."""

from __future__ import annotations

import pytest

from dynametric.pipeline import report

pytest.importorskip("matplotlib")

METRICS = {"untrained": {"fine": {"map@r": 0.1}, "mean": {"map@r": 0.1}},
           "test": {"fine": {"map@r": 0.3}, "mean": {"map@r": 0.3}}, "validation": []}


def _figures(monkeypatch) -> list:
    figures: list = []
    original = report._png

    def keep(fig):
        figures.append(fig)
        return original(fig)

    monkeypatch.setattr(report, "_png", keep)
    return figures


def test_a_run_without_validation_says_so_in_the_validation_panel(tmp_path, monkeypatch):
    figures = _figures(monkeypatch)
    report.write_report(tmp_path / "r.html", metrics=METRICS, loss_history=[[9, 0.5], [19, 0.25]],
                        scale_names=["fine"], config_yaml="", run={"val_images": 0})
    validation = figures[0].axes[1]
    assert validation.get_title() == "validation map@r"
    assert [t.get_text() for t in validation.texts] == ["no validation split"]
    assert "<p class='note'>Validation map@r: no validation split.</p>" in (tmp_path / "r.html").read_text()
    figures.clear()
    report.write_report(tmp_path / "r.html", metrics=METRICS, loss_history=[], scale_names=["fine"],
                        config_yaml="", run={"val_images": 12})  # a validation split, no round before the stop
    assert [t.get_text() for t in figures[0].axes[1].texts] == ["no validation round ran"]


def test_the_learning_rate_is_plotted_per_group_at_the_logged_steps(tmp_path, monkeypatch):
    figures = _figures(monkeypatch)
    history = dict(METRICS, validation=[{"epoch": 0, "fine": {"map@r": 0.2}}])
    lrs = {"train/lr/backbone": [[9.0, 0.001], [19.0, 0.0005]], "train/lr/head": [[9.0, 0.01], [19.0, 0.005]]}
    report.write_report(tmp_path / "r.html", metrics=history, loss_history=[[9, 0.5], [19, 0.25]],
                        scale_names=["fine"], config_yaml="", lr_history=lrs)
    curves = figures[0]
    assert [ax.get_title() for ax in curves.axes] == ["training loss", "validation map@r", "learning rate"]
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in curves.axes[2].lines}
    assert lines == {"backbone": ([9.0, 19.0], [0.001, 0.0005]), "head": ([9.0, 19.0], [0.01, 0.005])}
    assert not curves.axes[1].texts  # a validation round: no note
    figures.clear()
    report.write_report(tmp_path / "r.html", metrics=history, loss_history=[], scale_names=["fine"], config_yaml="")
    assert len(figures[0].axes) == 2  # no learning rates recorded (a checkpoint of an earlier version)
