"""The command's choice of numpy's sort kernel (dynametric.cpu_kernels)."""

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from dynametric.cpu_kernels import (
    SlowSortWarning,
    choose_numpy_sort_kernel,
    numpy_avx512_names,
    slow_avx512_sort,
    sort_kernel_hint,
    sort_kernel_setting,
    warn_if_slow_sort,
)


def _cpuinfo(vendor: str, family: int, flags: str) -> str:
    block = (f"processor\t: {{i}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: 17\n"
             f"model name\t: some CPU\nflags\t\t: fpu sse2 avx2 {flags}\n\n")
    return block.format(i=0) + block.format(i=1)


ZEN4 = _cpuinfo("AuthenticAMD", 25, "avx512f avx512dq avx512bw")
ZEN3 = _cpuinfo("AuthenticAMD", 25, "")
ZEN5 = _cpuinfo("AuthenticAMD", 26, "avx512f avx512dq")
XEON = _cpuinfo("GenuineIntel", 6, "avx512f avx512dq avx512bw")


def test_only_zen4_with_avx512_counts_as_slow():
    assert slow_avx512_sort(ZEN4)
    assert not slow_avx512_sort(ZEN3) and not slow_avx512_sort(ZEN5) and not slow_avx512_sort(XEON)
    assert not slow_avx512_sort("") and not slow_avx512_sort("garbage without fields\n")
    # a flag that merely starts with avx512f is not avx512f
    assert not slow_avx512_sort(_cpuinfo("AuthenticAMD", 25, "avx512fx"))


def test_names_follow_the_numpy_version():
    # the dispatch targets of numpy 1.26.4, 2.0.2, 2.2.6, 2.3.5 and 2.4.6 (numpy warns about any other name)
    assert numpy_avx512_names("2.4.6").split() == ["X86_V4", "AVX512_ICL", "AVX512_SPR"]
    assert numpy_avx512_names("3.1.0") == numpy_avx512_names("2.4.0")
    older = numpy_avx512_names("2.2.6").split()
    assert older == ["AVX512F", "AVX512CD", "AVX512_KNL", "AVX512_KNM", "AVX512_SKX", "AVX512_CLX", "AVX512_CNL",
                     "AVX512_ICL"]
    assert numpy_avx512_names("2.3.5").split() == older == numpy_avx512_names("1.26.4").split()
    assert numpy_avx512_names("not-a-version") == numpy_avx512_names("1.26.4")


def test_setting_respects_the_user_and_an_imported_numpy():
    want = {"NPY_DISABLE_CPU_FEATURES": numpy_avx512_names("2.4.6")}
    assert sort_kernel_setting({}, ZEN4, "2.4.6", numpy_imported=False) == want
    assert sort_kernel_setting({"DYNAMETRIC_KEEP_NUMPY_AVX512": "0"}, ZEN4, "2.4.6", False) == want
    assert sort_kernel_setting({}, XEON, "2.4.6", False) == {}
    assert sort_kernel_setting({}, ZEN4, "2.4.6", numpy_imported=True) == {}
    assert sort_kernel_setting({"DYNAMETRIC_KEEP_NUMPY_AVX512": "1"}, ZEN4, "2.4.6", False) == {}
    assert sort_kernel_setting({"NPY_DISABLE_CPU_FEATURES": ""}, ZEN4, "2.4.6", False) == {}
    assert sort_kernel_setting({"NPY_ENABLE_CPU_FEATURES": "AVX2"}, ZEN4, "2.4.6", False) == {}
    # numpy 1.x has no AVX2 int64 sort: switching AVX-512 off would only fall back to its scalar sort
    assert sort_kernel_setting({}, ZEN4, "1.26.4", False) == {}
    assert sort_kernel_setting({}, ZEN4, "2.0.2", False) == {"NPY_DISABLE_CPU_FEATURES": numpy_avx512_names("2.0.2")}


