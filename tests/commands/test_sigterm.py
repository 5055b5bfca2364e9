"""SIGTERM (`timeout`, `docker stop`, a batch system's preemption) stops a command as Ctrl-C does, with
`interrupted by SIGTERM` and exit status 143 (docs/reliability.md, docs/training.md): `train` keeps its
checkpoints and says how to go on (resume, or start again before the first checkpoint), no partial output is left.
Before, `train` exited with status 0 and nothing said (Lightning's loops turn SIGTERM into a SystemExit without a
code), the other commands died by the default handler without a word."""

from __future__ import annotations

import contextlib
import os
import signal
import time

import pytest

from dynametric.cli import main
from dynametric.engine.callbacks import ResumeState
from tests.commands.test_train_interrupt import FINISHED_ONLY, _config, _metrics, _process_state  # noqa: F401

pytestmark = pytest.mark.skipif(os.name != "posix", reason="SIGTERM to this process")


def _sigterm_self(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)  # delivered to this (main) thread before the next bytecode
    time.sleep(5)  # not reached: the handler raises first


def test_sigterm_during_fit_stops_the_run_resumably(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    real_end = ResumeState.on_train_epoch_end

    def end_then_sigterm(self, trainer, pl_module):  # SIGTERM right after the first epoch's last.ckpt
        real_end(self, trainer, pl_module)
        if trainer.current_epoch == 0:
            _sigterm_self()

    monkeypatch.setattr(ResumeState, "on_train_epoch_end", end_then_sigterm)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["train", "--config", str(_config(tmp_path)), "--out", str(out), "--no-progress"]) == 143
    assert signal.getsignal(signal.SIGTERM) == before  # the handler lasts as long as the command
    err = capsys.readouterr().err.strip()
    assert err == f"dynametric train: interrupted by SIGTERM (resume with: dynametric train --resume {out})"
    assert (out / "last.ckpt").is_file() and not any((out / name).exists() for name in FINISHED_ONLY)
    assert [v["epoch"] for v in _metrics(out)["validation"]] == [0] and _metrics(out)["test"] == {}

    monkeypatch.setattr(ResumeState, "on_train_epoch_end", real_end)
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    assert _metrics(out)["test"] and all((out / name).is_file() for name in FINISHED_ONLY)


