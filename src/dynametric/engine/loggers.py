"""Experiment loggers for ``dynametric train`` (``run.logger``): ``csv`` (default, no extra dependency),
``tensorboard``, ``wandb``, ``mlflow``, all Lightning loggers writing under the run folder.

Every logger receives the training loss and learning rate, the per-scale validation metrics of every round
(``val/<scale>/<metric>``, at the optimizer steps done: the ``global_step`` of that round's checkpoint), the untrained
and final test metrics (``untrained/<scale>/<metric>``, ``test/<scale>/<metric>``: the values of ``metrics.json``,
float64, counts as integers) and, when ``run.report`` is on, the report's figures: as images for TensorBoard
(``add_image``), Weights & Biases (``log_image``) and MLflow (``log_image`` artifacts); the CSV logger has no image
support (the figures stay in ``report.html``). The ``csv`` logger keeps what ``logs/metrics.csv`` already holds: a
resumed run adds its rows after the earlier ones (the untrained row, the rounds before a kill, the test row of a
finished run), one header for all columns (a column that appears later is added, with empty cells in the earlier
rows), and every write replaces the file atomically (Lightning's own CSV logger deletes an existing file when it
starts and appends in place).

MLflow gets the same metrics under names it can store (:func:`mlflow_name`, :class:`MlflowNames`): ``@`` becomes
``_at_`` (``val/fine/recall_at_1``), and a loss term's total, ``train/<term>`` beside its parts
``train/<term>/<part>``, is ``train/<term>/total`` (MLflow's file store keeps each metric as a file, so a name cannot
also be the folder of others). Its tracking store (:func:`mlflow_store`) is ``run.logger_options.tracking_uri``, else
``MLFLOW_TRACKING_URI``, else one in the run folder: ``sqlite:///RUN/mlruns.db`` (MLflow 3 keeps its file store in
maintenance mode) or, with MLflow 2 or where the run started on it, the file store ``RUN/mlruns``. TensorBoard gets
the resolved config in its HPARAMS tab, with the monitored metric's validation and test values
(:class:`RunTensorBoardLogger`).

A user's module may register a logger of its own (any Lightning logger: Neptune, Comet, ClearML, ...):
``LOGGERS["name"] = factory`` (:mod:`dynametric.utils.logger_registry`), ``factory(run_dir, **run.logger_options)``
returning a ``lightning.pytorch.loggers.Logger``; it receives the same metrics, its writes are guarded as the built-in
loggers' (:class:`RegisteredLogger`), and its options are checked against the factory's signature.

``run.logger_options`` are keyword arguments of the Lightning logger (e.g. ``{project: x, offline: true}`` for
wandb, ``{tracking_uri: http://...}`` for mlflow). A logger whose package is missing, an option it does not take, or
an MLflow tracking store that cannot work here is a :class:`~dynametric.errors.ConfigError` keyed ``run.logger``,
raised before any work is done (also by the dry run, :func:`check_logger`). A logger that fails while the run
writes to it raises :class:`LoggerFailure` (one line naming the logger, what it was writing and why) and writes
nothing more.
"""

from __future__ import annotations

import base64
import contextlib
import csv
import difflib
import html
import importlib.util
import inspect
import io
import logging
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, cast

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_only

from dynametric.errors import ConfigError, first_sentence
from dynametric.utils.io import atomic_open, atomic_write_with
from dynametric.utils.logger_registry import LOGGERS as LOGGERS
from dynametric.utils.logger_registry import built_in_kind, logger_names

_NEEDS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}


def check_logger_available(name: str) -> None:
    """Raise a :class:`ConfigError` if the package behind ``run.logger: name`` is not installed."""
    from dynametric.utils.registry import with_import_hint

    if name not in LOGGERS:
        raise ConfigError(with_import_hint(f"unknown logger {name!r}; expected one of {logger_names()}"),
                          key="run.logger")
    kind = built_in_kind(name)
    if kind is None and not callable(LOGGERS[name]):
        raise ConfigError(f"the registered logger {name!r} is {LOGGERS[name]!r}, neither a factory (run_dir, "
                          f"**options) -> Logger nor one of {list(_SET_BY_RUN)}", key="run.logger")
    modules = _NEEDS.get(kind, ()) if kind is not None else ()
    if modules and not any(importlib.util.find_spec(m) is not None for m in modules):
        raise ConfigError(f"run.logger {name!r} needs the {kind} package: pip install 'dynametric[{kind}]' "
                          "(or set run.logger=csv)", key="run.logger")


