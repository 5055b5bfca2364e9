"""A training run's folder before it trains: its default name (:func:`default_run_dir`, which every process of a
multi-process launch agrees on), the check of a new run's folder (:func:`check_new_run_folder`,
:func:`check_folder_writable`, :func:`unstarted_run_files`: the files of an earlier start that never wrote a
checkpoint), the ``train.lock`` by which a run holds its folder while it runs (:func:`claim_run_folder`,
:class:`RunClaim`, :func:`lock_holder`, :func:`check_run_lock`, :data:`LOCK_FILE`), the ``config.yaml`` header that
names the folder and the process that started the run, and how to resume or start a run there in the caller's words
(the command line's, or a Python call's: :data:`PYTHON_FOLDER_KEY`). Which process of a multi-process launch is not
rank 0 (:func:`_launched_worker`) is decided here too: such a process joins the folder rank 0 holds.

Used by :mod:`dynametric.pipeline.run` (the folder layout is in its docstring) and the dry run."""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dynametric.config.schema import user_path
from dynametric.data.readers import printable_path
from dynametric.engine.trainer import env_int
from dynametric.errors import ConfigError, InputError
from dynametric.utils.io import is_stale_temp, require_new_folder
from dynametric.utils.locks import (
    WRITING_S,
    HeldLock,
    Holder,
    LockBusy,
    LockContended,
    LockFile,
    LockForeign,
    LockUnreadable,
    acquire_lock,
    other_process_running,
    read_lock,
    same_folder,
    stale_empty,
)

if TYPE_CHECKING:
    from dynametric.config import Config


def _env_set(name: str) -> bool:
    return os.environ.get(name, "").strip() != ""


def _env_nonzero(name: str) -> bool:
    return os.environ.get(name, "").strip() not in ("", "0")


#: The variables Lightning reads a process's global rank from before its Trainer starts (``rank_zero_only.rank``,
#: ``lightning.fabric.utilities.rank_zero._get_rank``), in its order: the first one set is the rank.
_RANK_ORDER = ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def _launched_worker() -> bool:
    """True in a DDP process other than global rank 0: it joins the folder rank 0 has already started (or starts) to
    fill, and neither checks, creates nor writes the folder's files. torchrun sets RANK; Lightning's script launcher
    starts the other ranks with LOCAL_RANK (and NODE_RANK on another node); under SLURM (``srun``) the global rank
    is SLURM_PROCID, under IBM LSF's ``jsrun`` JSM_NAMESPACE_RANK (what Lightning's ``LSFEnvironment`` takes for the
    global rank; ``jsrun`` sets none of the others). They count as Lightning counts them (its ``rank_zero_only``
    reads RANK, then LOCAL_RANK, then SLURM_PROCID, then JSM_NAMESPACE_RANK: the first one set): a process
    Lightning's launcher started inside a SLURM or jsrun task goes by its LOCAL_RANK. A single-task ``srun``
    (SLURM_PROCID=0) or ``jsrun`` (JSM_NAMESPACE_RANK=0) is not a worker. NODE_RANK not 0 is one whatever the rest."""
    if any(_env_nonzero(name) for name in ("RANK", "LOCAL_RANK", "NODE_RANK")):
        return True
    for name in _RANK_ORDER:
        if _env_set(name):
            return _env_nonzero(name)
    return False


#: The environment variable in which the process of global rank 0 publishes the default run folder it chose
#: (:func:`default_run_dir`): the processes Lightning's script launcher starts for the other ranks inherit it and use
#: that folder instead of naming one themselves.
RUN_DIR_ENV = "DYNAMETRIC_RUN_DIR"


