"""Batch samplers for metric learning: P×K, DyML's three-scale sampler, and a hierarchical hard-negative sampler.

All three are *batch samplers* (pass them as ``DataLoader(dataset, batch_sampler=...)``) and share one contract.
Passed as ``sampler=`` instead (``DataLoader(dataset, batch_size=8, sampler=...)``, the way of PML's
``MPerClassSampler``, an index sampler), the loader's ``BatchSampler`` would group whole batches into batches of
batches; the first iteration raises an :class:`~dynametric.errors.InputError` saying to pass ``batch_sampler=``.

* **Deterministic**: epoch ``e`` is a pure function of ``(seed, e)`` (``numpy`` PCG64 seeded with
  ``SeedSequence([seed, e])``). Call :meth:`set_epoch` before each epoch (Lightning does this for you).
* **Distributed-aware**: every rank builds the same global plan of ``len(sampler)`` *steps* from the seed; a step is
  what one process would draw as one batch ``world_size`` times as large, cut into ``world_size`` batches, and rank
  ``r`` takes the ``r``-th. Under DDP the loss of a step sees the ranks' batches together (the all-gathered global
  batch), so the class-balanced samplers draw the step's classes together: ``world_size x P`` distinct classes of
  ``m`` images (:class:`MPerClassSampler`; :class:`HierarchicalSampler`: ``world_size x parents_per_batch`` distinct
  parents), no image twice in a step, each rank's batch still ``P x m``. Data with too few classes for that is
  refused (:class:`~dynametric.errors.InputError` keyed ``batch_size`` naming the largest batch per process that
  fits) rather than drawn with a class in two ranks' batches. With ``world_size`` 1 a step is one batch: the
  batches are those a single process has always drawn.
* **Exact resume**: :meth:`state_dict` gives ``{"epoch", "position", ...}`` where ``position`` counts the batches
  yielded by the current (or last) iterator in this epoch; after :meth:`load_state_dict` the next iterator to yield a
  batch starts at that position of the same epoch (one made but never advanced does not use it up: a ``DataLoader``
  with workers makes two and keeps the second). With a ``DataLoader`` that prefetches, the sampler runs ahead of the
  training loop: save ``{**sampler.state_dict(), "position": batches_consumed}`` instead. Loading into a sampler built
  with different data, batch size, seed or world size raises :class:`~dynametric.errors.InputError`. Several live
  iterators of one sampler (a multi-process ``DataLoader`` calls ``iter()`` twice when it starts) each yield the
  batches of their epoch from their own start, counted apart; the state follows the most recent one only (an older
  iterator's batches no longer move ``position``), and :meth:`set_epoch` to another epoch or :meth:`load_state_dict`
  detaches every live iterator from it (``position`` 0 of the new epoch, or the loaded one).
* **Drawn lazily**: an iterator draws each step when its batch is asked for (``iter()`` draws nothing; the first
  batch comes after one step's draws), never holding the epoch's plan; a resume at ``position`` replays the draws of
  the steps before it. The batches are those of :meth:`epoch_batches`, which draws the whole epoch at once.

Class-balanced samplers cut every class into *chunks* of ``K`` images: one *pass* shuffles each class and splits
it into ``ceil(n_c / K)`` chunks, so every image is in exactly one chunk; the last chunk of a class is filled up
with other images of that class, drawn without replacement, or **with replacement when the class has fewer than
K images** (its images then repeat inside the chunk). Batches take chunks class by class with probability
proportional to the chunks a class has left in the pass, so an epoch visits every image once before any repeats
where the batch constraints allow; when too few classes are left for a batch, a new pass is added.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import itertools
import math
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, ParamSpec

import numpy as np
import torch

from dynametric.errors import ConfigError, InputError
from dynametric.labels import LabelsLike, as_label_matrix


def _rng(seed: int, epoch: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch)]))


def _positive_int(value: int, key: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InputError(f"expected an integer >= {minimum}, got {value!r}", key=key)
    return int(value)


def _int(value: Any, key: str) -> int:
    """``value`` if it is an integer (``bool`` and ``1.0`` refused), else an :class:`InputError` keyed ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"expected an integer (a label column), got {value!r}", key=key)
    return int(value)


def _seed(value: Any) -> int:
    """A sampler's ``seed``: an integer in ``[0, 2**32 - 1]`` (the range every seed of dynametric takes,
    :data:`dynametric.utils.seeds.SEED_MAX`), else an :class:`InputError` keyed ``seed`` (a negative, a float or a
    larger seed was once taken modulo ``2**64`` or truncated, or failed at the first iteration)."""
    from dynametric.utils.seeds import SEED_MAX

    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= value <= SEED_MAX:
        raise InputError(f"expected a seed, an integer in [0, {SEED_MAX}] (2**32 - 1), got {value!r}", key="seed")
    return int(value)


def _class_members(column: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Classes of one label column in first-seen order, and each class's row indices (ascending)."""
    values, first, inverse = np.unique(column, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rows = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(values)))
    groups = np.split(rows, bounds[:-1])
    return values[order], [groups[i] for i in order]


@dataclass(frozen=True)
class SamplerSettings:
    """What a training run asks of its batch sampler (the config's ``data`` section, resolved): each sampler's
    ``from_settings`` maps these onto its own arguments (``m`` is images per class, or per scale chunk for the
    three-scale sampler; ``scale`` the label column to balance, where the sampler has one)."""

    batch_size: int
    m: int
    scale: int = 0
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    iterations_per_epoch: int | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    """Further keyword arguments of the sampler (``data.sampler_options``)."""

    def common(self) -> dict[str, Any]:
        """The arguments every sampler takes: ``seed``, ``rank``, ``world_size``, ``iterations_per_epoch``."""
        return {"seed": self.seed, "rank": self.rank, "world_size": self.world_size,
                "iterations_per_epoch": self.iterations_per_epoch}


SETTING_OF: dict[str, str] = {name: name for name in ("batch_size", "m", "scale", "seed", "rank", "world_size",
                                                      "iterations_per_epoch")}
"""Which :class:`SamplerSettings` field decides a sampler argument of the same name (a sampler's ``setting_of``
adds its own names, e.g. ``ThreeScaleSampler``'s ``k`` is ``m``); any other argument comes from
``SamplerSettings.options``. An error keyed by an argument names the setting, or the option, that set it."""


def label_matrix_on_host(labels: LabelsLike) -> torch.Tensor:
    """``labels`` as the ``[N, S]`` label matrix (:func:`~dynametric.labels.as_label_matrix`) in host memory: a
    sampler reads its labels with numpy, which cannot read a tensor on an accelerator (CUDA labels were a
    ``TypeError`` from ``.numpy()``)."""
    return as_label_matrix(labels).cpu()


