"""Host reads in the training step, counted on the CPU.

On a GPU every read of a device value by the host (``.item()``, ``bool(t)``, ``int(t)``, ``.tolist()``, ``.cpu()``,
``.numpy()``, ``nonzero`` and other ops whose output shape depends on the data) waits until the queued work is done,
so the CPU cannot run ahead and queue the next kernels. CI has no GPU, but the same calls can be counted on the CPU:
a ``TorchDispatchMode`` sees the scalar reads and data-dependent ops, and the Python-level reads that never reach the
dispatcher on a CPU tensor (``tolist``, ``numpy``, ``cpu``) are counted by wrapping them. The tests pin how many
reads one training step of the default objectives makes and where, so a new per-step read is a test failure.
"""

from __future__ import annotations

import collections
import os
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import dynametric
from dynametric.config import load_config
from dynametric.engine.builders import build_model, build_objectives
from dynametric.engine.objective import compute_objective

# aten ops that read a device value on the host, or whose output size depends on the data
_READ_OPS = {"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2",
             "aten::unique_dim", "aten::unique_consecutive", "aten::repeat_interleave"}
_PY_READS = ("tolist", "numpy", "cpu")


_PACKAGE = str(Path(dynametric.__file__).resolve().parent) + os.sep


def _caller() -> str:
    """``file:line`` (relative to the package) of the innermost dynametric frame, where the read is written."""
    frames = [f for f in traceback.extract_stack() if str(Path(f.filename).resolve()).startswith(_PACKAGE)]
    if not frames:
        return "?"
    f = frames[-1]
    return f"{Path(str(Path(f.filename).resolve())[len(_PACKAGE):]).as_posix()}:{f.lineno}"


class _Reads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.found: collections.Counter[tuple[str, str]] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func._schema.name
        bool_index = name == "aten::index" and len(args) > 1 and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None)
        if name in _READ_OPS or bool_index:
            where = _caller()
            if where != "?":
                self.found[(name, where)] += 1
        return func(*args, **(kwargs or {}))


@contextmanager
def host_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[collections.Counter[tuple[str, str]]]:
    """Count the host reads made inside the block by dynametric code: ``{(what, file:line): count}``."""
    mode = _Reads()
    for attr in _PY_READS:
        original = getattr(torch.Tensor, attr)

        def counted(self: torch.Tensor, *a: Any, _original: Any = original, _attr: str = attr, **k: Any) -> Any:
            where = _caller()
            if where != "?":
                mode.found[(f"Tensor.{_attr}", where)] += 1
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, attr, counted)
    with mode:
        yield mode.found
    monkeypatch.undo()


SMALL = ["model.backbone=simple_cnn", "model.embedding_dim=16", "model.backbone_kwargs={width: 4, depth: 1}"]


