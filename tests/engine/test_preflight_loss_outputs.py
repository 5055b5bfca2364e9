"""The preflight calls each loss term once on a training batch's labels (``check_batches(..., module=...)``,
:func:`~dynametric.engine.preflight.check_loss_outputs`): a loss returning more than one value is refused there,
before the run writes anything, not at its first step; nothing of the run changes by the call."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import torch

from dynametric.config import load_config
from dynametric.engine.objective import Objective
from dynametric.engine.preflight import check_batches, check_loss_outputs
from dynametric.errors import ConfigError, InputError
from dynametric.losses.base import MetricLoss

LABELS = torch.tensor([[f, f // 2] for f in range(8) for _ in range(4)])


class CountingLoss(MetricLoss):
    """A user's loss: the mean squared distance of same-class pairs (or that value per row: ``vector``); counts its
    calls in a buffer and in an attribute, and draws from torch's random generator, as a stateful loss may."""

    def __init__(self, scale: int = 0, vector: bool = False, fail: bool = False, **kwargs: Any) -> None:
        super().__init__(scale, **kwargs)
        self.vector, self.fail, self.calls = vector, fail, 0
        self.register_buffer("seen", torch.zeros(()))
        self.proxy = torch.nn.Parameter(torch.ones(3))

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):  # type: ignore[no-untyped-def]
        if self.fail:
            raise InputError("cannot take this batch", key="labels")
        self.calls += 1
        self.seen += 1
        torch.rand(1)
        same = (labels[:, None] == labels[None, :]).float()
        rows = (torch.cdist(embeddings, embeddings).pow(2) * same).mean(dim=1)
        return rows if self.vector else rows.mean()


def _module(*objectives: Objective, dims: dict | None = None) -> SimpleNamespace:
    return SimpleNamespace(objectives=list(objectives),
                           embedder=SimpleNamespace(output_dims=dims or {None: 8, "concat": 8}))


def test_a_term_returning_a_vector_is_the_error_its_first_step_would_give() -> None:
    good, bad = CountingLoss(), CountingLoss(vector=True)
    module = _module(Objective(good, name="first", key="loss"), Objective(bad, name="second", key="extra_losses[0]"))
    with pytest.raises(ConfigError) as exc:
        check_loss_outputs(module, LABELS[:16])
    assert str(exc.value) == ("key 'extra_losses[0].name': loss term 'second' (CountingLoss) returned a tensor of "
                              "shape [16]; expected a single value (0-dim tensor)")
    # the run's objects as they were: the calls went to copies, the parameters untouched, no gradient taken
    assert (good.calls, bad.calls, float(good.seen), float(bad.seen)) == (0, 0, 0.0, 0.0)
    assert good.proxy.grad is None and torch.equal(good.proxy, torch.ones(3))


def test_the_check_changes_nothing_the_run_draws_and_leaves_other_errors_to_the_first_step() -> None:
    module = _module(Objective(CountingLoss(), key="loss"), Objective(CountingLoss(fail=True), name="x", key="x"))
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    check_loss_outputs(module, LABELS[:16])  # the failing term: its own error at the first step, not here
    assert torch.equal(torch.rand(4), expected)  # torch's random state put back
    # several heads: each term gets its head's width (a concat term the heads side by side)
    two = _module(Objective(CountingLoss(vector=True), head="b", key="loss"),
                  dims={"a": 4, "b": 6, "concat": 10})
    with pytest.raises(ConfigError, match=r"^key 'loss.name': loss term 'loss' \(CountingLoss\) returned a tensor"):
        check_loss_outputs(two, LABELS[:16])
    check_loss_outputs(_module(Objective(CountingLoss(), head="concat", key="loss"), dims={"a": 4, "b": 6,
                                                                                         "concat": 10}), LABELS)


def test_check_batches_calls_the_terms_on_the_first_batch_only_when_given_the_module() -> None:
    cfg = load_config(None, ["data.batch_size=16", "data.m=4"])
    train = SimpleNamespace(labels=LABELS)
    module = _module(Objective(CountingLoss(vector=True), key="loss"))
    check_batches(cfg, train)  # without the module: the batches alone, as before
    with pytest.raises(ConfigError, match=r"returned a tensor of shape \[16\]; expected a single value"):
        check_batches(cfg, train, module=module)
    check_batches(cfg, train, module=_module(Objective(CountingLoss(), key="loss")))