_SET_BY_RUN = {"csv": ("save_dir", "name", "version"), "tensorboard": ("save_dir", "name", "version", "log_dir"),
               "wandb": ("save_dir",), "mlflow": ()}
"""Logger arguments the run sets itself (the logger writes under the run folder)."""


def _logger_class(name: str) -> Any:
    """The Lightning logger class of ``run.logger: name`` (whose arguments ``run.logger_options`` are)."""
    return {"csv": CSVLogger, "tensorboard": TensorBoardLogger, "wandb": WandbLogger, "mlflow": MLFlowLogger}[name]


def _forwarded_to(name: str) -> Any:
    """What the logger passes its ``**kwargs`` to (TensorBoard: the ``SummaryWriter`` it makes at its first write;
    Weights & Biases: ``wandb.init``), or None when that cannot be imported here."""
    modules = {"tensorboard": (("torch.utils.tensorboard", "SummaryWriter"), ("tensorboardX", "SummaryWriter")),
               "wandb": (("wandb", "init"),)}.get(name, ())
    for module, attr in modules:
        try:
            target = getattr(importlib.import_module(module), attr)
        except ImportError:
            continue
        return target.__init__ if inspect.isclass(target) else target
    return None


def logger_arguments(name: str) -> list[str] | None:
    """The ``run.logger_options`` keys ``run.logger: name`` accepts (the Lightning logger's arguments and, where it
    forwards the rest, those of what it forwards them to), or None when they cannot be listed (a forwarded target
    that takes any keyword). A registered factory's: its parameters after the first (``run_dir``)."""
    kind = built_in_kind(name)
    if kind is None:
        return _factory_arguments(LOGGERS[name])
    own, forwarded = _logger_class(kind).__init__, _forwarded_to(kind)
    names: list[str] = []
    for fn in (own, forwarded):
        if fn is None:
            continue
        for arg, param in inspect.signature(fn).parameters.items():
            if param.kind is param.VAR_KEYWORD:
                if fn is forwarded or forwarded is None:
                    return None  # the target takes any keyword, or the logger forwards where we cannot inspect
                continue
            if arg != "self" and param.kind is not param.VAR_POSITIONAL and arg not in _SET_BY_RUN[kind]:
                names.append(arg)
    return sorted(set(names))


def _factory_arguments(factory: Any) -> list[str] | None:
    """The keyword arguments a registered logger factory takes after ``run_dir`` (``None``: any, a ``**kwargs``)."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):  # a callable whose signature cannot be read: its options go to it unchecked
        return None
    names: list[str] = []
    for i, param in enumerate(params):
        if param.kind is param.VAR_KEYWORD:
            return None
        if i == 0 or param.kind in (param.VAR_POSITIONAL, param.POSITIONAL_ONLY):
            continue  # run_dir
        names.append(param.name)
    return sorted(names)


def check_logger_options(name: str, options: Mapping[str, Any] | None) -> None:
    """A :class:`ConfigError` keyed ``run.logger_options.<key>`` for a key the logger would refuse or the run sets
    itself, before anything is written: TensorBoard's logger passes unknown keys on to its ``SummaryWriter``, made
    only at the first write (a run then failed after its untrained evaluation). The values are the logger's to
    check."""
    check_logger_available(name)
    accepted = logger_arguments(name)
    kind = built_in_kind(name)
    for key in options or {}:
        if kind is not None and key in _SET_BY_RUN[kind]:
            raise ConfigError(f"{key} is set by dynametric (the {name} logger writes under the run folder); remove "
                              "it", key=f"run.logger_options.{key}")
        if accepted is not None and key not in accepted:
            near = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(f"the {name} logger takes no option {key!r}; {hint}it takes {', '.join(accepted)}",
                              key=f"run.logger_options.{key}")
    if kind is None:
        _check_factory_call(name, LOGGERS[name], options or {})


def _check_factory_call(name: str, factory: Any, options: Mapping[str, Any]) -> None:
    """A :class:`ConfigError` keyed ``run.logger`` when a registered logger's factory cannot be called as
    ``factory(run_dir, **options)`` (no positional ``run_dir``, a required parameter the options do not give):
    said by the dry run, not by the run after its untrained evaluation."""
    from dynametric.utils.registry import qualified_name

    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # a callable whose signature cannot be read: tried when the run builds it
        return
    try:
        signature.bind(Path("RUN"), **options)
    except TypeError as exc:
        raise ConfigError(f"the {name} logger's factory {qualified_name(factory)}{signature} cannot be called as "
                          f"factory(run_dir, **run.logger_options) ({exc}): a registered logger's factory takes the "
                          "run folder first, then the options as keywords", key="run.logger") from None


# ----------------------------------------------------------------------------------------------- MLflow's store
_SQL_MODULES = ("sqlalchemy", "alembic", "sqlparse")
"""What MLflow's database stores import (the full ``mlflow`` package installs them, ``mlflow-skinny`` does not)."""
_SQL_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")


