"""Which test protocol a config asks for (its method's own, else the ``eval`` section's) and the evaluation of a
trained checkpoint with it (``dynametric evaluate --checkpoint``). The protocols themselves are the engine's
(:mod:`dynametric.engine.protocols`, :mod:`dynametric.methods.dyml.protocol`); choosing one needs the method
registry, so the choice is made here, above :mod:`dynametric.methods`."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dynametric.engine.protocols import (
    CheckpointEvaluation,
    Evaluate,
    EvaluationProtocol,
    LeaveOneOut,
    MethodTestProtocol,
    QueryGallery,
)
from dynametric.errors import ConfigError, InputError
from dynametric.methods import method_for

if TYPE_CHECKING:
    from dynametric.config import Config


def method_test_protocol(cfg: Config) -> MethodTestProtocol | None:
    """The own test protocol of a config's method (:meth:`dynametric.methods.base.Method.test_protocol`, a
    :class:`~dynametric.engine.protocols.MethodTestProtocol`; ``method.name: dyml``: the DyML protocol), validated;
    ``None`` for a method that tests with the ``eval`` section's protocol (formerly
    ``dynametric.methods.dyml.protocol.protocol_from_config``)."""
    method = method_for(cfg)
    protocol: MethodTestProtocol | None = method.test_protocol(method.validate(cfg))
    return protocol


def protocol_from_config(cfg: Config, split: str | None = None,
                         scale_names: Sequence[str] | None = None) -> EvaluationProtocol:
    """The test protocol of a config: leave-one-out on ``split`` when one is given; else the method's own
    (:func:`method_test_protocol`, e.g. the DyML protocol of ``method.name: dyml``) bound to ``data.test_split`` and
    ``scale_names``, query -> gallery for ``eval.protocol: query_gallery``, leave-one-out on
    ``data.test_split`` otherwise. ``scale_names``: the run's, for the leave-one-out protocols (default: the
    dataset's); query -> gallery takes the query split's. ``eval.per_category`` says whether the leave-one-out and
    query -> gallery protocols report per query category where the data has categories."""
    per_category = bool(cfg.eval.per_category)
    if split is not None:
        return LeaveOneOut(split, scale_names, per_category)
    own = method_test_protocol(cfg)  # the method wiring: a method's own test protocol
    if own is not None:
        return own.bind(test_split=cfg.data.test_split, scale_names=scale_names)
    if cfg.eval.protocol == "query_gallery":
        return QueryGallery(cfg.eval.query_split, cfg.eval.gallery_split, bool(cfg.eval.query_in_gallery),
                            per_category)
    return LeaveOneOut(cfg.data.test_split, scale_names, per_category)


def protocol_split_keys(cfg: Config) -> dict[str, str]:
    """The splits the config's test protocol evaluates (:func:`protocol_from_config`), each with the key that chose
    it: ``data.test_split`` (leave-one-out), ``eval.query_split`` / ``eval.gallery_split`` (query -> gallery), the
    keys a method's own protocol names (:meth:`~dynametric.engine.protocols.MethodTestProtocol.split_keys`: DyML's
    ``method.kwargs.scales`` or ``method.kwargs.variant`` for its per-scale splits, ``data.test_split`` for its
    all-in-one split). What :func:`dynametric.engine.builders.check_split_roles` keeps training and validation
    away from."""
    protocol = protocol_from_config(cfg)
    if isinstance(protocol, QueryGallery):
        keys = {protocol.gallery_split: "eval.gallery_split"}
        keys[protocol.query_split] = "eval.query_split"
        return keys
    if isinstance(protocol, MethodTestProtocol):
        return protocol.split_keys(cfg)
    return {split: "data.test_split" for split in protocol.required_splits()}


def check_test_splits(cfg: Config, splits: Sequence[str]) -> None:
    """The splits the config's test protocol embeds (:func:`protocol_from_config`) must be among ``splits``, the
    splits the data offers (:func:`dynametric.engine.builders.available_splits`); else a ConfigError naming the key
    that chose the missing split and what fits. ``dynametric train`` (and its dry run, when the data is there)
    checks this before anything is written: a run would otherwise fail only at its untrained evaluation."""
    protocol = protocol_from_config(cfg)
    missing = [s for s in protocol.required_splits() if s not in splits]
    if not missing:
        return
    fmt = cfg.data.format
    offered = f"the {fmt} data has the splits {', '.join(splits)}" if splits else f"the {fmt} data lists no split"
    if isinstance(protocol, MethodTestProtocol):  # a method's own protocol says what is wrong, or leaves it here
        error = protocol.missing_splits_error(cfg, missing, splits, offered)
        if error is not None:
            raise error
    if isinstance(protocol, QueryGallery):
        role = "query" if protocol.query_split in missing else "gallery"
        key, what = f"eval.{role}_split", f"the {role} split {missing[0]!r} of eval.protocol query_gallery"
    else:
        key, what = "data.test_split", f"the test split {missing[0]!r}"
        if "query" in splits and "gallery" in splits:  # OML's splits, a csv's: say what to set (was: only the splits)
            others = [x for x in splits if x not in (cfg.data.train_split, "val", "query", "gallery")]
            alone = f", or data.test_split={others[0]} to evaluate that split leave-one-out" if others else ""
            raise ConfigError(f"{what} is not in the data: {offered}; to test query -> gallery set "
                              "eval.protocol=query_gallery (its splits eval.query_split=query and "
                              "eval.gallery_split=gallery are the defaults; eval.query_in_gallery=true where rows are "
                              f"both query and gallery){alone}", key=key)
    raise ConfigError(f"{what} is not in the data: {offered}" + _suggest(missing[0], splits), key=key)


def data_root_notes(cfg: Config) -> list[str]:
    """The ``note:`` lines a run (and its dry run) says about its dataset root, as ``data inspect`` does
    (:func:`~dynametric.data.registry.root_notes`: a DyML release read as another one)."""
    from dynametric.data.registry import root_notes

    return [f"note: {text} (data.format: {cfg.data.format})" for text in root_notes(cfg.data.format, cfg.data.root)]


def _check_listed_test_splits(cfg: Config) -> None:
    """:func:`check_test_splits` against the splits the data lists, when it lists them (a data set that cannot be
    listed is left to the error of the split that is read)."""
    from dynametric.engine.builders import available_splits

    try:
        splits = available_splits(cfg)
    except (InputError, OSError):
        return
    check_test_splits(cfg, splits)


def _suggest(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


@dataclass(frozen=True)
class CheckpointConfig:
    """A trained checkpoint and the run config it is evaluated with, read and resolved once
    (:func:`checkpoint_config`) and handed to :func:`run_eval_options` and :func:`evaluate_checkpoint`."""

    checkpoint: Path
    """The checkpoint file (checked to be one)."""
    config_path: Path
    """The config file it was read from: ``--config``, else ``config.yaml`` beside the checkpoint."""
    cfg: Config
    """That config with the overrides applied, validated."""


def checkpoint_config(checkpoint: str | os.PathLike[str], config: Any = None,
                      overrides: Sequence[str] = ()) -> CheckpointConfig:
    """The checkpoint file (one-line errors for a folder or a missing file) and its run config (``config``, else
    ``config.yaml`` beside it) with ``overrides``, loaded once."""
    from dynametric.config import load_config
    from dynametric.engine.inference import checkpoint_path, config_beside

    checkpoint = checkpoint_path(checkpoint)
    path = config_beside(checkpoint, config)
    return CheckpointConfig(checkpoint, path, load_config(path, overrides))


def _loaded(checkpoint: str | os.PathLike[str] | CheckpointConfig, config: Any,
            overrides: Sequence[str]) -> CheckpointConfig:
    """``checkpoint`` when it is already a :class:`CheckpointConfig` (then ``config`` and ``overrides`` must not be
    given: they were applied when it was loaded), else :func:`checkpoint_config`."""
    if not isinstance(checkpoint, CheckpointConfig):
        return checkpoint_config(checkpoint, config, overrides)
    if config is not None or overrides:
        raise TypeError("config and overrides apply when a CheckpointConfig is loaded (checkpoint_config), not "
                        "to one already loaded")
    return checkpoint


def run_eval_options(checkpoint: str | os.PathLike[str] | CheckpointConfig, config: Any = None,
                     overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The evaluation options of the run a checkpoint comes from (its ``eval.metrics``, ``k_values``, ``distance``,
    ``empty_queries``, ``memory_budget_bytes``), as its validation and test used them: the defaults of
    ``dynametric evaluate --checkpoint``, so it reproduces the run's metrics unless an option says otherwise.
    ``checkpoint``: a checkpoint file (its config read from ``config`` with ``overrides``) or a
    :class:`CheckpointConfig` already loaded."""
    from dynametric.engine.builders import eval_kwargs

    return eval_kwargs(_loaded(checkpoint, config, overrides).cfg)