def _external_launch() -> tuple[str, str | None] | None:
    """``(launcher, shared id)`` when a launcher started every process of a multi-process run on its own: a
    ``WORLD_SIZE`` > 1 in the environment with ``RANK`` or ``TORCHELASTIC_RUN_ID`` (``torchrun``, and the other
    launchers that set both; Lightning's script launcher sets ``WORLD_SIZE`` without ``RANK`` in every process, rank
    0's included, where it stays after the fit; its other ranks take rank 0's published folder before this is
    asked), ``srun`` with
    SLURM_NTASKS > 1 (outside a job named ``bash`` or ``interactive``, which Lightning does not take for a SLURM
    launch), or IBM LSF's ``jsrun`` with JSM_NAMESPACE_SIZE > 1. The shared id is what all of them see alike, as a
    folder-name part: ``torchrun-<rendezvous id>`` (TORCHELASTIC_RUN_ID, unless it is torchrun's default ``none``),
    else, inside a SLURM job, ``slurm-<job id>[.<step id>]``, else, inside an LSF job, ``lsf-<job id>[_<array
    index>]`` (LSB_JOBID, which the elements of an LSF job array share, and LSB_JOBINDEX unless it is LSF's 0 for a
    job outside an array); ``None`` when there is none. ``None`` as a whole for one process and for Lightning's own
    script launcher, whose rank 0 starts alone (it publishes its folder, :data:`RUN_DIR_ENV`)."""
    env = os.environ
    slurm = ("SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")
             and env_int("SLURM_NTASKS") > 1)
    jsrun = env_int("JSM_NAMESPACE_SIZE") > 1
    if _env_set("TORCHELASTIC_RUN_ID"):
        launcher = "torchrun"
    elif slurm:
        launcher = "srun"
    elif jsrun:
        launcher = "jsrun"
    else:
        launcher = f"the launcher that set WORLD_SIZE={env.get('WORLD_SIZE', '').strip()}"
    # WORLD_SIZE alone is not a launch of that kind: Lightning's own script launcher sets it (with LOCAL_RANK and
    # NODE_RANK, never RANK) in rank 0's environment when it starts the other ranks, and leaves it there after the fit
    if not ((env_int("WORLD_SIZE") > 1 and (_env_set("RANK") or _env_set("TORCHELASTIC_RUN_ID"))) or slurm or jsrun):
        return None
    run_id = env.get("TORCHELASTIC_RUN_ID", "").strip()
    if run_id and run_id != "none":
        shared = f"torchrun-{run_id}"
    elif _env_set("SLURM_JOB_ID"):
        step = env.get("SLURM_STEP_ID", "").strip()
        shared = f"slurm-{env['SLURM_JOB_ID'].strip()}" + (f".{step}" if step else "")
    elif _env_set("LSB_JOBID"):
        index = env.get("LSB_JOBINDEX", "").strip()
        shared = f"lsf-{env['LSB_JOBID'].strip()}" + (f"_{index}" if index not in ("", "0") else "")
    else:
        return launcher, None
    return launcher, re.sub(r"[^A-Za-z0-9._-]", "_", shared)


def default_run_dir(cfg: Config, *, reserve: bool = False) -> Path:
    """``<run.output_dir>/<run.name>`` (a leading ``~`` of ``run.output_dir`` is the home folder), or without
    ``run.name`` a name that every process of the run agrees on:

    * one process, and global rank 0 under Lightning's script launcher: ``<YYYYmmdd-HHMMSS>-<config hash>``, the
      time it is called, or with ``-2``, ``-3``, ... added the first such name nothing in ``run.output_dir`` has yet
      (two runs of one config started in the same second: :func:`_free_run_name`). With ``reserve`` the folder is
      created empty by this call, atomically, so that two processes naming their folders at the same instant (a
      scheduler's job array) get two folders; without it nothing is created. It publishes the folder in the
      environment variable :data:`RUN_DIR_ENV` (a side effect on ``os.environ``): the processes Lightning starts
      later for the other ranks inherit it and use that folder;
    * every process started by ``torchrun``, ``srun``, ``jsrun`` or another launcher (:func:`_external_launch`):
      ``<shared id>-<config hash>``, e.g. ``torchrun-<rendezvous id>-ab12cd34``,
      ``slurm-<job id>.<step id>-ab12cd34`` or ``lsf-<job id>-ab12cd34``, never the clock;
    * a ConfigError (key ``run.name``) when the processes have nothing in common to name the folder by: torchrun
      without a rendezvous id (``--rdzv-id``; ``--standalone`` makes one) outside SLURM and LSF, ``jsrun`` without
      an LSF job id (LSB_JOBID), another launcher that set
      ``WORLD_SIZE`` > 1, ``trainer.num_nodes`` > 1 under Lightning's own launcher (a node does not inherit another
      node's environment), a process of another rank that finds no published folder.

    A library caller that starts several multi-process runs from one script passes each its own ``run_dir``: the
    processes of the other ranks run the script again and keep the folder rank 0 published first."""
    return _default_run_dir(cfg, reserve)[0]


