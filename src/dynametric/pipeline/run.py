"""A whole training run: run folder, untrained evaluation, fit with validation, test of the best checkpoint,
``metrics.json``, ``report.html``. Used by ``dynametric train``. (Formerly ``dynametric.engine.run``: the run
resolves the method plug-in, so it sits above :mod:`dynametric.methods`.)

Run folder layout::

    config.yaml     resolved configuration (what --resume reads back), after a comment naming the folder and
                    the process that started the run (a resume names itself and the folder's present place)
    last.ckpt       latest state (every trainer.checkpoint_every_n_steps optimizer steps and every epoch)
    best.ckpt       best validation ``trainer.monitor`` so far
    metrics.json    {"untrained": {...}, "validation": [{"epoch": e, ...}, ...], "test": {...}}; "test" is {}
                    until the run finishes (a Ctrl-C leaves the validation done so far and no test)
    run_info.json   data sizes, validation source, selected epoch, early stopping, per-head results, wall time
                    (summed over resumes), the training module's record (alternating steps: class_steps /
                    shared_steps; MIC: clustering), the class each named component resolved to (components)
    report.html     self-contained report
    logs/           Lightning CSV logs
    train.lock      while the run runs: its process and host (:func:`claim_run_folder`); a killed run's is stale
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import signal
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import lightning as L
import torch
from lightning.pytorch.trainer.states import RunningStage
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dynametric.config.loader import config_notes
from dynametric.config.schema import anchored, split_monitor, user_path
from dynametric.data.readers import printable_path
from dynametric.engine.builders import (
    Components,
    available_splits,
    build_datasets,
    check_data_root,
    check_held_out_data,
    check_split_roles,
    checked_sampler_factory,
    declared_scale_names,
    load_split,
    loader_settings,
    root_missing,
    trainer_settings,
)
from dynametric.engine.callbacks import ResumeState, RunCheckpoint, RunEarlyStopping, ValidationToMetrics
from dynametric.engine.checkpoint import SafeCheckpointIO, load_checkpoint_file, trained_statistics
from dynametric.engine.data import EvalDataModule, MetricDataModule
from dynametric.engine.loggers import LoggerFailure, build_logger, log_figures, log_results, report_figures
from dynametric.engine.module import MetricLearningModule, parameter_groups
from dynametric.engine.objective import term_miners
from dynametric.engine.preflight import check_batches, check_validation_queries, scale_notes
from dynametric.engine.trainer import (
    TrainerSettings,
    build_trainer,
    ctrl_c_passes_through,
    end_launched_ranks,
    env_int,
    launch,
    lightning_trainer,
    plan_trainer,
    signal_launched_ranks,
    validate_settings,
)
from dynametric.errors import ConfigError, DynametricError, InputError, Interrupted
from dynametric.pipeline.components import build_components
from dynametric.pipeline.protocols import (
    check_test_splits,
    data_root_notes,
    method_test_protocol,
    protocol_from_config,
    protocol_split_keys,
)
from dynametric.pipeline.report import category_summary, write_report
from dynametric.utils.io import (
    atomic_write_json,
    is_stale_temp,
    nan_to_null,
    null_to_nan,
    remove_stale_temps,
    require_new_folder,
    temp_target,
)
from dynametric.utils.limits import ensure_open_files, gpu_memory_detail, gpu_out_of_memory
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
    stale_empty,
)
from dynametric.utils.processes import callers_start_method

if TYPE_CHECKING:
    from dynametric.config import Config
    from dynametric.engine.protocols import MethodTestProtocol

logger = logging.getLogger("dynametric.engine")


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, Any]
    info: dict[str, Any]


def quiet_lightning() -> None:
    """Hide Lightning's informational banners and the warnings that do not apply to our runs.

    Changes process-wide logger levels and warning filters, so only the CLI calls it (``dynametric train``); a
    library caller opts in by calling it. :func:`run_training` and :func:`dry_run` never do."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning.pytorch.utilities.rank_zero"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (r"Be aware that when using `ckpt_path`", r"Checkpoint directory .* exists and is not empty",
                    r".*isinstance\(treespec, LeafSpec\)", r"The number of training batches .* is smaller than",
                    r"Experiment logs directory .* exists and is not empty",
                    # training stopped before the first validation: the run says so itself (the selected weights)
                    r"`ModelCheckpoint\(monitor=.*\)` could not find the monitored key"):
        warnings.filterwarnings("ignore", message=pattern)


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


def _silent(message: str) -> None:
    """The ``log`` of a DDP process other than rank 0 (:func:`run_training`)."""


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


def default_run_dir(cfg: Config) -> Path:
    """``<run.output_dir>/<run.name>`` (a leading ``~`` of ``run.output_dir`` is the home folder), or without
    ``run.name`` a name that every process of the run agrees on:

    * one process, and global rank 0 under Lightning's script launcher: ``<YYYYmmdd-HHMMSS>-<config hash>``, the
      time it is called. It publishes the folder in the environment variable :data:`RUN_DIR_ENV` (a side effect on
      ``os.environ``): the processes Lightning starts later for the other ranks inherit it and use that folder;
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
    from dynametric.config import config_hash

    output_dir = user_path(cfg.run.output_dir)  # ~/runs: the home folder's, as data.root (docs/config.md)
    if cfg.run.name:
        return output_dir / cfg.run.name
    published = os.environ.get(RUN_DIR_ENV, "").strip()
    if published and _launched_worker():  # a rank Lightning's script launcher started: rank 0's folder
        return Path(published)
    launch = _external_launch()
    if launch is not None:
        launcher, shared = launch
        if shared is not None:
            return output_dir / f"{shared}-{config_hash(cfg, 8)}"
        why = f"{launcher} starts every process on its own and gives them no id they share" + {
            "torchrun": " (its rendezvous id is 'none'; torchrun --standalone or --rdzv-id ID gives one)",
            "jsrun": " (no LSF job id in LSB_JOBID)"}.get(launcher, "")
    elif int(cfg.trainer.num_nodes) > 1:
        why = (f"trainer.num_nodes={cfg.trainer.num_nodes} under Lightning's launcher: another node's processes do not "
               "learn the folder rank 0 names")
    elif _launched_worker():
        why = f"this process of another rank finds no folder published by rank 0 in {RUN_DIR_ENV}"
    else:
        path = output_dir / f"{time.strftime('%Y%m%d-%H%M%S')}-{config_hash(cfg, 8)}"
        os.environ[RUN_DIR_ENV] = str(path.absolute())  # for the ranks Lightning's script launcher starts later
        return path
    raise ConfigError(f"a multi-process launch needs a run folder all its processes share: pass --out DIR or set "
                      f"run.name (the default name holds the time each process starts; {why})", key="run.name")


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
    compared resolved, so a spelling of this folder through a symbolic link is this folder. Anything else (a user's
    file of that name) is no lock of dynametric (``None``)."""
    here = run_dir.resolve()

    def recognise(data: Any) -> Holder | None:
        if not isinstance(data, dict):
            return None
        pid, host, folder = data.get("pid"), data.get("host"), data.get("folder", str(here))
        if isinstance(pid, bool) or not (isinstance(pid, int) and isinstance(host, str) and isinstance(folder, str)):
            return None
        try:
            same = folder == str(here) or Path(folder).resolve() == here
        except (OSError, RuntimeError):  # a folder that cannot be resolved (a link loop) is not this one
            same = False
        return Holder(pid, host, copied=not same)

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


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: tree}


def _is_schema_default(key: str, value: Any) -> bool:
    """Whether ``value`` is the schema's default of the dotted ``key`` (never for a key that is not in the schema,
    lies in a free mapping or has no default)."""
    from dynametric.config import schema_default

    try:
        return bool(value == schema_default(key))
    except KeyError:
        return False


def _added_defaults(old: Any, new: Any, key: str = "") -> list[tuple[str, Any]] | None:
    """The keys (with their values) of the config ``new`` that the config ``old`` lacks and that hold the schema's
    default (:func:`~dynametric.config.schema_default`): keys a later dynametric added, when that is all that
    differs (both as :func:`~dynametric.config.config_to_dict` gives them, ``old`` as a checkpoint stored it).
    ``None`` when anything else differs: a changed value, a key ``new`` lacks, a new key with another value."""
    added: list[tuple[str, Any]] = []
    if isinstance(old, dict) and isinstance(new, dict):
        if not set(old) <= set(new):
            return None
        for name, value in new.items():
            sub = f"{key}.{name}" if key else str(name)
            if name not in old:
                if not _is_schema_default(sub, value):
                    return None
                added.append((sub, value))
                continue
            more = _added_defaults(old[name], value, sub)
            if more is None:
                return None
            added += more
        return added
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        for i, (was, now) in enumerate(zip(old, new)):
            more = _added_defaults(was, now, f"{key}[{i}]")
            if more is None:
                return None
            added += more
        return added
    return added if old == new else None


class ResumedCheckpoint(NamedTuple):
    """What :func:`check_resume` read from ``last.ckpt`` for the run: its weights as meta tensors (names and shapes)
    and the MLflow / W&B run it logged into (:func:`~dynametric.engine.loggers.logger_run`; ``None``: none)."""

    weights: dict[str, torch.Tensor]
    logger_run: dict[str, Any] | None
    components: dict[str, str] | None = None
    """What the run's named components resolved to when the checkpoint was saved (:func:`component_classes`;
    ``None``: a checkpoint of an earlier version)."""


def check_resume(cfg: Config, run_dir: Path, folder_key: str = "--resume",
                 note: Callable[[str], None] = print, *, processes: int | None = None) -> ResumedCheckpoint:
    """The checks of ``train --resume`` before anything is read or written: no other process of this machine is
    training into ``run_dir`` (its ``config.yaml`` header names the process that started or last resumed it); the
    run's ``config.yaml`` is not empty and ``cfg`` is the config ``last.ckpt`` was saved with (the config hash every
    checkpoint records; a checkpoint of an older version without one is accepted with a warning, and its weights are
    still checked against the model by :func:`check_resume_weights`), and, given ``processes`` (the run's world
    size here), that the checkpoint was trained by as many processes (a checkpoint of a version that did not record
    it is not checked): a step draws one batch for each process, so the recorded batch position and the global batch
    belong to that number (``trainer.devices: auto`` resumed on a machine with another GPU count continued with
    another one, silently); and that a ``best.ckpt`` in the folder, which the run tests when it ends, was saved by
    this run (:func:`check_run_checkpoint`: one copied from another run is refused). Returns the checkpoint's weights
    as meta tensors (names and shapes only) and the logger run it records (:class:`ResumedCheckpoint`): the
    checkpoint is read once."""
    from dynametric.config import config_to_dict

    _check_not_training(run_dir, folder_key)
    _check_config_not_empty(run_dir, folder_key)
    last = run_dir / "last.ckpt"
    ckpt = load_checkpoint_file(last)
    extra = _dynametric_record(ckpt)
    pin = _pin_recorded_statistics(cfg, ckpt)
    _check_process_count(cfg, extra, last, processes)
    checked = config_to_dict(cfg)  # the config last.ckpt is checked with, and best.ckpt's check (below)
    hashes = _check_trained_config(cfg, checked, extra, pin, run_dir, note, folder_key)
    _keep_predating_statistics(cfg, pin, last, note)
    resumed = _resumed_checkpoint(ckpt, extra, last)
    del ckpt  # last.ckpt's tensors freed before best.ckpt is read
    # the checkpoint the run tests (best.ckpt) must be this run's too, checked as last.ckpt was; beside a last.ckpt
    # of an older dynametric, which records no config hash, the run's config is not known (config.yaml is taken as
    # it is): its best.ckpt is checked against the run's checkpoints before the test (_select_checkpoint)
    if hashes is not None:
        check_run_checkpoint(run_dir / "best.ckpt", checked, hashes, run_dir, note)
    return resumed


def _check_not_training(run_dir: Path, folder_key: str) -> None:
    """A step of :func:`check_resume`: no other process of this host trains into ``run_dir`` (header, then lock)."""
    if _launched_worker():  # another rank of the run: rank 0 checks the folder
        return
    header = _run_header(run_dir)
    pid = None if header is None else _running_elsewhere(header, run_dir)
    if pid is None:
        pid = lock_holder(run_dir)
    if pid is not None:
        raise _busy(run_dir, pid, folder_key, True)
    check_run_lock(run_dir, folder_key, resume=True)


def _new_run_hint(config: Path, folder_key: str) -> str:
    """How a refused resume goes on, said after its reason (``config``: the run's ``config.yaml``), in the words of
    the caller ``folder_key`` names (the Python call's ``NEW``: another ``run_dir``)."""
    if folder_key == PYTHON_FOLDER_KEY:
        return f"restore it, or start a new run with {_start_call(config, None, folder_key)} (NEW: another run_dir)"
    return f"restore it, or start a new run with {_start_call(config, None, folder_key)}"


def _check_config_not_empty(run_dir: Path, folder_key: str) -> None:
    """A step of :func:`check_resume`: the run's ``config.yaml``, where readable, has a line that is no comment."""
    config = run_dir / "config.yaml"
    try:
        text = config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return  # read by the caller, or not there (a library caller's own config)
    if not any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()):
        raise InputError(f"is empty: it no longer holds the config the run was trained with (read as the defaults, "
                         f"it would resume {run_dir / 'last.ckpt'} with other settings); "
                         f"{_new_run_hint(config, folder_key)}", file=config)