def test_in_this_process_numpy_is_imported_so_nothing_changes(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(ZEN4)
    env: dict[str, str] = {}
    assert not choose_numpy_sort_kernel(env, str(info)) and env == {}
    assert not choose_numpy_sort_kernel({}, str(tmp_path / "missing"))


_FRESH = """
import json, sys, warnings
import dynametric.cli  # the command's module: must not have imported numpy or torch yet
before = sorted(m for m in ("numpy", "torch") if m in sys.modules)
from dynametric.cpu_kernels import choose_numpy_sort_kernel
env = {}
chose = choose_numpy_sort_kernel(env, sys.argv[1])
import os
os.environ.update(env)
with warnings.catch_warnings():
    warnings.simplefilter("error")
    import numpy as np
try:
    from numpy._core._multiarray_umath import __cpu_features__ as feats
except ImportError:
    from numpy.core._multiarray_umath import __cpu_features__ as feats
names = env.get("NPY_DISABLE_CPU_FEATURES", "").split()
from dynametric.cpu_kernels import numpy_avx512_active
print(json.dumps({"before": before, "chose": chose, "env": env, "on": [n for n in names if feats.get(n)],
                  "active": numpy_avx512_active()}))
"""


def test_a_fresh_command_process_can_still_choose(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(ZEN4)
    proc = subprocess.run([sys.executable, "-c", _FRESH, str(info)], capture_output=True, text=True, check=True)
    got = json.loads(proc.stdout)
    assert got["before"] == [] and got["chose"]
    assert got["env"]["NPY_DISABLE_CPU_FEATURES"]
    assert got["on"] == [] and not got["active"]  # numpy took every name: its AVX-512 dispatch is off
    assert proc.stderr == ""  # and did not warn about any of them (warnings are errors there)


def test_hint_for_python_programs():
    hint = sort_kernel_hint({}, ZEN4, avx512_active=True, numpy_version="2.4.6")
    assert hint is not None and 'NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR"' in hint
    assert "DYNAMETRIC_KEEP_NUMPY_AVX512=1" in hint
    assert sort_kernel_hint({}, ZEN4, avx512_active=False, numpy_version="2.4.6") is None  # already AVX2
    assert sort_kernel_hint({}, XEON, avx512_active=True, numpy_version="2.4.6") is None
    assert sort_kernel_hint({"DYNAMETRIC_KEEP_NUMPY_AVX512": "1"}, ZEN4, True, "2.4.6") is None
    assert sort_kernel_hint({}, ZEN4, avx512_active=True, numpy_version="1.26.4") is None


def test_warning_points_at_the_caller(tmp_path, monkeypatch):
    import dynametric.cpu_kernels as ck

    zen4, xeon = tmp_path / "zen4", tmp_path / "xeon"
    zen4.write_text(ZEN4)
    xeon.write_text(XEON)
    monkeypatch.delenv("DYNAMETRIC_KEEP_NUMPY_AVX512", raising=False)
    monkeypatch.setattr(ck, "numpy_avx512_active", lambda: True)
    with pytest.warns(SlowSortWarning, match="AVX2 kernel") as record:
        assert warn_if_slow_sort(cpuinfo_path=str(zen4))
    assert record[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not warn_if_slow_sort(cpuinfo_path=str(xeon))
        monkeypatch.setattr(ck, "numpy_avx512_active", lambda: False)
        assert not warn_if_slow_sort(cpuinfo_path=str(zen4))


def test_engine_asks_for_the_hint_only_when_it_sorts_rows(monkeypatch):
    import dynametric.metrics.engine as engine
    from dynametric.metrics import evaluate_embeddings

    calls = []
    monkeypatch.setattr(engine, "_SORT_HINT_PAIRS", 1)
    # the line the warning would name: ``stacklevel`` frames above the warning function's caller (the engine)
    monkeypatch.setattr(engine, "warn_if_slow_sort",
                        lambda stacklevel=1: calls.append(sys._getframe(stacklevel).f_code.co_filename))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 4)).astype(np.float32)
    labels = np.arange(60) // 3
    evaluate_embeddings(x, labels, metrics=["recall@1"])  # leave-one-out, small ranks: symmetric top lists
    assert calls == []
    evaluate_embeddings(x, labels, metrics=["map"])  # full ranking: rows are sorted
    assert calls == [__file__]  # the user's line, however deep the library's own steps go (a fixed 3 broke when
    # evaluate_embeddings was split into steps and named a line of the library)


_PROGRAM = """
import json, os, sys
from dynametric.cpu_kernels import choose_numpy_sort_kernel  # the two documented first lines of a program
chose = choose_numpy_sort_kernel(cpuinfo_path=sys.argv[1])
import torch  # imports numpy
from dynametric.cpu_kernels import numpy_avx512_active
print(json.dumps({"chose": chose, "var": os.environ.get("NPY_DISABLE_CPU_FEATURES"), "active": numpy_avx512_active()}))
"""


def test_a_python_program_can_choose_with_its_first_lines(tmp_path):
    # docs/metrics.md, Speed on your CPU: the documented call sets numpy's variable in the program's own environment
    info = tmp_path / "cpuinfo"
    info.write_text(ZEN4)
    env = {k: v for k, v in os.environ.items() if k not in ("NPY_DISABLE_CPU_FEATURES", "NPY_ENABLE_CPU_FEATURES",
                                                                "DYNAMETRIC_KEEP_NUMPY_AVX512")}
    proc = subprocess.run([sys.executable, "-c", _PROGRAM, str(info)], capture_output=True, text=True, check=True,
                          env=env)
    got = json.loads(proc.stdout)
    assert got["chose"] and got["var"] and not got["active"]


def test_numpy_sort_is_slow_only_on_zen4_with_numpy_avx512_active(tmp_path):
    from dynametric.cpu_kernels import numpy_avx512_active, numpy_sort_is_slow

    for name, text, want in (("zen4", ZEN4, numpy_avx512_active()), ("xeon", XEON, False), ("zen5", ZEN5, False)):
        info = tmp_path / name
        info.write_text(text)
        assert numpy_sort_is_slow(str(info)) is want, name
    assert numpy_sort_is_slow(str(tmp_path / "missing")) is False