def _refuse_as_index_sampler(sampler: Any, caller: Any) -> None:
    """Raise when ``caller`` (the frame that called ``iter(sampler)``) is a torch ``BatchSampler`` wrapping
    ``sampler``: ``DataLoader(dataset, batch_size=B, sampler=sampler)``, PML's way for its index sampler
    ``MPerClassSampler``, would hand each of our batches to the dataset as one index, giving batches of batches."""
    wrapper = caller.f_locals.get("self")
    if isinstance(wrapper, torch.utils.data.BatchSampler) and getattr(wrapper, "sampler", None) is sampler:
        raise InputError(f"{type(sampler).__name__} yields whole batches: pass it as DataLoader(dataset, "
                         "batch_sampler=sampler) without batch_size, not as sampler=", key="sampler")


class _EpochBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Shared epoch/rank/resume machinery; subclasses implement :meth:`_global_steps`."""

    def __init__(self, labels: torch.Tensor, batch_size: int, seed: int, rank: int, world_size: int) -> None:
        self.world_size = _positive_int(world_size, "world_size")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < self.world_size:
            raise InputError(f"rank must be in [0, {self.world_size}), got {rank!r}", key="rank")
        self.rank = int(rank)
        self.seed = _seed(seed)
        self.num_samples = int(labels.shape[0])
        self.labels_digest = hashlib.blake2b(labels.contiguous().numpy().tobytes(), digest_size=8).hexdigest()
        self.batch_size = int(batch_size)
        self.epoch = 0
        self._position = 0
        self._resume_from = 0
        self._live: object | None = None  # the iterator whose batches the state counts (the most recent one)

    # the run's settings ---------------------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, labels: torch.Tensor, settings: SamplerSettings) -> _EpochBatchSampler:
        """The sampler of a run's :class:`SamplerSettings`; each sampler maps them onto its own arguments. Bad
        values raise :class:`InputError` keyed by the argument (``batch_size``, ``m``, ...)."""
        raise NotImplementedError

    #: the :class:`SamplerSettings` field that decides each argument (:data:`SETTING_OF`); the others are options
    setting_of: ClassVar[dict[str, str]] = SETTING_OF
    #: ``batch_size`` must be a multiple of ``m`` (checked when the config loads).
    m_divides_batch: bool = False
    #: every batch holds ``batch_size // m`` distinct classes of the ``sampler_scale`` column (the run's preflight
    #: checks the training split has that many and suggests values that fit when it has not).
    distinct_classes_per_batch: bool = False
    #: which of the settings ``m`` and ``scale`` the sampler reads; a config that gives one it does not read
    #: (``data.m``, ``data.sampler_scale``) a value other than its default is refused
    settings_used: ClassVar[frozenset[str]] = frozenset({"m", "scale"})

    @classmethod
    def loss_chunks_for(cls, m: int, num_scales: int, options: Mapping[str, Any] | None = None) -> Any:
        """What ``MultiScaleLoss(chunks=...)`` needs for this sampler's batch layout (``None``: whole batches);
        ``options``: the sampler's options (``data.sampler_options``), where they change the layout."""
        return None

    # subclasses -----------------------------------------------------------------------------------------------
    def _global_steps(self, rng: np.random.Generator, steps: int, epoch: int) -> Iterator[list[np.ndarray]]:
        """The ``steps`` steps of ``epoch`` drawn with ``rng``, one at a time (a generator: a step is drawn when it
        is asked for, so the first batch comes after one step's draws and an epoch is never planned whole). Each
        step is the ``world_size`` batches of the step, rank ``r``'s at ``r``; together they are the batch one
        process would draw ``world_size`` times as large."""
        raise NotImplementedError

    def _epoch_steps(self, epoch: int, steps: int) -> Iterator[list[np.ndarray]]:
        """:meth:`_global_steps` of ``epoch`` with the epoch's generator."""
        return self._global_steps(_rng(self.seed, epoch), steps, epoch)

    def _batches_per_pass(self) -> int:
        """Batches per rank in one epoch when ``iterations_per_epoch`` is not set."""
        raise NotImplementedError

    def _set_iterations(self, iterations_per_epoch: int | None) -> None:
        self.iterations_per_epoch = (None if iterations_per_epoch is None
                                     else _positive_int(iterations_per_epoch, "iterations_per_epoch"))

    def _num_batches(self) -> int:
        if self.iterations_per_epoch is not None:
            return self.iterations_per_epoch
        return self._batches_per_pass()

    # public contract ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._num_batches()

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``, an integer >= 0 (anything else: one line keyed ``epoch``; resets the resume position
        unless the state was just loaded for that epoch)."""
        epoch = _positive_int(epoch, "epoch", minimum=0)
        if epoch != self.epoch:  # no batch of the new epoch yielded yet; an iterator of the old one no longer counts
            self._resume_from = self._position = 0
            self._live = None
        self.epoch = epoch

    def epoch_batches(self, epoch: int | None = None) -> list[list[int]]:
        """All batches of this rank for ``epoch`` (default: the current one), without moving the position (the
        whole epoch drawn at once; iterating draws a step at a time)."""
        e = self.epoch if epoch is None else _positive_int(epoch, "epoch", minimum=0)
        return [step[self.rank].tolist() for step in self._epoch_steps(e, self._num_batches())]

    def __iter__(self) -> Iterator[list[int]]:
        # not a generator function: the position is reset (or restored) when the iterator is created, and the
        # caller of iter() is the frame above this one
        _refuse_as_index_sampler(self, sys._getframe(1))
        start = self._resume_from  # used up by the first batch this iterator yields (_yield), not here: a
        # DataLoader with workers calls iter() twice as it starts and keeps only the second iterator
        self._position = start
        self._live = token = object()  # an older iterator still live stops moving the state (its batches go on)
        return self._yield(self.epoch, start, token)

    def _yield(self, epoch: int, start: int, token: object) -> Iterator[list[int]]:
        """This rank's batches of ``epoch`` from batch ``start`` on, each step drawn when its batch is asked for; a
        resume (``start`` > 0) replays the draws of the steps before ``start`` without keeping them. The iterator
        counts its own position; it is the sampler's only while it is the most recent iterator (``token``). Its
        first batch uses up a loaded resume position (the next iterator starts the epoch afresh)."""
        if self._live is token:
            self._resume_from = 0
        steps = self._epoch_steps(epoch, self._num_batches())
        for _ in itertools.islice(steps, start):
            pass
        position = start
        for step in steps:
            position += 1
            if self._live is token:
                self._position = position
            yield step[self.rank].tolist()

    def _fingerprint(self) -> dict[str, Any]:
        return {"sampler": type(self).__name__, "num_samples": self.num_samples, "labels_digest": self.labels_digest,
                "batch_size": self.batch_size, "seed": self.seed, "world_size": self.world_size,
                "num_batches": self._num_batches()}

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "position"}`` plus a fingerprint of the configuration (checked on load)."""
        return {"epoch": self.epoch, "position": self._position, **self._fingerprint()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iterator yields batch ``position`` onwards of epoch ``epoch``. ``state`` is a
        :meth:`state_dict` (its ``"sampler"`` entry required; any fingerprint entry it has must match)."""
        fingerprint = self._fingerprint()
        if "sampler" not in state:
            missing = [key for key in fingerprint if key not in state]
            raise InputError(f"sampler state has no fingerprint ({', '.join(missing)} missing): pass a state from "
                             "state_dict() of the same sampler", key="sampler")
        # num_batches last: a different batch count where everything else matches is the epoch length
        for key, value in sorted(fingerprint.items(), key=lambda item: item[0] == "num_batches"):
            if key in state and state[key] != value:
                raise InputError(f"sampler state has {key}={state[key]!r} but this sampler has {value!r}; "
                                 f"an exact resume needs the same {_RESUME_NEEDS.get(key, key)} as the saved run",
                                 key="iterations_per_epoch" if key == "num_batches" else key)
        for key in ("epoch", "position"):
            if key not in state:
                raise InputError("sampler state is missing this entry", key=key)
        position = _positive_int(state["position"], "position", minimum=0)
        if not 0 <= position <= self._num_batches():
            raise InputError(f"position must be in [0, {self._num_batches()}], got {position}", key="position")
        self.epoch = _positive_int(state["epoch"], "epoch", minimum=0)
        self._position = position
        self._resume_from = position
        self._live = None  # the loaded state is the state until the next iter(): no live iterator moves it


#: What a fingerprint entry of a sampler's state stands for, in the refusal of a state that differs there (an
#: entry not listed is the sampler's own argument of that name: ``m``, ``k``, ``scale``, ...).
_RESUME_NEEDS = {
    "sampler": "sampler class", "num_samples": "data (its number of items)", "labels_digest": "data (its labels)",
    "batch_size": "batch size", "seed": "seed", "world_size": "world size (processes)",
    "num_batches": "epoch length (iterations_per_epoch)",
}


class _ChunkPool:
    """Per-class queues of K-image chunks, refilled pass by pass (see the module docstring)."""

    def __init__(self, members: list[np.ndarray], k: int, rng: np.random.Generator) -> None:
        self.members = members
        self.k = k
        self.rng = rng
        self.queues: list[list[np.ndarray]] = [[] for _ in members]
        self.remaining = np.zeros(len(members), dtype=np.int64)  # chunks left in the current pass
        self.sizes = np.array([len(m) for m in members], dtype=np.int64)
        self.rows = np.concatenate(members) if members else np.zeros(0, dtype=np.int64)
        self.row_class = np.repeat(np.arange(len(members)), self.sizes)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)[:-1]]).astype(np.int64)

    def _chunks_of(self, c: int) -> list[np.ndarray]:
        idx = self.members[c]
        perm = self.rng.permutation(idx)
        n, k = len(perm), self.k
        pad = -n % k
        if pad:
            if n >= k:
                fill = self.rng.choice(perm[: n - n % k], pad, replace=False)
            else:  # fewer than K images: sample with replacement
                fill = self.rng.choice(idx, pad, replace=True)
            perm = np.concatenate([perm, fill])
        return list(perm.reshape(-1, k))

    def new_pass(self) -> None:
        """Append one pass of chunks for every class (vectorised form of :meth:`_chunks_of`)."""
        k, n_cls = self.k, len(self.members)
        # shuffle rows within each class (rows are stored class by class)
        prow = self.rows[np.lexsort((self.rng.random(len(self.rows)), self.row_class))]
        pad = -self.sizes % k
        fill_cls = np.repeat(np.arange(n_cls), pad)
        within = np.arange(len(fill_cls)) - np.repeat(np.cumsum(pad) - pad, pad)
        small = self.sizes[fill_cls] < k
        if small.any():  # fewer than K images: fill with replacement
            within[small] = self.rng.integers(0, self.sizes[fill_cls[small]])
        # classes with >= K images fill from their first (shuffled) rows, i.e. without replacement
        fill = prow[self.offsets[fill_cls] + within]
        order = np.argsort(np.concatenate([self.row_class * 2, fill_cls * 2 + 1]), kind="stable")
        chunks = np.concatenate([prow, fill])[order].reshape(-1, k)
        counts = (self.sizes + pad) // k
        bounds = np.concatenate([[0], np.cumsum(counts)])
        for c in range(n_cls):
            self.queues[c].extend(chunks[bounds[c]:bounds[c + 1]])
        self.remaining += counts

    def take(self, c: int) -> np.ndarray:
        if not self.queues[c]:
            self.queues[c].extend(self._chunks_of(c))
        if self.remaining[c] > 0:
            self.remaining[c] -= 1
        return self.queues[c].pop(0)

    def pick(self, candidates: np.ndarray, count: int) -> np.ndarray | None:
        """``count`` distinct classes among ``candidates`` with chunks left in the pass; ``None`` if too few."""
        return _weighted_pick(self.rng, candidates, self.remaining[candidates], count)


def _weighted_pick(rng: np.random.Generator, candidates: np.ndarray, left: np.ndarray, count: int,
                   per_round: int = 1) -> np.ndarray | None:
    """``count`` distinct candidates with ``left > 0``, drawn with probability proportional to ``left``.

    Every round takes ``per_round`` units from each chosen candidate. A candidate with at least ``per_round``
    units for every round left (``left >= per_round * rounds``) is always chosen, else the pass could not be packed
    without repeats. ``None`` when fewer than ``count`` candidates have units left.
    """
    if np.count_nonzero(left) < count:
        return None
    rounds = int(left.sum()) // (count * per_round)
    forced = candidates[left >= per_round * max(rounds, 1)]
    if len(forced) > count:
        forced = rng.choice(forced, count, replace=False)
    free = (left > 0) & ~np.isin(candidates, forced)
    need = count - len(forced)
    if need:
        w = left[free].astype(np.float64)
        forced = np.concatenate([forced, rng.choice(candidates[free], need, replace=False, p=w / w.sum())])
    return rng.permutation(forced)


def _chunks_per_pass(members: list[np.ndarray], k: int) -> int:
    return int(sum(math.ceil(len(m) / k) for m in members))


def _cut(step: np.ndarray, world_size: int) -> list[np.ndarray]:
    """One step's rows cut into ``world_size`` equal consecutive batches (rank ``r`` takes the ``r``-th)."""
    return list(step.reshape(world_size, -1))


_STEP_WHY = "the loss sees the step's batches together"


def _step_classes_message(world_size: int, per_batch: int, batch_size: int, m: int, where: str, have: int) -> str:
    """Why ``world_size`` processes cannot draw a step of ``world_size x per_batch`` distinct classes when ``where``
    has only ``have`` (each process's batch of ``batch_size`` rows holds ``per_batch`` classes of ``m`` images), and
    the largest batch per process that fits."""
    fit, processes = have // world_size, _at_most(have // per_batch)
    largest = f"the largest batch per process is batch_size {m * fit}, or {processes}" if fit else processes
    return (f"with {world_size} processes a training step draws {world_size} x {per_batch} = {world_size * per_batch} "
            f"distinct classes (batch_size {batch_size} / m {m} per process; {_STEP_WHY}) but {where} has only "
            f"{have}: {largest}")


def _at_most(processes: int) -> str:
    return f"use at most {processes} process{'es' * (processes != 1)}"


_P = ParamSpec("_P")


def pml_length_message(length: Any, batch_size: Any, world_size: Any, *, option: str = "iterations_per_epoch",
                       batch: str = "batch_size", ranks_known: bool = True) -> str:
    """The message refusing PML's ``length_before_new_iter`` (its epoch length in indices), naming the equivalent
    ``option`` (batches per rank: ``length // batch_size // world_size``, computed when all three are positive
    integers; ``batch_size`` ``None`` when the batch's row count is not a single setting). ``option`` / ``batch``:
    how the caller names them (a config: ``data.iterations_per_epoch`` / ``data.batch_size``). ``ranks_known``
    False (a config checked before the run knows its ranks): the number for one rank, "divided by the number of
    ranks"."""
    per = option
    if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (length, batch_size, world_size)):
        per = (f"{option}={length // batch_size // world_size}" if ranks_known
               else f"{option}={length // batch_size} divided by the number of ranks")
    return (f"length_before_new_iter is pytorch-metric-learning's epoch length in indices; here the epoch is {option} "
            f"batches per rank: give {per} (length_before_new_iter // {batch} // world_size)")


