"""Rebuild a trained embedder from a ``dynametric train`` checkpoint for inference (embed, search, export).

A run folder holds ``config.yaml`` and ``best.ckpt`` / ``last.ckpt``; the checkpoint's ``state_dict`` carries the
embedder's weights under ``embedder.*`` (:mod:`dynametric.engine.checkpoint`). The model is loaded by the one
inference path (:func:`dynametric.engine.inference.load_trained`) and runs where
:class:`~dynametric.engine.inference.InferenceOptions` say (device, precision, batch size); the evaluation
transform is the one the engine evaluates with.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from dynametric.data.device_decode import DecodedBatch, EncodedImages
from dynametric.data.readers import locale_hint, nameable
from dynametric.engine.checkpoint import MODEL_KEYS_NOT_EMBEDDING
from dynametric.engine.inference import (
    InferenceOptions,
    ResolvedInference,
    checkpoint_precision,
    embed_batch,
    load_trained,
    prepare_model,
    split_transform,
)
from dynametric.errors import ConfigError, InputError
from dynametric.utils.device import choice_hint, default_precision_on, precision_name
from dynametric.utils.processes import callers_start_method

if TYPE_CHECKING:
    from dynametric.config import Config


def weights_digest(state: dict[str, torch.Tensor], length: int = 16) -> str:
    """SHA-256 over the sorted ``(name, dtype, shape, bytes)`` of a state dict: two checkpoints with the same
    weights give the same digest whatever else they store."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:length]


def eval_transform(cfg: Config, image_size: int | None = None) -> Callable[[Any], torch.Tensor]:
    """The evaluation transform of a config (PIL image -> ``[C, H, W]`` tensor), as the engine evaluates.

    ``synthetic`` data with ``transform: default`` is a plain ``ToTensor`` of ``image_size`` square images (the
    synthetic generator's ``image_size`` option, default 32); other data use ``build_transform(preset,
    train=False)`` (``default`` = ``standard``) with ``data.image_size`` / ``image_size`` as the crop size.
    """
    from dynametric.engine.builders import transform_for

    return transform_for(cfg, False, image_size, for_images=True)