def reserve_default_run_dir(cfg: Config) -> tuple[Path, bool]:
    """:func:`default_run_dir` with ``reserve``, and whether this call created the (empty) folder: ``dynametric
    train`` removes it again when the run stops before it wrote anything (:func:`remove_if_empty`)."""
    return _default_run_dir(cfg, True)


def _default_run_dir(cfg: Config, reserve: bool) -> tuple[Path, bool]:
    """:func:`default_run_dir`'s folder and whether this call created it."""
    from dynametric.config import config_hash

    output_dir = user_path(cfg.run.output_dir)  # ~/runs: the home folder's, as data.root (docs/config.md)
    if cfg.run.name:
        return output_dir / cfg.run.name, False
    published = os.environ.get(RUN_DIR_ENV, "").strip()
    if published and _launched_worker():  # a rank Lightning's script launcher started: rank 0's folder
        return Path(published), False
    launch = _external_launch()
    if launch is not None:
        launcher, shared = launch
        if shared is not None:
            return output_dir / f"{shared}-{config_hash(cfg, 8)}", False
        why = f"{launcher} starts every process on its own and gives them no id they share" + {
            "torchrun": " (its rendezvous id is 'none'; torchrun --standalone or --rdzv-id ID gives one)",
            "jsrun": " (no LSF job id in LSB_JOBID)"}.get(launcher, "")
    elif int(cfg.trainer.num_nodes) > 1:
        why = (f"trainer.num_nodes={cfg.trainer.num_nodes} under Lightning's launcher: another node's processes do not "
               "learn the folder rank 0 names")
    elif _launched_worker():
        why = f"this process of another rank finds no folder published by rank 0 in {RUN_DIR_ENV}"
    else:
        path, created = _free_run_name(output_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{config_hash(cfg, 8)}",
                                       reserve)
        os.environ[RUN_DIR_ENV] = str(path.absolute())  # for the ranks Lightning's script launcher starts later
        return path, created
    raise ConfigError(f"a multi-process launch needs a run folder all its processes share: pass --out DIR or set "
                      f"run.name (the default name holds the time each process starts; {why})", key="run.name")


_FREE_NAME_TRIES = 1000


