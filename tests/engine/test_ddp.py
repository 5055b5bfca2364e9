"""Two gloo processes with the engine's all-gather give the single-process gradient on the global batch."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from dynametric.engine.distributed import all_gather_no_grad, all_gather_with_grad
from dynametric.engine.objective import Objective, compute_objective
from tests.engine.toy import PairLoss, ProxyLoss, RandomPairMiner, ToyEmbedder

GLOBAL_BATCH = 12


class Step(nn.Module):
    """What DDP wraps in Lightning: the embedder and the losses (proxy parameters included)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embedder = ToyEmbedder()
        self.objectives = [Objective(PairLoss(), RandomPairMiner(), name="pair"),
                           Objective(ProxyLoss(4, 4), name="proxy", weight=0.7)]
        self.losses = nn.ModuleList([o.loss for o in self.objectives])

    def forward(self, x, labels, gather):
        total, _ = compute_objective(self.embedder(x), labels, self.objectives, gather=gather)
        return total


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(GLOBAL_BATCH, 8, generator=g)
    fine = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 0, 1, 2, 3])
    return x, torch.stack([fine, fine // 2], 1)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().clone() for k, p in model.named_parameters()}


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.set_num_threads(1)
        model = nn.parallel.DistributedDataParallel(Step())
        x, labels = _data()
        per = GLOBAL_BATCH // world
        local = slice(rank * per, (rank + 1) * per)
        torch.manual_seed(123)  # same miner randomness on every rank
        loss = model(x[local], labels[local], all_gather_with_grad)
        loss.backward()
        gathered = all_gather_no_grad(torch.arange(per) + 100 * rank)
        torch.save({"grads": _grads(model.module), "loss": loss.detach(), "gathered": gathered},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_process_gradients_equal_single_process(tmp_path):
    world = 2
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world, join=True)
    single = Step()
    x, labels = _data()
    torch.manual_seed(123)
    loss = single(x, labels, None)
    loss.backward()
    reference = _grads(single)
    for rank in range(world):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got["loss"], loss.detach())
        assert set(got["grads"]) == set(reference)
        for name, g in reference.items():
            assert g.abs().sum() > 0, name
            torch.testing.assert_close(got["grads"][name], g, rtol=1e-5, atol=1e-7, msg=name)
        assert got["gathered"].tolist() == [0, 1, 2, 3, 4, 5, 100, 101, 102, 103, 104, 105]


def test_evaluation_shards_are_even_and_none_is_empty_while_there_are_enough_items():
    """Each process embeds a contiguous shard of an evaluation split. Shards of ceil(n / W) left the last ranks
    empty (4 items over 3 processes: 2, 2, 0; 41 over 8: rank 7 none) and the run crashed in Lightning."""
    from dynametric.engine.data import shard_range

    assert [len(shard_range(4, r, 3)) for r in range(3)] == [2, 1, 1]
    assert [len(shard_range(41, r, 8)) for r in range(8)] == [6, 5, 5, 5, 5, 5, 5, 5]
    assert [len(shard_range(7, r, 2)) for r in range(2)] == [4, 3]
    for n in range(0, 30):
        for world in range(1, 9):
            shards = [shard_range(n, r, world) for r in range(world)]
            assert [i for s in shards for i in s] == list(range(n))  # rank order restores the order
            assert max(map(len, shards)) - min(map(len, shards)) <= 1
            assert n < world or min(map(len, shards)) >= 1


def test_a_split_with_fewer_items_than_processes_is_refused_before_training():
    import pytest

    from dynametric.config import load_config
    from dynametric.errors import ConfigError
    from dynametric.pipeline.run_checks import check_eval_shards

    cfg = load_config(None, ["trainer.devices=2"])
    splits = {"validation": list(range(5)), "test": [0]}
    with pytest.raises(ConfigError) as info:
        check_eval_shards(cfg, splits, 2)
    assert info.value.key == "trainer.devices"
    assert info.value.message == ("the test split has 1 image(s), fewer than the 2 processes that would each evaluate "
                                  "a shard of it (trainer.devices x trainer.num_nodes); use at most 1 process or "
                                  "more data")
    check_eval_shards(cfg, splits, 1)  # one process evaluates any split
    check_eval_shards(cfg, {"validation": None, "test": [0, 1]}, 2)  # no validation; two items for two processes


def test_several_processes_with_per_process_batchnorm_get_a_note():
    """A 2-process run of simple_cnn (BatchNorm) had another loss than one process on the global batch from the first
    step: each process normalised with its own batch. The run and the dry run say so, and how to avoid it."""
    from dynametric.config import load_config
    from dynametric.engine.builders import build_model
    from dynametric.pipeline.run_checks import batchnorm_note

    cfg = load_config(None, ["data.batch_size=16"])
    model = build_model(cfg)
    model.eval()
    bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert bn >= 1
    assert batchnorm_note(cfg, model, 2) == (
        f"note: {bn} BatchNorm layer(s) of the model normalise with each process's own batch of data.batch_size 16 "
        "under 2 processes, so this run is not one process on the global batch; trainer.sync_batchnorm: true (GPUs) "
        "or model.freeze_bn: true makes it so")
    assert not model.training  # the check leaves the model's mode as it was
    assert batchnorm_note(cfg, model, 1) is None
    assert batchnorm_note(load_config(None, ["trainer.sync_batchnorm=true"]), model, 2) is None
    frozen = load_config(None, ["model.freeze_bn=true"])
    assert batchnorm_note(frozen, build_model(frozen), 2) is None
    assert batchnorm_note(cfg, nn.Linear(3, 2), 4) is None


def test_the_strategies_that_start_processes_inside_each_call_are_refused_when_the_config_loads(tmp_path, capsys):
    """trainer.strategy=ddp_spawn / ddp_fork: the dry run said OK, and the run crashed with a bare AssertionError
    (the spawned processes' evaluation never came back) after writing config.yaml and logs/."""
    import pytest

    from dynametric.cli import main
    from dynametric.config import load_config
    from dynametric.engine.trainer import TrainerSettings, validate_settings
    from dynametric.errors import ConfigError

    for name in ("ddp_spawn", "DDP_Fork", "ddp_notebook", "ddp_spawn_find_unused_parameters_true"):
        with pytest.raises(ConfigError) as info:
            load_config(None, [f"trainer.strategy={name}", "trainer.devices=2"])
        assert info.value.key == "trainer.strategy"
        assert info.value.message == (
            f"strategy {name!r} starts new processes inside every Lightning call and their results do not come back "
            "to this process, which dynametric train needs; use ddp (trainer.devices: N starts N processes on this "
            "machine)")
    with pytest.raises(ConfigError):  # settings built without a config: the same rule
        validate_settings(TrainerSettings(strategy="ddp_spawn"))
    assert load_config(None, ["trainer.strategy=ddp"]).trainer.strategy == "ddp"
    out = tmp_path / "run"
    assert main(["train", "--dry-run", "--out", str(out), "trainer.strategy=ddp_fork", "trainer.devices=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dynametric train: error: <command line> key 'trainer.strategy': "
                                               "strategy 'ddp_fork' starts new processes"), err
    assert not out.exists()
