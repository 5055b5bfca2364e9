"""Every speed benchmark states the machine it ran on (CPU model, CPUs, torch, threads, load) with its figures."""

from __future__ import annotations

import json
import os
import shlex
import subprocess

import pytest
import torch

from tests.benchmarks.loader import BENCHMARKS, load_benchmark

SPEED_BENCHMARKS = ("data_readers", "data_throughput", "eval_speed", "loss_speed", "pddm_mining", "search",
                    "train_throughput")


def test_machine_line_names_the_cpu_model(tmp_path, monkeypatch):
    info = load_benchmark("machine_info")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Test CPU 9000 @ 3.0GHz\n"
                       "flags\t: avx\n")
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path,
                                                                          *a, **k))
    assert info.cpu_model() == "Test CPU 9000 @ 3.0GHz (no AVX2)"
    line = info.machine_line()
    assert line.startswith(f"CPU Test CPU 9000 @ 3.0GHz (no AVX2), {info.usable_cpus()} logical CPUs, torch "
                           f"{torch.__version__} ({torch.get_num_threads()} threads)")


def _fake_cpuinfo(tmp_path, monkeypatch, text):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    real_open = open
    monkeypatch.setattr("builtins.open", lambda path, *a, **k: real_open(cpuinfo if path == "/proc/cpuinfo" else path,
                                                                          *a, **k))


@pytest.mark.parametrize(("flags", "isa"), [("fpu avx avx2 avx512f avx512bw", "AVX-512F"),
                                            ("fpu avx avx2", "AVX2, no AVX-512"), ("fpu sse4_2", "no AVX2")])
def test_cpu_model_adds_family_model_stepping_and_isa_level(tmp_path, monkeypatch, flags, isa):
    """On a KVM guest the model name is just "AMD EPYC": family / model / stepping and the ISA level tell the CPUs
    apart (Zen 2 vs Zen 4 decides part (b) of the GPU suite)."""
    _fake_cpuinfo(tmp_path, monkeypatch, "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n"
                  f"model\t\t: 17\nmodel name\t: AMD EPYC\nstepping\t: 1\nflags\t\t: {flags}\n\n"
                  "processor\t: 1\nmodel name\t: other\n")
    assert load_benchmark("machine_info").cpu_model() == f"AMD EPYC (family 25 model 17 stepping 1, {isa})"


def test_claim_environment_uses_the_machine_line_usable_cpus_and_a_dirty_mark(tmp_path, monkeypatch):
    common = load_benchmark("claim_common")
    info = load_benchmark("machine_info")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)  # one usable CPU of many
    env = common.environment()
    assert env.startswith(f"CPU {info.cpu_model()}, 1 logical CPUs, torch {torch.__version__}")
    # the git revision: -dirty once a tracked file changes
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "f.txt").write_text("a\n")
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "c"], check=True)
    rev = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    (repo / "untracked.txt").write_text("x\n")  # untracked files do not make the tree dirty
    assert common.git_revision(repo) == rev
    (repo / "f.txt").write_text("b\n")
    assert common.git_revision(repo) == f"{rev}-dirty"
    (tmp_path / "plain").mkdir()
    assert common.git_revision(tmp_path / "plain") == "unknown"


def test_run_conditions_report_the_measured_niceness_and_threads(monkeypatch):
    common = load_benchmark("claim_common")
    monkeypatch.setattr(os, "getpriority", lambda which, who: 7)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert common.run_conditions() == "nice 7, 2 torch threads"
        torch.set_num_threads(1)
        assert common.run_conditions() == "nice 7, 1 torch thread"
    finally:
        torch.set_num_threads(threads)


def test_command_lines_keep_their_quoting():
    common = load_benchmark("claim_common")
    cmd = common.command_line("claim_dyml.py", ["--methods", "fine-only", "CSL (PxK)", "--out", "a b.md"])
    assert cmd == "python benchmarks/claim_dyml.py --methods fine-only 'CSL (PxK)' --out 'a b.md'"
    assert shlex.split(cmd)[3:5] == ["fine-only", "CSL (PxK)"]


def test_data_readers_reports_the_machine(capsys):
    info = load_benchmark("machine_info")
    assert load_benchmark("data_readers").main(["--rows", "300", "--repeats", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == 300 and out["machine"].startswith(f"CPU {info.cpu_model()}, ")


@pytest.mark.parametrize("name", SPEED_BENCHMARKS)
def test_every_speed_benchmark_prints_the_machine_line(name):
    source = (BENCHMARKS / f"{name}.py").read_text(encoding="utf-8")
    assert "from machine_info import machine_line" in source and "machine_line()" in source
