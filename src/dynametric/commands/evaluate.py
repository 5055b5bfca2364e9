"""``dynametric evaluate``: retrieval and clustering metrics of saved embeddings, per label scale plus the mean.

Embeddings come from ``.npy``, ``.pt`` (a tensor, or a dict with one tensor / an ``embeddings`` key) or
``.safetensors`` (one tensor or an ``embeddings`` key), or from a ``dynametric embed`` output folder (or its
``embeddings.npy``), whose ``labels.npy`` and scale names are used unless labels are given; labels from a CSV file
with a header, one integer column per scale, finest first (the column names become the scale names), or from an
``.npy`` integer array ``[N]`` / ``[N, S]``. ``--example`` evaluates the bundled example.

The command parses, calls and prints: the files are read and matched in :mod:`dynametric.retrieval.evaluate_io`
(which also checks the outputs before any work), the per-query CSV is written by :mod:`dynametric.metrics.io`.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from dynametric import evaluation_defaults as defaults
from dynametric.commands import (
    path_text,
    positive_float,
    positive_int,
    refuse_closed_stdout,
    seed_int,
    write_stdout,
)
from dynametric.errors import ConfigError, InputError
from dynametric.utils.text import text_table

# the metrics, readers and writers (which import torch) are imported where they are used: building the parser must
# not import torch (`dynametric --help` in a fraction of a second; tests/test_cli_imports.py). The defaults the help
# shows are the library's, read from dynametric.evaluation_defaults (which imports nothing; evaluate_embeddings'
# signature and the engines' memory budgets are its values).

_DEFAULT_METRICS = ("recall@K", "r_precision", "map@r", "map", "asi")
"""The metric set without ``--metrics``, for the help text: :data:`dynametric.metrics.DEFAULT_METRICS`, written out
because it comes from the metric table, which imports torch (the command passes ``metrics=None``, so what it
computes is the library's set; tests/commands/test_evaluate_defaults.py checks that the two are equal)."""

_RUN_OPTIONS = ("metrics", "k_values", "distance", "memory_budget_bytes", "empty_queries")
"""The keyword arguments of ``evaluate_embeddings`` a run config sets (``eval.*``:
:func:`dynametric.engine.builders.eval_kwargs`): with ``--checkpoint`` the run's values, else the function's own
defaults, each replaced by the option given."""


def _parse_metric_list(values: list[str] | None) -> list[str] | None:
    if values is None:
        return None
    out = [v.strip() for item in values for v in item.split(",") if v.strip()]
    return out or None


def format_table(result: dict[str, dict[str, Any]]) -> str:
    """Rows = scales + mean, columns = metrics (fractions, 4 decimals), then query counts."""
    scales = [k for k in result if k != "mean"]
    metrics = list(result["mean"])
    extra = [c for c in ("num_queries", "excluded_queries") if any(c in result[s] for s in scales)]
    header = ["scale", *metrics, *extra]
    rows = []
    for s in [*scales, "mean"]:
        row = [s]
        for m in metrics:
            v = result[s].get(m)
            row.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}")
        for c in extra:
            row.append(str(result[s].get(c, "")) if s != "mean" else "")
        rows.append(row)
    return "\n".join(text_table([header, *rows]))


def format_category_table(by_category: dict[str, dict[str, dict[str, Any]]], overall_only: list[str]) -> str:
    """The ``by_category`` block as text: a title line, then one row per category and scale (and the category's
    ``mean`` with several scales), columns as :func:`format_table` plus ``category`` and the category's query count
    (``queries``: those averaged over plus those excluded). ``overall_only``: the requested metrics that have no
    per-category value (named in the title)."""
    from dynametric.metrics.categories import category_count

    metrics = list(next(iter(by_category.values()))["mean"])
    header = ["category", "scale", *metrics, "queries", "num_queries", "excluded_queries"]
    lines = []
    for category, entry in by_category.items():
        scales = [k for k in entry if k != "mean"]
        for scale in scales + (["mean"] if len(scales) > 1 else []):
            values = entry[scale]
            cells = [category, scale]
            for m in metrics:
                v = values.get(m)
                cells.append("-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}")
            if scale == "mean":
                cells += ["", "", ""]
            else:
                counts = (values["num_queries"], values["excluded_queries"])
                cells += [str(sum(counts)), *map(str, counts)]
            lines.append(cells)
    title = (f"by query category ({category_count(len(by_category))}; each value the mean over the category's queries"
             + (f"; {', '.join(overall_only)}: overall only" if overall_only else "") + "):")
    return "\n".join([title, *text_table([header, *lines], left=2)])