def _free_run_name(stem: Path, reserve: bool) -> tuple[Path, bool]:
    """``stem``, else ``stem-2``, ``stem-3``, ...: the first of these names that nothing (no file, folder or link)
    has. With ``reserve`` the name is taken by creating the folder (``mkdir``, which one process wins), so that
    processes choosing at the same instant choose differently; where the folder cannot be created for another
    reason (an unwritable ``run.output_dir``) the name is returned uncreated and the run's own checks say why.
    Returns the name and whether this call created its folder."""
    for n in range(1, _FREE_NAME_TRIES + 1):
        path = stem if n == 1 else stem.with_name(f"{stem.name}-{n}")
        if not reserve:
            if not os.path.lexists(path):
                return path, False
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.mkdir()
        except FileExistsError:
            continue
        except OSError:
            return path, False
        return path, True
    return stem, False  # every name taken: the run's folder check names the first


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if it is an empty folder (one :func:`default_run_dir` reserved for a run that stopped before
    it wrote anything); anything else, and any error, leaves it as it is."""
    try:
        folder.rmdir()
    except OSError:
        pass


# ----------------------------------------------------------------------------------- a run that never trained
# config.yaml starts with this line. A folder holding only what a run writes before its first last.ckpt
# (config.yaml with this line naming the folder, metrics.json, the CSV log, and best.ckpt: the end of an epoch writes
# best.ckpt just before last.ckpt, so that last.ckpt records that best, and a kill between the two leaves best.ckpt
# alone) is recognised as a run that failed or was stopped before it trained; `train --out` with that folder starts
# again and replaces those files.

_HEADER = "written by dynametric train for the run folder {folder} (process {pid} on host {host})"


_HEADER_RE = re.compile(r"# written by dynametric train for the run folder (?P<folder>.+) "
                        r"\(process (?P<pid>\d+) on host (?P<host>.*)\)")


#: The file by which a run holds its folder while it runs (:func:`claim_run_folder`): JSON naming the process and
#: its host, made whole at once (a hard link of a complete temporary file, which fails where the name exists), removed
#: when the run ends. A kill leaves it: its process gone, it is stale, and the folder is what it was without it.
LOCK_FILE = "train.lock"


_BEFORE_FIRST_CHECKPOINT = {"": ("config.yaml", "metrics.json", "best.ckpt", LOCK_FILE),
                            "logs": ("metrics.csv", "hparams.yaml")}


# what the other loggers (engine.loggers) write into a run folder from their start on: kept as they are when the run
# is started again in its folder (the new start logs beside them), never removed
_LOGGER_OUTPUTS = ("tensorboard", "wandb", "mlruns", "mlruns.db", "mlartifacts")


# the files of a run folder whose atomic writes (dynametric.utils.io, ".<name>.<8 random characters>.tmp") a kill
# can leave: config.yaml, metrics.json, run_info.json, report.html (atomic_write_text / _json), the checkpoints
# (SafeCheckpointIO: atomic_write_with), logs/metrics.csv and logs/hparams.yaml (KeepingCSVLogger: atomic_open,
# atomic_write_with).
_RUN_FILES = {"": ("config.yaml", "metrics.json", "last.ckpt", "best.ckpt", "run_info.json", "report.html",
                  LOCK_FILE),
              "logs": ("metrics.csv", "hparams.yaml")}


def _own_file(entry: Path, names: tuple[str, ...], sub: str) -> bool:
    """A regular file named in ``names``, or the temporary file of an atomic write of one of the run's files in its
    folder ``sub`` (left by a kill: a kill while the first last.ckpt was written leaves
    ``.last.ckpt.<random>.tmp``)."""
    if entry.is_symlink() or not entry.is_file():
        return False
    if entry.name == LOCK_FILE and entry.name in names:  # its content checked: a user's file of that name is kept
        return _is_run_lock(entry)
    return entry.name in names or is_stale_temp(entry, _RUN_FILES[sub].__contains__)


def _run_header(run_dir: Path, *, any_folder: bool = False) -> re.Match[str] | None:
    """The first line of ``run_dir/config.yaml`` when it says dynametric train wrote it for this folder (with
    ``any_folder``: for any folder, e.g. the one a run folder was moved or copied from)."""
    try:
        with (run_dir / "config.yaml").open(encoding="utf-8") as f:
            match = _HEADER_RE.fullmatch(f.readline().rstrip("\n"))
    except (OSError, UnicodeDecodeError):
        return None
    return match if match is not None and (any_folder or match["folder"] == printable_path(run_dir.resolve())) else None


def _running_elsewhere(match: re.Match[str], run_dir: Path) -> int | None:
    """The process named by a config.yaml header when it is another process still running on this machine
    (:func:`~dynametric.utils.locks.other_process_running`, against the time ``config.yaml`` was last written; a
    process of another host is not seen)."""
    pid = int(match["pid"])
    try:
        written: float | None = (run_dir / "config.yaml").stat().st_mtime
    except OSError:
        written = None
    return pid if other_process_running(pid, match["host"], written, unaskable="stale") else None


def _run_lock_of(run_dir: Path) -> Callable[[Any], Holder | None]:
    """What reads ``run_dir``'s :data:`LOCK_FILE` (:func:`~dynametric.utils.locks.read_lock`): a lock of dynametric
    is a JSON object naming the process (``pid``, an integer), its ``host`` and the ``folder`` it was taken for (a
    lock without ``folder`` counts as this folder's). One taken for another folder (the run folder was copied with
    ``cp -r`` while its run trained) is :attr:`~dynametric.utils.locks.Holder.copied`: stale here. The folders are
    compared by :func:`~dynametric.utils.locks.same_folder`, so a spelling of this folder through a symbolic link or
    a bind mount is this folder. Anything else (a user's
    file of that name) is no lock of dynametric (``None``)."""
    here = run_dir.resolve()

    def recognise(data: Any) -> Holder | None:
        if not isinstance(data, dict):
            return None
        pid, host, folder = data.get("pid"), data.get("host"), data.get("folder", str(here))
        if isinstance(pid, bool) or not (isinstance(pid, int) and isinstance(host, str) and isinstance(folder, str)):
            return None
        return Holder(pid, host, copied=not same_folder(folder, here))

    return recognise


def _is_run_lock(path: Path) -> bool:
    """Whether ``path`` is a run folder's :data:`LOCK_FILE` as dynametric writes it (:func:`_run_lock_of`), or an
    empty one old enough to be what a kill left while it was created (:func:`~dynametric.utils.locks.stale_empty`):
    the run's own file, which it may replace; a file of the user's is never one."""
    try:
        found = read_lock(path, _run_lock_of(path.parent))
    except OSError:
        return False
    return found is not None and (found.holder is not None or stale_empty(found))


def _foreign_lock(lock: LockFile, folder_key: str, resume: bool) -> InputError:
    """The one line of a run refused because its folder's :data:`LOCK_FILE` is no lock of dynametric (``lock``, as
    read): the file is kept. An empty one written less than :data:`~dynametric.utils.locks.WRITING_S` seconds ago may
    be the lock of a run starting there this moment (created, not yet written, where the file system has no hard
    links); an older empty one is a killed run's leftover, taken over (:func:`_is_run_lock`), never refused here."""
    if not lock.raw and time.time() - lock.written < WRITING_S:
        return InputError(f"is empty and was created less than {WRITING_S:g} s ago: perhaps the lock of a run "
                          "starting in the folder this moment; wait for it and try again (an older empty one is a "
                          "killed run's leftover, replaced)", file=lock.path, key=folder_key)
    instead = "move it away to resume the run" if resume else f"move it away or use another {folder_key}"
    return InputError(f"is not a lock file of dynametric (JSON naming the process that trains in the folder); it is "
                      f"not removed: {instead}", file=lock.path, key=folder_key)


