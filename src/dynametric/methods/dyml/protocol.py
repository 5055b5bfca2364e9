"""The DyML test protocols (Sun et al., "Dynamic Metric Learning", CVPR 2021).

* **Per-scale query -> gallery** (DyML-Vehicle, DyML-Animal): for every scale ``s`` the queries of
  ``bmk_<s>/query.csv`` rank ``bmk_<s>/gallery.csv``; relevant = same label at ``s``; every scale has its own
  image sets (splits ``query_<s>`` / ``gallery_<s>`` of :mod:`dynametric.data.dyml`).
* **All-in-one leave-one-out** (DyML-Product, ``mini-bmk_all_in_one``): every image queries all the others,
  relevance judged per label column (fine, middle, coarse); the query is excluded **by identity** (its index).

Metrics: ASI (cut-off ``N = R_q`` by default), mAP over the full ranking, R@1/10/20 (hit rates), per scale and
their plain mean over the scales (:func:`dynametric.metrics.evaluate_embeddings`).

Whether a query image also sits in its gallery was never stated by the authors, so the option
``query_in_gallery`` has **no default**:

* ``disjoint``: nothing is excluded (query and gallery are different images);
* ``contained``: queries are themselves in the gallery, the same item being the same file (resolved path,
  :func:`~dynametric.engine.protocols.image_identities`; never the file name alone, and a copy in another folder is
  another file); that item, and only that item, is excluded from the query's ranking, never "whatever ranks first";
  no query in the gallery at all is an error (use ``detect`` for copies);
* ``detect``: the bytes of every image are hashed (SHA-256 of the file; of the pixel array for in-memory datasets);
  gallery items byte-identical to the query are excluded, exactly those, and counted.

The mode, the number of queries that had an item excluded and the protocol tag (``paper`` | ``released-files``;
results of the two are never mixed) go into every result. In leave-one-out the query itself is always excluded by
index; ``detect`` additionally excludes other byte-identical copies of the query.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import numbers
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynametric.data.protocol import LabeledDataset
from dynametric.data.splits import dataset_identities
from dynametric.engine.protocols import (  # image_identities: its former home
    EmbeddedSet,
    Evaluate,
    MethodTestProtocol,
    ProtocolTest,
    image_identities,
)
from dynametric.errors import ConfigError, InputError
from dynametric.labels import as_label_matrix

__all__ = [
    "DYML_METRICS",
    "PROTOCOL_TAGS",
    "QUERY_IN_GALLERY_MODES",
    "DyMLProtocol",
    "evaluate_all_in_one",
    "evaluate_query_gallery",
    "exclusion_ids",
    "image_digests",
    "image_identities",
    "run_protocol",
]

QUERY_IN_GALLERY_MODES: tuple[str, ...] = ("disjoint", "contained", "detect")
PROTOCOL_TAGS: tuple[str, ...] = ("paper", "released-files")
VARIANTS: tuple[str, ...] = ("vehicle", "animal", "product", "all_in_one")
DYML_METRICS: tuple[str, ...] = ("asi", "map", "recall@1", "recall@10", "recall@20")
"""The columns of the DyML paper's tables, in their order."""


