"""The one inference path: a trained embedder from checkpoint + config, and embedding images with it.

* :func:`load_trained` rebuilds the configured model and loads a ``dynametric train`` checkpoint into it
  (``weights_only``; eval mode, no grad). ``dynametric evaluate --checkpoint``, the DyML protocol, ``embed``,
  ``search --image``, ``explore`` and ``export`` all load through it.
* :class:`InferenceOptions` says where and how to run: ``device`` (``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``,
  :func:`dynametric.utils.device.resolve_device`), ``precision`` (``fp32``, or ``bf16`` / ``fp16`` autocast; unset:
  the precision a loaded run trained in, :func:`checkpoint_precision`, else fp32),
  batch size, loader workers (``auto``: :func:`dynametric.utils.device.auto_workers`), pinned memory (default: on
  for CUDA), a progress bar and where image files are decoded (``decode``: ``cpu``, PIL in the loader workers;
  ``gpu``, JPEGs decoded and resized on the device, :mod:`dynametric.data.device_decode`; ``auto``, ``gpu`` on
  CUDA when torchvision can decode there, else ``cpu``). ``decode`` applies to image files (``embed``, ``search
  --image``); labelled datasets (:func:`embed_dataset`) decode in the workers. With ``decode`` ``gpu``,
  ``decode_ahead`` (default: on for CUDA) has ``embed`` decode the next batches in a background thread while the
  model runs on the current one (:class:`dynametric.utils.ahead.RunAhead`); same values either way.
* :func:`embed_dataset` embeds a labelled dataset, :func:`embed_batch` one image batch; ``dynametric embed``
  streams folders and CSV lists through :func:`dynametric.retrieval.embed.embed_items` with the same batch function.

Embeddings always come back as float32 on the CPU, in dataset order.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from dynametric.engine.data import worker_init
from dynametric.engine.objective import select_head
from dynametric.errors import ConfigError, InputError
from dynametric.utils.device import (
    INFERENCE_BATCH_SIZE,
    auto_workers,
    autocast,
    check_loader_options,
    check_workers,
    default_precision_on,
    resolve_device,
    resolve_precision,
)
from dynametric.utils.limits import ensure_open_files
from dynametric.utils.processes import callers_start_method
from dynametric.utils.shared import SharedSetting

if TYPE_CHECKING:
    from dynametric.config import Config

DECODE_MODES = ("cpu", "gpu", "auto")


@dataclass
class InferenceOptions:
    """Where and how to run a model over images (validated by :meth:`resolve`)."""

    device: str | torch.device | None = "auto"
    precision: str | None = None  # None: the run's (checkpoint_precision) where a trained run is loaded, else fp32
    batch_size: int | None = INFERENCE_BATCH_SIZE  # None: the same (for a checkpoint's dataset, data.eval_batch_size)
    workers: int | str | None = 0  # None: 0 (or data.workers)
    pin_memory: bool | None = None  # None: pinned when the device is CUDA
    progress: bool = False
    decode: str = "cpu"  # cpu | gpu | auto (image files; see the module docstring)
    decode_ahead: bool | None = None  # None: on where JPEGs are decoded on a CUDA GPU (see the module docstring)
    flags: bool = False  # errors name the command-line flags (--device, ...) instead of the fields (device, ...)

    def key(self, name: str) -> str:
        """How errors name the option ``name`` (a field): the field, or with ``flags`` the command-line flag."""
        return "--" + name.replace("_", "-") if self.flags else name

    def resolve(self) -> ResolvedInference:
        device = resolve_device(self.device, key=self.key("device"))
        dtype = resolve_precision(self.precision, device, key=self.key("precision"))
        batch_size = INFERENCE_BATCH_SIZE if self.batch_size is None else _whole(self.batch_size, "batch size",
                                                                                  self.key("batch_size"))
        spec = 0 if self.workers is None else check_workers(self.workers, self.key("workers"))
        workers = auto_workers(device) if spec == "auto" else int(spec)
        check_loader_options(batch_size, workers, batch_key=self.key("batch_size"), workers_key=self.key("workers"))
        # ulimit -n for the loader's workers (prefetching 4); `auto` takes as many as the limit allows
        workers = ensure_open_files(workers, 4, self.key("workers"), auto=_say_note if spec == "auto" else None)
        pin = device.type == "cuda" if self.pin_memory is None else bool(self.pin_memory)
        decode = str(self.decode).strip().lower()
        if decode not in DECODE_MODES:
            raise ConfigError(f"decode must be one of {list(DECODE_MODES)}, got {self.decode!r}",
                              key=self.key("decode"))
        if decode == "auto":
            from dynametric.data.device_decode import gpu_decode_available

            decode = "gpu" if device.type == "cuda" and gpu_decode_available() else "cpu"
        if self.decode_ahead is not None and not isinstance(self.decode_ahead, bool):
            raise ConfigError(f"decode_ahead must be true, false or null, got {self.decode_ahead!r}",
                              key=self.key("decode_ahead"))
        ahead = device.type == "cuda" if self.decode_ahead is None else self.decode_ahead
        return ResolvedInference(device, dtype, int(batch_size), workers, pin, bool(self.progress), decode,
                                 self.flags, ahead and decode == "gpu")


def _say_note(line: str) -> None:
    """A ``note:`` line of the inference set-up (``workers: auto`` fewer under the open-file limit), on stderr."""
    print(line, file=sys.stderr, flush=True)


def _whole(value: Any, what: str, key: str) -> int:
    """``value`` as an int; a one-line ConfigError naming ``key`` for a bool, a float (``2.5`` used to be truncated
    to 2 in silence) or anything else that is not an integer."""
    import operator

    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise ConfigError(f"{what} must be an integer >= 1, got {value!r} ({type(value).__name__})", key=key)


@dataclass(frozen=True)
class ResolvedInference:
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype; None = fp32
    batch_size: int
    workers: int
    pin_memory: bool
    progress: bool
    decode: str = "cpu"  # cpu | gpu (resolved)
    flags: bool = False  # errors name the command-line flags (InferenceOptions.flags)
    decode_ahead: bool = False  # decode gpu: the next batches decoded in a background thread (resolved)

    def key(self, name: str) -> str:
        """How errors name the option ``name``: the field, or with ``flags`` the command-line flag."""
        return "--" + name.replace("_", "-") if self.flags else name

    @property
    def precision(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]

    def loader(self, dataset: Any) -> DataLoader:
        """An in-order loader of ``dataset`` with these options (prefetch 4 batches per worker). It has a generator
        of its own: a DataLoader without one draws the seed of its workers from torch's global generator each time it
        is iterated, so embedding moved the caller's random state on (inference draws nothing else)."""
        extra: dict[str, Any] = {"prefetch_factor": 4, "worker_init_fn": worker_init()} if self.workers > 0 else {}
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.workers,
                          pin_memory=self.pin_memory, collate_fn=getattr(dataset, "collate_fn", None),
                          generator=torch.Generator(), **extra)