def _mlflow_version() -> str:
    from importlib import metadata

    for dist in ("mlflow", "mlflow-skinny"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(dist)
    return str(getattr(importlib.import_module("mlflow"), "__version__", "0"))


def _major(version: str) -> int:
    match = re.match(r"\d+", version)
    return int(match.group()) if match else 0


def _file_store_refused() -> bool:
    """Whether this MLflow refuses its file store (MLflow 3.13 and later, unless ``MLFLOW_ALLOW_FILE_STORE`` is true;
    MLflow's own reading of the variable)."""
    try:
        variables = importlib.import_module("mlflow.environment_variables")
    except ImportError:
        return False
    allow = getattr(variables, "MLFLOW_ALLOW_FILE_STORE", None)
    if allow is None:
        return False
    try:
        return not bool(allow.get())
    except ValueError:  # MLflow refuses a value it cannot read as a boolean
        return True


def _missing_sql_modules() -> list[str]:
    return [m for m in _SQL_MODULES if importlib.util.find_spec(m) is None]


def mlflow_store(run_dir: str | Path, options: Mapping[str, Any] | None = None) -> dict[str, str]:
    """The tracking store of ``run.logger: mlflow`` as logger arguments (``tracking_uri``, and ``artifact_location``
    for a store in the run folder), checked to work with the MLflow installed here; nothing is written.

    In this order: ``run.logger_options.tracking_uri``; the environment's ``MLFLOW_TRACKING_URI``; the file store at
    ``run.logger_options.save_dir``; else a store in the run folder: the file store ``RUN/mlruns`` when the run
    started on it (the folder is there) or with MLflow 2 (as before), else MLflow 3's database store
    ``sqlite:///RUN/mlruns.db`` (its artifacts, the report's figures, in ``RUN/mlartifacts``), or the file store
    ``RUN/mlruns`` when the database's packages are missing (``mlflow-skinny``) and ``MLFLOW_ALLOW_FILE_STORE`` is
    true. A store that cannot work here is a one-line :class:`ConfigError`: a file store that this MLflow refuses (3.13
    and later, unless ``MLFLOW_ALLOW_FILE_STORE=true``), or a database store without SQLAlchemy, Alembic and
    sqlparse."""
    opts = dict(options or {})
    run_dir = Path(run_dir).absolute()
    key, source = "run.logger", "the run folder's, by default"
    if opts.get("tracking_uri"):
        uri = str(opts["tracking_uri"])
        source = key = "run.logger_options.tracking_uri"
    elif os.environ.get("MLFLOW_TRACKING_URI", "").strip():
        uri, source = os.environ["MLFLOW_TRACKING_URI"].strip(), "MLFLOW_TRACKING_URI"
    elif opts.get("save_dir"):
        uri = f"file:{Path(str(opts['save_dir'])).expanduser().absolute()}"
        source = key = "run.logger_options.save_dir"
    else:
        files, database = run_dir / "mlruns", run_dir / "mlruns.db"
        if files.is_dir() or (not database.exists() and (
                _major(_mlflow_version()) < 3 or (_missing_sql_modules() and not _file_store_refused()))):
            uri = f"file:{files}"
        else:
            uri = f"sqlite:///{database}"
    store = {"tracking_uri": uri}
    if uri.startswith("sqlite:") and source.startswith("the run folder") and "artifact_location" not in opts:
        store["artifact_location"] = str(run_dir / "mlartifacts")  # else ./mlartifacts, where the run was started
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", uri)
    kind = scheme.group(1).lower().split("+")[0] if scheme and len(scheme.group(1)) > 1 else "file"
    if uri.startswith("databricks"):
        kind = "databricks"
    if kind == "file" and _file_store_refused():
        raise ConfigError(
            f"the MLflow tracking store {uri} ({source}) is MLflow's file store, which MLflow {_mlflow_version()} "
            "refuses (maintenance mode) unless MLFLOW_ALLOW_FILE_STORE=true: set that variable, or use a database "
            "store (sqlite:///PATH.db; without tracking_uri, save_dir and MLFLOW_TRACKING_URI the run keeps one in "
            "the run folder, sqlite:///RUN/mlruns.db)", key=key)
    if kind in _SQL_SCHEMES and (missing := _missing_sql_modules()):
        raise ConfigError(
            f"the MLflow tracking store {uri} ({source}) is a database, which needs {', '.join(missing)} (the full "
            "mlflow package installs them, mlflow-skinny does not): pip install 'dynametric[mlflow]', or point "
            "run.logger_options.tracking_uri (or MLFLOW_TRACKING_URI) at an MLflow server, or set "
            "MLFLOW_ALLOW_FILE_STORE=true for the file store RUN/mlruns", key=key)
    return store


def check_logger(name: str, options: Mapping[str, Any] | None, run_dir: str | Path | None = None) -> None:
    """What :func:`build_logger` checks before it makes the logger, writing nothing (the dry run's check): the
    package, the options (:func:`check_logger_options`) and, for MLflow, the tracking store (:func:`mlflow_store`;
    ``run_dir``: the run folder, when known)."""
    check_logger_options(name, options)
    if built_in_kind(name) == "mlflow":
        mlflow_store(Path("RUN") if run_dir is None else run_dir, options)


# ---------------------------------------------------------------------------------------------- metric names
_MLFLOW_KEEPS = re.compile(r"[A-Za-z0-9_\-. /]")
_MLFLOW_WORDS = {"@": "_at_", "=": "_eq_"}


def mlflow_name(name: str) -> str:
    """A metric name as MLflow stores it: ``@`` becomes ``_at_`` (``recall@1`` -> ``recall_at_1``, ``map@r`` ->
    ``map_at_r``), ``=`` becomes ``_eq_`` (``fnmr@fmr=0.1`` -> ``fnmr_at_fmr_eq_0.1``), and any other character
    besides letters, digits, ``_``, ``-``, ``.``, ``/`` and space becomes ``_x<hex code>_`` (MLflow, through
    Lightning, dropped them with a warning per name). dynametric's own metric names hold none of these words, so the
    mapping is undone by replacing them back."""
    return "".join(ch if _MLFLOW_KEEPS.fullmatch(ch) else _MLFLOW_WORDS.get(ch, f"_x{ord(ch):x}_") for ch in name)


class MlflowNames:
    """The MLflow names of a run's metrics (:func:`mlflow_name`), with no name that is also the folder of another:
    a name that another one extends (``train/<term>`` beside ``train/<term>/<part>``, logged in the same row) is
    ``<name>/total``, in that row and every later one (MLflow's file store keeps each metric as a file: a file
    ``train/TripletMarginLoss`` and a file ``train/TripletMarginLoss/fine`` cannot both exist)."""

    def __init__(self) -> None:
        self.folders: set[str] = set()

    def __call__(self, metrics: Mapping[str, Any]) -> dict[str, Any]:
        for name in metrics:
            parts = str(name).split("/")
            self.folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
        out: dict[str, Any] = {}
        for name, value in metrics.items():
            mapped = mlflow_name(f"{name}/total" if name in self.folders else str(name))
            if mapped in out:
                raise ConfigError(f"the metrics {name!r} and another one would have the same MLflow name {mapped!r}",
                                  key="run.logger")
            out[mapped] = value
        return out


# ------------------------------------------------------------------------------------------- the run's loggers
class LoggerFailure(ConfigError):
    """A write of the run's logger that failed (its package raised): ``key 'run.logger': the <logger> logger failed
    <what it was writing>: <the package's reason>``."""


def _rows(metrics: Mapping[str, Any]) -> str:
    """The metrics of a row, for a message: the first name and how many more (``epoch`` not counted)."""
    names = sorted(k for k in metrics if k not in ("epoch", "step"))
    return f"{names[0]}" + (f" and {len(names) - 1} more" if len(names) > 1 else "") if names else "the epoch"


class _Guarded:
    """The writes of a Lightning logger (metrics, hyperparameters, saving, finishing, checkpoints), each turned into
    a :class:`LoggerFailure` when the logger's package raises; after one, the logger writes nothing more (Lightning
    finalizes a logger as ``failed`` when training stops on an exception)."""

    kind = "csv"
    failure: LoggerFailure | None = None

    def _call(self, what: str, write: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.failure is not None:
            return None
        try:
            return write(*args, **kwargs)
        except ConfigError:
            raise
        except OSError as exc:
            self.failure = LoggerFailure(f"the {self.kind} logger failed {what}: {type(exc).__name__}: "
                                         f"{first_sentence(exc)}", key="run.logger")
            if exc.filename is not None:  # names the file or folder at fault: the command prints `<path>: <reason>`
                raise
            raise self.failure from exc
        except Exception as exc:  # whatever the logger's package raises
            self.failure = LoggerFailure(f"the {self.kind} logger failed {what}: {type(exc).__name__}: "
                                         f"{first_sentence(exc)}", key="run.logger")
            raise self.failure from exc

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self._call(f"logging {_rows(metrics)} at step {step}", cast(Any, super()).log_metrics, metrics, step)

    def log_hyperparams(self, params: Any = None, *args: Any, **kwargs: Any) -> None:
        self._call("logging the hyperparameters (the resolved config)", cast(Any, super()).log_hyperparams, params,
                   *args, **kwargs)

    def save(self) -> None:
        self._call("saving", cast(Any, super()).save)

    def finalize(self, status: str = "success") -> None:
        self._call(f"finishing ({status})", cast(Any, super()).finalize, status)

    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self._call("after a checkpoint", cast(Any, super()).after_save_checkpoint, checkpoint_callback)


def _hparams_summaries() -> Any:
    """The ``hparams`` summary maker of the writer Lightning's logger uses (tensorboard's, else tensorboardX's)."""
    try:
        return importlib.import_module("torch.utils.tensorboard.summary").hparams
    except ImportError:
        return importlib.import_module("tensorboardX.summary").hparams


class RunTensorBoardLogger(_Guarded, TensorBoardLogger):
    """Lightning's TensorBoard logger whose HPARAMS tab shows the run: :meth:`log_hyperparams` writes the resolved
    config as the run's hyperparameters with the metrics :attr:`hparams_metrics` (the monitored metric at validation
    and test, ``val/<monitor>`` and ``test/<monitor>``), whose values TensorBoard takes from those scalars (their
    last value). Lightning writes that data only with an ``hp_metric`` placeholder (its ``default_hp_metric``, off
    here: it logged a ``-1``) or values given at the call."""

    kind = "tensorboard"
    hparams_metrics: tuple[str, ...] = ()

    def log_hyperparams(self, params: Any = None, metrics: Any = None, step: int | None = None,
                        *args: Any, **kwargs: Any) -> None:
        super().log_hyperparams(params, metrics, step)
        if metrics is None and self.hparams_metrics:
            self._call("writing the HPARAMS data", self._write_hparams, params)

    @rank_zero_only
    def _write_hparams(self, params: Any) -> None:
        from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

        flat = self._sanitize_params(_flatten_dict(_convert_params(params)))
        flat = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in flat.items()}
        summaries = _hparams_summaries()(flat, dict.fromkeys(self.hparams_metrics, 0.0))
        writer = self.experiment._get_file_writer()
        for summary in summaries:  # experiment, session start, session end
            writer.add_summary(summary)
        self.experiment.flush()


class RunWandbLogger(_Guarded, WandbLogger):
    """Lightning's Weights & Biases logger, its writes guarded (:class:`LoggerFailure`)."""

    kind = "wandb"


class RunMLFlowLogger(_Guarded, MLFlowLogger):
    """Lightning's MLflow logger, its writes guarded (:class:`LoggerFailure`), with the metric names MLflow stores
    (:class:`MlflowNames`: ``recall_at_1``, ``train/<term>/total``); Lightning's own rewriting dropped the ``@`` of
    every name with a warning each."""

    kind = "mlflow"
    _names: MlflowNames | None = None

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        if self._names is None:
            self._names = MlflowNames()
        super().log_metrics(self._names(metrics), step)


@contextlib.contextmanager
def _quiet(levels: Mapping[str, int]) -> Any:
    """The named Python loggers at (at least) the given levels inside the block."""
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in levels]
    for log, level in saved:
        log.setLevel(max(level, levels[log.name]))
    try:
        yield
    finally:
        for log, level in saved:
            log.setLevel(level)


