"""Evaluation protocols: which sets are embedded and how their embeddings become metrics, as one interface.

A protocol names the dataset splits it needs (:meth:`EvaluationProtocol.splits`) and turns their embeddings into
results (:meth:`EvaluationProtocol.evaluate`); :meth:`EvaluationProtocol.run` loads and embeds the splits with the
caller's ``load(split) -> dataset`` and ``embed(dataset) -> (emb [N, D], labels [N, S])``. The metrics themselves
come from an ``evaluate`` callable with the signature of :func:`dynametric.metrics.evaluate_embeddings` and the
caller's options bound (device, metric names, k values, distance, memory budget); a protocol passes only what it
decides (the sets, their ids, the scale names, and for DyML its own metric options).

* :class:`LeaveOneOut`: every item of one split queries all the others (validation during training, the test split
  of CUB / CARS / SOP-style configs, ``evaluate --checkpoint --split``);
* :class:`QueryGallery`: fixed query and gallery splits (``eval.protocol: query_gallery``), a query's own gallery
  copy (same file name) excluded when ``eval.query_in_gallery`` is set;
* :class:`dynametric.engine.dyml.DyMLProtocol`: the DyML test protocols (per-scale query -> gallery, or all-in-one
  leave-one-out).

The same objects serve training (validation in :class:`~dynametric.engine.module.MetricLearningModule`, the test
in :func:`dynametric.engine.run.run_training` through :class:`ProtocolTest`), ``dynametric evaluate --checkpoint``
(:func:`evaluate_checkpoint`) and the DyML runs.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dynametric.data.protocol import dataset_fields

if TYPE_CHECKING:
    from dynametric.config import Config

__all__ = [
    "CheckpointEvaluation",
    "EmbeddedSet",
    "EvaluationProtocol",
    "LeaveOneOut",
    "ProtocolTest",
    "QueryGallery",
    "evaluate_checkpoint",
    "protocol_from_config",
]

Evaluate = Callable[..., Any]
""":func:`dynametric.metrics.evaluate_embeddings` with the caller's options bound (e.g. a ``functools.partial``)."""
Load = Callable[[str], Any]
Embed = Callable[[Any], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class EmbeddedSet:
    """One embedded split: its dataset (``None`` when only embeddings are at hand), ``emb [N, D]``,
    ``labels [N, S]``."""

    dataset: Any
    emb: torch.Tensor
    labels: torch.Tensor


def _default_evaluate() -> Evaluate:
    from dynametric.metrics import evaluate_embeddings

    return evaluate_embeddings


def dataset_scale_names(dataset: Any) -> list[str] | None:
    """A dataset's scale names, or ``None`` (the metrics' defaults) when it has none."""
    return list(dataset_fields(dataset).scale_names or []) or None


def with_protocol_info(result: Any, info: dict[str, Any]) -> Any:
    """``result["protocol"] = info``; ``result`` may be ``(result, per_query)`` (``per_query=True``)."""
    (result[0] if isinstance(result, tuple) else result)["protocol"] = info
    return result


class EvaluationProtocol(ABC):
    """How a model is evaluated: the splits to embed and how their embeddings become metrics."""

    @property
    @abstractmethod
    def name(self) -> str:
        """The protocol's name (``leave_one_out``, ``query_gallery``, ``dyml-<variant>``)."""

    @abstractmethod
    def required_splits(self) -> list[str]:
        """The dataset splits to embed, in the order they are embedded."""

    @abstractmethod
    def evaluate(self, sets: Mapping[str, EmbeddedSet], evaluate: Evaluate | None = None) -> Any:
        """Results ``{scale: {...}, ..., "mean": {...}}`` (plus ``"protocol"`` where the protocol describes itself)
        from the embedded splits; ``evaluate`` defaults to :func:`dynametric.metrics.evaluate_embeddings`."""

    def header(self) -> dict[str, Any] | None:
        """What a run records as its test protocol (``run_info.json``), or ``None``."""
        return None

    def view_split(self) -> str | None:
        """The split a run's report shows as its retrieval view, or ``None`` (the run's own choice)."""
        return None

    def embed_splits(self, load: Load, embed: Embed) -> dict[str, EmbeddedSet]:
        """Load and embed every required split (``load(split)``, ``embed(dataset)``), in order."""
        sets: dict[str, EmbeddedSet] = {}
        for split in self.required_splits():
            ds = load(split)
            emb, labels = embed(ds)
            sets[split] = EmbeddedSet(ds, emb, labels)
        return sets

    def run(self, load: Load, embed: Embed, evaluate: Evaluate | None = None) -> Any:
        """:meth:`embed_splits`, then :meth:`evaluate`."""
        return self.evaluate(self.embed_splits(load, embed), evaluate)


@dataclass(frozen=True)
class LeaveOneOut(EvaluationProtocol):
    """Every item of ``split`` queries all the others (excluded by index). Scale names: ``scale_names``, else the
    dataset's, else the metrics' defaults."""

    split: str = "test"
    scale_names: Sequence[str] | None = None

    @property
    def name(self) -> str:
        return "leave_one_out"

    def required_splits(self) -> list[str]:
        return [self.split]

    def evaluate(self, sets: Mapping[str, EmbeddedSet], evaluate: Evaluate | None = None) -> Any:
        s = sets[self.split]
        names = list(self.scale_names) if self.scale_names is not None else dataset_scale_names(s.dataset)
        return (evaluate or _default_evaluate())(s.emb, s.labels, scale_names=names)

    def evaluate_embeddings(self, emb: torch.Tensor, labels: torch.Tensor, evaluate: Evaluate | None = None) -> Any:
        """:meth:`evaluate` of embeddings without a dataset (e.g. gathered by the training module)."""
        return self.evaluate({self.split: EmbeddedSet(None, emb, labels)}, evaluate)


@dataclass(frozen=True)
class QueryGallery(EvaluationProtocol):
    """The queries of ``query_split`` rank ``gallery_split``; with ``query_in_gallery`` a gallery item with the
    query's file name (its own copy) is excluded. Scale names: the query dataset's. The results carry
    ``"protocol": {name, query_split, gallery_split, queries, gallery, query_in_gallery}``."""

    query_split: str = "query"
    gallery_split: str = "gallery"
    query_in_gallery: bool = False

    @property
    def name(self) -> str:
        return "query_gallery"

    def required_splits(self) -> list[str]:
        return [self.query_split, self.gallery_split]

    def evaluate(self, sets: Mapping[str, EmbeddedSet], evaluate: Evaluate | None = None) -> Any:
        from dynametric.engine.dyml import image_identities

        q, g = sets[self.query_split], sets[self.gallery_split]
        ids = (image_identities(q.dataset), image_identities(g.dataset)) if self.query_in_gallery else (None, None)
        res = (evaluate or _default_evaluate())(q.emb, q.labels, g.emb, g.labels,
                                                 scale_names=dataset_scale_names(q.dataset), query_ids=ids[0],
                                                 gallery_ids=ids[1])
        return with_protocol_info(res, {"name": self.name, "query_split": self.query_split,
                                        "gallery_split": self.gallery_split, "queries": len(q.emb),
                                        "gallery": len(g.emb), "query_in_gallery": bool(self.query_in_gallery)})


def protocol_from_config(cfg: Config, split: str | None = None,
                         scale_names: Sequence[str] | None = None) -> EvaluationProtocol:
    """The test protocol of a config: leave-one-out on ``split`` when one is given; else the DyML protocol of a
    DyML config (``method.name: dyml``), query -> gallery for ``eval.protocol: query_gallery``, leave-one-out on
    ``data.test_split`` otherwise. ``scale_names``: the run's, for the leave-one-out protocols (default: the
    dataset's); query -> gallery takes the query split's."""
    if split is not None:
        return LeaveOneOut(split, scale_names)
    from dynametric.engine.dyml import protocol_from_config as dyml_protocol

    dyml = dyml_protocol(cfg)  # the method wiring: a method's own test protocol
    if dyml is not None:
        return dyml.bind(test_split=cfg.data.test_split, scale_names=scale_names)
    if cfg.eval.protocol == "query_gallery":
        return QueryGallery(cfg.eval.query_split, cfg.eval.gallery_split, bool(cfg.eval.query_in_gallery))
    return LeaveOneOut(cfg.data.test_split, scale_names)


@dataclass
class ProtocolTest:
    """A protocol run inside ``dynametric train`` (test time), callable as ``test(ckpt_path) -> results``.

    ``embed_with(dataset, ckpt_path)`` embeds a dataset with the engine (loading ``ckpt_path`` first when given,
    sharded under DDP) and returns ``(emb, labels)``; ``load(split)`` loads a split with the evaluation transform
    (each split loaded once); ``evaluate``: the metrics with the run's options. After each call, :attr:`view`
    holds ``(emb, labels, dataset)`` of the protocol's :meth:`~EvaluationProtocol.view_split` for the report's
    retrieval views (``None`` when the protocol has none).
    """

    protocol: EvaluationProtocol
    embed_with: Callable[[Any, str | None], tuple[torch.Tensor, torch.Tensor]]
    load: Load
    evaluate: Evaluate | None = None
    view: tuple[torch.Tensor, torch.Tensor, Any] | None = None
    _cache: dict[str, Any] = field(default_factory=dict)

    def _load(self, split: str) -> Any:
        if split not in self._cache:
            self._cache[split] = self.load(split)
        return self._cache[split]

    def __call__(self, ckpt_path: str | None = None) -> Any:
        pending = [ckpt_path]  # the checkpoint is loaded once, before the first embedding
        view_split = self.protocol.view_split()

        def embed(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
            emb, lab = self.embed_with(ds, pending[0])
            pending[0] = None
            if view_split is not None and ds is self._cache.get(view_split):
                self.view = (emb, lab, ds)
            return emb, lab

        return self.protocol.run(self._load, embed, self.evaluate)


@dataclass
class CheckpointEvaluation:
    """What :func:`evaluate_checkpoint` returns: the results, the protocol, the embedded splits by name and a
    one-line description (checkpoint, dataset format, splits)."""

    result: Any
    protocol: EvaluationProtocol
    sets: dict[str, EmbeddedSet]
    description: str


def evaluate_checkpoint(checkpoint: str | os.PathLike[str], config: Any = None, *, split: str | None = None,
                        overrides: Sequence[str] = (), progress: bool = False, options: Any = None,
                        evaluate: Evaluate | None = None,
                        check: Callable[[EvaluationProtocol], None] | None = None) -> CheckpointEvaluation:
    """Evaluate a trained checkpoint with its config's test protocol (:func:`protocol_from_config`; ``split``:
    leave-one-out on that split instead), as ``dynametric evaluate --checkpoint`` does.

    ``config``: the run config path (``None``: ``config.yaml`` beside the checkpoint); ``options``:
    :class:`dynametric.engine.inference.InferenceOptions` (default: the config's evaluation loader on the ``auto``
    device); ``evaluate``: the metrics with the caller's options bound; ``check(protocol)``: the caller's checks,
    run before anything is loaded or embedded."""
    from dynametric.config import load_config
    from dynametric.engine.builders import load_split
    from dynametric.engine.inference import checkpoint_options, config_beside, embed_dataset, load_trained
    from dynametric.errors import InputError

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise InputError("checkpoint file not found", file=checkpoint)
    cfg = load_config(config_beside(checkpoint, config), overrides)
    protocol = protocol_from_config(cfg, split)
    if check is not None:
        check(protocol)
    trained = load_trained(checkpoint, config, cfg=cfg)
    opts = checkpoint_options(cfg, options)
    if progress:
        opts.progress = True
    run = opts.resolve()

    def embed(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        return embed_dataset(trained.model, ds, head=trained.head, options=run)

    sets = protocol.embed_splits(lambda name: load_split(cfg, name, train=False), embed)
    splits = " -> ".join(protocol.required_splits()) if isinstance(protocol, QueryGallery) else \
        f"split {protocol.required_splits()[0]!r}" if isinstance(protocol, LeaveOneOut) else protocol.name
    return CheckpointEvaluation(protocol.evaluate(sets, evaluate), protocol, sets,
                                f"{trained.checkpoint}: {cfg.data.format} {splits}")