def _dynametric_record(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """What dynametric recorded in a checkpoint (its ``dynametric`` entry; ``{}`` where it has none)."""
    extra = checkpoint.get("dynametric")
    return extra if isinstance(extra, dict) else {}


def _pin_recorded_statistics(cfg: Config, ckpt: dict[str, Any]) -> tuple[list[float], list[float], bool] | None:
    """A step of :func:`check_resume`: the input statistics an earlier resume recorded are set in ``cfg``."""
    # the input statistics the checkpoint trained with, where config.yaml leaves them to the backbone: a resumed
    # older run keeps them (ImageNet's where the recorded config predates data.mean / data.std; an earlier resume
    # of such a run recorded them)
    pin = trained_statistics(cfg, ckpt)
    if pin is not None and not pin[2]:
        cfg.data.mean, cfg.data.std = pin[:2]  # recorded by an earlier resume: part of the config the hash covers
    return pin


def _check_process_count(cfg: Config, extra: dict[str, Any], last: Path, processes: int | None) -> None:
    """A step of :func:`check_resume`: ``last`` was trained by ``processes`` processes, where both are known."""
    trained_by = extra.get("processes")
    if processes is not None and isinstance(trained_by, int) and trained_by != processes:
        raise ConfigError(f"{last} was trained by {trained_by} process(es) and this machine would resume it with "
                          f"{processes} (trainer.devices={cfg.trainer.devices} x trainer.num_nodes="
                          f"{cfg.trainer.num_nodes}): a step draws one batch per process, so the run would go on with "
                          f"other batches from the recorded position; resume it where it gets {trained_by} (with "
                          "trainer.devices auto or -1, CUDA_VISIBLE_DEVICES chooses the GPUs), or start a new run",
                          key="trainer.devices")


def _check_trained_config(cfg: Config, checked: dict[str, Any], extra: dict[str, Any],
                          pin: tuple[list[float], list[float], bool] | None, run_dir: Path,
                          note: Callable[[str], None], folder_key: str) -> set[str] | None:
    """A step of :func:`check_resume`: ``cfg`` is ``last.ckpt``'s config but for keys added since; the run's hashes."""
    from dynametric.config import config_hash

    config, last = run_dir / "config.yaml", run_dir / "last.ckpt"
    saved, now = extra.get("config_hash"), config_hash(cfg)
    if saved is None:
        note(f"warning: {last} records no config hash (written by an older dynametric): {config} cannot be checked "
            "against it; resuming with it as it is")
        return None
    if saved != now:
        stored = extra.get("config")
        added = _added_defaults(stored, checked) if isinstance(stored, dict) else None
        if not added:
            raise _config_changed(cfg, checked, stored, saved, now, run_dir, folder_key, pin)
        # only keys a later dynametric added, at their defaults: the run's own config, resumed (data.mean / data.std
        # of a run that predates them are not left at their defaults: the note below says what it resumes with)
        said = [(k, v) for k, v in added if not (pin is not None and pin[2] and k in ("data.mean", "data.std"))]
        if said:
            note(f"note: {config} lacks keys this dynametric added after {last} was saved; resuming with their "
                 "defaults: " + ", ".join(f"{k}={v!r}" for k, v in said))
    return {saved, now}


def _changes(stored: Any, new: dict[str, Any]) -> tuple[list[str], str]:
    """The keys a checkpoint's stored config and ``new`` differ in, and ``; changed: ...`` (none, ``""``: no dict)."""
    if not isinstance(stored, dict):
        return [], ""
    keys, text = _changed_keys(stored, new)
    return keys, f"; changed: {text}"


def _config_changed(cfg: Config, checked: dict[str, Any], stored: Any, saved: Any, now: str,
                    run_dir: Path, folder_key: str,
                    pin: tuple[list[float], list[float], bool] | None = None) -> InputError:
    """The one line of a resume refused because ``config.yaml`` is not the config ``last.ckpt`` was saved with."""
    config, last = run_dir / "config.yaml", run_dir / "last.ckpt"
    keys, differ = _changes(stored, checked)
    if folder_key == PYTHON_FOLDER_KEY:  # the caller's cfg differs, not (or not only) config.yaml: named as such
        return _python_config_changed(cfg, stored, saved, now, keys, differ, run_dir, pin)
    if keys == ["imports"]:  # only the modules imported: no other training
        how = f"with dynametric --import MODULE train --resume {run_dir}"
        return InputError(f"changed only its 'imports' ({stored.get('imports') or []!r} in {last}, "
                          f"{cfg.imports!r} here), which resuming keeps as the run recorded them: restore them, "
                          f"and import another module for the resume {how}", file=config, key="imports")
    return InputError(f"no longer matches the checkpoint it was saved with ({last} was trained with config "
                      f"hash {saved}, this config hashes to {now}{differ}); {_new_run_hint(config, folder_key)}",
                      file=config)


def _python_config_changed(cfg: Config, stored: Any, saved: Any, now: str, keys: list[str], differ: str,
                           run_dir: Path, pin: tuple[list[float], list[float], bool] | None) -> InputError:
    """:func:`_config_changed` for a Python call (``run_training(cfg, run_dir, resume=True)``): keyed ``cfg``, the
    argument that differs, with how to resume with the trained config (``run_dir``'s ``config.yaml`` where it still
    holds it: :func:`_file_holds_trained_config`; else restored first) or start a new run with ``cfg``."""
    config, last = run_dir / "config.yaml", run_dir / "last.ckpt"
    resume = _resume_call(run_dir, PYTHON_FOLDER_KEY)
    held = _file_holds_trained_config(config, stored, saved, pin)
    how = {"holds": f"which {config} holds: {resume}",
           "edited": f"which {config} no longer holds either (edited since {last} was saved): restore it, then "
                     f"{resume}",
           "unreadable": f"which {config} should hold, but it is missing or cannot be loaded: restore it, then "
                         f"{resume}"}.get(held, f"which {config} should hold (not checked here: that would import "
                                                f"the modules it lists, {held}): {resume}")
    if keys == ["imports"]:
        return InputError(f"changed only its imports ({stored.get('imports') or []!r} in {last}, {cfg.imports!r} "
                          f"here), which resuming keeps as the run recorded them: resume with the config the run was "
                          f"trained with, {how} (import another module with import MODULE before it)",
                          key="cfg.imports")
    return InputError(f"no longer matches the checkpoint the run was saved with ({last} was trained with config hash "
                      f"{saved}, cfg hashes to {now}{differ}); resume with the config the run was trained with, {how}; "
                      "or start a new run with this cfg: run_training(cfg, NEW) (NEW: another run_dir)", key="cfg")


def _file_holds_trained_config(config: Path, stored: Any, saved: Any,
                               pin: tuple[list[float], list[float], bool] | None) -> str:
    """Whether a run's ``config.yaml``, loaded as :func:`~dynametric.config.load_config` loads it (``3e-3`` and
    ``0.003`` alike), is the config its ``last.ckpt`` was trained with, as a resume of it would find (the same hash,
    with the input statistics an earlier resume recorded, ``pin``; or only keys a later dynametric added, at their
    defaults): ``holds``, ``edited``, or ``unreadable`` (missing, not a config). Never runs code to decide: where
    the file lists modules this process has not imported, loading it would import them, so it is not loaded and
    their names come back (the message says the file was not checked)."""
    import sys
    import warnings

    import yaml

    from dynametric.config import config_hash, config_to_dict, load_config

    try:
        raw = yaml.safe_load(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return "unreadable"
    listed = raw.get("imports") if isinstance(raw, dict) else None
    new = [str(m) for m in listed if str(m) not in sys.modules] if isinstance(listed, list) else []
    if new:
        return ", ".join(new)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no module is imported here (above); a stale-module note is the load's
            file_cfg = load_config(config)
    except (DynametricError, OSError, ImportError, ValueError, TypeError):
        return "unreadable"
    if pin is not None and not pin[2]:
        file_cfg.data.mean, file_cfg.data.std = pin[:2]
    if config_hash(file_cfg) == saved:
        return "holds"
    return "holds" if isinstance(stored, dict) and _added_defaults(stored, config_to_dict(file_cfg)) else "edited"


def _keep_predating_statistics(cfg: Config, pin: tuple[list[float], list[float], bool] | None, last: Path,
                               note: Callable[[str], None]) -> None:
    """A step of :func:`check_resume`: a run older than ``data.mean`` / ``data.std`` resumes with ImageNet's."""
    if pin is not None and pin[2]:  # the recorded config predates the keys: checked without them
        cfg.data.mean, cfg.data.std = pin[:2]
        note(f"note: {last} was trained before the transforms followed the backbone's own input statistics: resuming "
            f"with the ImageNet mean and std it trained with (data.mean, data.std)")


def _resumed_checkpoint(ckpt: dict[str, Any], extra: dict[str, Any], last: Path) -> ResumedCheckpoint:
    """A step of :func:`check_resume`: ``last`` has a ``state_dict``; what the resume keeps of the checkpoint."""
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise InputError("checkpoint has no 'state_dict'", file=last, key="state_dict")
    record, components = extra.get("logger_run"), extra.get("components")
    return ResumedCheckpoint({k: torch.empty(v.shape, device="meta") if isinstance(v, torch.Tensor) else v
                              for k, v in state.items()}, record if isinstance(record, dict) else None,
                             components if isinstance(components, dict) else None)


def _no_note(message: str) -> None:
    """A ``note`` that says nothing: where :func:`check_run_checkpoint`'s warning about a checkpoint without a config
    hash was said already (:func:`_select_checkpoint`, after :func:`check_resume`) or goes without saying (a
    ``best.ckpt`` of an older dynametric beside a ``last.ckpt`` of one, said of it)."""


def _changed_keys(stored: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], str]:
    """The dotted keys that differ between a checkpoint's stored config and ``new`` (both as
    :func:`~dynametric.config.config_to_dict` gives them; a key only ``new`` has counts when it is not at the
    schema's default), and the first four in words (``key (old -> new)``)."""
    old, now = _flat(stored), _flat(new)
    keys = [k for k in sorted({*old, *now}) if (k in old) != (k in now) or old[k] != now[k]]
    keys = [k for k in keys if k in old or not _is_schema_default(k, now[k])]  # an added key: no edit
    text = ", ".join(f"{k} ({repr(old[k]) if k in old else 'absent'} -> {repr(now[k]) if k in now else 'absent'})"
                     for k in keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")
    return keys, text


def _same_run_config(stored: Any, run_config: dict[str, Any]) -> bool:
    """Whether a checkpoint's stored config is the run's ``run_config`` (both as
    :func:`~dynametric.config.config_to_dict` gives them) but for what a resume adds without changing the training:
    keys a later dynametric added, at their defaults (:func:`_added_defaults`), and the input statistics a resume
    of a checkpoint that predates ``data.mean`` / ``data.std`` records (ImageNet's, :func:`trained_statistics`)."""
    from dynametric.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    if not isinstance(stored, dict):
        return False
    if _added_defaults(stored, run_config) is not None:
        return True
    data, was = run_config.get("data"), stored.get("data")
    if isinstance(data, dict) and isinstance(was, dict) and "mean" not in was and "std" not in was \
            and data.get("mean") == list(IMAGENET_MEAN) and data.get("std") == list(IMAGENET_STD):
        return _added_defaults(stored, {**run_config, "data": {**data, "mean": None, "std": None}}) is not None
    return False


def check_run_checkpoint(path: Path, run_config: dict[str, Any], run_hashes: set[str], run_dir: Path,
                         note: Callable[[str], None], checkpoint: Mapping[str, Any] | None = None) -> None:
    """A checkpoint of the run folder that the run tests (``best.ckpt``) must have been saved by this run, as
    ``last.ckpt`` must (:func:`check_resume`): its recorded config hash one of ``run_hashes`` (the run's), or its
    stored config the run's ``run_config`` but for keys a later dynametric added at their defaults
    (:func:`_same_run_config`); else a one-line :class:`InputError` naming it (a ``best.ckpt`` copied from another
    run would be tested, and its metrics reported, as this run's best epoch). Nothing to check where ``path`` is
    not there; one that records no config hash (an older dynametric) is accepted with a warning. ``checkpoint``:
    its content where the caller read it already."""
    if checkpoint is None:
        if not path.is_file():
            return
        checkpoint = load_checkpoint_file(path)
    extra = _dynametric_record(checkpoint)
    recorded, stored = extra.get("config_hash"), extra.get("config")
    if recorded is None:
        note(f"warning: {path} records no config hash (written by an older dynametric): it cannot be checked to be "
             f"this run's; the run tests it as its best epoch")
        return
    if recorded in run_hashes or _same_run_config(stored, run_config):
        return
    differ = _changes(stored, run_config)[1]
    raise InputError(f"was not saved by this run (it records config hash {recorded}, the run {run_dir} "
                     f"{' or '.join(sorted(run_hashes)) or 'another'}{differ}): the run would test it as "
                     f"its best epoch and report its metrics as its own; put back the run's own {path.name}, or move "
                     "this one out of the run folder (the run then tests its final weights)", file=path)


def component_classes(cfg: Config, embedder: torch.nn.Module | None = None) -> dict[str, str]:
    """What each component the config names resolved to, ``{config key: "module.QualifiedName"}``: the entries of
    ``LOSSES`` / ``MINERS`` (every loss term and its miner), ``BATCH_SAMPLERS`` (``data.sampler``), the dataset
    format (``data.format``), the method (``method.name``) and the backbone's module class (of the built
    ``embedder`` when given, else the ``BACKBONES`` factory; a timm name then is not recorded). ``run_info.json``
    (``components``) and every checkpoint record it, so a name that user code registered over
    (``LOSSES["TripletMarginLoss"] = MyLoss``) shows, and a resume says when a name resolves to another class now
    (:func:`components_note`)."""
    from dynametric.data.registry import FORMATS, _synthetic_class
    from dynametric.data.samplers import BATCH_SAMPLERS
    from dynametric.losses import LOSSES
    from dynametric.methods import method_for
    from dynametric.miners import MINERS
    from dynametric.models.backbones import BACKBONES
    from dynametric.utils.registry import qualified_name

    out: dict[str, str] = {}
    for key, term, miner in cfg.loss_terms():
        if term.name in LOSSES:
            out[f"{key}.name"] = qualified_name(LOSSES[term.name])
        if miner is not None and miner.name in MINERS:
            out[f"{'miner' if key == 'loss' else f'{key}.miner'}.name"] = qualified_name(MINERS[miner.name])
    if cfg.data.sampler in BATCH_SAMPLERS:
        out["data.sampler"] = qualified_name(BATCH_SAMPLERS[cfg.data.sampler])
    body = getattr(getattr(embedder, "backbone", None), "body", None)
    if body is not None:
        out["model.backbone"] = qualified_name(type(body))
    elif cfg.model.backbone in BACKBONES:
        out["model.backbone"] = qualified_name(BACKBONES[cfg.model.backbone])
    fmt = FORMATS.get(cfg.data.format)
    if fmt is not None or cfg.data.format == "synthetic":
        out["data.format"] = qualified_name(fmt if fmt is not None else _synthetic_class())
    out["method.name"] = qualified_name(method_for(cfg))
    return out


def components_note(recorded: Mapping[str, Any] | None, now: Mapping[str, str], where: str) -> str | None:
    """One ``note:`` line when a component the run recorded (``recorded``, from ``where``) resolves to another
    class now (``now``): a registry entry replaced, or user code not imported; ``None`` when all agree or nothing
    was recorded (a run of an earlier version)."""
    if not recorded:
        return None
    changed = [f"{key} {recorded[key]} -> {now[key]}" for key in now if key in recorded and recorded[key] != now[key]]
    if not changed:
        return None
    return (f"note: the run was trained with other component classes than the config's names resolve to now "
            f"({where}): {'; '.join(changed)}; resuming with the classes of now (a registry entry replaced by user "
            "code, or the code that registered it not imported?)")


def check_resume_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], last: Path) -> None:
    """A one-line InputError naming ``last`` when its weights do not fit the model built from the run's config
    (Lightning's loading would raise a multi-line ``size mismatch`` RuntimeError); the wording of ``evaluate
    --checkpoint``."""
    from dynametric.engine.checkpoint import model_mismatch

    problem = model_mismatch(module, weights)
    if problem is not None:
        raise InputError(problem, file=last)


