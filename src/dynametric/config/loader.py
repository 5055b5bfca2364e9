"""Reading a run configuration: YAML files + dotted command-line overrides, validated against the schema.

Resolution order: schema defaults ← YAML file (and the files it ``extends``) ← overrides such as
``trainer.max_epochs=3 loss.name=TripletMarginLoss`` (values parsed as YAML 1.2, files too: ``3`` is an int,
``012`` is 12, ``[1, 10]`` a list, ``null`` is None, ``yes`` and ``1:30`` are strings; a key that takes a string
takes an override's text as typed). An unknown key or a value of the wrong type raises
:class:`~dynametric.errors.ConfigError` naming the dotted key (and the file and line when it came from a file) and
suggesting the closest valid key; each section's own checks (:mod:`dynametric.config.schema`, loss and miner names
included) run as it is read.

The resolved :class:`Config` serialises to YAML (:func:`save_config`, :func:`config_to_yaml`) and back without loss,
and :func:`config_hash` gives a stable hash of its content.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import datetime
import difflib
import hashlib
import json
import math
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from dynametric.config.schema import (
    Config,
    _hints,
    _section_of,
    _suggest,
    keys_by_choice,
    named_options,
    schema_default,
    schema_keys,
)
from dynametric.errors import ConfigError, first_sentence
from dynametric.utils.arguments import short_repr
from dynametric.utils.io import atomic_write_text

# --------------------------------------------------------------------------------------------------- YAML


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads plain scalars by the YAML 1.2 core schema (docs/config.md, "How values are read"):
    ``null`` / ``~`` / nothing, ``true`` / ``false`` (each in three cases), decimal integers (``012`` is 12),
    ``0o17`` (octal), ``0x1F`` (hexadecimal), floats with or without a dot (``1e-5``), ``.inf``, ``.nan``; anything
    else is a string. YAML 1.1's other forms, which PyYAML reads (``010`` octal, ``1:30`` base 60, ``1_000``,
    ``0b101``, ``yes`` / ``no`` / ``on`` / ``off``, dates), are strings here; ``yes`` / ``no`` / ``on`` / ``off``
    come out as :class:`_Yaml11Word`, so that a free-form mapping refuses them rather than keep a string that a
    component would take as true (:func:`_free_value`)."""


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes every string either YAML 1.1 or the loader's YAML 1.2 would read as another type
    (``"0o17"``, ``"0E0"``, ``"yes"``, ``"1:30"``), so that what it writes loads back equal, here and elsewhere."""


class _Yaml11Word(str):
    """A plain (unquoted) ``yes``, ``no``, ``on`` or ``off`` (any of YAML 1.1's cases): a string under YAML 1.2, a
    boolean under YAML 1.1. A key that takes a string takes it as the string; one that takes a bool, or a free-form
    mapping, refuses it (:func:`_try_coerce`)."""

    __slots__ = ()


_YAML11_WORD_TAG = "tag:dynametric:yaml11-word"
_YAML_1_1_ONLY = {f"tag:yaml.org,2002:{name}" for name in ("bool", "int", "float", "timestamp", "value")}
_BOOL_1_2 = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_YAML11_WORDS = re.compile(r"^(?:yes|Yes|YES|no|No|NO|on|On|ON|off|Off|OFF)$")
_INT_1_2 = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT_1_2 = re.compile(r"""^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?
                  |[-+]?\.(?:inf|Inf|INF)
                  |\.(?:nan|NaN|NAN))$""", re.X)

_Loader.yaml_implicit_resolvers = {first: [(tag, rx) for tag, rx in resolvers if tag not in _YAML_1_1_ONLY]
                                   for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", _BOOL_1_2, list("tTfF"))
_Loader.add_implicit_resolver(_YAML11_WORD_TAG, _YAML11_WORDS, list("yYnNoO"))
for _cls in (_Loader, _Dumper):  # int first: a float's pattern also matches a plain integer
    _cls.add_implicit_resolver("tag:yaml.org,2002:int", _INT_1_2, list("-+0123456789"))
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_1_2, list("-+0123456789."))


def _construct_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    """A YAML 1.2 integer (also under an explicit ``!!int``): decimal whatever its leading zeros, ``0o``, ``0x``."""
    text = str(loader.construct_scalar(node))  # type: ignore[arg-type]
    if not _INT_1_2.match(text):
        raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not a YAML 1.2 integer (decimal digits, "
                                                "0o octal or 0x hexadecimal)", node.start_mark)
    return int(text[2:], 8 if text[1] == "o" else 16) if text[:2] in ("0o", "0x") else int(text, 10)


def _construct_float(loader: yaml.SafeLoader, node: yaml.Node) -> float:
    """A YAML 1.2 float (also under an explicit ``!!float``): no base 60, no ``_``."""
    text = str(loader.construct_scalar(node))  # type: ignore[arg-type]
    if not _FLOAT_1_2.match(text):
        raise yaml.constructor.ConstructorError(None, None, f"{text!r} is not a YAML 1.2 number", node.start_mark)
    lowered = text.lower()
    if lowered.endswith(".inf"):
        return -math.inf if lowered.startswith("-") else math.inf
    return math.nan if lowered == ".nan" else float(text)


def _construct_yaml11_word(loader: yaml.SafeLoader, node: yaml.Node) -> _Yaml11Word:
    return _Yaml11Word(loader.construct_scalar(node))  # type: ignore[arg-type]


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_Loader.add_constructor(_YAML11_WORD_TAG, _construct_yaml11_word)

_YAML_LINE_BREAKS = ("\x85", "\u2028", "\u2029")


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    """Strings holding a Unicode line break (NEL, LS, PS) are written double-quoted, where YAML escapes them;
    PyYAML's single-quoted form would fold a NEL into a space and the value would not load back."""
    style = '"' if any(ch in value for ch in _YAML_LINE_BREAKS) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(_Yaml11Word, _represent_str)


_YAML_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


def _line_column(text: str, position: int) -> tuple[int, int]:
    """The 1-based line and column of the character at ``position`` of ``text``, as PyYAML's reader counts them (so
    as its marks name the other errors): a line ends at ``\n``, ``\r\n``, a lone ``\r`` (old Mac files), ``\x85``,
    ``\u2028`` or ``\u2029``; a ``\ufeff`` takes no column."""
    line, line_start = 1, 0
    for match in _YAML_BREAK.finditer(text, 0, position):
        if match.group() == "\r" and text.startswith("\n", match.end()):  # a \r\n cut at ``position``: one break
            continue
        line, line_start = line + 1, match.end()
    return line, position - line_start - text.count("\ufeff", line_start, position) + 1


def _failing_scalar(node: yaml.Node | None) -> yaml.ScalarNode | None:
    """The first scalar of the document ``node`` (in file order) that PyYAML cannot construct (a date such as
    ``2020-13-45``), to name its line and column."""
    constructor = _Loader("")
    stack = [] if node is None else [node]
    seen: set[int] = set()
    while stack:
        n = stack.pop()
        if id(n) in seen:  # an alias's node: tried once, where its anchor is
            continue
        seen.add(id(n))
        if isinstance(n, yaml.ScalarNode):
            try:
                constructor.construct_object(n, deep=True)
            except Exception:  # noqa: BLE001 - whatever the constructor raised is what load raised
                return n
        elif isinstance(n, yaml.MappingNode):
            stack += [item for pair in reversed(n.value) for item in reversed(pair)]
        elif isinstance(n, yaml.SequenceNode):
            stack += reversed(n.value)
    return None


