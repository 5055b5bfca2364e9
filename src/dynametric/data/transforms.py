"""Image transform presets for the standard protocols (Musgrave et al., ECCV 2020; Roth et al., ICML 2020), ImageNet
normalisation.

=================  ===============================================  ======================================
preset             train                                            eval
=================  ===============================================  ======================================
``standard``       RandomResizedCrop(224) + flip (Roth et al.)       Resize(256) → CenterCrop(224)
``reality_check``  Resize(256) → RandomResizedCrop(227, scale        Resize(256) → CenterCrop(227)
                   0.16–1, ratio 0.75–1.33) + flip (Musgrave et al.)
``dyml``           RandomResizedCrop(224, scale 0.16–1) + flip       Resize(256) → CenterCrop(224)
                   (the public CSL implementation)
``small``          RandomResizedCrop(size, scale 0.5–1) + flip       Resize(size) (for synthetic/tiny data;
                   (default size 32)                                 size defaults to 32)
``eval_only``      as eval (no augmentation)                         Resize(256) → CenterCrop(224)
=================  ===============================================  ======================================

``Resize(256)`` is torchvision's ``Resize`` of an image cut to at most 8:1 first (:func:`bounded_resize`: a thin
strip made a resize of seconds and gigabytes); images up to 8:1 are resized exactly as by ``Resize``.

``RandomResizedCrop`` is torchvision's parameters and random draws (``get_params``: a seeded run picks the same
crop box as torchvision's) but crops and resizes a PIL image in one ``Image.resize(size, box=...)`` call, without
copying the crop first. The box is identical; the pixels are not bit-identical: resizing with ``box=`` lets the
resampling filter read the pixels just outside the box (torchvision's crop-then-resize pads the crop's own edge
instead), so the output's border rows and columns can differ by up to about 37 levels on a noisy image, the
interior by at most 1 (rounding).

Every preset ends with ``ToTensor`` and ``Normalize(mean, std)`` (ImageNet statistics unless given; a run's
config gives its backbone's: :func:`backbone_statistics`, ``data.mean`` / ``data.std``). ``size``,
``resize``, ``scale``, ``ratio``, ``flip``, ``mean``, ``std`` and ``normalize`` override the preset's values; a
new ``size`` without a ``resize`` keeps the preset's resize:crop ratio (``standard``, ``size=112`` → Resize(128),
CenterCrop(112)).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from dynametric.errors import ConfigError

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
GREY_MEAN: tuple[float] = (0.449,)
"""The default mean of a one-channel model (``model.in_chans: 1``): ImageNet's three means averaged."""
GREY_STD: tuple[float] = (0.226,)
"""The default std of a one-channel model: ImageNet's three stds averaged."""
GREY_WEIGHTS: tuple[float, float, float] = (0.299, 0.587, 0.114)
"""Pillow's ``convert("L")`` (ITU-R 601-2 luma, rounded to an integer): what :class:`Grayscale` computes."""


@dataclass(frozen=True)
class TransformSpec:
    """Resolved parameters of a preset (also what :func:`build_transform` records on the result)."""

    size: int = 224  # crop side
    resize: int | None = 256  # shorter side before cropping (None: no resize)
    scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop area range
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True
    resize_before_train_crop: bool = False  # Reality Check: resize 256 before RandomResizedCrop
    augment: bool = True
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    normalize: bool = True


PRESETS: dict[str, TransformSpec] = {
    "standard": TransformSpec(),
    "reality_check": TransformSpec(size=227, scale=(0.16, 1.0), ratio=(0.75, 1.33), resize_before_train_crop=True),
    "dyml": TransformSpec(scale=(0.16, 1.0)),
    "small": TransformSpec(size=32, resize=None, scale=(0.5, 1.0)),
    "eval_only": TransformSpec(augment=False),
}