def claim_resumed_run(run_dir: Path, note: Callable[[str], None] = print) -> None:
    """A resumed run takes over its folder: the ``config.yaml`` header names this folder and this process (the
    check of a second ``--resume`` or ``--out`` while it trains), rewritten atomically with the rest of the file as
    it was, and the temporary files of atomic writes that a killed process of this run left behind are removed.
    Only in a folder whose ``config.yaml`` says dynametric train wrote it; a header naming another folder (the run
    folder was moved or copied since) is rewritten to name this one, and the output says so."""
    from dynametric.utils.io import atomic_write_text

    old = None if _launched_worker() else _run_header(run_dir, any_folder=True)
    if old is None:
        return
    config = run_dir / "config.yaml"
    rest = config.read_text(encoding="utf-8").split("\n", 1)[1]
    header = _HEADER.format(folder=printable_path(run_dir.resolve()), pid=os.getpid(), host=socket.gethostname())
    atomic_write_text(config, f"# {header}\n{rest}")
    if old["folder"] != printable_path(run_dir.resolve()):
        note(f"run folder {run_dir}: {config.name} named the run folder {old['folder']} (the folder was moved or "
            "copied); it now names this one")
    left = [entry for sub, names in _RUN_FILES.items()
            for entry in remove_stale_temps(run_dir / sub, names.__contains__)]
    if left:
        note(f"run folder {run_dir}: removed the temporary files a stopped process left "
            f"({', '.join(p.relative_to(run_dir).as_posix() for p in left)})")


def _check_test_splits(cfg: Config) -> None:
    """:func:`~dynametric.pipeline.protocols.check_test_splits` against the data's splits, once the training split
    is among them (a data set without it is reported by the training split's own error, which says more)."""
    splits = available_splits(cfg)
    if cfg.data.train_split in splits:
        check_test_splits(cfg, splits)


def _held_out_data(cfg: Config, datasets: Any, keys: dict[str, str], note: Callable[[str], None]
                   ) -> tuple[dict[str, Any], list[str]]:
    """The test protocol's splits (``keys``: split -> the key that chose it), read with the evaluation transform,
    after a query -> gallery test's ``eval.query_in_gallery`` was checked against their items
    (:meth:`~dynametric.engine.protocols.QueryGallery.exclusion_ids`: the test would refuse it only after training
    had started) and :func:`~dynametric.engine.builders.check_held_out_data` found no image file of them in the
    training or validation data; its warnings about shared classes go to ``note`` and are returned with them. Each
    split's item identities (a ``realpath`` per item) are computed once for both checks and the test
    (:func:`~dynametric.data.splits.dataset_identities`, kept with the datasets the test reuses)."""
    from dynametric.engine.protocols import QueryGallery

    tests = {split: load_split(cfg, split, train=False, key=keys[split]) for split in keys}
    protocol = protocol_from_config(cfg)
    if isinstance(protocol, QueryGallery):
        protocol.exclusion_ids(tests[protocol.query_split], tests[protocol.gallery_split])
    warnings_ = check_held_out_data(cfg, datasets, tests, keys)
    for warning in warnings_:
        note(f"warning: {warning}")
    return tests, warnings_


def batchnorm_note(cfg: Config, embedder: torch.nn.Module, processes: int) -> str | None:
    """A ``note:`` line when several processes train a model whose BatchNorm layers normalise with each process's
    own batch (``trainer.sync_batchnorm`` off, the layers not frozen by ``model.freeze_bn``): such a run is not the
    one-process computation on the global batch (docs/training.md, DDP); ``None`` otherwise."""
    if processes <= 1 or cfg.trainer.sync_batchnorm:
        return None
    was = embedder.training
    embedder.train()  # what training does (model.freeze_bn keeps the backbone's layers in eval mode)
    layers = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training for m in embedder.modules())
    embedder.train(was)
    if not layers:
        return None
    return (f"note: {layers} BatchNorm layer(s) of the model normalise with each process's own batch of "
            f"data.batch_size {cfg.data.batch_size} under {processes} processes, so this run is not one process on "
            "the global batch; trainer.sync_batchnorm: true (GPUs) or model.freeze_bn: true makes it so")


def validation_note(cfg: Config, has_validation: bool) -> str | None:
    """A ``note:`` line when ``trainer.val_every`` does not divide ``trainer.max_epochs``: validation runs after
    every ``val_every``-th epoch only, so the last epochs are trained but never validated, and ``best.ckpt`` can
    never be one of them; ``None`` otherwise (or without validation data)."""
    every, epochs = int(cfg.trainer.val_every), int(cfg.trainer.max_epochs)
    if not has_validation or every <= 1 or epochs % every == 0:
        return None
    last = epochs - epochs % every  # 1-based: the last validated epoch (0: none)
    rounds = (f"after epochs {every}, {2 * every}, ... {last} only" if last > every else
              f"after epoch {every} only" if last else "never (fewer epochs than trainer.val_every)")
    return (f"note: trainer.val_every {every} does not divide trainer.max_epochs {epochs}: validation runs {rounds}, "
            f"so the last {epochs - last} epoch(s) are trained but never validated and best.ckpt is never one of "
            f"them; set trainer.val_every to a divisor of {epochs} to validate the final weights")


def setup_notes(cfg: Config, embedder: torch.nn.Module, processes: int, has_validation: bool) -> list[str]:
    """The ``note:`` lines the run and the dry run print about the set-up, in this order: BatchNorm under several
    processes (:func:`batchnorm_note`), epochs never validated (:func:`validation_note`), and what
    ``build_embedder`` did (weights loaded from ``pretrained_path``, ...: the embedder's ``notes``)."""
    notes = [batchnorm_note(cfg, embedder, processes), validation_note(cfg, has_validation)]
    return [n for n in notes if n is not None] + [f"note: {n}" for n in getattr(embedder, "notes", [])]


def rendezvous_note(cfg: Config, world: int) -> str | None:
    """The line a run of several nodes (``trainer.num_nodes`` > 1) prints before its first Lightning call, where it
    waits for the processes of every node to join (torch's rendezvous at MASTER_ADDR:MASTER_PORT): on one machine
    it waited there for ever as far as the user could tell, without a word. ``None`` for one node."""
    nodes = int(cfg.trainer.num_nodes)
    if nodes <= 1:
        return None
    env = os.environ
    addr = env.get("MASTER_ADDR", "").strip()
    port = env.get("MASTER_PORT", "").strip()
    where = (f"MASTER_ADDR {addr or '127.0.0.1 (MASTER_ADDR not set)'}, MASTER_PORT "
             f"{port or 'a free port Lightning picks here (MASTER_PORT not set, so no other node can know it)'}")
    if _external_launch() is None:  # Lightning's own launcher: one command per node, started by the user
        how = (f"start the same command on each other node with NODE_RANK=1 ... {nodes - 1} and the same MASTER_ADDR "
               "and MASTER_PORT")
    else:
        how = "the launcher starts the other nodes' processes"
    return (f"note: trainer.num_nodes={nodes}: node {env.get('NODE_RANK', '').strip() or '0'} waits until the "
            f"processes of all {nodes} nodes ({world} in all) join at {where}; {how}. Ctrl-C and SIGTERM do not end "
            "this wait (torch's rendezvous, which gives up after 30 minutes); kill the process to stop it")


def check_eval_shards(cfg: Config, splits: Mapping[str, Any], processes: int) -> None:
    """Refuse an evaluation split with fewer items than the run's processes: each process embeds a contiguous shard
    of it (:func:`~dynametric.engine.data.shard_range`), and a process with none has nothing to take part in the
    gathering with (Lightning refused its empty loader while the others waited: tracebacks, no one-line error).
    One process evaluates any split, an empty one included (its own message)."""
    if processes <= 1:
        return
    for name, dataset in splits.items():
        n = len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
        if n is not None and 0 < n < processes:
            raise ConfigError(f"the {name} split has {n} image(s), fewer than the {processes} processes that would "
                              f"each evaluate a shard of it (trainer.devices x trainer.num_nodes); use at most {n} "
                              "processes or more data", key="trainer.devices")


#: Lightning's warning at every ``self.log(..., logger=True)`` of a trainer without a logger (Lightning 2.6: 41 to 82
#: lines a run): the untrained and final tests run on such a trainer on purpose, and the run hands their results to
#: its logger itself (:func:`~dynametric.engine.loggers.log_results`). Only this warning is hidden, only there.
NO_LOGGER_WARNING = r"You called `self\.log\(.*logger=True\)` but have no logger configured"


def _eval_trainer(settings: TrainerSettings, progress: bool) -> L.Trainer:
    from dynametric.engine.loggers import MetricProgressBar  # on stderr, as the training's bar

    validate_settings(settings)
    return lightning_trainer(settings, logger=False, enable_checkpointing=False, enable_progress_bar=progress,
                             enable_model_summary=False, use_distributed_sampler=False, plugins=[SafeCheckpointIO()],
                             callbacks=[MetricProgressBar()] if progress else [])


def evaluate_split(module: MetricLearningModule, dm: MetricDataModule, dataset: Any, settings: TrainerSettings,
                   progress: bool, ckpt_path: str | None = None, trainer: L.Trainer | None = None) -> dict[str, Any]:
    """Embed ``dataset`` with ``module`` (optionally loading ``ckpt_path`` first) and evaluate it."""
    trainer = trainer or _eval_trainer(settings, progress)
    eval_dm = EvalDataModule.like(dm, dataset)  # the training's loader settings (workers, pinning, prefetching)
    with ctrl_c_passes_through(trainer), warnings.catch_warnings():
        # evaluated without a logger on purpose: the run logs the results itself
        if getattr(trainer, "logger", None) is None:
            warnings.filterwarnings("ignore", message=NO_LOGGER_WARNING)
        trainer.test(module, datamodule=eval_dm, ckpt_path=ckpt_path, verbose=False)
    assert module.last_eval is not None
    return module.last_eval


def _head_results(cfg: Config, module: MetricLearningModule, dm: MetricDataModule, dataset: Any,
                  settings: TrainerSettings, progress: bool) -> dict[str, Any]:
    if cfg.model.num_heads == 1:
        return {}
    from dynametric.models import default_head_names

    heads = list(cfg.eval.heads or [*(cfg.model.head_names or default_head_names(cfg.model.num_heads)), "concat"])
    keep = module.eval_head
    out = {}
    try:
        for head in heads:
            module.eval_head = head
            out[head] = evaluate_split(module, dm, dataset, settings, progress)
    finally:
        module.eval_head = keep
    return out


