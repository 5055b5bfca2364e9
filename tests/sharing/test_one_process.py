"""The alternating module (`sharing_alternating`, `mic`) runs on one process: `check_alternating` names the key that
starts more (trainer.devices, trainer.num_nodes, a launcher's processes) and accepts `trainer.devices: auto` where it
is one process."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynametric.config import load_config
from dynametric.engine import trainer as trainer_mod
from dynametric.errors import ConfigError
from dynametric.methods.sharing.alternating import check_alternating

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
ALTERNATING = CONFIGS / "sharing" / "synthetic-alternating.yaml"
MIC = CONFIGS / "mic" / "synthetic.yaml"
_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RUN_ID")


@pytest.fixture(autouse=True)
def no_launcher(monkeypatch):
    for name in _VARS:
        monkeypatch.delenv(name, raising=False)


def _refusal(path: Path, *overrides: str) -> tuple[str | None, str]:
    cfg = load_config(path, list(overrides))
    with pytest.raises(ConfigError) as info:
        check_alternating(cfg, cfg.method.name)
    return info.value.key, info.value.message


def test_two_nodes_are_refused_naming_trainer_num_nodes() -> None:
    """It said `key 'trainer.devices' ... set trainer.devices: 1` to a config with trainer.devices: 1."""
    assert _refusal(ALTERNATING, "trainer.devices=1", "trainer.num_nodes=2") == (
        "trainer.num_nodes", "method 'sharing_alternating' runs on one process; trainer.num_nodes is 2: set "
        "trainer.num_nodes: 1")


def test_devices_auto_is_one_process_on_the_cpu_and_more_with_gpus(monkeypatch) -> None:
    """`trainer.devices: auto` was refused on a CPU machine, where it is one process."""
    monkeypatch.setattr(trainer_mod, "_available", lambda name: name == "cpu")
    for path in (ALTERNATING, MIC):
        cfg = load_config(path, ["trainer.devices=auto"])
        check_alternating(cfg, cfg.method.name)
        cfg = load_config(path, ["trainer.devices=[0]"])
        check_alternating(cfg, cfg.method.name)
    monkeypatch.setattr(trainer_mod, "_available", lambda name: name in ("cpu", "cuda"))
    monkeypatch.setattr("torch.cuda.device_count", lambda: 2)
    assert _refusal(MIC, "trainer.devices=auto") == (
        "trainer.devices", "method 'mic' runs on one process; trainer.devices is 'auto', which starts 2 processes on "
        "this machine (one per GPU): set trainer.devices: 1")
    cfg = load_config(MIC, ["trainer.devices=auto", "trainer.accelerator=cpu"])  # the CPU: one process
    check_alternating(cfg, cfg.method.name)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 1)
    cfg = load_config(MIC, ["trainer.devices=auto"])  # one GPU: one process
    check_alternating(cfg, cfg.method.name)


@pytest.mark.parametrize("devices, expected", [
    ("2", "trainer.devices is 2 (2 processes)"),
    ("'0,1'", "trainer.devices is '0,1' (2 processes)"),
])
def test_more_devices_are_refused(devices, expected) -> None:
    assert _refusal(ALTERNATING, f"trainer.devices={devices}") == (
        "trainer.devices", f"method 'sharing_alternating' runs on one process; {expected}: set trainer.devices: 1")


def test_processes_a_launcher_started_are_refused_whatever_trainer_devices_says(monkeypatch) -> None:
    """`torchrun --nproc-per-node 2` with trainer.devices: 1 passed the check and trained two separate runs."""
    for name, value in {"RANK": "1", "LOCAL_RANK": "1", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
                        "TORCHELASTIC_RUN_ID": "r1"}.items():
        monkeypatch.setenv(name, value)
    for devices in ("1", "2"):
        assert _refusal(MIC, f"trainer.devices={devices}") == (
            "trainer.devices", "method 'mic' runs on one process, and torchrun started 2 (WORLD_SIZE=2, "
            "LOCAL_WORLD_SIZE=2); start dynametric train without torchrun, with trainer.devices: 1")
