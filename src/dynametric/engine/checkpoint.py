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
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from dynametric.errors import InputError, first_sentence
from dynametric.utils.io import atomic_torch_save


def save_checkpoint_file(checkpoint: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to ``path`` atomically, streamed with Python's file IO (:func:`atomic_torch_save`: a full
    disk is one ``OSError`` naming ``path``, the temporary file removed; no serialised copy held in memory)."""
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
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError("refusing to load: the file needs objects other than tensors and plain containers "
                         f"(loaded with weights_only=True; {first})", file=path) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise InputError(f"truncated or corrupt checkpoint (torch could not read it: {first_sentence(exc)})",
                         file=path) from None
    if not isinstance(obj, dict):
        raise InputError(f"expected a checkpoint dict, found {type(obj).__name__}", file=path)
    return obj


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


def load_embedder_weights(embedder: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load ``path`` (a ``dynametric train`` checkpoint) into ``embedder``; returns the checkpoint dict."""
    ckpt = load_checkpoint_file(path)
    try:
        state = embedder_state_dict(ckpt)
    except InputError as exc:
        raise InputError(exc.message, file=path, key=exc.key) from None
    problem = model_mismatch(embedder, state)
    if problem is not None:
        raise InputError(problem, file=path)
    embedder.load_state_dict(state)
    return ckpt
