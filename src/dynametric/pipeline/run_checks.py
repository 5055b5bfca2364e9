"""What a training run and its dry run check and say before they write anything: the test protocol's splits there
and held out from training and validation (:func:`_held_out_data`), enough images for each process's evaluation
shard (:func:`check_eval_shards`), the backbone's width (:func:`check_backbone_forward`), the open files of the
loader workers (:func:`_checked_loader_settings`), a one-process method under a multi-process launcher, and the
set-up's ``note:`` lines (:func:`setup_notes`: BatchNorm under several processes, epochs never validated, a
learning-rate schedule that cannot take effect in the run's length; and
:func:`rendezvous_note` for several nodes). Used by :mod:`dynametric.pipeline.run` and
:mod:`dynametric.pipeline.dryrun`."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import torch

from dynametric.engine.builders import available_splits, check_held_out_data, load_split, loader_settings
from dynametric.engine.trainer import launch
from dynametric.errors import ConfigError
from dynametric.pipeline.protocols import check_test_splits, protocol_from_config
from dynametric.pipeline.run_folder import _external_launch
from dynametric.utils.limits import ensure_open_files

if TYPE_CHECKING:
    from dynametric.config import Config


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
    never be one of them; ``None`` otherwise (or without validation data). The epochs are numbered from 0, as
    ``metrics.json``'s validation rounds, ``run_info.json`` and the run's other lines (early stopping, non-finite
    steps) number them."""
    every, epochs = int(cfg.trainer.val_every), int(cfg.trainer.max_epochs)
    if not has_validation or every <= 1 or epochs % every == 0:
        return None
    validated = list(range(every - 1, epochs - epochs % every, every))  # 0-based, as metrics.json records them
    listed = ", ".join(map(str, validated)) if len(validated) <= 4 else \
        f"{validated[0]}, {validated[1]}, ... {validated[-1]}"
    numbering = " (epochs numbered from 0, as in metrics.json)"
    rounds = (f"after epochs {listed} only{numbering}" if len(validated) > 1 else
              f"after epoch {listed} only{numbering}" if validated else "never (fewer epochs than trainer.val_every)")
    unvalidated = epochs - len(validated) * every
    return (f"note: trainer.val_every {every} does not divide trainer.max_epochs {epochs}: validation runs {rounds}, "
            f"so the last {unvalidated} epoch(s) are trained but never validated and best.ckpt is never one of them; "
            f"set trainer.val_every to a divisor of {epochs} to validate the final weights")


def one_image_per_class_note(cfg: Config) -> str | None:
    """A ``note:`` line for ``data.m: 1`` where a term compares the batch at the sampled label column
    (:func:`~dynametric.config.schema.one_image_per_class_terms`): it has no positive pair; ``None`` otherwise."""
    from dynametric.config.schema import one_image_per_class_terms

    terms = one_image_per_class_terms(cfg)
    if not terms:
        return None
    return (f"note: data.m 1 puts one image of each class (label column {int(cfg.data.sampler_scale)}) in a batch, "
            f"so there is no positive pair (two images of one class) where {'; '.join(terms)}: a loss that needs "
            "one (triplets, quadruplets) learns nothing, a pair loss only from its negative pairs; set data.m >= 2")


