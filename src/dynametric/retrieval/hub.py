"""Sharing a ``dynametric train`` run: its embedder, and a model folder made from it.

The model-folder format (``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``) is
:mod:`dynametric.models.hub`; a run folder (``config.yaml`` + ``best.ckpt`` / ``last.ckpt``) needs the config and the
engine to be rebuilt, so it is read here, a layer above. ``dynametric.models.hub`` hands run folders to this module,
so ``Embedder.from_pretrained(run_dir)`` and ``push_to_hub(run_dir, ...)`` accept them as well.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from torch import nn

from dynametric.config import config_to_yaml, embedder_kwargs, load_config
from dynametric.config.schema import PATH_KEYS, Config, inference_precision
from dynametric.engine.builders import eval_head
from dynametric.errors import InputError
from dynametric.models.hub import save_pretrained
from dynametric.retrieval.export import preprocessing_steps
from dynametric.retrieval.model import load_embedder


def run_embedder(run_dir: str | Path) -> nn.Module:
    """The embedder of a run folder (``best.ckpt``, else ``last.ckpt``), eval mode."""
    run_dir = Path(run_dir)
    import warnings

    ckpt = run_dir / "best.ckpt" if (run_dir / "best.ckpt").is_file() else run_dir / "last.ckpt"
    loaded = load_embedder(ckpt)
    for note in loaded.notes:  # a backbone class other than the run's (the library's way to say it)
        warnings.warn(note, UserWarning, stacklevel=3)
    model = loaded.model
    setattr(model, "notes", list(loaded.notes))  # noqa: B010 - an Embedder attribute, not a module's
    setattr(model, "preprocessing", preprocessing_steps(loaded.transform))  # noqa: B010 - as from a model folder
    return model


def export_run(run_dir: str | Path, folder: str | Path, *, checkpoint: str = "best.ckpt",
               repo_id: str | None = None, local_paths: bool = True) -> Path:
    """A model folder from a ``dynametric train`` run folder: its ``checkpoint`` (default ``best.ckpt``, else
    ``last.ckpt``), config, test metrics and data description. ``local_paths=False`` (what ``push_to_hub`` of a
    run folder writes): the config's paths (:data:`~dynametric.config.schema.PATH_KEYS`: ``data.root``,
    ``model.pretrained_path``, ``run.output_dir``), and every other string of the config, at any depth, that is an
    absolute local path (``/...``, ``~/...``, ``C:\\...``, ``\\\\server\\...``, a ``file:`` URI: in
    ``data.options``, ``run.logger_options``, ``model.backbone_kwargs`` ...), in ``config.yaml``, the model card and
    ``dynametric.json`` (the data description, the model's arguments), are shortened to their last component
    (``/home/me/data/cars/labels.csv`` -> ``labels.csv``, ``file:///home/me/mlruns`` -> ``mlruns``; a
    ``local-dir:/home/me/vit`` backbone is published as ``local-dir:vit``, rebuilt from the timm config the folder
    records wherever it is loaded), so an upload
    does not publish the folders of the machine that trained. Relative paths (outside ``PATH_KEYS``) and URLs with
    a host (``https://``, ``s3://``) stay as they are.

    The folder records the run's evaluation preprocessing (``preprocessing_steps``, as the export sidecar does:
    :func:`dynametric.retrieval.export.preprocessing_steps` of the transform ``embed`` applies), its
    ``trainer.precision`` (``trained_precision``) and the precision its test metrics were computed in
    (``metrics_precision``, where it has test metrics: :func:`~dynametric.config.schema.inference_precision`, as
    the run evaluated)."""
    run_dir = Path(run_dir)
    ckpt = run_dir / checkpoint
    if not ckpt.is_file() and checkpoint == "best.ckpt":
        ckpt = run_dir / "last.ckpt"
    loaded = load_embedder(ckpt)
    cfg = load_config(loaded.config_path)
    if not local_paths:
        cfg = _without_local_paths(cfg)
        _rename_backbone(loaded.model, cfg.model.backbone)
    metrics: dict[str, Any] = {}
    info: dict[str, Any] = {}
    for name, target in (("metrics.json", metrics), ("run_info.json", info)):
        path = run_dir / name
        if path.is_file():
            try:
                target.update(json.loads(path.read_text(encoding="utf-8")))
            except ValueError as exc:
                raise InputError(f"cannot read ({exc})", file=path) from None
    data = {"format": cfg.data.format, "root": cfg.data.root, "train images": info.get("train_images"),
            "test images": info.get("test_images"), "validation": info.get("validation_source")}
    if not local_paths:
        data = _shorten_local_paths(data)
    return save_pretrained(loaded.model, folder, model_kwargs=embedder_kwargs(cfg.model),
                           scale_names=info.get("scale_names"), metrics=metrics.get("test") or {},
                           data={k: v for k, v in data.items() if v is not None}, config_yaml=config_to_yaml(cfg),
                           eval_head=eval_head(cfg), input_size=loaded.input_size, repo_id=repo_id,
                           imports=list(cfg.imports), preprocessing=preprocessing_steps(loaded.transform),
                           trained_precision=str(cfg.trainer.precision),
                           metrics_precision=inference_precision(cfg.trainer.precision) if metrics.get("test")
                           else None)


def _rename_backbone(model: Any, name: str) -> None:
    """Give ``model`` (a fresh load of the run, not shared) the backbone name ``name`` where it records another: a
    ``local-dir:/abs/folder`` backbone published as ``local-dir:folder``. The model folder rebuilds such a backbone
    from the timm config it records, never from the folder the name points to, so the name only describes it."""
    backbone = getattr(model, "backbone", None)
    if getattr(backbone, "name", name) != name:
        backbone.name = name  # type: ignore[union-attr]
    kwargs = getattr(model, "build_kwargs", None)
    if isinstance(kwargs, dict) and kwargs.get("backbone", name) != name:
        kwargs["backbone"] = name


def _without_local_paths(cfg: Config) -> Config:
    """A copy of ``cfg`` whose :data:`~dynametric.config.schema.PATH_KEYS` values are their last path component
    (relative ones too), and every other string value that is an absolute local path, at any depth (options,
    lists, nested sections), its last component (:func:`local_path_name`)."""
    import copy

    out = _shorten_local_paths(copy.deepcopy(cfg))
    for key in PATH_KEYS:
        section, name = key.split(".")
        holder = getattr(out, section)
        value = getattr(holder, name)
        if isinstance(value, str) and value:
            setattr(holder, name, _last_component(value))
    return out


_WINDOWS_ABSOLUTE = re.compile(r"^(?:[A-Za-z]:[\\/]|\\\\)")  # C:\... / C:/... / \\server\share
_HOME = re.compile(r"^~[^/\\]*(?:[/\\]|$)")  # ~, ~/..., ~user/...
_LOCAL_DIR = "local-dir:"  # timm's source prefix of a model folder (a backbone name)


def _last_component(path: str) -> str:
    """The last component of ``path`` (POSIX or Windows separators); ``path`` itself where it has none (``/``)."""
    return PurePosixPath(path.replace("\\", "/")).name or path


def local_path_name(value: str) -> str:
    """``value`` as :func:`export_run` publishes it without local paths: an absolute local path (``/home/me/x``,
    ``~/x``, ``C:\\Users\\me\\x``, ``\\\\server\\share\\x``) or a ``file:`` URI (``file:///home/me/x``) as its last
    component (``x``), also after timm's ``local-dir:`` source prefix (``local-dir:/home/me/vit`` ->
    ``local-dir:vit``); any other string (a relative path, a name, a URL with a host such as ``https://...`` or
    ``s3://...``) as it is."""
    if value.startswith(_LOCAL_DIR):
        rest = value[len(_LOCAL_DIR):]
        short = local_path_name(rest)
        return value if short == rest else _LOCAL_DIR + short
    if value[:5].lower() == "file:":
        return _last_component(unquote(urlsplit(value).path))
    if value.startswith("/") or _HOME.match(value) or _WINDOWS_ABSOLUTE.match(value):
        return _last_component(value)
    return value


def _shorten_local_paths(value: Any) -> Any:
    """``value`` with :func:`local_path_name` applied to every string in it, at any depth: dict values (not keys),
    list and tuple items, the fields of a dataclass (changed in place; the caller passes a copy)."""
    if isinstance(value, str):
        return local_path_name(value)
    if isinstance(value, dict):
        return {k: _shorten_local_paths(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_shorten_local_paths(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            setattr(value, f.name, _shorten_local_paths(getattr(value, f.name)))
    return value
