"""The one rule for the keyword arguments of a registered component (a loss, a miner, an optimizer): which keywords
its constructor takes and whether a value fits the simple type the constructor annotates.

The config's factory (:func:`dynametric.engine.builders.build_component`) and the Python factory of losses
(:func:`dynametric.losses.build_loss`, which also checks a run config's loss values when it loads) both check
through these functions, so a value is refused in the same words whichever way it was given.
"""

from __future__ import annotations

import collections.abc
import difflib
import inspect
import math
import numbers
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

__all__ = ["NUMBER_TYPES", "VALUE_CHARS", "argument_annotations", "expected", "expected_message", "fits", "init_chain",
           "keyword_arguments", "misfit", "parameters", "refuse_unknown_arguments", "short_repr",
           "unknown_argument_message"]

NUMBER_TYPES = (int, float)
VALUE_CHARS = 80  # the most of a value's repr an error message shows


def parameters(init: Callable[..., Any]) -> Mapping[str, inspect.Parameter]:
    """The parameters of ``init``'s signature (``{}`` when it has none)."""
    try:
        return inspect.signature(init).parameters
    except (TypeError, ValueError):
        return {}


def init_chain(factory: Callable[..., Any], sig: inspect.Signature | None) -> list[Callable[..., Any]]:
    """The constructors that see a configured keyword argument: ``factory`` itself and, when it is a dynametric
    class whose ``__init__`` takes ``**kwargs``, the ``__init__`` of each base class it passes them on to (next in
    the MRO), as long as those take ``**kwargs`` too and are dynametric's own (``ProxyAnchorLoss`` ->
    ``_ClassWeightLoss`` -> ``MetricLoss``). ``[]`` without a signature."""
    if sig is None:
        return []
    chain: list[Callable[..., Any]] = [factory]
    if not isinstance(factory, type):
        return chain
    params: Mapping[str, inspect.Parameter] = sig.parameters
    for base in factory.__mro__[1:]:
        if not any(v.kind is v.VAR_KEYWORD for v in params.values()):
            break
        init = base.__dict__.get("__init__")
        if init is None:
            continue
        if not base.__module__.startswith("dynametric."):
            break  # whatever takes the keywords beyond this point is not known: the last one stays open
        chain.append(init)
        params = parameters(init)
    return chain


def argument_annotations(factory: Callable[..., Any]) -> dict[str, Any]:
    """The resolved annotations of ``factory``'s arguments (a class: of its ``__init__``); ``{}`` when they cannot
    be resolved."""
    target = factory.__init__ if isinstance(factory, type) else factory  # type: ignore[misc]
    try:
        return typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - names only known to type checkers, odd callables: no annotations to check
        return {}


def keyword_arguments(factory: Callable[..., Any]
                      ) -> tuple[inspect.Signature | None, list[str], bool, dict[str, Any]]:
    """``(signature, named, open, hints)`` of ``factory``: its signature (``None``: none to read), the keyword
    arguments it takes by name (a class whose ``__init__`` passes ``**kwargs`` on to its bases: theirs too,
    :func:`init_chain`), whether it takes any other keyword as well (``**kwargs`` not passed on to a known
    constructor, or no signature) and the annotation of each argument (a subclass's wins over its base's)."""
    try:
        sig: inspect.Signature | None = inspect.signature(factory)
    except (TypeError, ValueError):
        sig = None
    chain = init_chain(factory, sig)
    named: list[str] = []
    open_kwargs = True
    if sig is not None:
        params = sig.parameters
        named = [p for p, v in params.items() if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
        open_kwargs = any(v.kind is v.VAR_KEYWORD for v in params.values())
        if open_kwargs and chain:  # **kwargs passed on to the base classes' __init__: their arguments are the rest
            named += [p for init in chain[1:] for p, v in parameters(init).items()
                      if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY) and p != "self" and p not in named]
            open_kwargs = any(v.kind is v.VAR_KEYWORD for v in parameters(chain[-1]).values())
    hints: dict[str, Any] = {}
    for init in reversed(chain or [factory]):  # a subclass's annotation of an argument wins over its base's
        hints.update(argument_annotations(init))
    return sig, named, open_kwargs, hints


