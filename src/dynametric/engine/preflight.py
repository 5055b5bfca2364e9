"""Checks a run makes before it spends time: the monitor's scale alias and whether a training batch fits the data.
(Whether pretrained weights are already on disk is the dry run's check, in :mod:`dynametric.pipeline.dryrun`, through
:func:`dynametric.models.backbones.pretrained_weights_status`; a dry run never downloads them.)

* ``trainer.monitor`` may name a scale by position: ``finest/<metric>`` (the default, ``finest/map@r``) is the
  first label column whatever the dataset calls it (``fine``, ``digit``, ``species``), ``coarsest/<metric>`` the
  last. :func:`resolve_monitor` turns the alias into the dataset's own scale name (it is defined in
  :mod:`dynametric.config.schema` and re-exported by :mod:`dynametric.engine.builders`, which resolves the config;
  importable from here too).
* :func:`check_batches` builds the configured batch sampler on the training labels once (for the run's number of
  processes), before the untrained evaluation, and turns "too few classes for the batch" into a
  :class:`~dynametric.errors.ConfigError` that
  suggests ``data.batch_size`` / ``data.m`` values that fit; with ``three_scale`` and a ``multiscale`` loss term it
  also refuses sampler scales the loss cannot follow, one item per batch and a scale with a single class that the
  term weights above 0 (each scale's chunk would be one class: no negative pair for a term that compares the batch;
  a scale of weight 0 in ``scale_weights`` adds nothing to the loss and is let through).
* :func:`check_loss_outputs` (``check_batches(..., module=...)``) calls each loss term once on the labels of the
  sampler's first batch, so a loss returning more than one value is refused before the run writes anything.
* :func:`scale_notes` gives the ``warning:`` / ``note:`` lines a run and its dry run say before training about scales
  with a single class: a whole-batch ``multiscale`` term at a scale with one training class (it trains on nothing
  there; not refused, a root scale with one class is common), a term that is not multiscale whose own label
  column (its ``scale``) has one training class (the same: it trains on nothing), a monitored scale with one
  validation class (the monitored value is constant), ``mean`` rows that average such scales in.
* ``trainer.monitor`` is read with :func:`~dynametric.config.schema.split_monitor` (split at its last ``/``: a scale
  name may hold one).
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from dynametric.config.schema import batch_comparing_terms, split_monitor, three_scale_items_error
from dynametric.data.samplers import BATCH_SAMPLERS, ThreeScaleSampler
from dynametric.engine.builders import (  # noqa: F401  (the monitor alias: resolved by the builders)
    SCALE_ALIASES,
    check_batch_size,
    resolve_monitor,
    sampler_factory,
    with_resolved_monitor,
)
from dynametric.errors import ConfigError
from dynametric.labels import as_label_matrix

if TYPE_CHECKING:
    from dynametric.config import Config

def _label_matrix(dataset: Any) -> torch.Tensor:
    return as_label_matrix(dataset.labels, name="train dataset labels")


def _fitting_values(batch_size: int, m: int, classes: int, world: int = 1) -> list[str]:
    """Overrides that make a step of ``world`` batches of ``batch_size / m`` distinct classes each (all distinct: the
    samplers draw one step's classes together) fit into ``classes`` classes; with several processes also the most
    processes that fit."""
    out = []
    fit = classes // world  # classes each process's batch can have
    if fit >= 2:  # at least two classes per batch, else there is no negative
        out.append(f"data.batch_size={m * fit}")
        # the smallest m above the configured one that divides batch_size and needs at most `fit` classes (>= 2):
        # searched over the classes per batch (at most `fit`, the training split's class count, from the most down),
        # not over m up to batch_size / 2 (a huge batch_size made that search take hours)
        for per_batch in range(min(fit, batch_size // 2), 1, -1):
            if batch_size % per_batch == 0 and batch_size // per_batch > m:
                out.append(f"data.m={batch_size // per_batch}")
                break
    if world > 1 and classes // (batch_size // m) >= 1:
        out.append(f"at most {classes // (batch_size // m)} process(es) in all (trainer.devices x trainer.num_nodes)")
    return out


def check_batches(cfg: Config, train: Any, *, scale_names: Sequence[str] | None = None,
                  carved: bool = False, world: int = 1, module: Any = None) -> None:
    """Build the configured batch sampler on the training labels, as the run's rank 0 of ``world`` processes builds
    it (one step draws a batch for each process), and re-raise a batch that cannot be drawn as a
    :class:`ConfigError` with values that work. ``carved``: validation classes were taken out of the training split
    (the message says so, since they are not available to batches). Built for one process only, a run of several
    passed the check (and the dry run said OK), then failed after the untrained evaluation and its files.

    ``module``: the run's training module (its ``objectives`` and ``embedder``); each loss term is then called once
    on the labels of the sampler's first batch (:func:`check_loss_outputs`), so a loss that returns more than one
    value is refused here, before the run writes anything, not at its first step."""
    labels = _label_matrix(train)
    data = cfg.data
    sampler_cls = BATCH_SAMPLERS.get(data.sampler)
    if sampler_cls is not None and sampler_cls.distinct_classes_per_batch:  # the sampler declares it (P×K)
        col = data.sampler_scale
        if not 0 <= col < labels.shape[1]:
            raise ConfigError(f"label column {col} does not exist; the training labels have {labels.shape[1]} "
                              "scale(s)", key="data.sampler_scale")
        classes = int(torch.unique(labels[:, col]).numel())
        needed = data.batch_size // data.m * world  # one step's batches draw distinct classes together
        if classes < needed:
            name = list(scale_names)[col] if scale_names and col < len(scale_names) else f"scale {col}"
            where = " (after the validation classes were set aside)" if carved else ""
            fixes = _fitting_values(data.batch_size, data.m, classes, world)
            hint = ("; try " + " or ".join(fixes)) if fixes else \
                "; a metric-learning batch needs at least 2 classes: add training classes"
            if carved and fixes:
                hint += ", or fewer validation classes (data.val_fraction)"
            per = f"a batch needs {needed}" if world == 1 else \
                f"a step of {world} processes needs {world} x {needed // world} = {needed}"
            why = "; the loss sees the step's batches together" if world > 1 else ""
            raise ConfigError(f"{per} distinct {name} classes (batch_size {data.batch_size} / m {data.m}"
                              f"{' per process' if world > 1 else ''}{why}) but the training split has only "
                              f"{classes}{where}{hint}", key="data.batch_size")
    sampler = sampler_factory(cfg)(labels, 0, world)  # other samplers: their own checks, raised as ConfigError
    if len(sampler) < 1:
        per = f" for each of {world} processes" if world > 1 else ""
        raise ConfigError(f"the training split ({len(labels)} images) gives no batch of {data.batch_size}{per}; "
                          "lower data.batch_size", key="data.batch_size")
    first = next(iter(sampler), None)  # a sampler registered by user code may form other sizes: said before the run
    if first is not None:
        check_batch_size(sampler, first, data.batch_size, data.sampler, "its first batch, drawn by the preflight")
        if module is not None:
            check_loss_outputs(module, labels[torch.as_tensor(list(first), dtype=torch.long)])
    if isinstance(sampler, ThreeScaleSampler):
        _check_three_scale(cfg, sampler, labels.shape[1], scale_names)


def check_loss_outputs(module: Any, labels: torch.Tensor) -> None:
    """Call each loss term of ``module`` (its ``objectives``, :class:`~dynametric.engine.objective.Objective`) once,
    as a training step calls it (its miner first), on ``labels`` (a training batch's label rows) and random unit
    embeddings of the width of the term's head (``module.embedder.output_dims``): a term whose loss returns anything
    but one value (a user's loss returning a per-sample vector) is the :class:`ConfigError` the first step would
    raise (:func:`~dynametric.engine.objective.check_loss_value`: ``key 'loss.name': loss term 'MyLoss' (MyLoss)
    returned a tensor of shape [16]; expected a single value (0-dim tensor)``), here before the untrained evaluation
    and before the run writes anything.

    Nothing of the run's own state changes (state a user's loss keeps outside itself, a module-level counter, sees
    one more call; docs/extending.md says so): each term is called on a copy of its loss and miner (the parameters
    shared, not changed: no gradient is taken), without gradients, with torch's random state put back afterwards and the
    losses' debug log quiet. A term that raises on these inputs, or whose head width is not declared, is left to
    the first step, which says what it says there (the check refuses only a value of the wrong shape)."""
    import logging

    from dynametric.engine.objective import check_loss_value

    objectives = list(getattr(module, "objectives", None) or [])
    dims = getattr(getattr(module, "embedder", None), "output_dims", None)
    if not objectives or not isinstance(dims, Mapping) or labels.dim() != 2 or not len(labels):
        return
    quiet = logging.getLogger("dynametric.losses")
    was_disabled = quiet.disabled
    quiet.disabled = True
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            generator = torch.Generator().manual_seed(0)
            widths = {head: int(width) for head, width in dims.items() if head != "concat"}
            made = {head: torch.nn.functional.normalize(torch.randn(len(labels), width, generator=generator), dim=1)
                    for head, width in widths.items()}
            outputs: torch.Tensor | dict[str, torch.Tensor] = made[None] if None in made else \
                {str(head): emb for head, emb in made.items()}
            for obj in objectives:
                value = _call_term(obj, outputs, labels)
                if value is not _FAILED:
                    check_loss_value(obj, value)
    finally:
        quiet.disabled = was_disabled


_FAILED = object()


def _call_term(obj: Any, outputs: Any, labels: torch.Tensor) -> Any:
    """The value of the term ``obj`` on ``outputs`` and ``labels`` (:func:`check_loss_outputs`), called on copies
    of its loss and miner; :data:`_FAILED` where anything raises (left to the first step)."""
    import copy

    from dynametric.engine.objective import select_head

    try:
        emb = select_head(outputs, obj.head)
        memo = {id(p): p for part in (obj.loss, obj.miner) if isinstance(part, torch.nn.Module)
                for p in part.parameters()}
        loss, miner = copy.deepcopy((obj.loss, obj.miner), memo)
        indices = miner(emb, labels) if miner is not None else None
        return loss(emb, labels, indices) if indices is not None else loss(emb, labels)
    except Exception:  # what the loss says of these inputs is for the first step to say
        return _FAILED


def _check_three_scale(cfg: Config, sampler: ThreeScaleSampler, num_columns: int,
                       scale_names: Sequence[str] | None) -> None:
    """A ``three_scale`` batch a ``multiscale`` loss term can learn from: the sampler's chunks are the loss's
    (every label column sampled, in order: ``data.sampler_options.scales`` left out or ``[0, ..., S-1]``), more than
    one item per batch and more than one class at every scale when a term compares the batch."""
    multiscale = [k for k, t, _ in cfg.loss_terms() if t.multiscale]
    if not multiscale:
        return
    if sampler.scales != list(range(num_columns)):
        raise ConfigError(f"{multiscale[0]}.multiscale trains one loss per label column ({num_columns}) on its own "
                          f"chunk of each item, chunk s with column s, but data.sampler_options.scales "
                          f"{sampler.scales} samples columns {sampler.scales} only; remove data.sampler_options.scales "
                          f"(every column) or set {multiscale[0]}.multiscale: false", key="data.sampler_options.scales")
    error = three_scale_items_error(cfg, sampler.num_scales)
    if error is not None:
        raise error
    terms = dict(batch_comparing_terms(cfg, multiscale_only=True))
    single = [col for col, classes in zip(sampler.scales, sampler.scale_classes) if len(classes) == 1]
    for where, term, _ in cfg.loss_terms():
        if where not in terms:
            continue
        # a scale the term gives weight 0 adds nothing to the loss: its one-class chunks (the sampler draws them
        # from that one class) train on nothing by request
        weights = list(term.scale_weights) if term.scale_weights is not None else [1.0] * num_columns
        cols = [col for col in single if col >= len(weights) or weights[col] > 0]
        if not cols:
            continue
        col = cols[0]
        name = list(scale_names)[col] if scale_names and col < len(scale_names) else f"scale {col}"
        fixed = [0 if c in cols else _weight(weights[c]) if c < len(weights) else 1 for c in range(num_columns)]
        raise ConfigError(f"the training labels have one {name} class (column {col}), so every three_scale chunk "
                          f"of that scale is one class: {terms[where]} (per scale, multiscale) and finds no negative "
                          f"pair at {name}, training on nothing there; use data with two or more classes at every "
                          f"scale, give that scale weight 0 ({_override(f'{where}.scale_weights', fixed)}) or "
                          f"set {where}.multiscale: false", key=f"{where}.multiscale")


def check_validation_queries(cfg: Config, val: Any, monitor: str, scale_names: Sequence[str],
                             split: str = "validation") -> None:
    """A :class:`ConfigError` keyed ``trainer.monitor`` when the validation data cannot give the monitored metric a
    value: leave-one-out validation scores a query only where another validation item shares its class at the
    monitored scale (from another sequence where the data carries ``sequence_ids``), and with ``eval.empty_queries:
    exclude`` (the default) a retrieval metric with no such query is NaN in every round; ``best.ckpt`` and early
    stopping would have nothing to go on. ``monitor`` is resolved (``fine/map@r``; ``mean/<metric>`` needs every
    scale); clustering metrics (``nmi``, ``f1``) and ``fnmr@fmr`` are not checked, nor ``count_as_zero`` runs.
    ``split`` names the validation data in the message."""
    from dynametric.metrics import CLUSTER_METRIC_TABLE

    scale, metric = split_monitor(monitor)
    if val is None or cfg.eval.empty_queries != "exclude" or metric in CLUSTER_METRIC_TABLE \
            or metric.startswith("fnmr@"):
        return
    labels = as_label_matrix(val.labels, name="validation labels")
    names = list(scale_names)
    columns = range(labels.shape[1]) if scale == "mean" else [names.index(scale)] if scale in names else []
    sequences = getattr(val, "sequence_ids", None)
    seq_codes = None
    if sequences is not None and len(columns):  # each item's sequence as a number (equal ids, equal numbers)
        codes: dict[Any, int] = {}
        seq_codes = np.fromiter((codes.setdefault(s, len(codes)) for s in sequences), dtype=np.int64,
                                count=len(labels))
    for col in columns:
        # a class has a relevant item for its queries when it has two items (from two sequences): counted, not
        # collected
        _, classes = np.unique(labels[:, col].numpy(), return_inverse=True)
        classes = classes.reshape(-1).astype(np.int64)
        if seq_codes is not None:  # the distinct (class, sequence) pairs, each counted once for its class
            stride = int(seq_codes.max(initial=0)) + 1
            classes = np.unique(classes * stride + seq_codes) // stride
        if len(classes) and int(np.bincount(classes).max()) >= 2:
            continue
        name = names[col] if col < len(names) else f"scale {col}"
        other = "from another sequence " if sequences is not None else ""
        coarser = [n for n in names[col + 1:]]
        hint = (f", or monitor a coarser scale ({_override('trainer.monitor', f'{coarser[0]}/{metric}')})"
                if coarser else "")
        raise ConfigError(f"the monitored {monitor} has no value on the {split} data ({len(labels)} images): no "
                          f"{name} class there has two images {other}(every one is a singleton), so no validation "
                          f"query has a relevant item and every round would be NaN; use validation data with at "
                          f"least two images per {name} class{hint}", key="trainer.monitor")


def _class_counts(datasets: Sequence[Any], what: str) -> list[int] | None:
    """The number of distinct classes at each label column over ``datasets`` together (``None`` entries and empty
    datasets left out); ``None`` when there is nothing to count."""
    matrices = [as_label_matrix(d.labels, name=what) for d in datasets if d is not None]
    matrices = [m for m in matrices if m.shape[0]]
    if not matrices or len({m.shape[1] for m in matrices}) != 1:
        return None
    labels = torch.cat(matrices)
    return [int(torch.unique(labels[:, col]).numel()) for col in range(labels.shape[1])]


def _scale_name(names: Sequence[str], col: int) -> str:
    return names[col] if col < len(names) else f"scale {col}"


def _whole_batch_class_counts(cfg: Config, train: Any) -> list[int] | None:
    """The training labels' class count per column, for the one-class warnings of terms that compare the batch;
    ``None`` under the ``three_scale`` sampler (its one-class chunks are refused by :func:`check_batches`, where
    weighted) or where the labels cannot be read up front."""
    sampler_cls = BATCH_SAMPLERS.get(cfg.data.sampler)
    if isinstance(sampler_cls, type) and issubclass(sampler_cls, ThreeScaleSampler):
        return None
    return _class_counts([train], "train dataset labels")


def multiscale_single_class_warnings(cfg: Config, train: Any, scale_names: Sequence[str]) -> list[str]:
    """One ``warning:`` line per ``multiscale`` loss term that compares the whole batch (any sampler but
    ``three_scale``, whose weighted one-class chunks :func:`check_batches` refuses) at a label column with a single
    class in the training labels: that scale's loss finds no negative pair in any batch and trains on nothing (its
    ``train/<term>/<scale>`` part is 0 in every step). Not a refusal: a root scale with one class (``kingdom``) is
    common. A scale that ``scale_weights`` gives weight 0 is not counted."""
    terms = dict(batch_comparing_terms(cfg, multiscale_only=True))
    if not terms:
        return []
    counts = _whole_batch_class_counts(cfg, train)
    if counts is None:
        return []
    names = list(scale_names)
    lines = []
    for where, term, _ in cfg.loss_terms():
        if where not in terms:
            continue
        weights = list(term.scale_weights) if term.scale_weights is not None else [1.0] * len(counts)
        single = [col for col, n in enumerate(counts) if n < 2 and (col >= len(weights) or weights[col] > 0)]
        if not single:
            continue
        scales = ", ".join(f"{_scale_name(names, c)} (column {c})" for c in single)
        at = " or ".join(_scale_name(names, c) for c in single)
        fixed = [0 if col in single else _weight(weights[col]) if col < len(weights) else 1
                 for col in range(len(counts))]
        lines.append(f"warning: key '{where}.multiscale': the training labels have one class at {scales}, so "
                     f"{terms[where]} (per scale, multiscale, the whole batch at each scale) and finds no negative "
                     f"pair at {at}, training on nothing there (its logged {_scale_name(names, single[0])} part "
                     f"stays 0.0); use data with two or more classes at every scale, give that scale weight 0 "
                     f"({_override(f'{where}.scale_weights', fixed)}) or set {where}.multiscale: false")
    return lines


def single_scale_one_class_warnings(cfg: Config, train: Any, scale_names: Sequence[str]) -> list[str]:
    """One ``warning:`` line per loss term that is not ``multiscale`` and compares the batch's embeddings with each
    other (:func:`~dynametric.config.schema.pairs_in_batch`) at its own label column (its ``scale`` keyword,
    ``label_scale`` for ``pml:`` names and CosFace/ArcFace; default 0) when that column has a single class in the
    training labels: every batch is then one class at that column, the term finds no negative pair and trains on
    nothing (as :func:`multiscale_single_class_warnings` says of a multiscale term). Keyed
    ``<term>.kwargs.<keyword>``; the line suggests the nearest finer column with two or more classes. Not for the
    ``three_scale`` sampler (:func:`check_batches` refuses its one-class chunks), a term of weight 0, or a column
    the data does not have (refused when the loss is built)."""
    from dynametric.config.schema import pairs_in_batch
    from dynametric.labels import label_column_argument
    from dynametric.losses import LOSSES

    terms = [(where, term) for where, term, _ in cfg.loss_terms()
             if not term.multiscale and term.weight > 0 and pairs_in_batch(term.name, term.kwargs)]
    if not terms:
        return []
    counts = _whole_batch_class_counts(cfg, train)
    if counts is None:
        return []
    names = list(scale_names)
    lines = []
    for where, term in terms:
        cls = LOSSES[term.name] if term.name in LOSSES else None
        arg = label_column_argument(cls) or "scale"
        col = term.kwargs.get(arg, _default_column(cls, arg))
        if isinstance(col, bool) or not isinstance(col, int) or not 0 <= col < len(counts) or counts[col] >= 2:
            continue
        scale = _scale_name(names, col)
        finer = [c for c in range(col - 1, -1, -1) if counts[c] >= 2]
        fix = (f"train it on a scale with two or more classes ({where}.kwargs.{arg}={finer[0]}: "
               f"{_scale_name(names, finer[0])}) or use data with two or more classes at {scale}" if finer else
               f"use data with two or more classes at {scale}")
        lines.append(f"warning: key '{where}.kwargs.{arg}': the training labels have one class at {scale} (column "
                     f"{col}), so {where} {term.name} compares the batch's embeddings with each other at {scale} "
                     f"alone and finds no negative pair in any batch, training on nothing; {fix}")
    return lines


def _default_column(cls: Any, arg: str) -> Any:
    """The default of the label-column keyword ``arg`` in ``cls``'s signature (0 where it has none)."""
    import inspect

    try:
        param = inspect.signature(cls).parameters.get(arg)
    except (TypeError, ValueError):
        return 0
    return 0 if param is None or param.default is inspect.Parameter.empty else param.default


def _weight(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


def _override(key: str, value: Any) -> str:
    """``key=value`` as a command-line override to paste into a shell (quoted where a space or a shell character
    needs it: ``'loss.scale_weights=[1, 1, 0]'``, ``'trainer.monitor=twig b/map@r'``)."""
    return shlex.quote(f"{key}={value}")


def monitor_single_class_warning(val: Any, monitor: str, scale_names: Sequence[str],
                                 source: str | None = None) -> str | None:
    """A ``warning:`` line when the monitored scale (``monitor`` resolved: ``kingdom/map@r``) has fewer than two
    classes in the validation data: every validation image is then relevant to every query there, the retrieval
    metrics are 1.0 in every round and ``best.ckpt`` / early stopping have nothing to choose by. A ``mean/...``
    monitor: when every scale has a single class. ``None`` otherwise, or without validation data. ``source``: where
    the validation data came from (a run's ``validation_source``: ``split 'val'``), said in the line."""
    counts = _class_counts([val], "validation labels") if val is not None else None
    if counts is None:
        return None
    names = list(scale_names)
    scale, metric = split_monitor(monitor)
    columns = list(range(len(counts))) if scale == "mean" else [names.index(scale)] if scale in names else []
    if not columns or any(counts[col] >= 2 for col in columns if col < len(counts)):
        return None
    finer = [col for col in range(columns[0] - 1, -1, -1) if counts[col] >= 2] if scale != "mean" else []
    hint = (f"monitor a scale with two or more validation classes "
            f"({_override('trainer.monitor', f'{_scale_name(names, finer[0])}/{metric}')})"
            if finer else "use validation data with two or more classes at the monitored scale")
    where = "every scale" if scale == "mean" else f"scale {scale}"
    whence = f"{source}, " if source else ""
    return (f"warning: key 'trainer.monitor': the validation data ({whence}{len(val.labels)} images) has one class at "
            f"{where}, "
            f"so the monitored {monitor} is the same in every round (every image is relevant to every query: 1.0 "
            f"for the retrieval metrics) and best.ckpt / early stopping choose by nothing; {hint}")


def mean_single_class_note(evaluated: Mapping[str, Sequence[Any]], scale_names: Sequence[str],
                           per_scale: Mapping[str, Mapping[int, Sequence[Any]]] | None = None) -> str | None:
    """A ``note:`` line when the ``mean`` row of an evaluation averages in a scale with a single class in the data
    it evaluates (``evaluated``: a name such as ``validation`` or ``test`` -> the datasets it reads, together):
    there every image is relevant to every query, every retrieval metric is 1.0, and the mean is raised by it.
    ``per_scale``: a name -> {label column -> the datasets that evaluate that scale alone} (DyML's per-scale
    protocol: ``query_<s>`` and ``gallery_<s>``, one label column each, are scale ``s``), counted there.
    The values are not changed (:func:`dynametric.metrics.evaluate_embeddings` computes them as always). ``None``
    when no such scale (or a single scale: the mean is that scale)."""
    names = list(scale_names)
    if len(names) < 2:
        return None
    single: dict[int, list[str]] = {}
    for what, datasets in evaluated.items():
        counts = _class_counts(list(datasets), f"{what} labels")
        for col, n in enumerate(counts or []):
            if n < 2:
                single.setdefault(col, []).append(what)
    for what, by_column in (per_scale or {}).items():
        for col, datasets in by_column.items():
            counts = _class_counts(list(datasets), f"{what} labels")
            if counts and counts[0] < 2 and what not in single.get(col, []):
                single.setdefault(col, []).append(what)
    if not single:
        return None
    scales = ", ".join(f"{_scale_name(names, col)} ({' and '.join(where)})" for col, where in sorted(single.items()))
    return (f"note: the mean rows average in scale(s) with a single class in the evaluated data: {scales}; there "
            f"every image is relevant to every query, so each metric of that scale is 1.0 (or constant) and lifts "
            f"the mean; compare the scales' own rows")


def _per_scale_splits(tests: Mapping[str, Any], scale_names: Sequence[str]) -> dict[int, list[Any]]:
    """The test splits of a per-scale layout (DyML Vehicle / Animal: ``query_<s>`` and ``gallery_<s>``, each with
    the one label column of scale ``s``), as {label column of ``s`` -> its splits}; the pair's splits are taken
    out of the whole-label count (their column 0 is scale ``s``, not the finest scale)."""
    out: dict[int, list[Any]] = {}
    for col, name in enumerate(scale_names):
        pair = [tests.get(f"{part}_{name}") for part in ("query", "gallery")]
        sets = [d for d in pair if d is not None and as_label_matrix(d.labels, name="test labels").shape[1] == 1]
        if sets:
            out[col] = sets
    return out


def scale_notes(cfg: Config, train: Any, val: Any, tests: dict[str, Any], monitor: str,
                scale_names: Sequence[str], source: str | None = None) -> list[str]:
    """The warnings and notes a run (and its dry run) says before training about scales with a single class:
    :func:`multiscale_single_class_warnings` and :func:`single_scale_one_class_warnings` (training labels),
    :func:`monitor_single_class_warning` (validation
    data, from ``source``) and :func:`mean_single_class_note` (validation data and the test's splits,
    ``tests``)."""
    lines = multiscale_single_class_warnings(cfg, train, scale_names)
    lines += single_scale_one_class_warnings(cfg, train, scale_names)
    monitored = monitor_single_class_warning(val, monitor, scale_names, source)
    if monitored is not None:
        lines.append(monitored)
    evaluated: dict[str, Sequence[Any]] = {"validation": [val]} if val is not None else {}
    per_scale = _per_scale_splits(tests, scale_names) if tests else {}
    taken = {id(d) for sets in per_scale.values() for d in sets}
    rest = [d for d in tests.values() if id(d) not in taken]
    if rest:
        evaluated["test"] = rest
    mean = mean_single_class_note(evaluated, scale_names, {"test": per_scale} if per_scale else None)
    if mean is not None:
        lines.append(mean)
    return lines
