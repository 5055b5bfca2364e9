"""Lightning ``Trainer`` construction from :class:`TrainerSettings` (checkpoints, precision, DDP, seeds)."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from dynametric.config.schema import (
    FP16_PRECISIONS,
    OptimConfig,
    TrainerConfig,
    check_accelerator,
    check_precision,
    check_strategy,
)
from dynametric.engine.callbacks import MonitorWatch, ResumeState, RunCheckpoint, RunEarlyStopping, runtime_warning
from dynametric.engine.checkpoint import SafeCheckpointIO
from dynametric.engine.data import MetricDataModule
from dynametric.engine.loggers import KeepingCSVLogger
from dynametric.engine.module import DEFAULT_MONITOR
from dynametric.errors import ConfigError
from dynametric.utils.seeds import check_seed

_T, _O = TrainerConfig(), OptimConfig()  # the defaults below are the schema's: one default per choice


@dataclass
class TrainerSettings:
    """Training-loop options, resolved from the ``trainer`` config section (and ``optim.grad_clip``) by
    :func:`dynametric.engine.builders.trainer_settings`. Defaults are the schema's; ``max_steps`` and
    ``checkpoint_every_n_steps`` use Lightning's "off" values (``-1``, ``0``) where the schema says ``None``, and
    ``monitor`` holds the resolved scale name (``finest`` -> ``fine`` for the default data)."""

    max_epochs: int = _T.max_epochs
    max_steps: int = -1 if _T.max_steps is None else _T.max_steps
    precision: str = str(_T.precision)
    accumulate_grad_batches: int = _T.accumulate_grad_batches
    gradient_clip_val: float | None = _O.grad_clip
    accelerator: str = _T.accelerator
    devices: int | str | list[int] = _T.devices  # type: ignore[assignment]
    num_nodes: int = _T.num_nodes
    strategy: str = _T.strategy
    seed: int = _T.seed
    deterministic: bool = _T.deterministic
    val_every_n_epochs: int = _T.val_every
    checkpoint_every_n_steps: int = _T.checkpoint_every_n_steps or 0
    monitor: str = DEFAULT_MONITOR
    monitor_mode: str = _T.monitor_mode
    nonfinite: str = _T.nonfinite
    progress_bar: bool = _T.progress_bar
    log_every_n_steps: int = _T.log_every_n_steps
    patience: int | None = _T.patience
    sync_batchnorm: bool = _T.sync_batchnorm


def validate_settings(s: TrainerSettings) -> None:
    """The checks of settings built without a config (a config's were made when it loaded), with the schema's
    own rules (:func:`~dynametric.config.schema.check_precision`, ``check_accelerator``, ``check_strategy``), and
    the checks against this machine (:func:`check_machine`) that a config cannot make when it loads."""
    s.precision = check_precision(s.precision, "trainer.precision")
    s.accelerator = check_accelerator(s.accelerator, "trainer.accelerator")
    s.strategy = check_strategy(s.strategy, "trainer.strategy")
    check_seed(s.seed, "trainer.seed")
    if s.accumulate_grad_batches < 1:
        raise ConfigError("must be >= 1", key="trainer.accumulate_grad_batches")
    if s.monitor_mode not in ("max", "min"):
        raise ConfigError(f"expected 'max' or 'min', got {s.monitor_mode!r}", key="trainer.monitor_mode")
    if s.nonfinite not in ("stop", "skip"):
        raise ConfigError(f"expected 'stop' or 'skip', got {s.nonfinite!r}", key="trainer.nonfinite")
    if s.max_epochs < 1 and s.max_steps < 1:
        raise ConfigError("set trainer.max_epochs or trainer.max_steps to a positive value", key="trainer.max_epochs")
    check_machine(s)


_AVAILABILITY_ERRORS = (ImportError, RuntimeError, ValueError, OSError, AssertionError)


def _available(name: str) -> bool:
    """Whether Lightning's accelerator ``name`` can run here (CUDA: torch's own check, as ``--device cuda``)."""
    if name == "cpu":
        return True
    if name == "cuda":
        return torch.cuda.is_available()
    from lightning.pytorch.accelerators import AcceleratorRegistry

    try:
        return name in AcceleratorRegistry and bool(AcceleratorRegistry[name]["accelerator"].is_available())
    except _AVAILABILITY_ERRORS:  # e.g. XLA installed but not configured
        return False


def _resolved_accelerator(asked: str) -> str | None:
    """Lightning's choice for ``trainer.accelerator`` ``asked`` on this machine (``auto``: tpu, mps, cuda, else cpu;
    ``gpu``: mps, cuda), ``None`` where it has none (``gpu`` without a GPU, an accelerator not usable here)."""
    if asked in ("auto", "gpu"):
        candidates = ("mps", "cuda") if asked == "gpu" else ("tpu", "mps", "cuda")
        where = next((n for n in candidates if _available(n)), None)
        return "cpu" if where is None and asked == "auto" else where
    return asked if _available(asked) else None


def processes_here(accelerator: str, devices: Any) -> int | None:
    """The training processes Lightning starts on this machine for ``trainer.accelerator`` / ``trainer.devices``:
    a positive number (or its text) is that many, a list (or Lightning's text list of GPU ids, ``"0,1"``) one per
    entry, ``auto`` one per device of the accelerator Lightning picks (the CPU: 1; CUDA: every visible GPU), ``-1``
    every GPU; ``None`` where that gives no number (``-1`` on the CPU, which Lightning refuses; ``auto`` on a TPU)."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, (list, tuple)):
        return len(devices) or None
    text = str(devices).strip().lower()
    if text.isascii() and text.isdigit():
        return int(text) or None
    if "," in text and all(part.strip().isascii() and part.strip().isdigit() for part in text.rstrip(",").split(",")):
        return len(text.rstrip(",").split(","))  # Lightning's text list of GPU ids: "0,1", "1,"
    if text not in ("auto", "-1"):
        return None
    where = _resolved_accelerator(str(accelerator).strip().lower())
    if where == "cuda":
        return torch.cuda.device_count() or None
    if where in ("cpu", "mps"):
        return 1 if text == "auto" else None
    return None


def env_int(name: str) -> int:
    """The integer in the environment variable ``name``; 0 when unset, blank or not an integer."""
    try:
        return int(os.environ.get(name, "").strip() or 0)
    except ValueError:
        return 0


@dataclass(frozen=True)
class Launch:
    """Several processes that a launcher started, each running ``dynametric train`` on its own (:func:`launch`)."""

    launcher: str
    """``torchrun`` (``TORCHELASTIC_RUN_ID`` set), else ``a launcher``."""
    world: int
    """Processes of all nodes (``WORLD_SIZE``)."""
    per_node: int | None
    """Processes on this node (``LOCAL_WORLD_SIZE``), ``None`` when the launcher does not say."""

    def variables(self) -> str:
        """The environment variables that say so, as ``WORLD_SIZE=4, LOCAL_WORLD_SIZE=2``."""
        local = "" if self.per_node is None else f", LOCAL_WORLD_SIZE={self.per_node}"
        return f"WORLD_SIZE={self.world}{local}"


def launch() -> Launch | None:
    """The launch of this process when a launcher (``torchrun``, or another that sets the same variables) started it
    as one of several processes: ``WORLD_SIZE`` > 1 or ``LOCAL_WORLD_SIZE`` > 1, with ``RANK``,
    ``TORCHELASTIC_RUN_ID`` or ``LOCAL_WORLD_SIZE`` set; else ``None``. Lightning's own script launcher sets
    ``WORLD_SIZE`` alone (with ``LOCAL_RANK`` and ``NODE_RANK``), also in rank 0's process where it stays after the
    fit: that is not such a launch (it starts the processes ``trainer.devices`` asks for)."""
    env = os.environ
    world, local = env_int("WORLD_SIZE"), env_int("LOCAL_WORLD_SIZE")
    told = any(env.get(name, "").strip() for name in ("RANK", "TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE"))
    if max(world, local) <= 1 or not told:
        return None
    launcher = "torchrun" if env.get("TORCHELASTIC_RUN_ID", "").strip() else "a launcher"
    return Launch(launcher, max(world, local), local if local > 0 else None)


def check_launch(s: TrainerSettings, processes: int) -> None:
    """A one-line ConfigError when a launcher started this process as one of several (:func:`launch`) and the run
    would not be one run of them all: ``processes`` (Lightning's processes on this machine for ``trainer.devices``)
    times ``trainer.num_nodes`` is not the launcher's ``WORLD_SIZE``, or ``processes`` not its ``LOCAL_WORLD_SIZE``.
    Lightning checks that only when it starts DDP: ``trainer.devices: 1`` under ``torchrun --nproc-per-node 2``
    trained two separate runs into one folder, without a word. Keyed ``trainer.devices`` (``trainer.num_nodes``
    where only the number of nodes is wrong)."""
    got = launch()
    if got is None:
        return
    nodes = int(s.num_nodes)
    if processes * nodes == got.world and got.per_node in (None, processes):
        return
    if got.per_node is not None and got.world % got.per_node == 0:
        want_devices, want_nodes = got.per_node, got.world // got.per_node
    else:
        want_devices, want_nodes = (got.world // nodes, nodes) if got.world % nodes == 0 else (got.world, 1)
    key = "trainer.num_nodes" if want_devices == processes else "trainer.devices"
    devices = str(s.devices) if str(s.devices) == str(processes) else f"{s.devices} ({processes} here)"
    ours = processes * nodes
    what = ("each of its processes would train a run of its own" if ours == 1
            else "Lightning would stop when it starts them")
    raise ConfigError(f"{got.launcher} started {got.world} processes ({got.variables()}) but trainer.devices="
                      f"{devices} x trainer.num_nodes={nodes} is {ours} process{'es' * (ours != 1)} ({what}); set "
                      f"trainer.devices: {want_devices} and trainer.num_nodes: {want_nodes}", key=key)


def check_machine(s: TrainerSettings) -> str:
    """The accelerator the run trains on here (``cpu``, ``cuda``, ``mps``, ``tpu``: Lightning's choice for
    ``auto`` and ``gpu``), or a one-line ConfigError: ``trainer.accelerator`` asking for a device this machine does
    not have (CUDA: the check of ``--device cuda``, :func:`dynametric.utils.device.require_cuda`), or a float16
    ``trainer.precision`` on the CPU (Lightning would only warn and train in bfloat16; inference's ``--precision
    fp16`` is refused on the CPU too), or ``trainer.sync_batchnorm`` on the CPU (torch's SyncBatchNorm is GPU-only)."""
    from dynametric.utils.device import require_cuda

    asked = s.accelerator
    if asked in ("auto", "gpu"):  # Lightning's order: tpu (auto only), mps, cuda, else cpu (auto) or an error (gpu)
        where = _resolved_accelerator(asked)
        if where is None:
            require_cuda("accelerator 'gpu'", key="trainer.accelerator")
            where = "cpu"
    elif asked == "cuda":
        require_cuda("accelerator 'cuda'", key="trainer.accelerator")
        where = "cuda"
    elif not _available(asked):
        from lightning.pytorch.accelerators import AcceleratorRegistry

        usable = [n for n in sorted(AcceleratorRegistry.available_accelerators()) if _available(n)]
        raise ConfigError(f"accelerator {asked!r} asked for, but it is not available here (usable: "
                          f"{', '.join(usable)}); use trainer.accelerator: cpu or auto", key="trainer.accelerator")
    else:
        where = asked
    if s.sync_batchnorm and where == "cpu":  # torch's SyncBatchNorm refuses CPU tensors at the first forward
        raise ConfigError("trainer.sync_batchnorm uses torch's SyncBatchNorm, which runs on GPUs only, and this run "
                          f"trains on the CPU (trainer.accelerator={asked}); on the CPU use model.freeze_bn: true "
                          "(BatchNorm with its running statistics: the same computation in every process)",
                          key="trainer.sync_batchnorm")
    if s.precision in FP16_PRECISIONS and where == "cpu":
        raise ConfigError(f"{s.precision!r} trains in float16, which needs a CUDA GPU, and this run trains on the CPU "
                          f"(trainer.accelerator={asked}); on the CPU use bf16-mixed or 32", key="trainer.precision")
    return where


# Lightning's refusals of trainer arguments: MisconfigurationException (a strategy's missing package, more devices
# than the machine has), ValueError (a strategy that needs a GPU), ImportError (torch_xla), TypeError (a registered
# strategy that cannot be named by a string alone, e.g. single_xla)
_LIGHTNING_REFUSALS = (MisconfigurationException, ValueError, TypeError, ImportError)


def lightning_trainer(s: TrainerSettings, **kwargs: Any) -> L.Trainer:
    """``L.Trainer`` on the accelerator, devices, nodes, strategy and precision of ``s`` (and ``kwargs``); Lightning
    refusing them is a one-line ConfigError naming the ``trainer`` keys and Lightning's reason."""
    try:
        trainer = L.Trainer(accelerator=s.accelerator, devices=s.devices, num_nodes=s.num_nodes, strategy=s.strategy,
                            precision=s.precision, sync_batchnorm=s.sync_batchnorm, **kwargs)  # type: ignore[arg-type]
    except _LIGHTNING_REFUSALS as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise ConfigError(f"Lightning {L.__version__} cannot train with accelerator={s.accelerator!r}, "
                          f"strategy={s.strategy!r}, devices={s.devices!r}, num_nodes={s.num_nodes}, "
                          f"precision={s.precision!r}: {reason}", key="trainer") from None
    if hasattr(trainer, "_signal_connector"):  # a Lightning Trainer (a test may stand in for the class)
        trainer._signal_connector = _NoSignalHandlers(trainer)
        launcher = trainer.strategy.launcher
        if isinstance(launcher, _SubprocessScriptLauncher):
            _LAUNCHERS.add(launcher)
    return trainer


class _NoSignalHandlers(_SignalConnector):
    """Lightning's signal connector without its handlers: during ``fit`` / ``validate`` / ``test`` Lightning put its
    SIGTERM handler on top of the one it found (the CLI's, :func:`dynametric.cli._sigterm_stops_like_ctrl_c`). Under
    several processes that handler sent the signal on to the other ranks and then called ``dist.broadcast`` on the
    rank that got it, alone, while the others waited in another collective: a SIGTERM sent to rank 0 only (what
    ``timeout``, ``docker stop``, ``kill`` do) hung every process for ever. The CLI's handler stops the run instead
    (and :func:`signal_launched_ranks` passes the signal on). It records the processes Lightning's script launcher
    started for the other ranks (:func:`launched_ranks`); ``trainer.received_sigterm`` stays ``False``."""

    def register_signal_handlers(self) -> None:
        self.received_sigterm = False
        self._original_handlers = {}  # nothing to restore at teardown: nothing was replaced
        launcher = self.trainer.strategy.launcher
        if isinstance(launcher, _SubprocessScriptLauncher) and launcher.procs and \
                all(launcher.procs is not known for known in _LAUNCHED):
            _LAUNCHED.append(launcher.procs)
            patient_observer(launcher.procs, Path(self.trainer.default_root_dir))


# the script launchers of the trainers built here (alive), and the lists of processes they started for the other
# ranks (Lightning's own lists, which its child-process observer watches too), kept once a Lightning call ran
_LAUNCHERS: weakref.WeakSet[_SubprocessScriptLauncher] = weakref.WeakSet()
_LAUNCHED: list[list[subprocess.Popen]] = []
_TAKEN: list[subprocess.Popen] = []
_TAKING = threading.RLock()  # held while rank 0 takes the processes, and while the observer's kill decides


PEER_GRACE_S = 30.0
"""Seconds rank 0 of a several-process run has, once the process of another rank ended with a non-zero status, to
see it itself (its next collective fails) and stop the run with its one line (:func:`patient_observer`)."""


def patient_observer(procs: list[subprocess.Popen], run_dir: Path | None = None) -> bool:
    """Give rank 0 time to say that another rank's process ended. Lightning's child-process observer (a thread of
    rank 0 that polls the processes its launcher started for the other ranks every 5 s) SIGKILLed rank 0 and the
    others as soon as one of them had ended with a non-zero status: where rank 0 took longer than that to reach its
    next collective (a slow step, a loaded machine) it died without a word (status -9) instead of printing its line
    with how to resume. Its kill of the observer watching ``procs`` (the launcher's own list) now waits up to
    :data:`PEER_GRACE_S` seconds and happens only if rank 0 has not taken the processes by then
    (:func:`signal_launched_ranks` empties the list: rank 0 saw the error and stops them itself); a rank 0 that hangs
    in a collective (or in a step longer than that) still ends, after one line on stderr that says how to resume
    where ``run_dir`` has a ``last.ckpt``. Returns whether such an observer was found (none on another Lightning
    version: its kill stays as it was)."""
    found = False
    for thread in threading.enumerate():
        terminate = getattr(thread, "_terminate_all", None)
        if getattr(thread, "_child_processes", None) is not procs or not callable(terminate):
            continue
        found = True
        if getattr(terminate, "dynametric_patient", False):
            continue

        def patient(terminate: Callable[[], None] = terminate) -> None:
            import time

            deadline = time.monotonic() + PEER_GRACE_S
            while procs and time.monotonic() < deadline:
                time.sleep(0.1)
            with _TAKING:  # rank 0 takes the processes (signal_launched_ranks) either before this or not at all
                if procs:
                    _terminate_with_line(procs, terminate, run_dir)

        patient.dynametric_patient = True  # type: ignore[attr-defined]
        thread._terminate_all = patient  # type: ignore[attr-defined]
    return found


def _terminate_with_line(procs: list[subprocess.Popen], terminate: Callable[[], None], run_dir: Path | None) -> None:
    """:func:`patient_observer`'s kill once the grace is over: one line on stderr, then Lightning's kill of every
    process of the run, this one included."""
    import sys

    ended = next(((rank, proc.returncode) for rank, proc in enumerate(list(procs), 1) if proc.returncode), None)
    what = f"the process of rank {ended[0]} ended with status {ended[1]}" if ended else \
        "the process of another rank ended"
    with contextlib.suppress(Exception):
        resume = f"resume with: dynametric train --resume {run_dir}" if run_dir is not None and \
            (run_dir / "last.ckpt").is_file() else "no checkpoint to resume from"
        sys.stderr.write(f"dynametric: error: {what} and rank 0 did not stop within {PEER_GRACE_S:g} s (a step or "
                         f"a collective that did not end): every process of the run is killed now; {resume}\n")
        sys.stderr.flush()
    terminate()


def launched_ranks() -> list[subprocess.Popen]:
    """The processes Lightning's script launcher started from this one for the other ranks (``trainer.devices`` > 1
    on one machine: rank 0 starts them as children at its first Lightning call), still running or not."""
    procs: list[subprocess.Popen] = list(_TAKEN)
    for lst in [*_LAUNCHED, *(launcher.procs for launcher in list(_LAUNCHERS))]:
        procs.extend(p for p in lst if p not in procs)
    return procs


def signal_launched_ranks(signum: int) -> int:
    """Send ``signum`` to the processes of the other ranks this process started (:func:`launched_ranks`) that are
    still running, and take them from Lightning's launcher: its child-process observer SIGKILLed this process when
    one of them ended with a non-zero status (143 after a SIGTERM) before this one had said how to resume, and its
    Ctrl-C handling SIGKILLed them. Returns how many were signalled. The CLI's SIGTERM handler calls it (a SIGTERM
    sent to rank 0 alone now stops every rank); :func:`end_launched_ranks` waits for them."""
    sent = 0
    for proc in launched_ranks():
        if proc not in _TAKEN:
            _TAKEN.append(proc)
        if proc.poll() is None:
            with contextlib.suppress(OSError):
                proc.send_signal(signum)
                sent += 1
    with _TAKING:  # reentrant: a signal handler may take them while this thread does
        for lst in [*_LAUNCHED, *(launcher.procs for launcher in list(_LAUNCHERS))]:
            lst.clear()  # the same list objects as the launcher's and its observer's
    return sent


def end_launched_ranks(grace_s: float = 20.0) -> None:
    """After :func:`signal_launched_ranks`: close this process's side of the process group (a rank waiting for this
    one in a collective gets an error at once instead of waiting for the collective's timeout), wait up to
    ``grace_s`` seconds for the other ranks' processes to stop by themselves, then SIGKILL those still running (they
    write nothing). Nothing to do where no process was taken."""
    import time

    import torch.distributed as dist

    if not _TAKEN:
        return
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):  # already broken by a peer that ended
            dist.destroy_process_group()
    deadline = time.monotonic() + grace_s
    for proc in _TAKEN:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(0.0, deadline - time.monotonic()))
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    _TAKEN.clear()