def unknown_argument_message(name: str, arg: str, named: Sequence[str], *, after_list: str = "") -> str:
    """``<name> has no argument <arg>``, with the closest argument (a misspelling), else the list of them and
    ``after_list`` (the config's factory says there how to drop the key): the words of every route (``pml:`` classes
    say it alike)."""
    close = difflib.get_close_matches(arg, list(named), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; its arguments: {', '.join(named)}{after_list}"
    return f"{name} has no argument {arg!r}{hint}"


def refuse_unknown_arguments(name: str, kwargs: Iterable[str], named: Sequence[str], open_kwargs: bool) -> None:
    """An :class:`~dynametric.errors.UnknownArgumentError` keyed by the first of ``kwargs`` that ``name``'s
    constructor does not take (``named`` and ``open_kwargs`` as :func:`keyword_arguments` gives them: nothing is
    refused where it takes any keyword): the Python factories' check (``build_loss``, ``build_miner``)."""
    from dynametric.errors import UnknownArgumentError

    if open_kwargs:
        return
    for arg in kwargs:
        if arg not in named:
            raise UnknownArgumentError(unknown_argument_message(name, arg, named), argument=arg, arguments=named)


def misfit(annotation: Any, value: Any, *, finite: bool = False) -> str | None:
    """What ``annotation`` expects (``a number``, ``a list of numbers``, ...) when ``value`` clearly does not fit
    it, else ``None`` (fits, or an annotation this check does not read: ``Any``, classes, callables). ``finite``:
    a number must also be finite: NaN and inf, of the right type, are said as not ``a finite number`` (a value of
    another type keeps the words of its type, ``a number``)."""
    want = expected(annotation)
    if want is None:
        return None
    if not fits(annotation, value):
        return want
    if finite and not fits(annotation, value, finite=True):
        return expected(annotation, finite=True)
    return None


def expected(annotation: Any, *, finite: bool = False) -> str | None:
    """Words for the simple annotations :func:`fits` checks (``None`` for any other)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if annotation is bool:
        return "true or false"
    if annotation is int:
        return "an integer"
    if annotation is float:
        return "a finite number" if finite else "a number"
    if annotation is str:
        return "a string"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [expected(a, finite=finite) for a in args]
        return None if any(p is None for p in parts) else " or ".join(dict.fromkeys(p for p in parts if p))
    if origin in (list, tuple, collections.abc.Sequence) and args:
        fixed = origin is tuple and not (len(args) == 2 and args[1] is Ellipsis)  # tuple[float, float]: a pair
        items = {expected(a, finite=finite) for a in (args if fixed else args[:1])}
        item = items.pop() if len(items) == 1 else None
        plural = {"a number": "numbers", "a finite number": "finite numbers", "an integer": "integers",
                  "a string": "strings", "true or false": "true/false values"}.get(item or "")
        if plural is None:
            return None
        return f"a list of {len(args)} {plural}" if fixed else f"a list of {plural}"
    return None


def fits(annotation: Any, value: Any, *, finite: bool = False) -> bool:
    """Whether ``value`` fits ``annotation`` (see :func:`expected`; ``True`` for an annotation not read)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool) or _scalar_kind(value) == "bool"
    if annotation is int:
        return _scalar_kind(value) == "int"
    if annotation is float:
        return _scalar_kind(value) in ("int", "float") and (not finite or _finite(value))
    if annotation is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(fits(a, value, finite=finite) for a in args)
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):  # fixed length
        items = _items(value)
        return items is not None and len(items) == len(args) \
            and all(fits(a, v, finite=finite) for a, v in zip(args, items))
    if origin in (list, tuple, collections.abc.Sequence):
        items = _items(value)
        return items is not None and all(fits(args[0], v, finite=finite) for v in items)
    return True


def _scalar_kind(value: Any) -> str | None:
    """``"bool"``, ``"int"`` or ``"float"`` for one value of that kind as a Python call may pass it: a Python
    ``bool`` / ``int`` / ``float``, a NumPy scalar (``np.float32(0.2)``, ``np.int64(3)``, ``np.bool_``: NumPy
    registers its numbers with :mod:`numbers`) or a 0-d real torch tensor (``torch.tensor(0.2)``); ``None`` for
    anything else (text, complex numbers, arrays of several values). A config file's YAML only ever gives the
    Python types."""
    if isinstance(value, bool):
        return "bool"
    torch = sys.modules.get("torch")  # a tensor can only be given where torch was imported
    if torch is not None and isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.is_complex():
            return None
        if value.dtype == torch.bool:
            return "bool"
        return "float" if value.is_floating_point() else "int"
    np = sys.modules.get("numpy")
    if np is not None and isinstance(value, np.bool_):
        return "bool"
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Real):
        return "float"
    return None


def _finite(value: Any) -> bool:
    """Whether the number ``value`` is finite as the float a loss computes with (an integer beyond the float range,
    ``10**400``, is not: ``float()`` overflows)."""
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _items(value: Any) -> list[Any] | tuple[Any, ...] | None:
    """The values of a list-like argument: a list or tuple, or a one-dimensional NumPy array or torch tensor (each
    value then a NumPy scalar / 0-d tensor); ``None`` for anything else."""
    if isinstance(value, (list, tuple)):
        return value
    torch = sys.modules.get("torch")
    np = sys.modules.get("numpy")
    if (torch is not None and isinstance(value, torch.Tensor)) or (np is not None and isinstance(value, np.ndarray)):
        return list(value) if value.ndim == 1 else None
    return None


def short_repr(value: Any) -> str:
    """``repr(value)`` for an error message: on one line and at most :data:`VALUE_CHARS` characters (an array or a
    10**400 is cut, ``...`` said); an integer too long for Python to write out is said by its size."""
    try:
        shown = " ".join(repr(value).split())
    except ValueError:  # an integer of more digits than Python converts to text (sys.set_int_max_str_digits)
        shown = f"an integer of {value.bit_length()} bits" if isinstance(value, int) else type(value).__name__
    return shown if len(shown) <= VALUE_CHARS else shown[:VALUE_CHARS - 3] + "..."


def expected_message(name: str, arg: str, want: str, value: Any) -> str:
    """``<name>: expected <want> for <arg>, got <value> (<type>)``: one line, the same on every route (the value as
    :func:`short_repr` shows it)."""
    return f"{name}: expected {want} for {arg}, got {short_repr(value)} ({type(value).__name__})"
