"""``--workers auto`` lowered under the open-file limit is said once per command: ``embed`` and ``evaluate
--checkpoint`` resolve their options first (to flag errors early) and their loading resolved them again, which said
the ``note:`` twice (QA). The limit is read through a patched ``getrlimit`` (never lowered)."""

from __future__ import annotations

import dynametric.engine.inference as inference
from dynametric.cli import main
from tests.utils.test_limits import _limits


def _notes(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("note: --workers auto:")]


def test_embed_says_the_lowered_auto_workers_once(tiny_ckpt, tiny_images, tmp_path, capsys, monkeypatch) -> None:
    _limits(monkeypatch, 24, 64)
    monkeypatch.setattr(inference, "auto_workers", lambda *args, **kwargs: 12)
    assert main(["embed", "--checkpoint", str(tiny_ckpt), "--images", str(tiny_images / "imgs"), "--out",
                 str(tmp_path / "emb"), "--batch-size", "4", "--workers", "auto", "--no-progress"]) == 0
    notes = _notes(capsys.readouterr().err)
    assert len(notes) == 1 and notes[0].startswith("note: --workers auto: 1 loader worker instead of 12, "), notes


def test_evaluate_checkpoint_says_the_lowered_auto_workers_once(tiny_ckpt, capsys, monkeypatch) -> None:
    _limits(monkeypatch, 24, 64)
    monkeypatch.setattr(inference, "auto_workers", lambda *args, **kwargs: 12)
    assert main(["evaluate", "--checkpoint", str(tiny_ckpt), "--split", "test", "--workers", "auto"]) == 0
    notes = _notes(capsys.readouterr().err)
    assert len(notes) == 1 and notes[0].startswith("note: --workers auto: 1 loader worker instead of 12, "), notes
