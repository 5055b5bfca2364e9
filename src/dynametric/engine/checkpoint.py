"""Checkpoint IO: atomic writes and safe loading (``torch.load(..., weights_only=True)``).

A checkpoint is written to a temporary file beside its target and renamed over it
(:func:`dynametric.utils.io.atomic_torch_save`), so a crash never leaves a truncated ``last.ckpt``; ``torch.save``
writes through Python's file IO, and the write's own error is raised, so a full disk is an ``OSError`` naming the
checkpoint (``torch.save`` reports it as ``RuntimeError: ... unexpected pos``).
Loading never unpickles arbitrary objects: everything the engine stores is tensors, numbers, strings
and plain containers, and a file that needs more (a crafted pickle) is refused with an :class:`InputError`.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from dynametric.errors import InputError, first_sentence
from dynametric.utils.io import atomic_torch_save
from dynametric.utils.limits import out_of_memory
from dynametric.utils.processes import interrupts_deferred


def save_checkpoint_file(checkpoint: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically, streamed with Python's file IO (:func:`atomic_torch_save`: a full
    disk is one ``OSError`` naming ``path``, the temporary file removed; no serialised copy held in memory). A
    Ctrl-C or SIGTERM during the write is delivered once it is done (:func:`interrupts_deferred`): the run then stops
    as interrupted, with a whole checkpoint to resume from."""
    with interrupts_deferred():
        atomic_torch_save(path, checkpoint)


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; clear errors for missing, corrupt or unsafe files."""
    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder; expected a checkpoint file", file=path)
    if not path.is_file():
        raise InputError("checkpoint file not found", file=path)
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # torch.save: a zip file (or legacy pickle)
        raise InputError(f"not a checkpoint: the file does not start like a torch.save file (first bytes {magic!r})",
                         file=path)
    try:
        with warnings.catch_warnings():  # a damaged legacy header reads as an odd pickle protocol: said below
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        from dynametric.models.embedder import damaged_pickle, weights_only_refusal

        reason = weights_only_refusal(exc)
        if damaged_pickle(reason):
            raise InputError(f"truncated or corrupt checkpoint (its pickle data is damaged: {reason})",
                             file=path) from None
        raise InputError("refusing to load: the file needs objects other than tensors and plain containers "
                         f"(loaded with weights_only=True: {reason})", file=path) from None
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in torch's readers with many types
        # (RuntimeError, EOFError, OSError, ValueError; IndexError, KeyError, struct.error, ... in a legacy pickle)
        if out_of_memory(exc):  # the file is not to blame: the command's out-of-memory line says what is
            raise
        raise InputError(f"truncated or corrupt checkpoint (torch could not read it: "
                         f"{first_sentence(exc)})", file=path) from None
    if not isinstance(obj, dict):
        raise InputError(f"expected a checkpoint dict, found {type(obj).__name__}", file=path)
    return obj


def nonfinite_parameters(model: nn.Module) -> list[str]:
    """The names of ``model``'s floating-point parameters holding a NaN/Inf (one host read): weights that must not be
    saved (:class:`~dynametric.engine.module.MetricLearningModule`) nor loaded for inference
    (:func:`~dynametric.engine.inference.load_trained`). Parameters only: a buffer may hold an infinite mask."""
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    if not named:
        return []
    ok = torch.stack([torch.isfinite(p.detach()).all() for _, p in named]).tolist()
    return [n for (n, _), good in zip(named, ok) if not good]


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint plugin: atomic save, ``weights_only=True`` load."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        save_checkpoint_file(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint_file(path, map_location="cpu" if map_location is None else map_location)


def embedder_state_dict(checkpoint: dict[str, Any], prefix: str = "embedder.") -> dict[str, torch.Tensor]:
    """The embedder's weights from a training checkpoint (module keys ``embedder.*``)."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise InputError("checkpoint has no 'state_dict'", key="state_dict")
    out = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not out:
        raise InputError(f"checkpoint has no '{prefix}*' weights", key="state_dict")
    return out


