"""The process's resource limits: open files for data-loading workers, and the one-line errors of a command that ran
out of memory, of open files, or of address space to load torch.

:func:`ensure_open_files` runs before a DataLoader with workers is built (``train``'s loaders, the inference loader
of ``embed``, ``evaluate --checkpoint``, ``index build``, ...). With torch's default ``file_descriptor`` sharing
strategy every tensor a worker hands over travels as an open file until the main process frees it, so a loader holds
about ``PER_WORKER_FILES + FILES_PER_PREFETCHED_BATCH * prefetch_factor`` files per worker beyond what the process
had open (measured: a 2-tensor batch and ``prefetch_factor`` 4 cost 9-12 files a worker). A soft ``ulimit -n`` too
low for that made the workers fail (``OSError: [Errno 24] Too many open files``) and the loader hang, or torch stop
with ``Too many open files. Communication with the workers is no longer possible``. The soft limit is raised up to
the hard one when that suffices (as many tools do; it changes nothing else); otherwise the run is refused with one
line naming the option, the limit and what to do, before anything is written.

:func:`resource_error_line` is the command line's one line for an error of exhausted resources that escaped a
command (``dynametric.cli.main``), ``None`` for any other error (which keeps its traceback).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable

from dynametric.errors import ConfigError

PER_WORKER_FILES = 4
"""Open files a loader worker costs the main process beside its prefetched batches: its index queue's pipe, its
share of the result queue (measured 3-4). Persistent workers keep them while the other loaders run."""

FILES_PER_PREFETCHED_BATCH = 3
"""Open files a batch waiting in the prefetch queue holds under the ``file_descriptor`` sharing strategy: one a
tensor (images, labels, and an index or crop box; measured 2 for a 2-tensor batch)."""

HEADROOM_FILES = 32
"""Files the run opens beside its loaders and those open when the check runs: checkpoints, logs, image files being
read (a whole ``train`` run without workers peaks at about 10 open files)."""


def open_file_count() -> int | None:
    """The files this process has open (``/proc/self/fd``, else ``/dev/fd``); ``None`` where neither can be read."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            return len(os.listdir(folder))
        except OSError:
            continue
    return None


def loader_files(workers: int, prefetch_factor: int | None) -> int:
    """About how many files a DataLoader with ``workers`` workers prefetching ``prefetch_factor`` batches each keeps
    open (0 without workers)."""
    if workers <= 0:
        return 0
    prefetch = 2 if prefetch_factor is None else max(int(prefetch_factor), 1)
    return workers * (PER_WORKER_FILES + FILES_PER_PREFETCHED_BATCH * prefetch)


