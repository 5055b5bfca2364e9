"""``embed_dataset`` from several threads on one model the caller left in train mode: the model stays in eval mode
until the last overlapping call returns, and the caller's modes come back after. Before, each call saved and
restored the modes on its own: a short call that finished while a long one embedded put train mode back under it
(BatchNorm with batch statistics: wrong embeddings, running stats updated), and the long one then left the model in
the eval mode it had saved."""

from __future__ import annotations

import threading

import pytest
import torch
from torch import nn

from dynametric.engine.inference import embed_dataset

WAIT_S = 60.0


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
    with torch.no_grad():  # running stats far from a batch's own: train-mode BatchNorm gives other embeddings
        model[2].running_mean.fill_(3.0)
        model[2].running_var.fill_(9.0)
    return model.train()


class _Items:
    """``n`` items ``(image [3, 2, 2], label)``; ``hook(i)`` runs before item ``i`` is read."""

    def __init__(self, n: int, seed: int, hook=None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, 2, 2, generator=g)
        self.hook = hook

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        if self.hook is not None:
            self.hook(i)
        return self.images[i], i % 3


def _stats(model: nn.Module) -> list[torch.Tensor]:
    bn = model[2]
    return [bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()]


def test_overlapping_calls_embed_in_eval_mode_and_restore_train_mode():
    model = _model()
    model[1].eval()  # a submodule the caller put in eval mode under the model in train mode: stays so
    short_plain, long_plain = _Items(12, 1), _Items(48, 2)
    want_short = embed_dataset(model, short_plain, batch_size=4, device="cpu")[0]
    want_long = embed_dataset(model, long_plain, batch_size=4, device="cpu")[0]
    assert model.training and not model[1].training and model[2].training
    stats = _stats(model)

    long_started, short_done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def short_hook(i: int) -> None:  # the short call waits, inside its loop, until the long one has begun
        if i == 4:
            assert long_started.wait(WAIT_S)

    def long_hook(i: int) -> None:  # the long call goes on past its first batches only after the short one returned
        if i == 0:
            long_started.set()
        if i == 8:
            assert short_done.wait(WAIT_S)

    out: dict[str, torch.Tensor] = {}

    def run(name: str, items: _Items) -> None:
        try:
            out[name] = embed_dataset(model, items, batch_size=4, device="cpu")[0]
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
            long_started.set()
        finally:
            if name == "short":
                short_done.set()

    short = threading.Thread(target=run, args=("short", _Items(12, 1, short_hook)))
    long = threading.Thread(target=run, args=("long", _Items(48, 2, long_hook)))
    short.start()
    long.start()
    short.join(WAIT_S)
    long.join(WAIT_S)
    assert not errors, errors
    assert torch.equal(out["short"], want_short)
    assert torch.equal(out["long"], want_long)
    assert model.training and not model[1].training and model[2].training and model[4].training
    for before, after in zip(stats, _stats(model)):
        assert torch.equal(before, after)


def test_an_error_restores_the_modes():
    model = _model()

    def fail(i: int) -> None:
        if i == 5:
            raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        embed_dataset(model, _Items(12, 1, fail), batch_size=4, device="cpu")
    assert all(m.training for m in model.modules())
    # and the next call starts afresh: eval inside, train mode after
    embed_dataset(model, _Items(8, 3), batch_size=4, device="cpu")
    assert all(m.training for m in model.modules())
