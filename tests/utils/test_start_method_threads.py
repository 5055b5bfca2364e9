"""callers_start_method from several threads at once: the last call out unsets the start method the first one
found unset; a call that ends while another is still inside does not unset it under that one."""

from __future__ import annotations

import subprocess
import sys

_SCRIPT = """
import multiprocessing, threading
from dynametric.utils.processes import callers_start_method
inside, leave = threading.Event(), threading.Event()
seen = []
def long_call():
    with callers_start_method():
        multiprocessing.get_start_method()  # fixes the default method, as a loader's workers do
        inside.set()
        leave.wait(10)
        seen.append(multiprocessing.get_start_method(allow_none=True))  # still set while inside
with callers_start_method():  # a short call: in first (the method unset), out while the long one is inside
    t = threading.Thread(target=long_call)
    t.start()
    inside.wait(10)
seen.append(multiprocessing.get_start_method(allow_none=True))  # the short call did not unset it
leave.set()
t.join()
seen.append(multiprocessing.get_start_method(allow_none=True))  # the last one out unset it
print(seen)
"""


def test_overlapping_calls_unset_the_method_once_the_last_leaves() -> None:
    out = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("'") == 4, out.stdout  # two method names, then None
    fixed = out.stdout.split("'")[1]  # the platform's default method, e.g. fork
    assert out.stdout.strip() == f"['{fixed}', '{fixed}', None]"