def _resolved(options: InferenceOptions | ResolvedInference | None) -> ResolvedInference:
    if isinstance(options, ResolvedInference):
        return options
    return (options or InferenceOptions()).resolve()


def prepare_model(model: nn.Module, run: ResolvedInference) -> nn.Module:
    """``model`` in eval mode on ``run.device`` (channels_last for 4-D inputs on CUDA)."""
    model.eval()
    if next(iter(model.parameters()), torch.empty(0)).device != run.device:
        model.to(run.device)
    if run.device.type == "cuda":
        model.to(memory_format=torch.channels_last)  # only 4-D weights change; faster convolutions under autocast
    return model


def split_transform(transform: Any) -> tuple[Any, Callable[[torch.Tensor], torch.Tensor] | None]:
    """``(loader_transform, finish)`` for a ``Compose`` that ends with ``ToTensor`` (and optionally ``Normalize``):
    the loader part yields ``uint8`` ``[C, H, W]`` tensors (``PILToTensor``: a quarter of the bytes to copy, no
    float work in the workers) and ``finish`` does the ``/ 255`` and the normalisation on the batch, on the device,
    with the same float32 operations (the same values). Other transforms: ``(transform, None)``."""
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    norm = steps.pop() if steps and isinstance(steps[-1], T.Normalize) else None
    if not steps or not isinstance(steps[-1], T.ToTensor):
        return transform, None
    steps[-1] = T.PILToTensor()
    mean = std = None
    if norm is not None:
        mean, std = torch.as_tensor(norm.mean, dtype=torch.float32), torch.as_tensor(norm.std, dtype=torch.float32)

    def finish(x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32).div(255)
        if mean is not None and std is not None:
            x = x.sub_(mean.to(x.device).view(1, -1, 1, 1)).div_(std.to(x.device).view(1, -1, 1, 1))
        return x

    return T.Compose(steps), finish


