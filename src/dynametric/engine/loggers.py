"""Experiment loggers for ``dynametric train`` (``run.logger``): ``csv`` (default, no extra dependency),
``tensorboard``, ``wandb``, ``mlflow``, all Lightning loggers writing under the run folder.

Every logger receives the training loss, the per-scale validation metrics of every round (``val/<scale>/<metric>``),
the untrained and final test metrics (``untrained/<scale>/<metric>``, ``test/<scale>/<metric>``) and, when
``run.report`` is on, the report's figures: as images for TensorBoard (``add_image``), Weights & Biases
(``log_image``) and MLflow (``log_image`` artifacts); the CSV logger has no image support (the figures stay in
``report.html``). The ``csv`` logger keeps what ``logs/metrics.csv`` already holds: a resumed run adds its rows
after the earlier ones (the untrained row, the rounds before a kill, the test row of a finished run), one header
for all columns (a column that appears later is added, with empty cells in the earlier rows), and every write
replaces the file atomically (Lightning's own CSV logger deletes an existing file when it starts and appends in
place).
``run.logger_options`` are keyword arguments of the Lightning logger (e.g. ``{project: x,
offline: true}`` for wandb, ``{tracking_uri: http://...}`` for mlflow). A logger whose package is missing is a
:class:`~dynametric.errors.ConfigError` naming the extra to install, raised before any work is done.
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
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from dynametric.errors import ConfigError
from dynametric.utils.io import atomic_open, atomic_write_with

LOGGERS = ("csv", "tensorboard", "wandb", "mlflow")
_NEEDS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",), "mlflow": ("mlflow",)}


def check_logger_available(name: str) -> None:
    """Raise a :class:`ConfigError` if the package behind ``run.logger: name`` is not installed."""
    if name not in LOGGERS:
        raise ConfigError(f"unknown logger {name!r}; expected one of {list(LOGGERS)}", key="run.logger")
    modules = _NEEDS.get(name, ())
    if modules and not any(importlib.util.find_spec(m) is not None for m in modules):
        raise ConfigError(f"run.logger {name!r} needs the {name} package: pip install 'dynametric[{name}]' "
                          "(or set run.logger=csv)", key="run.logger")


_SET_BY_RUN = {"csv": ("save_dir", "name", "version"), "tensorboard": ("save_dir", "name", "version", "log_dir"),
               "wandb": ("save_dir",), "mlflow": ()}
"""Logger arguments the run sets itself (the logger writes under the run folder)."""


def _logger_class(name: str) -> Any:
    from lightning.pytorch import loggers

    return {"csv": KeepingCSVLogger, "tensorboard": loggers.TensorBoardLogger, "wandb": loggers.WandbLogger,
            "mlflow": loggers.MLFlowLogger}[name]


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
    that takes any keyword)."""
    own, forwarded = _logger_class(name).__init__, _forwarded_to(name)
    names: list[str] = []
    for fn in (own, forwarded):
        if fn is None:
            continue
        for arg, param in inspect.signature(fn).parameters.items():
            if param.kind is param.VAR_KEYWORD:
                if fn is forwarded or forwarded is None:
                    return None  # the target takes any keyword, or the logger forwards where we cannot inspect
                continue
            if arg != "self" and param.kind is not param.VAR_POSITIONAL and arg not in _SET_BY_RUN[name]:
                names.append(arg)
    return sorted(set(names))


