"""The processes of a multi-process `dynametric train` run (Lightning's script launcher: rank 0 starts the other ranks
as more `dynametric train` processes at its first Lightning call) train one config, without starting processes: the
test sets the variables a launched rank sees."""

from __future__ import annotations

import json
import os
import re

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
    config = tmp_path / "tiny.yaml"
    args = ["train", "--config", str(config), "--out", str(tmp_path / "run"), "--no-progress", "trainer.max_epochs=3"]

    def run_training(cfg, run_dir, **kwargs):
        seen.append(cfg)
        if len(seen) == 1:  # rank 0 at its first Lightning call: the launcher starts rank 1 from it, while it runs
            config.write_text(TINY.replace("lr: 0.003", "lr: 0.3"))  # edited while rank 0 read its data
            with monkeypatch.context() as child:
                child.setenv("LOCAL_RANK", "1")  # the process Lightning's launcher starts for rank 1
                child.setenv("WORLD_SIZE", "2")
                child.setattr("os.getppid", lambda: os.getpid())  # started by the process that runs rank 0
                assert main(args) == 0

    monkeypatch.setattr(run_mod, "run_training", run_training)
    config.write_text(TINY)
    assert main(args) == 0  # rank 0, which starts rank 1
    rank_0, rank_1 = seen
    assert rank_1.optim.lr == rank_0.optim.lr == 0.003 and rank_1.trainer.max_epochs == 3
    assert config_hash(rank_1) == config_hash(rank_0) and rank_1 == rank_0
    from dynametric.config import config_to_dict

    # what rank 0 published while it ran (main takes it back when it returns), inherited by a process it did not start
    monkeypatch.setenv("DYNAMETRIC_RUN_CONFIG", json.dumps({"pid": os.getpid(), "config": config_to_dict(rank_0)}))
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(args) == 0  # a rank another launcher started (torchrun: not by rank 0) reads the file itself
    assert seen[2].optim.lr == 0.3
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert main(args) == 0  # a new run of rank 0 (one process) reads the file as it is now
    assert seen[3].optim.lr == 0.3


def test_a_run_of_several_nodes_says_it_waits_for_them_and_the_dry_run_counts_their_processes(
        tmp_path, monkeypatch, capsys, one_process) -> None:
    """trainer.num_nodes=2 on one machine blocked in the rendezvous for more than 10 minutes without a word, and the
    dry run said `2 training processes` for num_nodes=2 devices=2 (the run has 4)."""
    from dynametric.config import load_config
    from dynametric.pipeline.run_checks import rendezvous_note

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


def test_another_ranks_process_names_its_rank_in_its_error_and_keeps_its_status(tmp_path, monkeypatch, capsys,
                                                                                 one_process) -> None:
    """The processes of the other ranks that rank 0 starts (Lightning's script launcher) printed their error line in
    rank 0's words (a 2-process run refused by a check printed the same line twice): they name their rank, so that an
    error of their own is said (silence would lose it) and a shared one is told apart. One that another launcher
    started (torchrun, another node) says it as before."""
    import json

    args = ["train", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / "run")]
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("dynametric train: error: ")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(args) == 2  # rank 1, but no parent that published the run's config: not started by rank 0
    assert capsys.readouterr().err.startswith("dynametric train: error: ")
    # started by rank 0's process, which published its pid and config (dynametric.commands.train.CONFIG_ENV)
    monkeypatch.setenv("DYNAMETRIC_RUN_CONFIG", json.dumps({"pid": os.getppid(), "config": {}}))
    assert main(args) == 2
    assert capsys.readouterr().err.startswith("dynametric train: error (rank 1): ")


_KILL_RANK_1 = """
import os, signal, sys
import dynametric.engine.module as module
step = module.MetricLearningModule.training_step
def killed_at_step_3(self, batch, *args, **kwargs):
    if os.environ.get("LOCAL_RANK") == "1" and int(self.global_step) == 3:
        os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's out-of-memory killer would
    return step(self, batch, *args, **kwargs)
module.MetricLearningModule.training_step = killed_at_step_3
from dynametric.cli import main
sys.exit(main(sys.argv[1:]))
"""



def _train_two_processes(tmp_path, script: str):
    """``dynametric train`` of TINY with 2 CPU processes for 3 epochs, through ``script`` (which patches the
    module, then runs the CLI), in a process of its own: the finished process and the run folder."""
    import subprocess
    import sys

    from tests.commands.test_train import _one_process_env

    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "kill_rank_1.py").write_text(script)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, str(tmp_path / "kill_rank_1.py"), "train", "--config",
                           str(tmp_path / "tiny.yaml"), "--out", str(out), "--no-progress", "run.report=false",
                           "trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_epochs=3"],
                          capture_output=True, text=True, env=_one_process_env(), timeout=240)
    return proc, out


