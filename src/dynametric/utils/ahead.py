"""Work done ahead in a background thread: ``fn(x)`` for each ``x`` of a source, in order, a few items ahead.

:class:`RunAhead` serves :func:`dynametric.retrieval.embed.embed_items`: on a GPU, the next batches' JPEGs are decoded
(``torchvision``'s device decoder, which blocks its calling thread until the batch is decoded, with the GIL
released) while the main thread hands the current batch to the model and copies the previous one's embeddings to the
host, so neither waits for the other.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

_POLL_S = 0.1  # how often a waiting side looks whether the other one stopped


class RunAhead(Generic[T, R]):
    """Iterate ``fn(x)`` for ``x`` in ``source``, computed by one background thread, in the source's order: at most
    ``depth`` finished results wait to be taken and the thread holds one more (computing it, or waiting for room),
    so it runs at most ``depth + 1`` items ahead of the one the consumer took last.

    An exception raised by ``source`` or ``fn`` is raised by the iteration at the item where it happened, after
    every result before it was delivered (the thread stops there). :meth:`close` (also on leaving a ``with`` block)
    stops the thread: it finishes the item in hand and takes no further one from ``source``. ``fn`` runs in the
    thread, so thread-local state (torch's grad mode, autocast, the current CUDA stream) is the thread's own."""

    def __init__(self, source: Iterable[T], fn: Callable[[T], R], depth: int = 2) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self._results: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._work, args=(iter(source), fn), name="dynametric-run-ahead",
                                        daemon=True)
        self._thread.start()

    def _work(self, source: Iterator[T], fn: Callable[[T], R]) -> None:
        try:
            for x in source:
                if self._stop.is_set() or not self._put(("item", fn(x))):
                    return
        except BaseException as exc:  # handed to the consumer, raised there at this item
            self._put(("error", exc))
            return
        self._put(("end", None))

    def _put(self, entry: tuple[str, Any]) -> bool:
        while not self._stop.is_set():
            try:
                self._results.put(entry, timeout=_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> RunAhead[T, R]:
        return self

    def __next__(self) -> R:
        if self._finished:
            raise StopIteration
        while True:
            try:
                kind, value = self._results.get(timeout=_POLL_S)
                break
            except queue.Empty:
                if not self._thread.is_alive() and self._results.empty():  # (closed meanwhile)
                    self._finished = True
                    raise StopIteration from None
        if kind == "item":
            return value  # type: ignore[no-any-return]
        self._finished = True
        if kind == "error":
            raise value
        raise StopIteration

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread and wait for it, at most ``timeout`` seconds: it finishes the item in hand and takes no
        other. A thread still blocked in ``source`` or ``fn`` after that (a loader worker that hangs) is left to
        end on its own; it is a daemon thread, so it does not keep the process alive."""
        self._stop.set()
        self._finished = True
        while True:  # free a thread that waits to put a result
            try:
                self._results.get_nowait()
            except queue.Empty:
                break
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> RunAhead[T, R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
