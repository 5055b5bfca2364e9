"""Under DDP the loss terms logged by `MetricLearningModule.log_terms` are the global batch's loss, equal in every
process, logged as rank 0's own: Lightning's advice to log them with `sync_dist=True` (printed at every epoch end,
once per term) is off for those keys alone. The process group is a real gloo group of one process, which is all
Lightning asks of "distributed" before it advises."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
import torch.distributed as dist
from torch import nn

from dynametric.engine.module import MetricLearningModule

ADVICE = "It is recommended to use `self.log("


class _Logs(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.w(batch[0]).mean()
        value = loss.detach()
        MetricLearningModule.log_terms(self, {"a": value, "b": value}, {"a/part": value}, 4)
        self.log("other/y", value, on_step=False, on_epoch=True, batch_size=4)  # not a loss term: still advised
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _advised(tmp_path, distributed: bool) -> list[str]:
    if distributed:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)
    try:
        data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
        trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(_Logs(), data)
        assert set(trainer.callback_metrics) >= {"train/a", "train/b", "train/a/part", "other/y"}
    finally:
        if distributed:
            dist.destroy_process_group()
    return sorted({str(w.message).split("'")[1] for w in caught if str(w.message).startswith(ADVICE)})


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_loss_terms_get_no_sync_dist_advice_under_ddp_and_other_keys_still_do(tmp_path, monkeypatch) -> None:
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    monkeypatch.setattr(rank_zero_only, "rank", 0)  # rank 0 gives Lightning's advice (another test may have left 1)
    assert _advised(tmp_path, distributed=True) == ["other/y"]
    assert _advised(tmp_path, distributed=False) == []  # one process: Lightning advises nothing
