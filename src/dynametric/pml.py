"""pytorch-metric-learning (PML) classes by name, for the losses' and the miners' ``pml:<ClassName>`` entries.

PML is an optional dependency, imported only when a ``pml:`` name (or a PML object) is used. The wrappers
themselves are :class:`dynametric.losses.PMLLoss` and :class:`dynametric.miners.pml.PMLMiner`; this module holds
what both need (class lookup, distance conversion, the registry that answers ``pml:`` names) and imports neither.
"""

from __future__ import annotations

import importlib
import inspect
import numbers
from collections.abc import Callable
from typing import Any

from dynametric import distances as _distances
from dynametric.errors import ConfigError

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


def resolve_class(kind: str, spec: Any) -> Any:
    """``spec`` with a class name (``"ArcFaceLoss"`` or ``"pml:ArcFaceLoss"``) replaced by PML's class; a class or
    an object passes through."""
    if isinstance(spec, str):
        return pml_class(kind, spec.removeprefix(PML_PREFIX))
    return spec


def _instantiate(kind: str, spec: Any, kwargs: dict[str, Any]) -> Any:
    spec = resolve_class(kind, spec)
    if isinstance(spec, type):
        if "distance" in kwargs:
            kwargs = {**kwargs, "distance": to_pml_distance(kwargs["distance"])}
        return spec(**kwargs)
    if kwargs:
        raise ConfigError(f"keyword arguments {sorted(kwargs)} given with an already built {kind[:-2]} object",
                          key=kind[:-2])
    return spec


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

    def factory(*, label_scale: int = 0, **kwargs: Any) -> Any:
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

    def __missing__(self, name: str) -> Callable[..., Any]:
        entry = self._pml_entry(name)
        if entry is None:
            raise KeyError(name)
        return entry
