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
