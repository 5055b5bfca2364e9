"""A whole training run: run folder, untrained evaluation, fit with validation, test of the best checkpoint,
``metrics.json``, ``report.html``. Used by ``dynametric train``. (Formerly ``dynametric.engine.run``: the run
resolves the method plug-in, so it sits above :mod:`dynametric.methods`.)

Its parts, each in its own module of :mod:`dynametric.pipeline`: the run folder, its name and ``train.lock``
(:mod:`.run_folder`), the checks of a resume (:mod:`.resume`), what the run and its dry run check before they write
(:mod:`.run_checks`), the line of a run that stopped early (:mod:`.run_errors`), the caller's random state and torch
flags put back (:mod:`.caller_state`), and the dry run (:mod:`.dryrun`). Here: the training flow, from
:func:`run_training` to the results written.

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

import functools
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from dynametric.config.loader import check_config, config_notes
from dynametric.config.schema import anchored, split_monitor
from dynametric.data.readers import printable_path
from dynametric.engine.builders import (
    Components,
    build_datasets,
    check_data_root,
    checked_sampler_factory,
    load_split,
    trainer_settings,
)
from dynametric.engine.callbacks import ResumeState, RunCheckpoint, RunEarlyStopping, ValidationToMetrics
from dynametric.engine.checkpoint import SafeCheckpointIO, load_checkpoint_file
from dynametric.engine.data import EvalDataModule, MetricDataModule
from dynametric.engine.loggers import LoggerFailure, build_logger, log_figures, log_results, report_figures
from dynametric.engine.module import MetricLearningModule
from dynametric.engine.preflight import check_batches, check_validation_queries, scale_notes
from dynametric.engine.trainer import (
    TrainerSettings,
    build_trainer,
    ctrl_c_passes_through,
    lightning_trainer,
    plan_trainer,
    validate_settings,
)
from dynametric.errors import ConfigError, InputError
from dynametric.pipeline.caller_state import callers_random_state, callers_torch_flags
from dynametric.pipeline.components import build_components
from dynametric.pipeline.dryrun import dry_run
from dynametric.pipeline.protocols import (
    data_root_notes,
    method_test_protocol,
    protocol_from_config,
    protocol_split_keys,
)
from dynametric.pipeline.report import category_summary, write_report
from dynametric.pipeline.resume import (
    ResumedCheckpoint,
    _no_note,
    check_resume,
    check_resume_weights,
    check_run_checkpoint,
    claim_resumed_run,
    component_classes,
    components_note,
)
from dynametric.pipeline.run_checks import (
    _check_one_process_method,
    _check_test_splits,
    _checked_loader_settings,
    _held_out_data,
    check_backbone_forward,
    check_eval_shards,
    rendezvous_note,
    setup_notes,
)
from dynametric.pipeline.run_errors import (
    RunOutOfMemory,
    _file_error,
    _gpu_memory_error,
    _interruption,
    _logger_stopped,
    _peer_lost_error,
    _StageAtError,
    peer_lost,
)
from dynametric.pipeline.run_folder import (
    _HEADER,
    LOCK_FILE,
    PYTHON_FOLDER_KEY,
    RunClaim,
    _launched_worker,
    _run_header,
    _start_call,
    check_new_run_folder,
    claim_run_folder,
    default_run_dir,
    lock_holder,
    unstarted_run_files,
)
from dynametric.utils.io import atomic_write_json, nan_to_null, null_to_nan, temp_target
from dynametric.utils.limits import gpu_out_of_memory
from dynametric.utils.processes import callers_start_method

if TYPE_CHECKING:
    from dynametric.config import Config
    from dynametric.engine.protocols import MethodTestProtocol


# the run's public names, its parts' among them (docs/architecture.md): importable from here as before the split
__all__ = ["LOCK_FILE", "ResumedCheckpoint", "RunClaim", "RunOutOfMemory", "RunResult", "check_resume",
           "claim_run_folder", "default_run_dir", "dry_run", "lock_holder", "quiet_lightning", "run_training"]


@dataclass
class RunResult:
    """What :func:`run_training` returns: the run folder; ``metrics``, as ``metrics.json`` holds them:
    ``"untrained"`` (the test metrics of the model before training), ``"validation"`` (one entry per validation
    round) and ``"test"`` (the selected checkpoint's test metrics), each test block keyed by scale name then metric
    (``metrics["test"]["fine"]["recall@1"]``; with several scales also ``"mean"``, and a test protocol's own
    entries such as ``"protocol"``); ``info``: ``run_info.json``'s entries as the run starts (data sizes,
    validation source, scale names, evaluation head, environment, components)."""

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


def _silent(message: str) -> None:
    """The ``log`` of a DDP process other than rank 0 (:func:`run_training`)."""


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
    and a start method of ``multiprocessing`` the caller left unset is unset again (:func:`callers_start_method`).

    Lightning's own banners and warnings (GPU available, the number of loader workers, ...) still print unless
    :func:`quiet_lightning` was called first, as the command line does."""
    check_config(cfg)  # a Config built or changed in Python: the loader's checks, again
    with callers_random_state(), callers_torch_flags(), callers_start_method():
        return _run_training(cfg, run_dir, resume=resume, progress=progress, log=log, note=note,
                             folder_key=folder_key)


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
    for line in setup_notes(cfg, comps.embedder, world, datasets.val is not None, datasets.train,
                            module.automatic_optimization):
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