@dataclass(frozen=True)
class DyMLProtocol(MethodTestProtocol):
    """Options of the DyML test protocol (``method: {name: dyml, kwargs: {...}}`` in a config); the ``dyml``
    method's own test protocol, a :class:`~dynametric.engine.protocols.MethodTestProtocol`.

    Args:
        variant: ``vehicle`` / ``animal`` (per-scale query -> gallery), ``product`` (all-in-one leave-one-out on
            split ``test``) or ``all_in_one`` (leave-one-out on the config's ``data.test_split``, e.g. synthetic).
        query_in_gallery: ``disjoint`` | ``contained`` | ``detect``; required (the paper does not say which).
        protocol: result tag, ``released-files`` (default: the files as published) or ``paper``.
        asi_cutoff: ``"R_q"`` or a positive integer ``N``.
        empty_queries: ``exclude`` (default, counted) or ``count_as_zero`` for queries without a relevant item.
        k_values: recall cut-offs (1, 10, 20).
        distance: ``cosine`` (L2-normalised embeddings) or ``euclidean``.
        scales: scale names of the per-scale protocol, finest first.
        test_split: the split of the ``all_in_one`` variant (set from ``data.test_split`` by :meth:`bind`).
        scale_names: scale names of the leave-one-out variants (default: the dataset's).
    """

    variant: str
    query_in_gallery: str
    protocol: str = "released-files"
    asi_cutoff: str | int = "R_q"
    empty_queries: str = "exclude"
    k_values: tuple[int, ...] = (1, 10, 20)
    distance: str = "cosine"
    scales: tuple[str, ...] = ("fine", "middle", "coarse")
    test_split: str = "test"
    scale_names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"unknown DyML variant {self.variant!r}; expected one of {list(VARIANTS)}",
                              key="variant")
        if self.query_in_gallery not in QUERY_IN_GALLERY_MODES:
            raise ConfigError(f"query_in_gallery must be one of {list(QUERY_IN_GALLERY_MODES)} (there is no default: "
                              f"the DyML authors never said whether queries are in the gallery), got "
                              f"{self.query_in_gallery!r}", key="query_in_gallery")
        if self.protocol not in PROTOCOL_TAGS:
            raise ConfigError(f"protocol tag must be one of {list(PROTOCOL_TAGS)}, got {self.protocol!r}",
                              key="protocol")
        if self.empty_queries not in ("exclude", "count_as_zero"):
            raise ConfigError(f"empty_queries must be 'exclude' or 'count_as_zero', got {self.empty_queries!r}",
                              key="empty_queries")
        if not self.k_values or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.k_values):
            raise ConfigError(f"k_values must be positive integers, got {list(self.k_values)}", key="k_values")
        if self.distance not in ("cosine", "euclidean"):
            raise ConfigError(f"distance must be 'cosine' or 'euclidean', got {self.distance!r}", key="distance")
        if isinstance(self.asi_cutoff, str) and self.asi_cutoff != "R_q" or (
                isinstance(self.asi_cutoff, int) and (isinstance(self.asi_cutoff, bool) or self.asi_cutoff < 1)):
            raise ConfigError(f"asi_cutoff must be 'R_q' or a positive integer, got {self.asi_cutoff!r}",
                              key="asi_cutoff")

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any], key: str = "method.kwargs") -> DyMLProtocol:
        """Build from a config mapping; errors name ``<key>.<option>``."""
        kwargs = dict(kwargs)
        allowed = ("variant", "query_in_gallery", "protocol", "asi_cutoff", "empty_queries", "k_values", "distance",
                   "scales")
        for name in kwargs:
            if name not in allowed:
                raise ConfigError(f"unknown DyML protocol option {name!r}; expected one of {list(allowed)}",
                                  key=f"{key}.{name}")
        for required in ("variant", "query_in_gallery"):
            if required not in kwargs:
                extra = (f" ({' | '.join(QUERY_IN_GALLERY_MODES)}; no default: state whether query images are also "
                         "in the gallery)") if required == "query_in_gallery" else f" ({' | '.join(VARIANTS)})"
                raise ConfigError(f"the DyML protocol needs {required!r}{extra}", key=f"{key}.{required}")
        if "scales" in kwargs and kwargs["variant"] not in ("vehicle", "animal"):
            raise ConfigError(f"scales names the per-scale query/gallery splits of the vehicle and animal variants; "
                              f"the {kwargs['variant']!r} variant tests all in one and takes its scale names from "
                              "the data: remove it", key=f"{key}.scales")
        for name, what in (("k_values", "positive integers"), ("scales", "scale names")):
            if name in kwargs:
                value = kwargs[name]
                if not isinstance(value, (list, tuple)):  # a string or a number would be split or fail in tuple()
                    raise ConfigError(f"expected a list of {what}, got {value!r} ({type(value).__name__})",
                                      key=f"{key}.{name}")
                kwargs[name] = tuple(value)
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            raise ConfigError(exc.message, key=f"{key}.{exc.key}") from None

    @property
    def metrics(self) -> list[str]:
        return ["recall@K", "map", "asi"]

    @property
    def name(self) -> str:
        return f"dyml-{self.variant}"

    def bind(self, *, test_split: str | None = None, scale_names: Sequence[str] | None = None) -> DyMLProtocol:
        """A copy with the run's test split and (leave-one-out variants) scale names."""
        return replace(self, test_split=self.test_split if test_split is None else test_split,
                       scale_names=self.scale_names if scale_names is None else tuple(scale_names))

    def required_splits(self) -> list[str]:
        return [s for _, q, g in self.splits(self.test_split) for s in (q, g) if s is not None]

    def view_split(self) -> str | None:
        """The fine gallery (per-scale variants) or the all-in-one set."""
        _, q, g = self.splits(self.test_split)[0]
        return g or q

    def evaluate(self, sets: Mapping[str, EmbeddedSet], evaluate: Evaluate | None = None) -> dict[str, Any]:
        """The whole protocol from the embedded splits; see :func:`run_protocol`."""
        return _evaluate_protocol(self, sets, evaluate)

    @property
    def is_per_scale(self) -> bool:
        return self.variant in ("vehicle", "animal")

    def splits(self, test_split: str = "test") -> list[tuple[str, str, str | None]]:
        """``(scale, query split, gallery split or None)`` for every evaluation of the protocol."""
        if self.is_per_scale:
            return [(s, f"query_{s}", f"gallery_{s}") for s in self.scales]
        return [("all", "test" if self.variant == "product" else test_split, None)]

    def header(self) -> dict[str, Any]:
        return {"name": self.name, "tag": self.protocol, "query_in_gallery": self.query_in_gallery,
                "asi_cutoff": self.asi_cutoff, "empty_queries": self.empty_queries,
                "layout": "per_scale_query_gallery" if self.is_per_scale else "all_in_one_leave_one_out"}

    def split_keys(self, cfg: Any) -> dict[str, str]:
        """The per-scale splits are chosen by ``method.kwargs.scales`` where it is given, else by
        ``method.kwargs.variant``; the all-in-one split by ``data.test_split``."""
        if not self.is_per_scale:
            return super().split_keys(cfg)
        key = "method.kwargs.scales" if "scales" in cfg.method.kwargs else "method.kwargs.variant"
        return {split: key for split in self.required_splits()}

    @property
    def report_view_uses_validation(self) -> bool:
        """Per-scale (Vehicle / Animal) test sets carry one label each: the report's multi-scale retrieval views use
        the validation images (all three labels)."""
        return self.is_per_scale

    @property
    def report_view_note(self) -> str:
        return "validation (the per-scale test sets carry one label each)"

    def missing_splits_error(self, cfg: Any, missing: Sequence[str], splits: Sequence[str],
                             offered: str) -> ConfigError | None:
        """A scale name the data lacks (``method.kwargs.scales``), a release under ``data.root`` without the
        split's file (``data.root``), a wrong ``data.test_split``, or a variant that does not fit the data format
        (``method.kwargs.variant``)."""
        from dynametric.data.registry import dyml_variant

        fmt = cfg.data.format
        fits = dyml_variant(fmt) or "all_in_one"
        if self.is_per_scale and "scales" in cfg.method.kwargs:  # the scale names chose the splits
            bad = [sc for sc in self.scales if f"query_{sc}" in missing or f"gallery_{sc}" in missing]
            have = [x.removeprefix("query_") for x in splits if x.startswith("query_")
                    and f"gallery_{x.removeprefix('query_')}" in splits]
            return ConfigError(f"scale {bad[0]!r} has no query_{bad[0]} / gallery_{bad[0]} split; expected scale "
                               f"names of the data: {', '.join(have) or 'none'}" + _suggest(bad[0], have),
                               key="method.kwargs.scales")
        tests_on = (f"data.test_split {missing[0]!r}" if self.variant == "all_in_one"
                    else f"the split(s) {', '.join(missing)}")
        absent = _missing_release_files(cfg, missing) if fits == self.variant else []
        if absent:  # the variant fits the format, whose release under data.root lacks the split's file
            split, where = absent[0]
            more = f" (nor are {len(absent) - 1} more of the release's test files)" if len(absent) > 1 else ""
            return ConfigError(f"the DyML {self.variant!r} protocol tests on split {split!r}, but its file {where} "
                               f"is not found{more}: data.root holds no complete {fmt} release"
                               + _other_release(cfg, fmt), key="data.root")
        if fits == self.variant:  # the variant fits the data: the split is wrong
            return ConfigError(f"the DyML {self.variant!r} protocol tests on {tests_on}, but {offered}"
                               + _suggest(missing[0], splits), key="data.test_split")
        return ConfigError(f"the DyML {self.variant!r} protocol tests on {tests_on}, but {offered}; with {fmt} "
                           f"data use method.kwargs.variant: {fits}", key="method.kwargs.variant")


