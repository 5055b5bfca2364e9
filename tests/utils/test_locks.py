"""utils.locks: one lock file per folder, taken whole by one process at a time (``train.lock`` and
``dynametric.lock`` are both this lock)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dynametric.utils.locks import (
    Holder,
    LockBusy,
    LockForeign,
    acquire_lock,
    read_lock,
)
from dynametric.utils.processes import process_start


def _recognise(data: Any) -> Holder | None:
    return Holder(data["pid"], data["host"]) if isinstance(data, dict) and data.get("kind") == "test" else None


def _record(pid: int, host: str | None = None, **extra: Any) -> bytes:
    return json.dumps({"kind": "test", "pid": pid, "host": host or socket.gethostname(), **extra}).encode()


def _write(path: Path, data: bytes) -> None:
    """Replaces ``path`` at once (what another process writing its lock leaves there)."""
    tmp = path.with_name("writing")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _ended_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process of this host that runs while the test does."""
    proc = subprocess.Popen(["sleep", "300"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def _take(path: Path, record: bytes, **kwargs: Any):  # noqa: ANN202
    options: dict[str, Any] = {"unaskable": "stale", "foreign": "stale", **kwargs}
    return acquire_lock(path, record, recognise=_recognise, **options)


_RACER = textwrap.dedent("""
    import json, os, socket, sys, time
    from pathlib import Path
    from dynametric.utils.locks import Holder, LockBusy, acquire_lock
    path, go = Path(sys.argv[1]), Path(sys.argv[2])
    while not go.exists():
        time.sleep(0.001)
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
    try:
        held = acquire_lock(path, record, recognise=lambda d: Holder(d["pid"], d["host"]), unaskable="stale",
                            foreign="stale")
    except LockBusy as exc:
        print("busy", exc.holder.pid, flush=True)
    else:
        print("won", os.getpid(), flush=True)
        sys.stdin.read()  # held until the test closes its stdin
        held.release()
""")


def test_of_four_processes_taking_one_lock_at_once_exactly_one_wins(tmp_path: Path) -> None:
    lock, go = tmp_path / "x.lock", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(Path(__file__).parents[2] / "src"),
                                                                   os.environ.get("PYTHONPATH")) if p)}
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(lock), str(go)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    try:
        go.touch()
        said = {proc.pid: proc.stdout.readline().split() for proc in racers}  # type: ignore[union-attr]
        winners = [pid for pid, words in said.items() if words[0] == "won"]
        assert len(winners) == 1, said
        assert all(words == ["busy", str(winners[0])] for pid, words in said.items() if pid != winners[0]), said
        assert json.loads(lock.read_bytes())["pid"] == winners[0]
    finally:
        for proc in racers:
            proc.stdin.close()  # type: ignore[union-attr]
            proc.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["go"]  # released; no temporary file left


def test_threads_of_one_process_taking_one_lock_at_once_one_wins(tmp_path: Path) -> None:
    for round_ in range(20):
        lock = tmp_path / f"{round_}.lock"
        start = threading.Barrier(4)
        won: list[bytes] = []
        busy: list[int] = []

        def take(i: int) -> None:
            record = _record(os.getpid(), thread=i)  # noqa: B023
            start.wait()  # noqa: B023
            try:
                _take(lock, record)  # noqa: B023
                won.append(record)  # noqa: B023
            except LockBusy as exc:
                busy.append(exc.holder.pid)  # noqa: B023

        threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # a lock of this process that a thread of it holds is held (was, in the run folder's lock: taken over as
        # this process's own, so two threads both won)
        assert len(won) == 1 and busy == [os.getpid()] * 3 and lock.read_bytes() == won[0]