def test_sigterm_before_the_first_checkpoint_says_to_start_again(tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "run"
    monkeypatch.setattr(ResumeState, "on_train_batch_start", _sigterm_self)
    assert main(["train", "--config", str(_config(tmp_path)), "--out", str(out), "--no-progress"]) == 143
    assert capsys.readouterr().err.strip() == (
        f"dynametric train: interrupted by SIGTERM (no checkpoint yet; start again with: dynametric train --config "
        f"{out / 'config.yaml'} --out {out})")
    assert not (out / "last.ckpt").exists() and _metrics(out)["test"] == {}


def test_lightnings_own_sigterm_exit_is_an_interruption(tmp_path, capsys, monkeypatch) -> None:
    """Where Lightning's loops see the SIGTERM themselves (they raise SIGTERMException, a SystemExit() that ended
    the process with status 0 as if the run had finished)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    out = tmp_path / "run"
    real_end = ResumeState.on_train_epoch_end

    def end_then_lightning_sigterm(self, trainer, pl_module):
        real_end(self, trainer, pl_module)
        raise SIGTERMException

    monkeypatch.setattr(ResumeState, "on_train_epoch_end", end_then_lightning_sigterm)
    assert main(["train", "--config", str(_config(tmp_path)), "--out", str(out), "--no-progress"]) == 143
    assert capsys.readouterr().err.strip() == (f"dynametric train: interrupted by SIGTERM (resume with: dynametric "
                                              f"train --resume {out})")
    assert _metrics(out)["test"] == {} and not any((out / name).exists() for name in FINISHED_ONLY)


def test_sigterm_during_evaluate_leaves_no_json(tmp_path, capsys, monkeypatch) -> None:
    import dynametric.metrics as metrics_mod

    monkeypatch.setattr(metrics_mod, "evaluate_embeddings", _sigterm_self)
    out = tmp_path / "r.json"
    assert main(["evaluate", "--example", "--json", str(out)]) == 143
    assert capsys.readouterr().err.strip() == "dynametric evaluate: interrupted by SIGTERM"
    assert list(tmp_path.iterdir()) == []


def test_sigterm_during_index_build_leaves_no_index(tmp_path, capsys, monkeypatch) -> None:
    import numpy as np

    from dynametric.retrieval.index import RetrievalIndex

    np.save(tmp_path / "e.npy", np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32))
    monkeypatch.setattr(RetrievalIndex, "save", _sigterm_self)
    assert main(["index", "build", "--embeddings", str(tmp_path / "e.npy"), "--out", str(tmp_path / "idx")]) == 143
    assert capsys.readouterr().err.strip() == "dynametric index build: interrupted by SIGTERM"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npy"]


def test_sigterm_during_embed_keeps_the_finished_shards_and_says_how_to_resume(tiny_ckpt, tiny_images, tmp_path,
                                                                                capsys, monkeypatch) -> None:
    import dynametric.retrieval.embed as embed_mod
    from tests.commands.test_bad_input_embed import _embed

    out = tmp_path / "emb"
    real_save = embed_mod.np.save
    calls = {"n": 0}

    def save_then_sigterm(fh, arr, **kwargs):  # the second shard's write (file_stats.npy: the first)
        calls["n"] += 1
        if calls["n"] == 3:
            _sigterm_self()
        real_save(fh, arr, **kwargs)

    monkeypatch.setattr(embed_mod.np, "save", save_then_sigterm)
    assert _embed(tiny_ckpt, tiny_images, out) == 143
    assert capsys.readouterr().err.strip() == ("dynametric embed: interrupted by SIGTERM (run the same command again "
                                              "to resume from the finished shards)")
    assert not list(out.rglob("*.tmp")) and not (out / "embeddings.npy").exists()
    monkeypatch.setattr(embed_mod.np, "save", real_save)
    assert _embed(tiny_ckpt, tiny_images, out) == 0
    assert "1 already done" in capsys.readouterr().out


# rank 0 sends itself SIGTERM as its second validation round gathers the embeddings: rank 1 is then waiting in that
# gather for it (each process records its pid and exit status in PROBE_DIR)
_SIGTERM_RANK_0 = """
import os, signal, sys
from pathlib import Path
rank = os.environ.get("LOCAL_RANK", "0")
probe = Path(os.environ["PROBE_DIR"])
(probe / f"rank{rank}.pid").write_text(str(os.getpid()))
import dynametric.engine.module as module
gather = module.all_gather_no_grad
def sigterm_then_gather(x):
    trainer = module.MetricLearningModule._probe_trainer
    if rank == "0" and trainer is not None and trainer.state.fn == "fit" and trainer.current_epoch == 1 \\
            and trainer.validating:
        os.kill(os.getpid(), signal.SIGTERM)
    return gather(x)
module.all_gather_no_grad = sigterm_then_gather
module.MetricLearningModule._probe_trainer = None
def on_fit_start(self):
    module.MetricLearningModule._probe_trainer = self.trainer
module.MetricLearningModule.on_fit_start = on_fit_start
from dynametric.cli import main
status = main(sys.argv[1:])
(probe / f"rank{rank}.status").write_text(str(status))
sys.exit(status)
"""


@pytest.mark.slow
def test_sigterm_to_rank_0_alone_stops_every_rank_of_a_two_process_run(tmp_path) -> None:
    """`timeout`, `docker stop` and a plain `kill` signal rank 0 only. Lightning's own SIGTERM handler, active
    during fit on top of the CLI's, called dist.broadcast on rank 0 alone while rank 1 waited in the validation
    gather: both processes hung for ever. Now rank 0 passes the signal on, every rank stops with status 143, and
    rank 0 alone says how to resume."""
    import subprocess
    import sys

    from tests.commands.test_train import TINY, _one_process_env

    (tmp_path / "tiny.yaml").write_text(TINY)
    (tmp_path / "sigterm_rank_0.py").write_text(_SIGTERM_RANK_0)
    probe = tmp_path / "probe"
    probe.mkdir()
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(tmp_path / "sigterm_rank_0.py"), "train", "--config",
                             str(tmp_path / "tiny.yaml"), "--out", str(out), "--no-progress", "run.report=false",
                             "trainer.devices=2", "trainer.accelerator=cpu", "trainer.max_epochs=4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**_one_process_env(), "PROBE_DIR": str(probe)}, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # rank 1 too (same session)
        for pid in probe.glob("rank*.pid"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid.read_text()), signal.SIGKILL)
        proc.communicate()
        pytest.fail("the two processes hung after a SIGTERM to rank 0")
    lines = [line for line in err.splitlines() if line.startswith("dynametric")]
    assert proc.returncode == 143, err
    assert lines == [f"dynametric train: interrupted by SIGTERM (resume with: dynametric train --resume {out})"]
    assert (probe / "rank1.status").read_text() == "143"  # rank 1 stopped by itself, before rank 0 ended
    assert _metrics(out)["test"] == {} and [v["epoch"] for v in _metrics(out)["validation"]] == [0]
