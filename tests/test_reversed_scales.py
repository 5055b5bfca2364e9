"""Label columns given coarsest first: `dynametric evaluate --labels` says so in a note (the dataset readers refuse
such data; saved labels are evaluated as given, the first column taken as the finest)."""

from __future__ import annotations

import numpy as np

from dynametric.cli import main
from dynametric.labels import reversed_scales


def test_reversed_scales_notes_a_coarser_first_column_only() -> None:
    fine = np.arange(60) % 12
    coarse, middle = fine // 6, fine // 3
    assert reversed_scales(np.stack([fine, middle, coarse], 1), ["fine", "middle", "coarse"]) is None
    note = reversed_scales(np.stack([coarse, fine], 1), ["a", "b"])
    assert note is not None and note.startswith(
        "the label columns look coarsest first: every b class lies in a single a class and there are more b classes "
        "(12 vs 2)")
    # the middle and coarse columns swapped: found at that pair
    assert "every middle class lies in a single coarse class" in reversed_scales(
        np.stack([fine, coarse, middle], 1), ["fine", "coarse", "middle"])
    # a later column with more classes that does not nest in the earlier one: no hierarchy to call reversed
    rng = np.random.default_rng(0)
    assert reversed_scales(np.stack([rng.integers(0, 3, 60), rng.integers(0, 30, 60)], 1), ["x", "y"]) is None
    assert reversed_scales(fine[:, None], ["fine"]) is None
    assert reversed_scales(np.zeros((0, 2), np.int64), ["x", "y"]) is None


def test_evaluate_notes_coarsest_first_label_columns(tmp_path, capsys) -> None:
    rng = np.random.default_rng(0)
    fine = rng.integers(0, 40, 400)
    np.save(tmp_path / "e.npy", rng.standard_normal((400, 8)).astype(np.float32))
    (tmp_path / "rev.csv").write_text("coarse,fine\n" + "".join(f"{f // 10},{f}\n" for f in fine))
    (tmp_path / "ok.csv").write_text("fine,coarse\n" + "".join(f"{f},{f // 10}\n" for f in fine))
    assert main(["evaluate", "--embeddings", str(tmp_path / "e.npy"), "--labels", str(tmp_path / "rev.csv")]) == 0
    err = capsys.readouterr().err
    assert "note: the label columns look coarsest first: every fine class lies in a single coarse class and there " \
        "are more fine classes (40 vs 4)" in err
    assert main(["evaluate", "--embeddings", str(tmp_path / "e.npy"), "--labels", str(tmp_path / "ok.csv")]) == 0
    assert "coarsest first" not in capsys.readouterr().err