def model_mismatch(model: nn.Module, state: dict[str, Any]) -> str | None:
    """Why the weights ``state`` (names -> tensors) cannot be loaded into ``model``, in one line, or ``None`` when
    they fit: tensors of another shape (another width or backbone than the config's), missing or unexpected names.
    Nothing is loaded. The wording of ``evaluate --checkpoint`` / ``embed`` and of ``train --resume``."""
    own = model.state_dict()
    sizes = [f"size mismatch for {name}: copying a param with shape {value.shape} from checkpoint, the shape "
             f"in current model is {own[name].shape}."
             for name, value in state.items()
             if name in own and hasattr(value, "shape") and tuple(value.shape) != tuple(own[name].shape)]
    if sizes:
        return (f"checkpoint does not match the configured model ({len(sizes)} tensor(s) of another shape; first: "
                f"{sizes[0]})")
    missing, unexpected = [k for k in own if k not in state], [k for k in state if k not in own]
    if missing or unexpected:
        return f"checkpoint does not match the configured model: missing {missing[:5]}, unexpected {unexpected[:5]}"
    return None


MODEL_KEYS_NOT_EMBEDDING = ("pretrained", "pretrained_path", "freeze_bn", "channels_last")
"""``model`` keys that do not change what a trained checkpoint computes: where its first weights came from (the
checkpoint's replace them), batch-norm freezing in training (eval mode uses the running statistics anyway), the
memory layout. Every other ``model`` key (backbone and its options, pooling, heads, normalisation, input channels)
decides the embeddings and must be the one the checkpoint was trained with (:func:`model_config_changes`)."""


def trained_statistics(cfg: Any, checkpoint: dict[str, Any]) -> tuple[list[float], list[float], bool] | None:
    """``(mean, std, predates)``: the input statistics a checkpoint trained with, where ``cfg`` leaves them to the
    backbone (``data.mean`` and ``data.std`` unset, three input channels) and they may not be the backbone's: ImageNet's
    when its recorded ``data`` section has neither key (``predates`` True: trained before the transforms followed the
    backbone's statistics), the recorded ones when it has both set (a resumed run of such a checkpoint recorded
    them). ``None`` otherwise: the config's own statistics, or a checkpoint that records no config."""
    from dynametric.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    extra = checkpoint.get("dynametric") if isinstance(checkpoint, dict) else None
    stored = extra.get("config") if isinstance(extra, dict) else None
    data = stored.get("data") if isinstance(stored, dict) else None
    if cfg.data.mean is not None or cfg.data.std is not None or int(cfg.model.in_chans) != 3 \
            or not isinstance(data, dict):
        return None
    if "mean" not in data and "std" not in data:
        return list(IMAGENET_MEAN), list(IMAGENET_STD), True
    mean, std = data.get("mean"), data.get("std")
    if isinstance(mean, list) and isinstance(std, list):
        return [float(v) for v in mean], [float(v) for v in std], False
    return None


