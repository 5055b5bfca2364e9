"""The open-file limit for data-loading workers (:func:`dynametric.utils.limits.ensure_open_files`): a soft limit
too low is raised up to the hard one, a hard limit too low refuses with one line naming the option."""

from __future__ import annotations

import resource

import pytest

from dynametric.engine.inference import InferenceOptions
from dynametric.errors import ConfigError
from dynametric.utils import limits


def _limits(monkeypatch: pytest.MonkeyPatch, soft: int, hard: int, *, refuse: bool = False) -> list[tuple[int, int]]:
    """``getrlimit(RLIMIT_NOFILE)`` answering ``(soft, hard)``; the ``setrlimit`` calls recorded (not made), or
    refused with ValueError (``refuse``)."""
    real = resource.getrlimit
    calls: list[tuple[int, int]] = []

    def getrlimit(which: int) -> tuple[int, int]:
        return (soft, hard) if which == resource.RLIMIT_NOFILE else real(which)

    def setrlimit(which: int, value: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        if refuse:
            raise ValueError("not allowed to raise maximum limit")
        calls.append(value)

    monkeypatch.setattr(resource, "getrlimit", getrlimit)
    monkeypatch.setattr(resource, "setrlimit", setrlimit)
    monkeypatch.setattr(limits, "open_file_count", lambda: 10)
    return calls


def test_a_low_soft_limit_is_raised_toward_the_hard_one(monkeypatch) -> None:
    calls = _limits(monkeypatch, 24, 100_000)
    limits.ensure_open_files(2, 4, "data.workers", persistent=True)
    assert calls == [(4096, 100_000)]  # at least 4096, the hard limit kept


def test_the_soft_limit_is_raised_no_further_than_the_hard_one(monkeypatch) -> None:
    calls = _limits(monkeypatch, 24, 200)
    limits.ensure_open_files(2, 4, "data.workers")  # 10 open + 32 headroom + 2 x (4 + 3 x 4) = 74 <= 200
    assert calls == [(200, 200)]


def test_a_soft_limit_that_suffices_is_left_alone(monkeypatch) -> None:
    calls = _limits(monkeypatch, 1024, 1024)
    limits.ensure_open_files(4, 4, "data.workers", persistent=True)
    limits.ensure_open_files(0, None, "data.workers")
    assert calls == []


def test_a_hard_limit_too_low_refuses_naming_the_key_the_limit_and_what_fits(monkeypatch) -> None:
    calls = _limits(monkeypatch, 64, 64)
    with pytest.raises(ConfigError) as caught:
        limits.ensure_open_files(12, 4, "data.workers")
    assert calls == []
    message = str(caught.value)
    assert message.startswith("key 'data.workers': 12 loader workers need about 234 open files")  # 10+32+12x16
    assert "(ulimit -n: 64 soft, 64 hard)" in message and "ulimit -n 234" in message
    assert message.endswith("use fewer workers (data.workers=1 or fewer)")  # (64 - 10 - 32) // 16


def test_a_refused_raise_is_the_same_line(monkeypatch) -> None:
    _limits(monkeypatch, 24, 100_000, refuse=True)
    with pytest.raises(ConfigError, match=r"2 loader workers need about 82 open files.*data.workers=0: loading in"):
        limits.ensure_open_files(2, 4, "data.workers", persistent=True)


def test_the_inference_options_check_their_workers_keyed_by_the_flag(monkeypatch) -> None:
    _limits(monkeypatch, 30, 30)
    with pytest.raises(ConfigError, match=r"^key '--workers': 3 loader workers .* \(--workers 0: loading in"):
        InferenceOptions(device="cpu", workers=3, flags=True).resolve()
    calls = _limits(monkeypatch, 30, 5000)
    assert InferenceOptions(device="cpu", workers=3, flags=True).resolve().workers == 3
    assert calls == [(4096, 5000)]