@torch.no_grad()
def embed_batch(model: nn.Module, images: torch.Tensor, run: ResolvedInference, head: str | None = None,
                finish: Callable[[torch.Tensor], torch.Tensor] | None = None, *, to_cpu: bool = True) -> torch.Tensor:
    """``[B, C, H, W]`` -> ``[B, D]`` float32 on the CPU: moved to ``run.device`` (non-blocking from pinned memory),
    ``finish`` applied there to ``uint8`` batches (:func:`split_transform`), forward under ``run``'s autocast, head
    selected. ``model`` must already be on the device (:func:`prepare_model`).

    ``to_cpu=False`` returns the embeddings on ``run.device`` without waiting for the forward pass to finish (a GPU
    runs it while the caller prepares the next batch; :func:`dynametric.retrieval.embed.embed_items` copies each
    batch to the host one batch later)."""
    x = images.to(run.device, non_blocking=run.pin_memory)
    if x.dtype == torch.uint8:
        if finish is None:
            raise InputError("uint8 image batch without the transform's device part (see split_transform)")
        x = finish(x)
    if run.device.type == "cuda" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(run.device, run.dtype):
        out = select_head(model(x), head)
    out = out.float()
    return out.cpu() if to_cpu else out


def _batch_labels(labels: Any, rows: int, start: int) -> torch.Tensor:
    """One collated batch's labels as the ``LongTensor[B, S]`` of :func:`~dynametric.labels.as_label_matrix`: a
    dataset item's label path ``[fine, coarse]`` (a list or tuple, which the loader collates into one tensor per
    column) is stacked into columns; fractional, NaN or boolean labels, or a row count other than the batch's
    images, are one :class:`InputError` line keyed ``labels`` naming the items."""
    from dynametric.labels import as_label_matrix

    if isinstance(labels, (list, tuple)) and labels and all(isinstance(c, torch.Tensor) for c in labels):
        if any(c.dim() > 2 or (c.dim() == 2 and c.shape[1] != 1) or len(c) != rows for c in labels):
            raise InputError(f"items {start}..{start + rows - 1} of the dataset: a label path must hold one value "
                             f"per scale, got columns of shapes {[list(c.shape) for c in labels]}", key="labels")
        labels = torch.stack([c.reshape(rows) for c in labels], dim=1)
    elif isinstance(labels, torch.Tensor) and labels.dim() == 3 and labels.shape[1] == 1:
        labels = labels[:, 0]  # each item's label a [1, S] row (e.g. a dataset's labels[i:i + 1])
    try:
        return as_label_matrix(labels.detach() if isinstance(labels, torch.Tensor) else labels,
                               num_rows=rows).cpu()
    except InputError as exc:
        raise InputError(f"items {start}..{start + rows - 1} of the dataset: {exc.message}", key="labels") from None