def logger_run(logger: Any) -> dict[str, str] | None:
    """The tracking run of an MLflow or W&B logger, ``{"logger": "mlflow" | "wandb", "id": <run id>}``, which the
    checkpoints record so that ``train --resume`` logs into the same run (:func:`build_logger`'s ``continue_run``);
    ``None`` for the file loggers (CSV, TensorBoard: a resume appends to their folder) and without an id."""
    kinds = {cls.__name__ for cls in type(logger).__mro__} if logger is not None else set()
    try:
        if "MLFlowLogger" in kinds:
            name, run_id = "mlflow", getattr(logger, "_run_id", None)
        elif "WandbLogger" in kinds:
            name, run_id = "wandb", logger.version
        else:
            return None
    except Exception:  # an id the logger cannot say (another rank's do-nothing experiment): nothing to continue
        return None
    return {"logger": name, "id": str(run_id)} if run_id else None


def build_logger(name: str, run_dir: str | Path, options: Mapping[str, Any] | None = None, *,
                 hparams_metrics: Iterable[str] = (), continue_run: Mapping[str, Any] | None = None) -> Any:
    """The Lightning logger for ``run.logger``, writing under ``run_dir`` (CSV: ``run_dir/logs/metrics.csv``);
    ``options`` checked by :func:`check_logger`. ``hparams_metrics``: the metrics TensorBoard's HPARAMS tab shows
    (:class:`RunTensorBoardLogger`). MLflow's store is opened here, and its run created (:func:`mlflow_store`): a
    store that does not open is an error before any work. Any error of the logger's making is one line keyed
    ``run.logger``. ``continue_run`` (a resumed run's :func:`logger_run`, for the same logger): log into that MLflow
    run (``run_id``) or W&B run (``id``, ``resume="allow"``), unless ``options`` name a run themselves. An MLflow
    run to log into that was deleted (in MLflow's trash, where it takes nothing) is refused here, before any work:
    keyed ``run.logger`` where it is ``continue_run``'s (the caller starts a new run), ``run.logger_options.run_id``
    where the options name it."""
    check_logger(name, options, run_dir)
    run_dir = Path(run_dir)
    opts = dict(options or {})
    kind = built_in_kind(name)
    if kind is None:
        return _build_registered(name, run_dir, opts)
    continued = False
    if continue_run is not None and continue_run.get("logger") == kind:
        if kind == "mlflow" and "run_id" not in opts:
            opts["run_id"] = str(continue_run["id"])
            continued = True
        elif kind == "wandb" and "id" not in opts:
            opts["id"] = str(continue_run["id"])
            opts.setdefault("resume", "allow")
    try:
        if kind == "csv":
            return KeepingCSVLogger(save_dir=run_dir, name="", version="logs", **opts)
        if kind == "tensorboard":
            opts.setdefault("default_hp_metric", False)
            tensorboard = RunTensorBoardLogger(save_dir=run_dir, name="", version="tensorboard", **opts)
            tensorboard.hparams_metrics = tuple(hparams_metrics)
            return tensorboard
        if kind == "wandb":
            opts.setdefault("name", run_dir.name)
            return RunWandbLogger(save_dir=run_dir, **opts)
        opts.setdefault("run_name", run_dir.name)
        opts.update(mlflow_store(run_dir, opts))
        opts.pop("save_dir", None)  # in tracking_uri
        # MLflow's INFO lines as it makes its database, Lightning's "Experiment ... not found. Creating it." (MLflow
        # sets its loggers' levels when it is first imported: before the block)
        importlib.import_module("mlflow")
        with _quiet({"mlflow": logging.WARNING, "alembic": logging.WARNING,
                     "lightning.pytorch.loggers.mlflow": logging.ERROR}):
            mlflow = RunMLFlowLogger(**opts)
            _ = mlflow.experiment  # the store opened (its tables made), the experiment and the run created
            if opts.get("run_id") and mlflow.experiment.get_run(str(opts["run_id"])).info.lifecycle_stage == "deleted":
                # MLflow refuses every write into it ("must be in 'active' lifecycle_stage"): said now, not at the
                # first write, after the run has started
                if continued:
                    raise ConfigError("it was deleted: it is in MLflow's trash", key="run.logger")
                raise ConfigError(f"the mlflow run {opts['run_id']} was deleted (it is in MLflow's trash): restore it "
                                  "in MLflow or name another run", key="run.logger_options.run_id")
        return mlflow
    except ConfigError:
        raise
    except Exception as exc:  # the logger's own refusal (a bad value, a store that does not open, ...)
        raise ConfigError(f"the {name} logger cannot start: {type(exc).__name__}: {first_sentence(exc)}",
                          key="run.logger_options" if isinstance(exc, TypeError) else "run.logger") from None


