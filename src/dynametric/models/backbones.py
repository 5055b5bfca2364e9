"""Backbones: our own registry (``simple_cnn``, ``bninception``) alongside every timm model name.

:func:`create_backbone` returns a :class:`Backbone`: a module whose ``forward(images)`` gives the unpooled
features in channels-first layout (``[B, C, H, W]`` for CNNs, ``[B, N, C]`` token sequences for transformers;
channels-last timm models such as Swin are permuted to ``[B, C, H, W]``), plus ``feature_dim`` (= ``C``),
``num_prefix_tokens`` (class/register tokens of a ViT, else 0) and ``classifier_prefixes`` (state-dict prefixes of
a classifier that a backbone-only weight file may carry).
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dynametric.errors import ConfigError, InputError, first_sentence
from dynametric.models.bninception import BNINCEPTION_URL, BNInception


class SimpleCNN(nn.Module):
    """A small, fast CNN for the synthetic hierarchy and CPU tests.

    ``depth`` blocks of conv3×3 → BatchNorm → ReLU → max-pool 2×2, widths ``width · 2^i`` (default 32, 64, 128,
    256), output ``[B, width · 2^(depth-1), H / 2^depth, W / 2^depth]``. About 0.39 M parameters by default.
    """

    classifier_prefixes: tuple[str, ...] = ()

    def __init__(self, in_chans: int = 3, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        if width < 1 or depth < 1:
            raise ConfigError(f"simple_cnn needs width >= 1 and depth >= 1, got width={width}, depth={depth}",
                              key="model.backbone_kwargs")
        layers: list[nn.Module] = []
        cin = in_chans
        for i in range(depth):
            cout = width * 2**i
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2, ceil_mode=True)]
            cin = cout
        self.features = nn.Sequential(*layers)
        self.num_features = cin

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


def check_pretrained_request(name: str, in_chans: int = 3) -> None:
    """The refusals of ``create_backbone(name, pretrained=True, in_chans=in_chans)`` that need no weights, raised
    the same way without building or loading anything (``train --dry-run``, which never downloads, calls it):
    ``simple_cnn`` has no pretrained weights; BN-Inception's need ``in_chans=3``; a ``local-dir:`` folder without a
    weight file has none to load."""
    if name == "simple_cnn":
        raise ConfigError("simple_cnn has no pretrained weights; set pretrained=false (or give pretrained_path)",
                          key="model.pretrained")
    if name == "bninception" and in_chans != 3:
        raise ConfigError("pretrained BN-Inception weights need in_chans=3", key="model.in_chans")
    if name.startswith("local-dir:"):
        _check_prefixed_name(name)
        found, where = pretrained_weights_status(name)
        if not found:
            raise ConfigError(f"model.pretrained is true, but {where} (timm reads model.safetensors or "
                              "pytorch_model.bin there); add the weights, or set pretrained=false for the "
                              "architecture alone", key="model.backbone")


def _simple_cnn(pretrained: bool, in_chans: int, **kwargs: Any) -> nn.Module:
    if pretrained:
        check_pretrained_request("simple_cnn", in_chans)
    return SimpleCNN(in_chans=in_chans, **kwargs)


def _bninception(pretrained: bool, in_chans: int, **kwargs: Any) -> nn.Module:
    model = BNInception(in_chans=in_chans, **kwargs)
    if pretrained:
        check_pretrained_request("bninception", in_chans)
        try:
            state = torch.hub.load_state_dict_from_url(BNINCEPTION_URL, map_location="cpu", weights_only=True)
        except Exception as exc:  # URLError, HTTPError, a corrupt download...
            raise _download_error("bninception", exc) from exc
        state = {k: v for k, v in model.adapt_state_dict(state).items()
                 if not k.startswith(model.classifier_prefixes)}
        model.load_state_dict(state, strict=True)
    return model


def _download_error(name: str, exc: Exception) -> ConfigError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return ConfigError(f"could not load the pretrained weights of {name!r} ({type(exc).__name__}: {first}); "
                       "without network access put the file in the torch/timm cache, or set model.pretrained=false "
                       "and model.pretrained_path to a local weight file", key="model.pretrained")


BackboneFactory = Callable[..., nn.Module]

BACKBONES: dict[str, BackboneFactory] = {
    "simple_cnn": _simple_cnn,
    "bninception": _bninception,
}
"""Backbones defined in dynametric; every other name is looked up in timm. Factories take
``(pretrained: bool, in_chans: int, **backbone_kwargs)`` and return a module with ``num_features``."""

BACKBONE_OPTIONS: dict[str, Callable[..., Any]] = {"simple_cnn": SimpleCNN, "bninception": BNInception}
"""The class whose keyword arguments (but ``in_chans``) are the options (``model.backbone_kwargs``) of each of
:data:`BACKBONES`: an unknown option is refused, naming it, before anything is built."""


def _unknown_option(name: str, arg: str, valid: Sequence[str]) -> ConfigError:
    close = difflib.get_close_matches(arg, list(valid), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else f"; its options: {', '.join(valid) or 'none'}"
    if ":" in arg:
        hint += " (a YAML flow mapping needs a space after the colon: {width: 8})"
    return ConfigError(f"backbone {name!r} has no option {arg!r}{hint}", key=f"model.backbone_kwargs.{arg}")


_FACTORY_ARGUMENTS = ("pretrained", "in_chans")  # what create_backbone passes every factory itself


def _options_of(target: Any) -> list[str] | None:
    """The keyword arguments ``target`` (a class or function) takes but those create_backbone passes itself;
    ``None`` when it takes ``**kwargs`` (any name) or has no signature."""
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return [p for p, v in params.items()
            if p not in _FACTORY_ARGUMENTS and v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]


def _check_options(name: str, kwargs: Mapping[str, Any]) -> None:
    """``model.backbone_kwargs`` against the arguments of backbone ``name`` of :data:`BACKBONES`: its class in
    :data:`BACKBONE_OPTIONS`, else the factory's own signature (a backbone registered by user code); nothing is
    checked here for a factory that takes ``**kwargs`` (:func:`create_backbone` words the constructor's refusal)."""
    valid = _options_of(BACKBONE_OPTIONS.get(name) or BACKBONES[name])
    if valid is None:
        return
    for arg in kwargs:
        if arg not in valid:
            raise _unknown_option(name, str(arg), valid)


_SET_BY_DYNAMETRIC: dict[str, str] = {
    "pretrained": "it is set by dynametric's own option: use model.pretrained (build_embedder(pretrained=...))",
    "in_chans": "it is set by dynametric's own option: use model.in_chans (build_embedder(in_chans=...))",
    "global_pool": ("dynametric builds the backbone unpooled (global_pool='') and pools its features itself: choose "
                    "the pooling with model.pooling (build_embedder(pooling=...)): avg, max, avgmax, catavgmax or "
                    "token"),
    "num_classes": ("dynametric builds the backbone without its classifier (num_classes=0); the embedding heads "
                    "are its own: set their width with model.embedding_dim (build_embedder(embedding_dim=...))"),
}
"""The backbone arguments dynametric passes itself, and what to use instead: ``pretrained`` and ``in_chans`` of
every backbone, ``global_pool`` and ``num_classes`` of a timm model (for a backbone of :data:`BACKBONES` they are
its factory's own options, checked as such)."""


def check_backbone_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse, before anything is built, an option of ``model.backbone_kwargs`` that dynametric sets itself
    (:data:`_SET_BY_DYNAMETRIC`): one :class:`ConfigError` keyed ``model.backbone_kwargs.<option>`` naming
    ``backbone_kwargs['<option>']`` and the option to use instead (was: timm's ``got multiple values for keyword
    argument 'global_pool'``, or a ``TypeError`` traceback for ``in_chans``). Checked by :func:`build_embedder` and
    when a run config loads; reads no weights and imports no timm."""
    if not isinstance(kwargs, Mapping):
        return
    for arg in kwargs:
        if arg not in _SET_BY_DYNAMETRIC or (arg in ("global_pool", "num_classes") and name in BACKBONES):
            continue  # a backbone of BACKBONES: global_pool / num_classes are its factory's own options, if any
        raise ConfigError(f"backbone_kwargs[{arg!r}] cannot be given for backbone {name!r}: {_SET_BY_DYNAMETRIC[arg]}",
                          key=f"model.backbone_kwargs.{arg}")


def _value_error(name: str, kwargs: Mapping[str, Any], exc: ValueError) -> ConfigError:
    """A backbone factory's ``ValueError`` (its validation of the options) as a :class:`ConfigError` keyed by the
    option its message names (exactly one of the given ones), else ``model.backbone_kwargs`` (``model.backbone``
    when none was given), with the factory's message."""
    named = [arg for arg in kwargs if re.search(rf"(?<![\w.]){re.escape(str(arg))}(?!\w)", str(exc))]
    key = (f"model.backbone_kwargs.{named[0]}" if len(named) == 1
           else "model.backbone_kwargs" if kwargs else "model.backbone")
    return ConfigError(f"backbone {name!r} refused its options: {first_sentence(exc)}", key=key)


def _refused_option(name: str, factory: Any, kwargs: Mapping[str, Any], exc: TypeError) -> ConfigError | None:
    """The :class:`ConfigError` of a factory's ``unexpected keyword argument 'x'`` for a given option ``x`` (a
    factory taking ``**kwargs`` that passes them to its module's constructor): keyed ``model.backbone_kwargs.x``,
    with the closest of the constructor's arguments when the class it names is found beside the factory (its
    module's globals); ``None`` for any other ``TypeError`` (a bug, kept as a traceback)."""
    bad = re.search(r"([\w.]+)\(\) got an unexpected keyword argument '([^']+)'", str(exc))
    if bad is None or bad.group(2) not in kwargs:
        return None
    parts = [p for p in bad.group(1).split(".") if p != "__init__"]
    target: Any = getattr(factory, "__globals__", {}).get(parts[0]) if parts else None
    for part in parts[1:]:
        target = getattr(target, part, None)
    valid = None if target is None else _options_of(target)
    if valid is not None and bad.group(2) not in valid:  # else the class found is not the one that refused it
        return _unknown_option(name, bad.group(2), valid)
    return ConfigError(f"backbone {name!r} has no option {bad.group(2)!r} ({first_sentence(exc)})",
                       key=f"model.backbone_kwargs.{bad.group(2)}")


class Backbone(nn.Module):
    """Wraps a feature extractor: channels-first unpooled features and the metadata the embedder needs."""

    def __init__(self, name: str, body: nn.Module, feature_dim: int, *, channels_last: bool = False,
                 num_prefix_tokens: int = 0, classifier_prefixes: tuple[str, ...] = (),
                 has_class_token: bool | None = None) -> None:
        super().__init__()
        self.name = name
        self.body = body
        self.feature_dim = int(feature_dim)
        self.channels_last = channels_last
        self.num_prefix_tokens = int(num_prefix_tokens)
        # whether its output is tokens [B, N, C] whose first is a class token (what `token` pooling takes); default:
        # it has prefix tokens
        self.has_class_token = bool(self.num_prefix_tokens > 0 if has_class_token is None else has_class_token)
        self.classifier_prefixes = tuple(classifier_prefixes)
        self.timm_config: dict[str, Any] | None = None
        """For a ``hf-hub:`` / ``local-dir:`` backbone: the timm ``config.json`` its architecture was read from
        (a model folder records it, so the architecture is rebuilt without the folder or the network)."""

    def forward(self, x: Tensor) -> Tensor:
        out = self.body(x)
        if self.channels_last and out.dim() == 4:
            out = out.permute(0, 3, 1, 2)
        return out


def available_backbones() -> list[str]:
    """Names accepted by :func:`create_backbone`: our registry first, then timm's model list."""
    import timm

    return sorted(BACKBONES) + timm.list_models()


def _unknown_backbone(name: str, *, import_hint: bool = True) -> ConfigError:
    """The one line of a backbone name neither dynametric's nor timm's, with the closest names; ``import_hint``: then
    how to import a user's module that registers it (:func:`dynametric.utils.registry.with_import_hint`)."""
    import timm

    candidates = sorted(BACKBONES) + timm.list_models()
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    from dynametric.utils.registry import with_import_hint

    message = f"unknown backbone {name!r} (neither {sorted(BACKBONES)} nor a timm model){hint}"
    return ConfigError(with_import_hint(message) if import_hint else message, key="model.backbone")


TIMM_SOURCE_PREFIXES = ("hf-hub:", "local-dir:")
"""timm's model sources: ``hf-hub:<org>/<repo>`` (a Hugging Face Hub repository holding a timm ``config.json`` and
weights) and ``local-dir:<folder>`` (the same files in a local folder, e.g. written by ``timm.models.save_for_hf``).
The architecture comes from ``config.json``; the weights are loaded when ``pretrained`` is true."""


LOCAL_DIR_TIMM = "1.0.16"
"""The first timm release that reads ``local-dir:`` model names (older ones stop with a bare ``AssertionError`` in
``timm.models.parse_model_name``)."""


def timm_reads_local_dir() -> bool:
    """Whether the installed timm builds ``local-dir:<folder>`` models (timm >= :data:`LOCAL_DIR_TIMM`): asked of
    timm's own name parser, not of its version string."""
    from timm.models import parse_model_name

    try:
        return parse_model_name("local-dir:probe")[0] == "local-dir"
    except AssertionError:
        return False


def require_local_dir_timm(what: str = "a local-dir: backbone", key: str = "model.backbone") -> None:
    """A one-line :class:`ConfigError` keyed ``key`` when the installed timm cannot build ``local-dir:`` models
    (:func:`timm_reads_local_dir`); ``what`` names what needs them."""
    if timm_reads_local_dir():
        return
    import timm

    raise ConfigError(f"{what} needs timm >= {LOCAL_DIR_TIMM} (installed: timm {timm.__version__}); upgrade it "
                      f"with pip install 'timm>={LOCAL_DIR_TIMM}'", key=key)


def _check_prefixed_name(name: str) -> None:
    prefix, _, ident = name.partition(":")
    if not ident:
        raise ConfigError(f"{prefix}: needs a {'repository id' if prefix == 'hf-hub' else 'folder'} after the "
                          "colon", key="model.backbone")
    if prefix == "local-dir":
        require_local_dir_timm()
        from pathlib import Path

        folder = Path(ident).expanduser()
        if not (folder / "config.json").is_file():
            raise ConfigError(f"{folder} is not a timm model folder (expected config.json and model weights in it, "
                              "as timm.models.save_for_hf writes them)", key="model.backbone")


def pretrained_weights_status(name: str) -> tuple[bool | None, str]:
    """Whether ``create_backbone(name, pretrained=True)`` would find its weights on disk, without downloading:
    ``(True, where)``, ``(False, where it would download from)``, or ``(None, why unknown)``."""
    import os
    from pathlib import Path

    if name == "simple_cnn":
        return None, "simple_cnn has no pretrained weights"
    if name == "bninception":
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(BNINCEPTION_URL)
        return (True, str(cached)) if cached.is_file() else (False, BNINCEPTION_URL)
    if name.startswith("local-dir:"):
        folder = Path(name.partition(":")[2]).expanduser()
        found = [p for p in ("model.safetensors", "pytorch_model.bin") if (folder / p).is_file()]
        return (True, str(folder / found[0])) if found else (False, f"no weight file in {folder}")
    import timm

    repo: str | None = None
    url: Any = None  # timm's pretrained_cfg.url
    if name.startswith("hf-hub:"):
        repo = name.partition(":")[2]
    else:
        cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False) if timm.is_model(name) else None
        if cfg is None:
            return None, f"timm has no pretrained weights registered for {name!r}"
        repo, url = cfg.hf_hub_id or None, cfg.url or None
    if repo:  # timm prefers the Hub copy when huggingface_hub is installed (it is a timm dependency)
        from huggingface_hub import try_to_load_from_cache

        for fname in ("model.safetensors", "pytorch_model.bin"):
            hit = try_to_load_from_cache(repo, fname)
            if isinstance(hit, str):
                return True, hit
        return False, f"https://huggingface.co/{repo}"
    if url:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url.split("?")[0])
        return (True, str(cached)) if cached.is_file() else (False, url)
    return None, f"no download source known for {name!r}"