def _summary(metrics: dict[str, Any], scale_names: list[str], log: Callable[[str], None],
             head: str | None = None, other_heads: bool = False, monitor: str = "", report: bool = False) -> None:
    """The end-of-run table: untrained vs trained test metrics. A multi-head run names the head it shows (the
    evaluation head, ``concat`` by default) and where the other heads' results are. Test results with a
    ``by_category`` block add the per-category table (:func:`~dynametric.pipeline.report.category_summary`; the
    worst and best few of many, pointing to ``metrics.json`` and, with ``report``, ``report.html``)."""
    untrained, test = metrics["untrained"], metrics["test"]
    keys = [k for k in ("recall@1", "map@r") if k in test.get(scale_names[0], {})]
    if head is not None:
        log(f"test metrics of head {head}" + (" (every head: run_info.json test_by_head)" if other_heads else ""))
    log(f"{'scale':<10}" + "".join(f"{k + ' untrained':>20}{k + ' trained':>18}" for k in keys))
    for scale in [*scale_names, "mean"]:
        row = f"{scale:<10}"
        for k in keys:
            u, t = untrained.get(scale, {}).get(k, float("nan")), test.get(scale, {}).get(k, float("nan"))
            row += f"{u:>20.4f}{t:>18.4f}"
        log(row)
    if test.get("by_category"):
        where = "metrics.json (test.by_category)" + (" and report.html" if report else "")
        for line in category_summary(test["by_category"], scale_names, monitor, where=where):
            log(line)


