"""Export a trained embedder to TorchScript and ONNX (``dynametric export``).

The exported graph is ``images [B, C, H, W] float32 -> embeddings [B, D] float32`` (the evaluated head; a
multi-head model is reduced by :func:`dynametric.engine.objective.select_head`), with a dynamic batch axis. The
preprocessing (resize, crop, normalisation) is *not* part of the graph; ``<out>.json`` records it.
:func:`check_export` runs the exported file and the eager model on the same inputs and reports the largest
absolute difference; the default tolerance is ``1e-4`` (float32 kernels of different runtimes may differ in
summation order).
"""

from __future__ import annotations

import io
import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dynametric.data.readers import non_utf8_name
from dynametric.engine.objective import select_head
from dynametric.errors import DynametricError, InputError
from dynametric.utils.io import (
    NAME_MAX,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_with,
    check_name_lengths,
    file_sha256,
    name_bytes,
    prepare_file_target,
    remove_stale_temps_of,
    write_error,
)
from dynametric.utils.output_locks import output_lock, target_lock_path

FORMATS = ("torchscript", "onnx")
TORCHSCRIPT_EXPORTER = "torch.jit.trace+freeze"
DEFAULT_ATOL = 1e-4


class SingleOutput(nn.Module):
    """Wrap an embedder so ``forward`` returns one ``[B, D]`` tensor (the selected head)."""

    def __init__(self, model: nn.Module, head: str | None = None) -> None:
        super().__init__()
        self.model = model
        self.head = head

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return select_head(self.model(images), self.head).float()


def example_input(in_chans: int, size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, in_chans, size, size, generator=g)


def _frozen_trace(model: nn.Module, example: torch.Tensor, head: str | None) -> torch.jit.ScriptModule:
    """Trace + freeze (parameters inlined: no submodule attribute access remains in the serialised code, so head
    names that are Python keywords, e.g. ``class``, survive saving and loading)."""
    wrapped = SingleOutput(model, head).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.freeze(torch.jit.trace(wrapped, example, check_trace=False))


def export_torchscript(model: nn.Module, out: str | Path, example: torch.Tensor, head: str | None = None, *,
                       key: str | None = None, verify: Callable[[str, str], None] | None = None) -> Path:
    """Trace ``model`` (eval mode) to a frozen TorchScript module and save it atomically (``torch.jit.load``).
    ``verify(temporary_path, exporter)`` runs on the written file before it replaces ``out``; when it raises, ``out``
    is left as it was and the temporary file removed."""
    traced = _frozen_trace(model, example, head)
    out = Path(out)
    buf = io.BytesIO()  # torch.jit.save writing a file itself aborts the process on a full disk (C++ terminate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream but still supported
        torch.jit.save(traced, buf)
    if verify is None:
        atomic_write_bytes(out, buf.getbuffer(), key=key)
        return out

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # Python's file IO: a full disk is an OSError naming out
            fh.write(buf.getbuffer())
        verify(tmp, TORCHSCRIPT_EXPORTER)

    atomic_write_with(out, write, key=key)
    return out


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise DynametricError("ONNX export needs the 'onnx' package (and 'onnxscript' for the torch.export-based "
                              "exporter): pip install 'dynametric[export]'") from None


