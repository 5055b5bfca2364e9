"""The report's worst queries: the lowest finest-scale map@r, worst first, next to the random ones."""

from __future__ import annotations

import pytest
import torch

from dynametric.pipeline.report import worst_queries, write_report


def _toy():
    # 1-D embeddings; class 0 at 0, 0.1, 0.2 and class 1 at 1.0, 1.1 plus a stray class-1 item at 0.15 (its nearest
    # neighbours are class 0: map@r 0) and a singleton (class 2: no relevant item, skipped)
    emb = torch.tensor([[0.0, 1], [0.1, 1], [0.2, 1], [1.0, 1], [1.1, 1], [0.15, 1], [5.0, 1]])
    labels = torch.tensor([[0, 0], [0, 0], [0, 0], [1, 0], [1, 0], [1, 0], [2, 1]])
    return emb, labels


def test_worst_queries_order():
    emb, labels = _toy()
    worst = worst_queries(emb, labels, "euclidean", 3)
    assert worst[0] == 5 and 6 not in worst
    assert len(worst) == 3


def test_report_has_worst_queries_section(tmp_path):
    pytest.importorskip("matplotlib")
    emb, labels = _toy()
    dataset = [(torch.rand(3, 4, 4), int(labels[i, 0])) for i in range(len(emb))]
    write_report(tmp_path / "r.html", metrics={}, loss_history=[], scale_names=["fine", "coarse"], config_yaml="",
                 emb=emb, labels=labels, dataset=dataset, distance="euclidean")
    text = (tmp_path / "r.html").read_text()
    assert "Retrieval gallery" in text and "Worst queries" in text
    assert text.index("Retrieval gallery") < text.index("Worst queries")