_EVAL_LOCK = threading.Lock()
_EVAL_HOLDS: weakref.WeakKeyDictionary[nn.Module, SharedSetting] = weakref.WeakKeyDictionary()
"""Per model, the eval mode its overlapping :func:`embed_dataset` calls share (created under ``_EVAL_LOCK``)."""


def _eval_mode(model: nn.Module) -> Callable[[], None]:
    """Set ``model`` to eval mode and answer how to put each module's own mode back (``model.train(was)`` would set
    all of them alike)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()

    def restore() -> None:
        for module, training in modes:
            module.training = training

    return restore


@contextlib.contextmanager
def _held_in_eval(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block, its modules' modes restored after, shared by overlapping blocks on the
    same model (calls from several threads): the first one in saves each module's mode and sets eval, later ones
    change nothing, and only the last one out restores the saved modes. Before, a call that finished while another
    still embedded put train mode back under it (BatchNorm with batch statistics, running stats updated) and the
    other then "restored" the eval mode it had saved."""
    with _EVAL_LOCK:
        shared = _EVAL_HOLDS.setdefault(model, SharedSetting())
    with shared.held(lambda: _eval_mode(model)):
        model.eval()  # every call: eval mode while it embeds (set by the first; again should it have changed since)
        yield


@torch.no_grad()
def embed_dataset(model: nn.Module, dataset: Any, *, head: str | None = None, batch_size: int = INFERENCE_BATCH_SIZE,
                  num_workers: int | str = 0, progress: bool = False, device: str | torch.device | None = None,
                  precision: str = "fp32", pin_memory: bool | None = None,
                  options: InferenceOptions | ResolvedInference | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(embeddings [N, D] float32, labels LongTensor[N, S])`` of every ``(image, label)`` item of ``dataset``, in
    order. An item's label is one class id or its path ``[fine, coarse, ...]`` (a list, tuple or tensor, finest
    first); labels that are not integers are one :class:`InputError` line keyed ``labels`` naming the items.

    ``options`` (when given) replaces the keyword options. ``device=None`` runs where the model's parameters are;
    otherwise the model is moved to the device. The train/eval mode of the model and of each of its submodules is
    restored afterwards (a backbone the caller put in eval mode under a model in train mode stays so); calls that
    overlap on one model (from several threads) keep it in eval mode until the last of them returns, which restores
    the modes from before the first. Torch's global random state is left as it was
    (:meth:`ResolvedInference.loader`).
    """
    if options is None:
        if device is None:
            param = next(iter(model.parameters()), None)
            device = param.device if param is not None else "cpu"
        options = InferenceOptions(device=device, precision=precision, batch_size=batch_size, workers=num_workers,
                                   pin_memory=pin_memory, progress=progress)
    run = _resolved(options)
    embs, labs = [], []
    with _held_in_eval(model):
        prepare_model(model, run)
        loader: Iterable[Any] = run.loader(dataset)
        if run.progress:
            from dynametric.utils.text import progress_bar

            loader = progress_bar()(loader, desc="embedding", unit="batch")
        start = 0
        with callers_start_method():  # loader workers fix multiprocessing's default start method: unset it again
            for images, labels in loader:
                embs.append(embed_batch(model, images, run, head))
                labs.append(_batch_labels(labels, len(embs[-1]), start))
                start += len(embs[-1])
    return torch.cat(embs), torch.cat(labs)


@dataclass
class TrainedModel:
    """A configured model with a checkpoint's weights (CPU, eval mode, no grad) and where it came from."""

    cfg: Config
    model: nn.Module
    checkpoint: Path
    config_path: Path
    state: dict[str, Any]  # the checkpoint file's content
    head: str | None  # the head the engine evaluates (or the one asked for)
    notes: list[str] = field(default_factory=list)
    """What the caller should print (``note: ...``): model keys the checkpoint records that this version does not
    know (:func:`~dynametric.engine.checkpoint.unknown_model_keys_note`), the backbone class changed since training
    (:func:`backbone_class_note`)."""

    def __repr__(self) -> str:
        """Short (the generated one printed the whole checkpoint: every weight tensor): the checkpoint, its epoch and
        step, the backbone, the embedding width, the head, the parameter count."""
        def cut(value: Any, limit: int = 60) -> str:
            text = str(value)
            return repr(text if len(text) <= limit else f"{text[:(limit - 3) // 2]}...{text[-((limit - 3) // 2):]}")

        state = self.state if isinstance(self.state, Mapping) else {}
        params = sum(p.numel() for p in self.model.parameters())
        notes = f", {len(self.notes)} notes" if self.notes else ""
        return (f"TrainedModel(checkpoint {cut(self.checkpoint)}, epoch {state.get('epoch', '?')}, step "
                f"{state.get('global_step', '?')}, backbone {cut(self.cfg.model.backbone, 40)}, embedding_dim "
                f"{self.cfg.model.embedding_dim}, head {cut(self.head, 30) if self.head is not None else None}, "
                f"{params} parameters{notes})")