def test_a_lock_of_an_ended_process_is_taken_over(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    lock.write_bytes(_record(_ended_pid()))
    mine = _record(os.getpid())
    held = _take(lock, mine, unaskable="live", foreign="refuse")
    assert lock.read_bytes() == mine and [p.name for p in tmp_path.iterdir()] == ["x.lock"]
    with pytest.raises(LockBusy) as err:  # held by this process now
        _take(lock, _record(os.getpid(), other=1))
    assert err.value.holder == Holder(os.getpid(), socket.gethostname())
    held.release()
    assert not lock.exists()


def test_a_lock_of_a_running_process_refuses_and_is_kept(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    lock = tmp_path / "x.lock"
    theirs = _record(sleeper.pid, command="embed")
    lock.write_bytes(theirs)  # written after the process started: its own
    with pytest.raises(LockBusy) as err:
        _take(lock, _record(os.getpid()))
    assert err.value.holder == Holder(sleeper.pid, socket.gethostname())
    assert err.value.lock.fields["command"] == "embed"
    assert lock.read_bytes() == theirs and [p.name for p in tmp_path.iterdir()] == ["x.lock"]


def test_a_process_started_after_the_lock_was_written_is_not_its_holder(
        tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    started = process_start(sleeper.pid)
    if started is None:
        pytest.skip("no process start times here (/proc)")
    lock = tmp_path / "x.lock"
    lock.write_bytes(_record(sleeper.pid))
    os.utime(lock, (started - 3600, started - 3600))  # written an hour before that process started: a reused number
    mine = _record(os.getpid())
    _take(lock, mine, unaskable="live").release()
    assert not lock.exists()


def test_another_hosts_lock_is_live_or_stale_as_the_caller_says(tmp_path: Path,
                                                                 sleeper: subprocess.Popen[bytes]) -> None:
    lock = tmp_path / "x.lock"
    gone = _record(_ended_pid(), host="elsewhere.example")  # its number is free here, which says nothing there
    lock.write_bytes(gone)
    with pytest.raises(LockBusy) as err:
        _take(lock, _record(os.getpid()), unaskable="live")
    assert err.value.holder.host == "elsewhere.example" and lock.read_bytes() == gone
    running = _record(sleeper.pid, host="elsewhere.example")  # a number running here, not that process
    lock.write_bytes(running)
    mine = _record(os.getpid())
    held = _take(lock, mine, unaskable="stale")
    assert lock.read_bytes() == mine
    held.release()


def test_release_leaves_a_lock_that_is_no_longer_this_processs(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    held = _take(lock, _record(os.getpid()))
    replaced = _record(_ended_pid())  # taken over meanwhile (this lock was thought stale)
    _write(lock, replaced)
    held.release()
    assert lock.read_bytes() == replaced
    with _take(lock, _record(os.getpid())):  # a with block releases
        assert read_lock(lock, _recognise).holder == Holder(os.getpid(), socket.gethostname())  # type: ignore[union-attr]
    assert not lock.exists()


def test_a_foreign_file_is_refused_and_kept_or_taken_over_as_the_caller_says(tmp_path: Path) -> None:
    lock = tmp_path / "x.lock"
    notes = b"my own notes\n\xff"
    for foreign in (notes, json.dumps({"pid": 5, "host": socket.gethostname()}).encode()):  # no "kind": not a lock
        lock.write_bytes(foreign)
        os.utime(lock, (1_000_000_000, 1_000_000_000))
        with pytest.raises(LockForeign) as err:
            _take(lock, _record(os.getpid()), foreign="refuse")
        assert err.value.being_written is False and err.value.lock.raw == foreign
        assert lock.read_bytes() == foreign and [p.name for p in tmp_path.iterdir()] == ["x.lock"]
    lock.write_bytes(b"")  # what an O_EXCL lock is before its process writes it
    with pytest.raises(LockForeign) as err:
        _take(lock, _record(os.getpid()), foreign="refuse")
    assert err.value.being_written is True and lock.read_bytes() == b""
    mine = _record(os.getpid())
    _take(lock, mine, foreign="stale").release()
    assert not lock.exists()


def test_a_stale_lock_taken_over_by_another_process_meanwhile_is_put_back(
        tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    lock = tmp_path / "x.lock"
    lock.write_bytes(_record(_ended_pid()))
    theirs = _record(sleeper.pid)
    reads = []

    def recognise_then_another_process_takes_it(data: Any) -> Holder | None:
        if not reads:  # after this process read the stale lock, before it sets it aside
            _write(lock, theirs)
        reads.append(data)
        return _recognise(data)

    with pytest.raises(LockBusy) as err:
        acquire_lock(lock, _record(os.getpid()), recognise=recognise_then_another_process_takes_it,
                     unaskable="stale", foreign="stale")
    assert err.value.holder.pid == sleeper.pid and len(reads) == 2
    assert lock.read_bytes() == theirs and [p.name for p in tmp_path.iterdir()] == ["x.lock"]


def test_an_output_folder_s_entries_leave_out_its_lock_and_what_a_kill_while_taking_it_left(tmp_path: Path) -> None:
    from dynametric.retrieval.index import LOCK_NAME, other_entries

    (tmp_path / LOCK_NAME).write_bytes(b"{}")
    (tmp_path / f".{LOCK_NAME}.ab12cd34.tmp").write_bytes(b"{}")  # the lock's temporary file, left by a kill
    (tmp_path / ".items.csv.ab12cd34.tmp").write_bytes(b"")  # another file's: an entry of the folder
    (tmp_path / "notes.txt").write_bytes(b"")
    assert sorted(p.name for p in other_entries(tmp_path)) == [".items.csv.ab12cd34.tmp", "notes.txt"]


def test_a_lock_file_that_cannot_be_read_is_one_line_naming_it_for_both_locks(tmp_path: Path) -> None:
    """A ``train.lock`` / ``dynametric.lock`` that cannot be read (here a folder of that name: root reads any file)
    is one line naming the lock file and saying it cannot be read, not "cannot write in the folder"; it is kept."""
    from dynametric.errors import InputError
    from dynametric.pipeline.run import LOCK_FILE, claim_run_folder
    from dynametric.retrieval.index import LOCK_NAME, folder_lock

    run = tmp_path / "run"
    (run / LOCK_FILE).mkdir(parents=True)
    with pytest.raises(InputError) as caught:
        claim_run_folder(run, "--out")
    assert str(caught.value).startswith(f"{run / LOCK_FILE} key '--out': cannot read the lock file (")
    assert (run / LOCK_FILE).is_dir()
    out = tmp_path / "emb"
    (out / LOCK_NAME).mkdir(parents=True)
    with pytest.raises(InputError) as caught, folder_lock(out, "embed"):
        pass
    assert str(caught.value).startswith(f"{out / LOCK_NAME} key '--out': cannot read the lock file (")
    assert (out / LOCK_NAME).is_dir()


def test_a_lock_naming_a_process_number_no_process_can_have_is_stale(tmp_path: Path) -> None:
    """A damaged lock naming a pid beyond the system's range (``os.kill`` raises ``OverflowError``) is taken over, not
    a traceback."""
    from dynametric.utils.processes import process_alive

    assert process_alive(2**80) is False
    lock = tmp_path / "x.lock"
    lock.write_bytes(_record(2**80))
    with acquire_lock(lock, _record(os.getpid()), recognise=_recognise, unaskable="live", foreign="refuse") as held:
        assert lock.read_bytes() == held.raw


def test_empty_stale_refuses_a_foreign_file_and_takes_over_only_an_old_empty_one(tmp_path: Path) -> None:
    """``foreign="empty_stale"`` (train.lock): a file that is no lock is refused and kept, an empty one too while it
    may be a lock being written (created with O_EXCL, not yet written); an empty one older than WRITING_S is what a
    kill left there, taken over."""
    from dynametric.utils.locks import WRITING_S, stale_empty

    lock = tmp_path / "x.lock"
    old = 1_000_000_000
    for foreign in (b"my own notes\n", b" "):
        lock.write_bytes(foreign)
        os.utime(lock, (old, old))
        with pytest.raises(LockForeign) as err:
            _take(lock, _record(os.getpid()), foreign="empty_stale")
        assert err.value.being_written is False and lock.read_bytes() == foreign
    lock.write_bytes(b"")
    with pytest.raises(LockForeign) as err:
        _take(lock, _record(os.getpid()), foreign="empty_stale")
    assert err.value.being_written is True and lock.read_bytes() == b""
    assert not stale_empty(err.value.lock)
    young = os.path.getmtime(lock) - WRITING_S + 5
    os.utime(lock, (young, young))
    with pytest.raises(LockForeign):
        _take(lock, _record(os.getpid()), foreign="empty_stale")
    aged = young - 10
    os.utime(lock, (aged, aged))
    mine = _record(os.getpid())
    held = _take(lock, mine, foreign="empty_stale")
    assert lock.read_bytes() == mine and [p.name for p in tmp_path.iterdir()] == ["x.lock"]
    held.release()
    assert not lock.exists()


def test_a_lock_copied_from_another_place_is_stale_while_its_process_runs(tmp_path: Path,
                                                                          sleeper: subprocess.Popen[bytes]) -> None:
    """A lock whose ``recognise`` says it was taken for another folder (copied here, ``Holder.copied``): its running
    process holds that folder, not this one; taken over. The same lock not copied refuses."""
    lock = tmp_path / "x.lock"
    theirs = _record(sleeper.pid, place="elsewhere")

    def copied(data: Any) -> Holder | None:
        return Holder(data["pid"], data["host"], copied=data.get("place") != "here")

    _write(lock, theirs)
    held = acquire_lock(lock, _record(os.getpid(), place="here"), recognise=copied, unaskable="live",
                        foreign="refuse")
    held.release()
    assert not lock.exists()
    _write(lock, _record(sleeper.pid, place="here"))
    with pytest.raises(LockBusy):
        acquire_lock(lock, _record(os.getpid(), place="here"), recognise=copied, unaskable="live", foreign="refuse")