def ensure_open_files(workers: int, prefetch_factor: int | None, key: str, *, persistent: bool = False,
                      auto: Callable[[str], None] | None = None) -> int:
    """Makes sure a DataLoader with ``workers`` workers prefetching ``prefetch_factor`` batches can open the files
    it needs (:func:`loader_files`, with the files open now and :data:`HEADROOM_FILES`; ``persistent``: the workers
    of another loader stay alive meanwhile, as ``train``'s do while it evaluates, :data:`PER_WORKER_FILES` each).
    A soft limit too low is raised up to the hard limit when that suffices (to at least 4096 files, never past the
    hard limit); where the hard limit is too low, a ConfigError keyed ``key`` (the option
    that set the workers: ``data.workers``, ``--workers``) says the limit and what to do. Nothing without workers,
    and nothing where the platform has no such limit (Windows).

    ``auto``: the user asked for ``auto`` workers, which resolved to ``workers``; where the hard limit is too low
    for them, the most workers it allows (0 at least: loading in the main process) are used instead of the refusal,
    and ``auto`` is called with the ``note:`` line that says so. Returns the workers to use (``workers`` but for
    that case)."""
    if workers <= 0:
        return workers
    try:
        import resource
    except ImportError:  # Windows: no RLIMIT_NOFILE
        return workers
    per_loader = loader_files(workers, prefetch_factor)
    base = open_file_count() or 32
    kept = workers * PER_WORKER_FILES if persistent else 0
    needed = base + HEADROOM_FILES + per_loader + kept
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    infinite = resource.RLIM_INFINITY
    if soft == infinite or soft >= needed:
        return workers
    limit = soft
    if hard == infinite or hard >= needed:
        target = max(needed, 4096) if hard == infinite else min(hard, max(needed, 4096))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return workers
        except (ValueError, OSError):  # refused (a platform cap below the hard limit): the soft limit is the limit
            pass
    else:
        limit = hard
    fits = max((limit - base - HEADROOM_FILES) // ((per_loader + kept) // workers), 0)
    limits = f"ulimit -n: {soft} soft, {'unlimited' if hard == infinite else hard} hard"
    if auto is not None:  # `auto` asked for as many as suit the machine: as many as the limit allows
        used = "0 loader workers (loading in the main process)" if not fits else \
            f"{fits} loader worker{'s' if fits > 1 else ''}"
        auto(f"note: {key} auto: {used} instead of {workers}, which need about {needed} open files, more than "
             f"this process may open ({limits}); raise the limit (ulimit -n {needed}) for {workers}")
        return ensure_open_files(fits, prefetch_factor, key, persistent=persistent)  # the soft limit raised to fit
    setting = f"{key} {{}}" if key.startswith("-") else f"{key}={{}}"
    fewer = f"{setting.format(fits)} or fewer" if fits else f"{setting.format(0)}: loading in the main process"
    raise ConfigError(f"{workers} loader workers need about {needed} open files, more than this process may open "
                      f"({limits}); raise the limit "
                      f"(ulimit -n {needed} in the shell that starts dynametric; above the hard limit, as root or in "
                      f"the system's limits) or use fewer workers ({fewer})", key=key)


#: the commands with an option bounding the ranking's working memory, named by the out-of-memory line
BUDGET_OPTIONS = {"evaluate": "--memory-budget-mb (the ranking's working memory)",
                  "train": "eval.memory_budget_bytes (the evaluation's working memory)"}

_TORCH_ALLOC = re.compile(r"can't allocate memory: you tried to allocate (\d+) bytes")
_NUMPY_ALLOC = re.compile(r"Unable to allocate (\S+ \w?i?B) for an array")
_MAP_SEGMENT = re.compile(r"([^\s:]+): failed to map segment")


_ALLOC_FAILED = re.compile(r"alloc_cpu\.cpp|can't allocate memory")  # a GPU's: gpu_out_of_memory

#: the options that lower a command's GPU memory, named by its out-of-GPU-memory line (:func:`gpu_memory_line`)
GPU_MEMORY_OPTIONS = {
    "embed": "--batch-size (images per forward pass)",
    "evaluate": "--batch-size (images per forward pass, with --checkpoint) or --memory-budget-mb (the ranking's "
                "working memory)",
    "search": "--batch-size (query images per forward pass)",
    "train": "data.batch_size, data.eval_batch_size or eval.memory_budget_bytes",
}

_GPU_ALLOC = re.compile(r"Tried to allocate (\d+(?:\.\d+)? ?[KMGT]?i?B)")
# torch >= 2.3: "GPU 0 has a total capacity of 79.11 GiB of which 1.2 GiB is free"; before: "(GPU 0; 79.11 GiB total
# capacity; 70.00 GiB already allocated; 1.20 GiB free; ...)"
# (torch 2.1 spelled it "capacty")
_GPU_CAPACITY = re.compile(r"(GPU \d+) has a total capac\w* of (\S+ \S+) of which (\S+ \S+) is free")
_GPU_CAPACITY_OLD = re.compile(r"\((GPU \d+); (\S+ \S+) total capacity;(?:[^)]*?; )?(\S+ \S+) free")

_GPU_OOM_TEXT = re.compile(r"(CUDA|MPS backend|HIP) out of memory|(CUDA|CUDA driver|HIP) error: out of memory|"
                           r"CU(BLAS|DNN)_STATUS_ALLOC_FAILED")


def gpu_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says a GPU ran out of memory: torch's ``OutOfMemoryError`` (what CUDA's allocator raises) or
    a ``RuntimeError`` saying so (``CUDA out of memory``, ``MPS backend out of memory``, a kernel's or the driver's
    ``CUDA error: out of memory`` / ROCm's ``HIP error: out of memory``, cuBLAS's ``CUBLAS_STATUS_ALLOC_FAILED``,
    cuDNN's ``CUDNN_STATUS_ALLOC_FAILED``). Not a ``MemoryError`` nor the CPU allocator's failure
    (:func:`out_of_memory` covers those too)."""
    if isinstance(exc, MemoryError):
        return False
    if any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and _GPU_OOM_TEXT.search(str(exc)) is not None


def gpu_memory_detail(exc: BaseException) -> str:
    """What a GPU's out-of-memory error says of the allocation, ``tried to allocate 2.00 GiB; GPU 0: 1.2 GiB free
    of 79.11 GiB`` (the parts its text has; ``""`` where it has neither)."""
    text = str(exc)
    parts = []
    if (size := _GPU_ALLOC.search(text)) is not None:
        parts.append(f"tried to allocate {size[1]}")
    if (gpu := _GPU_CAPACITY.search(text) or _GPU_CAPACITY_OLD.search(text)) is not None:
        parts.append(f"{gpu[1]}: {gpu[3]} free of {gpu[2]}")
    return "; ".join(parts)


def gpu_memory_line(exc: BaseException, command: str) -> str:
    """The command line's one line for a GPU that ran out of memory in ``command``: ``out of GPU memory (tried to
    allocate 2.00 GiB; GPU 0: 1.2 GiB free of 79.11 GiB); lower --batch-size (images per forward pass) or free the
    GPU's memory (other processes on it)``, with the command's options of :data:`GPU_MEMORY_OPTIONS`."""
    detail = gpu_memory_detail(exc)
    options = GPU_MEMORY_OPTIONS.get(command)
    lower = f"lower {options} or free" if options else "free"
    return f"out of GPU memory{f' ({detail})' if detail else ''}; {lower} the GPU's memory (other processes on it)"



def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says the process ran out of memory: a ``MemoryError``, torch's CPU allocator failing
    (``[enforce fail at alloc_cpu.cpp:N] ...``, with or without the size) or a device's ``OutOfMemoryError``. Code
    that turns a library's failure into "this file is damaged" lets these through: the file is not to blame."""
    if isinstance(exc, MemoryError) or gpu_out_of_memory(exc):
        return True
    return isinstance(exc, RuntimeError) and _ALLOC_FAILED.search(str(exc)) is not None


