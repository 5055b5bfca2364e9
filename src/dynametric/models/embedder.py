"""The embedding model: backbone → global pooling → one or more embedding heads.

``build_embedder(...)`` returns an :class:`Embedder`. ``forward(images)`` returns

* a ``[B, D]`` tensor when there is one head (the usual case), or
* a dict ``{head_name: [B, D_h]}`` when ``num_heads > 1`` (insertion order = ``head_names``). With two heads
  the default names are ``("class", "shared")``: the class-discriminative and the class-shared embedding of
  Sharing Matters (Milbich et al., 2020) / MIC (Roth et al., ICCV 2019). Each head is L2-normalised on its own
  when ``normalize`` is true; :func:`concat_heads` joins them for the "concatenation" evaluation.

For optimiser groups the model exposes ``.backbone`` (a :class:`~dynametric.models.backbones.Backbone`) and
``.heads`` (an ``nn.ModuleDict``); :meth:`Embedder.parameter_groups` lists the trainable parameters of each.
"""

from __future__ import annotations

import functools
import logging
import pickle
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dynametric.errors import ConfigError, InputError, first_sentence
from dynametric.models.backbones import TIMM_SOURCE_PREFIXES, Backbone, check_backbone_kwargs, create_backbone
from dynametric.models.heads import MAX_EMBEDDING_DIM, EmbeddingHead, GlobalPool, PoolingMode

logger = logging.getLogger(__name__)

DEFAULT_TWO_HEAD_NAMES = ("class", "shared")


def default_head_names(num_heads: int) -> tuple[str, ...]:
    """``("embedding",)`` for one head, ``("class", "shared")`` for two, else ``head0 … head{n-1}``."""
    if num_heads == 1:
        return ("embedding",)
    if num_heads == 2:
        return DEFAULT_TWO_HEAD_NAMES
    return tuple(f"head{i}" for i in range(num_heads))


@functools.cache
def _module_dict_attributes() -> frozenset[str]:
    return frozenset(dir(nn.ModuleDict()))


