"""numpy's sort kernel for the ``dynametric`` command on CPUs where numpy's AVX-512 sort is slow.

The exact ranking engine's full-ranking path is one int32 sort per query row, and numpy picks that sort's SIMD
kernel when it is imported. On AMD Zen 4 CPUs (vendor ``AuthenticAMD``, CPU family 25, with AVX-512) the AVX-512
kernel is several times slower than numpy's own AVX2 kernel: it stores each partition step with a compress-store
instruction that Zen 4 executes in microcode (measured: 1,204 against 211 us per 60,502-key int32 row, 2,081
against 479 us for int64; Zen 5, family 26, does not have the problem). numpy reads ``NPY_DISABLE_CPU_FEATURES``
only when it is imported, so a library cannot switch for itself; the ``dynametric`` command can, because it runs
this before anything imports numpy.

:func:`choose_numpy_sort_kernel` sets ``NPY_DISABLE_CPU_FEATURES`` to numpy's AVX-512 groups on such a CPU unless
numpy is already imported, the user set ``NPY_DISABLE_CPU_FEATURES`` or ``NPY_ENABLE_CPU_FEATURES`` themselves, or
``DYNAMETRIC_KEEP_NUMPY_AVX512=1`` is set, or numpy is older than 2.0 (no AVX2 sort kernel to switch to). Results
do not change (the engine's results are identical under both kernels: tests/metrics/test_sort_kernels.py); only the
speed does. Importing this module imports neither numpy nor torch; numpy is imported only inside
:func:`numpy_avx512_active` and :func:`warn_if_slow_sort` (and so by :func:`numpy_sort_is_slow`), torch never.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

CPUINFO = "/proc/cpuinfo"
OPT_OUT = "DYNAMETRIC_KEEP_NUMPY_AVX512"
_USER_SETTINGS = ("NPY_DISABLE_CPU_FEATURES", "NPY_ENABLE_CPU_FEATURES")

# numpy's names of its AVX-512 dispatch targets. numpy warns about a name that is not one of its dispatch targets,
# and the targets changed (checked with numpy 1.26.4, 2.0.2, 2.2.6, 2.3.5 and 2.4.6): 2.4 groups the first AVX-512
# levels as X86_V4; 2.3 and 2.4 also dispatch to AVX512_SPR (AVX512-FP16, which Zen 4 does not have)
_AVX512_NAMES_2_4 = ("X86_V4", "AVX512_ICL", "AVX512_SPR")
_AVX512_NAMES_1 = ("AVX512F", "AVX512CD", "AVX512_KNL", "AVX512_KNM", "AVX512_SKX", "AVX512_CLX", "AVX512_CNL",
                   "AVX512_ICL")


def _major_minor(numpy_version: str) -> tuple[int, int]:
    parts = numpy_version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return 0, 0


def numpy_has_avx2_sort(numpy_version: str) -> bool:
    """numpy 2.0 added AVX2 kernels to its 32- and 64-bit sorts; before, switching AVX-512 off falls back to a
    scalar sort that is slower still (numpy 1.26.4 on the Zen 4 machine, 60,502-key rows: int32 2,670 against
    1,687 us, int64 2,677 against 2,432 us)."""
    return _major_minor(numpy_version) >= (2, 0)


def read_cpuinfo(path: str = CPUINFO) -> str | None:
    """The text of ``/proc/cpuinfo`` (or a stand-in), None where there is none (not Linux)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def first_cpu(cpuinfo: str) -> dict[str, str]:
    """The ``key: value`` fields of the first processor block of ``/proc/cpuinfo`` text."""
    fields: dict[str, str] = {}
    for line in cpuinfo.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def slow_avx512_sort(cpuinfo: str) -> bool:
    """Whether the CPU described by ``cpuinfo`` is an AMD Zen 4 with AVX-512 (family 25 and the ``avx512f``
    flag; Zen 3, also family 25, has no AVX-512)."""
    cpu = first_cpu(cpuinfo)
    return (cpu.get("vendor_id") == "AuthenticAMD" and cpu.get("cpu family") == "25"
            and "avx512f" in cpu.get("flags", "").split())


def numpy_avx512_names(numpy_version: str) -> str:
    """The ``NPY_DISABLE_CPU_FEATURES`` value that turns off numpy's AVX-512 kernels for this numpy version."""
    return " ".join(_AVX512_NAMES_2_4 if _major_minor(numpy_version) >= (2, 4) else _AVX512_NAMES_1)


def _opted_out(environ: Mapping[str, str]) -> bool:
    """``DYNAMETRIC_KEEP_NUMPY_AVX512`` set to anything but empty or ``0``."""
    return environ.get(OPT_OUT, "") not in ("", "0")