@dataclass
class LoadedEmbedder:
    """A trained embedder ready for inference (eval mode, no grad) and what identifies it."""

    model: nn.Module
    head: str | None
    transform: Callable[[Any], torch.Tensor]
    checkpoint: Path
    config_path: Path
    config_hash: str
    weights_hash: str
    in_chans: int
    input_size: int
    run: ResolvedInference
    notes: list[str] = field(default_factory=list)
    """What the caller should be told (e.g. that the run's fp16 precision cannot run here and fp32 is used)."""
    embedding_hash: str = ""
    """:func:`embedding_config_hash` of the config: what of it decides the embeddings (recorded as
    ``model.embedding_hash``; compared by :func:`check_same_model`)."""
    swap_rb: bool = False
    """The run's ``data.options.swap_rb``: its images had R and B exchanged as they were decoded, and
    :attr:`transform` begins with :class:`~dynametric.data.transforms.SwapRB` so every image this embedder is
    given (``embed``, ``search --image``, ``explore`` uploads, ``--decode gpu``) is seen as the run saw it."""

    def __post_init__(self) -> None:
        self._loader_transform, self._finish = split_transform(self.transform)
        self._decoder = None
        if self.run.decode == "gpu":
            from dynametric.data.device_decode import DeviceDecoder

            if self._finish is not None:
                self._decoder = DeviceDecoder.from_transform(self._loader_transform)
            if self._decoder is None:
                key = self.run.key("decode")
                raise ConfigError("decode 'gpu' needs an evaluation transform of Resize / CenterCrop, ToTensor and "
                                  f"Normalize steps; use {choice_hint(key, 'cpu')}", key=key)

    @property
    def decode(self) -> str:
        """Where image files are decoded: ``cpu`` (PIL in the loader workers) or ``gpu`` (on ``run.device``)."""
        return "gpu" if self._decoder is not None else "cpu"

    @property
    def loader_transform(self) -> Callable[[Any], Any]:
        """What the loader workers apply: with ``decode gpu``, a :class:`DeviceDecoder` (workers read JPEG bytes,
        :meth:`embed` decodes and resizes them on the device); on a GPU, :attr:`transform` up to ``uint8`` tensors
        (conversion to float and normalisation run on the device in :meth:`embed`, with the same values); on the
        CPU, :attr:`transform`."""
        if self._decoder is not None:
            return self._decoder
        return self._loader_transform if self.run.device.type == "cuda" and self._finish else self.transform

    @torch.no_grad()
    def embed(self, images: Any) -> torch.Tensor:
        """``[B, C, H, W]`` (float, or ``uint8`` from :attr:`loader_transform`) or :class:`EncodedImages` -> ``[B, D]``
        float32 on the CPU (the evaluated head), computed on ``run.device`` under ``run``'s precision."""
        return self.embed_on_device(images).cpu()

    @torch.no_grad()
    def embed_on_device(self, images: Any) -> torch.Tensor:
        """As :meth:`embed`, but the embeddings stay on ``run.device`` and the call does not wait for the forward
        pass (the batch function :func:`~dynametric.retrieval.embed.embed_items` uses: on a GPU the next batch is
        decoded while this one runs). Also takes what :attr:`prepare` made of a loader batch."""
        if isinstance(images, DecodedBatch):
            images = images.take()
        elif isinstance(images, EncodedImages):
            if self._decoder is None:
                raise InputError("encoded image batch without a device decoder (decode gpu)")
            images = self._decoder.decode(images, self.run.device)
        return embed_batch(self.model, images, self.run, self.head, self._finish, to_cpu=False)

    @property
    def prepare(self) -> Callable[[Any], Any] | None:
        """With ``decode gpu`` and ``run.decode_ahead``: the step :func:`~dynametric.retrieval.embed.embed_items`
        runs on each loader batch in a background thread, ahead of :meth:`embed_on_device` (the batch's JPEGs
        decoded on the device, :meth:`~dynametric.data.device_decode.DeviceDecoder.decode_ahead`); else None."""
        decoder = self._decoder
        if decoder is None or not self.run.decode_ahead:
            return None
        device = self.run.device

        def decode(images: Any) -> Any:
            return decoder.decode_ahead(images, device) if isinstance(images, EncodedImages) else images

        return decode

    def identity(self) -> dict[str, Any]:
        """What an embeddings file / index records about the model that produced it (``precision`` only when it
        is not fp32 and ``decode`` only when it is not cpu, so jobs written before the options existed still
        resume)."""
        out = {"checkpoint": str(self.checkpoint.resolve()), "config": str(self.config_path.resolve()),
               "config_hash": self.config_hash, "weights_hash": self.weights_hash, "head": self.head,
               "in_chans": self.in_chans, "input_size": self.input_size}
        if self.embedding_hash:
            out["embedding_hash"] = self.embedding_hash
        if self.swap_rb:  # only when on (entries of runs without it unchanged): an older entry of the same run
            # lacks it, its embeddings made from unswapped images
            out["swap_rb"] = True
        if self.run.precision != "fp32":
            out["precision"] = self.run.precision
        if self.decode != "cpu":  # slightly different values: a resumed job must not mix decoders
            out["decode"] = self.decode
        return out