MAX_ALIAS_VALUES = 100_000
"""The most values a YAML document's aliases (``*name``) may add by repeating what their anchors (``&name``) hold:
a few kilobytes of nested aliases (a "billion laughs" file) expand to billions of values, which every later step
(line numbers, checks, copies) would visit one by one."""


def _children(n: yaml.Node) -> list[yaml.Node]:
    if isinstance(n, yaml.MappingNode):
        return [item for pair in n.value for item in pair]
    if isinstance(n, yaml.SequenceNode):
        return list(n.value)
    return []


def _check_alias_expansion(node: yaml.Node | None, file: str) -> None:
    """Refuse a document whose aliases repeat more than :data:`MAX_ALIAS_VALUES` values: the values it holds once
    every alias is written out (each node counted once per path to it, computed per distinct node, so the count
    itself costs no more than the file) less the nodes the file writes."""
    if node is None:
        return
    size: dict[int, int] = {}
    open_: set[int] = set()  # nodes whose children are being counted
    stack: list[tuple[yaml.Node, bool]] = [(node, False)]
    while stack:  # post-order without recursion: a deeply nested file cannot exhaust the stack here
        n, done = stack.pop()
        if done:
            size[id(n)] = 1 + sum(size[id(c)] for c in _children(n))
            open_.discard(id(n))
            continue
        if id(n) in size:
            continue
        if id(n) in open_:
            raise ConfigError(f"invalid YAML at column {n.start_mark.column + 1}: an alias (*name) inside the value "
                              "its anchor (&name) names: a value cannot hold itself", file=file,
                              line=n.start_mark.line + 1)
        open_.add(id(n))
        stack.append((n, True))
        stack += [(c, False) for c in _children(n) if id(c) not in size]
    expanded, written = size[id(node)], len(size)
    if expanded - written > MAX_ALIAS_VALUES:
        raise ConfigError(f"its aliases (*name) expand to {expanded - written:,} values more than the file writes "
                          f"(at most {MAX_ALIAS_VALUES:,}: each alias repeats what its anchor holds, and aliases "
                          "inside anchors multiply); write the values out, or use fewer aliases", file=file)


def _parse_yaml(text: str, file: str) -> tuple[Any, dict[str, int]]:
    """YAML text → (python object, {dotted key: 1-based line}); an error names its line and column."""
    node = None
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if mark is None:
            raise ConfigError(f"invalid YAML: {exc.problem or exc.context or exc}", file=file) from None
        raise ConfigError(f"invalid YAML at column {mark.column + 1}: {exc.problem or exc.context}", file=file,
                          line=mark.line + 1) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow (a control character)
        line, column = _line_column(text, exc.position)
        char = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise ConfigError(f"invalid YAML at column {column}: character U+{char:04X} is not allowed in YAML (it is "
                          "not printable)", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {first_sentence(exc)}", file=file) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # a scalar PyYAML cannot construct
        bad = None if isinstance(exc, RecursionError) else _failing_scalar(node)
        why = _why_not_built(exc)
        if bad is None:
            raise ConfigError(f"invalid YAML value ({why})", file=file) from None
        raise ConfigError(f"invalid YAML value {short_repr(bad.value)} at column {bad.start_mark.column + 1} ({why})",
                          file=file, line=bad.start_mark.line + 1) from None
    _check_alias_expansion(node, file)
    data = _unshare(data)
    lines: dict[str, int] = {}

    def walk(n: yaml.Node | None, prefix: str) -> None:
        if isinstance(n, yaml.MappingNode):
            for k, v in n.value:
                name = _key_text(k)
                key = f"{prefix}.{name}" if prefix else name
                if key in lines:  # PyYAML would silently keep the last value
                    raise ConfigError(f"duplicate key (first given on line {lines[key]})", file=file,
                                      line=k.start_mark.line + 1, key=key)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, f"{prefix}[{i}]")

    walk(node, "")
    return data, lines


def _unshare(value: Any) -> Any:
    """``value`` with every mapping and list in it a new object of its own: PyYAML gives each alias (``*name``) and
    each ``<<: *name`` merge the very object its anchor made, so a change to one place (an override, a rename's
    dropped options) would change the others with it. Walked without recursion; the number of values is bounded by
    :data:`MAX_ALIAS_VALUES` (checked first)."""
    if not isinstance(value, (dict, list)):
        return value
    root: Any = {} if isinstance(value, dict) else []
    stack: list[tuple[Any, Any]] = [(value, root)]
    while stack:
        old, new = stack.pop()
        items = old.items() if isinstance(old, dict) else enumerate(old)
        for k, v in items:
            if isinstance(v, (dict, list)):
                child: Any = {} if isinstance(v, dict) else []
                stack.append((v, child))
                v = child
            if isinstance(new, dict):
                new[k] = v
            else:
                new.append(v)
    return root


def _key_text(node: yaml.Node) -> str:
    """A mapping key's node as the checks spell the key (``str`` of what it loads as: ``~`` is ``None``, ``0x1`` is
    ``1``), so that a line is found for every key, and two spellings of one key are one key (a duplicate)."""
    if not isinstance(node, yaml.ScalarNode):
        return str(node.value)
    if node.tag == "tag:yaml.org,2002:str":
        return str(node.value)
    try:
        return str(_Loader("").construct_object(node, deep=True))
    except Exception:  # noqa: BLE001 - a key that does not load was refused when loading; its text then
        return str(node.value)


def parse_value(text: str) -> Any:
    """Parse one override value as YAML 1.2 (``3`` → 3, ``012`` → 12, ``1e-5`` → 1e-05, ``[1, 2]`` → list,
    ``null`` → None, ``yes`` and ``1:30`` → strings); text that is not YAML is the string itself, but for text that
    starts like a YAML quoted string, list or mapping (``'a``, ``[1, 2``, ``{margin:``), and a value YAML cannot
    build (an integer of more than 4,300 digits, an alias inside its own anchor), which are a one-line
    :class:`ConfigError`."""
    return _plain(_parse_override(text))


_OVERRIDE_FILE = "<command line>"


def _parse_override(text: str) -> Any:
    """:func:`parse_value`, keeping YAML 1.1's ``yes`` / ``no`` / ``on`` / ``off`` as :class:`_Yaml11Word`. A
    :class:`ConfigError` it raises names no key (the caller adds it)."""
    if not text.strip():
        return None
    try:
        _check_alias_expansion(yaml.compose(text, Loader=_Loader), _OVERRIDE_FILE)
        value = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        typed = text.strip()
        if not typed.startswith(("'", '"', "[", "{")):  # not meant as YAML: the text itself
            return text
        problem = getattr(exc, "problem", None) or getattr(exc, "context", None) or first_sentence(exc)
        what = "quoted string" if typed[0] in "'\"" else "list" if typed[0] == "[" else "mapping"
        hint = ("; on a shell command line put the whole KEY=VALUE in quotes, as in 'loss.kwargs={margin: 0.1}' (a "
                "space splits it into two words); text that starts with [ or { goes in YAML quotes: KEY=\"'[text'\""
                if typed[0] in "[{" else "; close the quote, or write the text without quotes")
        raise ConfigError(f"invalid YAML: {short_repr(typed)} starts a {what} that does not parse ({problem})"
                          f"{hint}") from None
    except ConfigError as exc:  # an alias inside its own anchor, or one that expands too far
        raise ConfigError(exc.message) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # a scalar PyYAML cannot build
        raise ConfigError(f"invalid YAML value ({_why_not_built(exc)})") from None
    return _unshare(value)