def _refuse_pml_length(init: Callable[_P, None]) -> Callable[_P, None]:
    """``init`` refusing PML's ``length_before_new_iter`` (its epoch length in indices) with a one-line
    :class:`InputError` naming the equivalent ``iterations_per_epoch`` (batches per rank, :func:`pml_length_message`),
    rather than Python's bare ``TypeError``. The signature stays ``init``'s (``functools.wraps``), so option lists do
    not offer PML's name."""

    @functools.wraps(init)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> None:
        if "length_before_new_iter" in kwargs:
            length: Any = kwargs.pop("length_before_new_iter")
            try:
                given = inspect.signature(init).bind_partial(*args, **kwargs).arguments
            except TypeError:
                given = {}
            raise InputError(pml_length_message(length, given.get("batch_size"), given.get("world_size", 1)),
                             key="length_before_new_iter")
        init(*args, **kwargs)

    return wrapper


class MPerClassSampler(_EpochBatchSampler):
    """P×K batches: ``batch_size // m`` distinct classes of scale ``scale`` with ``m`` images each.

    A *batch* sampler, unlike PML's index sampler of the same name: ``DataLoader(dataset, batch_sampler=sampler)``
    (passed as ``sampler=`` it raises an :class:`InputError` saying so); ``batch_size`` is required and
    ``iterations_per_epoch`` counts batches (PML's ``length_before_new_iter`` counts indices; given here, it is
    refused with the ``iterations_per_epoch`` it corresponds to).

    Within a batch the rows are grouped by class (``m`` consecutive rows per class). An epoch has
    ``iterations_per_epoch`` batches per rank, by default ``floor(chunks per pass / P / world_size)`` (≥ 1): as many
    chunks as one pass holds. It visits every image once when the pass can be packed into steps of ``W x P``
    distinct classes (``W`` = ``world_size``, 1 by default; its chunk count a multiple of ``W x P`` and no class
    holding more than ``1/(W x P)`` of the chunks); otherwise not: a step holds a class once, so a class with more
    than ``1/(W x P)`` of the chunks gets at most one chunk per step (per batch with one process) and
    the rest of the epoch's batches draw the other classes again from new passes (classes of 1000, 4, 4 and 4 images,
    ``m = 4``, ``P = 2``: 126 batches with 126 of the 250 chunks of the large class, about half the images). See the
    module docstring for chunks and replacement; a batch needs ``P`` distinct classes of ``scale`` (``InputError``
    keyed ``batch_size`` naming the largest batch, ``m x classes``, otherwise). With ``world_size`` ``W`` > 1 a step
    draws ``W x P`` distinct classes together and gives each rank ``P`` of them (consecutive in the draw), so the
    ranks' batches of one step share no class and no image (a class with fewer than ``m`` images still repeats its
    own images inside its chunk); the labels need ``W x P`` classes (``InputError`` keyed ``batch_size`` naming the
    largest batch per process, ``m x floor(classes / W)``, otherwise).
    """

    @_refuse_pml_length
    def __init__(self, labels: LabelsLike, m: int, batch_size: int, scale: int = 0,
                 iterations_per_epoch: int | None = None, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        mat = label_matrix_on_host(labels)
        self.m = _positive_int(m, "m")
        batch_size = _positive_int(batch_size, "batch_size")
        if batch_size % self.m:
            raise InputError(f"batch_size ({batch_size}) must be a multiple of m ({self.m})", key="batch_size")
        if not -mat.shape[1] <= _int(scale, "scale") < mat.shape[1]:
            raise InputError(f"scale {scale} out of range for labels with {mat.shape[1]} scale(s)", key="scale")
        super().__init__(mat, batch_size, seed, rank, world_size)
        self.scale = int(scale) % mat.shape[1]
        self.classes_per_batch = batch_size // self.m
        self.classes, self.members = _class_members(mat[:, self.scale].numpy())
        if len(self.classes) < self.classes_per_batch:
            raise InputError(f"a batch needs {self.classes_per_batch} distinct classes (batch_size {batch_size} / "
                             f"m {self.m}) but scale {self.scale} has only {len(self.classes)}: the largest batch is "
                             f"batch_size {self.m * len(self.classes)}", key="batch_size")
        if len(self.classes) < self.classes_per_batch * self.world_size:
            raise InputError(_step_classes_message(self.world_size, self.classes_per_batch, batch_size, self.m,
                                                   f"scale {self.scale}", len(self.classes)), key="batch_size")
        self._set_iterations(iterations_per_epoch)

    m_divides_batch = True
    distinct_classes_per_batch = True

    @classmethod
    def from_settings(cls, labels: torch.Tensor, settings: SamplerSettings) -> MPerClassSampler:
        """``m`` images of each of ``batch_size / m`` classes of column ``scale``."""
        st = settings
        return cls(labels, st.m, st.batch_size, scale=st.scale, **st.common(), **st.options)

    def _batches_per_pass(self) -> int:
        return max(1, _chunks_per_pass(self.members, self.m) // self.classes_per_batch // self.world_size)

    def _global_steps(self, rng: np.random.Generator, steps: int, epoch: int) -> Iterator[list[np.ndarray]]:
        # a step draws world_size x P distinct classes at once (one process's batch world_size times as large) and
        # cuts it into the ranks' batches; with one process this is the draw of one batch, as it always was
        pool = _ChunkPool(self.members, self.m, rng)
        pool.new_pass()
        all_classes = np.arange(len(self.members))
        per_step = self.classes_per_batch * self.world_size
        for _ in range(steps):
            chosen = pool.pick(all_classes, per_step)
            if chosen is None:
                pool.new_pass()
                chosen = pool.pick(all_classes, per_step)
                assert chosen is not None  # a fresh pass holds every class (classes per step checked in __init__)
            yield _cut(np.concatenate([pool.take(int(c)) for c in chosen]), self.world_size)

    def _fingerprint(self) -> dict[str, Any]:
        return {**super()._fingerprint(), "m": self.m, "scale": self.scale}


def _check_scales(scales: Any, num_columns: int | None) -> list[int]:
    """``ThreeScaleSampler``'s ``scales`` as a list: distinct label columns in increasing order (finest first),
    each in ``[0, num_columns)`` (not checked when ``None``), else an :class:`InputError` keyed ``scales``."""
    if (not isinstance(scales, (list, tuple)) or not scales
            or any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) for c in scales)):
        raise InputError(f"expected a non-empty list of label columns (integers, finest first, e.g. [0, 2]), got "
                         f"{scales!r}", key="scales")
    out = [int(c) for c in scales]
    if any(b <= a for a, b in zip(out, out[1:])):
        raise InputError(f"expected distinct label columns in increasing order (finest first, e.g. [0, 2]), got "
                         f"{out}", key="scales")
    if out[0] < 0 or (num_columns is not None and out[-1] >= num_columns):
        where = f"[0, {num_columns})" if num_columns is not None else "0 or more"
        raise InputError(f"expected label columns in {where}, got {out}", key="scales")
    return out


