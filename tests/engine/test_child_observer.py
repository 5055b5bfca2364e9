"""Lightning's child-process observer (rank 0 of a several-process run on one machine) gives rank 0
:data:`dynametric.engine.trainer.PEER_GRACE_S` seconds to say that another rank's process ended before it kills every
process (:func:`dynametric.engine.trainer.patient_observer`). Lightning's real observer class, never started on real
processes here: its kill is replaced by a recorder before the test arms it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver

import dynametric.engine.trainer as trainer_mod


@pytest.fixture
def ended_rank_1():
    """A finished process standing for rank 1, ended with status 3."""
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    return proc


def _observer(procs, killed):
    """Lightning's observer of ``procs``, started but asleep (its poll every hour), its kill recorded."""
    observer = _ChildProcessObserver(main_pid=-1, child_processes=procs, sleep_period=3600)
    assert callable(observer._terminate_all)  # the names patient_observer relies on, on this Lightning version
    assert observer._child_processes is procs
    observer._terminate_all = lambda: killed.append(time.monotonic())
    observer.start()
    return observer


@pytest.mark.parametrize("checkpoint", [True, False])
def test_the_observer_kills_only_after_the_grace_and_says_why(monkeypatch, capsys, ended_rank_1, tmp_path,
                                                              checkpoint) -> None:
    monkeypatch.setattr(trainer_mod, "PEER_GRACE_S", 0.5)
    if checkpoint:
        (tmp_path / "last.ckpt").write_bytes(b"")
    procs, killed = [ended_rank_1], []
    observer = _observer(procs, killed)
    assert trainer_mod.patient_observer(procs, tmp_path) and trainer_mod.patient_observer(procs, tmp_path)  # once
    t0 = time.monotonic()
    observer._terminate_all()  # what its poll calls once a process ended with a non-zero status
    assert len(killed) == 1 and killed[0] - t0 >= 0.5
    how = f"resume with: dynametric train --resume {tmp_path}" if checkpoint else "no checkpoint to resume from"
    assert capsys.readouterr().err == (
        "dynametric: error: the process of rank 1 ended with status 3 and rank 0 did not stop within 0.5 s (a step "
        f"or a collective that did not end): every process of the run is killed now; {how}\n")


def test_the_observer_kills_nothing_once_rank_0_took_the_processes(monkeypatch, capsys, ended_rank_1) -> None:
    """Rank 0 saw the error (its collective failed) and stops the others itself: signal_launched_ranks empties the
    launcher's list, which is the observer's."""
    monkeypatch.setattr(trainer_mod, "PEER_GRACE_S", 30.0)
    procs, killed = [ended_rank_1], []
    _observer(procs, killed)
    assert trainer_mod.patient_observer(procs)
    monkeypatch.setattr(trainer_mod, "_LAUNCHED", [procs])
    monkeypatch.setattr(trainer_mod, "_TAKEN", [])
    observer = next(t for t in threading.enumerate() if getattr(t, "_child_processes", None) is procs)
    waiting = threading.Thread(target=observer._terminate_all)
    t0 = time.monotonic()
    waiting.start()
    time.sleep(0.3)
    assert trainer_mod.signal_launched_ranks(15) == 0 and procs == []  # rank 1 had ended: nothing to signal
    waiting.join(5)
    assert not waiting.is_alive() and time.monotonic() - t0 < 5 and killed == []
    assert capsys.readouterr().err == ""


def test_no_observer_of_these_processes_is_left_as_it_is() -> None:
    assert trainer_mod.patient_observer([]) is False


def test_rank_0_taking_the_processes_as_the_grace_ends_is_never_killed(monkeypatch, capsys, ended_rank_1) -> None:
    """The observer's last look and its kill are one step with respect to rank 0 taking the processes: a rank 0
    that takes them while the observer decides (here: the test holds the lock through the end of the grace, then
    takes them) is not killed after it said its line."""
    monkeypatch.setattr(trainer_mod, "PEER_GRACE_S", 0.2)
    monkeypatch.setattr(trainer_mod, "_LAUNCHED", [])
    monkeypatch.setattr(trainer_mod, "_TAKEN", [])
    procs, killed = [ended_rank_1], []
    observer = _observer(procs, killed)
    assert trainer_mod.patient_observer(procs)
    trainer_mod._LAUNCHED.append(procs)
    waiting = threading.Thread(target=observer._terminate_all)
    with trainer_mod._TAKING:
        waiting.start()
        time.sleep(0.6)  # the grace is over: the observer waits for the lock
        assert waiting.is_alive() and killed == []
        trainer_mod.signal_launched_ranks(15)
    waiting.join(5)
    assert not waiting.is_alive() and killed == [] and capsys.readouterr().err == ""