def _test_evaluator(cfg: Config, own_protocol: MethodTestProtocol | None, module: MetricLearningModule,
                    dm: MetricDataModule, datasets: Any, settings: TrainerSettings, progress: bool,
                    tests: dict[str, Any] | None = None
                    ) -> tuple[Callable[[str | None], dict[str, Any]], Any]:
    """``test(ckpt_path) -> metrics`` for the run, with the config's test protocol (:func:`protocol_from_config`):
    leave-one-out on the test split (the module's own test loop), query -> gallery (``eval.protocol:
    query_gallery``), or the method's own (``own_protocol``, :func:`method_test_protocol`: e.g. the DyML protocol of
    ``method.name: dyml``). The second value is the :class:`~dynametric.engine.protocols.ProtocolTest` when the
    protocol picks the report's retrieval view or is the method's own (whose report view may be the validation
    images, :attr:`~dynametric.engine.protocols.MethodTestProtocol.report_view_uses_validation`).
    ``tests``: the protocol's splits already read (:func:`_held_out_data`), used instead of reading them again (their
    item identities are not computed again either)."""
    import functools

    from dynametric.engine.builders import eval_kwargs
    from dynametric.engine.protocols import LeaveOneOut, ProtocolTest
    from dynametric.metrics import evaluate_embeddings

    protocol = protocol_from_config(cfg, scale_names=datasets.scale_names)
    if isinstance(protocol, LeaveOneOut):
        return (lambda ckpt: evaluate_split(module, dm, datasets.test, settings, progress, ckpt_path=ckpt)), None

    def embed_with(dataset: Any, ckpt: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        keep = module.evaluator
        module.evaluator = lambda emb, labels, **_: {}  # embed only; the protocol evaluates
        try:
            evaluate_split(module, dm, dataset, settings, progress, ckpt_path=ckpt)
        finally:
            module.evaluator = keep
        assert module.last_embeddings is not None
        return module.last_embeddings

    # the metrics rank on the module's device with the config's eval options (DyML sets its own metric options)
    evaluate = functools.partial(evaluate_embeddings, device=module.device, **eval_kwargs(cfg))
    loaded = dict(tests or {})
    test = ProtocolTest(protocol, embed_with,
                        lambda split: loaded[split] if split in loaded else load_split(cfg, split, train=False),
                        evaluate)
    # a method's own protocol may show the report's views on the validation images, embedded by this test's weights
    return test, (test if protocol.view_split() is not None or own_protocol is not None else None)


def _interrupted(run_dir: Path, metrics: dict[str, Any] | None, history: list[dict[str, Any]],
                 write: bool, folder_key: str, sigterm: bool = False) -> Interrupted:
    """A run stopped by Ctrl-C (or SIGTERM) before it finished: ``metrics.json`` (once written) gets the validation
    done so far and keeps ``"test": {}`` (the run was not tested); ``last.ckpt`` and ``best.ckpt`` stay as they were.
    The returned exception says how to go on: resume from ``last.ckpt``, or start again without one, in the words
    of the caller ``folder_key`` names (the command line's, or a Python call's: :func:`_resume_call`)."""
    if write and metrics is not None:
        atomic_write_json(run_dir / "metrics.json", nan_to_null({**metrics, "validation": list(history), "test": {}}))
    if (run_dir / "last.ckpt").is_file():
        return Interrupted(f"resume with: {_resume_call(run_dir, folder_key)}", sigterm=sigterm)
    if (run_dir / "config.yaml").is_file():
        return Interrupted(f"no checkpoint yet; start again with: "
                           f"{_start_call(run_dir / 'config.yaml', run_dir, folder_key)}", sigterm=sigterm)
    return Interrupted(sigterm=sigterm)


def _test_images(test: Any, tests: Mapping[str, Any]) -> str:
    """The test images of the run's ``data:`` line: ``N test images`` (leave-one-out on ``data.test_split``), else
    the splits the test protocol evaluates (query -> gallery, DyML's), ``N test images (split 'test')`` or
    ``Q + G test images (splits 'query' + 'gallery')``."""
    if test is not None:
        return f"{len(test)} test images"
    counts = " + ".join(str(len(ds)) for ds in tests.values())
    names = " + ".join(repr(split) for split in tests)
    return f"{counts} test images (split{'s' * (len(tests) != 1)} {names})"


def _run_logger(cfg: Config, run_dir: Path, hparams_metrics: list[str], record: Mapping[str, Any] | None,
                notes: Callable[[str], None]) -> Any:
    """The run's logger (:func:`~dynametric.engine.loggers.build_logger`). A resumed run logs into the MLflow or
    W&B run it started, which its checkpoint records (``record``: :attr:`ResumedCheckpoint.logger_run`); one that
    cannot be continued (its store or run removed) is said in a note, and a new run is started."""
    continued = None
    if record is not None and record.get("logger") == cfg.run.logger and record.get("id"):
        continued = record
    if continued is None:
        return build_logger(cfg.run.logger, run_dir, cfg.run.logger_options, hparams_metrics=hparams_metrics)
    try:
        logger = build_logger(cfg.run.logger, run_dir, cfg.run.logger_options, hparams_metrics=hparams_metrics,
                              continue_run=continued)
    except ConfigError as exc:
        if exc.key != "run.logger":  # the options' own errors: as without a resume
            raise
        notes(f"note: the {cfg.run.logger} run {continued['id']} this run logged into cannot be continued "
              f"({exc.message}); logging into a new one")
        return build_logger(cfg.run.logger, run_dir, cfg.run.logger_options, hparams_metrics=hparams_metrics)
    notes(f"note: logging into the {cfg.run.logger} run {continued['id']} this run started")
    return logger


def _check_one_process_method(cfg: Config) -> None:
    """Under a launcher that started several processes (:func:`~dynametric.engine.trainer.launch`: ``torchrun``),
    the method's own checks first: a method that runs on one process (``mic``, ``sharing_alternating``) says so,
    where :func:`~dynametric.engine.trainer.plan_trainer` would ask for as many ``trainer.devices`` as processes."""
    if launch() is not None:
        from dynametric.methods import method_for

        method_for(cfg).validate(cfg)


def run_training(cfg: Config, run_dir: str | Path, *, resume: bool = False, progress: bool | None = None,
                 log: Callable[[str], None] = print, note: Callable[[str], None] | None = None,
                 folder_key: str = PYTHON_FOLDER_KEY) -> RunResult:
    """Train, select on validation, test the best checkpoint, write metrics.json and report.html.

    ``progress=None`` follows ``trainer.progress_bar``; ``True`` / ``False`` (the CLI's ``--progress`` /
    ``--no-progress``) override it. ``folder_key`` is what chose ``run_dir``, named by the errors about the folder
    (the CLI passes ``--out``, or ``run.output_dir`` / ``run.name`` for the default folder); with the default
    (:data:`PYTHON_FOLDER_KEY`) how to go on after a stop or a refusal is said as the Python call that does it
    (``run_training(load_config(...), run_dir, resume=True)``), else as the command line's. ``log`` gets the
    run's lines (what is being done, the results table, the files written) and ``note`` its notes and warnings
    (``note:`` and ``warning:`` lines, what was done to the run folder; ``log`` when not given: the CLI prints
    them on stderr, the rest on stdout). Both in one process only: a DDP process other than rank 0
    (:func:`_launched_worker`) prints nothing.

    The caller's random state is left as it was: the run seeds the global generators from ``trainer.seed`` (Python's
    ``random``, NumPy's global state, torch's CPU generator and CUDA's) and sets ``PL_GLOBAL_SEED`` /
    ``PL_SEED_WORKERS`` in ``os.environ`` (Lightning's ``seed_everything``), and puts all of them back as they were
    when it returns or raises (:func:`callers_random_state`); what the run draws does not depend on them. So are
    torch's algorithm switches, which the trainer sets from ``trainer.deterministic`` (:func:`callers_torch_flags`),
    and a start method of ``multiprocessing`` the caller left unset is unset again (:func:`callers_start_method`)."""
    with callers_random_state(), callers_torch_flags(), callers_start_method():
        return _run_training(cfg, run_dir, resume=resume, progress=progress, log=log, note=note,
                             folder_key=folder_key)


#: what Lightning's ``seed_everything`` sets in ``os.environ`` (the seed for processes started later, and whether
#: the data loaders' workers are seeded from it)
SEED_ENVIRONMENT = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")
#: what Lightning's ``Trainer(deterministic=True)`` sets in ``os.environ`` (cuBLAS's reproducible workspace)
DETERMINISM_ENVIRONMENT = ("CUBLAS_WORKSPACE_CONFIG",)
#: the seed of a CUDA generator before anything seeds it (torch's ``default_rng_seed_val``)
_CUDA_DEFAULT_SEED = 67280421310721


@contextlib.contextmanager
def callers_random_state() -> Iterator[None]:
    """Around :func:`run_training`: the global random state as the caller left it is put back on the way out (a
    return or an exception): Python's ``random``, NumPy's global ``np.random`` state, torch's CPU generator, the
    CUDA generators, and the environment variables of :data:`SEED_ENVIRONMENT`. CUDA not started yet on entry: the
    seeds torch keeps for it until it starts are put back (the run's replaced them), and where the run started it,
    its generators are set as they would have started (torch's default seed, then the caller's queued seeds)."""
    import random

    import numpy as np

    py_state, np_state, cpu_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    environment = {name: os.environ.get(name) for name in SEED_ENVIRONMENT}
    cuda_started = torch.cuda.is_available() and torch.cuda.is_initialized()
    cuda_states = torch.cuda.get_rng_state_all() if cuda_started else None
    tracker = getattr(torch.cuda, "_lazy_seed_tracker", None)  # CUDA's seeds queued until it starts
    queued = None if cuda_started else _queued_cuda_seeds(tracker)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(cpu_state)
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        elif queued is not None:
            _put_back_queued_cuda_seeds(tracker, queued)


@contextlib.contextmanager
def callers_torch_flags() -> Iterator[None]:
    """Around :func:`run_training`: torch's algorithm switches as the caller left them are put back on the way out (a
    return or an exception). Lightning's ``Trainer(deterministic=...)`` calls ``torch.use_deterministic_algorithms``
    with the config's value (a caller's deterministic mode was switched off by a run with ``trainer.deterministic``
    false, and a run with it true left it on), sets ``torch.backends.cudnn.benchmark`` off and sets the variables of
    :data:`DETERMINISM_ENVIRONMENT`. Put back: deterministic algorithms and their warn-only mode,
    ``cudnn.benchmark``, ``cudnn.deterministic`` and those variables (an unset one unset)."""
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark, cudnn_deterministic = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    environment = {name: os.environ.get(name) for name in DETERMINISM_ENVIRONMENT}
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        torch.backends.cudnn.deterministic = cudnn_deterministic
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _queued_cuda_seeds(tracker: Any) -> dict[str, Any] | None:
    """The seeds torch keeps for CUDA until it starts (``torch.manual_seed`` before CUDA is used), ``None`` where
    this torch keeps them otherwise."""
    names = ("manual_seed_all_cb", "manual_seed_cb", "call_order")
    if tracker is None or not all(hasattr(tracker, name) for name in names):
        return None
    return {name: list(getattr(tracker, name)) if name == "call_order" else getattr(tracker, name) for name in names}


def _put_back_queued_cuda_seeds(tracker: Any, queued: dict[str, Any]) -> None:
    """After a run that found CUDA not started: its queued seeds as they were, or, where the run started CUDA (and
    applied the run's seed), each generator as it would have started: torch's default seed, then the caller's
    queued seeds in their order."""
    if not torch.cuda.is_initialized():
        for name, value in queued.items():
            setattr(tracker, name, value)
        return
    for index in range(torch.cuda.device_count()):
        torch.cuda.default_generators[index].manual_seed(_CUDA_DEFAULT_SEED)
    for call in queued["call_order"]:
        if isinstance(call, tuple) and call and callable(call[0]):
            call[0]()  # (callback, traceback): the seeding the caller asked for, made now
        # another shape (another torch version): the generators keep the default seed (the run has finished: a
        # best-effort restore must not turn it into an error)


def _run_training(cfg: Config, run_dir: str | Path, *, resume: bool, progress: bool | None,
                  log: Callable[[str], None], note: Callable[[str], None] | None, folder_key: str) -> RunResult:
    """:func:`run_training` inside :func:`callers_random_state`."""
    t0 = time.time()
    notes = log if note is None else note
    if _launched_worker():  # another DDP rank's process: rank 0 prints the run's lines (the same ones), once
        log = notes = _silent
    for text in config_notes(cfg):  # options the layering dropped (a name changed alone), as the dry run says them
        notes(f"note: {text}")
    progress = bool(cfg.trainer.progress_bar) if progress is None else bool(progress)
    if not resume:  # a relative data.root / model.pretrained_path recorded absolute, as `dynametric train` does
        cfg = anchored(cfg)
    run_dir = Path(run_dir)
    last = run_dir / "last.ckpt"
    if resume and not last.is_file():
        unstarted = _run_header(run_dir) is not None and unstarted_run_files(run_dir, folder_key)
        again = (f" (the run stopped before its first checkpoint; start it again with "
                 f"{_start_call(run_dir / 'config.yaml', run_dir, folder_key)})") if unstarted else ""
        raise InputError("no last.ckpt to resume from" + again, file=last)
    # accelerator, strategy, devices, precision on this machine: before any data is read or any file written
    _check_one_process_method(cfg)
    plan = plan_trainer(trainer_settings(cfg, progress_bar=progress))  # and the processes a launcher started
    world = plan.processes * int(cfg.trainer.num_nodes)  # the processes of all nodes: Lightning's world size
    resumed = check_resume(cfg, run_dir, folder_key, notes, processes=world) if resume else None
    # files of an earlier start of a run in run_dir that never trained
    leftovers = [] if resume else check_new_run_folder(run_dir, folder_key, whole=not _launched_worker())
    # the folder is this run's from here on (two runs started at the same moment passed the checks above alike)
    claim = claim_run_folder(run_dir, folder_key, resume=resume)
    try:
        if claim is not None and not resume:  # checked again, held: what a run that ended meanwhile left stays
            leftovers = [path for path in check_new_run_folder(run_dir, folder_key)
                         if path.name != LOCK_FILE and temp_target(path.name) != LOCK_FILE]
        return _train(cfg, run_dir, resume=resume, progress=progress, log=log, notes=notes, t0=t0, plan=plan,
                      world=world, resumed=resumed, leftovers=leftovers, folder_key=folder_key)
    finally:
        if claim is not None:
            claim.release()


@dataclass
class _RunParts:
    """What :func:`_train` builds before it writes a file: the data, the components, the logger, the trainer, the
    run's ``run_info.json`` so far and its test (:func:`_test_evaluator`). ``metrics``: the run's metrics as
    ``metrics.json`` has them, once there are any (what an interruption writes, :func:`_interrupted`)."""

    datasets: Any
    tests: dict[str, Any]
    own_protocol: MethodTestProtocol | None
    comps: Components
    exp_logger: Any
    dm: MetricDataModule
    trainer: L.Trainer
    info: dict[str, Any]
    test_eval: Callable[[str | None], dict[str, Any]]
    protocol_test: Any
    metrics: dict[str, Any] | None = None

    @property
    def module(self) -> MetricLearningModule:
        return self.comps.module

    @property
    def settings(self) -> TrainerSettings:
        return self.comps.trainer


class _Fitted(NamedTuple):
    """What the fit recorded, read before the test loads ``best.ckpt`` into the module (its ``on_load_checkpoint``
    would put back the loss history, skipped steps and record of the best epoch), and the step it started from."""

    resumed_step: int  # 0 for a new run; a resumed run's last.ckpt's global step
    was_tested: bool  # a finished run resumed: its test row was logged already
    record: dict[str, Any]
    loss_history: list[Any]
    skipped: int
    lr_history: dict[str, list[list[float]]]


def _train(cfg: Config, run_dir: Path, *, resume: bool, progress: bool, log: Callable[[str], None],
           notes: Callable[[str], None], t0: float, plan: Any, world: int,
           resumed: ResumedCheckpoint | None, leftovers: list[Path], folder_key: str) -> RunResult:
    """:func:`run_training` once its folder is checked and held. First what writes nothing (a refusal leaves the
    folder as it was): the data, the components, the logger and the trainer; then the run: its first files (or
    a resumed run's metrics), the fit, the test of the selected weights, and its results written by rank 0. How to
    go on after a stop is said in the words of the caller ``folder_key`` names (:func:`_resume_call`)."""
    datasets, tests, data_warnings, own_protocol = _read_run_data(cfg, world, notes)
    comps, exp_logger, components = _build_run_components(cfg, run_dir, datasets, world=world, progress=progress,
                                                          resumed=resumed, notes=notes)
    watch = _StageAtError()
    dm, trainer = _build_run_trainer(cfg, run_dir, datasets, comps, exp_logger, notes, watch)
    if resume:
        claim_resumed_run(run_dir, notes)
    info = _run_info(datasets, comps, plan, components, data_warnings)
    _say_scale_notes(cfg, datasets, tests, comps, info, notes)
    test_eval, protocol_test = _test_evaluator(cfg, own_protocol, comps.module, dm, datasets, comps.trainer, progress,
                                               tests)
    if own_protocol is not None:
        info["test_protocol"] = own_protocol.header()
    parts = _RunParts(datasets, tests, own_protocol, comps, exp_logger, dm, trainer, info, test_eval, protocol_test)
    waiting = rendezvous_note(cfg, world)  # said before the first Lightning call, where the wait is
    if waiting is not None:
        notes(waiting)
    phase = "untrained"  # where a GPU that runs out of memory was: the untrained evaluation, the fit, the test
    try:
        if not resume:
            metrics = _start_new_run(cfg, run_dir, parts, leftovers, log, notes)
        else:
            metrics = _resumed_metrics(run_dir, parts, log)
        phase = "fit"
        fitted = _fit(cfg, run_dir, parts, metrics, resume=resume, log=log)
        phase = "test"
        test_ckpt = _select_checkpoint(run_dir, parts, notes)
        _test_selected(parts, metrics, fitted, test_ckpt, log)
        view = _report_view(parts)
        heads = _test_heads(cfg, parts, progress)
    # Ctrl-C, or SIGTERM under the CLI (Lightning's own handling undone): stop here. SIGTERMException: SIGTERM seen
    # by Lightning's loops alone (no handler of the CLI), a SystemExit() with no code, which ended the process with
    # status 0 as if the run had finished; stopped as Ctrl-C stops it (the CLI says "interrupted by SIGTERM", 143)
    except (KeyboardInterrupt, SIGTERMException) as exc:
        raise _interruption(run_dir, parts, folder_key, sigterm=isinstance(exc, SIGTERMException)) from None
    except LoggerFailure as exc:  # the logger's package raised as the run wrote to it: one line, and how to go on
        raise _logger_stopped(exc, run_dir, parts, folder_key) from None
    except RuntimeError as exc:  # a collective's error: another process of the run ended (killed, out of memory)
        if gpu_out_of_memory(exc):  # torch.OutOfMemoryError: one line, the keys that lower the memory, how to go on
            raise _gpu_memory_error(exc, cfg, run_dir, parts, phase, watch, folder_key) from None
        if world <= 1 or not peer_lost(exc):
            raise
        raise _peer_lost_error(exc, run_dir, parts, world, folder_key) from None
    except OSError as exc:  # a full disk at a checkpoint (RUN/best.ckpt: No space left on device): how to go on
        # BrokenPipeError: a reader of stdout that left (the command line's quiet stop)
        if isinstance(exc, BrokenPipeError) or (error := _file_error(exc, run_dir, folder_key)) is None:
            raise
        raise error from exc
    earlier = _record_training(run_dir, parts, fitted, resume=resume, t0=t0)
    if trainer.is_global_zero:
        _write_results(cfg, run_dir, parts, metrics, fitted, view, bool(heads), earlier=earlier, t0=t0, log=log)
    return RunResult(run_dir, metrics, info)


def _read_run_data(cfg: Config, world: int, notes: Callable[[str], None]
                   ) -> tuple[Any, dict[str, Any], list[str], MethodTestProtocol | None]:
    """A step of :func:`_train`: the run's data, read and checked before anything is written (``data.root`` there,
    the seed set, the training split's errors first, the test's splits there and held out from training and
    validation, enough images for each process's shard). Returns the datasets, the test's splits, the warnings
    about classes they share (also said in ``notes``) and the method's own test protocol (e.g. DyML's), else
    ``None``."""
    check_data_root(cfg)  # data.root set and there (an error keyed data.root, with the place that set it)
    L.seed_everything(int(cfg.trainer.seed), workers=True, verbose=False)
    own_protocol = method_test_protocol(cfg)  # the method's own test protocol (e.g. DyML's), else None
    test_keys = protocol_split_keys(cfg)  # the splits the test evaluates: never trained or validated on
    datasets = build_datasets(cfg, with_test=False, test_splits=test_keys)  # the training split's errors first
    _check_test_splits(cfg)  # the test's splits are there: else the run fails after writing config.yaml
    for line in data_root_notes(cfg):  # what data inspect says of the root (a DyML release read as another)
        notes(line)
    # read once: query_in_gallery against the test's items, no image of them in training or validation
    tests, data_warnings = _held_out_data(cfg, datasets, test_keys, notes)
    if world > 1:  # each process evaluates a shard of every split
        check_eval_shards(cfg, {"validation": datasets.val, **tests}, world)
    if own_protocol is None and cfg.eval.protocol == "leave_one_out":
        datasets.test = tests[cfg.data.test_split]
    return datasets, tests, data_warnings, own_protocol


def _build_run_components(cfg: Config, run_dir: Path, datasets: Any, *, world: int, progress: bool,
                          resumed: ResumedCheckpoint | None, notes: Callable[[str], None]
                          ) -> tuple[Components, Any, dict[str, str]]:
    """A step of :func:`_train`: the components (:func:`build_components`), checked against the data before the
    untrained evaluation spends time, and the run's logger (:func:`_run_logger`). The module gets the resolved
    config, its hash and the components' classes (in every checkpoint); a resumed run's weights are checked
    against them. Returns the components, the logger and the components' classes."""
    from dynametric.config import config_hash, config_to_dict

    comps: Components = build_components(cfg, datasets=datasets, progress_bar=progress)
    check_backbone_forward(cfg, comps.embedder)  # a backbone reporting another width than it gives: nothing written
    check_batches(cfg, datasets.train, scale_names=comps.scale_names, carved=datasets.val_carved, world=world,
                  module=comps.module)  # before the untrained evaluation spends time (and before the other ranks start)
    # a monitored metric the validation data cannot give a value (every class a singleton at its scale)
    check_validation_queries(cfg, datasets.val, comps.trainer.monitor, comps.scale_names, datasets.val_source)
    exp_logger = _run_logger(cfg, run_dir, [f"{stage}/{comps.trainer.monitor}" for stage in ("val", "test")],
                             None if resumed is None else resumed.logger_run, notes)  # a missing extra fails here
    module = comps.module
    for line in setup_notes(cfg, comps.embedder, world, datasets.val is not None):
        notes(line)
    module.run_config, module.run_config_hash = config_to_dict(cfg), config_hash(cfg)  # in every checkpoint
    components = component_classes(cfg, comps.embedder)
    module.run_components = components  # in every checkpoint and run_info.json
    if resumed is not None:
        _note_changed_components(run_dir, resumed, components, notes)
        check_resume_weights(module, resumed.weights, run_dir / "last.ckpt")
    return comps, exp_logger, components


def _note_changed_components(run_dir: Path, resumed: ResumedCheckpoint, components: dict[str, str],
                             notes: Callable[[str], None]) -> None:
    """A resumed run's component name resolving to another class than when the run trained: said in a note, not
    refused (:func:`components_note`), against what ``last.ckpt`` records, else (a checkpoint of an earlier
    version) the finished run's ``run_info.json``, if any."""
    had, source = resumed.components, str(run_dir / "last.ckpt")
    if had is None:
        had, source = _recorded_components(run_dir), str(run_dir / "run_info.json")
    changed = components_note(had, components, source)
    if changed is not None:
        notes(changed)


def _build_run_trainer(cfg: Config, run_dir: Path, datasets: Any, comps: Components, exp_logger: Any,
                       notes: Callable[[str], None], watch: L.Callback | None = None
                       ) -> tuple[MetricDataModule, L.Trainer]:
    """A step of :func:`_train`: the run's data module and Lightning trainer, built before anything is written (a
    trainer Lightning refuses leaves no file behind). The resolved config is logged as the run's hyperparameters,
    and a plateau schedule without validation data is warned of once (the resolved config is logged as the run's
    hyperparameters once the run has begun: :func:`_log_hyperparameters`)."""
    module = comps.module
    loaders = _checked_loader_settings(cfg, notes)
    # each training batch's size checked as it is formed (a sampler of the user's giving another size: one line)
    dm = MetricDataModule(datasets.train, datasets.val, datasets.test,
                          batch_sampler_factory=checked_sampler_factory(cfg), eval_batch_size=cfg.data.eval_batch_size,
                          seed=int(cfg.trainer.seed), **loaders)
    warn = functools.partial(_warning_line, notes)
    trainer = build_trainer(comps.trainer, dm, run_dir, enable_validation=datasets.val is not None, logger=exp_logger,
                            callbacks=[ValidationToMetrics(run_dir / "metrics.json"), *([watch] if watch else [])],
                            warn=warn)
    if datasets.val is None and module.optim_settings.scheduler == "plateau":
        warn("optim.scheduler.name=plateau in a run without validation data: the learning rate never changes "
             "(the schedule steps on the validation trainer.monitor)")
        module.plateau_warned = True  # said here, once, not again by the module
    return dm, trainer


def _checked_loader_settings(cfg: Config, notes: Callable[[str], None]) -> dict[str, Any]:
    """The run's DataLoader keywords (:func:`~dynametric.engine.builders.loader_settings`) once the open files their
    workers need are there (``ulimit -n``, :func:`~dynametric.utils.limits.ensure_open_files`): the soft limit
    raised up to the hard one, else one line keyed ``data.workers``; ``data.workers: auto`` takes as many workers as
    the hard limit allows instead (a ``note:`` line says so); checked by the run and its dry run."""
    loaders = loader_settings(cfg)
    loaders["num_workers"] = ensure_open_files(loaders["num_workers"], loaders["prefetch_factor"], "data.workers",
                                               persistent=loaders["persistent_workers"],
                                               auto=notes if cfg.data.workers == "auto" else None)
    return loaders


def _run_info(datasets: Any, comps: Components, plan: Any, components: dict[str, str],
              data_warnings: list[str]) -> dict[str, Any]:
    """A step of :func:`_train`: ``run_info.json`` as the run starts (data sizes, validation source, scales,
    evaluation head, environment, components; the warnings about classes shared by the splits, if any)."""
    info: dict[str, Any] = {
        "train_images": len(datasets.train), "val_images": 0 if datasets.val is None else len(datasets.val),
        "test_images": len(datasets.test) if datasets.test is not None else None,
        "validation_source": datasets.val_source, "scale_names": comps.scale_names,
        "eval_head": comps.module.eval_head, "environment": run_environment(plan.accelerator),
        "components": components,
    }
    if data_warnings:
        info["data_warnings"] = data_warnings  # classes shared by training, validation and test data
    return info


def _say_scale_notes(cfg: Config, datasets: Any, tests: dict[str, Any], comps: Components, info: dict[str, Any],
                     notes: Callable[[str], None]) -> None:
    """A step of :func:`_train`: the preflight's lines about scales with a single class
    (:func:`~dynametric.engine.preflight.scale_notes`: a multiscale term training on nothing at a scale, a monitored
    scale with one validation class, ``mean`` rows averaging such scales in) said in ``notes`` and kept in
    ``run_info.json``'s ``notes`` (the report's Run section shows them)."""
    lines = scale_notes(cfg, datasets.train, datasets.val, tests, comps.trainer.monitor, comps.scale_names,
                        datasets.val_source)
    for line in lines:
        notes(line)
    if lines:
        info["notes"] = lines


def _start_new_run(cfg: Config, run_dir: Path, parts: _RunParts, leftovers: list[Path], log: Callable[[str], None],
                   notes: Callable[[str], None]) -> dict[str, Any]:
    """A step of :func:`_train` for a new run: its first files. An earlier start's leftovers replaced,
    ``config.yaml`` (rank 0), the ``run folder`` and ``data`` lines, the untrained model's test (logged) and
    ``metrics.json`` (rank 0). Returns the metrics, also set in ``parts.metrics`` once there are any."""
    from dynametric.config import save_config

    if leftovers:
        _remove_leftovers(run_dir, leftovers, notes)
    if not _launched_worker():
        header = _HEADER.format(folder=printable_path(run_dir.resolve()), pid=os.getpid(), host=socket.gethostname())
        save_config(cfg, run_dir / "config.yaml", header=header)
    _log_hyperparameters(parts)  # after config.yaml: a start stopped before it leaves no file the rerun cannot place
    info, datasets = parts.info, parts.datasets
    log(f"run folder: {printable_path(run_dir)}")
    log(f"data: {info['train_images']} train / {info['val_images']} validation ({datasets.val_source}) / "
        f"{_test_images(datasets.test, parts.tests)}; scales {parts.comps.scale_names}")
    log("evaluating the untrained model on the test split ...")
    untrained = parts.test_eval(None)
    log_results(parts.exp_logger, "untrained", untrained, step=0)
    metrics: dict[str, Any] = {"untrained": untrained, "validation": [], "test": {}}
    parts.metrics = metrics
    if not _launched_worker():  # rank 0 writes it (another rank's process would write the same again)
        atomic_write_json(run_dir / "metrics.json", nan_to_null(metrics))
    return metrics


def _remove_leftovers(run_dir: Path, leftovers: list[Path], notes: Callable[[str], None]) -> None:
    """The files of an earlier start that stopped before its first checkpoint, said and removed (``config.yaml``
    stays: :func:`_start_new_run` replaces it atomically)."""
    notes(f"run folder {run_dir}: replacing the files of an earlier start that stopped before its first "
        f"checkpoint ({', '.join(p.relative_to(run_dir).as_posix() for p in leftovers)})")
    for path in leftovers:
        if path.name != "config.yaml":  # replaced atomically
            path.unlink(missing_ok=True)


def _resumed_metrics(run_dir: Path, parts: _RunParts, log: Callable[[str], None]) -> dict[str, Any]:
    """A step of :func:`_train` for a resumed run: its ``metrics.json`` as it was (``null``: a metric without a
    value, NaN), also set in ``parts.metrics``; an unreadable one is an :class:`InputError` naming the file."""
    import json

    metrics_path = run_dir / "metrics.json"
    try:
        # null: a metric without a value (NaN), as metrics.json writes it
        metrics = parts.metrics = null_to_nan(json.loads(metrics_path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the run's metrics.json ({exc})", file=metrics_path) from None
    if not isinstance(metrics, dict):
        raise InputError(f"expected a JSON object, found {type(metrics).__name__}", file=metrics_path)
    log(f"resuming {run_dir} from {run_dir / 'last.ckpt'}")
    _log_hyperparameters(parts)
    return metrics


def _log_hyperparameters(parts: _RunParts) -> None:
    """The resolved config as the run's hyperparameters (TensorBoard's hparams, W&B's config, MLflow's params, the
    CSV logger's ``logs/hparams.yaml``): the module saves none, so the loggers had an empty set to compare runs by.
    Logged once the run has begun (a new run's ``config.yaml`` written, a resumed run's ``metrics.json`` read): when
    the trainer was built, a full disk or a kill before ``config.yaml`` left a folder holding only
    ``logs/hparams.yaml``, which the run started again refused (``not empty and holds no dynametric run``)."""
    parts.exp_logger.log_hyperparams(parts.module.run_config)


def _fit(cfg: Config, run_dir: Path, parts: _RunParts, metrics: dict[str, Any], *, resume: bool,
         log: Callable[[str], None]) -> _Fitted:
    """A step of :func:`_train`: the fit (a resumed run's from ``last.ckpt``). The validation history goes into
    ``metrics`` and an early stop into the run's info (and a line); returns what the training recorded."""
    trainer, module, last = parts.trainer, parts.module, run_dir / "last.ckpt"
    resumed_step = int(trainer.global_step)  # 0 here: Lightning restores the step inside fit
    was_tested = resume and bool(metrics.get("test"))  # a finished run resumed: its test row is logged
    L.seed_everything(int(cfg.trainer.seed), workers=True, verbose=False)
    if resume:
        resumed_step = int(load_checkpoint_file(last).get("global_step", -1))
    # the filters of before put back after the fit: under DDP the module turns off Lightning's advice to sync its
    # loss terms (engine.module._no_sync_dist_advice), for the fit only (run_training changes no filter)
    with ctrl_c_passes_through(trainer), warnings.catch_warnings():
        trainer.fit(module, datamodule=parts.dm, ckpt_path=str(last) if resume else None)
    metrics["validation"] = module.validation_history
    stopped = _early_stopping(trainer)
    if stopped is not None:
        parts.info["early_stopping"] = stopped
        log(f"early stopping ended training after epoch {stopped['epoch']}: {stopped['reason']}")
    # what the training recorded, read before the test loads best.ckpt into the module (its on_load_checkpoint
    # would put back the loss history, skipped steps and record of the best epoch)
    return _Fitted(resumed_step, was_tested, module.run_record(), list(module.loss_history), module.skipped_steps,
                   dict(module.lr_history))


def _select_checkpoint(run_dir: Path, parts: _RunParts, notes: Callable[[str], None]) -> str | None:
    """A step of :func:`_train`: the weights the test uses, recorded as the run's info's ``selected``:
    ``best.ckpt`` (returned; one this run did not save, put in the folder while it trained, is refused:
    :func:`check_run_checkpoint`), else the final weights (``None``) and why (:func:`_final_weights_reason`)."""
    best = run_dir / "best.ckpt"
    if best.is_file():
        ckpt = load_checkpoint_file(best)
        module = parts.module  # the one it tests: saved by this run (one put there while it trained is refused)
        if module.run_config is not None and module.run_config_hash is not None:
            check_run_checkpoint(best, module.run_config, {module.run_config_hash}, run_dir, _no_note, ckpt)
        parts.info["selected"] = {"checkpoint": "best.ckpt", "epoch": int(ckpt.get("epoch", -1)),
                                  "global_step": int(ckpt.get("global_step", -1)), "monitor": parts.settings.monitor}
        return str(best)
    parts.info["selected"] = {"checkpoint": "final weights", "reason": _final_weights_reason(best, parts, notes)}
    return None


def _final_weights_reason(best: Path, parts: _RunParts, notes: Callable[[str], None]) -> str:
    """Why a run without ``best.ckpt`` tests its final weights; a ``best.ckpt`` the run recorded but that is gone
    is also a warning in ``notes``."""
    trainer, module, settings = parts.trainer, parts.module, parts.settings
    recorded = _recorded_best(trainer)
    if parts.datasets.val is None:
        return "no validation split"
    if recorded:
        reason = (f"best.ckpt is missing from the run folder (the run recorded its best checkpoint as "
                  f"{recorded}, but the file is gone)")
        notes(f"warning: {best} is missing: testing the final weights instead of the best validation epoch")
        return reason
    if not module.validation_history:
        return (f"no validation ran before training stopped at step {int(trainer.global_step)}; validation "
                f"runs at the end of every trainer.val_every={settings.val_every_n_epochs} epoch(s)")
    if all(_monitored(h, settings.monitor) is None for h in module.validation_history):
        return (f"the monitored val/{settings.monitor} had no value (NaN) in every validation round, so "
                "no round could be selected")
    return "validation wrote no best.ckpt"


def _test_selected(parts: _RunParts, metrics: dict[str, Any], fitted: _Fitted, test_ckpt: str | None,
                   log: Callable[[str], None]) -> None:
    """A step of :func:`_train`: the test of the selected weights (``test_ckpt``; ``None``: the final ones) into
    ``metrics["test"]``, logged by rank 0 unless a finished run resumed without training further logged it
    already (``logs/metrics.csv`` and the other loggers)."""
    selected, trainer = parts.info["selected"], parts.trainer
    log(f"testing {selected['checkpoint']}" + (f" ({selected['reason']})" if "reason" in selected else "")
        + " on the test split ...")
    metrics["test"] = parts.test_eval(test_ckpt)
    if trainer.is_global_zero and not (fitted.was_tested and int(trainer.global_step) == fitted.resumed_step):
        log_results(parts.exp_logger, "test", metrics["test"], step=int(trainer.global_step))


def _report_view(parts: _RunParts) -> tuple[Any, Any]:
    """The report's retrieval view: the embeddings and labels, and the dataset they are of. The test's, or the
    validation images embedded by the tested weights where the method's own test sets do not suit the report's
    (multi-scale) views (DyML Vehicle/Animal: one label each; said in the info's ``report_view_set``), or the
    view the test protocol picked."""
    datasets, own_protocol, protocol_test = parts.datasets, parts.own_protocol, parts.protocol_test
    if (own_protocol is not None and own_protocol.report_view_uses_validation and datasets.val is not None
            and protocol_test is not None):
        emb_labels = protocol_test.embed_with(datasets.val, None)
        parts.info["report_view_set"] = own_protocol.report_view_note
        return emb_labels, datasets.val
    if protocol_test is not None and protocol_test.view is not None:
        return protocol_test.view[:2], protocol_test.view[2]
    return parts.module.last_embeddings, datasets.test


def _test_heads(cfg: Config, parts: _RunParts, progress: bool) -> dict[str, Any]:
    """A step of :func:`_train`: a multi-head run's test of each head (:func:`_head_results`), kept in the
    info's ``test_by_head``; ``{}`` for one head or without a leave-one-out test set."""
    datasets = parts.datasets
    heads = {} if datasets.test is None else _head_results(cfg, parts.module, parts.dm, datasets.test,
                                                          parts.settings, progress)
    if heads:
        parts.info["test_by_head"] = heads
    return heads


def _interruption(run_dir: Path, parts: _RunParts, folder_key: str, *, sigterm: bool) -> Interrupted:
    """A run stopped by Ctrl-C or SIGTERM: :func:`_interrupted` (rank 0 writes the validation done so far), once
    the other ranks a SIGTERM was passed on to stopped."""
    interrupted = _interrupted(run_dir, parts.metrics, parts.module.validation_history,
                               write=parts.trainer.is_global_zero, folder_key=folder_key, sigterm=sigterm)
    end_launched_ranks()  # the other ranks a SIGTERM was passed on to: stopped before this process says so
    return interrupted


def _logger_stopped(exc: LoggerFailure, run_dir: Path, parts: _RunParts, folder_key: str) -> LoggerFailure:
    """The logger's package raised as the run wrote to it: the other ranks stopped, the validation done so far
    written (:func:`_interrupted`), and the logger's line with how to go on."""
    signal_launched_ranks(signal.SIGTERM)  # the other ranks would wait for this one
    how = _interrupted(run_dir, parts.metrics, parts.module.validation_history,
                       write=parts.trainer.is_global_zero, folder_key=folder_key).next_step
    end_launched_ranks()
    return LoggerFailure(exc.message + (f"; {how}" if how else ""), key=exc.key)


class RunFileError(DynametricError, OSError):
    """An error of the file system once a run had begun (a full disk at a checkpoint), still the ``OSError`` it was
    (its ``errno``, ``strerror`` and ``filename``), whose message adds how to go on (:func:`_file_error`)."""

    def __init__(self, exc: OSError, line: str) -> None:
        super().__init__(exc.errno, exc.strerror, exc.filename)
        self.line = line

    def __str__(self) -> str:
        return self.line


def _file_error(exc: OSError, run_dir: Path, folder_key: str) -> RunFileError | None:
    """A write of the run failed once it had its first ``last.ckpt`` (a full disk at a later checkpoint): the
    command line's line for the error (``RUN/best.ckpt: No space left on device (...)``) with how to go on, as after
    a logger's failure: ``resume with: dynametric train --resume RUN`` (a Python call, ``folder_key``
    :data:`PYTHON_FOLDER_KEY`: ``resume with: run_training(..., resume=True)``); ``None`` before the first ``last.ckpt``
    (the error is raised as it was). The files written so far are kept as
    they are: nothing more is written on a disk that is full."""
    from dynametric.errors import os_error_line

    if not (run_dir / "last.ckpt").is_file():
        return None
    return RunFileError(exc, f"{os_error_line(exc)}; resume with: {_resume_call(run_dir, folder_key)}")


class _StageAtError(L.Callback):
    """Where the fit was when an error ended it: the trainer's stage (training, validating, ...), step and epoch,
    read in Lightning's ``on_exception`` (Lightning resets the stage before the error reaches the caller)."""

    def __init__(self) -> None:
        self.stage: RunningStage | None = None
        self.step = 0
        self.epoch = 0

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self.stage, self.step, self.epoch = trainer.state.stage, int(trainer.global_step), int(trainer.current_epoch)


class RunOutOfMemory(DynametricError, torch.cuda.OutOfMemoryError):
    """A GPU ran out of memory during a run (:func:`_gpu_memory_error`): one line saying where, what lowers the
    memory and how to go on; still the ``torch.OutOfMemoryError`` it was for a Python caller that catches that."""


_FULL_PRECISIONS = ("32", "32-true", "64", "64-true")


def _gpu_memory_error(exc: RuntimeError, cfg: Config, run_dir: Path, parts: _RunParts, phase: str,
                      watch: _StageAtError, folder_key: str) -> RunOutOfMemory:
    """A GPU ran out of memory in the run (``phase``: ``untrained`` evaluation, ``fit``, ``test``; ``watch`` says
    whether the fit was training or validating): the validation done so far written as after Ctrl-C
    (:func:`_interrupted`), the other ranks stopped, and the line: where (step and epoch), the allocation, the keys
    that lower the memory (``data.batch_size`` in training; ``data.eval_batch_size`` / ``eval.memory_budget_bytes``
    in an evaluation; ``trainer.precision=bf16-mixed`` from a full precision) and how to go on: a resumed run keeps
    its config, so resume once the GPU's memory is free, or start a new run with the lower value (before the first
    ``last.ckpt``: start again in the same folder), in the words of the caller ``folder_key`` names."""
    signal_launched_ranks(signal.SIGTERM)  # the other ranks would wait for this one
    _interrupted(run_dir, parts.metrics, parts.module.validation_history, write=parts.trainer.is_global_zero,
                 folder_key=folder_key)
    end_launched_ranks()
    if phase == "fit" and watch.stage not in (RunningStage.VALIDATING, RunningStage.SANITY_CHECKING):
        # steps and epochs counted as the non-finite messages count them; outside a step: restoring a checkpoint
        where = (f"training at global step {watch.step} (epoch {watch.epoch})" if watch.stage == RunningStage.TRAINING
                 else f"in the fit at global step {watch.step} (epoch {watch.epoch}), outside a training step")
        key, now = "data.batch_size", cfg.data.batch_size
        lower = (f"data.batch_size (now {now}; trainer.accumulate_grad_batches=K makes a step of K batches, "
                 "with the loss of each batch alone)")
    else:
        where = {"untrained": "evaluating the untrained model", "test": "testing the trained model"}.get(
            phase, f"validating in epoch {watch.epoch}")
        key, now = "data.eval_batch_size", cfg.data.eval_batch_size
        lower = f"data.eval_batch_size (now {now}) or eval.memory_budget_bytes (the ranking's working memory)"
    if str(cfg.trainer.precision) in _FULL_PRECISIONS:
        lower += f", or set trainer.precision=bf16-mixed (now {cfg.trainer.precision})"
    detail = gpu_memory_detail(exc)
    config, override = run_dir / "config.yaml", f"{key}=B"
    if (run_dir / "last.ckpt").is_file():
        how = (f"free the GPU's memory (other processes on it) and resume with: {_resume_call(run_dir, folder_key)}; "
               f"or lower {lower} in a new run (a resumed run keeps its config; B < {now}): "
               f"{_start_with(config, None, folder_key, override)}")
    elif config.is_file():
        how = (f"no checkpoint yet; lower {lower} and start again (B < {now}): "
               f"{_start_with(config, run_dir, folder_key, override)}")
    else:
        how = f"lower {lower}"
    return RunOutOfMemory(f"out of GPU memory {where}{f' ({detail})' if detail else ''}: {how}")


def _start_with(config: Path, run_dir: Path | None, folder_key: str, override: str) -> str:
    """:func:`_start_call` with one ``KEY=VALUE`` override: the command line's word after the call, a Python
    call's ``load_config(CONFIG, [OVERRIDE])``."""
    if folder_key == PYTHON_FOLDER_KEY:
        where = "NEW" if run_dir is None else repr(str(run_dir))
        return f"run_training(load_config({str(config)!r}, [{override!r}]), {where})"
    return f"{_start_call(config, run_dir, folder_key)} {override}"


def _peer_lost_error(exc: RuntimeError, run_dir: Path, parts: _RunParts, world: int,
                     folder_key: str) -> DynametricError:
    """Another process of a several-process run ended (:func:`peer_lost`): the processes this one started
    stopped too, the validation done so far written (:func:`_interrupted`), and one line with the collective's
    reason and how to go on."""
    signal_launched_ranks(signal.SIGTERM)  # the others this process started, if any: stopped too
    how = _interrupted(run_dir, parts.metrics, parts.module.validation_history,
                       write=parts.trainer.is_global_zero, folder_key=folder_key).next_step
    end_launched_ranks()
    reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
    reason = re.sub(r"^\[[^\]]*\]\s*", "", reason).split(". ")[0]  # gloo's source location and advice
    return DynametricError(f"another process of this {world}-process run ended while this one waited for it "
                           f"({reason}): killed, out of memory, or stopped on an error of its own (its "
                           "'error (rank N):' line, above)" + (f"; {how}" if how else ""))


def _record_training(run_dir: Path, parts: _RunParts, fitted: _Fitted, *, resume: bool, t0: float) -> float:
    """A step of :func:`_train`: what the training recorded into the run's info (the module's record, skipped
    steps, global step, processes, wall time); returns the wall time of a resumed run's earlier processes."""
    info, trainer = parts.info, parts.trainer
    for key, value in fitted.record.items():  # alternating steps, MIC's clusterings
        info.setdefault(key, value)
    info["skipped_nonfinite_steps"] = fitted.skipped
    info["global_step"] = int(trainer.global_step)
    info["processes"] = int(trainer.world_size)  # the global batch and the results depend on it (training.md, DDP)
    earlier = _earlier_time(run_dir, trainer) if resume else 0.0
    info["wall_time_s"] = round(earlier + time.time() - t0, 1)
    return earlier


def _write_results(cfg: Config, run_dir: Path, parts: _RunParts, metrics: dict[str, Any], fitted: _Fitted,
                   view: tuple[Any, Any], other_heads: bool, *, earlier: float, t0: float,
                   log: Callable[[str], None]) -> None:
    """A step of :func:`_train` (rank 0): ``metrics.json``, ``report.html`` (with ``run.report``),
    ``run_info.json``, the logger finalized, the results table and the ``wrote`` line. A logger that failed at
    its last writes is a :class:`LoggerFailure` raised after all that, saying the run itself finished."""
    metrics_path, info, exp_logger = run_dir / "metrics.json", parts.info, parts.exp_logger
    atomic_write_json(metrics_path, nan_to_null(metrics))
    late_failure: LoggerFailure | None = None  # the logger's last writes: the run's own files are written
    if cfg.run.report:
        late_failure = _write_run_report(cfg, run_dir, parts, metrics, fitted, view)
        # the report's time counts (its embedding map and retrieval views took 11 of a resumed run's last 14 s)
        info["wall_time_s"] = round(earlier + time.time() - t0, 1)
    info["logger"] = cfg.run.logger
    if late_failure is not None:
        info["logger_failure"] = late_failure.message
    atomic_write_json(run_dir / "run_info.json", nan_to_null(info))
    if exp_logger is not None and late_failure is None:
        try:
            exp_logger.finalize("success")
        except LoggerFailure as exc:
            late_failure = exc
    comps, module = parts.comps, parts.module
    _summary(metrics, comps.scale_names, log, module.eval_head, other_heads, parts.settings.monitor, cfg.run.report)
    log(f"wrote {metrics_path}" + (f" and {run_dir / 'report.html'}" if cfg.run.report else ""))
    if late_failure is not None:  # the run finished: say so, and that only the logger's copy is short
        raise LoggerFailure(f"{late_failure.message}; the run itself finished (its results: {metrics_path}, "
                            f"run_info.json, the checkpoints{', report.html' * bool(cfg.run.report)}); only "
                            "the logger's copy of the run is incomplete", key=late_failure.key) from None


def _write_run_report(cfg: Config, run_dir: Path, parts: _RunParts, metrics: dict[str, Any], fitted: _Fitted,
                      view: tuple[Any, Any]) -> LoggerFailure | None:
    """``report.html`` (:func:`~dynametric.pipeline.report.write_report`), and its figures handed to the logger
    (the info's ``logged_figures``); returns the logger's failure at that, if any."""
    from dynametric.config import config_to_yaml

    emb_labels, report_set = view
    emb, labels = emb_labels if emb_labels is not None else (None, None)
    write_report(run_dir / "report.html", metrics=metrics, loss_history=fitted.loss_history,
                 lr_history=fitted.lr_history, scale_names=parts.comps.scale_names, config_yaml=config_to_yaml(cfg),
                 emb=emb, labels=labels, dataset=report_set, distance=cfg.eval.distance,
                 monitor=parts.settings.monitor, seed=int(cfg.trainer.seed),
                 title=f"dynametric run {printable_path(run_dir.name)}",
                 record=fitted.record, run=parts.info)
    try:
        parts.info["logged_figures"] = log_figures(parts.exp_logger, report_figures(
            (run_dir / "report.html").read_text(encoding="utf-8")), step=int(parts.trainer.global_step))
    except LoggerFailure as exc:
        return exc
    return None


#: What gloo's collectives say when the process at the other end of a connection ended.
_PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")


def peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective's error saying that another process of the run ended (gloo's ``Connection
    reset by peer``): rank 0 printed it as a multi-page ``[rank0]`` traceback, exit status 1, with no word on how to
    go on."""
    return isinstance(exc, RuntimeError) and any(text in str(exc) for text in _PEER_GONE)


def run_environment(accelerator: str) -> dict[str, Any]:
    """What produced a run's numbers, for ``run_info.json`` and the report: the versions of dynametric, Python,
    torch, Lightning, numpy and timm, the host name and platform, the accelerator and the start time (UTC,
    ISO 8601; a resumed run records its own start)."""
    import platform
    from datetime import datetime, timezone
    from importlib import metadata

    import dynametric

    versions: dict[str, str | None] = {"dynametric": dynametric.__version__, "python": platform.python_version(),
                                       "torch": torch.__version__}
    for dist in ("lightning", "numpy", "timm"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    return {"versions": versions, "host": platform.node(), "platform": platform.platform(),
            "accelerator": accelerator, "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def _warning_line(note: Callable[[str], None], message: str) -> None:
    note(f"warning: {message}")


def _callbacks(trainer: L.Trainer) -> list[L.Callback]:
    return list(getattr(trainer, "callbacks", []))  # a Trainer property its stubs do not declare


def _early_stopping(trainer: L.Trainer) -> dict[str, Any] | None:
    """:meth:`~dynametric.engine.callbacks.RunEarlyStopping.summary` of the run's early stopping (also when a
    resumed run restored a stop decided before the kill), ``None`` when it did not end training."""
    return next((cb.summary() for cb in _callbacks(trainer) if isinstance(cb, RunEarlyStopping)), None)


def _recorded_best(trainer: L.Trainer) -> str | None:
    """The ``best.ckpt`` the run's checkpoint state records (its epoch), when there is one."""
    for cb in _callbacks(trainer):
        if isinstance(cb, RunCheckpoint) and cb.best_model_path:
            score = cb.best_model_score
            return f"{Path(cb.best_model_path).name}" + ("" if score is None else f" (score {float(score):.4f})")
    return None


def _monitored(history_entry: dict[str, Any], monitor: str) -> float | None:
    """The monitored value of a validation round (``monitor``: ``fine/map@r``), ``None`` when missing or NaN."""
    scale, metric = split_monitor(monitor)
    value = history_entry.get(scale, {}).get(metric) if isinstance(history_entry.get(scale), dict) else None
    return float(value) if isinstance(value, (int, float)) and value == value else None


def _recorded_components(run_dir: Path) -> dict[str, Any] | None:
    """The ``components`` a finished run's ``run_info.json`` records (``None``: no such file or entry)."""
    import json

    try:
        recorded = json.loads((run_dir / "run_info.json").read_text(encoding="utf-8")).get("components")
    except (OSError, ValueError, AttributeError):
        return None
    return recorded if isinstance(recorded, dict) else None


def _earlier_time(run_dir: Path, trainer: L.Trainer) -> float:
    """The wall time of a resumed run's earlier processes: a finished run's ``run_info.json`` ``wall_time_s`` (the
    whole of them), else what the resumed ``last.ckpt`` recorded (``ResumeState``: each process's time until its
    last checkpoint; the time a killed process spent after it is not known)."""
    import json

    try:
        earlier = json.loads((run_dir / "run_info.json").read_text(encoding="utf-8")).get("wall_time_s")
    except (OSError, ValueError, AttributeError):
        earlier = None
    if isinstance(earlier, (int, float)) and earlier >= 0:
        return float(earlier)
    return next((cb.restored_elapsed_s for cb in _callbacks(trainer) if isinstance(cb, ResumeState)), 0.0)


def _relay(caught: list[warnings.WarningMessage], note: Callable[[str], None]) -> None:
    """dynametric's own warnings of a dry run as the dry run's ``warning:`` lines (each once); others are
    re-issued as they were."""
    package = str(Path(__file__).resolve().parent.parent)
    seen: set[str] = set()
    for w in caught:
        text = str(w.message)
        if not str(Path(w.filename).resolve()).startswith(package):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        elif text not in seen:
            seen.add(text)
            note(f"warning: {text}")


def _eval_crop(cfg: Config) -> int:
    """The side of the images the config's evaluation transform gives (the preset's crop, ``data.image_size``, or
    the synthetic generator's ``image_size``)."""
    from dynametric.engine.builders import transform_for

    transform = transform_for(cfg, False, for_images=True)
    spec = getattr(transform, "spec", None)
    if spec is not None:
        return int(spec.size)
    for step in getattr(transform, "transforms", []):  # the synthetic data's Resize((side, side))
        size = getattr(step, "size", None)
        if isinstance(size, (tuple, list)) and size:
            return int(size[0])
    return 224


def check_backbone_forward(cfg: Config, embedder: torch.nn.Module) -> None:
    """The backbone's features fit the heads (what a run would only meet at its first forward pass, after writing
    its folder): :meth:`~dynametric.models.Embedder.check_forward` on one blank image of the evaluation crop (one
    CPU forward of a single image, before the model moves to its device). The dry run and the run call it alike."""
    check_forward = getattr(embedder, "check_forward", None)
    if callable(check_forward):
        check_forward(_eval_crop(cfg), cfg.model.in_chans)


def dry_run(cfg: Config, log: Callable[[str], None] = print, *, note: Callable[[str], None] | None = None,
            run_dir: str | Path | None = None, folder_key: str = PYTHON_FOLDER_KEY) -> Components:
    """Validate the config and build model, losses, miners and optimizer; no training, no dataset required. Prints
    the resolved config, the components, the trainer and DataLoader settings on this machine (``loader:``, with
    ``data.workers: auto`` resolved) and, when the data is there, its sizes. ``run_dir`` (named ``folder_key``):
    the folder the run would write, checked as the run checks it (:func:`check_new_run_folder`), nothing written.

    Never downloads: a config with ``model.pretrained: true`` is built with random weights and the dry run says
    whether the pretrained weights are already cached (else where a real run would fetch them from). The caller's
    grad mode is the same afterwards (also after an error). ``log`` and ``note``: as :func:`run_training`'s (the
    notes and warnings go to ``note``, the description to ``log``)."""
    with torch.set_grad_enabled(torch.is_grad_enabled()):  # restores the mode on the way out
        if run_dir is not None:
            check_new_run_folder(Path(run_dir), folder_key)
        return _dry_run(anchored(cfg), log, log if note is None else note, run_dir)


def _dry_run(cfg: Config, log: Callable[[str], None], notes: Callable[[str], None],
             run_dir: str | Path | None = None) -> Components:
    """:func:`dry_run` once the folder is checked: the checks a run makes before it writes anything (on this
    machine, on the data when it is there, on the components and the logger), then the description: the
    resolved configuration, the components, the trainer, the set-up notes, the loader and the data."""
    shown = cfg
    for text in config_notes(cfg):  # options the layering dropped (a name changed alone), as the run says them
        notes(f"note: {text}")
    cfg, weights_note = _without_download(cfg)
    settings = trainer_settings(cfg, progress_bar=False)
    _check_one_process_method(cfg)
    plan = plan_trainer(settings)  # this machine: the accelerator, a float16 precision on the CPU, Lightning
    world = plan.processes * int(cfg.trainer.num_nodes)  # the processes of all nodes: Lightning's world size
    loaders = _checked_loader_settings(cfg, notes)  # the open files of the loader workers, as the run checks them
    datasets, tests = _dry_run_data(cfg, world, notes)
    comps = _dry_run_components(cfg, datasets, world, run_dir, notes)
    if datasets is not None:  # as the run says them, before training
        for line in scale_notes(cfg, datasets.train, datasets.val, tests, comps.trainer.monitor, comps.scale_names,
                                datasets.val_source):
            notes(line)
    _describe_components(cfg, shown, comps, weights_note, log)
    log(_trainer_line(cfg, settings, plan, world, comps.module.channels_last))
    # the datasets not built (a dry run without data): validation taken as there, as it usually is
    for line in setup_notes(cfg, comps.embedder, world, datasets is None or datasets.val is not None):
        notes(line)
    log(_loader_line(cfg, loaders))
    log(_dry_run_data_line(cfg, datasets, comps))
    return comps


def _without_download(cfg: Config) -> tuple[Config, str | None]:
    """A config with ``model.pretrained: true`` as the dry run builds it: checked as a real run checks the request,
    then with random weights (``model.pretrained`` off: nothing downloaded), and the ``pretrained weights:`` line
    saying whether they are cached (else where a real run fetches them from). Other configs: as they are, no
    line."""
    if not cfg.model.pretrained:
        return cfg, None
    import dataclasses

    from dynametric.models.backbones import check_pretrained_request, pretrained_weights_status

    check_pretrained_request(cfg.model.backbone, cfg.model.in_chans)  # what a real run refuses, nothing loaded
    cached, where = pretrained_weights_status(cfg.model.backbone)
    weights_note = (f"pretrained weights: cached ({where})" if cached else
                    f"pretrained weights: NOT cached; a real run downloads them from {where} (offline: put the "
                    "file in the cache or set model.pretrained=false and model.pretrained_path)"
                    if cached is False else f"pretrained weights: {where}")
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, pretrained=False)), weights_note


