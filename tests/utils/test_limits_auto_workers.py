"""``data.workers: auto`` (``--workers auto``) under a hard open-file limit too low for the count ``auto`` resolved
to: the most workers the limit allows (down to 0) with a ``note:`` line, where an explicit count is refused
(:func:`dynametric.utils.limits.ensure_open_files`; the limit read through a patched ``getrlimit``, never lowered)."""

from __future__ import annotations

import pytest

import dynametric.engine.inference as inference
import dynametric.utils.device as device
from dynametric.cli import main
from dynametric.engine.inference import InferenceOptions
from dynametric.errors import ConfigError
from dynametric.utils import limits
from tests.metrics_csv import TINY_SYNTHETIC
from tests.utils.test_limits import _limits


def test_auto_takes_the_workers_the_hard_limit_allows_and_says_so(monkeypatch) -> None:
    calls = _limits(monkeypatch, 24, 64)
    said: list[str] = []
    # 12 workers need 10 open + 32 headroom + 12 x (4 + 3 x 4) = 234; 64 leave room for (64 - 42) // 16 = 1
    assert limits.ensure_open_files(12, 4, "data.workers", auto=said.append) == 1
    assert said == ["note: data.workers auto: 1 loader worker instead of 12, which need about 234 open files, more "
                    "than this process may open (ulimit -n: 24 soft, 64 hard); raise the limit (ulimit -n 234) for 12"]
    assert calls == [(64, 64)]  # the soft limit raised for the one worker
    with pytest.raises(ConfigError, match=r"12 loader workers need about 234 open files"):  # an explicit count
        limits.ensure_open_files(12, 4, "data.workers")


def test_auto_goes_down_to_loading_in_the_main_process(monkeypatch) -> None:
    calls = _limits(monkeypatch, 30, 30)
    said: list[str] = []
    assert limits.ensure_open_files(3, 4, "--workers", auto=said.append) == 0
    assert said[0].startswith("note: --workers auto: 0 loader workers (loading in the main process) instead of 3, ")
    assert calls == []
    assert limits.ensure_open_files(1, 4, "--workers", auto=said.append) == 0 and len(said) == 2


def test_auto_within_the_limit_says_nothing(monkeypatch) -> None:
    _limits(monkeypatch, 100_000, 100_000)
    said: list[str] = []
    assert limits.ensure_open_files(12, 4, "data.workers", auto=said.append) == 12 and said == []


def test_train_with_auto_workers_under_a_low_hard_limit_trains_in_the_main_process(tmp_path, capsys,
                                                                                   monkeypatch) -> None:
    _limits(monkeypatch, 24, 24)
    monkeypatch.setattr(device, "auto_workers", lambda *args, **kwargs: 4)  # as on a GPU host
    run = tmp_path / "run"
    assert main(["train", "--dry-run", "--out", str(run), *TINY_SYNTHETIC, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert "note: data.workers auto: 0 loader workers (loading in the main process) instead of 4, " in captured.err
    assert "loader: workers auto -> 0, " in captured.out
    assert main(["train", "--out", str(run), *TINY_SYNTHETIC, "--no-progress", "trainer.max_epochs=1"]) == 0
    assert "note: data.workers auto: 0 loader workers" in capsys.readouterr().err
    assert (run / "last.ckpt").is_file()
    # an explicit count is still refused, keyed by its option
    assert main(["train", "--out", str(tmp_path / "other"), *TINY_SYNTHETIC, "data.workers=4"]) == 2
    assert "key 'data.workers': 4 loader workers need about " in capsys.readouterr().err


def test_inference_auto_workers_under_a_low_hard_limit(monkeypatch, capsys) -> None:
    _limits(monkeypatch, 30, 30)
    monkeypatch.setattr(inference, "auto_workers", lambda *args, **kwargs: 3)
    assert InferenceOptions(device="cpu", workers="auto", flags=True).resolve().workers == 0
    assert capsys.readouterr().err.startswith("note: --workers auto: 0 loader workers (loading in the main process) "
                                              "instead of 3, ")
    with pytest.raises(ConfigError, match=r"^key '--workers': 3 loader workers "):
        InferenceOptions(device="cpu", workers=3, flags=True).resolve()
