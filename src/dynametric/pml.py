"""pytorch-metric-learning (PML) classes by name, for the losses' and the miners' ``pml:<ClassName>`` entries.

PML is an optional dependency, imported only when a ``pml:`` name (or a PML object) is used. The wrappers
themselves are :class:`dynametric.losses.PMLLoss` and :class:`dynametric.miners.pml.PMLMiner`; this module holds
what both need (class lookup, distance conversion, the registry that answers ``pml:`` names) and imports neither.
"""

from __future__ import annotations

import abc
import ast
import difflib
import importlib
import importlib.util
import inspect
import linecache
import numbers
import re
import traceback
from collections.abc import Callable, Collection, Mapping
from typing import Any

from dynametric import distances as _distances
from dynametric.errors import ConfigError, UnknownArgumentError, first_sentence

__all__ = [
    "CALLED_WHEN_BUILT", "OBJECT_ARGUMENTS", "PMLAwareRegistry", "PML_CLASSES", "PML_PREFIX", "ReducerObject",
    "WRAPPER_USAGE", "check_label_scale", "check_object_arguments", "missing_attribute", "pml_catalogue", "pml_class",
    "pml_hint", "pml_names", "pml_registry_entry", "resolve_class", "to_pml_distance", "wrapper_usage",
]

#: Config names with this prefix are looked up in pytorch-metric-learning.
PML_PREFIX = "pml:"


