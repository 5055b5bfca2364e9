"""Data glue for the engine: resumable batch sampling, per-sample seeded augmentation, the DataModule.

Exact resume needs the data order and the augmentations of every batch to be a pure function of
``(seed, epoch, batch number, position, rank)``, independent of worker processes, prefetching and where the
run was interrupted:

* :class:`ResumableBatchSampler` wraps one of our batch samplers (``set_epoch``; the sampler itself shards
  for DDP through ``rank``/``world_size``), counts epochs itself (one ``iter()`` = one epoch), and can skip
  the first ``k`` batches of an epoch (used when resuming mid-epoch). It yields ``(index, token)`` pairs.
* :class:`SeededDataset` seeds torch's RNG from the token around each ``dataset[index]`` call, so random
  transforms draw the same numbers whichever process or run fetches the sample (the global RNG is untouched).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from dynametric.config.schema import DataConfig
from dynametric.data.protocol import dataset_labels
from dynametric.errors import ConfigError

BatchSamplerFactory = Callable[[torch.Tensor, int, int], Any]
"""``factory(labels [N, S], rank, world_size) -> batch sampler`` (an iterable of index lists with ``set_epoch``)."""

_MASK63 = (1 << 63) - 1


def sample_token(seed: int, epoch: int, batch: int, position: int, rank: int = 0) -> int:
    """A 63-bit seed for one sample draw (splitmix-style mixing of the five integers)."""
    h = seed & _MASK63
    for v in (epoch, batch, position, rank):
        h = (h * 0x9E3779B97F4A7C15 + v + 0x632BE59BD9B4E019) & _MASK63
        h ^= h >> 29
    return h


class ResumableBatchSampler:
    """Skippable wrapper around a batch sampler; yields ``[(index, token), ...]`` batches.

    The epoch of an ``iter()`` is ``epoch_fn()`` (the engine passes the trainer's current epoch: Lightning may
    call ``iter()`` more than once per epoch, and a multi-process DataLoader calls it twice when it starts), else a
    counter advanced by each ``iter()``. After ``resume(epoch, k)``, every iteration of that epoch starts at batch
    ``k``, and no ``iter()`` produces an epoch before it: resuming from an end-of-epoch checkpoint, Lightning builds
    the next epoch's iterator while its current epoch still names the finished one.
    """

    def __init__(self, inner: Any, seed: int = 0, rank: int = 0,
                 epoch_fn: Callable[[], int] | None = None) -> None:
        self.inner = inner
        self.seed = int(seed)
        self.rank = int(rank)
        self.epoch_fn = epoch_fn
        self.next_epoch = 0
        self.current_epoch = -1
        self._skip = 0
        self._skip_epoch = -1
        self._first_epoch = 0  # set by resume(): the epoch training continues with

    def __len__(self) -> int:
        return len(self.inner)

    def resume(self, epoch: int, batches_done: int) -> None:
        """Make the next ``iter()`` produce epoch ``epoch`` starting at batch ``batches_done``."""
        if batches_done >= len(self):
            epoch, batches_done = epoch + 1, 0
        self.next_epoch, self._skip, self._skip_epoch = int(epoch), int(batches_done), int(epoch)
        self._first_epoch = int(epoch)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        # After resume() no iter() goes back before the resumed epoch: Lightning, resuming from an end-of-epoch
        # checkpoint, builds the iterator while its current_epoch still names the finished epoch, and a multi-process
        # loader calls iter() twice then (a one-shot "resuming" flag was used up by the first call, and the second,
        # the one the loader keeps, replayed the finished epoch)
        epoch = self.next_epoch if self.epoch_fn is None else max(int(self.epoch_fn()), self._first_epoch)
        skip = self._skip if epoch == self._skip_epoch else 0
        self.current_epoch, self.next_epoch = epoch, epoch + 1
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)
        return self._generate(epoch, skip)

    def _generate(self, epoch: int, skip: int) -> Iterator[list[tuple[int, int]]]:
        for b, batch in enumerate(self.inner):
            if b < skip:
                continue
            yield [(int(i), sample_token(self.seed, epoch, b, p, self.rank)) for p, i in enumerate(batch)]


class SeededDataset(Dataset):
    """``dataset[index]`` evaluated with torch's CPU generator seeded from ``token`` for ``(index, token)`` keys.

    Plain integer keys pass through unchanged (evaluation). The CPU generator's state is restored afterwards. Only
    the CPU generator is seeded (``torch.default_generator``; transforms draw from it): ``torch.manual_seed`` would
    also seed, and not restore, every accelerator's generator, and costs a stack capture per device kind per item
    while CUDA is not initialised."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        if isinstance(key, tuple):
            index, token = key
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(token)
                return self.dataset[index]
        return self.dataset[key]