def _why_not_built(exc: BaseException) -> str:
    """Why PyYAML could not build a value, in a few words: an integer longer than Python reads, else the error."""
    if isinstance(exc, ValueError) and "integer string conversion" in str(exc):
        return f"an integer of more than {sys.get_int_max_str_digits():,} digits, the most Python reads"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return f"{type(exc).__name__}: {first_sentence(exc)}"


def _plain(value: Any) -> Any:
    """``value`` with every :class:`_Yaml11Word` in it (keys too) a plain ``str``."""
    if isinstance(value, _Yaml11Word):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


def _deep_merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(dict(out[key]), value)
        else:
            out[key] = value
    return out


@dataclass
class _Source:
    """Where raw values came from: per dotted key, a (file, line) pair for error messages; ``notes``: what the
    layering left out (:func:`config_notes`)."""

    where: dict[str, tuple[str, int | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    replaced: list[tuple[str, str, list[tuple[list[str | int], Any, tuple[str, int | None]]]]] = field(
        default_factory=list)
    """Per override that gave a whole mapping where a file gave one: (key, value text, the file's keys it dropped:
    (steps, value, where set)), said once every override is applied (:func:`_note_replaced`)."""

    def locate(self, key: str) -> tuple[str | None, int | None]:
        probe = key
        while probe:
            if probe in self.where:
                return self.where[probe]
            parent = _parent_key(probe)
            probe = parent if parent != probe else ""
        for known, loc in self.where.items():  # a section known only through one of its keys
            if known.startswith((key + ".", key + "[")):
                return loc
        return None, None


def _not_a_file(path: Path, named: bool = False) -> str:
    """Why ``path`` cannot be read as a config file (``named``: the message names it)."""
    if path.is_dir():
        return f"{path} is a folder, not a YAML config file" if named else "is a folder, not a YAML config file"
    if path.exists():  # a device (/dev/null), a pipe, a socket: read as a file, a pipe could wait forever
        what = "is not a regular file (a device, a pipe or a socket), not a YAML config file: save the config to a file"
        return f"{path} {what}" if named else what
    hint = ""
    if "configs" in path.parts[:-1]:
        hint = ("; the protocol configs under configs/ are files of the repository checkout, not installed with the "
                "package: run from the checkout's root folder or give the file's full path")
    return (f"config file not found: {path}" if named else "config file not found") + hint


def _read_file(path: Path, source: _Source, chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve()
    if path in chain:
        raise ConfigError(f"'extends' cycle: {' -> '.join(str(p) for p in (*chain, path))}", file=path,
                          key="extends")
    if not path.is_file():
        raise ConfigError(_not_a_file(path), file=path)
    raw = path.read_bytes()
    raw = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw  # a byte order mark is not part of the text
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:  # named by line and column, as YAML would count them
        before = raw[:exc.start].decode("utf-8")
        line, column = _line_column(before, len(before))
        raise ConfigError(f"not a UTF-8 YAML file: byte 0x{raw[exc.start]:02x} at column {column} cannot be decoded "
                          "(save the file as UTF-8)", file=path, line=line) from None
    data, lines = _parse_yaml(text, str(path))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"expected a mapping of sections at the top level, got {type(data).__name__}", file=path)
    base: dict[str, Any] = {}
    parents = data.pop("extends", None)
    if parents is not None:
        if isinstance(parents, str):
            parents = [parents]
        if not isinstance(parents, list) or not all(isinstance(p, str) for p in parents):
            raise ConfigError("expected a file path or a list of file paths", file=path, line=lines.get("extends"),
                              key="extends")
        for parent in parents:
            target = path.parent / parent
            if not target.is_file():  # named where the file refers to it
                raise ConfigError(_not_a_file(target, named=True), file=path, line=lines.get("extends"),
                                  key="extends")
            upper = _read_file(target, source, (*chain, path))
            _drop_options_of_renamed(base, upper, source, lambda key: _place(source.where.get(key)))
            base = _deep_merge(base, upper)
    _drop_options_of_renamed(base, data, source, lambda key: _place((str(path), lines.get(key))))
    for key, line in lines.items():
        source.where[key] = (str(path), line)
    return _deep_merge(base, data)


# ------------------------------------------------------------------------------------- a name and its options
# A section's ``(name, options)`` pairs (:func:`dynametric.config.schema.named_options`: ``loss.name`` /
# ``loss.kwargs``, ``model.backbone`` / ``model.backbone_kwargs``, ...): when a layer (a file over the files it
# extends, the command line over the file) changes the name and not the options, the options the lower layers
# wrote are dropped (they were written for the other component), and a note says so (config_notes). Options the
# changing layer writes itself are kept; a name set again to the same value keeps them all.

_ABSENT = object()


def _place(where: tuple[str, int | None] | None) -> str:
    """``in file:line`` / ``on the command line`` for a (file, line) of :class:`_Source`."""
    if where is None:
        return "in a config file"
    file, line = where
    if file == "<command line>":
        return "on the command line"
    return f"in {file}" + (f":{line}" if line is not None else "")


def _get(raw: Any, steps: Sequence[str | int]) -> Any:
    node = raw
    for step in steps:
        if isinstance(step, int):
            if not isinstance(node, list) or step >= len(node):
                return _ABSENT
            node = node[step]
        elif isinstance(node, Mapping) and step in node:
            node = node[step]
        else:
            return _ABSENT
    return node


def _section_at(steps: Sequence[str | int]) -> Any:
    """The schema section (dataclass) at the key ``steps`` (``["extra_losses", 0, "miner"]``), else ``None``."""
    return _section_of(_type_at(steps))  # Any (no such key, or inside a free-form mapping): no section


def _name_in(raw: Any, steps: Sequence[str | int], name: str) -> Any:
    """The name a layer's raw dict ``raw`` gives the section at ``steps``: the value it sets, else the schema's
    default (``None`` for a section set to null, or a name without a default: ``miner.name``)."""
    section = _get(raw, steps)
    if isinstance(section, Mapping) and name in section:
        return section[name]
    if section is None:
        return None
    try:
        return schema_default(_shown([*steps, name]))
    except KeyError:
        return None


def _flow(value: Any) -> str:
    return yaml.dump(value, Dumper=_Dumper, default_flow_style=True, width=10**9, allow_unicode=True).strip()


def _forget(source: _Source, key: str) -> None:
    """Remove what ``source`` records for ``key`` and the keys inside it (their values were dropped)."""
    for known in [k for k in source.where if k == key or k.startswith((key + ".", key + "["))]:
        del source.where[known]


def _record_drop(source: _Source, key: str, dropped: Mapping[str, Any], why: str) -> None:
    """The note ``<key> {dropped} from <where the first was set> not used: <why>``; forgets where they were set."""
    first = next((source.where[f"{key}.{k}"] for k in dropped if f"{key}.{k}" in source.where), source.where.get(key))
    origin = "" if first is None else (" from the command line" if first[0] == "<command line>" else
                                       f" from {first[0]}" + (f":{first[1]}" if first[1] is not None else ""))
    source.notes.append(f"{key} {_flow(dict(dropped))}{origin} not used: {why}")
    for k in dropped:
        _forget(source, f"{key}.{k}")


def _note_dropped(source: _Source, steps: Sequence[str | int], name: str, options: str, dropped: Mapping[str, Any],
                  old: Any, new: Any, changed_where: str) -> None:
    section = _shown(steps)
    key = f"{section}.{options}"
    _record_drop(source, key, dropped, f"{section}.{name} changed {changed_where} ({old} -> {new}); set {key} where "
                                       f"{section}.{name} is set to give {new} options")


def _drop_options_of_renamed(lower: dict[str, Any], upper: Mapping[str, Any], source: _Source,
                             where: Callable[[str], str], steps: tuple[str, ...] = ()) -> None:
    """Before ``upper`` (a file) is merged over ``lower`` (what the files below it give): remove from ``lower`` the
    options of every section whose name ``upper`` changes without writing those options itself (mappings merge
    deeply, so they would survive the merge), with a note. ``where(key)``: where ``upper`` sets ``key``. Lists are
    replaced as a whole by a merge, so only sections reached through mappings are looked at."""
    section = _section_at(steps)
    if section is None:
        return
    for name, options in named_options(section):
        if name not in upper:
            continue
        old, new = _name_in(lower, steps, name), upper[name]
        low = _get(lower, steps)
        if old is None or new == old or not isinstance(low, dict) or not isinstance(low.get(options), Mapping):
            continue
        mine = upper.get(options)
        dropped = {k: v for k, v in low[options].items() if not isinstance(mine, Mapping) or k not in mine}
        del low[options]  # what upper writes there replaces it, whole (no deep merge with the other's options)
        if dropped and (mine is None or isinstance(mine, Mapping)):
            _note_dropped(source, steps, name, options, dropped, old, new, where(_shown([*steps, name])))
        if options not in upper:  # the lower layers' line of the mapping no longer says where it was set
            source.where.pop(_shown([*steps, options]), None)
    choice = keys_by_choice(section)
    if choice is not None and choice[0] in upper:
        name, uses = choice
        old, new, low = _name_in(lower, steps, name), upper[name], _get(lower, steps)
        if old is not None and new != old and isinstance(low, dict):
            dropped = {k: v for k, v in low.items() if k in uses and new not in uses[k] and k not in upper}
            for k in dropped:
                del low[k]
            _note_keys_dropped(source, steps, name, dropped, old, new, where(_shown([*steps, name])))
    for key, value in upper.items():
        if isinstance(value, Mapping) and isinstance(key, str) and isinstance(_get(lower, [*steps, key]), dict):
            _drop_options_of_renamed(lower, value, source, where, (*steps, key))


def _note_keys_dropped(source: _Source, steps: Sequence[str | int], name: str, dropped: Mapping[str, Any], old: Any,
                       new: Any, changed_where: str) -> None:
    """The note for the keys of a section (:func:`~dynametric.config.schema.keys_by_choice`) that a lower layer wrote
    and the name a higher layer chose does not use; forgets where they were set."""
    if dropped:
        section = _shown(steps)
        _record_drop(source, section, dropped, f"{section}.{name} changed {changed_where} ({old} -> {new}), which does "
                                               f"not use {' or '.join(sorted(dropped))}")


def _drop_options_renamed_on_command_line(before: Mapping[str, Any], raw: dict[str, Any], keys: Sequence[str],
                                          source: _Source) -> None:
    """After the overrides ``keys`` turned ``before`` (the files' raw dict) into ``raw``: for every section whose
    name an override changed, drop the options that came from a file (the overrides' own are kept), with a note."""
    done: set[str] = set()
    chosen: set[str] = set()  # sections whose keys_by_choice were handled (data.sampler also names options)
    for key in keys:
        steps = _key_steps(key) if _KEY_RE.match(key) else []
        section = _section_at(steps[:-1]) if steps else None
        pairs = dict(named_options(section)) if section is not None else {}
        choice = keys_by_choice(section) if section is not None else None
        if steps and choice is not None and steps[-1] == choice[0] and _shown(steps[:-1]) not in chosen:
            chosen.add(_shown(steps[:-1]))
            _drop_keys_chosen_on_command_line(before, raw, steps[:-1], choice, source)
        if not steps or steps[-1] not in pairs or _shown(steps[:-1]) in done:
            continue
        at, name, options = steps[:-1], str(steps[-1]), pairs[str(steps[-1])]
        done.add(_shown(at))
        sec = _get(raw, at)
        old = _name_in(before, at, name)
        if not isinstance(sec, dict) or old is None or sec.get(name) == old:
            continue
        opts = sec.get(options)
        if not isinstance(opts, dict) or not opts:
            continue
        okey = _shown([*at, options])
        dropped = {k: v for k, v in opts.items() if _origin(source, f"{okey}.{k}") != "<command line>"}
        if not dropped:
            continue
        _note_dropped(source, at, name, options, dropped, old, sec.get(name), "on the command line")
        sec[options] = {k: v for k, v in opts.items() if k not in dropped}
        if _origin(source, okey) != "<command line>":  # a file's line of the mapping no longer says where it was set
            source.where.pop(okey, None)


def _drop_keys_chosen_on_command_line(before: Mapping[str, Any], raw: dict[str, Any], at: Sequence[str | int],
                                      choice: tuple[str, Mapping[str, tuple[str, ...]]], source: _Source) -> None:
    """After an override changed the name of the section at ``at`` whose keys apply to some names only: drop the
    keys a file wrote that the new name does not use (the overrides' own are kept), with a note."""
    name, uses = choice
    sec, old = _get(raw, at), _name_in(before, at, name)
    if not isinstance(sec, dict) or old is None or sec.get(name) == old:
        return
    section = _shown(at)
    dropped = {k: v for k, v in sec.items() if k in uses and sec.get(name) not in uses[k]
               and _origin(source, f"{section}.{k}") != "<command line>"}
    for k in dropped:
        del sec[k]
    _note_keys_dropped(source, at, name, dropped, old, sec.get(name), "on the command line")


def _origin(source: _Source, key: str) -> str | None:
    """The file (or ``<command line>``) that set ``key`` or a mapping above it, as :class:`_Source` records it."""
    probe = key
    while probe:
        if probe in source.where:
            return source.where[probe][0]
        parent = _parent_key(probe)
        probe = parent if parent != probe else ""
    return None


_INDEX = r"(?:\[\d+\])*"  # list entries: extra_losses[0].kwargs.margin
_KEY_RE = re.compile(rf"^[A-Za-z_][A-Za-z0-9_]*{_INDEX}(\.[A-Za-z_@][A-Za-z0-9_@/\-]*{_INDEX})*$")


def _key_steps(key: str) -> list[str | int]:
    """``a.b[1].c`` -> ``["a", "b", 1, "c"]`` (the key already matched :data:`_KEY_RE`)."""
    steps: list[str | int] = []
    for part in key.split("."):
        name, _, rest = part.partition("[")
        steps.append(name)
        steps += [int(i) for i in re.findall(r"\[(\d+)\]", "[" + rest)] if rest else []
    return steps


def _shown(steps: Sequence[str | int]) -> str:
    """The dotted spelling of the first ``steps`` of a key (``extra_losses[0].kwargs``)."""
    out = ""
    for step in steps:
        out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
    return out


_NULL_WORDS = ("null", "Null", "NULL")


def _type_at(steps: Sequence[str | int]) -> Any:
    """The schema type of the key ``steps`` (``["run", "name"]`` → ``str | None``); ``Any`` inside a free-form
    mapping (``loss.kwargs.margin``) or for a key the schema does not have (refused when the config is built)."""
    tp: Any = Config
    for step in steps:
        if isinstance(step, int):
            if typing.get_origin(tp) is not list:
                return Any
            tp = typing.get_args(tp)[0]
            continue
        section = _section_of(tp)
        if section is None or step not in _hints(section):
            return Any
        tp = _hints(section)[step]
    return tp


def _takes_text(tp: Any) -> bool:
    """Whether the schema type ``tp`` is a string, a choice of strings, or either of them or null."""
    if tp is str:
        return True
    origin = typing.get_origin(tp)
    if origin is Literal:
        return all(isinstance(a, str) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        return bool(members) and all(_takes_text(a) for a in members)
    return False


def _override_value(text: str, tp: Any) -> Any:
    """An override's value for a key of schema type ``tp``. Where the key takes a string (``run.name``,
    ``data.root``, ``loss.name``, ...) a scalar is the text as typed, stripped (``run.name=no``, ``=123``,
    ``=2024-01-01``, ``=exp #3``, ``run.output_dir=~/runs`` are those strings), but for ``null`` (or nothing),
    which is null, and for text that starts like a YAML quoted string, list or mapping (``'a b'``, ``[a]``,
    ``{a: 1}``), which is read as YAML; any other key's value is read as YAML 1.2 (:func:`parse_value`)."""
    typed = text.strip()
    if not _takes_text(tp) or typed.startswith(("'", '"', "[", "{")):
        return _parse_override(text)
    return None if not typed or typed in _NULL_WORDS else typed


def apply_override(raw: dict[str, Any], override: str, source: _Source | None = None) -> dict[str, Any]:
    """Set ``a.b.c=value`` in the nested dict ``raw`` (in place; intermediate mappings are created); a list entry
    is addressed by its index, ``extra_losses[0].kwargs.margin=0.3`` (the entry must exist). The value is read as
    :func:`_override_value` says: as typed where the key takes a string, else as YAML 1.2."""
    if "=" not in override:
        raise ConfigError(f"expected an override of the form section.key=value, got {override!r}",
                          file="<command line>")
    key, text = override.split("=", 1)
    key = key.strip()
    if not _KEY_RE.match(key):
        raise ConfigError(f"malformed dotted key in override {override!r} (sections and keys joined by '.', list "
                          "entries by their index: extra_losses[0].kwargs.margin=0.3)", file="<command line>",
                          key=key)
    steps = _key_steps(key)
    node: Any = raw
    for i, step in enumerate(steps):
        last = i == len(steps) - 1
        if isinstance(step, int):
            if not isinstance(node, list):
                raise ConfigError(f"cannot set {key!r}: '{_shown(steps[:i])}' is not a list", file="<command line>",
                                  key=key)
            if step >= len(node):
                raise ConfigError(f"cannot set {key!r}: '{_shown(steps[:i])}' has {len(node)} entr"
                                  f"{'y' if len(node) == 1 else 'ies'}, no index {step} (add entries in the config "
                                  "file)", file="<command line>", key=key)
        elif not isinstance(node, dict):
            raise ConfigError(f"cannot set {key!r}: '{_shown(steps[:i])}' is a value, not a section",
                              file="<command line>", key=key)
        if last:
            try:
                value = _override_value(text, _type_at(steps))
            except ConfigError as exc:
                raise ConfigError(exc.message, file=_OVERRIDE_FILE, key=key) from None
            if source is not None:
                _record_replaced(source, key, node[step] if isinstance(step, int) else node.get(step), value, text)
            node[step] = value
            break
        child = node[step] if isinstance(step, int) else node.get(step)
        if isinstance(steps[i + 1], int):  # indexing into it: it must be a list already
            if child is None:
                raise ConfigError(f"cannot set {key!r}: '{_shown(steps[:i + 1])}' is not set (no list to index)",
                                  file="<command line>", key=key)
        elif not isinstance(child, dict):
            if child is not None and not isinstance(child, Mapping):
                raise ConfigError(f"cannot set {key!r}: '{_shown(steps[:i + 1])}' is a value, not a section",
                                  file="<command line>", key=key)
            child = dict(child or {})
            node[step] = child
        node = child
    if source is not None:
        for known in [k for k in source.where if k.startswith((key + ".", key + "["))]:
            del source.where[known]  # replaced by this value: no longer set where the file set them
        source.where[key] = ("<command line>", None)
    return raw


def _record_replaced(source: _Source, key: str, old: Any, new: Any, text: str) -> None:
    """Before an override that gives a whole mapping (``trainer={seed: 3}``, ``loss.kwargs={swap: false}``) replaces
    the mapping at ``key``: record the keys a file set that only the replaced mapping has, with their values and
    where they were set (:func:`_note_replaced` says them). Keys an earlier override set are not recorded (of two
    overrides the later wins, as documented), nor is anything when the new mapping is empty (``{}`` empties it,
    as plainly meant)."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping) or not new:
        return
    dropped: list[tuple[list[str | int], Any, tuple[str, int | None]]] = []
    stack: list[tuple[list[str | int], Mapping[Any, Any], Mapping[Any, Any]]] = [(_key_steps(key), old, new)]
    while stack:
        at, low, high = stack.pop()
        for k, v in low.items():
            steps = [*at, k]
            if k not in high:
                file, line = source.locate(_shown(steps))
                if file is not None and file != _OVERRIDE_FILE:
                    dropped.append((steps, v, (file, line)))
            elif isinstance(v, Mapping) and isinstance(high[k], Mapping):
                stack.append((steps, v, high[k]))
    if dropped:
        source.replaced.append((key, text, dropped))


def _note_replaced(source: _Source, before: Mapping[str, Any], raw: Mapping[str, Any]) -> None:
    """The notes of :func:`_record_replaced`, once every override is applied: one line per override naming the keys
    it dropped, less the options of a component whose name the command line changed (they were the other
    component's: the rename drops them anyway, and the mapping given is the new component's)."""
    for key, text, dropped in source.replaced:
        kept = [(steps, value, where) for steps, value, where in dropped if not _renamed_options(steps, before, raw)]
        if not kept:
            continue
        kept.sort(key=lambda item: _shown(item[0]))
        file, line = kept[0][2]
        listed = ", ".join(f"{_shown(steps)}: {_short_flow(value)}" for steps, value, _ in kept)
        source.notes.append(f"{listed} from {file}" + (f":{line}" if line is not None else "") + " not used: the "
                            f"override {key}={' '.join(text.split())} gives the whole mapping, which replaces the one "
                            "given before (the keys it leaves out take their defaults); to change one key only, write "
                            f"{key}.KEY=VALUE")


def _renamed_options(steps: Sequence[str | int], before: Mapping[str, Any], raw: Mapping[str, Any]) -> bool:
    """Whether the key ``steps`` lies in the options of a section whose name differs in ``raw`` from ``before``."""
    for j in range(1, len(steps) + 1):
        at, last = steps[:j - 1], steps[j - 1]
        section = _section_at(at) if isinstance(last, str) else None
        for name, options in named_options(section) if section is not None else ():
            if options == last and _name_in(before, at, name) != _name_in(raw, at, name):
                return True
    return False


def _short_flow(value: Any) -> str:
    """``value`` in YAML's one-line form, at most 60 characters."""
    try:
        text = _flow(value)
    except (yaml.YAMLError, ValueError, TypeError):
        text = short_repr(value)
    if text.endswith("\n..."):  # a plain scalar's document end marker
        text = text[:-4].strip()
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------------------------------- typing


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        return f"list of {_type_name(arg)}"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping (section)"
    if tp is Any:
        return "any value"
    return getattr(tp, "__name__", str(tp))


def _describe(value: Any) -> str:
    text = short_repr(str(value) if isinstance(value, _Yaml11Word) else value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({'str' if isinstance(value, str) else type(value).__name__})"


def _scalar_kinds(tp: Any) -> set[type]:
    """Which of bool, int, float and str the schema type ``tp`` takes (a choice of strings is str)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return set().union(*(_scalar_kinds(a) for a in typing.get_args(tp)))
    if origin is Literal:
        return {str}
    return {k for k in (bool, int, float, str) if tp is k}


def _reading_hint(value: Any, tp: Any) -> str:
    """What to write instead, for a value of the wrong type that YAML 1.1 reads otherwise than the loader (YAML 1.2):
    a plain ``1:30``, ``0b101``, ``1_000`` or ``yes`` given for a number or a bool, or a number, bool or date given
    in a file for a string (quote it)."""
    kinds = _scalar_kinds(tp)
    if isinstance(value, str) and kinds & {bool, int, float}:
        try:
            as_1_2, as_1_1 = yaml.load(value, Loader=_Loader), yaml.safe_load(value)
        except Exception:  # noqa: BLE001 - text no YAML reads as one scalar: no hint
            return ""
        fits = bool in kinds if isinstance(as_1_1, bool) else (isinstance(as_1_1, (int, float)) and
                                                                 bool(kinds & {int, float}))
        if isinstance(as_1_2, str) and fits:
            what = "true and false are the only booleans" if isinstance(as_1_1, bool) else f"{value} is not a number"
            meant = str(as_1_1).lower() if isinstance(as_1_1, bool) else repr(as_1_1)
            return (f"; dynametric reads YAML 1.2, where {what} (YAML 1.1 read it as {meant}): write {meant} if that "
                    "is meant")
    if str in kinds and isinstance(value, (bool, int, float, datetime.date)):
        return "; write it in quotes for a string"
    if isinstance(value, str) and _wants_mapping(tp):
        match = re.match(r"^\s*([^\s:#][^\s:]*):(\S.*)$", value)
        if match:
            return (f"; a YAML mapping needs a space after ':' (write {match.group(1)}: {match.group(2)} on its own "
                    "line under the key)")
    return ""


def _wants_mapping(tp: Any) -> bool:
    """Whether the schema type ``tp`` takes a mapping (a section, or a free-form one)."""
    if dataclasses.is_dataclass(tp) or typing.get_origin(tp) is dict:
        return True
    if typing.get_origin(tp) in (Union, types.UnionType):
        return any(_wants_mapping(a) for a in typing.get_args(tp))
    return False


def _free_value(value: Any, key: str, ctx: _Ctx) -> Any:
    """A value in a free-form mapping (``loss.kwargs``, ``data.options``, ...): a plain ``yes`` / ``no`` / ``on`` /
    ``off`` is refused (YAML 1.1 read it as a bool, YAML 1.2 reads a string that a component would take as true),
    and so is a date (from an explicit ``!!timestamp``: no component takes one, and no run folder could record it);
    the rest as given."""
    if isinstance(value, _Yaml11Word):
        meant = "true" if value.lower() in ("yes", "on") else "false"
        raise ctx.error(f"{value} is ambiguous: dynametric reads YAML 1.2, where it is the string {str(value)!r} "
                        f"(YAML 1.1 read it as {meant}); write {meant} for a boolean, or '{value}' in quotes for the "
                        "string", key)
    if isinstance(value, (datetime.date, set, frozenset, bytes)):  # a datetime is a date too
        tag = {set: "!!set", frozenset: "!!set", bytes: "!!binary"}.get(type(value))
        made = "" if tag is None else f", made by {tag} (no component takes one, nor could a run folder record it)"
        raise ctx.error(f"expected a number, a string, true/false, null, a list or a mapping, got {_describe(value)}"
                        f"{made}; write it in quotes for a string" + ("" if tag is None else ", as a list or a "
                                                                      "mapping for several values"), key)
    if isinstance(value, int) and not isinstance(value, bool):
        try:
            str(value)
        except ValueError:  # more digits than Python writes out: the config could be neither hashed nor saved
            raise ctx.error(f"expected a number Python can write out, got {_describe(value)}", key) from None
    if isinstance(value, (list, tuple)):  # a tuple (Python's, or an !!omap entry): the list a run folder records
        return [_free_value(v, f"{key}[{i}]", ctx) for i, v in enumerate(value)]
    if isinstance(value, dict):
        for k in value:
            if not isinstance(k, str):
                raise ctx.error(f"expected string keys, got {_describe(k)}; write a key in quotes for a name", key)
        return {_plain(k): _free_value(v, f"{key}.{k}", ctx) for k, v in value.items()}
    return value


def _printable(key: str) -> str:
    """``key`` with each character that is not printable (a line break, a tab from a quoted key) escaped as Python
    writes it in a string (``\\n``), so that the error stays on one line."""
    return key if key.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in key)


class _Ctx:
    def __init__(self, source: _Source) -> None:
        self.source = source

    def error(self, message: str, key: str) -> ConfigError:
        file, line = self.source.locate(key)
        return ConfigError(message, file=file, line=line, key=_printable(key))


class _NamedKeyCtx(_Ctx):
    """Errors keyed as given, with no file or line (a value from another command line than ``train``'s)."""

    def __init__(self) -> None:
        pass

    def error(self, message: str, key: str) -> ConfigError:
        return ConfigError(message, key=key)


def parse_option_value(text: str, key: str) -> Any:
    """One value of a component's free-form options given outside a config (``data inspect --option KEY=VALUE``),
    read as a ``data.options.KEY=VALUE`` override reads it: YAML 1.2, and a plain ``yes`` / ``no`` / ``on`` /
    ``off`` refused as ambiguous (:func:`_free_value`), the error keyed ``key``."""
    try:
        value = _parse_override(text)
    except ConfigError as exc:
        raise ConfigError(exc.message, key=key) from None
    return _free_value(value, key, _NamedKeyCtx())


_NO_MATCH = object()

INT_MIN, INT_MAX = -(2**63), 2**63 - 1
"""The range of every integer key of the schema (a 64-bit integer), checked after the key's own check (a positive
count, a seed's range) so that its message comes first: a larger one loaded, then failed where torch, numpy or
Python's ``len`` took it (an OverflowError traceback), or when the config was hashed or saved (an integer of more
than 4,300 digits cannot be written out)."""


def _int_range_error(value: int, key: str, ctx: _Ctx) -> ConfigError:
    return ctx.error(f"expected an integer from -2**63 to 2**63 - 1 (what torch, numpy and Python's sizes hold), got "
                     f"{_describe(value)}", key)


def _check_int_range(obj: Any, prefix: str, ctx: _Ctx) -> None:
    """Every integer of the section ``obj``'s own keys (and of its lists of integers) in :data:`INT_MIN` ..
    :data:`INT_MAX`, else the error keyed by its dotted key; free-form mappings are the components' to check."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        items = list(enumerate(value)) if isinstance(value, list) else [(None, value)]
        for i, item in items:
            if isinstance(item, int) and not isinstance(item, bool) and not INT_MIN <= item <= INT_MAX:
                raise _int_range_error(item, key if i is None else f"{key}[{i}]", ctx)


def _coerce(value: Any, tp: Any, key: str, ctx: _Ctx) -> Any:
    """Check ``value`` against type ``tp``; return it (ints widened to float, lists for tuples)."""
    result = _try_coerce(value, tp, key, ctx)
    if result is _NO_MATCH:
        raise ctx.error(f"expected {_type_name(tp)}, got {_describe(value)}" + _reading_hint(value, tp), key)
    return result


def _try_coerce(value: Any, tp: Any, key: str, ctx: _Ctx) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return _free_value(value, key, ctx)
    if isinstance(value, _Yaml11Word):  # a string here; refused by a bool (hinted: _reading_hint)
        value = str(value)
    if tp is type(None):
        return None if value is None else _NO_MATCH
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        # Try exact-kind members first so that a section (dataclass) member reports its own inner errors.
        for arg in args:
            if dataclasses.is_dataclass(arg) and isinstance(value, Mapping):
                return _build(arg, value, key, ctx)
        for arg in args:
            result = _try_coerce(value, arg, key, ctx)
            if result is not _NO_MATCH:
                return result
        return _NO_MATCH
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, str) and value in choices:
            return value
        if isinstance(value, str):
            raise ctx.error(f"expected one of {list(choices)}, got {value!r}" + _suggest(value, choices), key)
        return _NO_MATCH
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key, ctx) if isinstance(value, Mapping) else _NO_MATCH
    if tp is bool:
        return value if isinstance(value, bool) else _NO_MATCH
    if tp is int:
        if not isinstance(value, int) or isinstance(value, bool):
            return _NO_MATCH
        if value.bit_length() > 3 * sys.get_int_max_str_digits():  # too long for the checks to write in a message
            raise _int_range_error(value, key, ctx)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return _NO_MATCH
        return float(value)
    if tp is str:
        return value if isinstance(value, str) else _NO_MATCH
    if origin is list:
        if not isinstance(value, (list, tuple)):
            return _NO_MATCH
        (arg,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, arg, f"{key}[{i}]", ctx) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            return _NO_MATCH
        key_tp, val_tp = typing.get_args(tp) or (str, Any)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ctx.error(f"expected string keys, got {_describe(k)}", key)
            out[_plain(k)] = _coerce(v, val_tp, f"{key}.{k}", ctx)
        return out
    raise TypeError(f"unsupported schema type {tp!r} at {key}")  # a bug in the schema, not user input


def _unknown_key_error(cls: type, name: str, key: str, ctx: _Ctx) -> ConfigError:
    siblings = [f.name for f in dataclasses.fields(cls)]
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    close = difflib.get_close_matches(name, siblings, n=1, cutoff=0.6)
    if close:
        hint = f"did you mean '{parent}{close[0]}'?"
    else:
        # Maybe the key is valid in another section (e.g. optim.max_epochs → trainer.max_epochs).
        all_keys = schema_keys()
        by_leaf: dict[str, str] = {}
        for k in all_keys:
            by_leaf.setdefault(k.rsplit(".", 1)[-1], k)
        leaf = name if name in by_leaf else next(iter(difflib.get_close_matches(name, list(by_leaf), n=1,
                                                                                cutoff=0.75)), None)
        hint = (f"did you mean '{by_leaf[leaf]}'?" if leaf is not None
                else f"valid keys here: {', '.join(siblings)}")
    return ctx.error(f"unknown key; {hint}", key)


def _build(cls: type, raw: Mapping[str, Any], prefix: str, ctx: _Ctx) -> Any:
    hints = _hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if not isinstance(name, str):
            raise ctx.error(f"expected a key name, got {_describe(name)}; valid keys here: "
                            f"{', '.join(f.name for f in dataclasses.fields(cls))}", key)
        if name not in names:
            raise _unknown_key_error(cls, name, key, ctx)
        kwargs[name] = _coerce(value, hints[name], key, ctx)
    for f in dataclasses.fields(cls):
        if f.name not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            key = f"{prefix}.{f.name}" if prefix else f.name
            raise ctx.error(f"missing required key (expected {_type_name(hints[f.name])})", key)
    obj = cls(**kwargs)
    check = getattr(obj, "_validate", None)
    if check is not None:
        try:
            check(prefix or "config")
        except ConfigError as exc:
            if exc.file is None and exc.key is not None:
                raise ctx.error(exc.message, exc.key) from None
            raise
    _check_int_range(obj, prefix, ctx)
    return obj


# --------------------------------------------------------------------------------------------------- API


_SOURCE_ATTR = "_dynametric_source"  # not a dataclass field: equality, hashing and serialisation ignore it


def config_from_dict(raw: Mapping[str, Any], *, source: _Source | None = None) -> Config:
    """Validate a nested dict (e.g. parsed YAML) against the schema; missing keys take their defaults.

    The modules listed under ``imports`` are imported first (:func:`_import_listed`), so that the components they
    register (a loss, a dataset format, ...) pass the checks of their names."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"expected a mapping of sections, got {type(raw).__name__}")
    source = source or _Source()
    ctx = _Ctx(source)
    if "imports" in raw:
        _import_listed(raw["imports"], ctx)
    cfg: Config = _build(Config, raw, "", ctx)
    setattr(cfg, _SOURCE_ATTR, source)  # where each key was set, for errors raised after loading (locate_error)
    return cfg


def check_config(cfg: Config) -> None:
    """Every check :func:`load_config` makes (types, ranges, names, the sections' cross-checks), again, on a
    :class:`Config` built or changed in Python after loading (``cfg.optim.lr = float('nan')``, ``Config(optim=
    OptimConfig(lr=-1))``): the dataclasses check nothing when they are built or assigned, so such a value reached
    the run unchecked. Raises the :class:`ConfigError` the loader would, keyed by the dotted key (no file and line:
    the value may have been set in Python since); ``cfg`` itself is neither changed nor replaced.
    :func:`~dynametric.pipeline.run.run_training` and :func:`~dynametric.pipeline.dryrun.dry_run` call it first."""
    if not isinstance(cfg, Config):
        raise ConfigError(f"expected a dynametric.config.Config, got {type(cfg).__name__}", key="cfg")
    try:
        config_from_dict(config_to_dict(cfg))  # a fresh source: the imports are not announced again
    except ConfigError as exc:
        raise ConfigError(exc.message, key=exc.key) from None  # no file line: the value may not be the file's


def _import_listed(value: Any, ctx: _Ctx) -> None:
    """Import the modules of the config's ``imports`` (a list of module names), before any section is checked; a
    value of the wrong type, a name that is not a module name, or a module that cannot be imported is an error at
    the file and line (or ``<command line>``) that set ``imports``. Modules a file lists are said first, naming the
    file (:func:`~dynametric.utils.registry.announce_imports`: a warning, a ``note:`` line on the command line);
    those given on the command line (``imports=[...]``) are the user's own words and are not repeated."""
    from dynametric.utils.registry import announce_imports, check_module_names, import_modules

    if isinstance(value, str):  # one name: a list is meant
        raise ctx.error(f"expected a list of module names, got {_describe(value)}; write [{value}]", "imports")
    names = _coerce(value, list[str], "imports", ctx)
    try:
        file, _ = ctx.source.locate("imports")
        if file is not None and file != "<command line>":  # a file's list: said before its code runs
            announce_imports(check_module_names(names, "imports"), file)
        import_modules(names, "imports")
    except ConfigError as exc:
        raise ctx.error(exc.message, exc.key or "imports") from exc.__cause__


def locate_error(cfg: Config, exc: ConfigError) -> ConfigError:
    """``exc`` with the place its key was set, as the loader's own errors have it: ``file.yaml:LINE`` (the file of
    the ``extends`` chain that sets it) or ``<command line>``, for an error that names only a dotted key and is
    raised after the config loaded (a loss's keyword checked when the loss is built, a split the data lacks, ...).
    ``exc`` itself when it already names a file or no key, when its key names a whole section (``trainer``: which
    of its values is wrong is not known), or when nothing set the key (a default), nor a mapping or list above it
    given as a whole."""
    where = None if exc.file is not None or exc.key is None else _set_at(cfg, exc.key)
    if where is None:
        return exc
    return ConfigError(exc.message, file=where[0], line=where[1], key=exc.key)


def _set_at(cfg: Config, key: str) -> tuple[str, int | None] | None:
    """Where a file (``(file, line)``) or the command line (``("<command line>", None)``) set ``key`` or a mapping
    or list above it given as a whole; ``None``: nothing set it (a default), or it names a section."""
    source = getattr(cfg, _SOURCE_ATTR, None)
    if not isinstance(source, _Source):
        return None
    probe = key
    while probe:
        if probe in source.where and not _is_section(cfg, probe):  # a section's line would not say which value
            return source.where[probe]
        parent = _parent_key(probe)  # a value inside a mapping or list given as a whole (loss.kwargs={...})
        probe = parent if parent != probe else ""
    return None


def _parent_key(key: str) -> str:
    return re.sub(r"(\.[^.\[]*|\[\d+\])$", "", key)


def _is_section(cfg: Config, key: str) -> bool:
    """Whether the dotted ``key`` names a section of ``cfg`` (``trainer``, ``optim.scheduler``,
    ``extra_losses[0]``), not a value."""
    node: Any = cfg
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", key):
        try:
            node = node[int(index)] if index else getattr(node, name)
        except (AttributeError, IndexError, TypeError, KeyError):
            return False
    return dataclasses.is_dataclass(node)


def key_set(cfg: Config, key: str) -> bool:
    """Whether a file or the command line set the dotted ``key`` of ``cfg`` (or a mapping or list above it given as a
    whole): which of two keys an error about both names, the one the user set (:func:`locate_error` adds where)."""
    return _set_at(cfg, key) is not None


@contextlib.contextmanager
def errors_located(cfg: Config) -> Iterator[None]:
    """Re-raise a :class:`ConfigError` of the block with the file and line of its key (:func:`locate_error`)."""
    try:
        yield
    except ConfigError as exc:
        located = locate_error(cfg, exc)
        if located is exc:
            raise
        raise located from None


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Defaults ← YAML file ``path`` (with its ``extends`` chain) ← dotted ``overrides``; validated.

    A layer (a file over the files it extends, the overrides over the file) that changes a component's name
    (``loss.name``, ``miner.name``, ``model.backbone``, ``optim.name``, ``method.name``, ``data.format``,
    ``data.sampler``, ``run.logger``: :func:`~dynametric.config.schema.named_options`) but not its options drops the
    options the lower layers wrote for the other component (options it writes itself are kept; the same name set
    again keeps them all); likewise a layer that changes ``optim.scheduler.name`` drops the schedule keys the lower
    layers wrote that the new schedule does not use (:func:`~dynametric.config.schema.keys_by_choice`).
    :func:`config_notes` lists each drop in one line.

    ``overrides`` is a list (or tuple) of ``'key=value'`` strings, one override each, as the command line gives them:
    ``load_config(path, ["optim.lr=1e-4"])``. A single string is refused (it would be read letter by letter):
    ``key 'overrides': expected a list of 'key=value' strings, got the string 'optim.lr=1e-4'; write
    ['optim.lr=1e-4']``; so is an entry that is no string (``key 'overrides[0]'``). ``None`` is no override."""
    overrides = _override_list(overrides)
    source = _Source()
    raw: dict[str, Any] = {} if path is None else _read_file(Path(path), source)
    before = copy.deepcopy(raw) if overrides else raw
    for override in overrides:
        apply_override(raw, override, source)
    keys = [o.split("=", 1)[0].strip() for o in overrides if "=" in o]
    _drop_options_renamed_on_command_line(before, raw, keys, source)
    _note_replaced(source, before, raw)
    return config_from_dict(raw, source=source)


def _override_list(overrides: Any) -> list[str]:
    """``overrides`` of :func:`load_config` as a list of strings (``None``: none), else a one-line
    :class:`ConfigError` keyed ``overrides`` (a single string, a mapping, anything else that is no list) or
    ``overrides[i]`` (an entry that is no string)."""
    if overrides is None:
        return []
    if isinstance(overrides, (str, bytes)):
        text = overrides.decode(errors="replace") if isinstance(overrides, bytes) else overrides
        parts = text.split()
        several = len(parts) > 1 and all("=" in part for part in parts)  # 'a=1 b=2': one string per override
        raise ConfigError(f"expected a list of 'key=value' strings, got the string {text!r}; write "
                          f"{parts if several else [text]!r}", key="overrides")
    if not isinstance(overrides, (list, tuple)):
        raise ConfigError(f"expected a list of 'key=value' strings, got {type(overrides).__name__}"
                          + (f" {overrides!r}" if len(repr(overrides)) <= 80 else ""), key="overrides")
    for i, item in enumerate(overrides):
        if not isinstance(item, str):
            raise ConfigError(f"expected a 'key=value' string, got {item!r} ({type(item).__name__})",
                              key=f"overrides[{i}]")
    return list(overrides)


def config_notes(cfg: Config) -> list[str]:
    """What loading ``cfg`` left out, one line each: the options of a component whose name a higher layer changed
    (``loss.kwargs {margin: 0.1} from .../default_run.yaml:13 not used: loss.name changed on the command line
    (TripletMarginLoss -> ArcFaceLoss); ...``). ``dynametric train`` prints them (dry run and run)."""
    source = getattr(cfg, _SOURCE_ATTR, None)
    return list(source.notes) if isinstance(source, _Source) else []


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain nested dict (lists, dicts, scalars) of a config: what :func:`save_config` writes."""
    return dataclasses.asdict(cfg)


def config_to_yaml(cfg: Config) -> str:
    """The resolved config as YAML text (the keys in the schema's order, as :func:`save_config` writes it);
    saved to a file, :func:`load_config` reads back an equal config."""
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True)


def save_config(cfg: Config, path: str | Path, *, header: str | None = None) -> None:
    """Write the resolved config as YAML, atomically, after ``header`` as ``#`` comment lines (if given).
    ``load_config(path)`` gives back an equal config."""
    comment = "".join(f"# {line}".rstrip() + "\n" for line in header.splitlines()) if header else ""
    atomic_write_text(path, comment + config_to_yaml(cfg))


def config_hash(cfg: Config, length: int = 16) -> str:
    """Stable hex digest (SHA-256 of the canonical sorted-key JSON) of the resolved config.

    Equal configs hash equally whatever the key order or the file they came from; any changed value changes it.
    An empty ``imports`` is left out, so a config keeps the hash it had before the key existed.
    """
    content = config_to_dict(cfg)
    if not content.get("imports"):
        content.pop("imports", None)
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:length]