def check_logger_options(name: str, options: Mapping[str, Any] | None) -> None:
    """A :class:`ConfigError` keyed ``run.logger_options.<key>`` for a key the logger would refuse or the run sets
    itself, before anything is written: TensorBoard's logger passes unknown keys on to its ``SummaryWriter``, made
    only at the first write (a run then failed after its untrained evaluation). The values are the logger's to
    check."""
    check_logger_available(name)
    accepted = logger_arguments(name)
    for key in options or {}:
        if key in _SET_BY_RUN[name]:
            raise ConfigError(f"{key} is set by dynametric (the {name} logger writes under the run folder); remove "
                              "it", key=f"run.logger_options.{key}")
        if accepted is not None and key not in accepted:
            near = difflib.get_close_matches(str(key), accepted, n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(f"the {name} logger takes no option {key!r}; {hint}it takes {', '.join(accepted)}",
                              key=f"run.logger_options.{key}")


def build_logger(name: str, run_dir: str | Path, options: Mapping[str, Any] | None = None) -> Any:
    """The Lightning logger for ``run.logger``, writing under ``run_dir`` (CSV: ``run_dir/logs/metrics.csv``);
    ``options`` checked by :func:`check_logger_options`."""
    check_logger_options(name, options)
    run_dir = Path(run_dir)
    opts = dict(options or {})
    try:
        if name == "csv":
            return KeepingCSVLogger(save_dir=run_dir, name="", version="logs", **opts)
        if name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            opts.setdefault("default_hp_metric", False)
            return TensorBoardLogger(save_dir=run_dir, name="", version="tensorboard", **opts)
        if name == "wandb":
            from lightning.pytorch.loggers import WandbLogger

            opts.setdefault("name", run_dir.name)
            return WandbLogger(save_dir=run_dir, **opts)
        from lightning.pytorch.loggers import MLFlowLogger

        opts.setdefault("run_name", run_dir.name)
        if "tracking_uri" not in opts:
            opts.setdefault("save_dir", str(run_dir / "mlruns"))
        return MLFlowLogger(**opts)
    except TypeError as exc:
        raise ConfigError(f"bad option for the {name} logger: {exc}", key="run.logger_options") from None


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


class KeepingCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` (``<save_dir>/<version>/metrics.csv``) that keeps the rows already in the file: a
    resumed run adds its rows after them, a column that appears later is added to the header (empty in the earlier
    rows), and every write replaces the file atomically (:func:`dynametric.utils.io.atomic_open`). As in Lightning's
    own CSV logger, only global rank 0 has the writer (and creates the folder): another DDP rank's process gets
    Lightning's do-nothing experiment, so it creates no folder of its own."""

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment


def flat_metrics(prefix: str, results: Mapping[str, Any]) -> dict[str, float]:
    """``{"<prefix>/<scale>/<metric>": value}`` for the numeric entries of an evaluation result: the numbers one
    level down. So the per-category block (``by_category``) is not logged: it holds one dict per category (of
    scales, of metrics), no number at that level; its keys are user text (any characters, possibly hundreds of them)
    that would make awkward metric names and one column per category, scale and metric; it stays in
    ``metrics.json``, the end-of-run summary and ``report.html`` (docs/training.md, *Loggers*). Nor is the
    ``protocol`` block (what the protocol evaluated and excluded: counts such as ``queries`` and ``excluded_pairs``,
    not metrics, one level down: left out by name; the validation rounds' logging skips it too,
    :meth:`dynametric.engine.module.MetricLearningModule._log_results`)."""
    out = {}
    for scale, values in results.items():
        if not isinstance(values, Mapping) or scale == "protocol":
            continue
        for metric, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"{prefix}/{scale}/{metric}"] = float(value)
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

    kind = type(logger).__name__
    if kind not in ("TensorBoardLogger", "WandbLogger", "MLFlowLogger"):
        return 0
    for tag, png in figures:
        image = Image.open(io.BytesIO(png)).convert("RGB")
        if kind == "TensorBoardLogger":
            logger.experiment.add_image(f"report/{tag}", np.asarray(image), step, dataformats="HWC")
        elif kind == "WandbLogger":
            logger.log_image(key=f"report/{tag}", images=[image], step=step)
        else:
            logger.experiment.log_image(logger.run_id, image, f"report/{tag}.png")
    if kind == "TensorBoardLogger":
        logger.experiment.flush()
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