class _TrainLoader(DataLoader):
    """A DataLoader Lightning treats as resumable: the position itself is stored by
    :class:`dynametric.engine.callbacks.ResumeState` (batches actually trained on, not batches prefetched)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        return None


def _labels_of(dataset: Any, name: str) -> torch.Tensor:
    return dataset_labels(dataset, f"the {name} dataset", key="data", error=ConfigError)


_EVAL_BATCH_SIZE = DataConfig().eval_batch_size  # the schema's data.eval_batch_size: one default per choice


def shard_range(n: int, rank: int, world: int) -> range:
    """The items of contiguous shard ``rank`` of ``world`` over ``n`` items, as even as they can be: the first
    ``n % world`` shards hold one item more (so no shard is empty while ``n >= world``; shards of ``ceil(n / world)``
    left the last ranks of e.g. 41 items over 8 processes none). In rank order they restore the order."""
    per, extra = divmod(n, world)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (rank < extra))


def _shard(dataset: Any, rank: int, world: int) -> Any:
    """Contiguous shard ``rank`` of ``world`` (:func:`shard_range`)."""
    if world == 1:
        return dataset
    return Subset(dataset, shard_range(len(dataset), rank, world))


def _worker_options(num_workers: int, persistent_workers: bool, prefetch_factor: int | None,
                    rank: int | None = None) -> dict[str, Any]:
    """Persistent workers, prefetching and the workers' start (:func:`worker_init`; ``rank``: a loader Lightning
    runs) — only meaningful, and only allowed by torch, with workers. The data order and every augmentation stay a
    function of the batch tokens, so none of them affects the results."""
    if num_workers == 0:
        return {}
    out: dict[str, Any] = {"persistent_workers": bool(persistent_workers)}
    if prefetch_factor is not None:
        out["prefetch_factor"] = int(prefetch_factor)
    init = worker_init(rank)
    if init is not None:
        out["worker_init_fn"] = init
    return out


def worker_init(rank: int | None = None) -> Callable[[int], None] | None:
    """A DataLoader's ``worker_init_fn`` that imports the modules of the config's ``imports`` / ``--import`` in each
    worker (:func:`~dynametric.utils.registry.modules_for_workers`: under ``spawn`` / ``forkserver`` a worker starts
    in a fresh interpreter, so an image plugin one of them registers was missing there and its images "could not be
    read"), then, for a loader Lightning runs (``rank``: the trainer's global rank), seeds the worker as Lightning
    would have (``seed_everything(workers=True)``; Lightning adds its own function only to a loader without one).
    ``None`` where no module was listed: the loader is as it was."""
    from dynametric.utils.registry import modules_for_workers

    names = modules_for_workers()
    return functools.partial(_start_worker, names, rank) if names else None


def _start_worker(names: tuple[str, ...], rank: int | None, worker_id: int) -> None:
    """:func:`worker_init`'s function (module level: a ``spawn`` worker unpickles it)."""
    from dynametric.utils.registry import import_in_worker

    import_in_worker(names)
    if rank is not None and int(os.environ.get("PL_SEED_WORKERS", "0") or 0):
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id, rank=rank)


class EvalDataModule(L.LightningDataModule):
    """One evaluation set as the test stage of a DataModule: sharded by the rank of the trainer that runs it
    (known only once the trainer's strategy is set up, which is why this is not a plain DataLoader).

    Its loader takes the training's loader settings (:meth:`like`: ``data.workers``, ``data.pin_memory``,
    ``data.persistent_workers``, ``data.prefetch_factor``). Persistent workers are kept too, although the loader is
    read once: Lightning ends them when the evaluation ends (``trainer.test`` resets its loaders), and without them
    Lightning asks for them on every evaluation where workers are spawned (macOS, Windows)."""

    def __init__(self, dataset: Any, batch_size: int = _EVAL_BATCH_SIZE, num_workers: int = 0, seed: int = 0, *,
                 pin_memory: bool = False, persistent_workers: bool = False,
                 prefetch_factor: int | None = None) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.num_workers, self.seed = dataset, int(batch_size), int(num_workers), seed
        self.pin_memory, self.persistent_workers = bool(pin_memory), bool(persistent_workers)
        self.prefetch_factor = prefetch_factor

    @classmethod
    def like(cls, dm: MetricDataModule, dataset: Any) -> EvalDataModule:
        """``dataset`` evaluated with the loader settings of ``dm`` (its evaluation batch size, workers, seed, pinned
        memory, persistent workers and prefetching), as its validation loader reads."""
        return cls(dataset, dm.eval_batch_size, dm.num_workers, dm.seed, pin_memory=dm.pin_memory,
                   persistent_workers=dm.persistent_workers, prefetch_factor=dm.prefetch_factor)

    def test_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (0, 1) if trainer is None else (int(trainer.global_rank), int(trainer.world_size))
        return DataLoader(_shard(self.dataset, rank, world), batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          generator=torch.Generator().manual_seed(self.seed),
                          **_worker_options(self.num_workers, self.persistent_workers, self.prefetch_factor, rank))


