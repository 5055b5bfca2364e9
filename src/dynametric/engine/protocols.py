"""Evaluation protocols: which sets are embedded and how their embeddings become metrics, as one interface.

A protocol names the dataset splits it needs (:meth:`EvaluationProtocol.splits`) and turns their embeddings into
results (:meth:`EvaluationProtocol.evaluate`); :meth:`EvaluationProtocol.run` loads and embeds the splits with the
caller's ``load(split) -> dataset`` and ``embed(dataset) -> (emb [N, D], labels [N, S])``. The metrics themselves
come from an ``evaluate`` callable with the signature of :func:`dynametric.metrics.evaluate_embeddings` and the
caller's options bound (device, metric names, k values, distance, memory budget); a protocol passes only what it
decides (the sets, their ids, the scale names, and for DyML its own metric options).

* :class:`LeaveOneOut`: every item of one split queries all the others (validation during training, the test split
  of CUB / CARS / SOP-style configs, ``evaluate --checkpoint --split``), the items of a query's own sequence
  excluded where the split carries ``sequence_ids``;
* :class:`QueryGallery`: fixed query and gallery splits (``eval.protocol: query_gallery``), a query's own item in
  the gallery (same resolved path and crop box, :func:`image_identities`) excluded when ``eval.query_in_gallery`` is
  set;
* :class:`MethodTestProtocol`: the interface of a method's own test protocol (``Method.test_protocol``), which the
  run binds to its test split and records; :class:`dynametric.methods.dyml.protocol.DyMLProtocol`, the DyML test
  protocols (per-scale query -> gallery, or all-in-one leave-one-out), implements it.

Where the query split carries ``category_ids`` (an OML CSV's ``category`` column), the leave-one-out and query ->
gallery results hold ``"by_category"`` too, open-metric-learning's report split by the query's category
(:func:`query_categories`; off with ``per_category=False``, ``eval.per_category: false``).

The same objects serve training (validation in :class:`~dynametric.engine.module.MetricLearningModule`, the test
in :func:`dynametric.pipeline.run_training` through :class:`ProtocolTest`), ``dynametric evaluate --checkpoint``
(:func:`dynametric.pipeline.evaluate_checkpoint`) and the DyML runs. Which protocol a config asks for (the method's
own, else the ``eval`` section's) is decided above the method plug-ins, by
:func:`dynametric.pipeline.protocol_from_config`; this module knows no config and no method.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from dynametric.data.protocol import dataset_fields, dataset_paths
from dynametric.data.splits import (
    _IDENTITIES,
    _NOT_KEPT,
    dataset_identities,
    image_identities,  # its former home: re-exported
)
from dynametric.errors import ConfigError, InputError

__all__ = [
    "CheckpointEvaluation",
    "EmbeddedSet",
    "EvaluationProtocol",
    "LeaveOneOut",
    "MethodTestProtocol",
    "ProtocolTest",
    "QueryGallery",
    "image_identities",
    "query_categories",
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


def _item_name(dataset: Any, index: int) -> str:
    """An item in a message: its file path where it has one, else ``item <index>``."""
    paths = dataset_paths(dataset)
    return repr(str(paths[index])) if paths is not None else f"item {index}"


def dataset_scale_names(dataset: Any) -> list[str] | None:
    """A dataset's scale names, or ``None`` (the metrics' defaults) when it has none."""
    return list(dataset_fields(dataset).scale_names or []) or None


def query_categories(dataset: Any, num_queries: int) -> list[Hashable] | None:
    """The category of each item of ``dataset`` (its ``category_ids``: OML's ``category`` column), or ``None`` when
    it carries none; the caller's evaluation then reports its retrieval metrics per query category as well
    (``evaluate_embeddings(query_categories=...)``, :mod:`dynametric.metrics.categories`)."""
    categories = getattr(dataset, "category_ids", None)
    if categories is None:
        return None
    if len(categories) != num_queries:
        raise InputError(f"{num_queries} queries but {len(categories)} category ids", key="category_ids")
    return list(categories)


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

    def run(self, load: Load, embed: Embed, evaluate: Evaluate | None = None,
            identities: dict[str, list[Hashable] | None] | None = None) -> Any:
        """:meth:`embed_splits`, then :meth:`evaluate`. Each dataset's item identities are computed once and kept
        with it (:func:`~dynametric.data.splits.dataset_identities`), so a caller that runs again computes none.

        ``identities`` (split -> :func:`image_identities` of the dataset ``load`` returns) is deprecated, accepted in
        this release only (a DeprecationWarning): its entries are taken as those datasets' identities, and the
        identities known for the other splits it loads are added to it (even where the check refuses the data)."""
        if identities is None:
            return self.evaluate(self.embed_splits(load, embed), evaluate)
        warnings.warn("EvaluationProtocol.run(identities=...) is deprecated and will be removed: each dataset's "
                      "item identities are computed once and kept with it (dynametric.data.splits."
                      "dataset_identities)", DeprecationWarning, stacklevel=2)
        given, loaded = identities, {}  # split -> the dataset load returned

        def load_given(split: str) -> Any:
            ds = loaded[split] = load(split)
            if split in given:
                _IDENTITIES.set(ds, given[split])
            return ds

        try:
            sets = self.embed_splits(load_given, embed)
        finally:
            for split, ds in loaded.items():
                known = _IDENTITIES.get(ds, _NOT_KEPT)
                if split not in given and known is not _NOT_KEPT:
                    given[split] = known
        return self.evaluate(sets, evaluate)


class MethodTestProtocol(EvaluationProtocol):
    """A method's own test protocol: what a method plug-in's ``test_protocol`` returns
    (:class:`dynametric.methods.base.Method`) instead of the ``eval`` section's. The run and
    :func:`dynametric.pipeline.protocol_from_config` use it through these hooks only, whatever the method:

    * :meth:`bind` gives the copy the run evaluates (the config's ``data.test_split``, the run's scale names);
    * :meth:`header` is what ``run_info.json`` records as the run's ``test_protocol``;
    * :meth:`split_keys` names the config key that chose each split it evaluates (what a run keeps training and
      validation away from, and what its errors name);
    * :meth:`missing_splits_error` is the protocol's own error when the data lacks some of its splits;
    * :attr:`report_view_uses_validation` / :attr:`report_view_note`: whether the run's report shows its retrieval
      views on the validation images instead of the test's view split, and what ``run_info.json`` says of it.

    ``cfg`` arguments are the run's :class:`dynametric.config.Config`, read only."""

    @abstractmethod
    def bind(self, *, test_split: str | None = None,
             scale_names: Sequence[str] | None = None) -> MethodTestProtocol:
        """A copy with the run's test split (``data.test_split``) and scale names (``None``: keep the current)."""

    @abstractmethod
    def header(self) -> dict[str, Any]:
        """What a run records as its test protocol (``run_info.json``'s ``test_protocol``)."""

    def split_keys(self, cfg: Any) -> dict[str, str]:
        """Each split of :meth:`required_splits` with the config key that chose it. Default: ``data.test_split``."""
        return {split: "data.test_split" for split in self.required_splits()}

    def missing_splits_error(self, cfg: Any, missing: Sequence[str], splits: Sequence[str],
                             offered: str) -> ConfigError | None:
        """The error for the splits of this protocol in ``missing`` that the data does not offer (``splits``, the
        data's; ``offered``: a phrase saying them, ``the <format> data has the splits ...``), naming the key to
        change; ``None``: the generic ``the test split ... is not in the data`` error. Default: ``None``."""
        return None

    @property
    def report_view_uses_validation(self) -> bool:
        """Whether the run's report shows its retrieval views on the validation images (embedded by the tested
        weights) instead of the test's :meth:`view_split`, when there is validation data. Default: ``False``."""
        return False

    @property
    def report_view_note(self) -> str:
        """``run_info.json``'s ``report_view_set`` when :attr:`report_view_uses_validation` applies."""
        return "validation"


@dataclass(frozen=True)
class LeaveOneOut(EvaluationProtocol):
    """Every item of ``split`` queries all the others (excluded by index). Scale names: ``scale_names``, else the
    dataset's, else the metrics' defaults. With ``sequence_ids`` on the dataset (OML's ``sequence`` column), a query
    never ranks an item of its own sequence either (:meth:`exclusion_ids`), and the results carry ``"protocol":
    {name, split, queries, same_sequence_excluded, excluded_pairs}``; without them there is no ``"protocol"`` entry.
    With ``category_ids`` on the dataset (OML's ``category`` column) and ``per_category``, the results carry
    ``"by_category"`` too (:func:`query_categories`)."""

    split: str = "test"
    scale_names: Sequence[str] | None = None
    per_category: bool = True

    @property
    def name(self) -> str:
        return "leave_one_out"

    def required_splits(self) -> list[str]:
        return [self.split]

    def exclusion_ids(self, dataset: Any) -> tuple[list[Hashable] | None, dict[str, Any] | None]:
        """``(query_ids, info)`` for :func:`~dynametric.metrics.evaluate_embeddings`: the dataset's ``sequence_ids``
        (every item of a query's sequence is excluded from its ranking, as the query itself is) and ``info``
        (``same_sequence_excluded``, ``excluded_pairs``: the ordered (query, item) pairs of one sequence excluded
        besides each query itself); ``(None, None)`` when the dataset carries no sequence ids."""
        seq = getattr(dataset, "sequence_ids", None)
        if seq is None:
            return None, None
        if len(seq) != len(dataset):
            raise InputError(f"split {self.split!r} has {len(dataset)} items but {len(seq)} sequence ids",
                             key="sequence_ids")
        pairs = sum(n * (n - 1) for n in Counter(seq).values())
        return list(seq), {"same_sequence_excluded": True, "excluded_pairs": pairs}

    def evaluate(self, sets: Mapping[str, EmbeddedSet], evaluate: Evaluate | None = None) -> Any:
        s = sets[self.split]
        names = list(self.scale_names) if self.scale_names is not None else dataset_scale_names(s.dataset)
        ids, info = self.exclusion_ids(s.dataset)
        kw: dict[str, Any] = {} if ids is None else {"query_ids": ids}
        categories = query_categories(s.dataset, len(s.emb)) if self.per_category else None
        if categories is not None:
            kw["query_categories"] = categories
        res = (evaluate or _default_evaluate())(s.emb, s.labels, scale_names=names, **kw)
        if info is None:
            return res
        return with_protocol_info(res, {"name": self.name, "split": self.split, "queries": len(s.emb), **info})

    def evaluate_embeddings(self, emb: torch.Tensor, labels: torch.Tensor, evaluate: Evaluate | None = None,
                            dataset: Any = None) -> Any:
        """:meth:`evaluate` of embeddings gathered without their dataset (e.g. by the training module); ``dataset``,
        when given, is the one they are the embeddings of, in its order (its sequence and category ids are used)."""
        return self.evaluate({self.split: EmbeddedSet(dataset, emb, labels)}, evaluate)


@dataclass(frozen=True)
class QueryGallery(EvaluationProtocol):
    """The queries of ``query_split`` rank ``gallery_split``; with ``query_in_gallery`` a query's own item in the
    gallery (the same :func:`image_identities`: resolved path and crop box) is excluded from its ranking; the flag
    must match the data (:meth:`exclusion_ids`), checked before anything is embedded. Scale names: the query
    dataset's. With ``sequence_ids`` on the datasets (OML's ``sequence`` column), a query never ranks a gallery item of
    its own sequence. The results carry ``"protocol": {name, query_split, gallery_split, queries, gallery,
    query_in_gallery, queries_in_gallery, same_sequence_excluded, excluded_pairs}`` (:meth:`exclusion_ids`). With
    ``category_ids`` on the query dataset (OML's ``category`` column) and ``per_category``, the results carry
    ``"by_category"``: the retrieval metrics per query category (:func:`query_categories`)."""

    query_split: str = "query"
    gallery_split: str = "gallery"
    query_in_gallery: bool = False
    per_category: bool = True

    @property
    def name(self) -> str:
        return "query_gallery"

    def required_splits(self) -> list[str]:
        return [self.query_split, self.gallery_split]

    def own_items(self, query: Any, gallery: Any
                  ) -> tuple[list[Hashable] | None, list[Hashable] | None, list[int] | None]:
        """``(query identities, gallery identities, queries that are gallery items)`` (:func:`image_identities`;
        one split as both query and gallery: its indices; ``None`` for items that are not files), checking the flag:
        it must state what the data is, else a ConfigError naming ``eval.query_in_gallery`` — ``false`` with queries
        that are also gallery items (each would find itself; the error counts and names them), ``true`` with no
        query in the gallery or with items that are not files. Items that are not files cannot be checked:
        ``false`` then assumes disjoint sets. Each dataset's identities are computed once
        (:func:`~dynametric.data.splits.dataset_identities`)."""
        if query is not None and query is gallery:  # one split queries itself: every item is in the gallery
            keys_q: list[Hashable] | None = list(range(len(query)))
            keys_g = keys_q
        else:
            keys_q, keys_g = dataset_identities(query), dataset_identities(gallery)
        if keys_q is None or keys_g is None:
            if self.query_in_gallery:
                split = self.query_split if keys_q is None else self.gallery_split
                raise ConfigError(f"is true, but the items of split {split!r} are not files, so nothing tells which "
                                  "query is in the gallery", key="eval.query_in_gallery")
            return keys_q, keys_g, None
        in_gallery = set(keys_g)
        inside = [i for i, k in enumerate(keys_q) if k in in_gallery]
        if not self.query_in_gallery and inside:  # each of them would retrieve itself at rank 1
            shown = ", ".join(_item_name(query, i) for i in inside[:3])
            raise ConfigError(f"is false, but {len(inside)} of the {len(keys_q)} queries of split "
                              f"{self.query_split!r} are also in the gallery split {self.gallery_split!r} (e.g. "
                              f"{shown}{', ...' if len(inside) > 3 else ''}), so each would retrieve itself; "
                              "expected true (each query's own item excluded, as open-metric-learning does)",
                              key="eval.query_in_gallery")
        if self.query_in_gallery and not inside:
            raise ConfigError(f"is true, but none of the {len(keys_q)} queries of split {self.query_split!r} is in "
                              f"the gallery split {self.gallery_split!r} (the same item: the same resolved file path "
                              "and crop box; a copy in another folder is another file); expected false",
                              key="eval.query_in_gallery")
        return keys_q, keys_g, inside

    def exclusion_ids(self, query: Any, gallery: Any
                      ) -> tuple[list[Hashable] | None, list[Hashable] | None, dict[str, Any]]:
        """``(query_ids, gallery_ids, info)`` for :func:`~dynametric.metrics.evaluate_embeddings` from the query and
        gallery datasets: a gallery item is excluded from a query's ranking iff their ids are equal. Excluded are the
        query's own item (``query_in_gallery``; :meth:`own_items` checks the flag) and, when the datasets carry
        ``sequence_ids`` (OML's ``sequence`` column), every gallery item of the query's sequence, as OML's
        ``calc_mask_to_ignore``. Both at once are one id per item, its sequence: the query's own item is of its
        sequence (checked). ``info``: ``queries_in_gallery`` (``None`` when unknown), ``same_sequence_excluded``,
        ``excluded_pairs`` (query-gallery pairs excluded)."""
        keys_q, keys_g, inside = self.own_items(query, gallery)
        seq_q, seq_g = getattr(query, "sequence_ids", None), getattr(gallery, "sequence_ids", None)
        if (seq_q is None) != (seq_g is None):
            with_ids, without = ((self.query_split, self.gallery_split) if seq_g is None
                                 else (self.gallery_split, self.query_split))
            raise InputError(f"split {with_ids!r} carries sequence ids but split {without!r} does not; a query -> "
                             "gallery evaluation needs them on both or neither", key="sequence_ids")
        ids: tuple[list[Hashable] | None, list[Hashable] | None] = (None, None)
        if seq_q is not None and seq_g is not None:
            if inside and keys_q is not None and keys_g is not None:
                sequences_of: dict[Hashable, set[Hashable]] = {}
                for key, seq in zip(keys_g, seq_g):
                    sequences_of.setdefault(key, set()).add(seq)
                for i in inside:
                    other = sequences_of[keys_q[i]] - {seq_q[i]}
                    if other:
                        raise InputError(f"{_item_name(query, i)} is a query of sequence {seq_q[i]!r} but a gallery "
                                         f"item of sequence {sorted(map(str, other))[0]!r} (the CSV's sequence "
                                         "column); one item belongs to one sequence", key="sequence")
            ids = (list(seq_q), list(seq_g))
        elif self.query_in_gallery:
            ids = (keys_q, keys_g)
        pairs = 0
        if ids[0] is not None and ids[1] is not None:
            in_gallery = Counter(ids[1])
            pairs = sum(in_gallery[k] for k in ids[0])
        info = {"queries_in_gallery": None if inside is None else len(inside),
                "same_sequence_excluded": seq_q is not None, "excluded_pairs": pairs}
        return ids[0], ids[1], info

    def embed_splits(self, load: Load, embed: Embed) -> dict[str, EmbeddedSet]:
        """Load both splits and check them (:meth:`exclusion_ids`) before anything is embedded, then embed them.
        Each split's item identities are computed once, for the check and :meth:`evaluate`'s exclusion
        (:func:`~dynametric.data.splits.dataset_identities`)."""
        datasets = {split: load(split) for split in self.required_splits()}
        self.exclusion_ids(datasets[self.query_split], datasets[self.gallery_split])  # raises on a bad flag
        sets = {}
        for split, ds in datasets.items():
            emb, labels = embed(ds)
            sets[split] = EmbeddedSet(ds, emb, labels)
        return sets

    def evaluate(self, sets: Mapping[str, EmbeddedSet], evaluate: Evaluate | None = None) -> Any:
        q, g = sets[self.query_split], sets[self.gallery_split]
        q_ids, g_ids, info = self.exclusion_ids(q.dataset, g.dataset)
        categories = query_categories(q.dataset, len(q.emb)) if self.per_category else None
        res = (evaluate or _default_evaluate())(q.emb, q.labels, g.emb, g.labels,
                                                 scale_names=dataset_scale_names(q.dataset), query_ids=q_ids,
                                                 gallery_ids=g_ids,
                                                 **({} if categories is None else {"query_categories": categories}))
        return with_protocol_info(res, {"name": self.name, "query_split": self.query_split,
                                        "gallery_split": self.gallery_split, "queries": len(q.emb),
                                        "gallery": len(g.emb), "query_in_gallery": bool(self.query_in_gallery),
                                        **info})


@dataclass
class ProtocolTest:
    """A protocol run inside ``dynametric train`` (test time), callable as ``test(ckpt_path) -> results``.

    ``embed_with(dataset, ckpt_path)`` embeds a dataset with the engine (loading ``ckpt_path`` first when given,
    sharded under DDP) and returns ``(emb, labels)``; ``load(split)`` loads a split with the evaluation transform
    (each split loaded once, so its item identities are computed once, whatever the number of calls:
    :func:`~dynametric.data.splits.dataset_identities`); ``evaluate``: the metrics with the run's options. After
    each call, :attr:`view`
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
    """What :func:`dynametric.pipeline.evaluate_checkpoint` returns: the results, the protocol, the embedded splits
    by name and a one-line description (checkpoint, dataset format, splits)."""

    result: Any
    protocol: EvaluationProtocol
    sets: dict[str, EmbeddedSet]
    description: str
    notes: list[str] = field(default_factory=list)
    """What the caller should be told: e.g. that the run's fp16 precision cannot run here and fp32 was used."""
