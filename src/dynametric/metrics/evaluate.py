"""``evaluate_embeddings``: every metric, every scale, one ranking pass (see ``docs/metrics.md``)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np
import torch

from dynametric import evaluation_defaults as _defaults
from dynametric.errors import ConfigError, InputError
from dynametric.labels import as_label_matrix, check_scale_names, default_scale_names
from dynametric.metrics.categories import category_codes, category_results
from dynametric.metrics.clustering import CLUSTER_METRIC_TABLE, check_kmeans_options, kmeans_assign
from dynametric.metrics.engine import (
    RankingProblem,
    ScaleAccumulator,
    prepare_for_clustering,
    prepare_for_ranking,
    run_ranking,
)
from dynametric.metrics.ranking import (
    METRIC_TABLE,
    RETRIEVAL_METRICS,
    MetricSpec,
    RankMetric,
    canonical_metric_name,
)
from dynametric.metrics.verification import fnmr_at_fmr, parse_fmr

RANK_METRICS = RETRIEVAL_METRICS
"""The retrieval metrics without a cut-off in their name, in table order (``r_precision``, ``map@r``, ``map``,
``asi``)."""
CLUSTER_METRICS = tuple(CLUSTER_METRIC_TABLE)
ALL_METRICS = (*(name[:-1] + "K" if m.at_k else name for name, m in METRIC_TABLE.items()), *CLUSTER_METRICS)
DEFAULT_METRICS = tuple(name[:-1] + "K" if m.at_k else name for name, m in METRIC_TABLE.items() if m.default)
"""Default metric set: every retrieval metric marked ``default`` in the table (clustering metrics run k-means and
must be asked for)."""


PML_METRIC_NAMES: dict[str, str] = {
    "precision_at_1": "pytorch-metric-learning's precision_at_1 is recall@1 here",
    "mean_average_precision_at_r": "pytorch-metric-learning's mean_average_precision_at_r is map@r here",
    "mean_average_precision": "pytorch-metric-learning's mean_average_precision is map here when its k covers every "
                              "reference (k=None); with an integer k it divides by R, which no metric here does "
                              "(map@<int> divides by the relevant items in the top k, as open-metric-learning's "
                              "map@k)",
    "mean_reciprocal_rank": "pytorch-metric-learning's mean_reciprocal_rank has no equivalent here (recall@K and map "
                            "are the nearest)",
    "ami": "pytorch-metric-learning's AMI (adjusted mutual information) has no equivalent here; nmi is its NMI",
}
"""pytorch-metric-learning's ``AccuracyCalculator`` metric names (lower-cased) that are not names here, and what
each is here (docs/metrics.md, *Coming from pytorch-metric-learning*); its ``r_precision`` and ``NMI`` are names
here too."""


def _check_k_values(k_values: Any) -> tuple[int, ...]:
    """``k_values`` as a tuple of ints: a list (any sequence, a 1-D numpy array) of positive integers (numpy integers
    too, not ``bool``); a string, ``None`` or a single number is a one-line :class:`ConfigError` (a string was read
    character by character)."""
    if isinstance(k_values, str):
        hint = (" (pytorch-metric-learning's k='max_bin_count' sets how many neighbours its map@r and r_precision "
                "see; here r_precision and map@r always rank to each query's R, so nothing replaces it)"
                if k_values == "max_bin_count" else "")
        raise ConfigError(f"k_values must be a list of positive integers (the recall@k cut-offs), got the string "
                          f"{k_values!r}{hint}", key="k_values")
    if k_values is None or not isinstance(k_values, Iterable):
        got = "None" if k_values is None else f"{k_values!r} ({type(k_values).__name__})"
        raise ConfigError(f"k_values must be a list of positive integers (the recall@k cut-offs; default "
                          f"(1, 2, 4, 8), () for none), got {got}", key="k_values")
    out = []
    for k in k_values:
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise ConfigError(f"k_values must be positive integers, got {k!r} ({type(k).__name__})", key="k_values")
        if k < 1:
            raise ConfigError(f"k_values must be positive integers, got {int(k)}", key="k_values")
        out.append(int(k))
    return tuple(out)


def _unknown_metric_hint(key: str, families: Iterable[str]) -> str:
    """What an unknown (lower-cased) metric name may have meant: a pytorch-metric-learning name
    (:data:`PML_METRIC_NAMES`) or ``<family>_at_<k>`` for ``<family>@<k>``; empty if nothing."""
    if key in PML_METRIC_NAMES:
        return f": {PML_METRIC_NAMES[key]}"
    family, sep, tail = key.rpartition("_at_")
    if sep and family in families and (tail == "k" or (tail.isascii() and tail.isdigit())):
        return f"; did you mean {family}@{tail.upper() if tail == 'k' else tail}?"
    return ""


@dataclass(frozen=True)
class ParsedMetrics:
    """A validated metric request: ``names`` (the result's metric keys, in order), the retrieval metrics to rank
    for (``retrieval``, table order), the clustering metrics and the ``fnmr@fmr`` percentages."""

    names: list[str]
    retrieval: tuple[MetricSpec, ...]
    clustering: tuple[str, ...]
    fmr: list[float]

    def __iter__(self) -> Iterator[Any]:  # ``names, *_ = _parse_metrics(...)``
        return iter((self.names, self.retrieval, self.clustering, self.fmr))


def _parse_metrics(metrics: Sequence[str] | None, k_values: Sequence[int] | np.ndarray,
                   table: Mapping[str, RankMetric] | None = None) -> ParsedMetrics:
    """Validate a metric request against the retrieval table (default :data:`METRIC_TABLE`) and
    :data:`CLUSTER_METRIC_TABLE`: ``<family>@K`` of an ``@k`` entry expands over ``k_values``, ``<family>@<int>``
    names one cut-off (``cmc@...``, open-metric-learning's name, is ``recall@...``:
    :data:`~dynametric.metrics.ranking.METRIC_ALIASES`), ``fnmr@fmr=<p>`` asks for the pooled verification metric
    (:mod:`dynametric.metrics.verification`), ``all`` adds every table metric. Results are ordered as the tables.
    """
    table = METRIC_TABLE if table is None else table
    if isinstance(metrics, str):
        raise ConfigError("metrics must be a list of names, not a string", key="metrics")
    if metrics is None:
        requested = [name[:-1] + "K" if m.at_k else name for name, m in table.items() if m.default]
    else:
        requested = list(metrics)
    if "all" in requested:
        every = [*(name[:-1] + "K" if m.at_k else name for name, m in table.items()), *CLUSTER_METRIC_TABLE]
        requested = [m for m in requested if m != "all"] + [m for m in every if m not in requested]
    k_values = _check_k_values(k_values)
    families = {name[:-2] for name, m in table.items() if m.at_k}
    cut: dict[str, list[int]] = {f: [] for f in families}  # the cut-offs asked for, per @k family
    fixed: set[str] = set()
    clusters: set[str] = set()
    fmr: list[float] = []
    for name in requested:
        if not isinstance(name, str):
            raise ConfigError(f"metric names must be strings, got {name!r}", key="metrics")
        key = canonical_metric_name(name.strip().lower())  # cmc@k (open-metric-learning) is recall@k
        try:
            p = parse_fmr(key)
        except ValueError as exc:
            raise ConfigError(f"bad metric {name!r}: {exc}", key="metrics") from None
        if p is not None:
            if p not in fmr:
                fmr.append(p)
            continue
        entry = table.get(key)
        if entry is not None and not entry.at_k:
            fixed.add(key)
            continue
        family, sep, tail = key.partition("@")
        if sep and family in families:
            if tail == "k":
                new = list(k_values)
            elif tail.isascii() and tail.isdigit() and int(tail) >= 1:
                new = [int(tail)]
            else:
                raise ConfigError(f"bad metric {name!r}: expected {family}@K or {family}@<positive int>",
                                  key="metrics")
            cut[family] += [k for k in new if k not in cut[family]]
        elif key in CLUSTER_METRIC_TABLE:
            clusters.add(key)
        else:
            at = [f"{name[:-2]}@K, {name[:-2]}@<int>" for name, m in table.items() if m.at_k]
            plain = [name for name, m in table.items() if not m.at_k] + list(CLUSTER_METRIC_TABLE)
            hint = _unknown_metric_hint(key, families)
            if hint:
                raise ConfigError(f"unknown metric {name!r}{hint}", key="metrics")
            raise ConfigError(f"unknown metric {name!r}; expected one of {', '.join(at)}, fnmr@fmr=<percent>, "
                              f"{', '.join(plain)} or all", key="metrics")
    specs: list[MetricSpec] = []
    for name, m in table.items():
        if m.at_k:
            specs += [MetricSpec(f"{name[:-2]}@{k}", m, k) for k in cut[name[:-2]]]
        elif name in fixed:
            specs.append(MetricSpec(name, m))
    clustering = tuple(c for c in CLUSTER_METRIC_TABLE if c in clusters)
    names = [s.name for s in specs] + list(clustering) + [f"fnmr@fmr={format(p, 'g')}" for p in fmr]
    if not names:
        raise ConfigError("no metric requested", key="metrics")
    return ParsedMetrics(names, tuple(specs), clustering, fmr)


def _as_embeddings(x: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    """``x`` as ``[N, D]`` on ``device`` (default the CPU), checked: finite and within float32's range.

    float64 stays float64 (a float64 array on the CPU is used in place, not copied), and so do int32 / int64
    (converted to float64): the preparation (:func:`~dynametric.metrics.engine.prepare_for_ranking`,
    :func:`~dynametric.metrics.engine.prepare_for_clustering`) centres and scales them in float64 before rounding
    to float32, so embeddings far from the origin keep the differences float32 input would have rounded away.
    Every other dtype becomes float32 (exact for float16, bfloat16 and the 8/16-bit integers); so does everything
    on an MPS device, which has no float64."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise InputError(f"expected a tensor or array, got {type(x).__name__}", key=name)
    if x.dim() != 2:
        raise InputError(f"expected a 2-D [N, D] array, got shape {tuple(x.shape)}", key=name)
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise InputError(f"is empty (shape {tuple(x.shape)})", key=name)
    if not (x.dtype.is_floating_point or x.dtype in (torch.int8, torch.int16, torch.int32, torch.int64,
                                                       torch.uint8)):
        raise InputError(f"expected numbers, got dtype {x.dtype}", key=name)
    dev = torch.device("cpu") if device is None else device
    wide = x.dtype in (torch.float64, torch.int32, torch.int64) and dev.type != "mps"
    x = x.detach().to(dev, torch.float64 if wide else torch.float32)
    checks = [("NaN or Inf", x)]
    if x.dtype == torch.float64:  # (a float32 tensor is its own cast: its range needs no second look)
        checks.append(("values beyond the float32 range (|x| > 3.4e38)", x.to(torch.float32)))
    for what, y in checks:
        bad = ~torch.isfinite(y)
        if bool(bad.any()):
            row = int(bad.any(1).nonzero()[0])
            raise InputError(f"contains {what} (first at row {row}, {int(bad.any(1).sum())} bad rows)", key=name)
    return x


_PLAIN_ID_TYPES = frozenset({int, str, bytes, tuple})  # ids a list may hold as they are (tuples: the protocols')


def _id_list(ids: Any, key: str) -> list[Any]:
    """``ids`` as a list of hashable ids: a tensor or array ``[N]`` or ``[N, 1]`` (another shape is one line keyed
    ``key``), numpy / torch scalars and one-item rows (``[[3], [7]]``) as Python values; an id that cannot be one
    (a longer list, an array of several values) is one line naming its row."""
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, np.ndarray):
        if ids.ndim == 2 and ids.shape[1] == 1:
            ids = ids[:, 0]
        if ids.ndim != 1:
            raise InputError(f"expected [N] or [N, 1] ids, got shape {list(ids.shape)}", key=key)
        return ids.tolist()
    out = list(ids)
    if set(map(type, out)) <= _PLAIN_ID_TYPES:  # the common case, without a check per id
        return out
    for i, v in enumerate(out):
        if isinstance(v, list) and len(v) == 1:  # a row of [N, 1] ids given as lists
            v = out[i] = v[0]
        if isinstance(v, (np.ndarray, torch.Tensor)):
            if v.size != 1 if isinstance(v, np.ndarray) else v.numel() != 1:
                raise InputError(f"the id of row {i} holds {tuple(v.shape)} values; expected one int or text",
                                 key=key)
            out[i] = v.item()
        elif isinstance(v, np.generic):
            out[i] = v.item()
        elif not isinstance(v, Hashable):
            raise InputError(f"the id of row {i} is {repr(v)[:60]}; expected an int or a text", key=key)
    return out