def checkpoint_path(checkpoint: str | os.PathLike[str]) -> Path:
    """``checkpoint`` as a path to an existing file: a one-line :class:`InputError` for a folder or a missing file."""
    path = Path(checkpoint)
    if path.is_dir():
        raise InputError("is a folder; expected a checkpoint file (e.g. RUN/best.ckpt)", file=path)
    if not path.is_file():
        raise InputError("checkpoint file not found", file=path)
    return path


def config_beside(checkpoint: str | Path, config: str | Path | None) -> Path:
    """``config``, or ``config.yaml`` beside the checkpoint (a run folder); ConfigError when missing, InputError
    when empty (:func:`check_config_not_empty`). A checkpoint given as a link (``sl/ck.ckpt -> ../run1/best.ckpt``)
    takes the ``config.yaml`` beside the link, else the one beside the file it points to (its run folder); when
    neither exists the error names both places."""
    path = _config_beside(Path(checkpoint), config)
    check_config_not_empty(path, checkpoint, given=config is not None)
    return path


def _config_beside(checkpoint: Path, config: str | Path | None) -> Path:
    if config is None:
        beside = checkpoint.parent / "config.yaml"
        if beside.is_file():
            return beside
        target = checkpoint.resolve()
        there = target.parent / "config.yaml"
        if there.parent.resolve() == beside.parent.resolve():  # no link: one place to look
            raise ConfigError(f"no --config given and no config.yaml beside {checkpoint}", key="--config")
        if there.is_file():
            return there
        raise ConfigError(f"no --config given and no config.yaml beside {checkpoint} ({beside}) nor beside the file "
                          f"it links to, {target} ({there})", key="--config")
    path = Path(config)
    if path.is_dir():
        raise ConfigError(f"{path} is a folder; expected a config file", key="--config")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}", key="--config")
    return path


def check_config_not_empty(config_path: Path, checkpoint: str | Path, *, given: bool = False) -> None:
    """A one-line :class:`InputError` naming ``config_path`` when it holds no setting: nothing but blank lines and
    comments, or a YAML document that is empty (``{}``, ``---``, ``null``; an emptied run ``config.yaml``): read as
    the defaults it would describe another model than ``checkpoint`` was trained with, and the refusal would list
    the default values as the config's (``train --resume`` says the same of its run's ``config.yaml``). ``given``:
    the file came with ``--config`` (the advice then does not suggest it). An unreadable file is left to the config
    loader, which says why."""
    import yaml

    try:
        text = config_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return
    if any(line.strip() and not line.lstrip().startswith("#") for line in text.splitlines()):
        try:
            empty = yaml.safe_load(text) in (None, {})
        except yaml.YAMLError:  # the loader says where
            return
        if not empty:
            return
    fix = ("give the config the run was trained with" if given else
           "restore the config the run was trained with, or give it with --config")
    raise InputError(f"is empty: it holds no config for {checkpoint} (read as the defaults, it would describe another "
                     f"model than the one the checkpoint was trained with); {fix}", file=config_path)