def embedding_config_hash(cfg: Config, length: int = 16) -> str:
    """A digest of what in a config decides the embeddings a checkpoint gives for an image: the ``model`` section
    (backbone, pooling, heads, ...; not :data:`~dynametric.engine.checkpoint.MODEL_KEYS_NOT_EMBEDDING`), the
    evaluation transform's preset
    (``data.transform``, with the synthetic data's own rule) and its normalisation (``mean`` / ``std`` as
    :func:`~dynametric.engine.builders.normalization` resolves them, counted only when they are not ImageNet's, so
    configs that normalise with ImageNet's keep the digest they had before the keys existed) and
    ``data.options.swap_rb`` (counted only when true: a run without it keeps its digest). Training options
    (loss, sampler, workers, batch sizes) are left out, so a config that differs only in them embeds alike. The crop
    size is recorded apart (``input_size``)."""
    import json

    from dynametric.config import config_to_dict
    from dynametric.data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from dynametric.engine.builders import normalization

    model = {k: v for k, v in config_to_dict(cfg)["model"].items() if k not in MODEL_KEYS_NOT_EMBEDDING}
    data = cfg.data
    plain = data.format == "synthetic" and data.transform == "default"
    transform = "synthetic-to-tensor" if plain else ("standard" if data.transform == "default" else str(data.transform))
    described: dict[str, Any] = {"model": model, "transform": transform}
    mean, std = normalization(cfg)
    if not plain and (mean, std) != (IMAGENET_MEAN, IMAGENET_STD):  # ImageNet's: the digest of before the keys
        described["normalize"] = [list(mean), list(std)]
    if run_swaps_rb(cfg):  # only when set: the digest of every run without the swap is the one it had
        described["swap_rb"] = True
    canonical = json.dumps(described, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:length]


def run_swaps_rb(cfg: Config) -> bool:
    """Whether the config's data exchange R and B as they are decoded (``data.options.swap_rb``, read as the
    data layer reads it)."""
    from dynametric.data.base import yes_no

    value = dict(cfg.data.options or {}).get("swap_rb", False)
    try:
        return yes_no(value, "swap_rb")
    except ConfigError as exc:
        raise ConfigError(exc.message, key="data.options.swap_rb") from None


def _input_size(transform: Any, default: int) -> int:
    spec = getattr(transform, "spec", None)
    if spec is not None:
        return int(spec.size)
    for step in getattr(transform, "transforms", []):
        size = getattr(step, "size", None)
        if isinstance(size, (tuple, list)) and size:
            return int(size[0])
        if isinstance(size, int):
            return size
    return default


def _check_head(model: torch.nn.Module, head: str, key: str) -> None:
    """A ConfigError keyed ``key`` (``--head`` on the command line) when ``model`` declares its outputs
    (:attr:`~dynametric.models.embedder.Embedder.output_dims`) and ``head`` is none of them; a model that declares
    none is left to :func:`~dynametric.engine.objective.select_head` as it embeds."""
    dims = getattr(model, "output_dims", None)
    if not isinstance(dims, Mapping) or head in dims:
        return
    heads = [name for name in dims if name is not None]
    if None in dims:
        raise ConfigError(f"the model has a single output, but head {head!r} was requested (expected no head, or "
                          "'concat')", key=key)
    raise ConfigError(f"unknown head {head!r}; expected one of {heads} (the model's heads, or 'concat' for all of "
                      "them)", key=key)