def resource_error_line(exc: BaseException, command: str) -> str | None:
    """The one line (without the ``dynametric COMMAND: error:`` prefix) of an error that says the process ran out of
    a resource, else ``None``: a GPU's out-of-memory error (:func:`gpu_memory_line`, naming the command's batch-size
    and budget options); a ``MemoryError`` (numpy's names the size) or torch's CPU allocator failing
    (``[enforce fail at alloc_cpu.cpp] ... you tried to allocate N bytes``): ``out of memory (tried to allocate N
    bytes)``, with the command's memory budget option where it has one (:data:`BUDGET_OPTIONS`) and the
    address-space limit where one is set; a shared library of torch that cannot be mapped (``ulimit -v`` too low to
    load it); torch's ``Too many open files`` from a DataLoader (``ulimit -n``)."""
    text = str(exc)
    if gpu_out_of_memory(exc):
        return gpu_memory_line(exc, command)
    if out_of_memory(exc):
        torch_size, numpy_size = _TORCH_ALLOC.search(text), _NUMPY_ALLOC.search(text)
        size = (f" (tried to allocate {int(torch_size[1]):,} bytes)" if torch_size else
                f" (tried to allocate {numpy_size[1]})" if numpy_size else "")
        budget = BUDGET_OPTIONS.get(command)
        lower = f"lower {budget} or free memory" if budget else "free memory or give the command less data at once"
        return f"out of memory{size}{_address_space_note()}; {lower}"
    if isinstance(exc, ImportError) and (mapped := _MAP_SEGMENT.search(text)):
        package = os.path.basename(os.path.dirname(exc.path)) if exc.path else (exc.name or "a library")
        limit = _address_space_kib()
        if limit is None:
            return f"cannot load {package} ({mapped[1]}: failed to map segment): out of memory"
        return (f"cannot load {package} ({mapped[1]}: failed to map segment): the process's address-space limit "
                f"(ulimit -v: {limit} KiB) is too low; raise it (ulimit -v unlimited)")
    if isinstance(exc, RuntimeError) and "Too many open files" in text:
        return (f"too many open files{_open_files_note()}: the data-loading workers ran out of them; raise the limit "
                "(ulimit -n) or use fewer workers (data.workers, --workers)")
    return None


def _address_space_kib() -> int | None:
    """The soft address-space limit (``ulimit -v``) in KiB, ``None`` where none is set (or the platform has none)."""
    try:
        import resource
    except ImportError:
        return None
    soft = resource.getrlimit(resource.RLIMIT_AS)[0]
    return None if soft == resource.RLIM_INFINITY else soft // 1024


def _address_space_note() -> str:
    limit = _address_space_kib()
    return "" if limit is None else f" under an address-space limit of {limit} KiB (ulimit -v)"


def _open_files_note() -> str:
    try:
        import resource
    except ImportError:
        return ""
    return f" (ulimit -n: {resource.getrlimit(resource.RLIMIT_NOFILE)[0]})"
