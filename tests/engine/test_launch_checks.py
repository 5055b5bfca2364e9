"""A launcher that starts every process itself (torchrun) and `trainer.devices` / `trainer.num_nodes` that do not make
the same number of processes: refused before anything is written (the variables set in-process, no processes)."""

from __future__ import annotations

import pytest

from dynametric.engine import trainer as trainer_mod
from dynametric.engine.trainer import TrainerSettings, launch, plan_trainer, processes_here
from dynametric.errors import ConfigError

_VARS = ("RANK", "LOCAL_RANK", "GROUP_RANK", "NODE_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID",
         "MASTER_ADDR", "MASTER_PORT", "SLURM_NTASKS", "SLURM_JOB_NAME", "JSM_NAMESPACE_SIZE")


@pytest.fixture
def torchrun(monkeypatch):
    """``set(world, per_node, rank)``: the variables torchrun gives a process it started. Lightning's rank of this
    process (which a Trainer built under them sets, and its rank-zero warnings read) is put back afterwards."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    for name in _VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(rank_zero_only, "rank", rank_zero_only.rank)

    def set_vars(world: int, per_node: int, rank: int = 0) -> None:
        for name, value in {"RANK": rank, "LOCAL_RANK": rank % per_node, "GROUP_RANK": rank // per_node,
                            "WORLD_SIZE": world, "LOCAL_WORLD_SIZE": per_node, "TORCHELASTIC_RUN_ID": "abc123",
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29511"}.items():
            monkeypatch.setenv(name, str(value))

    return set_vars


def test_torchrun_with_trainer_devices_1_is_refused_saying_what_to_set(torchrun) -> None:
    """`torchrun --standalone --nproc-per-node 2 -m dynametric train` with the default trainer.devices: 1 trained two
    separate runs into one folder (exit 0, run_info processes: 1)."""
    torchrun(2, 2)
    with pytest.raises(ConfigError) as info:
        plan_trainer(TrainerSettings(accelerator="cpu"))
    assert (info.value.key, info.value.message) == (
        "trainer.devices", "torchrun started 2 processes (WORLD_SIZE=2, LOCAL_WORLD_SIZE=2) but trainer.devices=1 x "
        "trainer.num_nodes=1 is 1 process (each of its processes would train a run of its own); set trainer.devices: "
        "2 and trainer.num_nodes: 1")
    plan = plan_trainer(TrainerSettings(accelerator="cpu", devices=2))  # what it says to set: accepted
    assert plan.processes == 2 and plan.strategy == "DDPStrategy"


@pytest.mark.parametrize("devices, nodes, key, expected", [
    (2, 1, "trainer.num_nodes", "torchrun started 4 processes (WORLD_SIZE=4, LOCAL_WORLD_SIZE=2) but "
     "trainer.devices=2 x trainer.num_nodes=1 is 2 processes (Lightning would stop when it starts them); set "
     "trainer.devices: 2 and trainer.num_nodes: 2"),
    (4, 1, "trainer.devices", "torchrun started 4 processes (WORLD_SIZE=4, LOCAL_WORLD_SIZE=2) but "
     "trainer.devices=4 x trainer.num_nodes=1 is 4 processes (Lightning would stop when it starts them); set "
     "trainer.devices: 2 and trainer.num_nodes: 2"),
    ("auto", 2, "trainer.devices", "torchrun started 4 processes (WORLD_SIZE=4, LOCAL_WORLD_SIZE=2) but "
     "trainer.devices=auto (1 here) x trainer.num_nodes=2 is 2 processes (Lightning would stop when it starts them); "
     "set trainer.devices: 2 and trainer.num_nodes: 2"),
])
def test_two_nodes_of_two_processes_need_both_keys(torchrun, devices, nodes, key, expected) -> None:
    torchrun(4, 2, rank=1)
    with pytest.raises(ConfigError) as info:
        plan_trainer(TrainerSettings(accelerator="cpu", devices=devices, num_nodes=nodes))
    assert (info.value.key, info.value.message) == (key, expected)
    assert plan_trainer(TrainerSettings(accelerator="cpu", devices=2, num_nodes=2)).processes == 2


def test_a_launcher_that_sets_world_size_and_rank_only(torchrun, monkeypatch) -> None:
    torchrun(3, 3)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    assert launch() == trainer_mod.Launch("a launcher", 3, None)
    with pytest.raises(ConfigError) as info:
        plan_trainer(TrainerSettings(accelerator="cpu"))
    assert info.value.message.startswith("a launcher started 3 processes (WORLD_SIZE=3) but trainer.devices=1 x ")
    assert info.value.message.endswith("; set trainer.devices: 3 and trainer.num_nodes: 1")


def test_lightnings_own_launcher_and_one_process_are_not_such_a_launch(torchrun, monkeypatch) -> None:
    """Lightning's script launcher sets WORLD_SIZE (never RANK, LOCAL_WORLD_SIZE or TORCHELASTIC_RUN_ID) in rank 0's
    process, where it stays after the fit: a later one-process run in that process is not refused."""
    assert launch() is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("NODE_RANK", "0")
    assert launch() is None
    assert plan_trainer(TrainerSettings(accelerator="cpu")).processes == 1
    torchrun(1, 1)  # torchrun with one process: nothing to refuse
    assert launch() is None and plan_trainer(TrainerSettings(accelerator="cpu")).processes == 1


def test_processes_here_follows_lightnings_resolution(monkeypatch) -> None:
    assert processes_here("cpu", "auto") == processes_here("auto", "auto") == 1  # no GPU in the test machine
    assert processes_here("cpu", 3) == processes_here("cpu", "3") == processes_here("cuda", [0, 1, 2]) == 3
    assert processes_here("cuda", "0,1") == 2 and processes_here("cuda", "1,") == 1
    assert processes_here("cpu", -1) is None and processes_here("cpu", "0,x") is None
    assert processes_here("cpu", 0) is None and processes_here("cpu", True) is None
    monkeypatch.setattr(trainer_mod, "_available", lambda name: name in ("cpu", "cuda"))
    monkeypatch.setattr("torch.cuda.device_count", lambda: 4)
    assert processes_here("auto", "auto") == processes_here("gpu", -1) == processes_here("cuda", "auto") == 4
    assert processes_here("cpu", "auto") == 1