def sort_kernel_setting(environ: Mapping[str, str], cpuinfo: str, numpy_version: str,
                        numpy_imported: bool) -> dict[str, str]:
    """The environment to add (empty: leave numpy as it is) for the given state; pure, for tests."""
    if numpy_imported or _opted_out(environ) or any(k in environ for k in _USER_SETTINGS):
        return {}
    if not slow_avx512_sort(cpuinfo) or not numpy_has_avx2_sort(numpy_version):
        return {}
    return {"NPY_DISABLE_CPU_FEATURES": numpy_avx512_names(numpy_version)}


def choose_numpy_sort_kernel(environ: MutableMapping[str, str] | None = None, cpuinfo_path: str = CPUINFO) -> bool:
    """Apply :func:`sort_kernel_setting` to this process (before numpy is imported); True if it set anything."""
    env = os.environ if environ is None else environ
    cpuinfo = read_cpuinfo(cpuinfo_path)
    if cpuinfo is None or not slow_avx512_sort(cpuinfo):
        return False
    from importlib import metadata

    try:
        numpy_version = metadata.version("numpy")
    except metadata.PackageNotFoundError:
        return False
    update = sort_kernel_setting(env, cpuinfo, numpy_version, "numpy" in sys.modules)
    env.update(update)
    return bool(update)


class SlowSortWarning(UserWarning):
    """numpy sorts with its AVX-512 kernel on a CPU where that kernel is slow (see :func:`warn_if_slow_sort`)."""


def numpy_avx512_active() -> bool:
    """Whether the imported numpy dispatches to any of its AVX-512 targets (imports numpy)."""
    import importlib

    import numpy

    try:
        umath = importlib.import_module("numpy._core._multiarray_umath")
    except ImportError:  # numpy 1.x
        umath = importlib.import_module("numpy.core._multiarray_umath")
    features: dict[str, bool] = umath.__cpu_features__
    return any(features.get(name, False) for name in numpy_avx512_names(numpy.__version__).split())


@functools.cache
def numpy_sort_is_slow(cpuinfo_path: str = CPUINFO) -> bool:
    """Whether the imported numpy sorts with its AVX-512 kernel on a CPU where that kernel is slow (Zen 4), any numpy
    version (imports numpy; decided once per process: numpy's kernels cannot change after its import)."""
    cpuinfo = read_cpuinfo(cpuinfo_path)
    return cpuinfo is not None and slow_avx512_sort(cpuinfo) and numpy_avx512_active()


def sort_kernel_hint(environ: Mapping[str, str], cpuinfo: str, avx512_active: bool,
                     numpy_version: str) -> str | None:
    """The hint for a Python program that sorts with numpy's slow AVX-512 kernel, or None; pure, for tests."""
    if _opted_out(environ) or not avx512_active or not slow_avx512_sort(cpuinfo) \
            or not numpy_has_avx2_sort(numpy_version):
        return None
    names = numpy_avx512_names(numpy_version)
    return (f"numpy sorts with its AVX-512 kernel, which is about 5x slower than its AVX2 kernel on this CPU "
            f"(AMD Zen 4); full-ranking evaluation runs about 1.5x faster with NPY_DISABLE_CPU_FEATURES=\"{names}\" "
            f"set before Python starts, or with dynametric.cpu_kernels.choose_numpy_sort_kernel() called before "
            f"anything imports numpy (the dynametric command does this itself; docs/metrics.md, Speed on your "
            f"CPU). Set {OPT_OUT}=1 to silence this.")


def outside_package_level() -> int:
    """The ``stacklevel`` (counted from the caller, as :func:`warn_if_slow_sort` counts) of the first frame outside
    the ``dynametric`` package: a warning raised deep in the library names the user's line, however many of the
    library's own functions lie between (a fixed count broke when a function was split into steps)."""
    package = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frame: Any = sys._getframe(1)  # the caller's frame: level 1
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else 1


def warn_if_slow_sort(stacklevel: int = 1, cpuinfo_path: str = CPUINFO) -> bool:
    """Warn (:class:`SlowSortWarning`) when numpy's slow AVX-512 sort is in use on this CPU; True if it warned.
    ``stacklevel`` counts from the caller: 1 names the caller's line, 2 its caller's, and so on
    (:func:`outside_package_level`: the first line outside dynametric)."""
    cpuinfo = read_cpuinfo(cpuinfo_path)
    if cpuinfo is None or not slow_avx512_sort(cpuinfo):
        return False
    import numpy

    hint = sort_kernel_hint(os.environ, cpuinfo, numpy_avx512_active(), numpy.__version__)
    if hint is None:
        return False
    import warnings

    warnings.warn(hint, SlowSortWarning, stacklevel=stacklevel + 1)
    return True