@contextlib.contextmanager
def _lightning_quiet() -> Iterator[None]:
    """Lightning's informational lines (``GPU available: ...``) off for a trainer built only to be checked."""
    loggers = [logging.getLogger(n) for n in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(max(lg.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@dataclass
class TrainerPlan:
    """How a run trains here, as Lightning resolved the settings (:func:`plan_trainer`)."""

    accelerator: str
    """:func:`check_machine`'s accelerator: ``cpu``, ``cuda``, ``mps``, ``tpu``."""
    strategy: str
    """Lightning's strategy class (``SingleDeviceStrategy``, ``DDPStrategy``, …)."""
    processes: int
    """Training processes on this machine (Lightning's ``num_devices``)."""


def plan_trainer(s: TrainerSettings) -> TrainerPlan:
    """Everything about ``s`` that can fail before training, checked without writing anything: the settings
    (:func:`validate_settings`, this machine included) and a Lightning ``Trainer`` built from them and thrown
    away (a strategy whose package is missing, more GPUs than here, …); returns what Lightning made of them.

    On the CPU ``trainer.devices: N`` is a number of processes, not of cores: Lightning starts N DDP processes
    whatever the core count (they share the cores), so more than the machine's cores is not an error."""
    validate_settings(s)
    with _lightning_quiet():
        trainer = lightning_trainer(s, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                                    enable_model_summary=False, use_distributed_sampler=False)
    check_launch(s, int(trainer.num_devices))  # a launcher's processes that would train runs of their own
    return TrainerPlan(check_machine(s), type(trainer.strategy).__name__, int(trainer.num_devices))


def check_trainer(s: TrainerSettings) -> str:
    """:func:`plan_trainer`'s checks; returns :func:`check_machine`'s accelerator. ``dynametric train`` calls it
    before it reads data or writes a file; ``--dry-run`` calls it too."""
    return plan_trainer(s).accelerator


def build_trainer(
    settings: TrainerSettings,
    datamodule: MetricDataModule,
    run_dir: str | Path | None,
    *,
    callbacks: Sequence[L.Callback] = (),
    logger: Any = None,
    enable_validation: bool = True,
    warn: Callable[[str], None] | None = None,
) -> L.Trainer:
    """A Trainer writing ``run_dir/last.ckpt`` (every N steps and every epoch) and ``run_dir/best.ckpt``
    (best ``val/<monitor>``), atomically, with exact-resume state; the batch sampler shards data itself.

    ``settings.patience`` adds :class:`~dynametric.engine.callbacks.RunEarlyStopping` (a stop decided before a kill
    is kept by the resumed run), and validation adds :class:`~dynametric.engine.callbacks.MonitorWatch` (a round
    whose monitored metric is NaN or missing is warned about, and is neither ``best.ckpt`` nor counted by early
    stopping). ``warn`` gets the warnings (default: ``RuntimeWarning``): those rounds, and ``trainer.patience`` set
    without validation (ignored)."""
    validate_settings(settings)
    warn = warn or runtime_warning
    cbs: list[L.Callback] = list(callbacks)
    run_dir = None if run_dir is None else Path(run_dir)
    if run_dir is not None and enable_validation:
        cbs.append(RunCheckpoint(dirpath=run_dir, filename="best", monitor=f"val/{settings.monitor}",
                                 mode=settings.monitor_mode, save_top_k=1, save_last=False,
                                 auto_insert_metric_name=False, enable_version_counter=False))
    # after RunCheckpoint: both are Checkpoint callbacks, whose epoch-end hooks Lightning calls last, in this order,
    # so the end-of-epoch last.ckpt holds that epoch's best score (ResumeState's docstring)
    cbs.append(ResumeState(datamodule, None if run_dir is None else run_dir / "last.ckpt",
                           settings.checkpoint_every_n_steps))
    if enable_validation:
        cbs.append(MonitorWatch(f"val/{settings.monitor}", warn))
    if settings.patience is not None and enable_validation:
        cbs.append(RunEarlyStopping(f"val/{settings.monitor}", settings.monitor_mode, settings.patience))
    elif settings.patience is not None:
        warn(f"trainer.patience={settings.patience} is ignored: the run has no validation data, so there is no "
             f"monitored score to stop on (early stopping needs a validation split: data.val_split, or "
             f"data.val_fraction > 0 with data.val_split: null)")
    if logger is None and run_dir is not None:
        logger = KeepingCSVLogger(save_dir=run_dir, name="", version="logs")
    if settings.progress_bar:
        from dynametric.engine.loggers import MetricProgressBar

        cbs.append(MetricProgressBar())
    return lightning_trainer(
        settings,
        max_epochs=settings.max_epochs if settings.max_epochs >= 1 else -1,  # both limits: whichever comes first
        max_steps=settings.max_steps,
        accumulate_grad_batches=settings.accumulate_grad_batches,
        gradient_clip_val=settings.gradient_clip_val,
        deterministic=settings.deterministic,
        check_val_every_n_epoch=settings.val_every_n_epochs,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        enable_checkpointing=True,  # ResumeState is a Checkpoint callback (no default ModelCheckpoint is added)
        enable_progress_bar=settings.progress_bar,
        enable_model_summary=False,
        log_every_n_steps=settings.log_every_n_steps,
        logger=logger if logger is not None else False,
        callbacks=cbs,
        plugins=[SafeCheckpointIO()],
        default_root_dir=None if run_dir is None else str(run_dir),
        limit_val_batches=None if enable_validation else 0,
    )


@contextlib.contextmanager
def ctrl_c_passes_through(trainer: L.Trainer) -> Iterator[None]:
    """Around ``trainer.fit`` / ``validate`` / ``test``: a Ctrl-C comes out as ``KeyboardInterrupt``, and the SIGINT
    handler found on entry is in place again afterwards.

    Lightning catches ``KeyboardInterrupt`` in these calls itself: it sets SIGINT to ``SIG_IGN`` while it shuts down
    (runs the callbacks' ``on_exception``, tears down), then calls ``sys.exit(1)`` (Lightning 2.x; older versions
    returned with ``trainer.interrupted`` set), and never puts the SIGINT handler back: every later Ctrl-C in the
    process (a notebook's "interrupt kernel" button) was ignored. Here the caller would go on as if the call had
    finished, or exit with status 1 and no message; both become a ``KeyboardInterrupt`` (the CLI: ``interrupted``,
    exit status 130), and the SIGINT handler found on entry is restored (main thread only: Python installs signal
    handlers there alone). SIGINT is the only handler Lightning's interrupt handling changes; its SIGTERM handler is
    not installed here (:class:`_NoSignalHandlers`)."""
    import signal
    import threading

    main_thread = threading.current_thread() is threading.main_thread()
    found = signal.getsignal(signal.SIGINT) if main_thread else None
    try:
        try:
            yield
        except SystemExit as exc:
            if exc.code == 1 and isinstance(exc.__context__, KeyboardInterrupt):  # Lightning's exit after a Ctrl-C
                raise KeyboardInterrupt from None
            raise
    finally:
        if main_thread and found is not None and signal.getsignal(signal.SIGINT) is not found:
            signal.signal(signal.SIGINT, found)
    if trainer.interrupted:  # returned normally, but stopped by Ctrl-C (other errors are raised)
        raise KeyboardInterrupt