def load_trained(checkpoint: str | Path, config: str | Path | None = None, *, overrides: Sequence[str] = (),
                 head: str | None = None, cfg: Config | None = None,
                 state: dict[str, Any] | None = None) -> TrainedModel:
    """Build the configured embedder and load ``checkpoint`` into it (eval mode, parameters frozen).

    ``config`` defaults to ``config.yaml`` beside the checkpoint; an already loaded ``cfg`` may be passed instead.
    ``head`` defaults to the head the engine evaluates (:func:`dynametric.engine.builders.eval_head`).

    A checkpoint that records the config it was trained with (every ``dynametric train`` checkpoint does) is
    refused, before any model is built, when the config's ``model`` section differs from it in a key that decides
    the embeddings (:func:`check_model_config`): an edited ``config.yaml``, a ``--set model.pooling=max`` or another
    run's ``--config`` would otherwise load the same tensors into another model. The model is built without its
    pretrained weights (``model.pretrained`` / ``model.pretrained_path`` are ignored: the checkpoint's weights replace
    them), so loading never downloads and needs no initial weight file.

    ``state``: the content of ``checkpoint`` already read by the caller (:func:`~dynametric.engine.checkpoint.
    load_checkpoint_file`, e.g. to compare its weights with an index's before the config's ``imports`` could run),
    so the file is read once; ``checkpoint`` still names it in messages and finds the ``config.yaml`` beside it, and
    every check on the state is the same.
    """
    from dynametric.config import config_to_dict, embedder_kwargs, errors_located, load_config
    from dynametric.engine.builders import eval_head
    from dynametric.engine.checkpoint import (
        load_checkpoint_file,
        load_embedder_state,
        trained_statistics,
        unknown_model_keys_note,
    )
    from dynametric.models import build_embedder

    checkpoint = checkpoint_path(checkpoint)
    config_path = config_beside(checkpoint, config)
    if cfg is None:
        cfg = load_config(config_path, overrides)
    if state is None:
        state = load_checkpoint_file(checkpoint)
    check_model_config(cfg, state, checkpoint)
    # a model key checked when the model is built names where it was set; the random initial weights (replaced by
    # the checkpoint's) are drawn on a forked CPU generator: the caller's torch RNG is left as it was
    with errors_located(cfg), torch.random.fork_rng(devices=[]):
        model = build_embedder(**{**embedder_kwargs(cfg.model), "pretrained": False, "pretrained_path": None})
    load_embedder_state(model, state, checkpoint)
    notes = [note for note in (unknown_model_keys_note(state, config_to_dict(cfg)["model"], checkpoint),
                               backbone_class_note(state, model, checkpoint, cfg.model.backbone)) if note]
    # the statistics it trained with where the config leaves them to the backbone (older checkpoints: ImageNet's)
    pinned = trained_statistics(cfg, state)
    if pinned is not None:
        cfg.data.mean, cfg.data.std = pinned[:2]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    _check_finite_weights(model, checkpoint)
    return TrainedModel(cfg, model, checkpoint, config_path, state, head if head is not None else eval_head(cfg),
                        notes)


def _check_finite_weights(model: torch.nn.Module, checkpoint: Path) -> None:
    """A checkpoint whose weights hold a NaN/Inf (an earlier version saved such weights after a NaN update) is one
    line naming it, not an embedding or evaluation error about the NaN outputs (``key 'query_emb'``)."""
    from dynametric.engine.checkpoint import nonfinite_parameters

    bad = nonfinite_parameters(model)
    if bad:
        raise InputError(f"the checkpoint's weights are non-finite: {len(bad)} parameter(s) hold NaN/Inf, first "
                         f"{bad[0]} (saved after a non-finite training step); use an earlier checkpoint of the run",
                         file=checkpoint)


