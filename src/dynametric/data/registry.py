"""``build_dataset(format, root, split, transform=None, **options)``: one entry point for every dataset format.

Options understood by every file format:

* ``mode``: ``"strict"`` (default; any malformed row, missing image or image listed twice in a split raises
  one error listing all of them with file and line) or ``"lenient"`` (such records are skipped and listed in
  ``dataset.report``);
* ``check_files`` (default ``True``): require every listed image to exist;
* ``check_hierarchy`` (default ``True``): each finest class must have exactly one parent per coarser scale
  (a violation raises in both modes, naming the class, its parents and the lines);
* ``swap_rb`` (default ``False``): exchange the R and B channels after decoding (DyML colour note);
* ``skip_corrupt`` (default ``False``): log, count and replace undecodable images instead of raising.

Format-specific options are listed in :data:`FORMATS` (``<format>.options``). ``synthetic`` forwards its options to
:class:`dynametric.data.synthetic.SyntheticHierarchy` (``root`` is ignored).
"""

from __future__ import annotations

import contextlib
import gc
import inspect
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, cast

from dynametric.data.base import HierarchicalImageDataset, SplitRecords, yes_no
from dynametric.data.dyml import DyMLFormat
from dynametric.data.generic import CSVFormat, FolderFormat
from dynametric.data.oml import CroppedImageDataset, OMLFormat
from dynametric.data.standard import Cars196Format, CUB200Format, InShopFormat, SOPFormat
from dynametric.errors import ConfigError, InputError


class DatasetFormat(Protocol):
    """A reader: ``splits(root, **options) -> [split, ...]`` and ``read(root, split, **options) -> SplitRecords``
    (each format names its own keyword options). A format whose scale names do not depend on the data also has
    ``declared_scales(**options) -> (name, ...)`` (:func:`declared_scale_names`)."""

    name: str
    options: dict[str, object]
    root_expected: str  # what the root holds, in the error of a missing one (``... (expected <root_expected>)``)

    def splits(self, *args: Any, **kwargs: Any) -> list[str]: ...  # (root, **options)

    def read(self, *args: Any, **kwargs: Any) -> SplitRecords: ...  # (root, split, **options)


FORMATS: dict[str, DatasetFormat] = {
    "cub200": CUB200Format(),
    "cars196": Cars196Format(),
    "sop": SOPFormat(),
    "inshop": InShopFormat(),
    "dyml-vehicle": DyMLFormat("vehicle"),
    "dyml-animal": DyMLFormat("animal"),
    "dyml-product": DyMLFormat("product"),
    "csv": CSVFormat(),
    "folder": FolderFormat(),
    "oml": OMLFormat(),
}
SYNTHETIC = "synthetic"
FORMAT_NAMES: tuple[str, ...] = (*FORMATS, SYNTHETIC)
"""The built-in formats' names (fixed at import); :func:`format_names` adds those a user's module registered."""
COMMON_OPTIONS: dict[str, object] = {"mode": "strict", "check_files": True, "check_hierarchy": True,
                                     "swap_rb": False, "skip_corrupt": False}


def format_names() -> tuple[str, ...]:
    """The names ``data.format`` takes now: every reader of :data:`FORMATS` (the built-in ones and those a user's
    module registered since: docs/extending.md), then ``synthetic``."""
    return (*(name for name in FORMATS if name != SYNTHETIC), SYNTHETIC)


def get_format(name: str) -> DatasetFormat:
    """The reader for ``name``; an unknown name raises a ConfigError listing the valid ones."""
    if name not in FORMATS:
        from dynametric.utils.registry import with_import_hint

        raise ConfigError(with_import_hint(f"unknown dataset format {name!r}; valid formats: "
                                           f"{', '.join(format_names())}"), key="format")
    return FORMATS[name]


def dyml_variant(name: str) -> str | None:
    """The DyML variant (``vehicle``, ``animal``, ``product``) a format name reads, from the reader registered under
    it; ``None`` for any other format."""
    fmt = FORMATS.get(name)
    return fmt.variant if isinstance(fmt, DyMLFormat) else None


def root_expected(name: str) -> str:
    """What a root of format ``name`` holds (``an OML dataset CSV (label, path, ...) or its folder``), as the
    reader's own error of a missing root says it: every check of a root before a reader runs says the same."""
    return FORMATS[name].root_expected if name in FORMATS else f"the {name} dataset"


def _synthetic_class() -> type:
    from dynametric.data.synthetic import SyntheticHierarchy  # imported on first use (keeps PIL drawing out of import)

    return SyntheticHierarchy


def synthetic_splits() -> list[str]:
    import dynametric.data.synthetic as synthetic

    return list(getattr(synthetic, "SPLITS", ("train", "val", "test")))