def load_embedder(checkpoint: str | Path, config: str | Path | None = None, *, overrides: Sequence[str] = (),
                  head: str | None = None, image_size: int | None = None,
                  options: InferenceOptions | None = None, state: dict[str, Any] | None = None) -> LoadedEmbedder:
    """Load ``checkpoint`` through :func:`dynametric.engine.inference.load_trained` and place it on the device of
    ``options`` (default: ``auto`` device, batch 64, no workers; an unset precision is the one the run trained in,
    :func:`~dynametric.engine.inference.checkpoint_precision`, and :attr:`LoadedEmbedder.notes` says when that
    cannot run here).

    ``config`` defaults to ``config.yaml`` beside the checkpoint (a ``dynametric train`` run folder); ``head``
    defaults to the head the engine evaluates (:func:`dynametric.engine.builders.eval_head`).

    Raises :class:`~dynametric.errors.InputError` for a missing, corrupt or unsafe checkpoint or one that does not match
    the config's model, and :class:`~dynametric.errors.ConfigError` for an invalid config or option (a CUDA device
    where there is none, an unknown head); both name the file, key or option.

    ``state``: the checkpoint's content when the caller has read it already (``load_trained(state=...)``: the file
    is read once).
    """
    from dynametric.config import config_hash, errors_located
    from dynametric.engine.checkpoint import embedder_state_dict

    opts = options or InferenceOptions()
    run = opts.resolve()  # a bad device, precision, ... before the checkpoint is read
    trained = load_trained(checkpoint, config, overrides=overrides, head=head, state=state)
    if head is not None:  # before anything is embedded or written (an embed job recorded the bad head)
        _check_head(trained.model, head, opts.key("head"))
    cfg = trained.cfg
    opts, note = checkpoint_precision(cfg, opts)
    if opts.precision != run.precision:
        run = opts.resolve()
    with errors_located(cfg):  # a data option it reads (synthetic image_size) names where it was set
        transform = eval_transform(cfg, image_size)
        swap_rb = run_swaps_rb(cfg)
    input_size = _input_size(transform, 224)
    if swap_rb:  # the dataset swapped as it decoded: the images given here are swapped first, as the run's were
        from dynametric.data.transforms import SwapRB, prepend_step

        transform = prepend_step(transform, SwapRB())
    if image_size is not None:  # another size than the run's: a backbone built for one size (a ViT) cannot take it
        _check_image_size(trained.model, input_size, int(cfg.model.in_chans), opts.key("image_size"))
    prepare_model(trained.model, run)
    return LoadedEmbedder(model=trained.model, head=trained.head, transform=transform,
                          checkpoint=trained.checkpoint, config_path=trained.config_path, config_hash=config_hash(cfg),
                          weights_hash=weights_digest(embedder_state_dict(trained.state)),
                          in_chans=int(cfg.model.in_chans), input_size=input_size, run=run,
                          notes=[*trained.notes, *([note] if note else [])],
                          embedding_hash=embedding_config_hash(cfg), swap_rb=swap_rb)


def _check_image_size(model: torch.nn.Module, size: int, in_chans: int, key: str) -> None:
    """:meth:`~dynametric.models.Embedder.check_forward` at an asked-for input ``size`` (on the model's CPU weights,
    before anything is written): a ViT built for another size refuses in one line keyed on the option that asked."""
    from dynametric.errors import ConfigError

    check = getattr(model, "check_forward", None)
    if not callable(check):
        return
    try:
        check(size, in_chans, size_key=key)
    except ConfigError as exc:
        if exc.key == key:  # the size itself is too large (out of memory): the message says so
            raise
        raise ConfigError(f"{exc.message}; the run's model takes its own size (leave the image size unset)",
                          key=key) from None


def image_tensor(loaded: LoadedEmbedder, path: str | Path, *, max_pixels: int | None = None) -> torch.Tensor:
    """Load one image file through the model's evaluation transform (``[C, H, W]``); errors name the file.
    ``max_pixels``: refuse an image of more pixels before decoding it (a service answering uploads; ``None``: PIL's
    own limit of about 179 M pixels only)."""
    from dynametric.data.base import image_read_error, load_rgb
    from dynametric.retrieval.embed import check_pixels

    if max_pixels is not None:
        check_pixels(path, max_pixels)
    try:
        img = load_rgb(path)
    except Exception as exc:  # PIL raises many types for bad files
        raise image_read_error(path, exc) from None
    return loaded.transform(img)


def embed_image_files(loaded: LoadedEmbedder, paths: Sequence[str | Path], *,
                      max_pixels: int | None = None) -> np.ndarray:
    """Embeddings ``[len(paths), D]`` float32 of image files (queries), in batches of ``loaded.run.batch_size``
    decoded by ``loaded.run.workers`` loader workers; errors name the file. ``max_pixels``: as in
    :func:`image_tensor`."""
    from dynametric.retrieval.embed import ImageFiles, _worker_error

    parts = []
    try:
        files = ImageFiles([Path(p) for p in paths], loaded.loader_transform, max_pixels=max_pixels)
        with callers_start_method():  # loader workers fix multiprocessing's default start method: unset it again
            for batch in loaded.run.loader(files):
                parts.append(loaded.embed(batch))
    except InputError as exc:
        raise _worker_error(exc) from None
    return torch.cat(parts).numpy()