def backbone_statistics(backbone: str) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """``(mean, std, source)``: the normalisation statistics of ``backbone``'s pretrained weights.

    * dynametric's own backbones (``simple_cnn``, ``bninception``): ImageNet's.
    * a timm model name (with or without a pretrained tag, e.g. ``vit_base_patch16_clip_224.openai``): timm's
      ``pretrained_cfg`` ``mean`` / ``std`` (the default tag's for a bare name): ``inception_v3`` and
      ``vit_*_224`` (0.5, 0.5, 0.5) / (0.5, 0.5, 0.5), CLIP models OpenAI's, ``resnet50`` ImageNet's.
    * ``local-dir:<folder>``: the ``pretrained_cfg`` of the folder's ``config.json``; ``hf-hub:<repo>``: of the
      repository's ``config.json`` when it is in the local Hugging Face cache (nothing is downloaded).
    * anything else (no pretrained config, no ``mean`` / ``std`` in it): ImageNet's.

    ``source`` says which applied, in words (for the docs' and the command line's notes)."""
    fallback = (IMAGENET_MEAN, IMAGENET_STD, "ImageNet")
    from dynametric.models.backbones import BACKBONES, TIMM_SOURCE_PREFIXES

    if backbone in BACKBONES:
        return fallback
    cfg: Any = None
    if backbone.startswith(TIMM_SOURCE_PREFIXES):
        import json
        from pathlib import Path

        prefix, _, rest = backbone.partition(":")
        path: Any = None
        if prefix == "local-dir":
            path = Path(rest).expanduser() / "config.json"
        else:
            try:
                from huggingface_hub import try_to_load_from_cache

                path = try_to_load_from_cache(rest.partition("@")[0], "config.json")
            except Exception:  # no hub client, a name the hub client refuses: no statistics known
                path = None
        try:
            cfg = json.loads(Path(path).read_text(encoding="utf-8")).get("pretrained_cfg") if isinstance(
                path, (str, Path)) else None
        except (OSError, ValueError, AttributeError):
            cfg = None
    else:
        try:
            import timm

            found = timm.models.get_pretrained_cfg(backbone) if timm.is_model(backbone) else None
        except Exception:  # an unknown name fails later, where the model is built, with its own message
            found = None
        cfg = found.to_dict() if found is not None else None
    if not isinstance(cfg, dict):
        return fallback
    mean: Any = cfg.get("mean")
    std: Any = cfg.get("std")
    try:
        mean_t, std_t = tuple(float(v) for v in mean), tuple(float(v) for v in std)
    except (TypeError, ValueError):
        return fallback
    if len(mean_t) != 3 or len(std_t) != 3 or min(std_t) <= 0:
        return fallback
    return mean_t, std_t, f"{backbone}'s pretrained config"


def resolve_transform_spec(preset: str, **overrides: Any) -> TransformSpec:
    """The preset's :class:`TransformSpec` with ``overrides`` applied (unknown preset/key → ConfigError)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown transform preset {preset!r}; expected one of {sorted(PRESETS)}", key="preset")
    fields = set(TransformSpec.__dataclass_fields__)
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ConfigError(f"unknown transform option(s) {bad}; expected some of {sorted(fields)}", key=bad[0])
    base = PRESETS[preset]
    values: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in overrides.items()}
    if "size" in values and "resize" not in values and base.resize is not None:
        values["resize"] = round(int(values["size"]) * base.resize / base.size)  # keep the preset's resize:crop ratio
    spec = replace(base, **values)
    if spec.size < 1 or (spec.resize is not None and spec.resize < 1):
        raise ConfigError(f"size and resize must be positive, got {spec.size}, {spec.resize}", key="size")
    if not (0 < spec.scale[0] <= spec.scale[1] <= 1):
        raise ConfigError(f"scale must satisfy 0 < lo <= hi <= 1, got {spec.scale}", key="scale")
    if len(spec.mean) != len(spec.std) or any(s <= 0 for s in spec.std):
        raise ConfigError(f"mean/std must have equal length and positive std, got {spec.mean}, {spec.std}", key="std")
    return spec


def _one_step_crop_class() -> type:
    from PIL import Image
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    pil_modes = {InterpolationMode.BILINEAR: Image.Resampling.BILINEAR,
                 InterpolationMode.BICUBIC: Image.Resampling.BICUBIC,
                 InterpolationMode.NEAREST: Image.Resampling.NEAREST,
                 InterpolationMode.LANCZOS: Image.Resampling.LANCZOS}

    class RandomResizedCrop(T.RandomResizedCrop):
        """torchvision's ``RandomResizedCrop`` (same ``get_params`` draws from torch's RNG, so seeded runs pick the
        same boxes); a PIL image is cropped and resized by one ``Image.resize(size, box=...)`` call, which reads
        the box straight from the decoded image, and the filter's support beyond the box edge from the pixels
        there: border pixels may differ from torchvision's by tens of levels, interior ones by at most 1 (see the
        module docstring). Tensors take torchvision's path."""

        def forward(self, img: Any) -> Any:
            if not isinstance(img, Image.Image) or self.interpolation not in pil_modes:
                return super().forward(img)
            top, left, h, w = self.get_params(img, self.scale, self.ratio)
            return img.resize((self.size[1], self.size[0]), pil_modes[self.interpolation],
                              box=(left, top, left + w, top + h))

    return RandomResizedCrop


_CROP_CLASS: list[type] = []

MAX_ASPECT = 8
"""The longest side a resize works on, in multiples of the shorter side (:func:`bounded_resize`)."""


def crop_to_aspect(img: Any, max_aspect: int = MAX_ASPECT) -> Any:
    """A PIL image or ``[..., H, W]`` tensor whose long side is more than ``max_aspect`` times its short side,
    centre-cropped along the long side to ``max_aspect`` times the short side (torchvision's ``center_crop``
    offsets); any other image unchanged (the same object)."""
    from torchvision.transforms import functional as F

    _, h, w = F.get_dimensions(img)
    if w > max_aspect * h:
        return F.center_crop(img, [h, max_aspect * h])
    if h > max_aspect * w:
        return F.center_crop(img, [max_aspect * w, w])
    return img