def export_onnx(model: nn.Module, out: str | Path, example: torch.Tensor, head: str | None = None,
                opset: int = 18, *, key: str | None = None, verify: Callable[[str, str], None] | None = None) -> str:
    """Export ``model`` (eval mode) to ONNX with a dynamic batch axis (input ``images``, output ``embeddings``);
    ``verify`` as for :func:`export_torchscript`.

    Uses the ``torch.export``-based exporter (needs ``onnxscript``); where it fails (e.g. a submodule named after
    a Python keyword, which FX code generation rejects) or ``onnxscript`` is missing, the TorchScript-based
    exporter on the frozen trace. Returns the exporter used (``"dynamo"`` or ``"torchscript"``).
    """
    import logging

    _require_onnx()
    wrapped = SingleOutput(model, head).eval()
    out = Path(out)
    used = ["dynamo"]

    def write(tmp: str) -> None:
        export(tmp)
        if verify is not None:
            verify(tmp, used[0])

    def export(tmp: str) -> None:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                import onnxscript  # noqa: F401

                batch = torch.export.Dim("batch", min=1)
                program = torch.onnx.export(wrapped, (example,), input_names=["images"], output_names=["embeddings"],
                                            dynamic_shapes={"images": {0: batch}}, opset_version=opset, dynamo=True,
                                            external_data=False, verbose=False)
                program.save(tmp)
                return
            except Exception:  # noqa: BLE001 - any exporter failure: fall back to the TorchScript exporter
                used[0] = "torchscript"
            traced = _frozen_trace(model, example, head)
            torch.onnx.export(traced, (example,), tmp, input_names=["images"], output_names=["embeddings"],
                              dynamic_axes={"images": {0: "batch"}, "embeddings": {0: "batch"}},
                              opset_version=opset, dynamo=False)

    quiet = [logging.getLogger(n) for n in ("torch.onnx", "onnxscript", "torch.export", "torch")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    try:
        import contextlib

        with contextlib.redirect_stdout(io.StringIO()):  # the exporter prints progress lines
            atomic_write_with(out, write, key=key)
    finally:
        for lg, lvl in zip(quiet, levels):
            lg.setLevel(lvl)
    return used[0]


def _format_of(path: Path) -> str:
    return "onnx" if path.suffix.lower() == ".onnx" else "torchscript"


def run_exported(path: str | Path, images: torch.Tensor, fmt: str | None = None) -> np.ndarray:
    """Run an exported file (TorchScript, or ONNX with onnxruntime; ``fmt`` default: by the suffix, ``.onnx`` any
    case) on ``images``."""
    path = Path(path)
    if not path.is_file():
        raise InputError("exported model not found", file=path)
    # onnxruntime and torch.jit.load take a name as UTF-8 text, which a name that is not UTF-8 (bytes Python holds
    # as surrogate escapes: `export --out $'m\xe9.pt'`) is not (a TypeError): such a file is read here and given as
    # bytes (an ONNX file with its weights in a separate file is then not found: export writes one file)
    utf8 = non_utf8_name(path) is None
    if (fmt or _format_of(path)) == "onnx":
        try:
            import onnxruntime as ort
        except ImportError:
            raise DynametricError("running an ONNX model needs onnxruntime: pip install 'dynametric[export]'") from None
        sess = ort.InferenceSession(str(path) if utf8 else path.read_bytes(), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: images.numpy()})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(path) if utf8 else io.BytesIO(path.read_bytes()), map_location="cpu")
    with torch.no_grad():
        return module(images).numpy()


def check_export(model: nn.Module, path: str | Path, images: torch.Tensor, head: str | None = None,
                 atol: float = DEFAULT_ATOL, fmt: str | None = None) -> float:
    """Largest absolute difference between the exported file (format ``fmt``, default by its suffix) and the eager
    model on ``images``; raises a :class:`DynametricError` above ``atol``."""
    with torch.no_grad():
        ref = SingleOutput(model, head).eval()(images).numpy()
    got = run_exported(path, images, fmt)
    if got.shape != ref.shape:
        raise DynametricError(f"exported model gives shape {got.shape}, the eager model {ref.shape}")
    err = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    if not err <= atol:
        raise DynametricError(f"exported model differs from the eager model by {err:.3g} (tolerance {atol:g})")
    return err


SUFFIXES = {"torchscript": (".pt", ".pth", ".ts"), "onnx": (".onnx",)}


def sidecar_path(out: Path) -> Path:
    return out.with_name(out.name + ".json")