def backbone_class_note(state: Mapping[str, Any], model: nn.Module, checkpoint: str | Path,
                        name: Any) -> str | None:
    """The note (without ``note:``) of a checkpoint whose run recorded another backbone class
    (``components["model.backbone"]``, :func:`dynametric.pipeline.resume.component_classes`) than the config's
    ``model.backbone`` builds here (a registry entry replaced by user code, or the code that registered over a
    built-in name not imported): the weights load into this class, and the embeddings may not be the run's. ``None``
    where they agree or nothing was recorded (a checkpoint of an earlier version). The wording of ``train --resume``'s
    note, for the commands that load a checkpoint to embed (evaluate, embed, export, search, from_pretrained)."""
    from dynametric.utils.registry import qualified_name

    extra = state.get("dynametric")
    components = extra.get("components") if isinstance(extra, Mapping) else None
    recorded = components.get("model.backbone") if isinstance(components, Mapping) else None
    body = getattr(getattr(model, "backbone", None), "body", None)
    if not isinstance(recorded, str) or body is None:
        return None
    now = qualified_name(type(body))
    if now == recorded:
        return None
    return (f"{checkpoint} was trained with model.backbone {name!r} of the class {recorded}; here the name builds "
            f"{now}, into which its weights are loaded, so the embeddings may differ from the run's (a registry "
            "entry replaced by user code, or the code that registered it not imported? import it: dynametric "
            "--import MODULE ..., or the config's 'imports:')")


def check_model_config(cfg: Config, state: dict[str, Any], checkpoint: str | Path) -> None:
    """A one-line :class:`ConfigError` when ``cfg``'s ``model`` section differs from the one the checkpoint dict
    ``state`` (read from ``checkpoint``) was trained with, in a key that decides the embeddings
    (:func:`dynametric.engine.checkpoint.model_config_changes`): it names the first changed key where it was set
    (``config.yaml:LINE`` or ``<command line>``), every changed key with the checkpoint's and the config's value, and
    the fix. Nothing is checked for a checkpoint that records no config (an older dynametric, other code)."""
    from dynametric.config import config_to_dict, locate_error
    from dynametric.engine.checkpoint import ABSENT, model_config_changes, stored_model_config

    stored = stored_model_config(state)
    if stored is None:
        return
    changes = model_config_changes(stored, config_to_dict(cfg)["model"])
    if not changes:
        return
    shown = "; ".join(f"{key}: {was!r} in the checkpoint, {now!r} here" for key, was, now in changes[:4])
    more = f" and {len(changes) - 4} more" if len(changes) > 4 else ""
    fix = ", ".join(f"{key} unset" if was is ABSENT else f"{key}={was!r}" for key, was, _ in changes[:4])
    raise locate_error(cfg, ConfigError(
        f"{checkpoint} was trained with another model than this config describes ({shown}{more}); loaded into this "
        f"model its weights would give other embeddings: use the config the run was trained with ({fix}{more})",
        key=changes[0][0]))


@dataclass
class CheckpointEmbeddings:
    query: torch.Tensor
    query_labels: torch.Tensor
    gallery: torch.Tensor | None
    gallery_labels: torch.Tensor | None
    scale_names: list[str]
    description: str
    notes: list[str] = field(default_factory=list)
    """What the caller should print (``note: ...``): the backbone class changed since training
    (:func:`backbone_class_note`), a precision the device cannot run (:func:`checkpoint_precision`)."""