def stored_model_config(checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """The ``model`` section of the config a ``dynametric train`` checkpoint was saved with (``config_to_dict``
    form, stored under ``dynametric.config``), or ``None`` for a checkpoint that records none (an older
    dynametric, or one written by other code)."""
    extra = checkpoint.get("dynametric")
    config = extra.get("config") if isinstance(extra, dict) else None
    model = config.get("model") if isinstance(config, dict) else None
    return model if isinstance(model, dict) else None


class _Absent:
    def __repr__(self) -> str:
        return "absent"


ABSENT: Any = _Absent()
"""The value :func:`model_config_changes` gives a key one side lacks (its ``repr`` is ``absent``)."""


def model_config_changes(stored: dict[str, Any], current: dict[str, Any],
                         prefix: str = "model") -> list[tuple[str, Any, Any]]:
    """``(dotted key, checkpoint's value, current value)`` for every ``model`` key that decides the embeddings
    (all but :data:`MODEL_KEYS_NOT_EMBEDDING`) and differs between the checkpoint's stored ``model`` section and
    ``current`` (both as ``config_to_dict`` writes them; mappings such as ``backbone_kwargs`` compared option by
    option, a missing option given as :data:`ABSENT`). A key the stored section lacks (added by a later dynametric)
    counts only when it is not at the schema's default; a key only the stored section has (no longer in the schema)
    is not compared."""
    from dynametric.config import schema_default

    changes: list[tuple[str, Any, Any]] = []
    for name, now in current.items():
        key = f"{prefix}.{name}"
        if name in MODEL_KEYS_NOT_EMBEDDING:
            continue
        if name not in stored:
            try:
                unchanged = now == schema_default(key)
            except KeyError:
                unchanged = False
            if not unchanged:
                changes.append((key, ABSENT, now))
            continue
        was = stored[name]
        if isinstance(was, dict) and isinstance(now, dict):
            changes += [(f"{key}.{opt}", was.get(opt, ABSENT), now.get(opt, ABSENT))
                        for opt in [*was, *(o for o in now if o not in was)]
                        if was.get(opt, ABSENT) != now.get(opt, ABSENT)]
        elif was != now:
            changes.append((key, was, now))
    return changes


def unknown_model_keys(stored: dict[str, Any], current: dict[str, Any], prefix: str = "model") -> list[str]:
    """The dotted keys of a checkpoint's stored ``model`` section that ``current`` (this version's ``model`` section,
    as ``config_to_dict`` writes it) does not have: an architecture option of a later dynametric, or a key an
    earlier one had and this one removed. :func:`model_config_changes` does not compare them (this version cannot
    build them), so :func:`unknown_model_keys_note` says that the model is built without them."""
    return [f"{prefix}.{name}" for name in stored if name not in current]


def unknown_model_keys_note(checkpoint: dict[str, Any], current: dict[str, Any], path: str | Path) -> str | None:
    """The note (without ``note:``) of a checkpoint (dict ``checkpoint``, read from ``path``) whose stored ``model``
    section has keys this version does not know (:func:`unknown_model_keys`), with their values and the version
    that wrote it where the checkpoint records one (``dynametric_version``); ``None`` when there are none."""
    from dynametric import __version__

    stored = stored_model_config(checkpoint)
    if stored is None:
        return None
    unknown = unknown_model_keys(stored, current)
    if not unknown:
        return None
    extra = checkpoint.get("dynametric")
    written = extra.get("dynametric_version") if isinstance(extra, dict) else None
    by = (f"written by dynametric {written}; this is {__version__}" if isinstance(written, str) and written
          else "written by a newer dynametric?")
    keys = ", ".join(f"{key}: {stored[key.split('.', 1)[1]]!r}" for key in unknown)
    return (f"{path} records model key(s) this version of dynametric does not know ({keys}; {by}): the model is "
            "built without them, so its embeddings may differ from the run's; load it with the dynametric that "
            "trained it")


def load_embedder_state(embedder: nn.Module, checkpoint: dict[str, Any], path: str | Path) -> None:
    """Load the embedder weights of the checkpoint dict ``checkpoint`` (read from ``path``) into ``embedder``; a
    one-line :class:`InputError` naming ``path`` when it has none or they do not fit (:func:`model_mismatch`)."""
    try:
        state = embedder_state_dict(checkpoint)
    except InputError as exc:
        raise InputError(exc.message, file=path, key=exc.key) from None
    problem = model_mismatch(embedder, state)
    if problem is not None:
        raise InputError(problem, file=path)
    embedder.load_state_dict(state)


def load_embedder_weights(embedder: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load ``path`` (a ``dynametric train`` checkpoint) into ``embedder``; returns the checkpoint dict. Only the
    tensors are checked (names and shapes); :func:`dynametric.engine.inference.load_trained` also checks the config
    against the one the checkpoint was trained with."""
    ckpt = load_checkpoint_file(path)
    load_embedder_state(embedder, ckpt, path)
    return ckpt