def timm_output_width(body: nn.Module) -> int:
    """The channels of a timm model's ``forward`` built with ``num_classes=0, global_pool=""``: its
    ``head_hidden_size`` where timm declares one, else ``num_features``.

    The two differ for models whose head holds a hidden layer (MobileNetV3/V4, GhostNet, HGNet/HGNetV2, LCNetV2,
    FasterNet, HardCoReNAS, MambaOut, ...): ``forward_features`` gives ``num_features`` channels, and with
    ``global_pool=""`` timm still applies the head's 1x1 conv (or linear layer), now at every position, so the
    features dynametric pools have ``head_hidden_size`` channels (``mobilenetv3_large_100``: 960 -> 1280)."""
    hidden = getattr(body, "head_hidden_size", None)
    if isinstance(hidden, int) and not isinstance(hidden, bool) and hidden > 0:
        return hidden
    return int(body.num_features)  # type: ignore[arg-type]


def create_backbone(name: str, *, pretrained: bool = False, in_chans: int = 3, **kwargs: Any) -> Backbone:
    """Build backbone ``name``: one of :data:`BACKBONES`, any timm model, or a timm ``hf-hub:<repo>`` /
    ``local-dir:<folder>`` name (:data:`TIMM_SOURCE_PREFIXES`).

    timm models are created with ``timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="",
    in_chans=in_chans, **kwargs)`` (timm's normal weight loading and cache when ``pretrained``); pooling is ours.
    """
    check_backbone_kwargs(name, kwargs)
    if name in BACKBONES:
        _check_options(name, kwargs)
        factory = BACKBONES[name]
        try:
            body: Any = factory(pretrained=pretrained, in_chans=in_chans, **kwargs)
        except TypeError as exc:
            refused = _refused_option(name, factory, kwargs, exc)
            if refused is None:
                raise
            raise refused from exc
        except InputError:  # ConfigError included: worded and keyed by the factory
            raise
        except ValueError as exc:  # the module's own validation of its options (a user's backbone): one line
            raise _value_error(name, kwargs, exc) from exc
        if not isinstance(body, torch.nn.Module):  # a user factory returning another object: one line
            raise ConfigError(f"backbone {name!r}: its factory returned {type(body).__name__}, expected a "
                              "torch.nn.Module (with num_features, giving [B, C, H, W] feature maps)",
                              key="model.backbone")
        features = getattr(body, "num_features", None)
        if isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise ConfigError(f"backbone {name!r}: its module {type(body).__name__} "
                              + ("has no num_features attribute" if features is None
                                 else f"has num_features {features!r}")
                              + ", expected a positive int (the channels of its feature maps)", key="model.backbone")
        return Backbone(name, body, features,
                        classifier_prefixes=tuple(getattr(body, "classifier_prefixes", ())))
    import timm

    hub_name = name.startswith(TIMM_SOURCE_PREFIXES)
    if hub_name:
        _check_prefixed_name(name)
        if pretrained:
            check_pretrained_request(name, in_chans)
    elif not timm.is_model(name):
        raise _unknown_backbone(name)
    try:
        body = timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="", in_chans=in_chans,
                                 **kwargs)
    except TypeError as exc:
        bad = re.search(r"unexpected keyword argument '([^']+)'", str(exc))
        if bad and bad.group(1) in kwargs:
            raise ConfigError(f"timm model {name!r} has no option {bad.group(1)!r}"
                              + (" (a YAML flow mapping needs a space after the colon: {width: 8})"
                                 if ":" in bad.group(1) else ""),
                              key=f"model.backbone_kwargs.{bad.group(1)}") from exc
        raise ConfigError(f"timm model {name!r} rejected its arguments: {exc}", key="model.backbone_kwargs") from exc
    except AssertionError as exc:  # timm's refusal of global_pool="" (a distilled ViT, CoaT, EfficientViT ...)
        if not str(exc).strip():  # older timm releases assert without a message (0.9: global_pool in ('token',))
            raise ConfigError(f"timm model {name!r} refused the arguments dynametric builds it with (num_classes=0, "
                              f"global_pool=''): timm {getattr(timm, '__version__', '?')} stopped on an assertion "
                              "without a message, as it does for a model that cannot be built without its own "
                              "pooling; choose another backbone", key="model.backbone") from None
        raise ConfigError(f"timm model {name!r} cannot be built without its own pooling (timm: "
                          f"{first_sentence(exc)}); dynametric pools the unpooled features itself "
                          "(model.pooling): choose another backbone", key="model.backbone") from None
    except Exception as exc:
        if not pretrained and not hub_name:
            raise
        if not pretrained:  # hf-hub: the architecture itself comes from the repository's config.json
            raise ConfigError(f"could not read the timm model description (config.json) of {name!r} "
                              f"({type(exc).__name__}: {first_sentence(exc)}); the architecture comes from it, so "
                              "this needs the network (or the Hugging Face cache) even with pretrained=false: "
                              "offline, use its timm architecture name or a local-dir: folder",
                              key="model.backbone") from None
        raise _download_error(name, exc) from exc  # offline, hub errors, missing cache entry
    pretrained_cfg: Any = getattr(body, "pretrained_cfg", None)
    classifier = pretrained_cfg.get("classifier") if pretrained_cfg else None
    prefixes: tuple[str, ...] = ()
    if isinstance(classifier, str):
        prefixes = (classifier + ".",)
    elif isinstance(classifier, (list, tuple)):
        prefixes = tuple(c + "." for c in classifier)
    backbone = Backbone(name, body, timm_output_width(body),
                        channels_last=getattr(body, "output_fmt", "NCHW") == "NHWC",
                        num_prefix_tokens=int(getattr(body, "num_prefix_tokens", 0)),
                        classifier_prefixes=prefixes, has_class_token=getattr(body, "has_class_token", None))
    if hub_name:
        backbone.timm_config = _timm_config(name)
    return backbone


def _timm_config(name: str) -> dict[str, Any] | None:
    """The timm ``config.json`` of a ``local-dir:`` folder or a ``hf-hub:`` repository (already fetched by timm when
    the model was built: read from the Hugging Face cache), ``None`` when it cannot be read."""
    import json
    from pathlib import Path

    prefix, _, ident = name.partition(":")
    try:
        if prefix == "local-dir":
            path = Path(ident).expanduser() / "config.json"
        else:
            from huggingface_hub import hf_hub_download

            repo, _, revision = ident.partition("@")
            path = Path(hf_hub_download(repo, "config.json", revision=revision or None))
        config = json.loads(path.read_text(encoding="utf-8"))
    except Exception:  # the model was built from it a moment ago: only a vanished file or cache gets here
        return None
    return config if isinstance(config, dict) and isinstance(config.get("architecture"), str) else None