def load_index_model(index: Any, checkpoint: Path | None, config: Path | None, options: Any = None) -> Any:
    """The index's embedder (or ``checkpoint``), checked to have the weights the index was built with, placed
    where ``options`` (:class:`~dynametric.engine.inference.InferenceOptions`) say.

    ``index.json`` records the checkpoint and config as absolute paths (``index build`` writes them resolved); a
    relative ``model.checkpoint`` / ``model.config`` (written by hand: a folder shipped with its model inside) is
    relative to the index folder, never to the working directory (:func:`index_model_path`). The checkpoint's
    weights are compared with the index's before its config is read: a checkpoint of other weights is refused
    before the config's ``imports`` could run. Loading the config imports the modules its ``imports`` list, which
    is said first (a ``note:`` line naming the config). The checkpoint file is read once: the state compared here
    is the one the model is loaded from."""
    model = index.model or {}
    if checkpoint is None:
        if not model.get("checkpoint"):
            raise InputError("the index records no checkpoint (built from a bare .npy); give --checkpoint",
                             key="--checkpoint")
        checkpoint = index_model_path(index, model["checkpoint"], "model.checkpoint")
        if config is None and model.get("config"):
            config = index_model_path(index, model["config"], "model.config")
        folder = getattr(index, "loaded_from", None)
        for key, recorded, option in (("model.checkpoint", checkpoint, "--checkpoint"),
                                      ("model.config", config, "--config")):
            # a recorded path (UTF-8 text) may hold characters the file system encoding lacks (ascii under LC_ALL=C
            # with PYTHONUTF8=0, Latin-1): Python cannot give it to the system, and exists() says False ("not found")
            if recorded is not None and not nameable(recorded):
                raise InputError(f"{'checkpoint' if option == '--checkpoint' else 'config'} file {recorded} "
                                 f"{locale_hint()}", file=None if folder is None else Path(folder) / "index.json",
                                 key=key)
            if recorded is not None and not (recorded.exists() or recorded.is_symlink()):
                # the run folder moved (or the index came from another machine): the recorded path is stale
                raise InputError(f"{'checkpoint' if option == '--checkpoint' else 'config'} file {recorded} not "
                                 f"found: the index records it under {key}, where the model was when the index was "
                                 f"built (moved since?); give {option} with its path now",
                                 file=None if folder is None else Path(folder) / "index.json", key=key)
    want = model.get("weights_hash")
    state = None
    if want:  # the weights first (a safe read: weights_only), before any config's imports could run
        from dynametric.engine.checkpoint import embedder_state_dict, load_checkpoint_file

        state = load_checkpoint_file(checkpoint)
        have = weights_digest(embedder_state_dict(state))
        if have != want:
            raise InputError(f"checkpoint weights (hash {have}) differ from the model the index was built with "
                             f"(hash {want}); its embeddings are not comparable", file=checkpoint)
    try:
        loaded = load_embedder(checkpoint, config, head=model.get("head"), image_size=model.get("input_size"),
                               options=options, state=state)
    except ConfigError as exc:  # the head is the index's (search has no --head): name index.json's key
        if exc.key != (options or InferenceOptions()).key("head") or exc.file is not None:
            raise
        folder = getattr(index, "loaded_from", None)
        raise ConfigError(exc.message, file=None if folder is None else Path(folder) / "index.json",
                          key="model.head") from None
    found = model_mismatch(model, loaded.identity())
    if found is not None:  # --config (or the checkpoint's own config.yaml) embeds otherwise than the index's
        what, fix = found
        if fix == REBUILD_UNSWAPPED:  # the index is this config's, made before the swap was applied: no --config helps
            folder = getattr(index, "loaded_from", None)
            raise InputError(f"the index's embeddings are not comparable with this model's: {what}; {fix}",
                             file=None if folder is None else Path(folder) / "index.json", key="model.embedding_hash")
        recorded = model.get("config")
        suggest = (index_model_path(index, recorded, "model.config") if isinstance(recorded, str) and recorded
                   else "with the index model settings")
        raise InputError(f"the checkpoint and config embed otherwise than the model the index was built with: {what}; "
                         f"give --config {suggest}",
                         file=loaded.config_path, key="--config")
    return loaded