def _build_registered(name: str, run_dir: Path, opts: dict[str, Any]) -> RegisteredLogger:
    """The logger a user's module registered under ``name`` (``LOGGERS[name](run_dir, **opts)``), guarded; its
    refusal, or something that is not a Lightning logger, is one line keyed ``run.logger``."""
    from dynametric.utils.registry import qualified_name

    factory = LOGGERS[name]
    try:
        inner = factory(run_dir, **opts)
    except ConfigError:
        raise
    except Exception as exc:  # the factory's or its package's refusal
        raise ConfigError(f"the {name} logger cannot start: {type(exc).__name__}: {first_sentence(exc)}",
                          key="run.logger_options" if isinstance(exc, TypeError) else "run.logger") from None
    if not isinstance(inner, Logger):
        raise ConfigError(f"the {name} logger's factory {qualified_name(factory)} returned a "
                          f"{type(inner).__name__}, not a Lightning logger (lightning.pytorch.loggers.Logger)",
                          key="run.logger")
    return RegisteredLogger(inner, name)


class _Forwarding(Logger):
    """A Lightning logger that hands every call to ``inner`` (a registered logger), so that :class:`_Guarded` can
    stand in front of a class it does not know."""

    def __init__(self, inner: Logger) -> None:
        super().__init__()
        self.inner = inner

    @property
    def name(self) -> str | None:
        return self.inner.name

    @property
    def version(self) -> int | str | None:
        return self.inner.version

    @property
    def root_dir(self) -> str | None:
        return self.inner.root_dir

    @property
    def log_dir(self) -> str | None:
        return self.inner.log_dir

    @property
    def save_dir(self) -> str | None:
        return self.inner.save_dir

    @property
    def group_separator(self) -> str:
        return self.inner.group_separator

    @property
    def experiment(self) -> Any:
        return getattr(self.inner, "experiment", None)

    # the writes reach the inner logger from global rank 0 only, as Lightning's own loggers write (under DDP every
    # rank logs the loss and the untrained metrics; a logger of the user's own would get each row once per rank)
    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        self.inner.log_metrics(dict(metrics), step)

    @rank_zero_only
    def log_hyperparams(self, params: Any = None, *args: Any, **kwargs: Any) -> None:
        self.inner.log_hyperparams(params, *args, **kwargs)

    @rank_zero_only
    def log_graph(self, model: Any, input_array: Any = None) -> None:
        self.inner.log_graph(model, input_array)

    @rank_zero_only
    def save(self) -> None:
        self.inner.save()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.inner.finalize(status)

    @rank_zero_only
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        self.inner.after_save_checkpoint(checkpoint_callback)

    def __getattr__(self, attr: str) -> Any:  # anything else the inner logger offers (log_image, log_text, ...)
        if attr == "inner":
            raise AttributeError(attr)
        return getattr(self.inner, attr)


