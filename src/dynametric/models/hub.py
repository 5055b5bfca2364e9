"""Sharing trained embedders: a self-describing model folder, the Hugging Face Hub, ``torch.hub``.

A **model folder** holds

* ``model.safetensors``: the embedder's weights (``Embedder.state_dict()``);
* ``dynametric.json``: what rebuilds it: the :func:`~dynametric.models.build_embedder` arguments (``pretrained`` off),
  the scale names, the evaluated head, the input size, the dynametric version, and the test metrics if known (for a
  backbone registered by user code, ``backbone_module``: the module to import before loading it elsewhere); where
  known, the evaluation preprocessing (``preprocessing_steps``: resize, crop, ``ToTensor``, normalisation, as data)
  and the precision the model trained in and its test metrics were measured in (``trained_precision``,
  ``metrics_precision``);
* ``config.yaml``: the full training config when the model came from a run (transforms, data, loss, ...);
* ``README.md``: a model card (model, data, per-scale metrics, config, usage) with Hub metadata.

:func:`save_pretrained` writes one (from an embedder, or :func:`export_run` from a ``dynametric train`` run folder);
:func:`from_pretrained` rebuilds the embedder from a model folder, a run folder, or a Hub repository id (downloaded
through ``huggingface_hub``, the ``hub`` extra); :func:`push_to_hub` uploads a model folder.
``Embedder.from_pretrained`` / ``.save_pretrained`` / ``.push_to_hub`` are the same functions.

Run folders are read by :mod:`dynametric.retrieval.hub` (they need the config and the engine, layers above the
models); this module hands a run folder over to it and otherwise imports nothing above ``models/``.
"""

from __future__ import annotations

import json
import tempfile
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from dynametric.errors import ConfigError, InputError, first_sentence
from dynametric.utils.arguments import short_repr as _short
from dynametric.utils.io import check_name_lengths, file_sha256, holds_only_own_files, nan_to_null, replacement_mode

MODEL_FILE = "model.safetensors"
META_FILE = "dynametric.json"
CONFIG_FILE = "config.yaml"
CARD_FILE = "README.md"
FORMAT = "dynametric-embedder"
FORMAT_VERSION = 1
"""The ``format_version`` of the ``dynametric.json`` this code writes, and the newest it reads (a later dynametric
that changes the folder's layout or meaning writes a higher one, which :func:`from_pretrained` refuses here)."""
_NAMES = frozenset((MODEL_FILE, META_FILE, CONFIG_FILE, CARD_FILE))
UNFINISHED = "unfinished save"
"""``weights_sha256`` of the ``dynametric.json`` a save writes first and replaces last: no weights match it, so a
folder whose save was killed between its renames is refused when loaded (also by dynametric versions that do not
know this value)."""


def _require_hub() -> Any:
    try:
        import huggingface_hub
    except ImportError:
        raise ConfigError("sharing through the Hugging Face Hub needs huggingface_hub: pip install "
                          "'dynametric[hub]'", key="hub") from None
    return huggingface_hub


