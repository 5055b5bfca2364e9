"""``RunAhead``: results in the source's order, computed in another thread a bounded number of items ahead; an error
is raised at the item where it happened, after the items before it; ``close`` stops the thread."""

from __future__ import annotations

import itertools
import threading
import time

import pytest

from dynametric.utils.ahead import RunAhead


def test_results_in_order_from_another_thread() -> None:
    threads = set()

    def fn(x: int) -> int:
        threads.add(threading.current_thread().name)
        return x * x

    with RunAhead(range(50), fn, depth=3) as ahead:
        assert list(ahead) == [x * x for x in range(50)]
        assert list(ahead) == []  # finished: stays finished
    assert threads == {"dynametric-run-ahead"}


def test_runs_at_most_depth_ahead_of_the_consumer() -> None:
    started: list[int] = []

    def fn(x: int) -> int:
        started.append(x)
        return x

    ahead = RunAhead(itertools.count(), fn, depth=2)
    try:
        assert next(ahead) == 0
        time.sleep(0.5)  # the thread has time to run as far as it may
        # two results queued (1, 2) and the one in hand (3) waiting for room: not further
        assert started == [0, 1, 2, 3]
        assert [next(ahead) for _ in range(3)] == [1, 2, 3]
    finally:
        ahead.close()


def test_an_error_is_raised_at_its_item_after_the_items_before_it() -> None:
    def fn(x: int) -> int:
        if x == 3:
            raise ValueError("bad item 3")
        return x

    ahead = RunAhead(range(10), fn)
    got = []
    with pytest.raises(ValueError, match="bad item 3"):
        for y in ahead:
            got.append(y)
    assert got == [0, 1, 2]
    with pytest.raises(StopIteration):  # the thread stopped at the error
        next(ahead)
    ahead.close()


def test_an_error_of_the_source_is_raised_too() -> None:
    def source():
        yield 1
        raise OSError("source broke")

    with RunAhead(source(), lambda x: x + 1) as ahead:
        assert next(ahead) == 2
        with pytest.raises(OSError, match="source broke"):
            next(ahead)


def test_close_stops_a_thread_on_an_endless_source() -> None:
    taken: list[int] = []

    def source():
        for i in itertools.count():
            taken.append(i)
            yield i

    ahead = RunAhead(source(), lambda x: x, depth=1)
    assert next(ahead) == 0
    ahead.close()
    assert not ahead._thread.is_alive()
    count = len(taken)
    time.sleep(0.3)
    assert len(taken) == count <= 4  # nothing more taken from the source after close
    with pytest.raises(StopIteration):
        next(ahead)


def test_depth_must_be_positive() -> None:
    with pytest.raises(ValueError, match="depth"):
        RunAhead([1], lambda x: x, depth=0)