def checkpoint_precision(cfg: Config, options: InferenceOptions) -> tuple[InferenceOptions, str | None]:
    """``(options, note)``: ``options`` with an unset precision (``None``) set to the one the run computed in when it
    validated and tested, ``trainer.precision`` as an inference precision
    (:func:`dynametric.config.schema.inference_precision`: ``bf16-mixed`` -> bf16, ``16-mixed`` -> fp16, ``32`` ->
    fp32), so a checkpoint embeds as its run did; an explicit precision is kept. fp16 on a device other than CUDA
    becomes fp32 (:func:`~dynametric.utils.device.default_precision_on`), and the note says so (else ``None``)."""
    from dataclasses import replace

    from dynametric.config.schema import inference_precision

    if options.precision is not None:
        return options, None
    trained = inference_precision(cfg.trainer.precision)
    device = resolve_device(options.device, key=options.key("device"))
    chosen = default_precision_on(trained, device)
    note = None if chosen == trained else (f"the run trained in trainer.precision {cfg.trainer.precision} ({trained}), "
                                           f"which needs CUDA; this runs on {device.type}, so it embeds in {chosen}")
    return replace(options, precision=chosen), note


def checkpoint_options(cfg: Config, options: InferenceOptions | None) -> InferenceOptions:
    """``options`` (default: ``auto`` device) with an unset batch size / worker count taken from the config's
    evaluation loader (``data.eval_batch_size``, ``data.workers``); an unset precision is left to
    :func:`checkpoint_precision`."""
    from dataclasses import replace

    opts = options if options is not None else InferenceOptions(batch_size=None, workers=None)
    return replace(opts, batch_size=opts.batch_size if opts.batch_size is not None else int(cfg.data.eval_batch_size),
                   workers=opts.workers if opts.workers is not None else cfg.data.workers)


def embed_from_checkpoint(checkpoint: str | Path, config: str | Path | None = None, *, split: str | None = None,
                          overrides: Sequence[str] = (), head: str | None = None, progress: bool = False,
                          options: InferenceOptions | None = None) -> CheckpointEmbeddings:
    """Load ``checkpoint`` (:func:`load_trained`) and embed a split of its configured dataset.

    With ``eval.protocol: query_gallery`` (and no ``split``) the ``eval.query_split`` and ``eval.gallery_split``
    are embedded. ``options`` default to the config's evaluation batch size and workers and the run's precision
    (:func:`checkpoint_precision`) on the ``auto`` device. Raises :class:`~dynametric.errors.InputError` /
    :class:`~dynametric.errors.ConfigError` (one line naming the file, key or option) as :func:`load_trained` and
    the dataset readers do.
    """
    from dynametric.engine.builders import load_eval_split, load_split

    trained = load_trained(checkpoint, config, overrides=overrides, head=head)
    cfg, model = trained.cfg, trained.model
    opts, precision_note = checkpoint_precision(cfg, checkpoint_options(cfg, options))
    notes = [*trained.notes, *([precision_note] if precision_note else [])]
    if progress:
        opts.progress = True
    run = opts.resolve()
    if split is None and cfg.eval.protocol == "query_gallery":
        qd = load_split(cfg, cfg.eval.query_split, train=False)
        gd = load_split(cfg, cfg.eval.gallery_split, train=False)
        q, ql = embed_dataset(model, qd, head=trained.head, options=run)
        g, gl = embed_dataset(model, gd, head=trained.head, options=run)
        names = list(qd.scale_names)
        desc = f"{trained.checkpoint}: {cfg.data.format} {cfg.eval.query_split} -> {cfg.eval.gallery_split}"
        return CheckpointEmbeddings(q, ql, g, gl, names, desc, notes)
    split = split or cfg.data.test_split
    ds = load_eval_split(cfg, split)
    q, ql = embed_dataset(model, ds, head=trained.head, options=run)
    names = list(ds.scale_names)
    return CheckpointEmbeddings(q, ql, None, None, names, f"{trained.checkpoint}: {cfg.data.format} split {split!r}",
                                notes)