def _dry_run_data(cfg: Config, world: int, notes: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """The data as a run reads and checks it (:func:`_read_run_data`'s checks) and the test's splits, or ``(None,
    {})`` with a warning when ``data.root`` is not set or not there (the split names checked alone, as a run checks
    them first)."""
    test_keys = protocol_split_keys(cfg)
    if root_missing(cfg):
        check_split_roles(cfg, test_keys)  # the split names alone, as a run checks them before reading data
        state = "data.root is not set" if cfg.data.root is None else f"dataset root {cfg.data.root!r} not found"
        notes(f"warning: {state} (format {cfg.data.format!r}): a real run will fail; "
            "continuing the dry run without data (class counts are placeholders)")
        return None, {}
    datasets = build_datasets(cfg, with_test=False, test_splits=test_keys)  # the training split's errors first
    _check_test_splits(cfg)  # as a real run does before it writes anything
    for line in data_root_notes(cfg):  # as the run says them
        notes(line)
    tests, _ = _held_out_data(cfg, datasets, test_keys, notes)
    if world > 1:
        check_eval_shards(cfg, {"validation": datasets.val, **tests}, world)
    return datasets, tests


def _dry_run_components(cfg: Config, datasets: Any, world: int, run_dir: str | Path | None,
                        notes: Callable[[str], None]) -> Components:
    """The components built and checked as a run builds them (the builders' warnings as ``warning:`` lines,
    :func:`_relay`; the backbone's width; the batches, with data), and the logger checked, not made."""
    from dynametric.engine.loggers import check_logger

    with warnings.catch_warnings(record=True) as caught:  # the builders' notes (placeholders without data)
        warnings.simplefilter("always")
        comps = build_components(cfg, datasets=datasets, progress_bar=False)
    _relay(caught, notes)
    check_backbone_forward(cfg, comps.embedder)
    if datasets is not None:
        check_batches(cfg, datasets.train, scale_names=comps.scale_names, carved=datasets.val_carved, world=world,
                      module=comps.module)
    # a missing extra, an option the logger does not take, an MLflow store that cannot work here: refused where a
    # real run's build_logger refuses it (nothing written: the logger is not made)
    check_logger(cfg.run.logger, cfg.run.logger_options, run_dir)
    return comps


def _describe_components(cfg: Config, shown: Config, comps: Components, weights_note: str | None,
                         log: Callable[[str], None]) -> None:
    """The dry run's ``# resolved configuration`` (``shown``: the config as given) and ``# components``: the
    model, the pretrained weights' line, each loss term, each parameter group, the optimizer and scheduler."""
    from dynametric.config import config_to_yaml

    optimizer = comps.module.configure_optimizers()
    opt = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    log("# resolved configuration")
    log(config_to_yaml(shown).rstrip())
    log("# components")
    n_params = sum(p.numel() for p in comps.embedder.parameters())
    log(f"model: {cfg.model.backbone}, {n_params:,} parameters")
    if weights_note is not None:
        log(weights_note)
    for obj in comps.objectives:
        log(f"loss term {obj.name!r}: {type(obj.loss).__name__} (head={obj.head}, weight={obj.weight}), "
            f"miner={term_miners(obj)}")
    for g in parameter_groups(comps.embedder, comps.objectives, comps.module.optim_settings):
        log(f"param group {g['name']}: {sum(p.numel() for p in g['params']):,} parameters, lr={g['lr']}, "
            f"weight_decay={g['weight_decay']}")
    log(f"optimizer: {type(opt).__name__}; scheduler: {cfg.optim.scheduler.name}")


def _trainer_line(cfg: Config, settings: TrainerSettings, plan: Any, world: int, channels_last: bool) -> str:
    """The dry run's ``trainer:`` line: the configured settings, the accelerator they train on here, whether the
    run compiles the embedder (``trainer.compile``) and feeds it channels_last batches (``channels_last``: the built
    module's, ``model.channels_last`` with its ``null`` rule resolved for this machine) and, for several processes,
    how many (on each node) and whether they share this machine's CPU cores."""
    processes = ""
    if world > 1:  # all nodes' processes (the run has them all), those of this machine compared with its cores
        cores = os.cpu_count() or 1
        nodes = int(cfg.trainer.num_nodes)
        processes = (f"; {world} training processes ({plan.strategy}"
                     + (f", {plan.processes} on each of {nodes} nodes" if nodes > 1 else "") + ")"
                     + (f", more than the {cores} CPU cores here: they share them"
                        if plan.accelerator == "cpu" and plan.processes > cores else ""))
    return (f"trainer: accelerator {settings.accelerator} (trains on {plan.accelerator} here), strategy "
            f"{settings.strategy}, devices {settings.devices}, precision {settings.precision}, compile "
            f"{str(bool(cfg.trainer.compile)).lower()}, channels_last {str(bool(channels_last)).lower()}"
            f"{' (model.channels_last null: resolved here)' if cfg.model.channels_last is None else ''}{processes}")


def _loader_line(cfg: Config, loader: dict[str, Any]) -> str:
    """The dry run's ``loader:`` line: what the run's DataLoaders get on this machine (``loader``, with
    ``data.workers: auto`` resolved within the open-file limit) and the batch sizes."""
    d = cfg.data
    worker_keys = (f"persistent_workers {str(loader['persistent_workers']).lower()}, prefetch_factor "
                   f"{loader['prefetch_factor']}" if loader["num_workers"] else
                   "persistent_workers and prefetch_factor unused (no workers)")
    return (f"loader: workers {'auto -> ' if d.workers == 'auto' else ''}{loader['num_workers']}, pin_memory "
            f"{str(loader['pin_memory']).lower()}, {worker_keys}; batches of {d.batch_size} per process (sampler "
            f"{d.sampler}), evaluation batches of {d.eval_batch_size}")


def _dry_run_data_line(cfg: Config, datasets: Any, comps: Components) -> str:
    """The dry run's ``data:`` line: the sizes and scales of the data read, or the scales without data (the
    format's own names, or placeholders)."""
    if datasets is not None:
        return (f"data: {len(datasets.train)} train / {0 if datasets.val is None else len(datasets.val)} validation "
                f"({datasets.val_source}); scales {datasets.scale_names}")
    named = "the format's own" if declared_scale_names(cfg) is not None else "placeholders"
    return f"data: not read; scales {comps.scale_names} ({named})"