class MetricDataModule(L.LightningDataModule):
    """Train/val/test datasets + a batch-sampler factory. The sampler, not Lightning, shards training data."""

    def __init__(
        self,
        train: Dataset | None,
        val: Dataset | None = None,
        test: Dataset | None = None,
        *,
        batch_sampler_factory: BatchSamplerFactory | None = None,
        eval_batch_size: int = _EVAL_BATCH_SIZE,
        num_workers: int = 0,
        seed: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        prefetch_factor: int | None = None,
    ) -> None:
        super().__init__()
        self.train_set, self.val_set, self.test_set = train, val, test
        self.batch_sampler_factory = batch_sampler_factory
        self.eval_batch_size = int(eval_batch_size)
        self.num_workers = int(num_workers)
        self.seed = int(seed)
        self.pin_memory = pin_memory
        self.persistent_workers = bool(persistent_workers)
        self.prefetch_factor = prefetch_factor
        self.train_batch_sampler: ResumableBatchSampler | None = None
        self._pending_resume: tuple[int, int] | None = None

    def request_resume(self, epoch: int, batches_done: int) -> None:
        """Continue at ``epoch`` after ``batches_done`` batches (applied now or when the sampler is built)."""
        self._pending_resume = (int(epoch), int(batches_done))
        if self.train_batch_sampler is not None:
            self.train_batch_sampler.resume(*self._pending_resume)
            self._pending_resume = None

    def _generator(self) -> torch.Generator:
        # DataLoader draws its worker base seed from this generator, never from the global RNG
        return torch.Generator().manual_seed(self.seed)

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return int(trainer.global_rank), int(trainer.world_size)

    def make_train_batch_sampler(self) -> ResumableBatchSampler:
        if self.train_set is None or self.batch_sampler_factory is None:
            raise ConfigError("no training dataset / sampler configured", key="data")
        rank, world = self._rank_world()
        inner = self.batch_sampler_factory(_labels_of(self.train_set, "train"), rank, world)
        if len(inner) == 0:
            raise ConfigError("the training sampler yields no batch (dataset too small for the batch size?)",
                              key="data.batch_size")
        trainer = getattr(self, "trainer", None)
        epoch_fn = None if trainer is None else (lambda: int(trainer.current_epoch))
        return ResumableBatchSampler(inner, seed=self.seed, rank=rank, epoch_fn=epoch_fn)

    def train_dataloader(self) -> DataLoader:
        if self.train_batch_sampler is None:
            self.train_batch_sampler = self.make_train_batch_sampler()
            if self._pending_resume is not None:
                self.train_batch_sampler.resume(*self._pending_resume)
                self._pending_resume = None
        return _TrainLoader(SeededDataset(self.train_set), batch_sampler=self.train_batch_sampler,
                            num_workers=self.num_workers, pin_memory=self.pin_memory, generator=self._generator(),
                            **self._worker_options())

    def _worker_options(self) -> dict[str, Any]:
        return _worker_options(self.num_workers, self.persistent_workers, self.prefetch_factor, self._rank_world()[0])

    def eval_dataloader(self, dataset: Any) -> DataLoader:
        rank, world = self._rank_world()
        return DataLoader(_shard(dataset, rank, world), batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          generator=self._generator(), **self._worker_options())

    def val_dataloader(self) -> DataLoader | list:
        return [] if self.val_set is None else self.eval_dataloader(self.val_set)

    def test_dataloader(self) -> DataLoader | list:
        return [] if self.test_set is None else self.eval_dataloader(self.test_set)
