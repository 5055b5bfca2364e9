"""Every speed benchmark states the machine it ran on (CPU model, CPUs, torch, threads, load) with its figures."""

from __future__ import annotations

import json

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
    assert info.cpu_model() == "Test CPU 9000 @ 3.0GHz"
    line = info.machine_line()
    assert line.startswith(f"CPU Test CPU 9000 @ 3.0GHz, {info.usable_cpus()} logical CPUs, torch {torch.__version__} "
                           f"({torch.get_num_threads()} threads)")


def test_data_readers_reports_the_machine(capsys):
    info = load_benchmark("machine_info")
    assert load_benchmark("data_readers").main(["--rows", "300", "--repeats", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == 300 and out["machine"].startswith(f"CPU {info.cpu_model()}, ")


@pytest.mark.parametrize("name", SPEED_BENCHMARKS)
def test_every_speed_benchmark_prints_the_machine_line(name):
    source = (BENCHMARKS / f"{name}.py").read_text(encoding="utf-8")
    assert "from machine_info import machine_line" in source and "machine_line()" in source
