"""``dynametric train --dry-run`` (:func:`dry_run`): the checks a run makes before it writes anything, then the
resolved configuration, the components, the trainer and loader settings on this machine and the data's sizes; no
training, nothing written, nothing downloaded. (Named ``dryrun``, not ``dry_run``: :mod:`dynametric.pipeline` exports
the function :func:`dry_run`, which would hide a submodule of that name from ``import dynametric.pipeline.dry_run``.)"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dynametric.config.loader import check_config, config_notes
from dynametric.config.schema import anchored
from dynametric.engine.builders import (
    Components,
    build_datasets,
    check_split_roles,
    declared_scale_names,
    root_missing,
    trainer_settings,
)
from dynametric.engine.module import parameter_groups
from dynametric.engine.objective import term_miners
from dynametric.engine.preflight import check_batches, scale_notes
from dynametric.engine.trainer import TrainerSettings, plan_trainer
from dynametric.pipeline.components import build_components
from dynametric.pipeline.protocols import data_root_notes, protocol_split_keys
from dynametric.pipeline.run_checks import (
    _check_one_process_method,
    _check_test_splits,
    _checked_loader_settings,
    _held_out_data,
    check_backbone_forward,
    check_eval_shards,
    setup_notes,
)
from dynametric.pipeline.run_folder import PYTHON_FOLDER_KEY, check_new_run_folder

if TYPE_CHECKING:
    from dynametric.config import Config


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
    check_config(cfg)  # a Config built or changed in Python: the loader's checks, again
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
    for line in setup_notes(cfg, comps.embedder, world, datasets is None or datasets.val is not None,
                            None if datasets is None else datasets.train, comps.module.automatic_optimization):
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