@pytest.mark.slow
def test_a_process_of_another_rank_that_dies_ends_rank_0_with_one_line_and_the_resume_command(tmp_path) -> None:
    """Rank 1 killed in the second epoch: rank 0 printed a multi-page `[rank0] ... Connection reset by peer`
    traceback and ended with status 1, without a word on how to go on."""
    proc, out = _train_two_processes(tmp_path, _KILL_RANK_1)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and "[rank0]" not in proc.stderr, proc.stderr
    said = [line for line in proc.stderr.splitlines() if line.startswith("dynametric")]
    assert len(said) == 1, proc.stderr
    assert re.fullmatch(r"dynametric train: error: another process of this 2-process run ended while this one "
                        r"waited for it \([^()]*Connection (reset|closed) by peer[^()]*\): killed, out of memory, or "
                        r"stopped on an error of its own \(its 'error \(rank N\):' line, above\); resume with: "
                        r"dynametric train --resume " + re.escape(str(out)), said[0]), said[0]
    assert (out / "last.ckpt").is_file() and json.loads((out / "metrics.json").read_text())["test"] == {}


_KILL_RANK_1_SLOW_RANK_0 = _KILL_RANK_1.replace("""    return step(self, batch, *args, **kwargs)""", """\
    if os.environ.get("LOCAL_RANK", "0") == "0" and int(self.global_step) == 3:
        import time
        time.sleep(8)  # a slow step or a loaded machine: rank 0 reaches its next collective late
    return step(self, batch, *args, **kwargs)""")


@pytest.mark.slow
def test_a_rank_0_that_sees_a_dead_peer_late_still_says_its_line(tmp_path) -> None:
    """CI (2 loaded cores): rank 0 ended with status -9 and not a word. Lightning's child-process observer (a thread
    of rank 0 that polls the other ranks' processes every 5 s) SIGKILLed rank 0 as soon as it saw rank 1 dead, before
    rank 0 reached its next collective and could say so. Here rank 0 takes 8 s to get there."""
    assert "time.sleep(8)" in _KILL_RANK_1_SLOW_RANK_0
    proc, out = _train_two_processes(tmp_path, _KILL_RANK_1_SLOW_RANK_0)
    assert proc.returncode == 2, proc.stderr
    said = [line for line in proc.stderr.splitlines() if line.startswith("dynametric")]
    assert len(said) == 1 and said[0].startswith("dynametric train: error: another process of this 2-process run "
                                                 "ended while this one waited for it"), proc.stderr
    assert said[0].endswith("resume with: dynametric train --resume " + str(out)), said[0]


def test_a_run_resumed_with_another_number_of_processes_is_refused(tmp_path, capsys, one_process) -> None:
    """Checkpoints did not record the world size: a `trainer.devices: auto` run resumed on a machine with another GPU
    count went on with another global batch from the recorded batch position, without a word. Here a one-process
    run's checkpoint says it was trained by 2 processes (as a run on 2 GPUs resumed on a machine with 1 would)."""
    import torch

    from dynametric.engine.checkpoint import load_checkpoint_file

    (tmp_path / "tiny.yaml").write_text(TINY)
    out = tmp_path / "run"
    assert main(["train", "--config", str(tmp_path / "tiny.yaml"), "--out", str(out), "--no-progress",
                 "run.report=false", "trainer.max_epochs=1"]) == 0
    last = out / "last.ckpt"
    ckpt = load_checkpoint_file(last)
    assert ckpt["dynametric"]["processes"] == 1
    ckpt["dynametric"]["processes"] = 2
    torch.save(ckpt, last)
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 2
    line = next(i for i, text in enumerate((out / "config.yaml").read_text().splitlines(), 1)
                if text.strip() == "devices: 1")
    assert capsys.readouterr().err.strip() == (
        f"dynametric train: error: {out / 'config.yaml'}:{line} key 'trainer.devices': {last} was trained by 2 "
        "process(es) and this machine would resume it with 1 (trainer.devices=1 x trainer.num_nodes=1): a step draws "
        "one batch per process, so the run would go on with other batches from the recorded position; resume it where "
        "it gets 2 (with trainer.devices auto or -1, CUDA_VISIBLE_DEVICES chooses the GPUs), or start a new run")
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
