"""The evaluation loaders (the untrained, best-checkpoint and per-head evaluations that `trainer.test` runs, and the
validation loader) take the training's loader settings: `data.pin_memory`, `data.persistent_workers` and
`data.prefetch_factor` were dropped by the test loader, and Lightning asked for persistent workers at every evaluation
where workers are spawned."""

from __future__ import annotations

import multiprocessing
from types import SimpleNamespace

import lightning as L
import torch
from torch.utils.data import TensorDataset

from dynametric.engine.data import EvalDataModule, MetricDataModule


def _dm(**settings) -> MetricDataModule:
    ds = TensorDataset(torch.randn(16, 2))
    return MetricDataModule(ds, ds, ds, eval_batch_size=4, seed=3, **settings)


def _settings(loader) -> tuple:
    return (loader.batch_size, loader.num_workers, loader.pin_memory, loader.persistent_workers,
            loader.prefetch_factor)


def test_the_test_loader_takes_the_training_loader_settings() -> None:
    dm = _dm(num_workers=2, pin_memory=True, persistent_workers=True, prefetch_factor=3)
    data = TensorDataset(torch.randn(10, 2))
    loader = EvalDataModule.like(dm, data).test_dataloader()
    assert _settings(loader) == (4, 2, True, True, 3) == _settings(dm.val_dataloader())
    assert len(loader.dataset) == 10
    off = EvalDataModule.like(_dm(num_workers=2, persistent_workers=False, prefetch_factor=5), data).test_dataloader()
    assert _settings(off) == (4, 2, False, False, 5)
    none = EvalDataModule.like(_dm(num_workers=0, persistent_workers=True, prefetch_factor=3), data).test_dataloader()
    assert _settings(none)[1:4] == (0, False, False)  # no workers: nothing to keep or prefetch (torch refuses them)


def test_evaluate_split_gives_trainer_test_those_settings(monkeypatch) -> None:
    from dynametric.pipeline import run

    seen = {}

    class FakeTrainer:
        interrupted = False

        def test(self, module, datamodule, ckpt_path=None, verbose=True):
            seen["loader"] = _settings(datamodule.test_dataloader())
            module.last_eval = {"fine": {}}

    module = SimpleNamespace(last_eval=None)
    dm = _dm(num_workers=2, pin_memory=True, persistent_workers=True, prefetch_factor=3)
    assert run.evaluate_split(module, dm, TensorDataset(torch.randn(6, 2)), None, False,
                              trainer=FakeTrainer()) == {"fine": {}}
    assert seen["loader"] == (4, 2, True, True, 3)


class _Probe(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 2)
        self.rows = 0

    def test_step(self, batch, batch_idx):
        self.rows += len(batch[0])


def test_persistent_workers_of_a_test_loader_end_with_the_test() -> None:
    """Kept deliberately for a loader read once: Lightning resets the test's loaders when `trainer.test` ends, which
    ends the workers, so none is left behind."""
    before = set(multiprocessing.active_children())
    probe = _Probe()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.test(probe, datamodule=EvalDataModule(TensorDataset(torch.randn(12, 2)), 4, 2, persistent_workers=True,
                                                  prefetch_factor=2), verbose=False)
    assert probe.rows == 12
    assert set(multiprocessing.active_children()) - before == set()
