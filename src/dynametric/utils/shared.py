"""Process-wide settings that overlapping blocks share (calls of the library from several threads at once).

A block that saves a setting, changes it and puts the saved value back on exit is wrong when blocks overlap: the
second one saves the first one's change, the first one restores under the second one, and the second one "restores"
the first one's change for good. :class:`SharedSetting` gives every block one save / change / restore: the first
block in applies the change (and keeps how to undo it), later blocks change nothing, and the last one out undoes
it. Used for the float32 matmul precision of an evaluation, a model held in eval mode while it embeds, and the
caller's unset ``multiprocessing`` start method."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator


class SharedSetting:
    """A setting that overlapping :meth:`held` blocks share (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._inside = 0
        self._undo: Callable[[], None] | None = None

    @contextlib.contextmanager
    def held(self, apply: Callable[[], Callable[[], None] | None]) -> Iterator[None]:
        """While the block runs, the setting as ``apply`` makes it: the first block in calls ``apply()``, which
        changes the setting and answers how to undo it (``None``: nothing to undo), and the last one out calls that.
        An error in ``apply`` propagates and leaves no block counted."""
        with self._lock:
            if self._inside == 0:
                self._undo = apply()
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0 and self._undo is not None:
                    undo, self._undo = self._undo, None
                    undo()