def _earlier_export(out: Path) -> bool:
    """Whether ``out`` / ``<out>.json`` are an earlier export of this tool: its sidecar names the file."""
    try:
        info = json.loads(sidecar_path(out).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and info.get("format") in FORMATS and info.get("file") == out.name \
        and isinstance(info.get("model"), dict) and "exporter" in info


def check_export_target(out: Path, fmt: str) -> None:
    """``out`` must name a file with the format's suffix; it and its sidecar ``<out>.json`` are written only where
    nothing is, or over an earlier export of this tool (its sidecar names the file) — never over a file the tool
    did not write."""
    if out.suffix.lower() not in SUFFIXES[fmt]:
        article = "an" if fmt[0] in "aeiou" else "a"
        raise InputError(f"{article} {fmt} export is written to a {' / '.join(SUFFIXES[fmt])} file, got "
                         f"{out.name!r}", key="--out")
    from dynametric.retrieval.evaluate_io import check_output_place

    check_name_lengths(out, "--out", "file")  # a name no file system takes: said of it, before anything is read
    side = sidecar_path(out)
    if name_bytes(side.name) > NAME_MAX:  # a legal name whose sidecar's is not
        raise InputError(f"file name of {name_bytes(out.name)} bytes: the export's description goes beside it as "
                         f"<name>.json, {name_bytes(side.name)} bytes, and a file system takes names of at most "
                         f"{NAME_MAX} bytes; choose an --out name of at most {NAME_MAX - 5} bytes", file=out,
                         key="--out")
    check_output_place(out, "--out")  # a file where its folder goes: refused before the export, not after
    for target in (out, sidecar_path(out)):
        if target.is_dir() or target.is_symlink():
            raise InputError("exists and is not a regular file (--out names the exported file)", file=target)
    if out.exists() and not _earlier_export(out):
        raise InputError(f"exists and is not an earlier export of dynametric (no sidecar {side.name} naming it); it "
                         "is not overwritten: choose another --out, or remove the file yourself", file=out, key="--out")
    if side.exists() and not _earlier_export(out):  # the user's own <out>.json, where the export's sidecar goes
        raise InputError(f"exists and is not the sidecar of an earlier export of dynametric (export --out {out.name} "
                         f"writes its description to {side.name}); it is not overwritten: choose another --out, or "
                         "remove the file yourself", file=side, key="--out")


def preprocessing_steps(transform: Any) -> list[dict[str, Any]]:
    """The evaluation transform as data (the sidecar's ``preprocessing_steps``): one entry per step with its
    torchvision name and arguments (``Resize``: the shorter side to ``size``; dynametric's bounded resize also
    records ``max_aspect``, the aspect ratio beyond which an image's long side is first centre-cut; ``SwapRB``: R
    and B exchanged, a run of ``data.options.swap_rb``; ``Grayscale``: one channel, Pillow's ``convert("L")``), or
    the step's ``repr`` where it is none of these."""
    from torchvision import transforms as T

    from dynametric.data.transforms import GREY_WEIGHTS, SwapRB

    out: list[dict[str, Any]] = []
    for step in getattr(transform, "transforms", [transform]):
        entry: dict[str, Any]
        if isinstance(step, SwapRB):  # a run of data.options.swap_rb: its images had R and B exchanged
            entry = {"op": "SwapRB", "channel_order": "BGR"}
        elif isinstance(step, T.Grayscale):  # a one-channel model: Pillow's convert("L")
            entry = {"op": "Grayscale", "num_output_channels": step.num_output_channels,
                     "weights": list(GREY_WEIGHTS), "rounding": "(R*19595 + G*38470 + B*7471 + 32768) >> 16"}
        elif isinstance(step, T.Resize):
            size = step.size if isinstance(step.size, int) else list(step.size)
            entry = {"op": "Resize", "size": size, "interpolation": step.interpolation.value,
                     "antialias": step.antialias}
            if hasattr(step, "max_aspect"):
                entry["max_aspect"] = step.max_aspect
        elif isinstance(step, T.CenterCrop):
            entry = {"op": "CenterCrop", "size": list(step.size)}
        elif isinstance(step, T.ToTensor):
            entry = {"op": "ToTensor"}
        elif isinstance(step, T.Normalize):
            entry = {"op": "Normalize", "mean": [float(v) for v in step.mean], "std": [float(v) for v in step.std]}
        else:
            entry = {"op": type(step).__name__, "repr": repr(step)}
        out.append(entry)
    return out


DECODE = {"mode": "RGB", "exif_orientation": "applied (image turned upright)",
          "alpha": "composited onto white: round((c*a + 255*(255 - a)) / 255)",
          "16-bit": "round(v / 257) onto 0..255 (16-bit greyscale); 16-bit colour PNG: the high byte",
          "other_modes": "Pillow's convert('RGB')", "rules": "docs/data.md, section 'Decoding images'"}
"""The sidecar's ``decode``: how an image file becomes the RGB image the ``preprocessing_steps`` start from
(:func:`dynametric.data.base.to_rgb`)."""


def output_description(model: nn.Module, head: str | None, example: torch.Tensor) -> dict[str, Any]:
    """The sidecar's ``output``: ``shape`` ``["batch", D]``, ``normalized`` (whether every row has L2 norm 1),
    ``norm`` (the L2 norm every row has: 1 for an L2-normalised head, ``sqrt(n)`` for the concatenation of ``n``
    such heads, ``None`` where rows differ), and ``heads`` (``{name: {"dim", "normalized"}}``, in the model's
    order, with ``concat``: the head exported). Heads are read as the model declares them (an
    :class:`~dynametric.models.Embedder`'s ``normalize``); a model that declares none is measured on ``example``."""
    import math

    heads = getattr(model, "heads", None)
    names = list(getattr(model, "head_names", []) or [])
    declared: dict[str, dict[str, Any]] = {}
    if names and heads is not None:
        for name in names:
            h = heads[name]
            if not hasattr(h, "normalize") or not hasattr(h, "out_dim"):
                declared = {}
                break
            declared[name] = {"dim": int(h.out_dim), "normalized": bool(h.normalize)}
    if declared:
        picked = list(declared) if head == "concat" or (head is None and len(declared) == 1) else [str(head)]
        dim = sum(declared[n]["dim"] for n in picked)
        unit = all(declared[n]["normalized"] for n in picked)
        norm = math.sqrt(len(picked)) if unit else None
    else:  # no declaration: measured on the example
        with torch.no_grad():
            got = SingleOutput(model, head).eval()(example)
        dim = int(got.shape[1])
        norms = got.norm(dim=1)
        unit = bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-4))
        norm = 1.0 if unit else None
    out: dict[str, Any] = {"name": "embeddings", "shape": ["batch", dim], "normalized": bool(unit and norm == 1.0),
                           "norm": norm}
    if declared:
        out["heads"] = declared
        out["head"] = head
    return out