def index_model_path(index: Any, value: Any, key: str) -> Path:
    """A path ``index.json`` records under ``model`` (``key``: ``model.checkpoint``, ``model.config``): an absolute
    path as it is; a relative one against the folder the index was loaded from (``index.loaded_from``; the working
    directory for an index not loaded from a folder). Anything but a non-empty string is an error naming the key."""
    folder = getattr(index, "loaded_from", None)
    if not isinstance(value, str) or not value:
        raise InputError(f"expected a file path, got {value!r} ({type(value).__name__})",
                         file=None if folder is None else Path(folder) / "index.json", key=key)
    path = Path(value)
    return path if path.is_absolute() or folder is None else Path(folder) / path


REBUILD_UNSWAPPED = "embed the index's images again and rebuild the index"
""":func:`model_mismatch`'s advice for an index of the same config made from images without its ``swap_rb``."""


def model_mismatch(index_model: dict[str, Any], query_model: dict[str, Any]) -> tuple[str, str] | None:
    """``(what differs, how to fix it)`` when embeddings recorded with ``query_model`` are not comparable with those
    of ``index_model`` (the ``model`` entries of ``embed.json`` / ``index.json``), else ``None``. Compared where both
    record them: how the embeddings were derived after ``embed`` (``derived``: PCA, whitening; both sides must
    agree, a side without it holds the model's own embeddings), the weights hash, the head, the input size (the
    crop the images are resized to), the input channels, and what of the config decides the embeddings
    (``embedding_hash``, :func:`embedding_config_hash`; an entry recorded before it existed is compared by its whole
    ``config_hash`` instead). Precision and decoder only shift distances slightly: :func:`precision_note` and
    :func:`decoder_note` say so."""
    def differs(key: str) -> tuple[Any, Any] | None:
        want, got = index_model.get(key), query_model.get(key)
        return (got, want) if want is not None and got is not None and want != got else None

    config = index_model.get("config") or "the index's config"
    if index_model and query_model and index_model.get("derived") != query_model.get("derived"):
        # embeddings derived after embed (PCA, whitening: derive_embedding_folder) are comparable only with queries
        # derived the same way; a side without `derived` holds the model's own embeddings
        want, got = index_model.get("derived"), query_model.get("derived")
        return (f"embeddings {f'derived by {got!r}' if got else 'as the model makes them'} against the index's "
                f"{f'derived by {want!r}' if want else 'as the model makes them'}",
                "derive the queries' embeddings as the index's were (dynametric.retrieval.embed."
                "derive_embedding_folder) and search with --embeddings" if want else
                "search with the model's own embeddings of the queries")
    if d := differs("weights_hash"):
        return f"weights hash {d[0]} against the index's {d[1]}", "embed the queries with the index's checkpoint"
    if d := differs("head"):
        return f"head {d[0]} against the index's {d[1]}", f"embed the queries with --head {d[1]}"
    if d := differs("input_size"):
        return (f"input size {d[0]} px against the index's {d[1]} px",
                f"embed the queries with --image-size {d[1]}")
    if d := differs("in_chans"):
        return f"{d[0]} input channels against the index's {d[1]}", f"embed the queries with --config {config}"
    if index_model.get("embedding_hash") and query_model.get("embedding_hash"):
        if (d := differs("embedding_hash")) and query_model.get("swap_rb") and not index_model.get("swap_rb") \
                and index_model.get("config") and index_model.get("config") == query_model.get("config"):
            return (f"the index's embeddings of this run's config ({config}, hash {d[1]}) were made from images "
                    "without the run's data.options.swap_rb (an earlier dynametric did not apply it at inference)",
                    REBUILD_UNSWAPPED)
        if d:
            return (f"config {query_model.get('config') or '?'} (embedding settings: model section and transform, "
                    f"hash {d[0]}) against the index's {config} (hash {d[1]})",
                    f"embed the queries with --config {config}")
    elif d := differs("config_hash"):
        return (f"config {query_model.get('config') or '?'} (hash {d[0]}) against the index's {config} (hash "
                f"{d[1]})", f"embed the queries with --config {config}")
    return None