def check_run_lock(run_dir: Path, folder_key: str, *, resume: bool = False) -> None:
    """The InputError of :func:`_foreign_lock` when ``run_dir`` holds a :data:`LOCK_FILE` that is no lock of
    dynametric (a user's file of that name), said before the run reads or writes anything; nothing without one, or
    for one that cannot be read (the claim says so)."""
    try:
        found = read_lock(run_dir / LOCK_FILE, _run_lock_of(run_dir))
    except OSError:
        return
    if found is not None and found.holder is None and not stale_empty(found):
        raise _foreign_lock(found, folder_key, resume)


def lock_holder(run_dir: Path) -> int | None:
    """The process that holds ``run_dir`` (its :data:`LOCK_FILE`) when it is another process still running on this
    machine (:func:`~dynametric.utils.locks.other_process_running`, against the time the lock was written); ``None``
    without a lock, for a stale one (its process gone: a killed run), one taken for another folder (this folder is a
    copy of that one: :func:`_run_lock_of`), one that cannot be read, one of another host and this process's own."""
    try:
        found = read_lock(run_dir / LOCK_FILE, _run_lock_of(run_dir))
    except OSError:
        return None
    if found is None or found.holder is None or found.holder.copied:
        return None
    pid, host = found.holder.pid, found.holder.host
    return pid if other_process_running(pid, host, found.written, unaskable="stale") else None


def _busy(run_dir: Path, pid: int, folder_key: str, resume: bool) -> ConfigError:
    """The one line of a run refused because process ``pid`` runs in ``run_dir``."""
    if resume:
        return ConfigError(f"run folder {run_dir} is being trained by process {pid}, which is still running; wait "
                           f"for it or stop it before resuming", key=folder_key)
    return ConfigError(f"run folder {run_dir} holds a run started by process {pid}, which is still running; wait "
                       f"for it or stop it, or use another {folder_key}", key=folder_key)


@dataclass
class RunClaim:
    """A run's hold on its folder (:func:`claim_run_folder`): its lock (``None`` until taken) and the folders the
    claim made (deepest first)."""

    lock: HeldLock | None
    made: list[Path]

    def release(self) -> None:
        """Removes the lock when it is still this claim's, then the folders the claim made that stayed empty (a run
        that failed before writing anything leaves no folder, as before it claimed one)."""
        if self.lock is not None:
            self.lock.release()
        for folder in self.made:
            try:
                folder.rmdir()
            except OSError:
                break