def _bounded_resize_class() -> type:
    from torchvision import transforms as T

    class BoundedResize(T.Resize):
        """torchvision's ``Resize`` (shorter side to ``size``) of the image :func:`crop_to_aspect` leaves: a 2x20000
        strip is first cut to its central 2x16, so the resize makes 256x2048, not 256x2560000 (seconds and GBs).
        An image of aspect ratio up to ``max_aspect`` : 1 is resized exactly as by ``Resize``."""

        max_aspect = MAX_ASPECT

        def forward(self, img: Any) -> Any:
            return super().forward(crop_to_aspect(img, self.max_aspect))

    return BoundedResize


_RESIZE_CLASS: list[type] = []


def bounded_resize(size: int) -> Any:
    """A ``Resize(size)`` of the shorter side that never works on a long side beyond :data:`MAX_ASPECT` times the
    shorter one (see ``BoundedResize``)."""
    return _lazy_class("BoundedResize")(size)


_LAZY = {"BoundedResize": (_RESIZE_CLASS, _bounded_resize_class), "RandomResizedCrop": (_CROP_CLASS,
                                                                                       _one_step_crop_class)}


def _lazy_class(name: str) -> type:
    """A transform class built on first use (torchvision is imported then), named as a module attribute so that
    transforms pickle by reference (loader workers that are spawned, not forked)."""
    store, make = _LAZY[name]
    if not store:
        cls = make()
        cls.__module__, cls.__qualname__ = __name__, name
        store.append(cls)
    return store[0]


def __getattr__(name: str) -> type:  # unpickling in a fresh process: ``dynametric.data.transforms.BoundedResize``
    if name in _LAZY:
        return _lazy_class(name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def one_step_random_resized_crop(size: int, **kwargs: Any) -> Any:
    """A :class:`RandomResizedCrop` (see the module docstring) of side ``size``."""
    return _lazy_class("RandomResizedCrop")(size, **kwargs)


class SwapRB:
    """Exchange the R and B channels of a PIL RGB image: the inference path's form of ``data.options.swap_rb``
    (the dataset swaps as it decodes, :func:`dynametric.data.base.load_rgb`; ``embed``, ``search --image``,
    ``explore`` and ``export`` put this step first in the run's evaluation transform, so an image file is seen as
    the run saw its images)."""

    def __call__(self, img: Any) -> Any:
        from PIL import Image

        r, g, b = img.split()
        return Image.merge("RGB", (b, g, r))

    def __repr__(self) -> str:
        return "SwapRB()"


def prepend_step(transform: Any, step: Any) -> Any:
    """A ``Compose`` of ``step`` then the steps of ``transform`` (a ``Compose``, or one callable), keeping the
    resolved parameters ``.spec`` of a :func:`build_transform` result."""
    from torchvision import transforms as T

    out = T.Compose([step, *getattr(transform, "transforms", [transform])])
    spec = getattr(transform, "spec", None)
    if spec is not None:
        out.spec = spec  # type: ignore[attr-defined]
    return out


def build_transform(preset: str = "standard", train: bool = False, **overrides: Any) -> Callable[[Any], Any]:
    """A torchvision transform for ``preset`` (see the module table); ``train`` selects the augmenting branch.

    Example: ``build_transform("reality_check", train=True)`` → Resize(256), RandomResizedCrop(227, scale=(0.16, 1),
    ratio=(0.75, 1.33)), RandomHorizontalFlip(0.5), ToTensor, Normalize(ImageNet).
    """
    from torchvision import transforms as T

    spec = resolve_transform_spec(preset, **overrides)
    steps: list[Any] = []
    if train and spec.augment:
        if spec.resize_before_train_crop and spec.resize is not None:
            steps.append(bounded_resize(spec.resize))
        steps.append(one_step_random_resized_crop(spec.size, scale=spec.scale, ratio=spec.ratio))
        if spec.flip:
            steps.append(T.RandomHorizontalFlip(0.5))
    elif spec.resize is None:
        steps.append(T.Resize((spec.size, spec.size)))
    else:
        steps += [bounded_resize(spec.resize), T.CenterCrop(spec.size)]
    steps.append(T.ToTensor())
    if spec.normalize:
        steps.append(T.Normalize(list(spec.mean), list(spec.std)))
    out = T.Compose(steps)
    out.spec = spec
    return out


def denormalize(x: Any, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> Any:
    """Invert ``Normalize`` on a ``[..., C, H, W]`` tensor (for visual checks)."""
    import torch

    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(-1, 1, 1)
    return x * s + m