def _id_files_pair(args: argparse.Namespace, why: str, per: str) -> None:
    """Query -> gallery excludes by pairs of ids: ``--query-ids`` and ``--gallery-ids`` together or neither, else a
    ConfigError naming the one missing (``why``: what made the evaluation query -> gallery; ``per``: what each
    line of the files stands for)."""
    if bool(args.query_ids) == bool(args.gallery_ids):
        return
    given, missing = ("--query-ids", "--gallery-ids") if args.query_ids else ("--gallery-ids", "--query-ids")
    raise ConfigError(f"is needed with {given}: {why}, which leaves a gallery item out of a query's ranking when "
                      f"their ids are equal; give both files (one id per line, a line per {per})", key=missing)


def _budget_text(size: int) -> str:
    """A memory budget in bytes as the help shows it: ``768 MiB``, ``3.5 GiB``."""
    return f"{size / 2**30:g} GiB" if size >= 2**30 else f"{size / 2**20:g} MiB"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate", help="retrieval/clustering metrics of saved embeddings, per label scale",
        description="Evaluate embeddings: leave-one-out on --embeddings, or query -> gallery with "
                    "--gallery-embeddings. Prints a table (rows = scales + mean) and optionally writes JSON.")
    p.add_argument("--embeddings", type=path_text,
                   help="query (or leave-one-out) embeddings: .npy, .pt, .safetensors, or a "
                   "`dynametric embed` folder (or its embeddings.npy), whose labels.npy is used without --labels")
    p.add_argument("--labels", type=path_text,
                   help="labels: a CSV with a header, one integer column per scale, finest first, or an "
                   ".npy integer array [N] or [N, S]")
    p.add_argument("--gallery-embeddings", type=path_text,
                   help="gallery embeddings (query -> gallery protocol); an embed folder "
                   "brings its labels.npy")
    p.add_argument("--gallery-labels", type=path_text,
                   help="gallery labels: CSV (same columns as --labels) or .npy")
    p.add_argument("--query-ids", type=path_text,
                   help="text file, one id per query row: gallery items with the same id are excluded")
    p.add_argument("--gallery-ids", type=path_text,
                   help="text file, one id per gallery row")
    p.add_argument("--query-categories", type=path_text,
                   help="text file, one category per query row: the retrieval metrics are "
                   "also reported per query category (open-metric-learning's report split; with --checkpoint the "
                   "categories come from the data, e.g. an oml CSV's category column, unless eval.per_category=false)")
    p.add_argument("--example", action="store_true", help="evaluate the bundled example (no files needed)")
    _add_checkpoint_arguments(p)
    _add_metric_arguments(p)
    p.add_argument("--json", dest="json_out", metavar="OUT.json", type=path_text,
                   help="write the results as JSON to this path (atomically); - prints the JSON on stdout (the "
                        "table then goes to stderr)")
    p.add_argument("--device", default="auto",
                   help="where rankings are computed and, with --checkpoint, where images are embedded: auto "
                        "(CUDA when available, else the CPU; default), cpu, cuda, cuda:<index> or mps (Apple GPUs)")
    p.add_argument("--per-query", dest="per_query_out", metavar="OUT.csv", type=path_text,
                   help="also write each query's retrieval metrics per scale to this CSV (atomically), with a last "
                        "column category when the queries carry categories")
    p.set_defaults(func=run)