def claim_run_folder(run_dir: Path, folder_key: str, *, resume: bool = False) -> RunClaim | None:
    """Takes ``run_dir`` for this run, before the run writes anything in it: makes the folder and creates its
    :data:`LOCK_FILE` where none exists (:func:`~dynametric.utils.locks.acquire_lock`, atomically: of two runs
    started at the same moment, one gets it). A lock of another process still running on this host refuses the run,
    one line naming that process (keyed ``folder_key``), nothing written and nothing of the other run's touched; a
    stale one (its process gone, or taken for another folder: a copy) is replaced, as is an empty one a kill left
    (:func:`~dynametric.utils.locks.stale_empty`); a file of that name that is no lock of dynametric is refused
    (:func:`_foreign_lock`) and kept. The caller releases the
    claim when the run ends (:meth:`RunClaim.release`). ``None`` in a DDP process other than rank 0
    (:func:`_launched_worker`): rank 0 holds the folder for all of them. A process of another host is not seen (as in
    :func:`_running_elsewhere`): its lock counts as stale, so a run killed on one node resumes on another."""
    import json

    if _launched_worker():
        return None
    made: list[Path] = []
    above = run_dir
    while not above.exists() and not above.is_symlink() and above != above.parent:
        made.append(above)
        above = above.parent
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        failed = Path(exc.filename) if exc.filename is not None else run_dir
        raise InputError(f"cannot create the folder ({exc.strerror or exc})", file=failed, key=folder_key) from None
    record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "folder": str(run_dir.resolve())}) + "\n"
    claim = RunClaim(None, made)
    try:
        claim.lock = acquire_lock(run_dir / LOCK_FILE, record.encode("utf-8"), recognise=_run_lock_of(run_dir),
                                  unaskable="stale", foreign="empty_stale", attempts=8)
    except BaseException as exc:
        claim.release()  # the folders it made, when still empty; never another process's lock
        if isinstance(exc, LockBusy):
            raise _busy(run_dir, exc.holder.pid, folder_key, resume) from None
        if isinstance(exc, LockForeign):
            raise _foreign_lock(exc.lock, folder_key, resume) from None
        if isinstance(exc, LockContended):
            raise ConfigError(f"run folder {run_dir}: other processes keep taking its {LOCK_FILE}; wait for them or "
                              f"use another {folder_key}", key=folder_key) from None
        if isinstance(exc, LockUnreadable):
            raise InputError(f"cannot read the lock file ({exc.error.strerror or exc.error})", file=exc.path,
                             key=folder_key) from None
        if isinstance(exc, OSError):
            raise InputError(f"cannot write in the folder ({exc.strerror or exc})", file=run_dir,
                             key=folder_key) from None
        raise
    return claim


def unstarted_run_files(run_dir: Path, folder_key: str = "--out") -> list[Path] | None:
    """The files in ``run_dir`` of a run that dynametric started there and that never wrote ``last.ckpt`` (it
    failed or was stopped before its first checkpoint), when the folder holds nothing else; ``None`` for any other
    folder. A ConfigError when the process that started that run may still be running on this machine."""
    match = _run_header(run_dir)
    if match is None:  # a run killed after it claimed the folder, before its config.yaml (reading its data)
        try:
            entries = sorted(run_dir.iterdir())
        except OSError:
            return None
        lock_only = any(e.name == LOCK_FILE for e in entries) and all(_own_file(e, (LOCK_FILE,), "") for e in entries)
        return entries if lock_only else None
    files: list[Path] = []
    for entry in run_dir.iterdir():
        if entry.name in _BEFORE_FIRST_CHECKPOINT and entry.is_dir() and not entry.is_symlink():
            subs = list(entry.iterdir())
            if not all(_own_file(sub, _BEFORE_FIRST_CHECKPOINT[entry.name], entry.name) for sub in subs):
                return None
            files += subs
        elif _own_file(entry, _BEFORE_FIRST_CHECKPOINT[""], ""):
            files.append(entry)
        elif entry.name in _LOGGER_OUTPUTS and not entry.is_symlink():
            continue  # a TensorBoard, W&B or MLflow logger's own output: kept
        else:
            return None
    pid = _running_elsewhere(match, run_dir)
    if pid is not None:
        raise ConfigError(f"run folder {run_dir} holds a run started by process {pid}, which is still running "
                          f"and has not written its first checkpoint; wait for it or stop it, or use another "
                          f"{folder_key}", key=folder_key)
    return sorted(files)


