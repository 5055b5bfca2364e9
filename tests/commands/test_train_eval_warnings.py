"""``dynametric train`` evaluates the untrained and the trained model on a trainer without a logger on purpose (it
logs their results itself): Lightning's ``no logger configured`` warning of every logged test metric (41 to 82 lines
a run) is not printed, and other warnings of those evaluations still are."""

from __future__ import annotations

import warnings

from dynametric.cli import main
from dynametric.engine.module import MetricLearningModule
from tests.metrics_csv import TINY_SYNTHETIC


def test_a_run_prints_no_lightning_no_logger_warning_and_keeps_the_others(tmp_path, monkeypatch, capsys) -> None:
    def warn_at_test_start(self):
        warnings.warn("a warning of the test loop", UserWarning, stacklevel=1)

    monkeypatch.setattr(MetricLearningModule, "on_test_start", warn_at_test_start)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = main(["train", "--out", str(tmp_path / "run"), *TINY_SYNTHETIC, "trainer.max_epochs=1",
                     "--no-progress"])
    assert code == 0, capsys.readouterr().err
    texts = [str(w.message) for w in caught]
    assert not [t for t in texts if "but have no logger configured" in t], texts[:3]
    # the untrained test and the final one: the other warnings of those evaluations are not hidden
    assert texts.count("a warning of the test loop") == 2, texts
    assert "no logger configured" not in capsys.readouterr().err
