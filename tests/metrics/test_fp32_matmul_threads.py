"""Evaluations from several threads at once: torch's float32 matmul precision is process-wide, so overlapping
``full_fp32_matmul`` blocks must share one save / set / restore. Before, each block saved and restored on its own:
a short evaluation that left while a long one still ranked put the user's reduced precision back under it, and the
long one then "restored" the full precision it had saved, losing the user's setting for good."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
import torch

import dynametric.metrics.evaluate as evaluate_mod
import dynametric.metrics.torch_engine as torch_engine
from dynametric.metrics import evaluate_embeddings
from dynametric.metrics.torch_engine import full_fp32_matmul

HAS_PER_BACKEND = hasattr(torch._C, "_get_fp32_precision_getter")
WAIT_S = 60.0


def _state() -> dict[str, object]:
    """Every precision setting as a user reads it back (per-backend ones where torch has them)."""
    out: dict[str, object] = {"legacy": torch.get_float32_matmul_precision()}
    if HAS_PER_BACKEND:
        b = torch.backends
        out.update({"generic": b.fp32_precision, "cudnn": b.cudnn.fp32_precision,
                    "cuda.matmul": b.cuda.matmul.fp32_precision, "mkldnn": b.mkldnn.fp32_precision,
                    "mkldnn.matmul": b.mkldnn.matmul.fp32_precision})
    return out


FULL = {"legacy": "highest", **({"cuda.matmul": "ieee", "mkldnn.matmul": "ieee"} if HAS_PER_BACKEND else {})}


def _full_now() -> dict[str, object]:
    return {k: v for k, v in _state().items() if k in FULL}


@pytest.fixture(autouse=True)
def _user_setting() -> Iterator[None]:
    """The user's training setting ("high": TF32 on CUDA) for the test; torch's default put back after."""
    torch.set_float32_matmul_precision("high")
    yield
    torch.set_float32_matmul_precision("highest")


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 16)).astype(np.float32), rng.integers(0, 6, n)


@pytest.mark.parametrize("engine", ["cpu", "torch"])
def test_overlapping_evaluations_rank_at_full_precision_and_restore_the_user_setting(monkeypatch, engine):
    """Thread A enters first and leaves while thread B still ranks (the order is forced with events): B's ranking
    sees full precision before and after A left, and the user's "high" is back once both are done."""
    user = _state()
    assert user["legacy"] == "high"
    seen: dict[str, list[dict[str, object]]] = {"A": [], "B": []}
    b_ranking, a_done = threading.Event(), threading.Event()
    errors: list[BaseException] = []
    target = "run_ranking" if engine == "cpu" else "run_ranking_torch"
    module = evaluate_mod if engine == "cpu" else torch_engine
    real = getattr(module, target)

    def ranking(*args, **kwargs):
        name = threading.current_thread().name
        seen[name].append(_full_now())
        if name == "A":
            assert b_ranking.wait(WAIT_S)  # B is inside its block before A leaves
        else:
            b_ranking.set()
            assert a_done.wait(WAIT_S)  # A's evaluation has returned: B ranks on after it left
        out = real(*args, **kwargs)
        seen[name].append(_full_now())
        return out

    monkeypatch.setattr(module, target, ranking)

    def run(name: str, seed: int) -> None:
        try:
            x, labels = _data(60, seed)
            evaluate_embeddings(x, labels, metrics=["map@r"], ranking_engine=engine)
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
            b_ranking.set()
        finally:
            if name == "A":
                a_done.set()

    threads = [threading.Thread(target=run, args=("A", 1), name="A")]
    threads[0].start()
    while not seen["A"] and threads[0].is_alive():  # A ranks (its block is open) before B starts
        threading.Event().wait(0.01)
    threads.append(threading.Thread(target=run, args=("B", 2), name="B"))
    threads[1].start()
    for t in threads:
        t.join(WAIT_S)
    assert not errors, errors
    assert len(seen["A"]) == 2 and len(seen["B"]) == 2
    for name in ("A", "B"):
        for state in seen[name]:
            assert state == FULL, (name, seen)
    assert _state() == user


def test_nested_blocks_restore_only_at_the_outermost_exit():
    user = _state()
    with full_fp32_matmul():
        with full_fp32_matmul():
            assert _full_now() == FULL
        assert _full_now() == FULL
    assert _state() == user


def test_a_failing_block_does_not_disturb_an_open_one():
    """An exception inside one block while another is open: full precision stays for the open one, and the user's
    setting comes back when that one leaves."""
    user = _state()
    with full_fp32_matmul():
        with pytest.raises(KeyError):
            with full_fp32_matmul():
                raise KeyError("boom")
        assert _full_now() == FULL
    assert _state() == user