#: the ``folder_key`` of :func:`run_training` and :func:`dry_run` called from Python (the CLI passes ``--out``,
#: ``--resume``, ``run.name`` or ``run.output_dir``): errors then name the Python arguments, not the CLI's options
PYTHON_FOLDER_KEY = "run_dir"


def _resume_call(run_dir: Path, folder_key: str) -> str:
    """How the run in ``run_dir`` is resumed, in the words of the caller ``folder_key`` names: the Python call
    (:data:`PYTHON_FOLDER_KEY`; paths as Python literals, so that a quote or backslash in one pastes as it is), else
    the command line's ``dynametric train --resume RUN``."""
    if folder_key == PYTHON_FOLDER_KEY:
        return (f"run_training(load_config({str(run_dir / 'config.yaml')!r}), {str(run_dir)!r}, "
                "resume=True)")
    return f"dynametric train --resume {run_dir}"


def _start_call(config: Path, run_dir: Path | None, folder_key: str) -> str:
    """How a run of ``config`` is started in ``run_dir`` (``None``: another folder, ``NEW``), in the words of the
    caller ``folder_key`` names (:func:`_resume_call`)."""
    if folder_key == PYTHON_FOLDER_KEY:
        where = "NEW" if run_dir is None else repr(str(run_dir))
        return f"run_training(load_config({str(config)!r}), {where})"
    return f"dynametric train --config {config} --out {'NEW' if run_dir is None else run_dir}"


def check_new_run_folder(run_dir: Path, folder_key: str, *, whole: bool = True) -> list[Path]:
    """The check of a new run's folder, by the run and its dry run, writing nothing: ``run_dir`` must not hold a
    run (``last.ckpt``: resume it; the error says how in the CLI's words, or, for a Python call
    (:data:`PYTHON_FOLDER_KEY`), in its arguments), and (``whole``) must be new, empty, or hold only the files of an
    earlier start that never wrote a checkpoint (returned: the run replaces them); errors name ``folder_key``. A
    folder another process of this host holds (its :data:`LOCK_FILE`) is refused naming that process."""
    pid = lock_holder(run_dir) if whole else None  # not whole: another rank's process, in rank 0's held folder
    if pid is not None:
        raise _busy(run_dir, pid, folder_key, False)
    if (run_dir / "last.ckpt").exists():
        if folder_key == PYTHON_FOLDER_KEY:  # a Python call (run_training, dry_run): its own words, not the CLI's
            raise ConfigError(f"run folder {run_dir} already holds a run; resume it with "
                              f"{_resume_call(run_dir, folder_key)}, or give another run_dir", key=folder_key)
        raise ConfigError(f"run folder {run_dir} already holds a run; use --resume {run_dir} or another --out",
                          key=folder_key)
    if not whole:
        return []
    check_run_lock(run_dir, folder_key)
    leftovers = unstarted_run_files(run_dir, folder_key) or []
    if not leftovers:
        require_new_folder(run_dir, folder_key, "dynametric run (last.ckpt)")
    check_folder_writable(run_dir, folder_key)
    return leftovers


def check_folder_writable(run_dir: Path, folder_key: str) -> None:
    """An InputError keyed ``folder_key`` when the run could not make ``run_dir`` or write in it, said before any
    data is read (the run failed after loading its data, or after training for a while: ``.../logs: Permission
    denied``): a regular file where one of its folders goes (``is a file, not a folder; expected a folder to hold
    RUN``), a folder above it that exists and is not writable (``cannot create the folder (Permission denied)``,
    naming the first folder to make), ``run_dir`` itself not writable (``cannot write in the folder (...)``).
    Nothing is created; ``os.access`` answers for this process (as root, a permission is never refused)."""
    import errno

    above = run_dir
    while not above.exists() and not above.is_symlink() and above != above.parent:
        above = above.parent
    if above != run_dir and (above.is_symlink() or above.exists()) and not above.is_dir():
        raise InputError(f"is a file, not a folder; expected a folder to hold {run_dir}", file=above, key=folder_key)
    if not above.is_dir() or os.access(above, os.W_OK | os.X_OK):
        return
    denied = os.strerror(errno.EACCES)
    if above == run_dir:
        raise InputError(f"cannot write in the folder ({denied})", file=run_dir, key=folder_key)
    first = run_dir
    while first.parent != above:
        first = first.parent
    raise InputError(f"cannot create the folder ({denied})", file=first, key=folder_key)