def steps_per_epoch(cfg: Config, train: Any, processes: int) -> int | None:
    """The optimizer steps of one training epoch: the batches each of ``processes`` processes draws from the
    configured sampler on ``train``'s labels (as the run's data module builds it for rank 0), in steps of
    ``trainer.accumulate_grad_batches`` (an epoch's short last accumulation steps too, as Lightning does). ``None``
    without the training data, or where the sampler cannot be built (its own error comes with the run's checks)."""
    if train is None:
        return None
    from dynametric.engine.builders import sampler_factory
    from dynametric.engine.data import _labels_of

    try:
        batches = len(sampler_factory(cfg)(_labels_of(train, "train"), 0, max(1, processes)))
    except (ConfigError, TypeError, ValueError):
        return None
    accumulate = max(1, int(cfg.trainer.accumulate_grad_batches))
    return -(-batches // accumulate) if batches > 0 else None


def schedule_notes(cfg: Config, per_epoch: int | None) -> list[str]:
    """``note:`` lines for a learning-rate schedule that cannot take effect in the run's length: a ``step`` schedule
    whose ``step_size`` is at or after the run's last epoch, ``multistep`` milestones there (the rate drops from
    epoch ``m`` on, numbered from 0, so a milestone of ``trainer.max_epochs`` or more never fires), and a
    ``trainer.max_steps`` that ends the run inside the warm-up (the rate never reaches ``optim.lr``); a ``step`` or
    ``multistep`` schedule with ``gamma: 1`` (its drops multiply the rate by 1) is said once instead. The run's
    length is ``trainer.max_epochs`` epochs, or ``trainer.max_steps`` optimizer steps where that is shorter, counted
    with ``per_epoch`` (:func:`steps_per_epoch`; ``None``: not known, and nothing is said about ``max_steps``).
    Early stopping (``trainer.patience``) can end a run sooner still: not foreseen here."""
    sched, epochs = cfg.optim.scheduler, int(cfg.trainer.max_epochs)
    per_epoch = per_epoch or 0  # 0: not known
    max_steps = int(cfg.trainer.max_steps) if cfg.trainer.max_steps is not None and per_epoch else 0
    by_steps = 0 < max_steps < epochs * per_epoch  # max_steps, not max_epochs, ends the run
    total, last, ends = epochs * per_epoch, epochs - 1, ""  # the run's optimizer steps, its last epoch (from 0)
    if by_steps:
        total, last = max_steps, (max_steps - 1) // per_epoch  # the epoch of the run's last step
        ends = (f"trainer.max_steps {total} ends the run in epoch {last} (numbered from 0; {per_epoch} optimizer "
                f"step(s) per epoch)")
    notes: list[str] = []
    flat = sched.name in ("step", "multistep") and float(sched.gamma) == 1.0
    if flat:  # its drops multiply the rate by 1: said once, whatever the run's length
        notes.append(f"note: optim.scheduler.gamma 1: the {sched.name} schedule multiplies the rate by gamma at each "
                     "drop, so it never lowers the rate; set 0 < gamma < 1 to lower it")
    if sched.name == "step" and int(sched.step_size) > last and not flat:
        if by_steps:
            notes.append(f"note: {ends}, before epoch {sched.step_size} (optim.scheduler.step_size), where the step "
                         "schedule first lowers the rate: the step schedule never lowers the rate")
        else:
            notes.append(f"note: optim.scheduler.step_size {sched.step_size} >= trainer.max_epochs {epochs}: the step "
                         "schedule never lowers the rate")
    if sched.name == "multistep" and not flat:
        never = [int(m) for m in sched.milestones if int(m) > last]
        if never:
            fired = [str(m) for m in sched.milestones if int(m) <= last]
            what = "the multistep schedule never lowers the rate" if not fired else \
                f"those never fire, and the multistep schedule lowers the rate at milestone(s) {', '.join(fired)} only"
            listed = ", ".join(map(str, never))
            where = f"{ends}, before optim.scheduler.milestones {listed}" if by_steps else \
                f"optim.scheduler.milestones {listed} >= trainer.max_epochs {epochs}"
            notes.append(f"note: {where}: {what} (a milestone m lowers it from epoch m on, numbered from 0)")
    warm = int(sched.warmup_epochs) * per_epoch if sched.name != "plateau" else 0
    if by_steps and total < warm:
        notes.append(f"note: trainer.max_steps {total} ends the run inside the warm-up of "
                     f"optim.scheduler.warmup_epochs {sched.warmup_epochs} ({warm} optimizer steps of {per_epoch} per "
                     f"epoch): the rate never reaches optim.lr (at most {total}/{warm} of it)")
    return notes


def setup_notes(cfg: Config, embedder: torch.nn.Module, processes: int, has_validation: bool,
                train: Any = None, automatic: bool = True) -> list[str]:
    """The ``note:`` lines the run and the dry run print about the set-up, in this order: BatchNorm under several
    processes (:func:`batchnorm_note`), epochs never validated (:func:`validation_note`), one image per class
    (:func:`one_image_per_class_note`), a schedule that cannot take effect (:func:`schedule_notes`), and what
    ``build_embedder`` did (weights loaded from ``pretrained_path``,
    ...: the embedder's ``notes``). ``train``: the training data, whose epoch of optimizer steps
    (:func:`steps_per_epoch`) measures a ``trainer.max_steps`` against the schedule; ``automatic``: whether the
    module steps its optimizer once per ``trainer.accumulate_grad_batches`` batches (Lightning's automatic
    optimisation; the alternating methods step theirs by hand, a varying number of times per batch, so their
    ``max_steps`` is not measured)."""
    notes = [batchnorm_note(cfg, embedder, processes), validation_note(cfg, has_validation),
             one_image_per_class_note(cfg)]
    sched = cfg.optim.scheduler
    measured = (automatic and cfg.trainer.max_steps is not None
                and (sched.name in ("step", "multistep") or (sched.warmup_epochs > 0 and sched.name != "plateau")))
    per_epoch = steps_per_epoch(cfg, train, processes) if measured else None
    return ([n for n in notes if n is not None] + schedule_notes(cfg, per_epoch)
            + [f"note: {n}" for n in getattr(embedder, "notes", [])])


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
                              f"process{'es' * (n != 1)} or more data", key="trainer.devices")


def _check_one_process_method(cfg: Config) -> None:
    """Under a launcher that started several processes (:func:`~dynametric.engine.trainer.launch`: ``torchrun``),
    the method's own checks first: a method that runs on one process (``mic``, ``sharing_alternating``) says so,
    where :func:`~dynametric.engine.trainer.plan_trainer` would ask for as many ``trainer.devices`` as processes."""
    if launch() is not None:
        from dynametric.methods import method_for

        method_for(cfg).validate(cfg)


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
        check_forward(_eval_crop(cfg), cfg.model.in_chans, size_key=_crop_key(cfg))


def _crop_key(cfg: Config) -> str | None:
    """The key that set the evaluation crop :func:`_eval_crop` gives: ``data.image_size``, the synthetic generator's
    ``data.options.image_size``, or None (the transform preset's own size)."""
    if cfg.data.image_size is not None:
        return "data.image_size"
    if cfg.data.format == "synthetic" and cfg.data.transform == "default" and "image_size" in dict(cfg.data.options):
        return "data.options.image_size"
    return None