class ThreeScaleSampler(_EpochBatchSampler):
    """DyML's three-scale sampler (Sun et al., CVPR 2021).

    Item ``i`` holds ``K`` images of class ``i mod C_s`` at every scale ``s`` (classes of each scale in first-seen
    order of ``labels``); the items of an epoch are shuffled, so an item's classes are unrelated. An epoch uses
    ``n = len(sampler) * items_per_batch * world_size`` items, ``len(sampler)`` being ``floor(floor(N / K) /
    items_per_batch / world_size)`` (DyML's ``D = floor(N / K)`` items in whole batches) or ``iterations_per_epoch``.
    Epoch ``e`` takes items ``e * n ... (e + 1) * n - 1`` of an endless item stream (epoch 0: DyML's items, less the
    fewer than one step's worth that do not fill a batch), so the window of classes moves on by ``n`` every epoch:
    every class of scale ``s`` gets a chunk in any ``ceil(C_s / n)`` consecutive epochs, and every class the same
    number over ``C_s`` consecutive epochs (a scale with more classes than ``n`` still gives every class chunks).
    Images of a class are drawn without replacement (a running permutation per class, so a class's images are all
    used before any repeats), or with replacement when the class has fewer than ``K`` images.

    ``scales`` (default: every label column) are the columns the items are drawn at: distinct, increasing (finest
    first), each a column of ``labels``; an item has one chunk per entry, chunk ``i`` of label column ``scales[i]``.

    **Batch layout** (matches :func:`dynametric.losses.multiscale.three_scale_chunks`): each item contributes
    ``S * K`` consecutive rows, ``K`` for scale 0 (fine), then ``K`` for scale 1, ... . :meth:`chunk_layout`
    returns the row indices of each scale's chunk and :attr:`loss_chunks` a
    :class:`~dynametric.losses.multiscale.ThreeScaleChunks` for ``MultiScaleLoss(..., chunks=sampler.loss_chunks)``.
    """

    def __init__(self, labels: LabelsLike, k: int = 4, items_per_batch: int = 8, scales: Sequence[int] | None = None,
                 iterations_per_epoch: int | None = None, seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        mat = label_matrix_on_host(labels)
        self.k = _positive_int(k, "k")
        self.items_per_batch = _positive_int(items_per_batch, "items_per_batch")
        scales = list(range(mat.shape[1])) if scales is None else _check_scales(scales, mat.shape[1])
        self.scales = scales
        super().__init__(mat, len(scales) * self.k * self.items_per_batch, seed, rank, world_size)
        self.scale_classes: list[np.ndarray] = []
        self.scale_members: list[list[np.ndarray]] = []
        for s in scales:
            classes, members = _class_members(mat[:, s].numpy())
            self.scale_classes.append(classes)
            self.scale_members.append(members)
        self._set_iterations(iterations_per_epoch)
        if self._num_batches() < 1:
            raise InputError(self._too_few_items_message(), key="items_per_batch")

    def _too_few_items_message(self) -> str:
        """Why one step of ``world_size x items_per_batch`` items does not fit the epoch's items, and what fits."""
        def count(n: int, noun: str) -> str:
            return f"{n} {noun}{'s' * (n != 1)}"
        items, ipb, world = self.num_samples // self.k, self.items_per_batch, self.world_size
        have = f"{count(self.num_samples, 'image')} give {count(items, 'item')} per epoch"
        if world == 1:
            want = f"fewer than one batch of {count(ipb, 'item')}"
        else:
            want = f"fewer than one step of {world} x {ipb} = {count(world * ipb, 'item')} ({ipb} a batch per process)"
        rows = len(self.scales) * self.k
        advice = ([f"a batch of {count(items // world, 'item')} ({items // world * rows} rows)"] if items // world
                  else []) + ([_at_most(items // ipb)] if world > 1 and items // ipb else [])
        if not items and self.num_samples:
            advice.append(f"k {self.num_samples}")
        return f"{have}, {want}" + (f": the largest that fits is {', or '.join(advice)}" if advice else "")

    setting_of: ClassVar[dict[str, str]] = {**SETTING_OF, "k": "m", "items_per_batch": "batch_size"}
    settings_used: ClassVar[frozenset[str]] = frozenset({"m"})  # every scale of ``scales`` is sampled

    @classmethod
    def from_settings(cls, labels: torch.Tensor, settings: SamplerSettings) -> ThreeScaleSampler:
        """Items of ``m`` images per sampled scale (``k = m``; the scales: option ``scales``, default every label
        column), ``batch_size / (m x scales)`` items per batch, so a batch has ``batch_size`` rows (``scale`` is not
        used)."""
        st = settings
        scales = st.options.get("scales")
        count = labels.shape[1] if scales is None else len(_check_scales(scales, labels.shape[1]))
        per_item = st.m * count
        if st.batch_size % per_item:
            raise InputError(f"batch_size {st.batch_size} must be a multiple of m x scales = {st.m} x {count} = "
                             f"{per_item} (an item holds m images at each of its {count} scale(s))", key="batch_size")
        return cls(labels, k=st.m, items_per_batch=st.batch_size // per_item, **st.common(), **st.options)

    @classmethod
    def loss_chunks_for(cls, m: int, num_scales: int, options: Mapping[str, Any] | None = None) -> Any:
        """Each scale's loss sees only its own chunk of every item (``ThreeScaleChunks(m, S)``, ``S`` the sampled
        scales: ``len(options["scales"])`` when given, else ``num_scales``)."""
        from dynametric.losses.multiscale import ThreeScaleChunks

        scales = (options or {}).get("scales")
        return ThreeScaleChunks(m, num_scales if scales is None else len(_check_scales(scales, None)))

    @property
    def num_scales(self) -> int:
        return len(self.scales)

    def _batches_per_pass(self) -> int:
        return self.num_samples // self.k // self.items_per_batch // self.world_size

    def _global_steps(self, rng: np.random.Generator, steps: int, epoch: int) -> Iterator[list[np.ndarray]]:
        per_step = self.items_per_batch * self.world_size
        n_items = steps * per_step
        # the epoch-th window of n_items consecutive items of the stream, shuffled (the classes' window moves on by
        # n_items every epoch, none skipped); the items' images are drawn in order, a step's items when it is asked
        items = epoch * n_items + rng.permutation(n_items)
        queues: list[list[np.ndarray]] = [[np.empty(0, dtype=np.int64) for _ in m] for m in self.scale_members]
        for start in range(0, n_items, per_step):
            rows = np.empty((per_step, self.num_scales, self.k), dtype=np.int64)
            for j, item in enumerate(items[start:start + per_step].tolist()):
                for s, members in enumerate(self.scale_members):
                    c = item % len(members)
                    rows[j, s] = self._draw(members[c], queues[s], c, rng)
            yield list(rows.reshape(self.world_size, -1))

    def _draw(self, idx: np.ndarray, queues: list[np.ndarray], c: int, rng: np.random.Generator) -> np.ndarray:
        k = self.k
        if len(idx) < k:
            return rng.choice(idx, k, replace=True)
        queue = queues[c]
        if len(queue) >= k:
            queues[c] = queue[k:]
            return queue[:k]
        fresh = rng.permutation(idx)
        keep = ~np.isin(fresh, queue)
        need = k - len(queue)
        out = np.concatenate([queue, fresh[keep][:need]])
        queues[c] = np.concatenate([fresh[keep][need:], fresh[~keep]])
        return out

    def chunk_layout(self, batch_size: int | None = None) -> list[torch.Tensor]:
        """Row indices of each scale's chunk in a batch of ``batch_size`` rows (default: a full batch)."""
        batch_size = self.batch_size if batch_size is None else int(batch_size)
        group = self.num_scales * self.k
        if batch_size % group:
            raise InputError(f"batch of {batch_size} rows is not a whole number of items of {group} images",
                             key="batch_size")
        rows = torch.arange(batch_size).view(-1, self.num_scales, self.k)
        return [rows[:, s, :].reshape(-1) for s in range(self.num_scales)]

    @property
    def scale_chunks(self) -> list[tuple[int, torch.Tensor]]:
        """``[(label column, row indices of its chunk), ...]`` for a full batch."""
        return list(zip(self.scales, self.chunk_layout()))

    @property
    def loss_chunks(self) -> Any:
        """A ``ThreeScaleChunks(K, S)`` callable to pass as ``MultiScaleLoss(chunks=...)``."""
        from dynametric.losses.multiscale import ThreeScaleChunks

        return ThreeScaleChunks(self.k, self.num_scales)

    def _fingerprint(self) -> dict[str, Any]:
        return {**super()._fingerprint(), "k": self.k, "scales": list(self.scales)}


def _nth_most(n: int) -> str:
    """``"most"``, ``"2nd most"``, ``"3rd most"``, ... ."""
    suffix = "th" if 10 <= n % 100 < 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return "most" if n == 1 else f"{n}{suffix} most"


class HierarchicalSampler(_EpochBatchSampler):
    """Batches of several fine classes under a few shared parents (hard negatives at the fine scale).

    A batch of ``batch_size`` rows picks ``parents_per_batch`` distinct classes of ``parent_scale`` and, under each,
    ``batch_size / (samples_per_class * parents_per_batch)`` classes of ``scale`` with ``samples_per_class`` images
    each (rows grouped by parent, then by class). Choices are weighted by the chunks left in the pass (see the module
    docstring); a parent with too few classes left in the pass takes the rest from its other classes, and a parent
    with fewer classes than needed in total repeats classes (with different images where there are enough).
    Every class of ``scale`` must have exactly one parent, and ``parents_per_batch`` parents must have at least
    ``batch_size / (samples_per_class * parents_per_batch)`` classes each (else an :class:`InputError` keyed
    ``batch_size`` names the largest batch), as :class:`MPerClassSampler` needs ``P`` classes: a batch that could
    only be filled by repeating classes is refused. With ``world_size`` ``W`` > 1 a step draws ``W x
    parents_per_batch`` distinct parents together and gives each rank ``parents_per_batch`` of them, so the ranks'
    batches of one step share no parent, hence no class and no image; that needs ``W x parents_per_batch`` parents
    with the classes above (``InputError`` keyed ``parents_per_batch`` when there are too few parents, else keyed
    ``batch_size`` naming the largest batch per process).
    """

    def __init__(self, labels: LabelsLike, batch_size: int, samples_per_class: int = 4, parents_per_batch: int = 2,
                 scale: int = 0, parent_scale: int = 1, iterations_per_epoch: int | None = None, seed: int = 0,
                 rank: int = 0, world_size: int = 1) -> None:
        mat = label_matrix_on_host(labels)
        if mat.shape[1] < 2:  # keyed by nothing: the sampler itself (data.sampler in a config) is the problem
            raise InputError(f"the hierarchical sampler needs labels with at least two scales (classes and the "
                             f"parents that group them), got {mat.shape[1]} scale")
        for key, s in (("scale", scale), ("parent_scale", parent_scale)):
            if not 0 <= _int(s, key) < mat.shape[1]:
                raise InputError(f"{key} {s} out of range for labels with {mat.shape[1]} scale(s)", key=key)
        if parent_scale == scale:
            raise InputError("parent_scale must differ from scale", key="parent_scale")
        self.k = _positive_int(samples_per_class, "samples_per_class")
        self.parents_per_batch = _positive_int(parents_per_batch, "parents_per_batch")
        batch_size = _positive_int(batch_size, "batch_size")
        if batch_size % (self.k * self.parents_per_batch):
            raise InputError(f"batch_size ({batch_size}) must be a multiple of samples_per_class x parents_per_batch "
                             f"({self.k} x {self.parents_per_batch})", key="batch_size")
        super().__init__(mat, batch_size, seed, rank, world_size)
        self.scale, self.parent_scale = int(scale), int(parent_scale)
        self.classes_per_parent = batch_size // (self.k * self.parents_per_batch)
        self.classes, self.members = _class_members(mat[:, self.scale].numpy())
        parent_col = mat[:, self.parent_scale].numpy()
        # each class's parents at once: the smallest and largest parent of its rows (rows stored class by class)
        sizes = np.array([len(rows) for rows in self.members], dtype=np.int64)
        by_class = parent_col[np.concatenate(self.members)] if self.members else parent_col[:0]
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)[:len(sizes)]
        parent_of_arr = np.minimum.reduceat(by_class, starts) if len(starts) else by_class
        mixed = np.flatnonzero(parent_of_arr != (np.maximum.reduceat(by_class, starts) if len(starts) else by_class))
        if len(mixed):  # the first such class in first-seen order, as the class-by-class check named it
            c = int(mixed[0])
            parents = np.unique(parent_col[self.members[c]])
            raise InputError(f"class {self.classes[c]} of scale {self.scale} has {len(parents)} parents at scale "
                             f"{self.parent_scale} ({parents[:5].tolist()}); expected exactly one",
                             key="parent_scale")
        # parents in first-seen order (of the classes), each class's parent's position, and each parent's classes
        # (ascending), grouped with one stable sort
        values, first, inverse = np.unique(parent_of_arr, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        self.parents = values[order]
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        self.parent_index = position[inverse.reshape(-1)]
        bounds = np.cumsum(np.bincount(self.parent_index, minlength=len(self.parents)))
        self.children = np.split(np.argsort(self.parent_index, kind="stable"), bounds[:-1])
        if len(self.parents) < self.parents_per_batch:
            raise InputError(f"a batch needs {self.parents_per_batch} distinct parent"
                             f"{'s' * (self.parents_per_batch != 1)} but scale {self.parent_scale} "
                             f"has only {len(self.parents)}", key="parents_per_batch")
        # as MPerClassSampler's "P distinct classes": some parents_per_batch parents can fill their groups with
        # distinct classes, so a batch never needs to repeat a class (a parent with fewer classes may still repeat)
        fits = int(np.sort([len(c) for c in self.children])[::-1][self.parents_per_batch - 1])
        if fits < self.classes_per_parent:
            raise InputError(f"a batch needs {self.parents_per_batch} parent{'s' * (self.parents_per_batch > 1)} "
                             f"(scale {self.parent_scale}) with "
                             f"{self.classes_per_parent} distinct classes (scale {self.scale}) each (batch_size "
                             f"{batch_size} / (samples_per_class {self.k} x parents_per_batch {self.parents_per_batch})"
                             f") but the parent with the {_nth_most(self.parents_per_batch)} classes has {fits}: the "
                             f"largest batch is batch_size {self.k * self.parents_per_batch * fits}",
                             key="batch_size")
        self._check_step(batch_size)
        self._set_iterations(iterations_per_epoch)

    def _check_step(self, batch_size: int) -> None:
        """Under ``world_size`` processes a step takes ``world_size x parents_per_batch`` distinct parents with
        ``classes_per_parent`` distinct classes each (some that many parents must have them), else an
        :class:`InputError` naming what fits."""
        world, ppb = self.world_size, self.parents_per_batch
        if world == 1:
            return  # the checks of one batch above
        need = world * ppb
        step = (f"with {world} processes a training step draws {world} x {ppb} = {need} distinct parents (scale "
                f"{self.parent_scale}; parents_per_batch {ppb} per process; {_STEP_WHY})")
        kids = np.sort([len(c) for c in self.children])[::-1]
        cpp, have = self.classes_per_parent, len(self.parents)
        if have < need:
            # only settings that are accepted: parents_per_batch f (with the batch size that keeps classes_per_parent)
            # whose world x f parents have cpp classes each, and the most processes whose parents do
            fit = next((f for f in range(have // world, 0, -1) if kids[world * f - 1] >= cpp), 0)
            most = max((w for w in range(1, world) if w * ppb <= have and kids[w * ppb - 1] >= cpp), default=0)
            advice = ([f"parents_per_batch {fit} with batch_size {self.k * fit * cpp} per process fits"] if fit
                      else []) + ([_at_most(most)] if most else [])
            raise InputError(f"{step} but scale {self.parent_scale} has only {have}"
                             f"{': ' + ', or '.join(advice) if advice else ''}", key="parents_per_batch")
        fits = int(kids[need - 1])
        if fits < self.classes_per_parent:
            # the most processes whose parents all have enough classes (one process does: checked above)
            most = max(w for w in range(1, world) if kids[w * ppb - 1] >= self.classes_per_parent)
            raise InputError(f"{step} with {self.classes_per_parent} distinct classes (scale {self.scale}) each "
                             f"(batch_size {batch_size} / (samples_per_class {self.k} x parents_per_batch {ppb})) but "
                             f"the parent with the {_nth_most(need)} classes has {fits}: the largest batch per process "
                             f"is batch_size {self.k * ppb * fits}, or {_at_most(most)}", key="batch_size")

    m_divides_batch = True
    setting_of: ClassVar[dict[str, str]] = {**SETTING_OF, "samples_per_class": "m"}

    @classmethod
    def from_settings(cls, labels: torch.Tensor, settings: SamplerSettings) -> HierarchicalSampler:
        """``m`` images per class (``samples_per_class``) of column ``scale``, grouped under shared parents. A batch
        size that ``m x parents_per_batch`` does not divide is refused in the config's words (``data.batch_size``,
        ``data.m``, ``data.sampler_options.parents_per_batch``), keyed by the option when it was given, else by the
        batch size."""
        st = settings
        given = "parents_per_batch" in st.options
        parents = _positive_int(st.options["parents_per_batch"] if given else
                                inspect.signature(cls.__init__).parameters["parents_per_batch"].default,
                                "parents_per_batch")
        if st.batch_size % (st.m * parents):
            raise InputError(f"data.batch_size ({st.batch_size}) must be a multiple of data.m x "
                             f"data.sampler_options.parents_per_batch ({st.m} x {parents} = {st.m * parents}"
                             f"{'' if given else f'; parents_per_batch is {parents} by default'}): a batch holds "
                             "parents_per_batch parents with whole classes of m images under each",
                             key="parents_per_batch" if given else "batch_size")
        return cls(labels, st.batch_size, samples_per_class=st.m, scale=st.scale, **st.common(), **st.options)

    def _batches_per_pass(self) -> int:
        per_batch = self.classes_per_parent * self.parents_per_batch
        return max(1, _chunks_per_pass(self.members, self.k) // per_batch // self.world_size)

    def _pick_children(self, pool: _ChunkPool, parent: int) -> np.ndarray:
        kids = self.children[parent]
        n = self.classes_per_parent
        live = kids[pool.remaining[kids] > 0]
        picked = pool.pick(live, min(n, len(live))) if len(live) else None
        take = live if picked is None else picked
        rest = np.setdiff1d(kids, take)
        if len(take) < n and len(rest):
            take = np.concatenate([take, pool.rng.choice(rest, min(n - len(take), len(rest)), replace=False)])
        if len(take) < n:  # the parent has fewer classes than needed: repeat some
            take = np.concatenate([take, pool.rng.choice(kids, n - len(take), replace=True)])
        return take

    def _global_steps(self, rng: np.random.Generator, steps: int, epoch: int) -> Iterator[list[np.ndarray]]:
        # a step draws world_size x parents_per_batch distinct parents at once and gives each rank parents_per_batch
        # of them; with one process this is the draw of one batch, as it always was
        pool = _ChunkPool(self.members, self.k, rng)
        pool.new_pass()
        parent_ids = np.arange(len(self.parents))
        per_step = self.parents_per_batch * self.world_size
        for _ in range(steps):
            left = np.bincount(self.parent_index, weights=pool.remaining, minlength=len(self.parents))
            if np.count_nonzero(left) < per_step:
                pool.new_pass()
                left = np.bincount(self.parent_index, weights=pool.remaining, minlength=len(self.parents))
            parents = _weighted_pick(rng, parent_ids, left, per_step, self.classes_per_parent)
            assert parents is not None  # a fresh pass holds every parent (parents per step checked in __init__)
            rows = [pool.take(int(c)) for p in parents for c in self._pick_children(pool, int(p))]
            yield _cut(np.concatenate(rows), self.world_size)

    def _fingerprint(self) -> dict[str, Any]:
        return {**super()._fingerprint(), "k": self.k, "scale": self.scale, "parent_scale": self.parent_scale,
                "parents_per_batch": self.parents_per_batch}


class RandomBatchSampler:
    """Uniformly shuffled batches (no class balancing), seeded per epoch, sharded by rank.

    A *pass* is one permutation of the items cut into ``num_samples // (batch_size * world_size)`` steps of
    ``batch_size`` items per rank; its last ``num_samples % (batch_size * world_size)`` items are dropped. An epoch is
    one pass, or ``iterations_per_epoch`` steps from as many passes as that takes (each a new permutation), so a
    batch never holds an item twice; an item recurs only in another pass. Fewer items than one step
    (``batch_size * world_size``) is an :class:`~dynametric.errors.InputError` (key ``batch_size``).
    """

    def __init__(self, num_samples: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 iterations_per_epoch: int | None = None) -> None:
        self.world = _positive_int(world_size, "world_size")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < self.world:
            raise InputError(f"rank must be in [0, {self.world}), got {rank!r}", key="rank")
        self.bs = _positive_int(batch_size, "batch_size")
        self.n = _positive_int(num_samples, "num_samples", minimum=0)
        if self.n < self.bs * self.world:
            raise InputError(f"{self.n} items give no batch: one step takes batch_size {self.bs} x {self.world} "
                             f"rank(s) = {self.bs * self.world} items; lower the batch size", key="batch_size")
        self.seed, self.rank = _seed(seed), int(rank)
        self.iterations = (None if iterations_per_epoch is None
                           else _positive_int(iterations_per_epoch, "iterations_per_epoch"))
        self.epoch = 0

    m_divides_batch = False
    distinct_classes_per_batch = False
    setting_of: ClassVar[dict[str, str]] = SETTING_OF
    settings_used: ClassVar[frozenset[str]] = frozenset()  # neither m nor scale: no class balancing

    @classmethod
    def from_settings(cls, labels: torch.Tensor, settings: SamplerSettings) -> RandomBatchSampler:
        """Batches of ``batch_size`` rows (``m`` and ``scale`` are not used)."""
        return cls(len(labels), settings.batch_size, **settings.common(), **settings.options)

    @classmethod
    def loss_chunks_for(cls, m: int, num_scales: int, options: Mapping[str, Any] | None = None) -> Any:
        return None

    def set_epoch(self, epoch: int) -> None:
        """Select epoch ``epoch``, an integer >= 0 (anything else: one line keyed ``epoch``)."""
        self.epoch = _positive_int(epoch, "epoch", minimum=0)

    def __len__(self) -> int:
        full = self.n // (self.bs * self.world)
        return self.iterations if self.iterations is not None else full

    def __iter__(self) -> Iterator[list[int]]:
        # not a generator function, so that the caller of iter() is the frame above this one
        _refuse_as_index_sampler(self, sys._getframe(1))
        return self._batches()

    def _batches(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        per_pass = self.n // (self.bs * self.world)  # >= 1 (checked in __init__)
        used = per_pass * self.bs * self.world  # a pass drops its last items rather than mix two passes in a batch
        order = np.concatenate([rng.permutation(self.n)[:used] for _ in range(-(-len(self) // per_pass))])
        for b in range(len(self)):
            start = (b * self.world + self.rank) * self.bs
            yield order[start:start + self.bs].tolist()


BATCH_SAMPLERS: dict[str, Any] = {
    "m_per_class": MPerClassSampler,
    "three_scale": ThreeScaleSampler,
    "hierarchical": HierarchicalSampler,
    "random": RandomBatchSampler,
}
"""The samplers a config names (``data.sampler``), in the order error messages list them: a class with the
``from_settings`` / ``m_divides_batch`` / ``loss_chunks_for`` hooks. Adding a sampler means adding it here."""

SAMPLERS: dict[str, Callable[..., _EpochBatchSampler]] = {
    cls.__name__: cls for cls in BATCH_SAMPLERS.values() if issubclass(cls, _EpochBatchSampler)}
"""The resumable samplers of :data:`BATCH_SAMPLERS` by class name (for :func:`build_sampler`)."""


def build_sampler(name: str, labels: LabelsLike, **kwargs: Any) -> _EpochBatchSampler:
    """Build a batch sampler by class name (keys of :data:`SAMPLERS`); unknown names or arguments raise
    :class:`~dynametric.errors.ConfigError` naming the valid ones."""
    if name not in SAMPLERS:
        from dynametric.utils.registry import with_import_hint

        raise ConfigError(with_import_hint(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}"),
                          key="sampler")
    cls = SAMPLERS[name]
    valid = [p for p in inspect.signature(cls).parameters if p != "labels"]
    bad = sorted(set(kwargs) - set(valid))
    if bad:
        raise ConfigError(f"unknown argument(s) {bad} for {name}; valid: {valid}", key=f"sampler.{bad[0]}")
    return cls(labels, **kwargs)