class RegisteredLogger(_Guarded, _Forwarding):
    """A logger of a user's module (``run.logger`` registered in ``LOGGERS`` with a factory): its writes are
    guarded as the built-in loggers' are (a failure is one :class:`LoggerFailure` line naming it, then it writes
    nothing more). ``inner`` is the logger the factory returned."""

    def __init__(self, inner: Logger, kind: str) -> None:
        _Forwarding.__init__(self, inner)
        self.kind = kind


class _KeepingWriter(ExperimentWriter):
    """Lightning's CSV writer, keeping the rows an earlier process wrote (see :class:`KeepingCSVLogger`)."""

    def _check_log_dir_exists(self) -> None:  # Lightning deletes metrics.csv here; a resumed run keeps its rows
        self._rows: list[dict[str, Any]] | None = None

    def log_hparams(self, params: dict[str, Any]) -> None:
        """As Lightning's (``hparams.yaml`` by its own YAML writer), but replacing the file atomically: Lightning
        writes it in place, so a kill or a full disk while writing left a truncated file."""
        self.hparams.update(params)
        atomic_write_with(Path(self.log_dir) / self.NAME_HPARAMS_FILE,
                          lambda tmp: save_hparams_to_yaml(tmp, self.hparams))

    def save(self) -> None:
        if not self.metrics:
            return
        path = Path(self.metrics_file_path)
        if self._rows is None:  # the rows already in the file (an earlier process of this run), read once
            self._rows = []
            if path.is_file():
                with path.open(newline="", encoding="utf-8") as fh:
                    reader = csv.DictReader(fh)
                    self._rows = list(reader)
                    self.metrics_keys = sorted({*(reader.fieldnames or []), *self.metrics_keys})
        self._record_new_keys()
        self._rows += self.metrics
        with atomic_open(path, "w", newline="", encoding="utf-8") as fh:  # every row, under the merged header
            writer = csv.DictWriter(fh, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(self._rows)
        self.metrics = []


class KeepingCSVLogger(_Guarded, CSVLogger):
    """Lightning's ``CSVLogger`` (``<save_dir>/<version>/metrics.csv``) that keeps the rows already in the file: a
    resumed run adds its rows after them, a column that appears later is added to the header (empty in the earlier
    rows), and every write replaces the file atomically (:func:`dynametric.utils.io.atomic_open`). As in Lightning's
    own CSV logger, only global rank 0 has the writer (and creates the folder): another DDP rank's process gets
    Lightning's do-nothing experiment, so it creates no folder of its own. Its writes are guarded
    (:class:`LoggerFailure`: a full disk is one line, not a traceback)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment


def flat_metrics(prefix: str, results: Mapping[str, Any]) -> dict[str, float | int]:
    """``{"<prefix>/<scale>/<metric>": value}`` for the numeric entries of an evaluation result: the numbers one
    level down. So the per-category block (``by_category``) is not logged: it holds one dict per category (of
    scales, of metrics), no number at that level; its keys are user text (any characters, possibly hundreds of them)
    that would make awkward metric names and one column per category, scale and metric; it stays in
    ``metrics.json``, the end-of-run summary and ``report.html`` (docs/training.md, *Loggers*). Nor is the
    ``protocol`` block (what the protocol evaluated and excluded: counts such as ``queries`` and ``excluded_pairs``,
    not metrics, one level down: left out by name; the validation rounds' logging skips it too,
    :meth:`dynametric.engine.module.MetricLearningModule._log_results`). The values are those of the results
    (``metrics.json``'s): Python floats (float64) and the counts as integers."""
    out: dict[str, float | int] = {}
    for scale, values in results.items():
        if not isinstance(values, Mapping) or scale == "protocol":
            continue
        for metric, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{prefix}/{scale}/{metric}"] = value if isinstance(value, int) else float(value)
    return out


def log_results(logger: Any, prefix: str, results: Mapping[str, Any], step: int) -> None:
    metrics = flat_metrics(prefix, results)
    if logger is not None and metrics:
        logger.log_metrics(metrics, step=step)
        logger.save()


_FIGURE = re.compile(r"<h2>(.*?)</h2>|<img src=\"data:image/png;base64,([A-Za-z0-9+/=]+)\"")


def report_figures(report_html: str) -> list[tuple[str, bytes]]:
    """The PNG figures of a ``report.html`` as ``(tag, png bytes)``; the tag is the section title (numbered when a
    section holds several figures)."""
    out: list[tuple[str, bytes]] = []
    section, count = "report", 0
    for m in _FIGURE.finditer(report_html):
        if m.group(1) is not None:
            section, count = re.sub(r"<[^>]+>", "", html.unescape(m.group(1))).strip() or "report", 0
            continue
        count += 1
        slug = re.sub(r"[^a-z0-9]+", "_", section.lower()).strip("_") or "figure"
        out.append((slug if count == 1 else f"{slug}_{count}", base64.b64decode(m.group(2))))
    return out


def log_figures(logger: Any, figures: list[tuple[str, bytes]], step: int) -> int:
    """Send the figures to the loggers that take images; returns how many were logged."""
    if logger is None or not figures:
        return 0
    import numpy as np
    from PIL import Image

    target: Any = logger.inner if isinstance(logger, RegisteredLogger) else logger  # a registered one: what it made
    kinds = {cls.__name__ for cls in type(target).__mro__}  # Lightning's class, or one built on it
    kind = next((k for k in ("TensorBoardLogger", "WandbLogger", "MLFlowLogger") if k in kinds), None)
    if kind is None:
        return 0

    def send() -> None:
        for tag, png in figures:
            image = Image.open(io.BytesIO(png)).convert("RGB")
            if kind == "TensorBoardLogger":
                target.experiment.add_image(f"report/{tag}", np.asarray(image), step, dataformats="HWC")
            elif kind == "WandbLogger":
                target.log_image(key=f"report/{tag}", images=[image], step=step)
            else:
                target.experiment.log_image(target.run_id, image, f"report/{tag}.png")
        if kind == "TensorBoardLogger":
            target.experiment.flush()

    if isinstance(logger, _Guarded):
        logger._call("logging the report's figures", send)
    else:
        send()
    return len(figures)


class MetricProgressBar(TQDMProgressBar):
    """Lightning's bar without the logger's version number (``v_num``): it shows the loss and the monitored
    validation metric (logged with ``prog_bar=True``). Drawn on stderr, as ``embed``'s and ``evaluate``'s bars are
    (Lightning draws on stdout, which mixed every redraw into the results of ``dynametric train > out.txt``)."""

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        items = dict(super().get_metrics(trainer, pl_module))
        items.pop("v_num", None)
        return items

    # Lightning's bars are made with file=sys.stdout, read when each is made: they are made with stdout pointing
    # at stderr
    def init_sanity_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_sanity_tqdm()

    def init_train_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_train_tqdm()

    def init_predict_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_predict_tqdm()

    def init_validation_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_validation_tqdm()

    def init_test_tqdm(self) -> Any:
        with contextlib.redirect_stdout(sys.stderr):
            return super().init_test_tqdm()