def _id_kinds(ids: list[Any]) -> dict[str, Any]:
    """``{kind: an example id}`` of the kinds of ``ids`` that can never equal each other: ``"text"`` (str),
    ``"bytes"``, ``"number"`` (one pass over the ids' types, one more for the examples)."""
    types = set(map(type, ids))
    kinds: dict[str, Any] = {}
    for kind, match in (("text", lambda t: issubclass(t, str)), ("bytes", lambda t: issubclass(t, bytes)),
                        ("number", lambda t: issubclass(t, numbers.Number))):
        if any(match(t) for t in types):
            kinds[kind] = next(v for v in ids if match(type(v)))
    return kinds


_KIND_NAMES = {"text": "texts", "bytes": "bytes", "number": "numbers"}
_NEVER_EQUAL = {frozenset({"text", "number"}): "a text never equals a number",
                frozenset({"bytes", "number"}): "bytes never equal a number",
                frozenset({"text", "bytes"}): "bytes never equal a text (decode them)"}


def _id_codes(query_ids: Sequence[Any] | np.ndarray | torch.Tensor,
              gallery_ids: Sequence[Any] | np.ndarray | torch.Tensor, nq: int,
              ng: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Codes of the query and gallery ids, equal where the ids are equal. Query ids and gallery ids with no kind in
    common that can never be equal (texts against numbers, ``bytes`` against texts or numbers) are refused: they
    would exclude nothing, silently."""
    loo = query_ids is gallery_ids
    q = _id_list(query_ids, "query_ids")
    g = q if loo else _id_list(gallery_ids, "gallery_ids")
    if len(q) != nq:
        raise InputError(f"expected {nq} query ids, got {len(q)}", key="query_ids")
    if len(g) != ng:
        raise InputError(f"expected {ng} gallery ids, got {len(g)}", key="gallery_ids")
    if not loo:
        kq, kg = _id_kinds(q), _id_kinds(g)
        if kq and kg and not kq.keys() & kg.keys():
            a, b = next(iter(kq)), next(iter(kg))
            raise InputError(f"the query ids are {_KIND_NAMES[a]} (e.g. {kq[a]!r}) and the gallery ids "
                             f"{_KIND_NAMES[b]} (e.g. {kg[b]!r}): {_NEVER_EQUAL[frozenset({a, b})]}, so no item "
                             "would be excluded; give both sides ids of one kind", key="query_ids")
    table: dict[Any, int] = {}
    codes = [table.setdefault(v, len(table)) for v in q + g]
    t = torch.tensor(codes, dtype=torch.long)
    return t[:nq], t[nq:]


def _check_options(distance: str, empty_queries: str, asi_cutoff: str | int | np.integer, ranking_engine: str,
                   memory_budget_bytes: int | None) -> int | None:
    """Check the option values of :func:`evaluate_embeddings` (each a one-line :class:`ConfigError` keyed by its
    name); returns the ASI cut-off (None: each query's ``R_q``; an integer, numpy integers too, as an ``int``)."""
    if distance not in ("cosine", "euclidean"):
        raise ConfigError(f"unknown distance {distance!r}; expected 'cosine' or 'euclidean'", key="distance")
    if empty_queries not in ("exclude", "count_as_zero"):
        raise ConfigError(f"unknown empty_queries policy {empty_queries!r}; expected 'exclude' or 'count_as_zero'",
                          key="empty_queries")
    if asi_cutoff in ("R_q", "r_q", "R", None):
        cutoff: int | None = None
    elif isinstance(asi_cutoff, numbers.Integral) and not isinstance(asi_cutoff, bool) and asi_cutoff >= 1:
        cutoff = int(asi_cutoff)
    else:
        raise ConfigError(f"asi_cutoff must be 'R_q' or a positive integer, got {asi_cutoff!r}", key="asi_cutoff")
    if ranking_engine not in ("auto", "cpu", "torch"):
        raise ConfigError(f"unknown ranking_engine {ranking_engine!r}; expected 'auto', 'cpu' or 'torch'",
                          key="ranking_engine")
    if memory_budget_bytes is not None and (isinstance(memory_budget_bytes, bool)
                                            or not isinstance(memory_budget_bytes, (int, np.integer))
                                            or memory_budget_bytes < 1):
        raise ConfigError(f"memory_budget_bytes must be a positive integer (bytes) or None, got "
                          f"{memory_budget_bytes!r}", key="memory_budget_bytes")
    return cutoff


def _ranking_device(device: str | torch.device | None, ranking_engine: str) -> torch.device | None:
    """The engine choice: the torch engine's device, or None for the CPU engine (``ranking_engine="torch"`` runs
    the torch engine on the CPU when ``device`` names none; ``"cpu"`` forces the CPU engine)."""
    from dynametric.metrics.torch_engine import resolve_device

    dev = resolve_device(device)
    if ranking_engine == "torch" and dev is None:
        dev = torch.device("cpu")
    elif ranking_engine == "cpu":
        dev = None
    return dev


def _read_inputs(query_emb: Any, query_labels: Any, gallery_emb: Any, gallery_labels: Any, gallery_ids: Any,
                 device: torch.device | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(query, query labels, gallery, gallery labels)`` checked (embeddings on ``device``, labels on the CPU);
    in leave-one-out (``gallery_emb is None``) the gallery is the query set."""
    q = _as_embeddings(query_emb, "query_emb", device)
    ql = as_label_matrix(query_labels, name="query_labels", num_rows=q.shape[0]).cpu()
    if gallery_emb is None:
        if gallery_labels is not None:
            raise InputError("gallery_labels given without gallery_emb", key="gallery_labels")
        if gallery_ids is not None:
            raise InputError("gallery_ids given without gallery_emb (leave-one-out uses query_ids)",
                             key="gallery_ids")
        return q, ql, q, ql
    if gallery_labels is None:
        raise InputError("gallery_emb given without gallery_labels", key="gallery_labels")
    g = _as_embeddings(gallery_emb, "gallery_emb", device)
    gl = as_label_matrix(gallery_labels, name="gallery_labels", num_rows=g.shape[0]).cpu()
    if g.shape[1] != q.shape[1]:
        raise InputError(f"gallery dimension {g.shape[1]} differs from query dimension {q.shape[1]}",
                         key="gallery_emb")
    if gl.shape[1] != ql.shape[1]:
        raise InputError(f"gallery labels have {gl.shape[1]} scales, query labels {ql.shape[1]}",
                         key="gallery_labels")
    return q, ql, g, gl


def _checked_scale_names(scale_names: Sequence[str] | None, num_scales: int) -> list[str]:
    """The scales' names (default :func:`default_scale_names`): ``num_scales`` names under the rule of
    :func:`~dynametric.labels.check_scale_names` (non-empty strings, not blank, distinct, none reserved; a single
    string is refused, not read letter by letter), the rule the CSV, folder and embed readers apply to their
    headers; else one :class:`InputError` keyed ``scale_names``."""
    if isinstance(scale_names, (str, bytes)):
        raise InputError(f"expected a list of names, got a string {scale_names!r}", key="scale_names")
    names_s = list(default_scale_names(num_scales) if scale_names is None else scale_names)
    if len(names_s) != num_scales:
        raise InputError(f"need {num_scales} scale names (one per label column), got {len(names_s)}: {names_s}",
                         key="scale_names")
    if any(isinstance(n, str) and not n.strip() for n in names_s):
        raise InputError(f"scale names must be non-empty strings (not blank), got {names_s}", key="scale_names")
    return list(check_scale_names(names_s))


def _exclusion_codes(query_ids: Sequence[Any] | np.ndarray | torch.Tensor | None,
                     gallery_ids: Sequence[Any] | np.ndarray | torch.Tensor | None, loo: bool, nq: int,
                     ng: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The query and gallery id codes that exclude same-id candidates (leave-one-out: ``query_ids`` on both
    sides), or ``(None, None)`` without ids."""
    if query_ids is None and gallery_ids is None:
        return None, None
    if query_ids is None:
        raise InputError("gallery_ids given without query_ids", key="query_ids")
    if loo:
        return _id_codes(query_ids, query_ids, nq, nq)
    if gallery_ids is None:
        raise InputError("query_ids given without gallery_ids", key="gallery_ids")
    return _id_codes(query_ids, gallery_ids, nq, ng)


def _rank(problem: RankingProblem, specs: tuple[MetricSpec, ...], dev: torch.device | None, cutoff: int | None,
          memory_budget_bytes: int | None) -> list[ScaleAccumulator]:
    """The ranking pass: every retrieval metric at every scale, on the CPU engine (``dev is None``) or the torch
    engine, with true float32 matmuls."""
    from dynametric.metrics.torch_engine import full_fp32_matmul, run_ranking_torch

    with full_fp32_matmul():
        if dev is None:
            return run_ranking(problem, k_values=(), metrics=specs, asi_cutoff=cutoff,
                               memory_budget_bytes=memory_budget_bytes)
        return run_ranking_torch(problem, dev, k_values=(), metrics=specs, asi_cutoff=cutoff,
                                 memory_budget_bytes=memory_budget_bytes)


def _retrieval_values(acc: ScaleAccumulator, rank_names: list[str], empty_queries: str) -> dict[str, float | int]:
    """One scale's retrieval metrics (the means over its counted queries; NaN when none) and query counts."""
    out: dict[str, float | int] = {}
    denom = acc.num_defined + (acc.num_empty if empty_queries == "count_as_zero" else 0)
    sums = acc.sums
    for m in rank_names:
        out[m] = sums.get(m, 0.0) / denom if denom else float("nan")
    out["num_queries"] = denom
    out["excluded_queries"] = acc.num_empty if empty_queries == "exclude" else 0
    out["empty_queries"] = acc.num_empty
    return out


def _per_query_values(acc: ScaleAccumulator, rank_names: list[str], empty_queries: str) -> dict[str, np.ndarray]:
    """One scale's per-query arrays: ``num_relevant`` and each retrieval metric (an empty query: NaN, or 0 under
    ``count_as_zero``)."""
    empty = acc.r_count == 0
    fill = 0.0 if empty_queries == "count_as_zero" else float("nan")
    out = {"num_relevant": acc.r_count.copy()}
    for m in rank_names:
        out[m] = np.where(empty, fill, acc.values.get(m, np.zeros(len(empty))))
    return out


def _add_fnmr(result: dict[str, dict[str, float | int]], names_s: list[str], problem: RankingProblem,
              fmr: list[float], dev: torch.device | None, memory_budget_bytes: int | None) -> None:
    """Add each scale's ``fnmr@fmr=<p>`` values to ``result``."""
    from dynametric.metrics.torch_engine import full_fp32_matmul

    with full_fp32_matmul():
        per_scale = fnmr_at_fmr(problem, fmr, dev, memory_budget_bytes)
    for name, vals in zip(names_s, per_scale):
        result[name].update(vals)


def _add_clustering(result: dict[str, dict[str, float | int]], names_s: list[str], q: torch.Tensor,
                    ql: torch.Tensor, distance: str, clustering: tuple[str, ...], *, nmi_normalizer: str,
                    seed: int, restarts: int, iters: int, backend: str) -> None:
    """Add each scale's clustering metrics to ``result`` (k-means on the query embeddings, one cluster per class
    of the scale), with the k-means seed and restarts and, where no retrieval metric set them, the query counts.
    k-means runs on the embeddings centred and scaled in float64 (:func:`prepare_for_clustering`), which keeps its
    float32 distances accurate at any offset and magnitude."""
    xq = prepare_for_clustering(distance, q)
    for s, name in enumerate(names_s):
        k = int(torch.unique(ql[:, s]).numel())
        assign, _backend = kmeans_assign(xq, k, seed=seed, iters=iters, restarts=restarts, backend=backend)
        for c in clustering:
            result[name][c] = CLUSTER_METRIC_TABLE[c](ql[:, s], assign, nmi_normalizer=nmi_normalizer)
        result[name]["kmeans_seed"] = seed
        result[name]["kmeans_restarts"] = restarts
        result[name].setdefault("num_queries", q.shape[0])
        result[name].setdefault("excluded_queries", 0)


RESULT_COUNT_KEYS = ("num_queries", "excluded_queries", "empty_queries", "kmeans_seed", "kmeans_restarts")
"""The entries of a scale's dict in a result of :func:`evaluate_embeddings` that are counts or settings, not
metrics (its ``"mean"`` block has none of them)."""


def _ordered_result(result: dict[str, dict[str, float | int]], names: list[str],
                    names_s: list[str]) -> dict[str, dict[str, Any]]:
    """Each scale's dict with the metric keys first, in the requested order, then the counts; then ``"mean"``,
    the plain mean over scales of each metric."""
    mean: dict[str, float | int] = {}
    for m in names:
        vals = [float(result[n][m]) for n in names_s]
        mean[m] = math.fsum(vals) / len(vals)
    ordered: dict[str, dict[str, Any]] = {}
    for n in names_s:
        d = result[n]
        ordered[n] = {m: d[m] for m in names} | {k: v for k, v in d.items() if k not in names}
    ordered["mean"] = mean
    return ordered


@overload
def evaluate_embeddings(
    query_emb: torch.Tensor | np.ndarray,
    query_labels: Any,
    gallery_emb: torch.Tensor | np.ndarray | None = None,
    gallery_labels: Any = None,
    *,
    metrics: Sequence[str] | None = None,
    k_values: Sequence[int] | np.ndarray = _defaults.K_VALUES,
    distance: str = _defaults.DISTANCE,
    scale_names: Sequence[str] | None = None,
    query_ids: Sequence[Any] | np.ndarray | torch.Tensor | None = None,
    gallery_ids: Sequence[Any] | np.ndarray | torch.Tensor | None = None,
    memory_budget_bytes: int | None = None,
    empty_queries: str = _defaults.EMPTY_QUERIES,
    asi_cutoff: str | int | np.integer[Any] = _defaults.ASI_CUTOFF,
    nmi_normalizer: str = _defaults.NMI_NORMALIZER,
    kmeans_seed: int = _defaults.KMEANS_SEED,
    kmeans_restarts: int = _defaults.KMEANS_RESTARTS,
    kmeans_iters: int = 20,
    kmeans_backend: str = "auto",
    device: str | torch.device | None = None,
    ranking_engine: str = "auto",
    per_query: Literal[False] = False,
    metric_table: Mapping[str, RankMetric] | None = None,
    query_categories: Sequence[Any] | np.ndarray | torch.Tensor | None = None,
) -> dict[str, dict[str, Any]]: ...


@overload
def evaluate_embeddings(
    query_emb: torch.Tensor | np.ndarray,
    query_labels: Any,
    gallery_emb: torch.Tensor | np.ndarray | None = None,
    gallery_labels: Any = None,
    *,
    metrics: Sequence[str] | None = None,
    k_values: Sequence[int] | np.ndarray = _defaults.K_VALUES,
    distance: str = _defaults.DISTANCE,
    scale_names: Sequence[str] | None = None,
    query_ids: Sequence[Any] | np.ndarray | torch.Tensor | None = None,
    gallery_ids: Sequence[Any] | np.ndarray | torch.Tensor | None = None,
    memory_budget_bytes: int | None = None,
    empty_queries: str = _defaults.EMPTY_QUERIES,
    asi_cutoff: str | int | np.integer[Any] = _defaults.ASI_CUTOFF,
    nmi_normalizer: str = _defaults.NMI_NORMALIZER,
    kmeans_seed: int = _defaults.KMEANS_SEED,
    kmeans_restarts: int = _defaults.KMEANS_RESTARTS,
    kmeans_iters: int = 20,
    kmeans_backend: str = "auto",
    device: str | torch.device | None = None,
    ranking_engine: str = "auto",
    per_query: Literal[True],
    metric_table: Mapping[str, RankMetric] | None = None,
    query_categories: Sequence[Any] | np.ndarray | torch.Tensor | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, np.ndarray]]]: ...


@overload
def evaluate_embeddings(
    query_emb: torch.Tensor | np.ndarray,
    query_labels: Any,
    gallery_emb: torch.Tensor | np.ndarray | None = None,
    gallery_labels: Any = None,
    *,
    metrics: Sequence[str] | None = None,
    k_values: Sequence[int] | np.ndarray = _defaults.K_VALUES,
    distance: str = _defaults.DISTANCE,
    scale_names: Sequence[str] | None = None,
    query_ids: Sequence[Any] | np.ndarray | torch.Tensor | None = None,
    gallery_ids: Sequence[Any] | np.ndarray | torch.Tensor | None = None,
    memory_budget_bytes: int | None = None,
    empty_queries: str = _defaults.EMPTY_QUERIES,
    asi_cutoff: str | int | np.integer[Any] = _defaults.ASI_CUTOFF,
    nmi_normalizer: str = _defaults.NMI_NORMALIZER,
    kmeans_seed: int = _defaults.KMEANS_SEED,
    kmeans_restarts: int = _defaults.KMEANS_RESTARTS,
    kmeans_iters: int = 20,
    kmeans_backend: str = "auto",
    device: str | torch.device | None = None,
    ranking_engine: str = "auto",
    per_query: bool = False,
    metric_table: Mapping[str, RankMetric] | None = None,
    query_categories: Sequence[Any] | np.ndarray | torch.Tensor | None = None,
) -> dict[str, dict[str, Any]] | tuple[dict[str, dict[str, Any]], dict[str, dict[str, np.ndarray]]]: ...


def evaluate_embeddings(
    query_emb: torch.Tensor | np.ndarray,
    query_labels: Any,
    gallery_emb: torch.Tensor | np.ndarray | None = None,
    gallery_labels: Any = None,
    *,
    metrics: Sequence[str] | None = None,
    k_values: Sequence[int] | np.ndarray = _defaults.K_VALUES,
    distance: str = _defaults.DISTANCE,
    scale_names: Sequence[str] | None = None,
    query_ids: Sequence[Any] | np.ndarray | torch.Tensor | None = None,
    gallery_ids: Sequence[Any] | np.ndarray | torch.Tensor | None = None,
    memory_budget_bytes: int | None = None,
    empty_queries: str = _defaults.EMPTY_QUERIES,
    asi_cutoff: str | int | np.integer[Any] = _defaults.ASI_CUTOFF,
    nmi_normalizer: str = _defaults.NMI_NORMALIZER,
    kmeans_seed: int = _defaults.KMEANS_SEED,
    kmeans_restarts: int = _defaults.KMEANS_RESTARTS,
    kmeans_iters: int = 20,
    kmeans_backend: str = "auto",
    device: str | torch.device | None = None,
    ranking_engine: str = "auto",
    per_query: bool = False,
    metric_table: Mapping[str, RankMetric] | None = None,
    query_categories: Sequence[Any] | np.ndarray | torch.Tensor | None = None,
) -> dict[str, dict[str, Any]] | tuple[dict[str, dict[str, Any]], dict[str, dict[str, np.ndarray]]]:
    """Evaluate embeddings at every label scale; returns ``{scale: {metric: value, ...}, ..., "mean": {...}}``.

    Protocols: leave-one-out when ``gallery_emb is None`` (query ``i`` is excluded from its own ranking by index;
    with ``query_ids`` every item sharing its id is excluded too); query -> gallery otherwise (with
    ``query_ids``/``gallery_ids`` a gallery item with the query's id is excluded explicitly). Candidates are ranked by
    descending cosine similarity (``distance="cosine"``, embeddings L2-normalised) or ascending Euclidean distance
    (``"euclidean"``, raw embeddings), ties by ascending gallery index; float64 (and int32/int64) embeddings are
    centred and scaled in float64 before the float32 scoring, not rounded to float32 first (docs/metrics.md,
    *Ranking and tie-break*). Queries without a relevant item at a scale
    are excluded there and counted (``empty_queries="exclude"``), or score 0 (``"count_as_zero"``).
    Each scale's dict holds the metric values (fractions in [0, 1]; NaN when no query is defined), ``num_queries``
    (queries averaged over), ``excluded_queries``, with a retrieval metric ``empty_queries`` (queries without a
    relevant item at that scale, excluded or scored 0 by the policy) and, with ``nmi``/``f1``,
    ``kmeans_seed``/``kmeans_restarts``. ``"mean"`` holds the plain mean over scales of each metric.

    ``k_values``: the ``@K`` cut-offs, a list (or 1-D numpy array) of positive integers; ``asi_cutoff``: ``"R_q"``
    or a positive integer. ``kmeans_seed`` (an integer), ``kmeans_iters`` and ``kmeans_restarts`` (integers >= 1):
    the k-means behind ``nmi``/``f1`` (:func:`~dynametric.metrics.kmeans_assign`). numpy integers are accepted
    wherever an integer is. ``query_ids`` / ``gallery_ids`` / ``query_categories``: lists, numpy arrays or tensors.

    ``device``: where the rankings are computed. ``None`` or ``"cpu"``: the CPU engine
    (:mod:`dynametric.metrics.engine`); ``"cuda"`` (``"cuda:1"``, a ``torch.device``) or ``"auto"`` (CUDA when
    available, else the CPU engine): the torch engine (:mod:`dynametric.metrics.torch_engine`), same metrics, ties and
    exclusions, with ``memory_budget_bytes`` then the device budget (default 3.5 GiB). ``ranking_engine="torch"`` runs
    the torch engine even on the CPU (``"cpu"`` forces the CPU engine; the budget's default is then the CPU engine's,
    768 MiB of host memory). With ``per_query=True`` the return value is
    ``(result, per_query)``, ``per_query[scale]`` holding ``num_relevant`` (``R_q``, int64 ``[Nq]``) and one float64
    ``[Nq]`` array per retrieval metric (NaN where ``R_q = 0`` unless ``empty_queries="count_as_zero"``).
    ``metric_table``: the retrieval metrics' table (default :data:`~dynametric.metrics.ranking.METRIC_TABLE`; pass
    an extended copy to compute a metric of your own with either engine).

    ``query_categories``: one category id per query (ints or text; open-metric-learning's ``category`` column). The
    result then also holds ``"by_category"``: ``{category: {scale: {...}, ..., "mean": {...}}}``, each entry shaped
    as the overall result, its retrieval metrics the means over that category's queries
    (:mod:`dynametric.metrics.categories`; ``num_queries`` + ``excluded_queries`` is the category's query count).
    ``nmi``, ``f1`` and ``fnmr@fmr`` are not means of per-query values and are reported overall only; with no
    retrieval metric requested there is no ``"by_category"``.

    Raises :class:`~dynametric.errors.InputError` (one line, keyed by the argument: ``query_emb``,
    ``query_labels``, ``gallery_emb``, ...) for inputs of the wrong shape, dtype or length, or non-finite
    embeddings or ones beyond float32's range (an all-zero row under cosine is accepted: it scores 0 with every
    item, docs/metrics.md), and :class:`~dynametric.errors.ConfigError` for an unknown metric, distance,
    protocol or option value; both are :class:`~dynametric.errors.DynametricError`.
    """
    cutoff = _check_options(distance, empty_queries, asi_cutoff, ranking_engine, memory_budget_bytes)
    kmeans_seed, kmeans_iters, kmeans_restarts = check_kmeans_options(kmeans_seed, kmeans_iters, kmeans_restarts,
                                                                      prefix="kmeans_")
    dev = _ranking_device(device, ranking_engine)
    parsed = _parse_metrics(metrics, k_values, metric_table)
    names, specs, fmr = parsed.names, parsed.retrieval, parsed.fmr
    # the torch engine on a device checks and prepares the embeddings there (no round trip through the host)
    prep_dev = dev if dev is not None and dev.type != "cpu" else None
    q, ql, g, gl = _read_inputs(query_emb, query_labels, gallery_emb, gallery_labels, gallery_ids, prep_dev)
    loo = gallery_emb is None
    names_s = _checked_scale_names(scale_names, ql.shape[1])
    q_codes, g_codes = _exclusion_codes(query_ids, gallery_ids, loo, q.shape[0], g.shape[0])
    categories = None if query_categories is None else category_codes(query_categories, q.shape[0])

    result: dict[str, dict[str, float | int]] = {n: {} for n in names_s}
    table: dict[str, dict[str, np.ndarray]] = {}
    by_category = None
    if specs or fmr:
        # scoring: the distance the engine computes; a narrow cone of cosine inputs is ranked (and its fnmr@fmr
        # distances measured, up to one power-of-two factor, which no fraction depends on) as centred unit rows
        qn, gn, scoring = prepare_for_ranking(distance, q, None if loo else g, device=prep_dev)
        problem = RankingProblem(query=qn, gallery=gn, query_labels=ql, gallery_labels=gl, distance=scoring,
                                 leave_one_out=loo, query_codes=q_codes, gallery_codes=g_codes)
    if specs:
        rank_names = [s.name for s in specs]
        accs = _rank(problem, specs, dev, cutoff, memory_budget_bytes)
        for name, acc in zip(names_s, accs):
            if per_query:
                table[name] = _per_query_values(acc, rank_names, empty_queries)
            result[name].update(_retrieval_values(acc, rank_names, empty_queries))
        if categories is not None:
            by_category = category_results(categories, names_s, rank_names, [(a.r_count, a.values) for a in accs],
                                           empty_queries == "count_as_zero")
    if fmr:
        _add_fnmr(result, names_s, problem, fmr, dev, memory_budget_bytes)
    if parsed.clustering:
        _add_clustering(result, names_s, q, ql, distance, parsed.clustering, nmi_normalizer=nmi_normalizer,
                        seed=kmeans_seed, restarts=kmeans_restarts, iters=kmeans_iters, backend=kmeans_backend)
    ordered = _ordered_result(result, names, names_s)
    if by_category is not None:  # query categories given and a retrieval metric requested
        ordered["by_category"] = by_category
    return (ordered, table) if per_query else ordered