def _add_checkpoint_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``--checkpoint``: the run config, the split, overrides, inference and the progress bar."""
    p.add_argument("--checkpoint", type=path_text,
                   help="a `dynametric train` checkpoint (e.g. RUN/best.ckpt): embed a dataset split "
                   "with it instead of reading --embeddings (engine; see docs/training.md)")
    p.add_argument("--config", type=path_text,
                   help="with --checkpoint: the run config (default: config.yaml beside the checkpoint)")
    p.add_argument("--split", help="with --checkpoint: dataset split to embed (default: data.test_split)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="with --checkpoint: dotted config override (repeatable)")
    from dynametric.commands.options import add_inference_arguments

    add_inference_arguments(p, batch_size=None, device=False, decode=False, prefix="with --checkpoint: ")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False,
                   help="with --checkpoint: a progress bar while the splits are embedded (default off); embedding "
                        "files shows none (--no-progress is accepted as by train and embed)")


def _add_metric_arguments(p: argparse.ArgumentParser) -> None:
    """The metric options. Those a run config sets default to ``None``: the library's default, or with
    ``--checkpoint`` the run's (:data:`_RUN_OPTIONS`); the others default to the library's value. Every default the
    help names is read from :mod:`dynametric.evaluation_defaults`, the values of ``evaluate_embeddings``."""
    p.add_argument("--metrics", nargs="+", default=None,
                   help="metric names (space or comma separated): recall@K (uses --k), recall@<int> (cmc@K, "
                        "cmc@<int>: the same, open-metric-learning's name), precision@K, precision@<int>, map@K, "
                        "map@<int>, r_precision, map@r, map, asi, fnmr@fmr=<percent>, nmi, f1, all; default: "
                        f"{' '.join(_DEFAULT_METRICS)}")
    p.add_argument("-k", "--k", type=positive_int, nargs="+", default=None,
                   help=f"K values for recall@K (default {' '.join(map(str, defaults.K_VALUES))}; with --checkpoint "
                        "the run's eval.k_values)")
    p.add_argument("--distance", choices=["cosine", "euclidean"], default=None,
                   help=f"default {defaults.DISTANCE}; with --checkpoint the run's eval.distance")
    p.add_argument("--empty-queries", choices=["exclude", "count_as_zero"], default=None,
                   help="queries without a relevant item: excluded and counted (exclude) or scored 0 "
                        f"(count_as_zero); default {defaults.EMPTY_QUERIES}, with --checkpoint the run's "
                        "eval.empty_queries")
    p.add_argument("--asi-cutoff", default=defaults.ASI_CUTOFF,
                   help=f"ASI cut-off N: R_q or a positive integer (default {defaults.ASI_CUTOFF})")
    # the run config has no key for these, so --checkpoint uses the library's defaults too (as training's validation
    # and test do)
    p.add_argument("--nmi-normalizer", choices=["arithmetic", "geometric"], default=defaults.NMI_NORMALIZER,
                   help="nmi's normaliser: the arithmetic mean of the two entropies (arithmetic) or their geometric "
                        f"mean (geometric); default {defaults.NMI_NORMALIZER}")
    p.add_argument("--kmeans-seed", type=seed_int, default=defaults.KMEANS_SEED,
                   help=f"seed of the k-means clustering behind nmi and f1, 0 to 2147483647 (default "
                        f"{defaults.KMEANS_SEED})")
    p.add_argument("--kmeans-restarts", type=positive_int, default=defaults.KMEANS_RESTARTS,
                   help="k-means runs per scale for nmi and f1, the one of lowest inertia kept "
                        f"(default {defaults.KMEANS_RESTARTS})")
    p.add_argument("--memory-budget-mb", type=positive_float, default=None,
                   help=f"working-memory budget of the ranking engine in MiB (default: "
                        f"{_budget_text(defaults.CPU_MEMORY_BUDGET)} on the CPU, "
                        f"{_budget_text(defaults.DEVICE_MEMORY_BUDGET)} on a GPU; with --checkpoint the run's "
                        "eval.memory_budget_bytes when set)")


@dataclass
class _Output:
    """Where the results go: ``json_out`` is ``--json`` (a file, or ``-``: the JSON on stdout, and the human-readable
    lines then on stderr)."""

    json_out: str | None

    @property
    def to_stdout(self) -> bool:
        return self.json_out == "-"

    @property
    def human(self) -> TextIO:
        """The stream of the tables and of what was evaluated."""
        return sys.stderr if self.to_stdout else sys.stdout

    @property
    def json_file(self) -> str | None:
        return None if self.to_stdout else self.json_out

    def refuse_closed_stdout(self) -> None:
        """Before any work: one error line where stdout is closed and the results would be printed there alone
        (``--json -``, or no ``--json`` file)."""
        if self.json_file is None:
            refuse_closed_stdout("evaluate prints its results there (" + ("--json - prints the JSON there" if
                                 self.to_stdout else "without --json") + "); give --json OUT.json")

    def say(self, text: str) -> None:
        """A line (or table) of the human-readable report, on :attr:`human`."""
        if self.human is sys.stderr:
            print(text, file=sys.stderr)
        else:
            write_stdout(text + "\n")

    def write_json_file(self, obj: dict[str, Any]) -> None:
        """``obj`` written atomically to the ``--json`` file (NaN as null), where one is given: before the tables
        are printed, so that an error of stdout loses nothing written to files."""
        from dynametric.utils.io import atomic_write_json

        if self.json_file is not None:
            atomic_write_json(self.json_file, obj, key="--json")
            print(f"wrote {self.json_file}", file=sys.stderr)

    def print_json(self, obj: dict[str, Any]) -> None:
        """``obj`` as JSON (NaN as null) on stdout, with ``--json -`` (after the tables, which then go to
        stderr)."""
        import json

        from dynametric.utils.io import nan_to_null

        if self.to_stdout:
            write_stdout(json.dumps(nan_to_null(obj), indent=2) + "\n")


@dataclass
class _Evaluation:
    """What an evaluation gave and how the report names it."""

    result: Any
    """The metrics (``evaluate_embeddings``' result), or ``(result, per-query table)`` with ``--per-query``."""
    source: str
    protocol: str
    """``leave-one-out`` or ``query -> gallery``."""
    num_queries: int
    info: dict[str, Any] | None
    """The JSON's ``protocol`` block (what was excluded), if any."""


def run(args: argparse.Namespace) -> int:
    """``dynametric evaluate``: check the outputs and options, evaluate a checkpoint's test protocol or embedding
    files, print (and write) the results."""
    output = _prepare_outputs(args)
    options, given = _evaluation_options(args)
    evaluator = _Evaluator(args, options)
    if args.checkpoint:
        evaluation = _evaluate_checkpoint(args, evaluator, given, output)
        if evaluation is None:  # a method's own protocol, reported already
            return 0
    else:
        _refuse_checkpoint_options(args)
        evaluation = _evaluate_files(args, evaluator)
    _report(args, evaluation, evaluator, output)
    return 0


def _prepare_outputs(args: argparse.Namespace) -> _Output:
    """Before any work: refuse ``--per-query -`` and a device that is not there, refuse outputs that would overwrite an
    input or a file this command did not write, and remove the temporaries a killed write of an output left."""
    from dynametric.retrieval.evaluate_io import check_outputs
    from dynametric.utils.device import resolve_device
    from dynametric.utils.io import remove_stale_temps_of

    if args.per_query_out == "-":
        raise ConfigError("writes a CSV file; '-' (stdout) is taken by --json only: give a file name",
                          key="--per-query")
    output = _Output(args.json_out)
    output.refuse_closed_stdout()
    resolve_device(args.device, key="--device")  # `--device cuda` without CUDA: one clear error before any work
    # never overwrite an input or a file this command did not write
    check_outputs((("--embeddings", args.embeddings), ("--labels", args.labels),
                   ("--gallery-embeddings", args.gallery_embeddings), ("--gallery-labels", args.gallery_labels),
                   ("--query-ids", args.query_ids), ("--gallery-ids", args.gallery_ids),
                   ("--query-categories", args.query_categories),
                   ("--checkpoint", args.checkpoint), ("--config", args.config)),
                  json_out=output.json_file, per_query_out=args.per_query_out)
    for out in (output.json_file, args.per_query_out):  # each is the command's to write: a killed write's temporaries
        if out:
            remove_stale_temps_of(Path(out))
    return output


def _evaluation_options(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    """The keyword arguments of ``evaluate_embeddings`` and, apart, the options a user gave of :data:`_RUN_OPTIONS`
    (``--checkpoint`` puts the run's values under them: :func:`_evaluate_checkpoint`). Those not given are the
    function's own defaults, read from its signature; ``--asi-cutoff`` and ``--memory-budget-mb`` are checked."""
    cutoff: str | int = args.asi_cutoff
    if cutoff not in ("R_q", "r_q"):
        try:
            cutoff = int(cutoff)
        except ValueError:
            raise ConfigError(f"expected R_q or a positive integer, got {args.asi_cutoff!r}",
                              key="--asi-cutoff") from None
    if args.memory_budget_mb is not None and int(args.memory_budget_mb * 2**20) < 1:
        raise ConfigError(f"{args.memory_budget_mb:g} MB is less than one byte", key="--memory-budget-mb")
    given = {k: v for k, v in (("metrics", _parse_metric_list(args.metrics)),
                               ("k_values", None if args.k is None else tuple(args.k)),
                               ("distance", args.distance), ("empty_queries", args.empty_queries),
                               ("memory_budget_bytes",
                                None if args.memory_budget_mb is None else int(args.memory_budget_mb * 2**20)))
             if v is not None}
    from dynametric.metrics import evaluate as metrics_evaluate  # the defining module (tests replace the re-export)

    library = inspect.signature(metrics_evaluate.evaluate_embeddings).parameters
    options = {name: library[name].default for name in _RUN_OPTIONS} | given | dict(
        asi_cutoff=cutoff, nmi_normalizer=args.nmi_normalizer, kmeans_seed=args.kmeans_seed,
        kmeans_restarts=args.kmeans_restarts, device=args.device, per_query=bool(args.per_query_out))
    return options, given


@dataclass
class _Evaluator:
    """``evaluate_embeddings`` with the command's ``options``, as the protocols call it; records what the evaluation
    was given besides: the query categories (the per-query CSV's column) and the ids (query, gallery)."""

    args: argparse.Namespace
    options: dict[str, Any]
    categories: Any = None
    ids: tuple[Any, Any] = (None, None)

    def __call__(self, q: Any, ql: Any, g: Any = None, gl: Any = None, **kw: Any) -> Any:
        """The metrics with the command's options (a protocol's own choices in ``kw`` take precedence, the id and
        category files over both)."""
        from dynametric.metrics import evaluate_embeddings
        from dynametric.retrieval.evaluate_io import load_query_categories
        from dynametric.utils.readers import load_ids

        args = self.args
        if args.query_ids:
            kw["query_ids"] = load_ids(args.query_ids, len(q), key="--query-ids")
        if args.query_categories:
            notes: list[str] = []
            kw["query_categories"] = load_query_categories(args.query_categories, len(q), notes)
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
        if args.gallery_ids:  # with a gallery: checked before anything was read or embedded (_id_files_pair)
            kw["gallery_ids"] = load_ids(args.gallery_ids, len(g), key="--gallery-ids")
        self.categories = kw.get("query_categories")
        self.ids = kw.get("query_ids"), kw.get("gallery_ids")
        return evaluate_embeddings(q, ql, g, gl, **(self.options | kw))


def _own_ids(protocol: Any) -> str:
    """How to exclude by one's own ids where the protocol's are not replaced: files mode, which needs the gallery's
    embeddings and both id files for query -> gallery (naming only the options given was advice that failed:
    `--gallery-ids` alone is refused there too)."""
    from dynametric.engine.protocols import QueryGallery

    if isinstance(protocol, QueryGallery):
        return ("; to exclude by your own ids, embed both splits (dynametric embed) and evaluate the files: "
                "--embeddings QUERY --gallery-embeddings GALLERY --query-ids FILE --gallery-ids FILE")
    return ("; to exclude by your own ids, embed the split (dynametric embed) and evaluate the file: "
            "--embeddings EMB --query-ids FILE")


@dataclass
class _CheckpointChecks:
    """The command's checks for ``evaluate_checkpoint``: of the test protocol (:meth:`check`, before anything is
    loaded) and of each split (:meth:`check_split`, once it is loaded, before anything is embedded)."""

    args: argparse.Namespace

    @property
    def id_files(self) -> list[str]:
        """The id options given."""
        return [opt for opt, value in (("--query-ids", self.args.query_ids), ("--gallery-ids", self.args.gallery_ids))
                if value]

    def check(self, protocol: Any) -> None:
        from dynametric.engine.protocols import LeaveOneOut, QueryGallery

        args, id_files = self.args, self.id_files
        generic = isinstance(protocol, (LeaveOneOut, QueryGallery))
        if not generic and (args.query_ids or args.gallery_ids or args.per_query_out):
            raise ConfigError(f"--query-ids, --gallery-ids and --per-query apply to leave-one-out and query -> "
                              f"gallery evaluations, not to the {protocol.name} protocol (docs/dyml.md)",
                              key="--checkpoint")
        # the id files replace the protocol's own ids: refused where it has some, so that its results' protocol
        # block states what was excluded
        if id_files and isinstance(protocol, QueryGallery) and protocol.query_in_gallery:
            raise ConfigError("cannot replace the ids by which the test protocol excludes each query's own "
                              f"gallery item (eval.query_in_gallery is true){_own_ids(protocol)}",
                              key=id_files[0])
        if isinstance(protocol, LeaveOneOut) and args.gallery_ids:
            chosen = (f"--split evaluates split {protocol.split!r} leave-one-out" if args.split is not None
                      else f"the run's eval.protocol is leave_one_out on split {protocol.split!r}")
            raise ConfigError(f"does not apply to leave-one-out ({chosen}), which has no gallery: it is for a "
                              "query -> gallery evaluation; leave-one-out takes --query-ids alone (each query's "
                              "ranking then leaves out every item sharing its id)", key="--gallery-ids")
        if isinstance(protocol, QueryGallery):
            _id_files_pair(args, f"the run's eval.protocol is query_gallery (split {protocol.query_split!r} -> "
                                 f"{protocol.gallery_split!r})", "item of each split")

    def check_split(self, protocol: Any, split: str, dataset: Any) -> None:
        from dynametric.utils.readers import load_ids

        id_files = self.id_files
        if id_files and getattr(dataset, "sequence_ids", None) is not None:
            raise ConfigError(f"cannot replace the sequence ids of split {split!r} (the data's sequence column), "
                              f"by which the test protocol excludes the items of each query's own "
                              f"sequence{_own_ids(protocol)}", key=id_files[0])
        # a file of the wrong length is refused now, not once the splits are embedded (evaluate reads it again)
        for option, path, role in (("--query-ids", self.args.query_ids, protocol.required_splits()[0]),
                                   ("--gallery-ids", self.args.gallery_ids, protocol.required_splits()[-1])):
            if path and split == role:
                load_ids(path, len(dataset), f"ids of split {split!r}", key=option)


def _evaluate_checkpoint(args: argparse.Namespace, evaluator: _Evaluator, given: dict[str, Any],
                         output: _Output) -> _Evaluation | None:
    """Embed and evaluate with the run config's test protocol (leave-one-out on ``--split``, query -> gallery, a
    method's own: pipeline/protocols.py), the run's ``eval.*`` options under those ``given``. A method's own protocol
    (DyML) is reported here and gives ``None``."""
    if args.example or args.embeddings or args.labels or args.gallery_embeddings or args.gallery_labels:
        raise ConfigError("--checkpoint cannot be combined with --example or embedding/label files",
                          key="--checkpoint")
    if args.query_categories:
        raise ConfigError("applies to embeddings from files; with --checkpoint the query categories come from "
                          "the data (an oml CSV's category column; --set eval.per_category=false leaves them out)",
                          key="--query-categories")
    from dynametric.commands.options import inference_options
    from dynametric.engine.protocols import LeaveOneOut, QueryGallery
    from dynametric.pipeline import checkpoint_config, evaluate_checkpoint, run_eval_options

    # --device (when the command has it), --precision, --batch-size, --progress ...
    inference = inference_options(args, progress=args.progress)
    # flag errors before anything is loaded; resolved once: `--workers auto` lowered under the open-file limit is
    # said once, not again by the evaluation below
    inference = dataclasses.replace(inference, workers=inference.resolve().workers)
    run_config = checkpoint_config(args.checkpoint, args.config, args.overrides)  # read and resolved once
    evaluator.options.update(run_eval_options(run_config) | given)
    checks = _CheckpointChecks(args)
    try:
        ce = evaluate_checkpoint(run_config, split=args.split, options=inference, evaluate=evaluator,
                                 check=checks.check, check_split=checks.check_split)
    except InputError as exc:  # the data layer names the split it lacks `split`: here --split chose it
        if args.split is None or exc.key != "split" or exc.file is not None:
            raise
        raise ConfigError(exc.message, key="--split") from None
    for note in ce.notes:
        print(f"note: {note}", file=sys.stderr)
    result = ce.result
    info = (result[0] if isinstance(result, tuple) else result).pop("protocol", None)
    if not isinstance(ce.protocol, (LeaveOneOut, QueryGallery)):  # a method's own protocol (DyML)
        _report_method_protocol(args, result, info, output)
        return None
    sets = list(ce.sets.values())
    if checks.id_files:  # the pairs the files excluded, and the files; the protocol excluded nothing by itself (check)
        from dynametric.retrieval.evaluate_io import id_files_exclusion

        own = info if info is not None else {  # leave-one-out on a split without sequences: no block of its own
            "name": ce.protocol.name, "split": ce.protocol.required_splits()[0], "queries": len(sets[0].emb),
            "same_sequence_excluded": False}
        info = own | id_files_exclusion(evaluator.ids[0], evaluator.ids[1], args.query_ids, args.gallery_ids)
    return _Evaluation(result, ce.description, "leave-one-out" if len(sets) == 1 else "query -> gallery",
                       len(sets[0].emb), info)


def _report_method_protocol(args: argparse.Namespace, result: dict[str, Any], info: dict[str, Any],
                            output: _Output) -> None:
    """A method's own protocol (DyML): its description, the table, and the JSON with its protocol block."""
    from dynametric.utils.io import nan_to_null

    obj = {**nan_to_null(result), "protocol": info}
    output.write_json_file(obj)
    output.say(f"{args.checkpoint}: {info['name']} ({info['layout']}), protocol tag {info['tag']}, "
               f"query_in_gallery={info['query_in_gallery']}, excluded {info['excluded_identical_queries']}")
    output.say(format_table(result))
    output.print_json(obj)


def _refuse_checkpoint_options(args: argparse.Namespace) -> None:
    """Without ``--checkpoint``: refuse its options, ``--example`` with files, and id files that do not fit the
    protocol, before any file is read."""
    if args.precision or args.batch_size is not None or args.workers is not None:
        raise ConfigError("--precision, --batch-size and --workers need --checkpoint", key="--checkpoint")
    if args.config or args.split or args.overrides:
        raise ConfigError("--config, --split and --set need --checkpoint", key="--checkpoint")
    if args.example and (args.embeddings or args.labels or args.gallery_embeddings or args.gallery_labels):
        raise ConfigError("--example cannot be combined with embedding/label files", key="--example")
    if args.gallery_ids and not args.gallery_embeddings:
        raise ConfigError("needs --gallery-embeddings (a query -> gallery evaluation); a leave-one-out "
                          "evaluation has no gallery: give --query-ids alone (each query's ranking then leaves "
                          "out every item sharing its id)", key="--gallery-ids")
    if args.gallery_embeddings:
        _id_files_pair(args, "--gallery-embeddings makes it a query -> gallery evaluation", "row of each side")


def _read_files(args: argparse.Namespace, distance: str) -> tuple[Any, Any, Any, Any, Any, str]:
    """The embedding and label files (or an embed folder's), matched: ``(q, ql, g, gl, scale names, source)``
    (``g``, ``gl``: ``None`` for leave-one-out). Notes labels whose scales look reversed; refuses all-zero rows
    under cosine."""
    from dynametric.retrieval.evaluate_io import embeddings_file, read_evaluation_files

    for given in (args.embeddings, args.gallery_embeddings):  # before what a file would need (--labels)
        if given and not Path(given).exists():
            raise InputError("file not found", file=given)

    q, ql, g, gl, names, source = read_evaluation_files(args.embeddings, args.labels,
                                                        args.gallery_embeddings, args.gallery_labels)
    import numpy as np

    from dynametric.labels import reversed_scales

    both = np.asarray(ql) if gl is None else np.concatenate([np.asarray(ql), np.asarray(gl)])
    looks = reversed_scales(both.reshape(len(both), -1), names)
    if looks is not None:
        print(f"note: {looks}", file=sys.stderr)
    if distance == "cosine":
        from dynametric.utils.readers import refuse_zero_rows

        refuse_zero_rows(q, embeddings_file(args.embeddings))
        if g is not None:
            refuse_zero_rows(g, embeddings_file(args.gallery_embeddings))
    return q, ql, g, gl, names, source


def _evaluate_files(args: argparse.Namespace, evaluator: _Evaluator) -> _Evaluation:
    """Evaluate the bundled example or the embedding files: leave-one-out, or query -> gallery with a gallery."""
    if args.example:
        from dynametric.examples import make_example

        q, ql, names = make_example()
        g = gl = None
        source = "bundled example (1200 items, 3 scales)"
    else:
        q, ql, g, gl, names, source = _read_files(args, evaluator.options["distance"])
    result = evaluator(q, ql, g, gl, scale_names=names)
    info = None
    if args.query_ids:  # the exclusion the id files made, recorded as with --checkpoint
        from dynametric.retrieval.evaluate_io import id_files_exclusion

        sizes = {"queries": len(q)} if g is None else {"queries": len(q), "gallery": len(g)}
        info = ({"name": "leave_one_out" if g is None else "query_gallery", **sizes,
                 "same_sequence_excluded": False}
                | id_files_exclusion(evaluator.ids[0], evaluator.ids[1], args.query_ids, args.gallery_ids))
    return _Evaluation(result, source, "leave-one-out" if g is None else "query -> gallery", len(q), info)


def _report(args: argparse.Namespace, evaluation: _Evaluation, evaluator: _Evaluator, output: _Output) -> None:
    """Write the per-query CSV, print what was evaluated and the tables (the per-category one too), write the
    JSON."""
    from dynametric.metrics.io import write_per_query_csv
    from dynametric.utils.io import nan_to_null

    result = evaluation.result
    if args.per_query_out:
        result, table = result
        write_per_query_csv(args.per_query_out, table, key="--per-query", categories=evaluator.categories)
        print(f"wrote {args.per_query_out}", file=sys.stderr)
    # the JSON file first: an error printing the tables (stdout on a full disk) loses nothing written to files
    obj = nan_to_null(result) | ({} if evaluation.info is None else {"protocol": evaluation.info})
    output.write_json_file(obj)
    by_category = result.pop("by_category", None)
    output.say(f"{evaluation.source}: {evaluation.protocol}, distance {evaluator.options['distance']}, "
               f"{evaluation.num_queries} queries")
    output.say(format_table(result))
    if by_category:
        split = [m for e in by_category.values() for m in e["mean"]]
        output.say(format_category_table(by_category, [m for m in result["mean"] if m not in split]))
    output.print_json(obj)