def evaluate_checkpoint(checkpoint: str | os.PathLike[str] | CheckpointConfig, config: Any = None, *,
                        split: str | None = None,
                        overrides: Sequence[str] = (), progress: bool = False, options: Any = None,
                        evaluate: Evaluate | None = None,
                        check: Callable[[EvaluationProtocol], None] | None = None,
                        check_split: Callable[[EvaluationProtocol, str, Any], None] | None = None
                        ) -> CheckpointEvaluation:
    """Evaluate a trained checkpoint with its config's test protocol (:func:`protocol_from_config`; ``split``:
    leave-one-out on that split instead), as ``dynametric evaluate --checkpoint`` does.

    ``checkpoint``: a checkpoint file, or a :class:`CheckpointConfig` already loaded (:func:`checkpoint_config`;
    then without ``config`` and ``overrides``, which it holds); ``config``: the run config path (``None``:
    ``config.yaml`` beside the checkpoint); ``options``:
    :class:`dynametric.engine.inference.InferenceOptions` (default: the config's evaluation loader on the ``auto``
    device; an unset precision is the run's, :func:`~dynametric.engine.inference.checkpoint_precision`);
    ``evaluate``: the metrics with the caller's options bound; ``check(protocol)``: the caller's checks, run before
    anything is loaded or embedded; ``check_split(protocol, split, dataset)``: the caller's checks of each split
    once it is loaded, before anything is embedded (e.g. of the data's ``sequence_ids``)."""
    from dynametric.config import errors_located
    from dynametric.engine.builders import load_eval_split
    from dynametric.engine.inference import checkpoint_options, checkpoint_precision, embed_dataset, load_trained

    loaded = _loaded(checkpoint, config, overrides)
    cfg = loaded.cfg
    # an error about a config key, from the protocol's choice to the metrics, names where the key was set (`<command
    # line> key 'eval.query_in_gallery': ...`, `config.yaml:12 key ...`), as `dynametric train` says it
    with errors_located(cfg):
        protocol = protocol_from_config(cfg, split)
        if split is None:
            _check_listed_test_splits(cfg)
        if check is not None:
            check(protocol)
        trained = load_trained(loaded.checkpoint, loaded.config_path, cfg=cfg)
        opts, note = checkpoint_precision(cfg, checkpoint_options(cfg, options))  # unset precision: the run's
        if progress:
            opts.progress = True
        run = opts.resolve()

        def embed(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
            return embed_dataset(trained.model, ds, head=trained.head, options=run)

        def load(name: str) -> Any:
            dataset = load_eval_split(cfg, name)
            if check_split is not None:
                check_split(protocol, name, dataset)
            return dataset

        sets = protocol.embed_splits(load, embed)
        result = protocol.evaluate(sets, evaluate)
    splits = " -> ".join(protocol.required_splits()) if isinstance(protocol, QueryGallery) else \
        f"split {protocol.required_splits()[0]!r}" if isinstance(protocol, LeaveOneOut) else protocol.name
    notes = [*trained.notes, *([note] if note else [])]
    if isinstance(protocol, (LeaveOneOut, QueryGallery)) and protocol.per_category:
        queries = sets[protocol.required_splits()[0]].dataset
        dropped = getattr(queries, "category_note", None)  # the data has categories, the queries none: say why
        if dropped and getattr(queries, "category_ids", None) is None:
            notes.append(dropped)
    return CheckpointEvaluation(result, protocol, sets, f"{trained.checkpoint}: {cfg.data.format} {splits}", notes)


def evaluate_dyml_checkpoint(checkpoint: str | os.PathLike[str], config: Any, *, overrides: Sequence[str] = (),
                             progress: bool = False, options: Any = None,
                             evaluate: Evaluate | None = None) -> dict[str, Any] | None:
    """The DyML protocol for a trained checkpoint, or ``None`` when the config is not a DyML config (formerly
    ``dynametric.engine.dyml.evaluate_checkpoint``). ``config``: the run config path (``None``: ``config.yaml`` beside
    the checkpoint); ``options``: :class:`dynametric.engine.inference.InferenceOptions` (default: the
    config's evaluation loader on the ``auto`` device). Any config: :func:`evaluate_checkpoint`."""
    loaded = checkpoint_config(checkpoint, config, overrides)
    if method_test_protocol(loaded.cfg) is None:
        return None
    return evaluate_checkpoint(loaded, progress=progress, options=options, evaluate=evaluate).result