def check_same_model(index_model: dict[str, Any], query_model: dict[str, Any], queries: Path | str, *,
                     what: str = "the query embeddings come", key: str | None = None) -> None:
    """Query embeddings from an embed folder must come from the model the index was built with, computed the same
    way (:func:`model_mismatch`: weights, head, input size, embedding config); else their distances to the index's
    items mean nothing, and the error names both values and the option that fixes it. Either side without a
    recorded model (a bare ``.npy``) cannot be checked. ``what`` starts the message (``the checkpoint comes``),
    ``key`` is its key (an option)."""
    found = model_mismatch(index_model, query_model)
    if found is not None:
        raise InputError(f"{what} from another model than the index: {found[0]}; {found[1]}", file=queries, key=key)


def _index_precision(index_model: dict[str, Any]) -> str:
    """The precision an index's embeddings were computed in (``model.precision`` of ``index.json``; fp32 when
    absent, as ``embed`` records only other precisions)."""
    try:
        return precision_name(index_model.get("precision"))
    except ConfigError:
        raise InputError(f"index.json records an unknown precision {index_model.get('precision')!r}; expected one "
                         "of fp32, bf16, fp16", key="model.precision") from None


def precision_note(index_model: dict[str, Any], precision: str, what: str, why: str = "") -> str | None:
    """A note when ``what`` (queries) is computed in another precision than the index's embeddings were
    (``index_model["precision"]``, fp32 when absent; ``why`` says why): distances then differ slightly from the
    index's own."""
    built = _index_precision(index_model)
    if precision == built:
        return None
    return (f"the index's embeddings were computed in {built}, {what} in {precision}{why}: distances differ "
            "slightly from the index's own (a query's own item may not come first)")


def decoder_note(index_model: dict[str, Any], decode: str, what: str) -> str | None:
    """A note when ``what`` (queries) was decoded by another image decoder than the index's embeddings
    (``index_model["decode"]``, ``cpu`` when absent): PIL's and torchvision's resizes differ by up to one level of
    255, so distances differ slightly from the index's own."""
    built = str(index_model.get("decode") or "cpu")
    if decode == built:
        return None
    return (f"the index's images were decoded with --decode {built}, {what} with --decode {decode}: pixels differ "
            f"by up to one level of 255, so distances differ slightly from the index's own (--decode {built} "
            "matches)")


def query_precision(index_model: dict[str, Any], requested: str | None, device: torch.device) -> tuple[str, str | None]:
    """``(precision, note)``: the precision to embed query images with for an index built by ``index_model``.

    ``requested`` (a precision name) wins; ``None`` follows the index (``index_model["precision"]``, fp32 when
    absent), except fp16 on a device other than CUDA, which embeds in fp32. The note (``None`` when the
    precisions agree) says that the queries are embedded in another precision than the index's embeddings."""
    built = _index_precision(index_model)
    if requested is not None:
        chosen = precision_name(requested)
        return chosen, precision_note(index_model, chosen, "the query images are embedded", " as asked")
    chosen = default_precision_on(built, device)
    if chosen != built:
        return chosen, precision_note(index_model, chosen, "the query images are embedded",
                                      f" (fp16 needs CUDA, this runs on {device.type})")
    return built, None