def _suggest(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _missing_release_files(cfg: Any, splits: Sequence[str]) -> list[tuple[str, Path]]:
    """The test splits among ``splits`` that the format lists only when their file is there (DyML's
    ``bmk_<level>/{query,gallery}.csv``, ``mini-bmk_all_in_one/label.csv``) and whose file is not under
    ``data.root``: ``(split, the missing file)`` (:meth:`~dynametric.data.dyml.DyMLFormat.missing_splits`)."""
    from dynametric.data.registry import FORMATS

    probe = getattr(FORMATS.get(cfg.data.format), "missing_splits", None)
    if probe is None:
        return []
    try:
        return [(split, Path(where)) for split, where in probe(cfg.data.root) if split in splits]
    except InputError:
        return []


def _other_release(cfg: Any, fmt: str) -> str:
    """``; it holds the test files of dyml-product: is data.format right?`` when ``data.root`` holds every test
    file of another DyML release (Vehicle and Animal share one layout), else ``""``."""
    from dynametric.data.registry import FORMATS

    others = []
    for name, other in FORMATS.items():
        probe = getattr(other, "missing_splits", None)
        if name == fmt or probe is None:
            continue
        try:
            if not probe(cfg.data.root):
                others.append(name)
        except InputError:
            continue
    return f"; it holds the test files of {' / '.join(others)}: is data.format right?" if others else ""


# ------------------------------------------------------------------------------------------------ identities
def image_digests(dataset: LabeledDataset) -> list[str]:
    """SHA-256 of every image's bytes: the file for datasets with ``paths``, the pixel array for in-memory ones
    with ``images`` (``uint8[N, ...]``, e.g. :class:`~dynametric.data.SyntheticHierarchy`)."""
    paths = dataset.paths
    if paths is not None:
        out = []
        for p in paths:
            try:
                with open(p, "rb") as fh:
                    out.append(hashlib.sha256(fh.read()).hexdigest())  # file_digest needs Python 3.11
            except OSError as exc:
                raise InputError(f"cannot read the image to hash it for query_in_gallery=detect ({exc})",
                                 file=p) from None
        return out
    images = getattr(dataset, "images", None)
    if images is not None:
        arr = np.ascontiguousarray(np.asarray(images))
        return [hashlib.sha256(arr[i].tobytes()).hexdigest() for i in range(arr.shape[0])]
    raise ConfigError(f"query_in_gallery=detect needs image bytes, but {type(dataset).__name__} has neither "
                      "'paths' nor 'images'", key="query_in_gallery")


def exclusion_ids(mode: str, query_keys: Sequence[Hashable] | None, gallery_keys: Sequence[Hashable] | None
                  ) -> tuple[list[Hashable] | None, list[Hashable] | None, dict[str, int]]:
    """Ids for :func:`~dynametric.metrics.evaluate_embeddings` and the exclusion counts of a query -> gallery run.

    ``disjoint``: no ids, nothing excluded. ``contained`` (keys = identities) and ``detect`` (keys = byte digests):
    a gallery item is excluded from a query's ranking iff its key equals the query's. Counts:
    ``excluded_queries_with_match`` (queries that lost at least one gallery item), ``excluded_gallery_items``
    (query-gallery pairs removed) and, for ``contained``, ``queries_without_gallery_copy``.
    """
    if mode not in QUERY_IN_GALLERY_MODES:
        raise ConfigError(f"query_in_gallery must be one of {list(QUERY_IN_GALLERY_MODES)}, got {mode!r}",
                          key="query_in_gallery")
    if mode == "disjoint":
        return None, None, {"excluded_queries_with_match": 0, "excluded_gallery_items": 0}
    if query_keys is None or gallery_keys is None:
        raise InputError(f"query_in_gallery={mode} needs query and gallery keys", key="query_in_gallery")
    counts: dict[Hashable, int] = {}
    for k in gallery_keys:
        counts[k] = counts.get(k, 0) + 1
    per_query = np.fromiter((counts.get(k, 0) for k in query_keys), dtype=np.int64, count=len(query_keys))
    stats = {"excluded_queries_with_match": int((per_query > 0).sum()),
             "excluded_gallery_items": int(per_query.sum())}
    if mode == "contained":
        stats["queries_without_gallery_copy"] = int((per_query == 0).sum())
        if len(query_keys) and not stats["excluded_queries_with_match"]:
            raise ConfigError(f"query_in_gallery=contained, but none of the {len(query_keys)} queries is in the "
                              "gallery (the same item: the same resolved file path; a copy in another folder, as "
                              "in the released bmk_<scale>/query and gallery folders, is another file): use detect "
                              "to find byte-identical copies, or disjoint", key="method.kwargs.query_in_gallery")
    return list(query_keys), list(gallery_keys), stats


# ------------------------------------------------------------------------------------------------ evaluation
def _metric_kwargs(protocol: DyMLProtocol) -> dict[str, Any]:
    return {"metrics": protocol.metrics, "k_values": tuple(protocol.k_values), "distance": protocol.distance,
            "empty_queries": protocol.empty_queries, "asi_cutoff": protocol.asi_cutoff}


def _column(labels: Any, name: str) -> torch.Tensor:
    lab = as_label_matrix(labels, name=name)
    if lab.shape[1] != 1:
        raise InputError(f"per-scale query/gallery labels must have one column, got shape {tuple(lab.shape)}",
                         key=name)
    return lab


def evaluate_query_gallery(query_emb: torch.Tensor, query_labels: Any, gallery_emb: torch.Tensor,
                           gallery_labels: Any, protocol: DyMLProtocol, *, scale: str,
                           query_keys: Sequence[Hashable] | None = None,
                           gallery_keys: Sequence[Hashable] | None = None,
                           evaluate: Evaluate | None = None) -> dict[str, Any]:
    """One scale of the per-scale protocol: ``{metric: value, num_queries, excluded_queries, gallery_size,
    query_in_gallery, excluded_queries_with_match, excluded_gallery_items, ...}``.

    ``query_keys``/``gallery_keys``: identities (``contained``) or byte digests (``detect``) of the images;
    ``evaluate``: :func:`~dynametric.metrics.evaluate_embeddings` with the caller's options bound (the protocol's
    metric options take precedence).
    """
    from dynametric.metrics import evaluate_embeddings

    q_ids, g_ids, stats = exclusion_ids(protocol.query_in_gallery, query_keys, gallery_keys)
    run: Evaluate = evaluate or evaluate_embeddings  # the results dict (no return_ranks)
    res = run(query_emb, _column(query_labels, "query_labels"), gallery_emb,
                              _column(gallery_labels, "gallery_labels"), scale_names=[scale], query_ids=q_ids,
                              gallery_ids=g_ids, **_metric_kwargs(protocol))
    out: dict[str, Any] = dict(res[scale])
    out.update({"gallery_size": int(gallery_emb.shape[0]), "query_in_gallery": protocol.query_in_gallery, **stats})
    return out


def evaluate_all_in_one(emb: torch.Tensor, labels: Any, protocol: DyMLProtocol, *,
                        scale_names: Sequence[str] | None = None,
                        digests: Sequence[str] | None = None, evaluate: Evaluate | None = None) -> dict[str, Any]:
    """All-in-one leave-one-out over every label column: ``{scale: {...}, "mean": {...}}``.

    The query is excluded by index; with ``query_in_gallery=detect`` (``digests`` given) every other item
    byte-identical to the query is excluded too, and the number of queries concerned is reported. ``evaluate``: as
    in :func:`evaluate_query_gallery`.
    """
    from dynametric.metrics import evaluate_embeddings

    lab = as_label_matrix(labels, name="labels")
    names = list(scale_names) if scale_names is not None else list(protocol.scales[: lab.shape[1]])
    if len(names) != lab.shape[1]:
        from dynametric.metrics import default_scale_names

        names = list(default_scale_names(lab.shape[1]))
    ids = None
    stats = {"excluded_queries_with_match": 0, "excluded_gallery_items": 0}
    if protocol.query_in_gallery == "detect":
        if digests is None:
            raise InputError("query_in_gallery=detect needs the image digests", key="digests")
        counts: dict[str, int] = {}
        for d in digests:
            counts[d] = counts.get(d, 0) + 1
        dup = np.fromiter((counts[d] - 1 for d in digests), dtype=np.int64, count=len(digests))
        stats = {"excluded_queries_with_match": int((dup > 0).sum()), "excluded_gallery_items": int(dup.sum())}
        ids = list(digests)
    run: Evaluate = evaluate or evaluate_embeddings  # the results dict (no return_ranks)
    res = run(emb, lab, scale_names=names, query_ids=ids, **_metric_kwargs(protocol))
    out: dict[str, Any] = {}
    for name in names:
        out[name] = dict(res[name]) | {"gallery_size": int(emb.shape[0]) - 1,
                                       "query_in_gallery": protocol.query_in_gallery,
                                       "self_excluded_by": "identity (index)", **stats}
    out["mean"] = dict(res["mean"])
    return out


_PROTOCOL_COUNT_KEYS = ("gallery_size", "excluded_queries_with_match", "excluded_gallery_items")
"""The counts the protocol adds to each scale's entry (the evaluation's own: ``RESULT_COUNT_KEYS``)."""


def _mean_over_scales(per_scale: Mapping[str, Mapping[str, Any]], names: Sequence[str]) -> dict[str, float]:
    """The plain mean over the per-scale query -> gallery results of each metric: every number of the first scale's
    entry (an int or a numpy scalar too: an ``evaluate`` of the caller's may give them) but the counts of the
    evaluation and of the protocol."""
    from dynametric.metrics.evaluate import RESULT_COUNT_KEYS

    counts = set(RESULT_COUNT_KEYS) | set(_PROTOCOL_COUNT_KEYS)
    keys = [k for k, v in per_scale[names[0]].items()
            if isinstance(v, numbers.Real) and not isinstance(v, bool) and k not in counts]
    return {k: math.fsum(float(per_scale[n][k]) for n in names) / len(names) for k in keys}


def run_protocol(protocol: DyMLProtocol, embed: Callable[[Any], tuple[torch.Tensor, torch.Tensor]],
                 load: Callable[[str], LabeledDataset], *, test_split: str = "test",
                 scale_names: Sequence[str] | None = None, evaluate: Evaluate | None = None) -> dict[str, Any]:
    """Run the whole protocol: ``load(split) -> dataset``, ``embed(dataset) -> (emb [N, D], labels [N, S])``.

    Returns ``{scale: {...}, ..., "mean": {...}, "protocol": {name, tag, query_in_gallery, sizes, excluded}}``;
    every scale dict also carries ``query_in_gallery`` and its exclusion counts. The same as
    ``protocol.bind(test_split=..., scale_names=...).run(load, embed, evaluate)``.
    """
    return protocol.bind(test_split=test_split, scale_names=scale_names).run(load, embed, evaluate)


def _evaluate_protocol(protocol: DyMLProtocol, sets: Mapping[str, EmbeddedSet],
                       evaluate: Evaluate | None) -> dict[str, Any]:
    header = protocol.header()
    sizes: dict[str, dict[str, int]] = {}
    excluded: dict[str, int] = {}
    out: dict[str, Any] = {}
    if protocol.is_per_scale:
        for scale, q_split, g_split in protocol.splits(protocol.test_split):
            assert g_split is not None
            q, g = sets[q_split], sets[g_split]
            keys: tuple[Sequence[Hashable] | None, Sequence[Hashable] | None] = (None, None)
            if protocol.query_in_gallery == "contained":
                keys = (dataset_identities(q.dataset), dataset_identities(g.dataset))  # once per dataset
                if keys[0] is None or keys[1] is None:
                    raise ConfigError(f"query_in_gallery=contained needs files to tell a query's own gallery item, "
                                      f"but the items of {q_split!r} / {g_split!r} are not files (detect compares "
                                      "the pixels)", key="method.kwargs.query_in_gallery")
            elif protocol.query_in_gallery == "detect":
                keys = (image_digests(q.dataset), image_digests(g.dataset))
            out[scale] = evaluate_query_gallery(q.emb, q.labels, g.emb, g.labels, protocol, scale=scale,
                                                query_keys=keys[0], gallery_keys=keys[1], evaluate=evaluate)
            sizes[scale] = {"queries": int(q.emb.shape[0]), "gallery": int(g.emb.shape[0])}
            excluded[scale] = out[scale]["excluded_queries_with_match"]
        names = [s for s, _, _ in protocol.splits(protocol.test_split)]
        out["mean"] = _mean_over_scales(out, names)
    else:
        (_, split, _), = protocol.splits(protocol.test_split)
        ds, emb, lab = sets[split].dataset, sets[split].emb, sets[split].labels
        digests = image_digests(ds) if protocol.query_in_gallery == "detect" else None
        names_in = protocol.scale_names if protocol.scale_names is not None else ds.scale_names
        out = evaluate_all_in_one(emb, lab, protocol, scale_names=list(names_in) if names_in else None,
                                  digests=digests, evaluate=evaluate)
        names = [n for n in out if n != "mean"]
        sizes = {"all": {"images": int(emb.shape[0])}}
        excluded = {n: out[n]["excluded_queries_with_match"] for n in names}
    out["protocol"] = header | {"sizes": sizes, "excluded_identical_queries": excluded, "scales": names}
    return out


EngineTest = ProtocolTest
"""Former name of :class:`dynametric.engine.protocols.ProtocolTest` (the DyML test inside ``dynametric train``)."""