def check_label_scale(value: Any) -> int:
    """``value`` as the label column of a PML loss or miner: an integer (a NumPy one too), never a bool (``True``
    would be column 1) nor a float or string; else a one-line :class:`ConfigError` keyed ``label_scale``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"expected an integer label column (0 = the finest scale), got {value!r} "
                          f"({type(value).__name__})", key="label_scale")
    return int(value)


def _pml_module(kind: str) -> Any:
    try:
        return importlib.import_module(f"pytorch_metric_learning.{kind}")
    except ImportError as exc:
        raise ConfigError(f"PML {kind} need pytorch-metric-learning: pip install pytorch-metric-learning",
                          key=kind) from exc


def pml_catalogue(kind: str) -> list[str]:
    """The names of the usable classes of ``pytorch_metric_learning.<kind>`` (``losses`` or ``miners``), sorted: its
    public classes less the abstract bases and mixins (``Base*``, ``GenericPairLoss``, ``*Mixin``)."""
    module = _pml_module(kind)
    return sorted(n for n in dir(module) if n[:1].isupper() and isinstance(getattr(module, n), type)
                  and not n.startswith(("Base", "Generic")) and not n.endswith("Mixin"))


#: The usable classes of pytorch-metric-learning 2.9.0 (as :func:`pml_catalogue` lists them), for the hints of
#: :func:`pml_hint` and the modules' ``__getattr__`` when PML is not installed (its own catalogue is used when it is).
PML_CLASSES: dict[str, tuple[str, ...]] = {
    "losses": (
        "AngularLoss", "ArcFaceLoss", "CircleLoss", "ContrastiveLoss", "CosFaceLoss", "CrossBatchMemory",
        "DynamicSoftMarginLoss", "FastAPLoss", "GeneralizedLiftedStructureLoss", "HistogramLoss", "InstanceLoss",
        "IntraPairVarianceLoss", "LargeMarginSoftmaxLoss", "LiftedStructureLoss", "ManifoldLoss", "MarginLoss",
        "MultiSimilarityLoss", "MultipleLosses", "NCALoss", "NPairsLoss", "NTXentLoss", "NormalizedSoftmaxLoss",
        "P2SGradLoss", "PNPLoss", "ProxyAnchorLoss", "ProxyNCALoss", "RankedListLoss", "SelfSupervisedLoss",
        "SignalToNoiseRatioContrastiveLoss", "SmoothAPLoss", "SoftTripleLoss", "SphereFaceLoss",
        "SubCenterArcFaceLoss", "SupConLoss", "ThresholdConsistentMarginLoss", "TripletMarginLoss",
        "TupletMarginLoss", "VICRegLoss",
    ),
    "miners": (
        "AngularMiner", "BatchEasyHardMiner", "BatchHardMiner", "DistanceWeightedMiner",
        "EmbeddingsAlreadyPackagedAsTriplets", "HDCMiner", "MultiSimilarityMiner", "PairMarginMiner",
        "TripletMarginMiner", "UniformHistogramMiner",
    ),
}

_SINGULAR = {"losses": "loss", "miners": "miner"}
_WRAP_FUNCTION = {"losses": "pml_loss", "miners": "pml_miner"}

#: How to use the PML losses that wrap another loss object (their ``loss=`` / ``losses=``), which a config cannot
#: give (docs/losses.md, "PML classes without a native port"); another such class gets a generic line.
WRAPPER_USAGE = {
    "CrossBatchMemory": 'pml_loss("CrossBatchMemory", label_scale=s, loss=ContrastiveLoss(), embedding_size=D, '
                        "memory_size=M)(embeddings, labels)",
    "SelfSupervisedLoss": 'pml_loss("SelfSupervisedLoss", loss=TripletMarginLoss())(embeddings, augmented), '
                          "no labels, so in a training loop of your own",
    "MultipleLosses": "pml_loss(MultipleLosses([...], weights=[...]), label_scale=s)(embeddings, labels), "
                      "MultipleLosses being pytorch-metric-learning's",
}


def _wrapped_arguments(cls: type) -> list[str]:
    """The required constructor arguments of a PML class that take another loss object (``loss``, ``losses``)."""
    return [p.name for p in _init_parameters(cls) if p.name in ("loss", "losses") and p.default is p.empty]


def _is_object(value: Any) -> bool:
    """Whether ``value`` can be a loss object (or a list of them): not a config value (text, number, mapping)."""
    if isinstance(value, (list, tuple)):
        return bool(value) and all(_is_object(v) for v in value)
    return value is not None and not isinstance(value, (str, bytes, numbers.Number, Mapping))


def wrapper_usage(name: str) -> str:
    """How to build the PML loss ``name`` that wraps another loss, in Python (:data:`WRAPPER_USAGE`)."""
    return WRAPPER_USAGE.get(name, f"pml_loss({name!r}, loss=<a loss object>, ...)")


def pml_names(kind: str) -> tuple[list[str], bool]:
    """``(names, installed)``: the class names of ``pytorch_metric_learning.<kind>`` when PML can be imported
    (``installed`` True), else those of :data:`PML_CLASSES` (PML 2.9.0). Imports PML: call it at error time only."""
    try:
        return pml_catalogue(kind), True
    except ConfigError:
        return list(PML_CLASSES.get(kind, ())), False


def pml_hint(kind: str, name: str, natives: Collection[str]) -> str:
    """The message of a registry name that is neither native (``natives``) nor a usable ``pml:`` name, one line:
    ``unknown loss 'SupConLoss': ...`` with a suggestion when there is one (a PML class named without ``pml:``,
    a misspelt ``pml:`` name, a ``PML:`` prefix, a misspelt native name), else the valid names."""
    singular = _SINGULAR.get(kind, kind)
    head = f"unknown {singular} {name!r}"
    native_list = f"native {kind}: {', '.join(sorted(natives))}"
    if not isinstance(name, str):
        return f"{head}; expected a name ({native_list}, or pml:<ClassName>)"
    pml, installed = pml_names(kind)
    prefix, rest = name[:len(PML_PREFIX)], name[len(PML_PREFIX):].strip()
    if prefix.lower() == PML_PREFIX:  # pml:<Name> (or PML:<Name>) that PML does not answer
        if not installed:
            return (f"{head}: {PML_PREFIX} names need pytorch-metric-learning, which is not installed (pip install "
                    "pytorch-metric-learning)")
        wrong_case = prefix != PML_PREFIX
        case = f" (the prefix is '{PML_PREFIX}', lower-case)" if wrong_case else ""
        if rest in pml and (wrong_case or rest != name[len(PML_PREFIX):]):
            why = case.strip(" ()") if wrong_case else f"no space after '{PML_PREFIX}'"
            return f"{head}: {why}; did you mean '{PML_PREFIX}{rest}'?"
        close = difflib.get_close_matches(rest, pml, n=3, cutoff=0.7)
        if close:
            return (f"{head}: pytorch-metric-learning has no {singular} {rest!r}; did you mean "
                    f"{', '.join(repr(PML_PREFIX + c) for c in close)}{case}?")
        other = {"losses": "miners", "miners": "losses"}.get(kind)
        if other is not None and rest in pml_names(other)[0]:
            return (f"{head}: {rest} is a pytorch-metric-learning {_SINGULAR[other]}, not a {singular}; name it in "
                    f"the {_SINGULAR[other]} section")
        return f"{head}: pytorch-metric-learning has no {singular} {rest!r}; its {kind}: {', '.join(pml)}"
    if name in pml:  # a PML class without the prefix (one dynametric does not port)
        return (f"{head}: dynametric has no native {name}; did you mean '{PML_PREFIX}{name}' "
                f"(pytorch-metric-learning's, through the adapter: {_WRAP_FUNCTION[kind]}({name!r}, ...) in "
                f"Python{'' if installed else '; it needs pip install pytorch-metric-learning'})?")
    close = difflib.get_close_matches(name, list(natives), n=3, cutoff=0.6)
    if close:
        return f"{head}; did you mean {', '.join(repr(c) for c in close)}? {native_list}"
    close = difflib.get_close_matches(name, [n for n in pml if n not in natives], n=3, cutoff=0.7)
    if close:
        return (f"{head}; did you mean {', '.join(repr(PML_PREFIX + c) for c in close)} "
                f"(pytorch-metric-learning's, through the adapter)? {native_list}")
    return f"{head}; expected one of the {native_list}, or {PML_PREFIX}<ClassName> for pytorch-metric-learning's"


def missing_attribute(kind: str, module: str, name: str, natives: Collection[str]) -> AttributeError:
    """The ``AttributeError`` of ``dynametric.<kind>.<name>`` (a module ``__getattr__``): for a PML class that
    dynametric does not port, how to use PML's through the adapter; else Python's usual message. PML is imported
    only for an upper-case name outside :data:`PML_CLASSES`, and only when installed."""
    plain = AttributeError(f"module {module!r} has no attribute {name!r}")
    if not name[:1].isupper() or name in natives:
        return plain
    known = name in PML_CLASSES.get(kind, ())
    installed = importlib.util.find_spec("pytorch_metric_learning") is not None
    if not known and installed:
        known = name in pml_names(kind)[0]
    if not known:
        return plain
    singular = _SINGULAR.get(kind, kind)
    install = "" if installed else " (pip install pytorch-metric-learning first)"
    if name in WRAPPER_USAGE:
        return AttributeError(
            f"module {module!r} has no attribute {name!r}: dynametric has no native {name}; use "
            f"pytorch-metric-learning's through the adapter{install}, in Python only (it wraps another loss object, "
            f"which a config cannot give): {wrapper_usage(name)} (from {module} import pml_loss)")
    return AttributeError(
        f"module {module!r} has no attribute {name!r}: dynametric has no native {name}; use "
        f"pytorch-metric-learning's through the adapter{install}: {_WRAP_FUNCTION[kind]}({name!r}, ...) (from "
        f"{module} import {_WRAP_FUNCTION[kind]}; it reads label column label_scale), or {singular}: "
        f"{{name: {PML_PREFIX}{name}}} in a config")


def pml_class(kind: str, name: str) -> type:
    """The class ``name`` of ``pytorch_metric_learning.<kind>`` (``kind``: ``losses`` or ``miners``)."""
    cls = getattr(_pml_module(kind), name, None)
    if not isinstance(cls, type):
        singular = {"losses": "loss", "miners": "miner"}.get(kind, kind)
        raise ConfigError(f"pytorch-metric-learning has no {singular} {name!r}; available: "
                          f"{', '.join(pml_catalogue(kind))}", key=f"{singular}.name")
    return cls


def to_pml_distance(distance: Any) -> Any:
    """A dynametric distance as the equivalent PML object (PML's losses check distance types with
    ``isinstance``); a PML distance or ``None`` passes through."""
    if not isinstance(distance, _distances.Distance):
        return distance
    if isinstance(distance, _distances.ForeignDistance):
        return distance.obj
    mod = _pml_module("distances")
    norm = distance.normalize_embeddings
    if isinstance(distance, _distances.LpDistance):
        return mod.LpDistance(p=distance.p, power=distance.power, normalize_embeddings=norm)
    if isinstance(distance, _distances.DotProductSimilarity):
        if norm:
            return mod.CosineSimilarity(power=distance.power)
        return mod.DotProductSimilarity(normalize_embeddings=False, power=distance.power)
    raise ConfigError(f"no pytorch-metric-learning equivalent of {distance!r}", key="distance")


def resolve_class(kind: str, spec: Any, *, key: str | None = None) -> Any:
    """``spec`` with a class name (``"ArcFaceLoss"`` or ``"pml:ArcFaceLoss"``) replaced by PML's class; a class or
    an object passes through. ``key``: what an error (no such class, PML not installed) is keyed, e.g. the Python
    parameter that took ``spec`` (``pml_loss``'s ``loss``); default ``loss.name`` / ``miner.name``."""
    if isinstance(spec, str):
        try:
            return pml_class(kind, spec.removeprefix(PML_PREFIX))
        except ConfigError as exc:
            if key is None:
                raise
            raise ConfigError(exc.message, key=key) from None
    return spec


def _check_wrapped_support(cls: type, kwargs: dict[str, Any]) -> None:
    """Refuse a ``loss=`` that the PML wrapper ``cls`` cannot wrap (``CrossBatchMemory`` and ``SelfSupervisedLoss``
    accept only an object of one of the losses their ``supported_losses()`` lists, by class name, and raise a bare
    ``Exception`` in their constructor otherwise): one line keyed ``loss``. A loss object of another class names the
    supported ones; a class says to instantiate it; a name, a number, ``None``, a mapping or a list says that one
    loss object is needed."""
    supported = getattr(cls, "supported_losses", None)
    if "loss" not in kwargs or not callable(supported):
        return
    try:
        names = list(supported())
    except NotImplementedError:  # PML's abstract BaseLossWrapper
        return
    value = kwargs["loss"]
    one_of = f"one of {', '.join(names)} (pytorch-metric-learning's list)"
    inner = value.__name__ if isinstance(value, type) else type(value).__name__
    if isinstance(value, type) and inner in names:
        raise ConfigError(f"{cls.__name__}'s loss= must be a loss object, got the class {inner}; instantiate it: "
                          f"{inner}()", key="loss")
    if not isinstance(value, type) and (isinstance(value, (list, tuple)) or not _is_object(value)):
        if isinstance(value, (list, tuple)):  # not its repr: a loss object's is several lines
            got = f"a {inner} of {len(value)} (it wraps a single loss)"
        else:
            got = f"{value!r} ({inner})"
        if isinstance(value, str) and value.removeprefix(PML_PREFIX) in names:
            got += f"; build the object: {value.removeprefix(PML_PREFIX)}()"
        raise ConfigError(f"{cls.__name__}'s loss= must be a loss object, got {got}; it takes {one_of}", key="loss")
    if inner not in names:
        raise ConfigError(f"{cls.__name__} does not support {inner}: its loss= must be {one_of}", key="loss")


#: The keywords of PML's losses and miners that take an object PML calls later (its constructors keep them as
#: attributes of these names): a value that is not callable (``reducer: mean`` in a config) would be kept and fail
#: at the first call, or trip the constructor with a message naming no keyword (``str is not a Module subclass``).
OBJECT_ARGUMENTS = ("reducer", "distance", "embedding_regularizer", "weight_regularizer")

#: The keywords whose value PML's constructors call there and then (``WeightInitMixin``: ``weight_init_func(W)`` on
#: the new proxies / class weights), which failed with Python's bare ``'str' object is not callable``.
CALLED_WHEN_BUILT = ("weight_init_func",)


#: The kind of object each of :data:`OBJECT_ARGUMENTS` takes: its name in messages and its base classes in PML
#: (module, class); a reducer may be dynametric's too (:class:`ReducerObject`), a distance
#: dynametric's (:class:`dynametric.distances.Distance`, converted by :func:`to_pml_distance`).
_OBJECT_KINDS = {"reducer": ("reducer", "reducers", "BaseReducer"),
                 "distance": ("distance", "distances", "BaseDistance"),
                 "embedding_regularizer": ("regularizer", "regularizers", "BaseRegularizer"),
                 "weight_regularizer": ("regularizer", "regularizers", "BaseRegularizer")}


class ReducerObject(abc.ABC):
    """Reducers a PML loss accepts besides PML's own (``BaseReducer``): dynametric's reducer base class registers
    itself here (:class:`dynametric.losses.reducers.Reducer`; this module sits below the losses and does not import
    them)."""

    @abc.abstractmethod
    def __call__(self, loss_dict: dict, embeddings: Any, labels: Any) -> Any:
        """How a PML loss calls its reducer: the loss dictionary, the embeddings and the labels."""


def _kind_bases() -> dict[str, tuple[type, ...]]:
    """``{kind: base classes}`` for reducers, distances and regularizers: PML's (when it can be imported) and
    dynametric's own reducer and distance bases."""
    bases: dict[str, tuple[type, ...]] = {"reducer": (ReducerObject,), "distance": (_distances.Distance,),
                                          "regularizer": ()}
    for kind, module, name in _OBJECT_KINDS.values():
        try:
            base = getattr(importlib.import_module(f"pytorch_metric_learning.{module}"), name, None)
        except ImportError:
            continue
        if isinstance(base, type) and base not in bases[kind]:
            bases[kind] += (base,)
    return bases


def _describe(value: Any, bases: Mapping[str, tuple[type, ...]]) -> str:
    """``value`` (a callable) in a message, on one line (a module's repr can span several): ``the function f`` or
    ``a MeanReducer object, a reducer``."""
    if inspect.isroutine(value):
        return f"the function {getattr(value, '__qualname__', repr(value))}"
    kind = next((k for k, b in bases.items() if b and isinstance(value, b)), None)
    name = type(value).__name__
    return f"{'an' if name[:1] in 'AEIOU' else 'a'} {name} object" + (f", a {kind}" if kind else "")


def check_object_arguments(values: Mapping[str, Any]) -> None:
    """Refuse a reducer, distance or regularizer (:data:`OBJECT_ARGUMENTS`) or a ``weight_init_func``
    (:data:`CALLED_WHEN_BUILT`) in ``values`` (keyword arguments, or a built object's attributes of those names)
    that PML cannot use: one line keyed by the keyword, the wording of dynametric's own losses
    (:func:`~dynametric.losses.reducers.check_reducer`). ``None`` passes (PML's default). Refused: a value that is
    not callable (a name, a mapping, a number given where PML expects an object); for the object keywords, a class
    (``reducer=MeanReducer``: "got the class MeanReducer; instantiate it: MeanReducer()"); a reducer or distance
    that is not an instance of PML's base class (``BaseReducer``, ``BaseDistance``) or dynametric's (a function, or
    an object of another kind: PML makes them modules or calls their methods); a regularizer that is a reducer or a
    distance (a function is a regularizer: PML only calls it). ``weight_init_func`` is any callable (a function)."""
    bases: dict[str, tuple[type, ...]] | None = None
    for attr in (*OBJECT_ARGUMENTS, *CALLED_WHEN_BUILT):
        value = values.get(attr)
        if value is None:
            continue
        what = {"reducer": "a reducer object (e.g. MeanReducer())",  # losses.reducers.check_reducer's wording
                "distance": "a distance object (e.g. CosineSimilarity(); a config names one: cosine, l2, "
                            "{name: LpDistance, p: 1})",
                "weight_init_func": "callable (e.g. torch.nn.init.normal_, in Python: a config cannot give a "
                                    "function) or null"}.get(attr, "callable (e.g. LpRegularizer()) or null")
        if not callable(value):
            raise ConfigError(f"{attr} must be {what}, got {value!r}", key=attr)
        if attr not in _OBJECT_KINDS:
            continue
        if isinstance(value, type):
            raise ConfigError(f"{attr} must be {what}, got the class {value.__name__}; instantiate it: "
                              f"{value.__name__}()", key=attr)
        bases = _kind_bases() if bases is None else bases
        kind = _OBJECT_KINDS[attr][0]
        if kind == "regularizer":  # any callable but an object of another kind
            wrong = [k for k, b in bases.items() if k != kind and b and isinstance(value, b)]
        else:
            wrong = [] if isinstance(value, bases[kind]) else [kind]
        if wrong:
            raise ConfigError(f"{attr} must be {what}, got {_describe(value, bases)}", key=attr)


def _failed_statement(exc: BaseException) -> str | None:
    """The source of the statement that raised ``exc`` (its innermost frame: for an ``assert``, the assertion), on
    one line (a statement over several lines joined); ``None`` when the source cannot be read."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames or not frames[-1].lineno:
        return None
    source = linecache.getlines(frames[-1].filename)
    start = frames[-1].lineno - 1
    for end in range(start + 1, min(start + 20, len(source)) + 1):  # the lines that make up the whole statement
        lines = [line.strip() for line in source[start:end]]
        try:
            ast.parse("\n".join(lines))
        except SyntaxError:
            continue
        return " ".join(lines) or None
    return None


def _assertion_error(cls: type, given: Mapping[str, Any], exc: AssertionError) -> ConfigError:
    """The one-line :class:`ConfigError` of an ``AssertionError`` raised by the PML constructor ``cls`` with the
    keyword arguments ``given``: keyed by the one keyword the assertion names (its message, case aside:
    ``Imbalance must be ...`` is ``imbalance``; without a message, the failing ``assert`` statement:
    ``assert self.distance.is_inverted`` is ``distance``), with the value given. A check of a distance's
    ``is_inverted`` says which kind of distance is needed; another assertion without a message is quoted."""
    said = str(exc).strip()
    statement = None if said else _failed_statement(exc)
    if said:
        named = [k for k in given if re.search(rf"(?<![\w.]){re.escape(k)}(?!\w)", said, re.IGNORECASE)]
    elif statement is not None:
        named = [k for k in given if re.search(rf"(?<![\w.])(?:self\.)?{re.escape(k)}(?!\w)", statement)]
    else:
        named = []
    key = named[0] if len(named) == 1 else None
    shown = ""
    if key is not None:
        value = given[key]
        shown = f", got {value!r}" if isinstance(value, (numbers.Number, str)) else f", got {type(value).__name__}"
    if said:
        return ConfigError(f"{first_sentence(exc)}{shown}", key=key)
    inverted = None if statement is None or key is None else re.search(
        rf"(\bnot\s+)?(?:self\.)?{re.escape(key)}\.is_inverted\b", statement)
    if inverted is not None:  # SoftTripleLoss: assert self.distance.is_inverted
        need = ("a distance, where lower is closer (e.g. LpDistance(); in a config: l2)" if inverted.group(1) else
                "a similarity, where higher is closer (e.g. CosineSimilarity(); in a config: cosine)")
        return ConfigError(f"{cls.__name__}'s {key} must be {need}{shown}", key=key)
    if statement is not None:
        return ConfigError(f"{cls.__name__}'s constructor failed its check `{statement}`{shown}", key=key)
    return ConfigError(f"{cls.__name__}'s constructor failed a check{shown}", key=key)


def _instantiate(kind: str, spec: Any, kwargs: dict[str, Any]) -> Any:
    spec = resolve_class(kind, spec)
    if isinstance(spec, type):
        _check_wrapped_support(spec, kwargs)
        _check_keywords(spec, kwargs)
        check_object_arguments(kwargs)
        given = kwargs
        if "distance" in kwargs:
            kwargs = {**kwargs, "distance": to_pml_distance(kwargs["distance"])}
        try:
            return spec(**kwargs)
        except AssertionError as exc:  # PML's checks in the constructor: ArcFaceLoss's distance must be cosine
            raise _assertion_error(spec, given, exc) from exc
    if kwargs:
        raise ConfigError(f"keyword arguments {sorted(kwargs)} given with an already built {kind[:-2]} object",
                          key=kind[:-2])
    return spec


def _check_keywords(cls: type, kwargs: Mapping[str, Any]) -> None:
    """A keyword no constructor of ``cls`` takes is a :class:`ConfigError` keyed by it, with the closest argument
    or the list of them (PML's own error is a ``TypeError`` naming ``ModuleWithRecords.__init__``). Nothing is
    checked when the last constructor of the chain takes any keyword (``**kwargs``)."""
    named = [p.name for p in _init_parameters(cls)]
    if _open_keywords(cls):
        return
    for arg in kwargs:
        if arg not in named:
            close = difflib.get_close_matches(arg, named, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else f"; its arguments: {', '.join(named)}"
            if arg == "scale":  # dynametric's own losses and miners name their label column so
                hint += " (the adapter's label column is label_scale)"
            raise UnknownArgumentError(f"{cls.__name__} has no argument {arg!r}{hint}", argument=arg,
                                       arguments=named)


def _open_keywords(cls: type) -> bool:
    """Whether the constructors of ``cls`` (as :func:`_init_parameters` walks them) end in one taking ``**kwargs``
    it does not pass on, or cannot be inspected: then any keyword may be taken."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = list(inspect.signature(init).parameters.values())
        except (TypeError, ValueError):
            return True
        if not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            return False
    return True


def _init_parameters(cls: type) -> list[inspect.Parameter]:
    """The named constructor parameters of ``cls`` as keyword-only parameters, including those its ``__init__``
    forwards through ``*args, **kwargs`` to base classes (e.g. ``num_classes`` of ``SubCenterArcFaceLoss``)."""
    out: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = list(inspect.signature(init).parameters.values())[1:]  # drop self
        except (TypeError, ValueError):
            break
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in out:
                out[p.name] = p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        if not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            break
    return list(out.values())


def pml_registry_entry(kind: str, name: str, wrap: Callable[..., Any]) -> Callable[..., Any] | None:
    """The registry factory of a ``pml:<ClassName>`` name (``None`` for other names or a class PML lacks):
    ``wrap(<the PML object>, label_scale=label_scale)``, ``wrap`` being ``PMLLoss`` or ``PMLMiner``.

    The factory's signature is the PML class's plus ``label_scale`` (the label column), so config validation sees
    the real arguments (and fills ``num_classes`` / ``embedding_size`` like for native losses)."""
    if not isinstance(name, str) or not name.startswith(PML_PREFIX):
        return None
    try:
        cls = pml_class(kind, name[len(PML_PREFIX):])
    except ConfigError:
        return None

    wrapped = _wrapped_arguments(cls)

    def factory(*, label_scale: int = 0, **kwargs: Any) -> Any:
        for arg in wrapped:  # CrossBatchMemory(loss, ...), SelfSupervisedLoss(loss), MultipleLosses(losses)
            if not _is_object(kwargs.get(arg)):
                got = f", got {kwargs[arg]!r}" if arg in kwargs else ""
                what = "a list of loss objects" if arg == "losses" else "a loss object"
                raise ConfigError(f"{cls.__name__} wraps another loss: its {arg}= is {what}{got}, which a "
                                  f"config cannot give; build it in Python: {wrapper_usage(cls.__name__)}", key=arg)
        return wrap(_instantiate(kind, cls, kwargs), label_scale=check_label_scale(label_scale))

    extra = [inspect.Parameter("label_scale", inspect.Parameter.KEYWORD_ONLY, default=0),
             inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)]
    factory.__signature__ = inspect.Signature(_init_parameters(cls) + extra)  # type: ignore[attr-defined]
    factory.__name__ = name
    return factory


class PMLAwareRegistry(dict):
    """A ``{name: class}`` registry that also answers ``pml:<ClassName>`` with a factory of ``wrap`` (PMLLoss or
    PMLMiner) around that PML class (looked up lazily, so PML is imported only when such a name is used)."""

    def __init__(self, kind: str, entries: dict[str, Any], wrap: Callable[..., Any]) -> None:
        super().__init__(entries)
        self.kind = kind
        self.wrap = wrap

    def __contains__(self, name: object) -> bool:
        return super().__contains__(name) or (isinstance(name, str) and self._pml_entry(name) is not None)

    def _pml_entry(self, name: str) -> Callable[..., Any] | None:
        return pml_registry_entry(self.kind, name, self.wrap)

    def unknown_message(self, name: str) -> str:
        """The one-line message of a name this registry does not answer, with a suggestion (:func:`pml_hint`)."""
        return pml_hint(self.kind, name, list(self.keys()))

    def __missing__(self, name: str) -> Callable[..., Any]:
        entry = self._pml_entry(name)
        if entry is None:
            raise KeyError(name)
        return entry