def _build_kwargs(embedder: Any, model_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    kwargs = dict(model_kwargs if model_kwargs is not None else getattr(embedder, "build_kwargs", None) or {})
    if not kwargs:
        raise InputError("the embedder does not record how it was built; pass model_kwargs (the build_embedder "
                         "arguments) or build it with dynametric.models.build_embedder", key="model_kwargs")
    kwargs["pretrained"] = False  # the saved weights replace any pretrained download
    kwargs["pretrained_path"] = None
    return kwargs


def _rebuild_on_meta(kwargs: Mapping[str, Any], backbone_config: Mapping[str, Any] | None,
                     what: str) -> torch.nn.Module:
    """The embedder ``build_embedder(**kwargs)`` makes (``pretrained`` off: no download), built on the ``meta`` device
    (shapes without memory or initialisation); a ``hf-hub:`` / ``local-dir:`` backbone from ``backbone_config``, as
    :func:`from_pretrained` rebuilds it. A factory that cannot build on ``meta`` (one that reads a tensor's value
    while it builds) is built again on the CPU, on a forked generator (the caller's random state is kept). An
    :class:`InputError` keyed ``model_kwargs`` when the arguments build no model (the folder would not load)."""
    from dynametric.models.backbones import TIMM_SOURCE_PREFIXES
    from dynametric.models.embedder import build_embedder

    kwargs = {**kwargs, "pretrained": False, "pretrained_path": None}
    name = kwargs.get("backbone")
    with tempfile.TemporaryDirectory(prefix="dynametric-backbone-") as tmp:
        if isinstance(name, str) and name.startswith(TIMM_SOURCE_PREFIXES) and backbone_config is not None:
            (Path(tmp) / "config.json").write_text(json.dumps(dict(backbone_config)), encoding="utf-8")
            kwargs["backbone"] = f"local-dir:{tmp}"  # the recorded architecture: no folder, no network
        try:
            with torch.random.fork_rng(devices=[]), torch.device("meta"):
                return build_embedder(**kwargs)
        except Exception:  # noqa: BLE001 - built again on the CPU, where its own error is the one to report
            pass
        try:
            with torch.random.fork_rng(devices=[]), torch.device("cpu"):
                return build_embedder(**kwargs)
        except InputError as exc:
            raise InputError(f"{what} do not build a model ({exc.message}), so the model folder would not load",
                             key="model_kwargs") from None
        except Exception as exc:  # noqa: BLE001 - a TypeError for an argument build_embedder does not take, ...
            raise InputError(f"{what} do not build a model ({type(exc).__name__}: {first_sentence(exc)}), so the "
                             "model folder would not load", key="model_kwargs") from None


def _module_text(module: torch.nn.Module) -> str:
    """``EmbeddingHead(out_dim=8, normalize=False, eps=1e-12)``: a module's type and ``extra_repr()`` (shortened)."""
    extra = " ".join(module.extra_repr().split())
    return f"{type(module).__name__}({extra if len(extra) <= 200 else extra[:200] + '...'})"


def _class_name(module: torch.nn.Module) -> str:
    """``module.qualname`` of a module's class: a factory that defines its class inside (a new class object at every
    call) builds the same class by this name."""
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _first_difference(model: torch.nn.Module, built: torch.nn.Module) -> tuple[str, str, str] | None:
    """The first place where ``model`` differs from ``built``, as ``(module name, what the model has, what the
    arguments build)``; ``None`` when they are alike: the same modules (name, type, ``extra_repr()``, which holds
    what changes a module's output besides its weights: a head's ``normalize``, the pooling mode ...) and the same
    state-dict entries (name and shape)."""
    mine = dict(model.named_modules())
    for name, module in built.named_modules():
        other = mine.get(name)
        if other is None:
            return name, "no such module", _module_text(module)
        if _class_name(other) != _class_name(module) or other.extra_repr() != module.extra_repr():
            if _module_text(other) == _module_text(module):  # classes of one name from two modules
                return name, _class_name(other), _class_name(module)
            return name, _module_text(other), _module_text(module)
    extra = next((name for name in mine if name not in dict(built.named_modules())), None)
    if extra is not None:
        return extra, _module_text(mine[extra]), "no such module"
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    expected = {key: tuple(value.shape) for key, value in built.state_dict().items()}
    for key, shape in expected.items():
        if shapes.get(key) != shape:
            where = key.rpartition(".")[0]
            has = f"{key} of shape {list(shapes[key])}" if key in shapes else f"no {key}"
            return where, has, f"{key} of shape {list(shape)}"
    unexpected = next((key for key in shapes if key not in expected), None)
    if unexpected is not None:
        return unexpected.rpartition(".")[0], f"{unexpected} of shape {list(shapes[unexpected])}", f"no {unexpected}"
    return None


def _check_rebuilds(embedder: torch.nn.Module, kwargs: Mapping[str, Any], backbone_config: Mapping[str, Any] | None,
                    *, given: bool) -> None:
    """An :class:`InputError` keyed ``model_kwargs`` when the model ``kwargs`` build (what ``dynametric.json``
    records, what :func:`from_pretrained` rebuilds) is not ``embedder``: one changed after it was built (a head's
    ``normalize`` turned off, another pooling or head put in), whose folder would load as another model, silently,
    or not at all. Cheap: the model is built on the ``meta`` device."""
    what = "the model_kwargs given" if given else "its recorded build_embedder arguments"
    built = _rebuild_on_meta(kwargs, backbone_config, what)
    difference = _first_difference(embedder, built)
    if difference is None:
        return
    name, has, builds = difference
    advice = ("pass model_kwargs= that describe the model as it is" if given else
              "pass model_kwargs= describing the model as it is, or rebuild it with build_embedder")
    raise InputError(f"{name or 'the embedder'}: the model has {has} but {what} build {builds}, so the saved "
                     f"folder would not load as this model; {advice}", key="model_kwargs")


def _backbone_config(embedder: Any, kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The timm ``config.json`` of a ``hf-hub:`` / ``local-dir:`` backbone, recorded in ``dynametric.json`` so that
    the architecture is rebuilt where that folder is absent or without the network (``None`` for any other
    backbone); an :class:`InputError` when it cannot be had (the folder would not load anywhere else)."""
    from dynametric.models.backbones import TIMM_SOURCE_PREFIXES

    name = kwargs.get("backbone")
    if not isinstance(name, str) or not name.startswith(TIMM_SOURCE_PREFIXES):
        return None
    backbone = getattr(embedder, "backbone", None)
    config = getattr(backbone, "timm_config", None) if getattr(backbone, "name", None) == name else None
    if not isinstance(config, dict):
        raise InputError(f"backbone {name!r}: its timm config.json (the architecture) could not be read, so the model "
                         "folder could not be rebuilt where that source is absent; build the embedder with the "
                         "timm architecture name instead", key="model.backbone")
    return dict(config)


def _factory_identity(factory: Any) -> tuple[str, str] | None:
    """``(module, qualified name)`` of a ``BACKBONES`` entry (the function of a ``functools.partial``); ``None``
    where it has none (an object without ``__module__``)."""
    import functools

    if isinstance(factory, functools.partial):
        factory = factory.func
    module = getattr(factory, "__module__", None)
    qualname = getattr(factory, "__qualname__", None) or getattr(type(factory), "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str):
        return None
    return module, qualname


def _own(module: str) -> bool:
    return module == "dynametric" or module.startswith("dynametric.")


def _backbone_factory(kwargs: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(module, qualified name)`` of the factory that backbone ``kwargs["backbone"]`` resolves to in
    :data:`~dynametric.models.backbones.BACKBONES` when it is not dynametric's own (one registered by user code, a
    new name or one registered over a built-in name): recorded in ``dynametric.json`` (``backbone_factory``
    ``module:qualname``, and ``backbone_module``) so that loading checks that the name resolves to the same factory
    and, without that code, says what to import. ``None`` for dynametric's backbones and timm's."""
    from dynametric.models.backbones import BACKBONES

    name = kwargs.get("backbone")
    identity = _factory_identity(BACKBONES.get(name)) if isinstance(name, str) and name in BACKBONES else None
    if identity is None or _own(identity[0]):
        return None
    return identity


def _recorded_factory(meta: Mapping[str, Any]) -> str | None:
    """The factory a model folder records, ``module.qualname`` (``backbone_factory``; an older folder's
    ``backbone_module`` alone: the module)."""
    factory = meta.get("backbone_factory")
    if isinstance(factory, str) and ":" in factory:
        return factory.replace(":", ".", 1)
    module = meta.get("backbone_module")
    return module if isinstance(module, str) and module else None


def _import_advice(name: str, meta: Mapping[str, Any]) -> str:
    """What to import for backbone ``name`` of a model folder: the run's config ``imports`` it records, first, else
    the module that registers the name (not known in general: the recorded factory may be defined elsewhere)."""
    imports = [m for m in meta.get("imports") or [] if isinstance(m, str) and m]
    first = (f"import {', '.join(imports)} (the imports of the run's config), or " if imports else "")
    return (f"{first}import the module that registers it under {name!r} before loading (where the model was "
            "trained with a config, its 'imports:' lists it)")


def _check_backbone_known(meta: Mapping[str, Any], meta_path: Path) -> None:
    """The backbone name the folder records must resolve to the factory it was saved with: a name neither in
    ``BACKBONES`` nor a timm model here was registered by user code when the model was saved, so the error says
    what to import (``imports``, ``backbone_factory``) instead of the bare ``unknown backbone``; a name registered
    here to another factory than the recorded one (dynametric's own where user code registered over a built-in name
    when the model was saved, or another user factory) is refused too: its weights would load into another
    network and give other embeddings, silently."""
    from dynametric.models.backbones import BACKBONES, TIMM_SOURCE_PREFIXES, _unknown_backbone

    name = meta["model"].get("backbone")
    if not isinstance(name, str) or name.startswith(TIMM_SOURCE_PREFIXES):
        return
    recorded = _recorded_factory(meta)
    if name in BACKBONES:
        if recorded is None:
            return
        identity = _factory_identity(BACKBONES[name])
        now = f"{identity[0]}.{identity[1]}" if identity is not None else repr(BACKBONES[name])
        by_module = not isinstance(meta.get("backbone_factory"), str)  # an older folder: its module only
        same = identity is not None and (identity[0] == recorded if by_module else now == recorded)
        if same:
            return
        which = "dynametric's own" if identity is not None and _own(identity[0]) else "another"
        raise InputError(f"backbone {name!r} was the factory {recorded} when the model was saved, and here it is "
                         f"{which} ({now}): loaded into it, the weights would give other embeddings; "
                         f"{_import_advice(name, meta)}", file=meta_path, key="model.backbone")
    import timm

    if timm.is_model(name):
        return
    if recorded is not None:
        raise InputError(f"unknown backbone {name!r}: registered with the factory {recorded} when the model was "
                         f"saved; {_import_advice(name, meta)}", file=meta_path, key="model.backbone")
    unknown = _unknown_backbone(name, import_hint=False).message
    raise InputError(f"{unknown}; a backbone registered by user code (BACKBONES[{name!r}] = ...) is known only "
                     f"where the module that registers it is imported: {_import_advice(name, meta)}",
                     file=meta_path, key="model.backbone")


PREPROCESSING_KEY = "preprocessing_steps"
"""The ``dynametric.json`` entry of the evaluation preprocessing: a list of steps, each a dict with its ``op``
(``Resize``, ``CenterCrop``, ``ToTensor``, ``Normalize``, or another transform's name with its ``repr``), as the
export sidecar records them (:func:`dynametric.retrieval.export.preprocessing_steps`)."""
METRICS_PRECISIONS = ("fp32", "bf16", "fp16")
"""The precisions test metrics are measured in (``metrics_precision``), as ``--precision`` names them."""
_INTERPOLATIONS = ("nearest", "nearest-exact", "bilinear", "bicubic", "box", "hamming", "lanczos")
_STEP_KEYS = {"Resize": ("op", "size", "interpolation", "antialias", "max_aspect"), "CenterCrop": ("op", "size"),
              "ToTensor": ("op",), "Normalize": ("op", "mean", "std"), "SwapRB": ("op", "channel_order"),
              "Grayscale": ("op", "num_output_channels", "weights", "rounding")}
"""The entries of the steps :func:`model_card` writes as code; a step with other entries is shown as data."""


def _is_number(value: Any) -> bool:
    import math

    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_side(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _step_problem(step: Mapping[str, Any]) -> tuple[str, str] | None:
    """``(entry, what is wrong)`` for a step of a known ``op`` whose entries are not what that op takes."""
    op = step["op"]
    if op in ("Resize", "CenterCrop"):
        size = step.get("size")
        if not (_is_side(size) or (isinstance(size, list) and len(size) in (1, 2) and all(map(_is_side, size)))):
            return "size", f"expected a positive whole number or a list of one or two, got {size!r}"
    if op == "Resize":
        if step.get("interpolation", "bilinear") not in _INTERPOLATIONS:
            return "interpolation", f"expected one of {list(_INTERPOLATIONS)}, got {step.get('interpolation')!r}"
        if not isinstance(step.get("antialias", True), (bool, type(None))):
            return "antialias", f"expected true, false or null, got {step.get('antialias')!r}"
        if "max_aspect" in step and not (_is_number(step["max_aspect"]) and step["max_aspect"] >= 1):
            return "max_aspect", f"expected a number >= 1, got {step['max_aspect']!r}"
    if op == "Normalize":
        for name in ("mean", "std"):
            value = step.get(name)
            if not (isinstance(value, list) and value and all(map(_is_number, value))):
                return name, f"expected a non-empty list of finite numbers, got {value!r}"
        if len(step["mean"]) != len(step["std"]):
            return "std", f"expected as many values as mean ({len(step['mean'])}), got {len(step['std'])}"
        if any(v <= 0 for v in step["std"]):
            return "std", f"expected positive values, got {step['std']!r}"
    return None


def check_preprocessing(steps: Any, *, key: str = "preprocessing", file: Path | None = None) -> list[dict[str, Any]]:
    """``steps`` (a model folder's evaluation preprocessing) as the list of JSON dicts ``dynametric.json`` records
    under ``preprocessing_steps``; an :class:`InputError` naming ``key[i].entry`` (and ``file``) where it is not a
    non-empty list of dicts each with a string ``op``, or where a ``Resize`` / ``CenterCrop`` / ``Normalize`` step
    does not hold what that transform takes. A step of another ``op`` (a transform these four are not) is kept as
    it is, if it is JSON."""
    if isinstance(steps, (str, bytes, Mapping)) or not isinstance(steps, Sequence) or not steps:
        raise InputError("expected a non-empty list of preprocessing steps (dicts such as {'op': 'Resize', 'size': "
                         "256}, as dynametric.retrieval.export.preprocessing_steps(transform) gives them), got "
                         f"{_short(steps)}", file=file, key=key)
    out: list[dict[str, Any]] = []
    for i, step in enumerate(steps):
        where = f"{key}[{i}]"
        if not isinstance(step, Mapping) or not all(isinstance(k, str) for k in step):
            raise InputError(f"expected a dict of a step (with its 'op'), got {_short(step)}", file=file, key=where)
        if not isinstance(step.get("op"), str) or not step["op"]:
            raise InputError(f"expected an 'op' naming the step (Resize, CenterCrop, ToTensor, Normalize, ...), got "
                             f"{_short(step.get('op'))}", file=file, key=f"{where}.op")
        problem = _step_problem(step)
        if problem is not None:
            raise InputError(f"{step['op']}: {problem[1]}", file=file, key=f"{where}.{problem[0]}")
        try:
            out.append(json.loads(json.dumps(dict(step), allow_nan=False)))
        except (TypeError, ValueError) as exc:
            raise InputError(f"expected JSON values (strings, numbers, lists, dicts), got {_short(step)} "
                             f"({first_sentence(exc)})", file=file, key=where) from None
    return out


def _preprocessing_code(steps: Sequence[Mapping[str, Any]]) -> list[str]:
    """The lines of a ``torchvision`` ``Compose`` applying ``steps``; a step it does not know, or with entries it
    does not write, is a comment holding the step as recorded (in its place: nothing left out unsaid)."""
    lines = ["preprocess = T.Compose([  # the evaluation preprocessing (dynametric.json 'preprocessing_steps')"]
    for step in steps:
        op = step["op"]
        if op not in _STEP_KEYS or set(step) - set(_STEP_KEYS[op]):
            lines.append(f"    # apply here: {json.dumps(dict(step))}")
            continue
        if op in ("Resize", "CenterCrop"):
            size = step["size"]
            args = [repr(size if isinstance(size, int) else list(size))]
            if op == "Resize":
                mode = step.get("interpolation")
                if mode is not None:
                    args.append(f"interpolation=T.InterpolationMode.{mode.upper().replace('-', '_')}")
                if "antialias" in step:
                    args.append(f"antialias={step['antialias']!r}")
            lines.append(f"    T.{op}({', '.join(args)}),")
        elif op == "ToTensor":
            lines.append("    T.ToTensor(),")
        elif op == "SwapRB":  # the run's data.options.swap_rb: R and B exchanged before anything else
            lines.append("    T.Lambda(lambda im: Image.merge('RGB', im.split()[::-1])),  # R and B exchanged, as "
                         "the model was trained")
        elif op == "Grayscale":  # torchvision's Grayscale of a PIL image is Pillow's convert('L'), the recorded rule
            lines.append(f"    T.Grayscale(num_output_channels={int(step.get('num_output_channels', 1))}),")
        else:
            lines.append(f"    T.Normalize(mean={list(step['mean'])!r}, std={list(step['std'])!r}),")
    return [*lines, "])"]


def _heads_text(meta: Mapping[str, Any]) -> str:
    """``embedding width 128`` (one head), ``heads: class 128, shared 64`` (several)."""
    dims = meta.get("embedding_dims")
    if isinstance(dims, Mapping) and len(dims) == 1:
        return f"embedding width {next(iter(dims.values()))}"
    if isinstance(dims, Mapping) and dims:
        return "heads: " + ", ".join(f"{name} {width}" for name, width in dims.items())
    names = meta["model"].get("head_names")
    return "heads: " + ", ".join(map(str, names)) if names else "embedding width not recorded"


def _metrics_table(metrics: Mapping[str, Any], scale_names: Sequence[str]) -> list[str]:
    scales = [s for s in [*scale_names, "mean"] if isinstance(metrics.get(s), Mapping)]
    if not scales:
        return []
    # a metric without a value is null in metrics.json (NaN in memory): shown as nan
    names = [m for m, v in metrics[scales[0]].items() if isinstance(v, float) or v is None]

    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, (int, float)) else "nan"

    lines = ["| scale | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for s in scales:
        lines.append(f"| {s} | " + " | ".join(cell(metrics[s].get(m)) for m in names) + " |")
    return lines


def model_card(meta: Mapping[str, Any], config_yaml: str | None = None, repo_id: str | None = None) -> str:
    """The ``README.md`` of a model folder (Hugging Face model-card front matter + sections). Its usage applies the
    evaluation preprocessing the folder records (``preprocessing_steps``), or says that the caller must apply the
    training one where it records none; the metrics say the precision they were measured in where it is known."""
    model = meta["model"]
    dims = meta.get("embedding_dims")
    several = isinstance(dims, Mapping) and len(dims) > 1 or int(model.get("num_heads", 1) or 1) > 1
    eval_head = meta.get("eval_head")
    lines = ["---", "library_name: dynametric", "tags:", "- metric-learning", "- image-retrieval", "- dynametric",
             "---", "", f"# {repo_id or meta.get('name') or 'dynametric embedder'}", "",
             "An image embedding model trained with dynametric (hierarchy-aware deep metric learning): nearby "
             "embeddings mean similar images at every label scale.", "", "## Model", "",
             f"* backbone: `{model['backbone']}`, pooling `{model.get('pooling', 'avg')}`, "
             f"{'L2-normalised ' if model.get('normalize', True) else ''}"
             f"{'embeddings; ' if several else ''}{_heads_text(meta)}"]
    if several:
        lines.append(f"* evaluated head: {eval_head or 'concat'}"
                     f"{' (all heads joined)' if (eval_head or 'concat') == 'concat' else ''}")
    lines.append(f"* input: {model.get('in_chans', 3)} channels, {meta.get('input_size')} px")
    steps = meta.get(PREPROCESSING_KEY)
    if isinstance(steps, list) and steps:
        lines.append("* preprocessing: " + ", ".join(_step_text(s) for s in steps if isinstance(s, Mapping)))
    else:
        lines.append("* preprocessing: not recorded; apply the one the model was trained with (its evaluation "
                     "resize, crop and normalisation)")
    if isinstance(meta.get("trained_precision"), str):
        lines.append(f"* trained in precision {meta['trained_precision']}")
    lines += [f"* dynametric {meta.get('dynametric_version')}", ""]
    data = meta.get("data") or {}
    lines += ["## Data", ""]
    if data:
        lines += [f"* {k}: {v}" for k, v in data.items()]
    lines += [f"* label scales (finest first): {', '.join(meta.get('scale_names') or []) or 'unknown'}", ""]
    metrics = meta.get("metrics") or {}
    table = _metrics_table(metrics, meta.get("scale_names") or [])
    precision = meta.get("metrics_precision")
    if not table:
        said = ["Not recorded."]
    elif precision in ("bf16", "fp16"):
        trained = meta.get("trained_precision")
        run = f" with trainer.precision {trained}" if isinstance(trained, str) else ""
        said = [f"Test split, per label scale, computed in {precision} (autocast, as the run evaluated{run}). "
                "`from_pretrained` computes in float32 unless you autocast, so its embeddings, and metrics measured "
                "from them, can differ slightly.", "", *table]
    elif precision == "fp32":
        said = ["Test split, per label scale, computed in fp32:", "", *table]
    else:
        said = ["Test split, per label scale:", "", *table]
    lines += ["## Metrics", "", *said]
    imports = [m for m in meta.get("imports") or [] if isinstance(m, str) and m]
    if imports:  # the run's config imports: what registers its components (the backbone among them)
        usage = [f"import {m}  # registers the model's components (the run's config 'imports:')" for m in imports]
    elif isinstance(meta.get("backbone_module"), str) and meta["backbone_module"]:
        usage = [f"import {meta['backbone_module']}  # the module that registers backbone {model['backbone']!r} "
                 "(here the one defining its factory)"]
    else:
        usage = []
    if several:
        shape = "{" + ", ".join(f"{n!r}: [B, {w}]" for n, w in dims.items()) + "}" \
            if isinstance(dims, Mapping) and dims else "a dict of heads"
        out = [f"emb = model(images)   # {shape}"]
        if (eval_head or "concat") == "concat":
            out.append("emb = torch.cat(list(emb.values()), dim=1)   # the evaluated head, 'concat'")
        else:
            out.append(f"emb = emb[{eval_head!r}]   # the evaluated head")
    else:
        width = next(iter(dims.values())) if isinstance(dims, Mapping) and dims else "D"
        out = [f"emb = model(images)   # [B, {width}]"]
    if precision in ("bf16", "fp16"):
        out.insert(0, f"# the metrics were measured in {precision}: computing under torch.autocast(device_type, "
                      f"dtype=torch.{'bfloat16' if precision == 'bf16' else 'float16'}) computes as they were measured")
    load = f"model = Embedder.from_pretrained({(repo_id or 'path/to/this/folder')!r}).eval()"
    if isinstance(steps, list) and steps:
        swaps = any(isinstance(s, Mapping) and s.get("op") == "SwapRB" for s in steps)
        code = ["import torch", *(["from PIL import Image"] if swaps else []),
                "from torchvision import transforms as T", *usage,
                "from dynametric.data.base import load_rgb", "from dynametric.models import Embedder", "", load,
                *_preprocessing_code(steps),
                "images = torch.stack([preprocess(load_rgb(path)) for path in paths])  # load_rgb: the file as RGB, "
                "as dynametric reads it", "with torch.no_grad():", *(f"    {line}" for line in out)]
        after = ["", "The same steps are `model.preprocessing` (a list of dicts) after `from_pretrained`."]
        resize = [s for s in steps if isinstance(s, Mapping) and s.get("op") == "Resize" and "max_aspect" in s]
        if resize:
            after.append(f"`Resize` is dynametric's bounded resize: an image whose long side is more than "
                         f"{resize[0]['max_aspect']} times its short side is first centre-cropped to "
                         f"{resize[0]['max_aspect']}:1 along it; other images are resized exactly as by "
                         "`T.Resize`.")
    else:
        code = ["import torch", *usage, "from dynametric.models import Embedder", "", load,
                "# images: [B, C, H, W] float32, preprocessed as the model was trained (resize, crop, normalisation:"
                " this folder does not record them)", "with torch.no_grad():", *(f"    {line}" for line in out)]
        after = ["", "This folder records no preprocessing: apply the evaluation preprocessing the model was trained "
                 "with (resize, crop, mean and std; the training config, where one is included, holds it), or the "
                 "embeddings will differ from the ones the metrics were measured on."]
    lines += ["", "## Usage", "", "```python", *code, "```", *after, ""]
    if config_yaml:
        lines += ["## Training config", "", "```yaml", config_yaml.rstrip(), "```", ""]
    return "\n".join(lines)


def _step_text(step: Mapping[str, Any]) -> str:
    """A step in words for the card's model section: ``Resize 256``, ``Normalize mean [0.5, ...] std [...]``."""
    op = step.get("op")
    if op in ("Resize", "CenterCrop"):
        return f"{op} {step.get('size')}"
    if op == "Normalize":
        return f"Normalize mean {step.get('mean')} std {step.get('std')}"
    return str(op)


def save_pretrained(embedder: torch.nn.Module, folder: str | Path, *, model_kwargs: Mapping[str, Any] | None = None,
                    scale_names: Sequence[str] | None = None, metrics: Mapping[str, Any] | None = None,
                    data: Mapping[str, Any] | None = None, config_yaml: str | None = None,
                    eval_head: str | None = None, input_size: int | None = None,
                    repo_id: str | None = None, imports: Sequence[str] | None = None,
                    preprocessing: Sequence[Mapping[str, Any]] | None = None, trained_precision: str | None = None,
                    metrics_precision: str | None = None) -> Path:
    """Write a model folder (weights, ``dynametric.json``, ``config.yaml`` if given, model card).

    Into a new or empty folder, or over an earlier model folder (its ``dynametric.json`` is this format): its files
    are replaced and a ``config.yaml`` it wrote that this model lacks is removed; nothing else in the folder is
    touched. A file of one of these names that no earlier save wrote (a project's own ``README.md`` or
    ``config.yaml``, a run folder's config) is refused before anything is written, as is one the user made
    read-only. Every file is first written to a temporary file beside its target; only when all are written are
    they renamed into place, so a failed write (a full disk) leaves the folder as it was. The renames start with a
    ``dynametric.json`` marking the save unfinished and end with the final one, which records the SHA-256 of the
    weights: a save killed between its renames leaves a folder that loading refuses and the next save takes up.
    One save into a folder at a time: a save holds the folder's ``dynametric.lock`` while it writes (removed when it
    ends); a second save started meanwhile is one line, ``<folder>: the model folder is being written by another
    save_pretrained (process N); ...``, before it writes or removes anything.

    ``imports``: the modules the model's config imports (a run's ``imports:``; :func:`export_run` passes them),
    recorded in ``dynametric.json`` (``imports``), so that loading where the backbone is unknown names them first
    and the model card's usage imports them.

    ``preprocessing``: the evaluation preprocessing the model takes images through, a list of steps as
    :func:`dynametric.retrieval.export.preprocessing_steps` gives them (``{"op": "Resize", "size": 256, ...}``,
    ``{"op": "CenterCrop", "size": [224, 224]}``, ``{"op": "ToTensor"}``, ``{"op": "Normalize", "mean": [...],
    "std": [...]}``; :func:`export_run` passes the run's), checked (:func:`check_preprocessing`) and recorded as
    ``preprocessing_steps``; the model card's usage applies it. Unset: the preprocessing of an embedder loaded by
    :func:`from_pretrained` (its ``preprocessing``), else not recorded, and the card says the caller must apply the
    training preprocessing. ``trained_precision`` (a run's ``trainer.precision``, e.g. ``bf16-mixed``) and
    ``metrics_precision`` (``fp32`` / ``bf16`` / ``fp16``: what ``metrics`` were computed in) are recorded where
    given, and the card says them."""
    from dynametric.utils.io import write_error
    from dynametric.utils.output_locks import LOCK_NAME, output_lock

    folder = Path(folder)
    if preprocessing is None:  # a model folder's steps, loaded by from_pretrained: kept when saved again; an
        # attribute of the caller's own under that name (a torchvision Compose, ...) is not ours: left alone
        own = getattr(embedder, "preprocessing", None)
        if isinstance(own, list) and own and all(isinstance(step, Mapping) for step in own):
            preprocessing = own
    steps = None if preprocessing is None else check_preprocessing(preprocessing)
    for name, value in (("trained_precision", trained_precision), ("metrics_precision", metrics_precision)):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise InputError(f"expected a precision name such as 'bf16-mixed' or '32', got {_short(value)}", key=name)
    if metrics_precision is not None and metrics_precision not in METRICS_PRECISIONS:
        raise InputError(f"expected one of {list(METRICS_PRECISIONS)} (the precision the metrics were computed in), "
                         f"got {metrics_precision!r}", key="metrics_precision")
    _check_folder_path(folder)
    created: list[Path] = []  # the folders this save made itself (another save may make the same ones meanwhile)
    try:
        _make_folders(folder, created)
        # one save into the folder at a time: another one's temporary files are not a killed save's
        # (a lock that cannot be written, a full disk: the OSError of a save's write, naming the lock file)
        with output_lock(folder / LOCK_NAME, folder, "save_pretrained", key=None, what="the model folder",
                         cannot_create=lambda exc: write_error(exc, folder / LOCK_NAME, None)):
            return _save_locked(embedder, folder, model_kwargs=model_kwargs, scale_names=scale_names,
                                metrics=metrics, data=data, config_yaml=config_yaml, eval_head=eval_head,
                                input_size=input_size, repo_id=repo_id, imports=imports, preprocessing=steps,
                                trained_precision=trained_precision, metrics_precision=metrics_precision)
    except BaseException:
        for made in reversed(created):  # the folders this save made, when a failure left them empty
            try:
                made.rmdir()
            except OSError:
                break
        raise


def _save_locked(embedder: torch.nn.Module, folder: Path, *, model_kwargs: Mapping[str, Any] | None,
                 scale_names: Sequence[str] | None, metrics: Mapping[str, Any] | None, data: Mapping[str, Any] | None,
                 config_yaml: str | None, eval_head: str | None, input_size: int | None, repo_id: str | None,
                 imports: Sequence[str] | None, preprocessing: list[dict[str, Any]] | None,
                 trained_precision: str | None, metrics_precision: str | None) -> Path:
    """:func:`save_pretrained` into the existing ``folder``, holding its lock."""
    import hashlib

    from safetensors.torch import save

    from dynametric import __version__
    from dynametric.utils.io import StagedFiles, remove_stale_temps
    from dynametric.utils.output_locks import LOCK_NAME

    own = _earlier_save(folder)
    for name in (MODEL_FILE, META_FILE, CONFIG_FILE, CARD_FILE):
        if (folder / name).exists() and name not in own:
            raise InputError(f"exists and was not written by an earlier save_pretrained (no {META_FILE} of a model "
                             f"folder naming it); it is not overwritten: save to another folder, or remove the file "
                             "yourself", file=folder / name)
    # what a killed save left (its temporary files) is removed when the folder is known as a save's
    # (the lock this save holds there, and the temporary files of other saves' attempts to take it, are a save's too)
    clean_up = bool(own) or holds_only_own_files(folder, (LOCK_NAME,), lambda name: name in _NAMES or name == LOCK_NAME)
    kwargs = _build_kwargs(embedder, model_kwargs)
    backbone_config = _backbone_config(embedder, kwargs)
    # before anything is written: the folder must rebuild this model, not the one it was first built as
    _check_rebuilds(embedder, kwargs, backbone_config, given=model_kwargs is not None)
    state = {k: v.detach().cpu().contiguous() for k, v in embedder.state_dict().items()}
    weights = save(state, metadata={"format": "pt"})
    dims = getattr(embedder, "embedding_dims", None)
    files = [MODEL_FILE, META_FILE, *([CONFIG_FILE] if config_yaml is not None else []), CARD_FILE]
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "dynametric_version": __version__, "model": kwargs,
            "embedding_dims": dict(dims) if dims is not None else None, "scale_names": list(scale_names or []),
            "eval_head": eval_head, "input_size": input_size, "metrics": dict(metrics or {}), "data": dict(data or {}),
            "weights_sha256": hashlib.sha256(weights).hexdigest(), "files": files}
    if backbone_config is not None:
        meta["backbone_config"] = backbone_config
    factory = _backbone_factory(kwargs)
    if factory is not None:  # a backbone of user code: loading elsewhere needs it, and checks it is the same
        meta["backbone_module"] = factory[0]
        meta["backbone_factory"] = f"{factory[0]}:{factory[1]}"
    if imports:
        meta["imports"] = [str(m) for m in imports]
    if preprocessing is not None:
        meta[PREPROCESSING_KEY] = preprocessing
    if trained_precision is not None:
        meta["trained_precision"] = trained_precision
    if metrics_precision is not None:
        meta["metrics_precision"] = metrics_precision
    remove_config = config_yaml is None and CONFIG_FILE in own and (folder / CONFIG_FILE).exists()
    if remove_config:
        replacement_mode(folder / CONFIG_FILE)  # one the user made read-only is not removed either
    # The unfinished description lists every file the folder may hold until the save ends (the earlier config.yaml
    # included) and weights that match none: the next save knows the folder as its own, a load refuses it.
    unfinished = {**meta, "weights_sha256": UNFINISHED,
                  "files": [*files, *([CONFIG_FILE] if remove_config else [])]}
    contents: list[tuple[str, bytes]] = [(MODEL_FILE, weights)]
    if config_yaml is not None:
        contents.append((CONFIG_FILE, config_yaml.encode("utf-8")))
    contents.append((CARD_FILE, model_card(meta, config_yaml, repo_id).encode("utf-8")))

    def renamed(name: str) -> None:
        if name == UNFINISHED and remove_config:
            (folder / CONFIG_FILE).unlink(missing_ok=True)

    if clean_up:
        remove_stale_temps(folder, _NAMES.__contains__)
    with StagedFiles() as staged:  # leaving it, what was not renamed is removed (before the folders it made)
        # every file written before any is renamed: a failure here (a full disk) leaves the folder as it was
        staged.write(UNFINISHED, folder / META_FILE, _json_bytes(unfinished))
        for name, blob in contents:
            staged.write(name, folder / name, blob)
        staged.write(META_FILE, folder / META_FILE, _json_bytes(meta))
        # renames need no space; the unfinished description first, the final one last
        staged.commit((UNFINISHED, *(name for name, _ in contents), META_FILE), renamed=renamed)
    return folder


def _json_bytes(obj: Any) -> bytes:
    """``obj`` as :func:`~dynametric.utils.io.atomic_write_json` writes it (indented, NaN as ``null``)."""
    return (json.dumps(nan_to_null(obj), indent=2) + "\n").encode("utf-8")


def _check_folder_path(folder: Path) -> None:
    """A model folder's path: not a file, nor under one (was a raw ``NotADirectoryError``)."""
    check_name_lengths(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError("exists and is not a folder; a model folder is written there", file=folder)
    above = folder.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if above.exists() and not above.is_dir():
        raise InputError(f"is a file, not a folder; expected a folder to hold the model folder {folder}", file=above)


def _make_folders(folder: Path, created: list[Path]) -> None:
    """Make ``folder`` and the folders above it that do not exist, outermost first, appending to ``created`` each one
    this call made (a folder another process made meanwhile is not this call's: a failed save removes only its
    own)."""
    missing: list[Path] = []
    while not folder.exists() and folder != folder.parent:
        missing.insert(0, folder)
        folder = folder.parent
    for path in missing:
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise
            continue
        created.append(path)


def _earlier_save(folder: Path) -> set[str]:
    """The files an earlier :func:`save_pretrained` wrote in ``folder``: those its ``dynametric.json`` lists (all
    four names for a folder saved before the list was recorded); none where ``folder`` holds no such description."""
    try:
        meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return set()
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        return set()
    listed = meta.get("files")
    names = {MODEL_FILE, META_FILE, CONFIG_FILE, CARD_FILE}
    return names & set(listed) | {META_FILE} if isinstance(listed, list) else names


def _run_folders() -> Any:
    """:mod:`dynametric.retrieval.hub`, which reads ``dynametric train`` run folders (they need the config and the
    engine). The one import of ``models/`` that points up a layer, and only when a run folder is given: it keeps
    ``Embedder.from_pretrained(run_dir)`` and ``push_to_hub(run_dir, ...)`` working."""
    import dynametric.retrieval.hub as run_hub

    return run_hub


def export_run(run_dir: str | Path, folder: str | Path, *, checkpoint: str = "best.ckpt",
               repo_id: str | None = None, local_paths: bool = True) -> Path:
    """A model folder from a ``dynametric train`` run folder: :func:`dynametric.retrieval.hub.export_run`."""
    return _run_folders().export_run(run_dir, folder, checkpoint=checkpoint, repo_id=repo_id,
                                     local_paths=local_paths)


def _resolve(source: str | Path, *, revision: str | None, cache_dir: str | Path | None,
             local_files_only: bool, token: str | None) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    text = str(source)
    if path.exists() or text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise InputError("not a dynametric model folder, a run folder, or a Hugging Face repository id "
                         "('<owner>/<name>')", file=text)
    hub = _require_hub()
    try:
        return Path(hub.snapshot_download(repo_id=text, revision=revision, cache_dir=cache_dir,
                                          local_files_only=local_files_only, token=token,
                                          allow_patterns=[MODEL_FILE, META_FILE, CONFIG_FILE, CARD_FILE]))
    except Exception as exc:  # offline, unknown repository, no access ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot fetch the model from the Hugging Face Hub ({type(exc).__name__}: {first})",
                         file=text) from None


def from_pretrained(source: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None,
                    local_files_only: bool = False, token: str | None = None) -> Any:
    """Rebuild an :class:`~dynametric.models.Embedder` with its weights from a model folder, a ``dynametric
    train`` run folder (``config.yaml`` + ``best.ckpt``), or a Hugging Face repository id. Eval mode.

    The embedder's ``preprocessing`` is the evaluation preprocessing the folder records (``preprocessing_steps``: a
    list of step dicts, ``Resize`` / ``CenterCrop`` / ``ToTensor`` / ``Normalize`` with their arguments; a run
    folder's, from its config), ``None`` where it records none (a folder saved without it, or by an older
    dynametric); ``hub_meta`` is the folder's whole ``dynametric.json`` (``trained_precision``,
    ``metrics_precision``, ...)."""
    from safetensors.torch import load_file

    folder = _resolve(source, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                      token=token)
    if not (folder / META_FILE).is_file() and (folder / CONFIG_FILE).is_file():
        if not any((folder / name).is_file() for name in ("best.ckpt", "last.ckpt")):
            raise InputError(f"neither a dynametric model folder (no {META_FILE}) nor a dynametric train run folder "
                             f"(a {CONFIG_FILE} without best.ckpt or last.ckpt beside it)", file=folder)
        return _run_folders().run_embedder(folder)  # a run folder
    meta_path = folder / META_FILE
    if not meta_path.is_file():
        raise InputError(f"no {META_FILE} (is this a dynametric model folder?)", file=folder)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputError(f"not valid JSON ({exc})", file=meta_path) from None
    except RecursionError:  # arrays or objects nested too deep for Python's parser
        raise InputError("not a description dynametric can read: JSON nested too deep", file=meta_path) from None
    if isinstance(meta, dict) and meta.get("format") == FORMAT:
        _check_format_version(meta, meta_path)  # a later layout: said before its entries are read
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("model"), dict):
        raise InputError(f"expected a {FORMAT} description with a 'model' entry", file=meta_path)
    if meta.get("weights_sha256") == UNFINISHED:
        raise InputError("a save_pretrained into this folder was interrupted before it finished (its description "
                         "marks the save unfinished): save the model again", file=meta_path)
    steps = meta.get(PREPROCESSING_KEY)
    preprocessing = None if steps is None else check_preprocessing(steps, key=PREPROCESSING_KEY, file=meta_path)
    model = _build_described(meta, meta_path)
    weights = folder / MODEL_FILE
    if not weights.is_file():
        raise InputError("weight file not found", file=weights)
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors' own SafetensorError (truncated, not a safetensors file), OSError
        raise InputError(f"not a readable safetensors file ({first_sentence(exc)})", file=weights) from None
    recorded = meta.get("weights_sha256")
    if isinstance(recorded, str) and (digest := file_sha256(weights)) != recorded:
        raise InputError(f"does not match the weights {META_FILE} describes (SHA-256 {digest[:12]}..., recorded "
                         f"{recorded[:12]}...): an interrupted or mixed save? save the model again", file=weights)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        first = str(exc).strip().splitlines()
        raise InputError(f"weights do not match the described model ({first[-1].strip() if first else exc})",
                         file=weights) from None
    if missing or unexpected:
        raise InputError(f"weights do not match the described model: missing {sorted(missing)[:5]}, unexpected "
                         f"{sorted(unexpected)[:5]}", file=weights)
    model.eval()
    model.notes = []  # the build's notes (a local-dir backbone without its weights) do not apply: the folder's load
    model.hub_meta = meta
    # the evaluation preprocessing the folder records (None: an older folder, or a save that was given none)
    model.preprocessing = preprocessing
    return model


def _check_format_version(meta: Mapping[str, Any], meta_path: Path) -> None:
    """A one-line :class:`InputError` naming ``meta_path`` when its ``format_version`` is newer than
    :data:`FORMAT_VERSION` (a later dynametric's folder, which this code would misread) or not a whole number; a
    description without one (written before it was recorded) is read as format 1."""
    from dynametric import __version__

    version = meta.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InputError(f"expected a whole number >= 1, got {version!r}", file=meta_path, key="format_version")
    if version > FORMAT_VERSION:
        by = meta.get("dynametric_version")
        writer = f"dynametric {by}" if isinstance(by, str) and by else "a later dynametric"
        raise InputError(f"written by {writer} (format {version}); this version ({__version__}) reads format "
                         f"{FORMAT_VERSION}: upgrade dynametric", file=meta_path, key="format_version")


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a simple annotation of :func:`build_embedder` (None, bool, int, str, a Literal, a
    union of these, a sequence or mapping of them)."""
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None) or hint is None:
        return value is None
    if hint is Any:
        return True
    if origin is typing.Literal:
        return value in args
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        return isinstance(value, Mapping)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Sequence):
        return isinstance(value, list) and all(_fits(v, args[0]) for v in value) if args else isinstance(value, list)
    return True  # an annotation this check does not read: build_embedder checks the value


def _describe(hint: Any) -> str:
    """An annotation in words: ``int``, ``int or None``, ``one of 'avg', 'max'``, ``a list of int or None``."""
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is type(None):
        return "None"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is not None and isinstance(origin, type) and issubclass(origin, Mapping):
        return "a mapping"
    if origin is not None and isinstance(origin, type) and issubclass(origin, Sequence):
        inner = _describe(args[0]) if args else ""
        return f"a list of ({inner})" if " or " in inner else f"a list of {inner}" if inner else "a list"
    return getattr(hint, "__name__", str(hint))


def _build_described(meta: Mapping[str, Any], meta_path: Path) -> Any:
    """``build_embedder(**meta["model"])`` with ``pretrained=False, pretrained_path=None`` whatever the description
    says (the folder's weights replace them: no download, no other file read), every argument's name and JSON type
    checked first, a ``hf-hub:`` /
    ``local-dir:`` backbone rebuilt from the timm config the folder records (``backbone_config``); errors name
    ``dynametric.json`` and the entry."""
    import typing

    from dynametric.models.backbones import TIMM_SOURCE_PREFIXES, require_local_dir_timm
    from dynametric.models.embedder import build_embedder

    kwargs = dict(meta["model"])
    hints = typing.get_type_hints(build_embedder)
    for name, value in kwargs.items():
        if name not in hints or name == "return":
            raise InputError(f"'model' holds {name!r}, which is not a build_embedder argument (written by another "
                             "dynametric version?)", file=meta_path, key=f"model.{name}")
        if not _fits(value, hints[name]):
            raise InputError(f"expected {_describe(hints[name])}, got {value!r} "
                             f"({type(value).__name__})", file=meta_path, key=f"model.{name}")
    _check_backbone_known(meta, meta_path)
    # the folder's weights replace any initial ones: never a download, never a file the description names
    kwargs["pretrained"] = False
    kwargs["pretrained_path"] = None
    name = kwargs.get("backbone")
    config = meta.get("backbone_config")
    with tempfile.TemporaryDirectory(prefix="dynametric-backbone-") as tmp:
        if isinstance(name, str) and name.startswith(TIMM_SOURCE_PREFIXES) and isinstance(config, dict):
            try:  # built as a local-dir: model, which older timm releases cannot read
                require_local_dir_timm(f"the backbone {name!r}, rebuilt from the timm config the folder records,")
            except InputError as exc:
                raise InputError(exc.message, file=meta_path, key=exc.key) from None
            (Path(tmp) / "config.json").write_text(json.dumps(config), encoding="utf-8")
            kwargs["backbone"] = f"local-dir:{tmp}"  # the recorded architecture: no folder, no network needed
        try:  # the random initial weights (the folder's replace them) on a forked CPU generator: not the caller's
            with torch.random.fork_rng(devices=[]):
                model = build_embedder(**kwargs)
        except InputError as exc:
            raise InputError(exc.message, file=meta_path, key=exc.key) from None
        except TypeError as exc:  # a value the simple type check let through
            raise InputError(f"'model' holds arguments build_embedder does not take ({first_sentence(exc)})",
                             file=meta_path) from None
    if kwargs.get("backbone") != name:  # as built from the name the folder records (save_pretrained again)
        model.build_kwargs["backbone"] = name
        model.backbone.name = name
        model.backbone.timm_config = dict(config) if isinstance(config, dict) else None
    return model


def push_to_hub(model_or_run: torch.nn.Module | str | Path, repo_id: str, *, private: bool = False,
                token: str | None = None, commit_message: str = "Upload dynametric embedder",
                **save_kwargs: Any) -> str:
    """Upload an embedder (``save_pretrained`` arguments in ``save_kwargs``), a model folder or a run folder to
    the Hub repository ``repo_id`` (created if needed); returns the commit URL."""
    hub = _require_hub()
    api = hub.HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="dynametric-hub-") as tmp:
        if isinstance(model_or_run, torch.nn.Module):
            folder = save_pretrained(model_or_run, tmp, repo_id=repo_id, **save_kwargs)
        else:
            src = Path(model_or_run)
            if (src / META_FILE).is_file():
                folder = src
            elif (src / CONFIG_FILE).is_file():
                folder = export_run(src, tmp, repo_id=repo_id, local_paths=False)  # no local folders uploaded
            else:
                raise InputError("neither a model folder nor a dynametric run folder", file=src)
        api.create_repo(repo_id=repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message,
                                 allow_patterns=[MODEL_FILE, META_FILE, CONFIG_FILE, CARD_FILE])
    return str(getattr(info, "commit_url", info))
