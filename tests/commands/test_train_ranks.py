"""The processes of a multi-process `dynametric train` run (Lightning's script launcher: rank 0 starts the other ranks
as more `dynametric train` processes at its first Lightning call) train one config, without starting processes: the
test sets the variables a launched rank sees."""

from __future__ import annotations

import pytest

from dynametric.cli import main
from tests.commands.test_train import _LAUNCH_ENV, TINY


@pytest.fixture
def one_process(monkeypatch):
    """No launcher's variables and nothing published (restored after the test)."""
    for name in (*_LAUNCH_ENV, "DYNAMETRIC_RUN_CONFIG"):  # dynametric.commands.train.CONFIG_ENV
        monkeypatch.delenv(name, raising=False)


def test_a_launched_rank_trains_rank_0s_config_even_when_the_file_changed_since(tmp_path, monkeypatch,
                                                                                one_process) -> None:
    """Rank 1 read the --config file again when rank 0 started it (minutes after rank 0 read it): an edit in between
    made the ranks train different configs, silently."""
    import dynametric.pipeline.run as run_mod
    from dynametric.config import config_hash

    seen = []
    monkeypatch.setattr(run_mod, "run_training", lambda cfg, run_dir, **kwargs: seen.append(cfg))
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    args = ["train", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress", "trainer.max_epochs=3"]
    assert main(args) == 0  # rank 0
    config.write_text(TINY.replace("lr: 0.003", "lr: 0.3"))  # edited while rank 0 reads its data
    monkeypatch.setenv("LOCAL_RANK", "1")  # the process Lightning's launcher starts for rank 1
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(args) == 0
    rank_0, rank_1 = seen
    assert rank_1.optim.lr == rank_0.optim.lr == 0.003 and rank_1.trainer.max_epochs == 3
    assert config_hash(rank_1) == config_hash(rank_0) and rank_1 == rank_0
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert main(args) == 0  # a new run of rank 0 (one process) reads the file as it is now
    assert seen[2].optim.lr == 0.3


def test_a_run_of_several_nodes_says_it_waits_for_them_and_the_dry_run_counts_their_processes(
        tmp_path, monkeypatch, capsys, one_process) -> None:
    """trainer.num_nodes=2 on one machine blocked in the rendezvous for more than 10 minutes without a word, and the
    dry run said `2 training processes` for num_nodes=2 devices=2 (the run has 4)."""
    from dynametric.config import load_config
    from dynametric.pipeline.run import rendezvous_note

    cfg = load_config(None, ["trainer.num_nodes=2", "trainer.devices=2"])
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29500")
    assert rendezvous_note(cfg, 4) == (
        "note: trainer.num_nodes=2: node 0 waits until the processes of all 2 nodes (4 in all) join at MASTER_ADDR "
        "10.0.0.1, MASTER_PORT 29500; start the same command on each other node with NODE_RANK=1 ... 1 and the same "
        "MASTER_ADDR and MASTER_PORT. Ctrl-C and SIGTERM do not end this wait (torch's rendezvous, which gives up "
        "after 30 minutes); kill the process to stop it")
    monkeypatch.delenv("MASTER_PORT")
    assert "MASTER_PORT a free port Lightning picks here (MASTER_PORT not set, so no other node can know it)" in \
        rendezvous_note(cfg, 4)
    assert rendezvous_note(load_config(None, ["trainer.devices=2"]), 2) is None

    (tmp_path / "tiny.yaml").write_text(TINY)
    assert main(["train", "--dry-run", "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "run"),
                 "trainer.accelerator=cpu", "trainer.num_nodes=2", "trainer.devices=2"]) == 0
    trainer_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("trainer: "))
    assert trainer_line.endswith("; 4 training processes (DDPStrategy, 2 on each of 2 nodes)"), trainer_line