def split_options(fmt: DatasetFormat, options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split ``options`` into (common, reader-specific) and reject unknown keys naming the valid ones, and a value
    of an on/off option (one whose default is ``True`` or ``False``: ``swap_rb``, ``allow_outside_root`` ...) that
    is not ``True`` / ``False`` (:func:`~dynametric.data.base.yes_no`; ``'no'`` would have read as on)."""
    valid = set(COMMON_OPTIONS) | set(fmt.options)
    bad = sorted(set(options) - valid)
    if bad:
        raise ConfigError(f"unknown option(s) {bad} for format {fmt.name!r}; valid options: {sorted(valid)}",
                          key=bad[0])
    defaults = {**fmt.options, **COMMON_OPTIONS}
    options = {k: yes_no(v, k) if isinstance(defaults[k], bool) else v for k, v in options.items()}
    common = {k: options.get(k, v) for k, v in COMMON_OPTIONS.items()}
    reader = {k: options[k] for k in fmt.options if k in options}
    reader["check_files"] = common["check_files"]
    return common, reader


def list_splits(format: str, root: str | Path | None, **options: Any) -> list[str]:
    """The split names a dataset offers (those present on disk where the format allows optional splits)."""
    if format == SYNTHETIC:
        return synthetic_splits()
    fmt = get_format(format)
    _, reader = split_options(fmt, options)
    reader.pop("check_files")
    return fmt.splits(root, **reader)


def declared_scale_names(format: str, **options: Any) -> tuple[str, ...] | None:
    """The scale names the training split of ``format`` has, when the format fixes them without reading any data
    (``cub200``: ``fine``; ``sop``: ``product``, ``category``; ``inshop``: ``item`` [, ``category``]; DyML and
    ``synthetic``: ``fine``, ``middle``, ``coarse``; ``folder`` with the option ``scale_names``); ``None`` where
    they come from the data (a ``csv`` header, an ``oml`` file's columns, a folder tree's depth). Unknown options
    are refused as :func:`build_dataset` refuses them."""
    if format == SYNTHETIC:
        import dynametric.data.synthetic as synthetic

        return tuple(synthetic.SCALE_NAMES)
    fmt = get_format(format)
    _, reader = split_options(fmt, options)
    reader.pop("check_files")
    declare = getattr(fmt, "declared_scales", None)
    return None if declare is None else declare(**reader)


def root_notes(format: str, root: str | Path | None, **options: Any) -> list[str]:
    """What a format says about the dataset root itself, before any split is read (a DyML release read as another
    one: ``the root is named 'dyml_vehicle' but is read as dyml-animal``): the notes ``data inspect`` prints with the
    splits' and a run says as ``note:`` lines. ``[]`` for a format with nothing to say, and for a root that is not
    there (the reading of a split says so)."""
    if format == SYNTHETIC:
        return []
    notes = getattr(get_format(format), "root_notes", None)
    if notes is None:
        return []
    try:
        return list(notes(root, **options))
    except InputError:
        return []


def class_ids_comparable(format: str) -> bool:
    """Whether a raw class id names the same class in every split of ``format`` (one id space for the dataset), so
    that a class id found in two splits is one class in both. ``False`` for the DyML formats, whose benchmark files
    number their classes on their own (a format says so with ``class_ids_comparable = False``)."""
    if format == SYNTHETIC:
        return True
    return bool(getattr(get_format(format), "class_ids_comparable", True))


@contextlib.contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a reader builds its records: a CSV of 200,000 rows allocates
    a list per row, and the collector's repeated passes over the growing, acyclic containers took ~40 % of the
    read (docs/benchmarks.md, *data_readers*). Reference counting still frees everything; the collector is switched
    back on afterwards (if it was on), also when the read fails."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def build_dataset(format: str, root: str | Path | None, split: str,
                  transform: Callable[[Any], Any] | None = None, **options: Any) -> Any:
    """Build split ``split`` of the dataset at ``root`` in format ``format`` (see the module docstring).

    Returns a :class:`HierarchicalImageDataset` (``synthetic``: a ``SyntheticHierarchy``); items are
    ``(transform(image), LongTensor[S])`` with labels finest first.
    """
    if format == SYNTHETIC:
        cls = _synthetic_class()
        params = inspect.signature(cls).parameters
        bad = sorted(set(options) - set(params))
        if bad:
            raise ConfigError(f"unknown option(s) {bad} for format 'synthetic'; valid options: "
                              f"{sorted(p for p in params if p not in ('split', 'transform'))}", key=bad[0])
        return cls(split=split, transform=transform, **options)
    fmt = get_format(format)
    common, reader = split_options(fmt, options)
    with cyclic_gc_paused():  # millions of small lists, none of them cyclic: the collector's passes cost ~40 %
        records = fmt.read(root, split, **reader)
        boxes = getattr(records, "boxes", None)  # crop boxes (oml); None or all-None: whole images
        cropped = boxes is not None and any(b is not None for b in boxes)
        cls = CroppedImageDataset if cropped else HierarchicalImageDataset
        dataset = cls.from_records(
            records, transform=transform, mode=common["mode"], check_hierarchy=common["check_hierarchy"],
            swap_rb=common["swap_rb"], skip_corrupt=common["skip_corrupt"], name=fmt.name)
    if cropped:
        cast(CroppedImageDataset, dataset).boxes = list(boxes or ())
    sequences = getattr(records, "sequences", None)  # oml: the validation rows' sequence ids
    if sequences is not None:
        dataset.sequence_ids = list(sequences)
    categories = getattr(records, "categories", None)  # oml: the rows' category column (a scale or not)
    if categories is not None:
        dataset.category_ids = list(categories)
    dataset.category_note = getattr(records, "category_note", None)  # oml: why a category column gave none
    return dataset
