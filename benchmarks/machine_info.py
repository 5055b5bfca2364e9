"""The machine a benchmark ran on, as one line to print under its table: CPU model, logical CPUs, torch version and
threads, the GPU when CUDA is available, and the load average (absolute times on shared machines are noisy, and
which CPU ran a figure matters: see docs/benchmarks.md, *The CPU's sort kernel decides part (b)*)."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU from /proc/cpuinfo (Linux; read as the ``dynametric`` command reads it): its model name, then in
    parentheses its family / model / stepping and the vector ISA level that decides the kernels (``AVX-512F``,
    else ``AVX2, no AVX-512``, else ``no AVX2``), e.g. ``AMD EPYC (family 23 model 1 stepping 2, AVX2, no
    AVX-512)``: on a KVM guest the model name alone is often just ``AMD EPYC``. Elsewhere what :mod:`platform`
    knows."""
    from dynametric.cpu_kernels import first_cpu, read_cpuinfo

    text = read_cpuinfo()
    fields = first_cpu(text) if text else {}
    name = fields.get("model name") or platform.processor() or platform.machine()
    details = [" ".join(f"{label} {fields[key]}" for key, label in
                        (("cpu family", "family"), ("model", "model"), ("stepping", "stepping")) if fields.get(key))]
    if "flags" in fields:
        flags = set(fields["flags"].split())
        details.append("AVX-512F" if "avx512f" in flags else "AVX2, no AVX-512" if "avx2" in flags else "no AVX2")
    details = [d for d in details if d]
    return f"{name} ({', '.join(details)})" if details else name


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
