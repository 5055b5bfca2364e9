"""A command that runs out of memory, of address space to load torch, or of open files for its loader workers:
one line from the command line (``dynametric.cli.main``), exit status 2, no traceback."""

from __future__ import annotations

import numpy as np
import pytest

from dynametric.cli import main
from dynametric.commands import evaluate, index
from dynametric.utils import limits

ALLOC = ("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: can't allocate memory: you tried to "
         "allocate 168960000 bytes. Error code 12 (Cannot allocate memory)")


def _raising(exc: BaseException):
    def run(args):
        raise exc
    return run


@pytest.fixture
def no_address_limit(monkeypatch):
    monkeypatch.setattr(limits, "_address_space_kib", lambda: None)


def test_the_cpu_allocators_error_in_evaluate_names_the_size_and_the_budget(monkeypatch, capsys,
                                                                            no_address_limit) -> None:
    monkeypatch.setattr(evaluate, "run", _raising(RuntimeError(ALLOC)))  # was: a traceback from chunk_scores
    assert main(["evaluate", "--example"]) == 2
    assert capsys.readouterr().err == ("dynametric evaluate: error: out of memory (tried to allocate 168,960,000 "
                                       "bytes); lower --memory-budget-mb (the ranking's working memory) or free "
                                       "memory\n")


def test_a_memory_error_in_index_build_names_no_budget_and_says_the_address_space_limit(monkeypatch, capsys,
                                                                                        tmp_path) -> None:
    monkeypatch.setattr(limits, "_address_space_kib", lambda: 3_500_000)

    def too_big(args):  # numpy's own MemoryError (was: a bare `MemoryError` traceback from load_embedding_set)
        np.empty((10**15, 64), dtype=np.float32)

    monkeypatch.setattr(index, "run_build", too_big)
    assert main(["index", "build", "--embeddings", str(tmp_path), "--out", str(tmp_path / "i")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynametric index build: error: out of memory (tried to allocate 227. PiB) under an "
                          "address-space limit of 3500000 KiB (ulimit -v); free memory")
    assert "--memory-budget" not in err and len(err.splitlines()) == 1


def test_a_bare_memory_error_and_torch_unloadable_under_ulimit_v(monkeypatch, capsys) -> None:
    monkeypatch.setattr(limits, "_address_space_kib", lambda: 2_500_000)
    monkeypatch.setattr(evaluate, "run", _raising(MemoryError()))
    assert main(["evaluate", "--example"]) == 2
    assert capsys.readouterr().err.startswith("dynametric evaluate: error: out of memory under an address-space limit "
                                              "of 2500000 KiB (ulimit -v); lower --memory-budget-mb")
    unmapped = ImportError("libtorch_cpu.so: failed to map segment from shared object", name="_C",
                           path="/venv/lib/python3.11/site-packages/torch/_C.cpython-311-x86_64-linux-gnu.so")
    monkeypatch.setattr(evaluate, "run", _raising(unmapped))
    assert main(["evaluate", "--example"]) == 2
    assert capsys.readouterr().err == ("dynametric evaluate: error: cannot load torch (libtorch_cpu.so: failed to "
                                       "map segment): the process's address-space limit (ulimit -v: 2500000 KiB) "
                                       "is too low; raise it (ulimit -v unlimited)\n")


def test_torchs_too_many_open_files_is_one_line(monkeypatch, capsys) -> None:
    monkeypatch.setattr(evaluate, "run", _raising(RuntimeError(
        "Too many open files. Communication with the workers is no longer possible. Please increase the limit using "
        "`ulimit -n` in the shell or change the sharing strategy")))
    assert main(["evaluate", "--example"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dynametric evaluate: error: too many open files (ulimit -n: ")
    assert err.endswith("raise the limit (ulimit -n) or use fewer workers (data.workers, --workers)\n")


def test_other_errors_keep_their_traceback(monkeypatch) -> None:
    monkeypatch.setattr(evaluate, "run", _raising(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        main(["evaluate", "--example"])
    monkeypatch.setattr(evaluate, "run", _raising(ImportError("No module named 'x'")))
    with pytest.raises(ImportError):
        main(["evaluate", "--example"])


@pytest.mark.parametrize("error", [MemoryError(), RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. ")],
                         ids=["MemoryError", "alloc_cpu"])
def test_running_out_of_memory_while_loading_a_checkpoint_is_not_called_a_damaged_file(tmp_path, monkeypatch, error):
    """Loading a good checkpoint (or weight file) that does not fit in memory is the out-of-memory error, not
    'truncated or corrupt' (the readers catch every error type a damaged file raises, and must let these through)."""
    import torch

    from dynametric.engine import checkpoint
    from dynametric.models import embedder

    ckpt = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, ckpt)

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(torch, "load", fail)
    with pytest.raises(type(error)):
        checkpoint.load_checkpoint_file(ckpt)
    with pytest.raises(type(error)):
        embedder._read_state_dict(ckpt)
    assert limits.out_of_memory(error)
    assert limits.resource_error_line(error, "evaluate").startswith("out of memory")
    assert not limits.out_of_memory(RuntimeError("unexpected EOF, expected 5 more bytes. The file might be corrupted."))