def check_head_names(names: Sequence[str], key: str = "model.head_names") -> None:
    """Each head's name keys a submodule (torch's ``nn.ModuleDict``) and the model's output: not empty, without a
    ``.``, not an attribute torch's ``ModuleDict`` already has (``training``, ``keys``, ...), not ``concat`` (all
    heads together, for the evaluation and a loss's ``head``), each once; else a one-line :class:`ConfigError`
    keyed ``<key>[i]`` (was torch's KeyError traceback when the model was built)."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        where = f"{key}[{i}]"
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"expected a head name (a non-empty string), got {name!r}", key=where)
        if "." in name:
            raise ConfigError(f"expected a head name without '.' (torch joins submodule names with it), got {name!r}",
                              key=where)
        if name == "concat":
            raise ConfigError("'concat' names all heads together (the concatenated embedding a loss's head or "
                              "eval.heads can choose); name this head otherwise", key=where)
        if name in _module_dict_attributes():
            raise ConfigError(f"{name!r} is an attribute of torch's ModuleDict, which holds the heads; name this head "
                              "otherwise", key=where)
        if name in seen:
            raise ConfigError(f"head {name!r} is named twice ({key}[{seen[name]}] and [{i}]): each head needs its own "
                              "name", key=where)
        seen[name] = i


def _batchnorm_modules(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class Embedder(nn.Module):
    """Backbone + pooling + heads. See the module docstring for the output convention."""

    build_kwargs: dict[str, Any]
    """The :func:`build_embedder` arguments that made it (set by :func:`build_embedder`; ``save_pretrained`` records
    them)."""
    hub_meta: dict[str, Any]
    """The model folder's description, on an embedder loaded by ``from_pretrained`` from a model folder."""
    preprocessing: list[dict[str, Any]] | None
    """The evaluation preprocessing the model takes images through, as steps (``{"op": "Resize", "size": 256, ...}``,
    ``CenterCrop``, ``ToTensor``, ``Normalize`` with ``mean`` / ``std``), on an embedder loaded by
    ``from_pretrained`` (the model folder's ``preprocessing_steps``; a run folder's evaluation transform); ``None``
    where it is not known (built by :func:`build_embedder`, or a folder that records none). ``save_pretrained``
    records it."""
    notes: list[str]
    """What :func:`build_embedder` did that the user should be told (``train`` and ``--dry-run`` print them as
    ``note:`` lines): the tensors a ``pretrained_path`` file gave (loaded, ignored classifier, counters kept), a
    ``hf-hub:`` / ``local-dir:`` backbone built without its weights, ``freeze_bn`` on a backbone without BatchNorm."""

    def __init__(self, backbone: Backbone, pool: GlobalPool, heads: Mapping[str, EmbeddingHead], *,
                 freeze_bn: bool = False) -> None:
        super().__init__()
        if not heads:
            raise ConfigError("an embedder needs at least one head", key="model.num_heads")
        self.backbone = backbone
        self.pool = pool
        self.heads = nn.ModuleDict(dict(heads))
        self.head_names: tuple[str, ...] = tuple(heads)
        self.freeze_bn = freeze_bn
        self.notes = []
        self.preprocessing = None
        if freeze_bn:
            for bn in _batchnorm_modules(self.backbone):
                bn.eval()
                for p in bn.parameters():
                    p.requires_grad_(False)

    def extra_repr(self) -> str:
        """``head_names=('embedding',), freeze_bn=False`` (``save_pretrained`` compares it with the model the
        recorded arguments build)."""
        return f"head_names={self.head_names!r}, freeze_bn={self.freeze_bn}"

    @property
    def feature_dim(self) -> int:
        """Width of the pooled backbone feature that the heads receive (of the current backbone and pooling)."""
        return int(self.pool.output_dim(self.backbone.feature_dim))

    @property
    def embedding_dims(self) -> dict[str, int]:
        """The output width of every head, ``{head name: width}`` in :attr:`head_names` order, read from the current
        heads (a head replaced after the build is counted as it is)."""
        dims: dict[str, int] = {}
        for name in self.head_names:
            width = getattr(self.heads[name], "out_dim", None)
            if isinstance(width, bool) or not isinstance(width, int):
                raise TypeError(f"head {name!r} ({type(self.heads[name]).__name__}) declares no out_dim (its output "
                                "width); an embedder's heads are EmbeddingHead modules")
            dims[name] = width
        return dims

    @property
    def embedding_dim(self) -> int:
        """Total output width: the single head's width, or the sum over heads (the concatenated embedding)."""
        return sum(self.embedding_dims.values())

    @property
    def output_dims(self) -> dict[str | None, int]:
        """The width of every output a loss term can read (its ``head``), as declared by the heads, no forward
        pass needed: ``None`` (the single head's tensor) and ``"concat"`` for one head; every head name and
        ``"concat"`` (all heads side by side, in :attr:`head_names` order) for several."""
        if len(self.head_names) == 1:
            width = self.embedding_dims[self.head_names[0]]
            return {None: width, "concat": width}
        return {**{name: self.embedding_dims[name] for name in self.head_names}, "concat": self.embedding_dim}

    def train(self, mode: bool = True) -> Embedder:
        """Set training mode; with ``freeze_bn`` the backbone's BatchNorm layers stay in eval mode."""
        super().train(mode)
        if self.freeze_bn:
            for bn in _batchnorm_modules(self.backbone):
                bn.eval()
        return self

    def forward_features(self, images: Tensor) -> Tensor:
        """Unpooled backbone features (``[B, C, H, W]`` or ``[B, N, C]``)."""
        return self.backbone(images)

    def pooled_features(self, images: Tensor) -> Tensor:
        """Pooled backbone features ``[B, feature_dim]``, the input of every head."""
        return self.pool(self.backbone(images))

    def forward(self, images: Tensor) -> Tensor | dict[str, Tensor]:
        """Embed a batch of images ``[B, C, H, W]``: one head gives its ``[B, D]`` tensor, several heads a dict
        ``{head name: [B, D_head]}`` in :attr:`head_names` order (each head L2-normalises unless built with
        ``normalize=False``)."""
        pooled = self.pooled_features(images)
        if len(self.head_names) == 1:
            return self.heads[self.head_names[0]](pooled)
        return {name: self.heads[name](pooled) for name in self.head_names}

    def check_forward(self, image_size: int, in_chans: int | None = None, *, size_key: str | None = None) -> None:
        """Run the backbone once on a blank ``[1, in_chans, image_size, image_size]`` image (eval mode, no grad; the
        train/eval mode is restored) and check what the pooling will receive: a tensor of ``[B, C, H, W]``,
        ``[B, N, C]`` or ``[B, C]`` whose ``C`` is the width the backbone reports (``backbone.feature_dim``, from which
        the heads were sized). A one-line :class:`ConfigError` on ``model.backbone`` otherwise, or when the backbone
        cannot run on such an image (a ViT built for another input size). An image too large for memory (one image's
        input or the backbone's activations cannot be allocated, or it is more bytes than torch can size) is one
        line keyed ``size_key``, the option that set the size (``data.image_size``, ``--image-size``; default
        ``model.backbone``). ``train --dry-run`` calls it with the config's evaluation crop: what a real run would
        only meet at its first forward pass."""
        from dynametric.utils.limits import out_of_memory

        chans = int(in_chans if in_chans is not None else getattr(self, "build_kwargs", {}).get("in_chans", 3))
        name = self.backbone.name
        side = int(image_size)
        image = f"one {side}x{side} image with {chans} channel(s)"
        if 4 * chans * side * side > _TORCH_BYTES_MAX:  # torch: "Storage size calculation overflowed", or it cannot
            # even unpack the size (10**20)
            raise ConfigError(f"image size {side} is too large: {image} is more than 2**63 - 1 bytes as float32 "
                              "(torch's limit); expected a size whose images fit in memory",
                              key=size_key or "model.backbone")
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                out = self.backbone(torch.zeros(1, chans, side, side))
        except ConfigError:
            raise
        except Exception as exc:  # timm's own input checks, a too small image for a deep CNN, ...
            if out_of_memory(exc):
                raise ConfigError(f"image size {side} is too large: out of memory running backbone {name!r} on "
                                  f"{image} (its float32 input alone is {_binary_size(4 * chans * side * side)}); "
                                  "expected a size whose images fit in memory",
                                  key=size_key or "model.backbone") from None
            raise ConfigError(f"backbone {name!r} cannot run on a {image_size}x{image_size} image with {chans} "
                              f"channel(s) ({type(exc).__name__}: {first_sentence(exc)})",
                              key="model.backbone") from None
        finally:
            self.train(was)
        if not isinstance(out, Tensor) or out.dim() not in (2, 3, 4):
            shape = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else type(out).__name__
            raise ConfigError(f"backbone {name!r} gives {shape}, not features of [B, C, H, W], [B, N, C] or [B, C]",
                              key="model.backbone")
        channels = int(out.shape[-1] if out.dim() == 3 else out.shape[1])
        if channels != self.backbone.feature_dim:
            raise ConfigError(f"backbone {name!r} gives {channels}-channel features, but reports "
                              f"{self.backbone.feature_dim} (the heads' input width): its features would not fit the "
                              "heads", key="model.backbone")

    # ---------------------------------------------------------------- sharing (dynametric.models.hub)
    @classmethod
    def from_pretrained(cls, source: str | Path, **kwargs: Any) -> Embedder:
        """An embedder with its weights from a model folder, a run folder or a Hugging Face repository id
        (:func:`dynametric.models.hub.from_pretrained`)."""
        from dynametric.models.hub import from_pretrained

        return from_pretrained(source, **kwargs)

    def save_pretrained(self, folder: str | Path, **kwargs: Any) -> Path:
        """Write a model folder (weights, description, model card): :func:`dynametric.models.hub.save_pretrained`."""
        from dynametric.models.hub import save_pretrained

        return save_pretrained(self, folder, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        """Upload to the Hugging Face Hub (``hub`` extra): :func:`dynametric.models.hub.push_to_hub`."""
        from dynametric.models.hub import push_to_hub

        return push_to_hub(self, repo_id, **kwargs)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by group: ``{"backbone": [...], "head": [...]}`` (frozen ones left out)."""
        return {
            "backbone": [p for p in self.backbone.parameters() if p.requires_grad],
            "head": [p for p in self.heads.parameters() if p.requires_grad],
        }


def concat_heads(output: Tensor | Mapping[str, Tensor]) -> Tensor:
    """Join the heads of an :class:`Embedder` output along the feature axis (a tensor is returned unchanged)."""
    if isinstance(output, Tensor):
        return output
    return torch.cat(list(output.values()), dim=1)


@dataclass
class WeightLoadReport:
    """What :func:`load_backbone_weights` did."""

    file: str
    loaded: list[str] = field(default_factory=list)
    ignored_classifier: list[str] = field(default_factory=list)
    """Classifier tensors in the file that a pooled backbone does not have (e.g. ``fc.weight``)."""
    kept_initial: list[str] = field(default_factory=list)
    """BatchNorm ``num_batches_tracked`` counters absent from older files; they keep their initial value."""

    def summary(self) -> str:
        """One line: ``backbone weights from FILE: N tensors loaded; ignored classifier tensors 'fc.weight',
        'fc.bias'; M BatchNorm counter(s) not in the file keep their initial value`` (the parts that apply)."""
        parts = [f"backbone weights from {self.file}: {len(self.loaded)} tensors loaded"]
        if self.ignored_classifier:
            parts.append(f"ignored classifier tensors {_listing(self.ignored_classifier)}")
        if self.kept_initial:
            parts.append(f"{len(self.kept_initial)} BatchNorm counter(s) not in the file keep their initial value "
                         f"({_listing(self.kept_initial, 2)})")
        return "; ".join(parts)


_TORCH_BYTES_MAX = 2**63 - 1  # the largest tensor torch can size (int64 bytes)


def _binary_size(nbytes: int) -> str:
    """``nbytes`` in the largest binary unit it reaches: ``112 GiB``, ``1.02e+03 EiB`` beyond exbibytes."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    power = 0
    while power < len(units) - 1 and nbytes >= 1024 ** (power + 1):
        power += 1
    return f"{nbytes} bytes" if power == 0 else f"{nbytes / 1024**power:.3g} {units[power]}"

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def weights_only_refusal(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in one clean sentence: the ``WeightsUnpickler
    error`` torch's long message holds (``Unsupported global: GLOBAL mod.Cls was not an allowed global by default``),
    without its terminal colour codes; else the message's first sentence."""
    text = _ANSI.sub("", str(exc))
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s+Please use|\.?\s*$)", text, flags=re.MULTILINE)
    return found.group(1).strip() if found else first_sentence(text)


def damaged_pickle(reason: str) -> bool:
    """Whether a :func:`weights_only_refusal` reason says the pickle stream itself is damaged: an opcode that no
    pickle protocol has (``Unsupported operand 103``), rather than one the safe loader does not take (a newer
    protocol's ``FRAME``, 149) or objects it refuses (``Unsupported global: ...``)."""
    import pickletools

    found = re.fullmatch(r"Unsupported operand (\d+)", reason.strip())
    return found is not None and chr(int(found.group(1))) not in {op.code for op in pickletools.opcodes}


def torch_save_magic(path: Path) -> bytes | None:
    """``None`` when the file starts like a ``torch.save`` file (a zip archive, or a legacy pickle), else its first
    bytes (to name in an error)."""
    with open(path, "rb") as fh:
        magic = fh.read(4)
    return None if magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80" else magic


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    if path.is_dir():
        raise InputError("is a folder; expected a weight file (.pt, .pth, .bin or .safetensors)", file=path,
                         key="model.pretrained_path")
    if not path.is_file():
        raise InputError("weight file not found", file=path, key="model.pretrained_path")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own error types
            raise InputError(f"not a readable safetensors file ({first_sentence(exc)})", file=path,
                             key="model.pretrained_path") from None
    else:
        magic = torch_save_magic(path)
        if magic is not None:
            raise InputError(f"not a torch weight file: it does not start like a torch.save file (first bytes "
                             f"{magic!r}); expected a state dict saved with torch.save, or a .safetensors file",
                             file=path, key="model.pretrained_path")
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            reason = weights_only_refusal(exc)
            if damaged_pickle(reason):
                raise InputError(f"truncated or corrupt weight file (its pickle data is damaged: {reason})",
                                 file=path, key="model.pretrained_path") from None
            raise InputError("refusing to load: the file needs objects other than tensors and plain containers "
                             f"(loaded with weights_only=True: {reason})", file=path,
                             key="model.pretrained_path") from None
        except Exception as exc:  # RuntimeError, EOFError ... for a truncated or corrupt file
            from dynametric.utils.limits import out_of_memory

            if out_of_memory(exc):  # not the file's fault: the out-of-memory line says what is
                raise
            raise InputError(f"truncated or corrupt weight file (torch could not read it: {first_sentence(exc)})",
                             file=path, key="model.pretrained_path") from None
    where = ""
    if isinstance(obj, Mapping) and not all(isinstance(v, Tensor) for v in obj.values()):
        for wrapper in _WRAPPER_KEYS:
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and inner:
                obj, where = inner, f" (under {wrapper!r})"
                break
    if not isinstance(obj, Mapping) or not obj:
        raise InputError(f"expected a non-empty state dict (name → tensor){where}, got "
                         f"{'an empty one' if isinstance(obj, Mapping) else type(obj).__name__}", file=path,
                         key="model.pretrained_path")
    bad = [(k, v) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise InputError(f"expected a state dict of tensors{where}; entry {bad[0][0]!r} is not a tensor "
                         f"({type(bad[0][1]).__name__}; {len(bad)} such entr{'y' if len(bad) == 1 else 'ies'})",
                         file=path, key="model.pretrained_path")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):  # saved from a DataParallel/DDP wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _listing(keys: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" … ({len(keys)} in all)" if len(keys) > limit else "")


def load_backbone_weights(backbone: Backbone, path: str | Path) -> WeightLoadReport:
    """Load a local backbone weight file (``torch.load(..., weights_only=True)``, or ``.safetensors``).

    Accepts a plain state dict, one wrapped under ``state_dict``/``model``/``model_state_dict``, and DDP's
    ``module.`` prefix. Tensors of the backbone's classifier (``backbone.classifier_prefixes``, e.g. timm's ``fc.``
    or BN-Inception's ``last_linear.``) are ignored and reported. Any other missing key, unexpected key or shape
    mismatch raises :class:`InputError` naming the file and the keys. ``~`` in ``path`` is the home folder.
    """
    path = Path(path).expanduser()
    state = _read_state_dict(path)
    body = backbone.body
    adapt = getattr(body, "adapt_state_dict", None)
    if callable(adapt):
        state = adapt(state)
    own = body.state_dict()
    report = WeightLoadReport(file=str(path))
    report.ignored_classifier = sorted(k for k in state if k not in own and k.startswith(backbone.classifier_prefixes))
    unexpected = sorted(k for k in state if k not in own and k not in report.ignored_classifier)
    missing_all = [k for k in own if k not in state]
    report.kept_initial = [k for k in missing_all if k.endswith("num_batches_tracked")]
    missing = [k for k in missing_all if k not in report.kept_initial]
    mismatched = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                  for k in own if k in state and state[k].shape != own[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_listing(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatches {_listing(mismatched)}")
    if problems:
        raise InputError(f"weights do not fit backbone {backbone.name!r}: " + "; ".join(problems), file=path,
                         key="model.pretrained_path")
    to_load = {k: v for k, v in state.items() if k in own}
    body.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    logger.info("loaded %d tensors into %s from %s (ignored classifier: %s)", len(report.loaded), backbone.name,
                path, report.ignored_classifier or "none")
    return report


def build_embedder(backbone: str = "resnet18", pretrained: bool = False, pretrained_path: str | None = None,
                   embedding_dim: int | None = 128, pooling: PoolingMode = "avg", normalize: bool = True,
                   freeze_bn: bool = False, num_heads: int = 1, head_dims: Sequence[int | None] | None = None,
                   in_chans: int = 3, head_names: Sequence[str] | None = None,
                   backbone_kwargs: Mapping[str, Any] | None = None) -> Embedder:
    """Build an :class:`Embedder`.

    Args:
        backbone: ``simple_cnn``, ``bninception`` or any timm model name (``resnet50``, ``vit_small_patch16_224``…).
        pretrained: timm's normal pretrained loading (BN-Inception: the converted Caffe ImageNet weights).
        pretrained_path: a local backbone weight file instead (see :func:`load_backbone_weights`); exclusive with
            ``pretrained``.
        embedding_dim: output width of each head (``None``: no projection, the pooled feature itself).
        pooling: ``avg`` | ``max`` | ``avgmax`` (sum) | ``catavgmax`` (concatenation) | ``token`` (ViT class token;
            a backbone without one is a ConfigError here).
        normalize: L2-normalise each head's output.
        freeze_bn: backbone BatchNorm layers in eval mode with frozen affine parameters, also after ``.train()``.
        num_heads: number of heads on the shared backbone; ``head_dims`` / ``head_names`` set each head's width
            and name (defaults: ``embedding_dim`` and :func:`default_head_names`).
        in_chans: input channels.
        backbone_kwargs: extra keyword arguments for the backbone factory (timm ``create_model``, ``SimpleCNN``,
            ``BNInception``); not those dynametric passes itself: ``pretrained``, ``in_chans`` and, for a timm model,
            ``global_pool`` (use ``pooling``) and ``num_classes`` (use ``embedding_dim``): a one-line
            :class:`ConfigError` keyed ``model.backbone_kwargs.<name>``.
    """
    if num_heads < 1:
        raise ConfigError(f"num_heads must be >= 1, got {num_heads}", key="model.num_heads")
    if pretrained and pretrained_path is not None:
        raise ConfigError("set either pretrained=true (download) or pretrained_path (local file), not both",
                          key="model.pretrained_path")
    names = tuple(head_names) if head_names is not None else default_head_names(num_heads)
    check_head_names(names)
    if len(names) != num_heads or len(set(names)) != num_heads:
        raise ConfigError(f"head_names must be {num_heads} distinct names, got {list(names)}", key="model.head_names")
    dims = list(head_dims) if head_dims is not None else [embedding_dim] * num_heads
    if len(dims) != num_heads:
        raise ConfigError(f"head_dims must have num_heads={num_heads} entries, got {len(dims)}",
                          key="model.head_dims")
    for i, dim in enumerate(dims):  # here, keyed as given (EmbeddingHead's own check names model.embedding_dim)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= MAX_EMBEDDING_DIM):
            raise ConfigError(f"a head's width must be an integer from 1 to {MAX_EMBEDDING_DIM} or null, got {dim!r}",
                              key=f"model.head_dims[{i}]" if head_dims is not None else "model.embedding_dim")
    check_backbone_kwargs(backbone, backbone_kwargs or {})  # pretrained=, in_chans=, global_pool=: set here
    body = create_backbone(backbone, pretrained=pretrained, in_chans=in_chans, **dict(backbone_kwargs or {}))
    if pooling == "token" and not body.has_class_token:  # here, not at the first forward (`train --dry-run` builds)
        raise ConfigError(f"pooling 'token' needs a transformer backbone with a class token (token output [B, N, C]); "
                          f"backbone {backbone!r} has none: use avg, max, avgmax or catavgmax", key="model.pooling")
    notes: list[str] = []
    if pretrained_path is not None:
        notes.append(load_backbone_weights(body, pretrained_path).summary())
    elif not pretrained and backbone.startswith(TIMM_SOURCE_PREFIXES):
        notes.append(f"backbone {backbone!r} with model.pretrained false: its architecture alone, with random initial "
                     "weights (the weights there are not loaded); set model.pretrained=true to start from them")
    if freeze_bn and not _batchnorm_modules(body):
        notes.append(f"model.freeze_bn is true, but backbone {backbone!r} has no BatchNorm layer: nothing is frozen")
    pool = GlobalPool(pooling, num_prefix_tokens=body.num_prefix_tokens)
    in_dim = pool.output_dim(body.feature_dim)
    heads = {name: EmbeddingHead(in_dim, dim, normalize=normalize) for name, dim in zip(names, dims, strict=True)}
    model = Embedder(body, pool, heads, freeze_bn=freeze_bn)
    model.notes = notes
    model.build_kwargs = {  # what save_pretrained records to rebuild this model (models/hub.py)
        "backbone": backbone, "pretrained": pretrained, "pretrained_path": pretrained_path,
        "embedding_dim": embedding_dim, "pooling": pooling, "normalize": normalize, "freeze_bn": freeze_bn,
        "num_heads": num_heads, "head_dims": None if head_dims is None else list(head_dims), "in_chans": in_chans,
        "head_names": None if head_names is None else list(head_names), "backbone_kwargs": dict(backbone_kwargs or {})}
    return model
