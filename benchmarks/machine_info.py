"""The machine a benchmark ran on, as one line to print under its table: CPU model, logical CPUs, torch version and
threads, the GPU when CUDA is available, and the load average (absolute times on shared machines are noisy, and
which CPU ran a figure matters: see docs/benchmarks.md, *The CPU's sort kernel decides part (b)*)."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux; read as the ``dynametric`` command reads it), else what
    :mod:`platform` knows."""
    from dynametric.cpu_kernels import first_cpu, read_cpuinfo

    text = read_cpuinfo()
    return (first_cpu(text).get("model name") if text else None) or platform.processor() or platform.machine()


def usable_cpus() -> int:
    """CPUs this process may run on (``dynametric.utils.device.usable_cpus``, which ``workers: auto`` counts too)."""
    from dynametric.utils.device import usable_cpus as cpus

    return cpus()


def machine_line() -> str:
    """``CPU <model>, <n> logical CPUs, torch <version> (<t> threads)[, GPU <name>], load average <x>``."""
    import torch

    text = f"CPU {cpu_model()}, {usable_cpus()} logical CPUs, torch {torch.__version__} " \
           f"({torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    if hasattr(os, "getloadavg"):
        text += f", load average {os.getloadavg()[0]:.1f}"
    return text