def export_embedder(loaded: Any, out: str | Path, fmt: str | None = None, *, batch: int = 2,
                    atol: float = DEFAULT_ATOL, check: bool = True, key: str | None = None,
                    local_paths: bool = True) -> dict[str, Any]:
    """Export a :class:`~dynametric.retrieval.model.LoadedEmbedder` to ``out`` and verify it; writes
    ``<out>.json`` (input size, channels, decoding and preprocessing, output width and norm, ONNX opset, model
    identity, verified max difference, the file's SHA-256). ``key``: the option that named ``out``, named in a
    write error. ``local_paths=False``: the model's ``checkpoint`` and ``config`` are recorded by their file names
    only (as :func:`dynametric.retrieval.hub.export_run` publishes), not as absolute paths of this machine.

    The exported file is checked while it is still a temporary file beside ``out``; the sidecar is written next
    and the file renamed over ``out`` last. A failed check leaves ``out`` and its sidecar as they were; a process
    killed in between leaves a sidecar that names ``out`` (a later export of ``out`` is allowed) and records the
    new file's SHA-256 (whether ``out`` is the file it describes can be checked)."""
    out = Path(out)
    fmt = fmt or _format_of(out)
    if fmt not in FORMATS:
        raise InputError(f"unknown export format {fmt!r}; expected one of {list(FORMATS)}", key="--format")
    check_export_target(out, fmt)
    prepare_file_target(out, key)  # its folder made: the lock goes beside it
    # one export of this file at a time: another one's temporary files are not a killed export's
    with output_lock(target_lock_path(out), out, "export", key=key, what="the file",
                     cannot_create=lambda exc: write_error(exc, out, key)):
        for target in (out, sidecar_path(out)):  # what a killed export of this file left beside it (theirs alone)
            remove_stale_temps_of(target)
        return _export_locked(loaded, out, fmt, batch=batch, atol=atol, check=check, key=key,
                              local_paths=local_paths)


ONNX_OPSET = 18


def _export_locked(loaded: Any, out: Path, fmt: str, *, batch: int, atol: float, check: bool,
                   key: str | None, local_paths: bool = True) -> dict[str, Any]:
    """:func:`export_embedder`'s export, holding the lock of ``out``."""
    example = example_input(loaded.in_chans, loaded.input_size, batch)
    shape = ["batch", loaded.in_chans, loaded.input_size, loaded.input_size]
    model = loaded.identity()
    if not local_paths:
        for name in ("checkpoint", "config"):
            if isinstance(model.get(name), str):
                model[name] = Path(model[name]).name
    info: dict[str, Any] = {
        "format": fmt, "exporter": TORCHSCRIPT_EXPORTER, "file": out.name,
        "input": {"name": "images", "shape": shape, "dtype": "float32"},
        "output": output_description(loaded.model, loaded.head, example), "decode": dict(DECODE),
        "preprocessing": repr(loaded.transform), "preprocessing_steps": preprocessing_steps(loaded.transform),
        "model": model, "local_paths": local_paths}
    if fmt == "onnx":
        info["opset"] = ONNX_OPSET

    def verify(tmp: str, exporter: str) -> None:  # the written temporary file, before it replaces out
        info["exporter"] = exporter
        if fmt == "onnx":  # the opset the file declares (the exporter may raise the one asked for)
            import onnx

            declared = [o.version for o in onnx.load_model_from_string(Path(tmp).read_bytes()).opset_import
                        if o.domain in ("", "ai.onnx")]
            info["opset"] = int(declared[0]) if declared else ONNX_OPSET
        if check:
            probe = example_input(loaded.in_chans, loaded.input_size, batch + 1, seed=1)  # another batch size
            info["max_abs_diff"] = check_export(loaded.model, tmp, probe, loaded.head, atol, fmt)
            info["tolerance"] = atol
        info["sha256"] = file_sha256(tmp)
        atomic_write_json(sidecar_path(out), info, key=key)

    if fmt == "onnx":
        export_onnx(loaded.model, out, example, loaded.head, ONNX_OPSET, key=key, verify=verify)
    else:
        export_torchscript(loaded.model, out, example, loaded.head, key=key, verify=verify)
    return info