def _warm_step(*overrides: str) -> tuple[Any, Any, torch.Tensor, torch.Tensor]:
    """The small model and objectives of ``overrides`` with a batch of 32 three-scale labels and images, after one
    warm-up step (lazy state, first-call logs): ``(model, objectives, labels, images)``."""
    cfg = load_config(None, [*SMALL, *overrides])
    torch.manual_seed(0)
    labels = torch.stack([torch.arange(32) // 4, torch.arange(32) // 8, torch.arange(32) // 16], 1)
    model = build_model(cfg)
    objectives = build_objectives(cfg, model, labels, 3)
    images = torch.randn(32, 3, 16, 16)
    compute_objective(model(images), labels, objectives)[0].backward()
    return model, objectives, labels, images


def _step_reads(monkeypatch: pytest.MonkeyPatch, *overrides: str) -> collections.Counter[tuple[str, str]]:
    model, objectives, labels, images = _warm_step(*overrides)
    with host_reads(monkeypatch) as found:
        total, _ = compute_objective(model(images), labels, objectives)
        total.backward()
    return found


def test_the_counter_sees_every_kind_of_read(monkeypatch) -> None:
    from dynametric.tuples import padded_positives

    t = torch.tensor([1.0, 2.0])
    with host_reads(monkeypatch) as found:
        _ = bool(t.sum() > 0), t.tolist(), t.numpy(), (t > 1).nonzero()
    assert found == collections.Counter()  # written in this test, not in dynametric: not counted
    pos = torch.eye(4, dtype=torch.bool)
    with host_reads(monkeypatch) as found:
        padded_positives(pos)  # reads the most positives of any row (a shape)
    [(what, where)] = found
    assert what == "aten::_local_scalar_dense" and where.startswith("tuples.py:")
    with host_reads(monkeypatch) as found:
        padded_positives(pos, most=1)  # the caller read it already
    assert not found


def test_default_triplet_step_reads_the_host_once(monkeypatch) -> None:
    # TripletMarginLoss over all triplets (the default objective): one read, the positives' padding (a shape) and
    # the "no triplet" exit together; the active-triplet count stays on the device
    found = _step_reads(monkeypatch, "loss.name=TripletMarginLoss", "loss.multiscale=false")
    assert sum(found.values()) == 1, found
    [(what, where)] = found
    assert what == "Tensor.tolist" and where.startswith("losses/triplet.py:")


def test_multiscale_triplet_step_reads_once_per_scale(monkeypatch) -> None:
    found = _step_reads(monkeypatch, "loss.name=TripletMarginLoss", "loss.multiscale=true")
    assert sum(found.values()) == 3, found
    assert all(where.startswith("losses/triplet.py:") for _, where in found)


@pytest.mark.parametrize("overrides", [
    ["loss.name=CSLLoss", "loss.multiscale=false", "loss.kwargs={}"],
    ["loss.name=PDDMLoss", "loss.multiscale=false", "loss.kwargs={mode: per_positive_pair}"],
    ["loss.name=TripletMarginLoss", "loss.multiscale=true"]])
def test_collecting_the_named_parts_reads_nothing_on_the_host(monkeypatch, overrides) -> None:
    """CSL's per-scale terms, PDDM's E_m / E_e / quadruplet count and MultiScaleLoss's weighted per-scale losses are
    logged every step: collecting them adds no host read to the step (the same reads as without them)."""
    model, objectives, labels, images = _warm_step(*overrides)
    counts = []
    for parts in (None, {}):
        with host_reads(monkeypatch) as found:
            total, _ = compute_objective(model(images), labels, objectives, parts=parts)
            total.backward()
        counts.append(found)
        if parts is not None:
            assert parts and all(isinstance(v, torch.Tensor) for v in parts.values())
    assert counts[0] == counts[1]


CSL_PROXY = ["loss.name=CSLLoss", "loss.multiscale=false", "loss.kwargs={}"]
CSL_PAIRS = ["loss.name=CSLLoss", "loss.multiscale=false", "loss.kwargs={mode: pairs}"]
PDDM_FAITHFUL = ["loss.name=PDDMLoss", "loss.multiscale=false"]
PDDM_PER_PAIR = ["loss.name=PDDMLoss", "loss.multiscale=false", "loss.kwargs={mode: per_positive_pair}"]


@pytest.mark.parametrize("overrides", [CSL_PROXY, CSL_PAIRS, PDDM_FAITHFUL], ids=["csl-proxy", "csl-pairs",
                                                                               "pddm-faithful"])
def test_csl_and_faithful_pddm_steps_read_nothing_on_the_host(monkeypatch, overrides) -> None:
    # CSL: the engine vouches for the batch labels (checked once against the training labels when built), and the
    # pairs mode keeps its skipped-anchor count on the device; PDDM's faithful mode mines its one quadruplet and
    # flags a degenerate batch on the device (before: CSL 2 reads proxy / 7 pairs, PDDM 5)
    found = _step_reads(monkeypatch, *overrides)
    assert not found, found


def test_per_positive_pair_pddm_step_reads_the_host_once(monkeypatch) -> None:
    # the number of positive pairs is the quadruplets' shape: one read, the NaN and no-negative checks folded in
    found = _step_reads(monkeypatch, *PDDM_PER_PAIR)
    [(what, where)] = found
    assert found[(what, where)] == 1 and what == "aten::nonzero" and where.startswith("miners/pddm.py:")


def test_a_degenerate_faithful_pddm_batch_reads_nothing_either(monkeypatch) -> None:
    model, objectives, labels, images = _warm_step(*PDDM_FAITHFUL)
    one_class = torch.zeros_like(labels)  # no negative: a degenerate batch, a zero loss
    with host_reads(monkeypatch) as found:
        total, _ = compute_objective(model(images), one_class, objectives)
        total.backward()
    assert not found, found
    assert objectives[0].loss.num_degenerate_batches == 1  # the counter, read on demand


def test_csl_called_directly_checks_its_labels_until_it_is_vouched_for(monkeypatch) -> None:
    from dynametric.losses import CSLLoss

    labels = torch.stack([torch.arange(32) // 4, torch.arange(32) // 8, torch.arange(32) // 16], 1)
    loss = CSLLoss.from_labels(labels, 16)
    emb = torch.randn(32, 16)
    loss(emb, labels)  # warm-up
    with host_reads(monkeypatch) as found:
        loss(emb, labels)
    # a library call checks the batch against class_paths: an unknown fine id, then a wrong coarser label
    assert sum(found.values()) == 2 and all(where.startswith("losses/csl.py:") for _, where in found), found
    loss.trust_labels(labels)
    with host_reads(monkeypatch) as found:
        loss(emb, labels)
    assert not found, found
