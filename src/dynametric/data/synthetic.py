"""An embedded, procedurally generated three-scale dataset: ``SyntheticHierarchy``.

Nothing is shipped on disk: every image is drawn with PIL/numpy from the seed when the dataset is built and kept
in memory (one ``uint8[N, H, W, 3]`` array per instance).

Hierarchy (labels finest first, ``scale_names = ("fine", "middle", "coarse")``):

* **coarse** = shape family: ``polygons`` (triangle, square, hexagon), ``round`` (circle, ellipse, half-disk),
  ``stars`` (five-point star, four-point star, plus-cross);
* **middle** = shape (3 per family, 9 in all);
* **fine** = a variant of the shape: a combination of colour (6 hues), texture (solid, striped, hollow,
  two-tone) and size (small, large). For every shape the seed picks ``train + val + test`` distinct variants;
  the fine classes of the three splits are **disjoint** (also as integer ids) while every middle and coarse class
  occurs in every split, so the test split measures zero-shot retrieval at the fine scale and exhibits the
  cross-scale conflict (two fine classes of one shape are negatives at the fine scale and positives above).

Intra-class variation: rotation (uniform), position and scale jitter, hue/brightness jitter, background colour,
clutter (distractor strokes and blobs drawn in the same palette, one of them possibly over the shape) and
Gaussian pixel noise. Shapes are drawn at twice the resolution and box-downsampled (anti-aliasing).

Images: with ``transform="to_tensor"`` (the default) an item is a float tensor ``[3, H, W]`` in ``[0, 1]``;
``transform=None`` gives the ``PIL.Image`` (so torchvision transforms apply); any callable is applied to the
PIL image. :meth:`SyntheticHierarchy.tensors` returns all images at once as ``float[N, 3, H, W]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from dynametric.errors import InputError
from dynametric.utils.seeds import check_seed

SCALE_NAMES: tuple[str, str, str] = ("fine", "middle", "coarse")
FAMILIES: tuple[str, ...] = ("polygons", "round", "stars")
SHAPES: tuple[tuple[str, int], ...] = (  # (shape name, family index)
    ("triangle", 0), ("square", 0), ("hexagon", 0),
    ("circle", 1), ("ellipse", 1), ("half_disk", 1),
    ("star5", 2), ("star4", 2), ("cross", 2),
)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 50, 40), "green": (40, 190, 60), "blue": (50, 90, 230),
    "yellow": (230, 210, 40), "magenta": (210, 50, 200), "cyan": (40, 200, 210),
}
TEXTURES: tuple[str, ...] = ("solid", "striped", "hollow", "two_tone")
SIZES: dict[str, float] = {"small": 0.24, "large": 0.38}  # shape radius as a fraction of the image side
SPLITS: tuple[str, ...] = ("train", "val", "test")
_SUPERSAMPLE = 2
#: The most memory drawing one image takes, in bytes per supersampled pixel: a striped or two-tone fill's numpy
#: temporaries (float64 RGB values, the float32 stripe coordinate, masks: 36 at their peak, traced) and Pillow's
#: images of that size (canvas, fill, composite and mask, about 4 bytes a pixel each), with a margin.
_RENDER_BYTES = 56


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices ``[V, 2]`` of a shape of circumradius ~1 centred at the origin."""
    if shape in ("triangle", "square", "hexagon"):
        n = {"triangle": 3, "square": 4, "hexagon": 6}[shape]
        t = 2 * math.pi * np.arange(n) / n
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "circle":
        t = 2 * math.pi * np.arange(32) / 32
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "ellipse":
        t = 2 * math.pi * np.arange(32) / 32
        return np.stack([np.cos(t), 0.5 * np.sin(t)], 1)
    if shape == "half_disk":
        t = math.pi * np.arange(17) / 16
        pts = np.stack([np.cos(t), np.sin(t) - 0.4], 1)
        return pts * 1.1
    if shape in ("star5", "star4"):
        n, inner = (5, 0.45) if shape == "star5" else (4, 0.3)
        t = math.pi * np.arange(2 * n) / n
        r = np.where(np.arange(2 * n) % 2 == 0, 1.0, inner)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if shape == "cross":
        a, b = 1.0, 0.32
        return np.array([[b, b], [b, a], [-b, a], [-b, b], [-a, b], [-a, -b], [-b, -b], [-b, -a], [b, -a],
                         [b, -b], [a, -b], [a, b]], dtype=np.float64)
    raise InputError(f"unknown synthetic shape {shape!r}", key="shape")


_POLYGONS = {name: _unit_polygon(name) for name, _ in SHAPES}


def integer_option(value: Any, key: str, minimum: int) -> int:
    """``value`` if it is an integer (not true/false) >= ``minimum``, else an :class:`InputError` keyed ``key`` (an
    option of the generator: ``data.options.<key>`` in a run)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum:
        return int(value)
    raise InputError(f"{key} must be an integer >= {minimum}, got {value!r}", key=key)


def number_option(value: Any, key: str, minimum: float | None = 0.0) -> float:
    """``value`` if it is a finite number (not true/false) >= ``minimum`` (``None``: any), else an
    :class:`InputError` keyed ``key``."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
            and math.isfinite(value) and (minimum is None or value >= minimum):
        return float(value)
    raise InputError(f"{key} must be a number" + ("" if minimum is None else f" >= {minimum:g}") + f", got {value!r}",
                     key=key)


def coarse_groups(seed: int, coherence: float) -> list[int]:
    """Coarse group of each of the 9 shapes (middle classes) for a ``coarse_coherence``.

    ``n = floor(3 * coherence + 0.5)`` groups are *coherent* (their three shapes are one visual family); the other
    groups hold *unrelated* shapes. Two coherent groups would force the third to be coherent as well, so ``n = 2``
    is realised as ``n = 1`` (achievable fractions: 0, 1/3, 1). Which families stay coherent is drawn from the
    seed. Incoherent groups: with 3 of them, group ``g`` holds the ``g``-th shape of every family (no two members
    share a family, "coarse := shape mod 3"); with 2, the 6 remaining shapes are dealt so that each group mixes both
    families. ``coherence = 1`` is the identity (group = family), today's hierarchy.
    """
    if not 0.0 <= coherence <= 1.0:
        raise InputError(f"coarse_coherence must be in [0, 1], got {coherence}", key="coarse_coherence")
    n = int(math.floor(3 * coherence + 0.5))
    if n == 3:
        return [family for _, family in SHAPES]
    n = min(n, 1)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC0A5E]))
    families = [int(f) for f in rng.permutation(len(FAMILIES))]
    groups = [-1] * len(SHAPES)
    members = {f: [i for i, (_, fam) in enumerate(SHAPES) if fam == f] for f in range(len(FAMILIES))}
    for f in families[:n]:  # coherent: the group keeps its family's label
        for i in members[f]:
            groups[i] = f
    rest = sorted(families[n:])
    if len(rest) == 3:  # fully incoherent: group g = the g-th shape of each family
        for f in rest:
            for j, i in enumerate(members[f]):
                groups[i] = j
    else:  # two mixed groups out of two families a, b: {a0, a1, b2} and {b0, b1, a2}
        a, b = rest
        for j in range(3):
            groups[members[a][j]] = a if j < 2 else b
            groups[members[b][j]] = b if j < 2 else a
    return groups


def _variant_table(seed: int, counts: dict[str, int], groups: list[int] | None = None,
                   test_only_middle: int = 0) -> list[dict[str, Any]]:
    """All fine classes of one seed: per shape, distinct (colour, texture, size) variants dealt to the splits.

    ``test_only_middle`` shapes (drawn from the seed) get no train/val classes: their fine classes (``counts["test"]``
    of them) exist only in the test split.
    """
    combos = [(c, t, s) for c in COLOURS for t in TEXTURES for s in SIZES]
    per_shape = sum(counts.values())
    if per_shape > len(combos):
        raise InputError(f"at most {len(combos)} fine variants per shape, asked for {per_shape}",
                         key="fine_per_shape")
    groups = groups if groups is not None else [family for _, family in SHAPES]
    held = set()
    if test_only_middle:
        hrng = np.random.default_rng(np.random.SeedSequence([seed, 0x7E57]))
        held = {int(i) for i in hrng.permutation(len(SHAPES))[:test_only_middle]}
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    table: list[dict[str, Any]] = []
    for shape_id, (shape, family) in enumerate(SHAPES):
        order = rng.permutation(len(combos))
        pos = 0
        for split in SPLITS:
            for _ in range(counts[split]):
                colour, texture, size = combos[order[pos]]
                pos += 1
                if shape_id in held and split != "test":
                    continue
                table.append({"split": split, "shape": shape, "middle": shape_id, "coarse": groups[shape_id],
                              "family": FAMILIES[family], "colour": colour, "texture": texture, "size": size,
                              "test_only_middle": shape_id in held})
    # fine ids: grouped by split (train first), then by shape, so ids are disjoint between splits
    table.sort(key=lambda v: (SPLITS.index(v["split"]), v["middle"]))
    for fine_id, v in enumerate(table):
        v["fine"] = fine_id
    return table


FACTORS: dict[str, tuple[str, ...]] = {"colour": tuple(COLOURS), "texture": TEXTURES, "size": tuple(SIZES)}
# held-out-factor split: the factor that defines the fine classes of each split (with the shape)
FACTOR_SPLITS: dict[str, dict[str, str]] = {
    "texture": {"train": "colour", "val": "size", "test": "texture"},
    "colour": {"train": "texture", "val": "size", "test": "colour"},
}
# how the val classes of a held-out-factor split are formed (``SyntheticHierarchy(val_classes=...)``)
VAL_CLASSES: tuple[str, ...] = ("other_factor", "same_factor")


def val_shapes(seed: int) -> list[int]:
    """The 3 shapes (indices into :data:`SHAPES`, ascending) whose classes form the val split when
    ``val_classes="same_factor"``: one shape per visual family, drawn from the seed."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A1D]))
    picks = []
    for f in range(len(FAMILIES)):
        members = [i for i, (_, fam) in enumerate(SHAPES) if fam == f]
        picks.append(members[int(rng.integers(len(members)))])
    return sorted(picks)


def _factor_table(split: str, held_out: str, groups: list[int], seed: int = 0,
                  val_classes: str = "other_factor") -> list[dict[str, Any]]:
    """Fine classes of a held-out-factor split: one class per (shape, value of the split's class factor).

    The factors not named by the class vary per image (``None`` in the table). Fine ids are disjoint between splits
    (train ids first, then val, then test). With ``val_classes="same_factor"`` the val classes are (shape, held-out
    factor) on the 3 shapes of :func:`val_shapes` and the test classes the same on the other 6 shapes.
    """
    plan = dict(FACTOR_SPLITS[held_out])
    shapes = {sp: set(range(len(SHAPES))) for sp in SPLITS}
    if val_classes == "same_factor":
        plan["val"] = plan["test"]
        shapes["val"] = set(val_shapes(seed))
        shapes["test"] -= shapes["val"]
    table: list[dict[str, Any]] = []
    offset = 0
    for sp in SPLITS:
        factor = plan[sp]
        values = FACTORS[factor]
        for shape_id, (shape, family) in enumerate(SHAPES):
            if shape_id not in shapes[sp]:
                continue
            for j, value in enumerate(values):
                v: dict[str, Any] = {"split": sp, "shape": shape, "middle": shape_id, "coarse": groups[shape_id],
                                     "family": FAMILIES[family], "colour": None, "texture": None, "size": None,
                                     "test_only_middle": False, "class_factor": factor,
                                     "fine": offset + shape_id * len(values) + j}
                v[factor] = value
                if sp == split:
                    table.append(v)
        offset += len(SHAPES) * len(values)
    return table


class _Renderer:
    """Draws one image (``uint8[H, W, 3]``) of a fine class with random nuisance parameters."""

    def __init__(self, image_size: int, noise_std: float, clutter: int) -> None:
        self.size = image_size
        self.big = image_size * _SUPERSAMPLE
        self.noise_std = noise_std
        self.clutter = clutter
        yy, xx = np.mgrid[0:self.big, 0:self.big].astype(np.float32)
        self.xx, self.yy = xx, yy
        self.palette = np.array(list(COLOURS.values()), dtype=np.float32)

    def _jitter_colour(self, rng: np.random.Generator, rgb: np.ndarray, spread: float = 1.0) -> np.ndarray:
        gain, shift = rng.uniform(0.8, 1.1), rng.normal(0.0, 12.0, 3)
        if spread != 1.0:
            gain, shift = 0.95 + spread * (gain - 0.95), spread * shift
        return np.clip(rgb * gain + shift, 0, 255)

    def render(self, variant: dict[str, Any], rng: np.random.Generator) -> np.ndarray:
        """One image; ``variant["spread"]`` (default 1) scales every nuisance range of the class (see the class)."""
        big = self.big
        s = float(variant.get("spread", 1.0))
        bg = rng.uniform(40, 150) + rng.normal(0, 15, 3)
        if s != 1.0:
            bg = 95 + s * (bg - 95)
        canvas = Image.new("RGB", (big, big), tuple(int(v) for v in np.clip(bg, 0, 255)))
        draw = ImageDraw.Draw(canvas)
        clutter = self.clutter if s == 1.0 else int(round(self.clutter * min(s, 2.0)))
        n_clutter = int(rng.integers(clutter // 2, clutter + 1))
        for _ in range(n_clutter):
            col = tuple(int(v) for v in self._jitter_colour(rng, self.palette[rng.integers(len(self.palette))]))
            if rng.random() < 0.6:
                p = rng.uniform(0, big, 4)
                draw.line([(p[0], p[1]), (p[2], p[3])], fill=col, width=int(rng.integers(1, 3)) * _SUPERSAMPLE)
            else:
                c = rng.uniform(0, big, 2)
                r = rng.uniform(0.03, 0.08) * big
                draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=col)

        # the shape: rotation, position and scale jitter
        scale_jit, angle, shift = rng.uniform(0.85, 1.15), rng.uniform(0, 2 * math.pi), rng.uniform(-0.12, 0.12, 2)
        if s != 1.0:  # tight classes: less of each range (rotation about the class's own orientation)
            scale_jit = 1.0 + s * (scale_jit - 1.0)
            angle = float(variant.get("angle", 0.0)) + min(s, 1.0) * (angle - math.pi)
            shift = np.clip(s * shift, -0.2, 0.2)
        radius = SIZES[variant["size"]] * big * scale_jit
        centre = big / 2 + shift * big
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        pts = _POLYGONS[variant["shape"]] @ rot.T * radius + centre
        mask_img = Image.new("L", (big, big), 0)
        mdraw = ImageDraw.Draw(mask_img)
        poly = [tuple(p) for p in pts.tolist()]
        mdraw.polygon(poly, fill=255)
        if variant["texture"] == "hollow":
            mdraw.polygon(poly, fill=0, outline=255, width=max(2, int(round(0.07 * big))))
        colour = self._jitter_colour(rng, np.array(COLOURS[variant["colour"]], dtype=np.float32), s)
        if variant["texture"] in ("striped", "two_tone"):
            u = (self.xx - centre[0]) * math.cos(angle) + (self.yy - centre[1]) * math.sin(angle)
            if variant["texture"] == "striped":
                on = ((u / (0.18 * big)) % 1.0) < 0.5
                other = colour * 0.3
            else:
                on = u < 0
                other = np.clip(255 - colour * 0.5, 0, 255)
            fill = Image.fromarray(np.where(on[..., None], colour, other).astype(np.uint8))
        else:
            fill = Image.new("RGB", (big, big), tuple(int(v) for v in colour))
        canvas = Image.composite(fill, canvas, mask_img)

        if n_clutter and rng.random() < 0.5:  # one distractor stroke over the shape
            stroke = self._jitter_colour(rng, self.palette[rng.integers(len(self.palette))])
            p = rng.uniform(0, big, 4)
            ImageDraw.Draw(canvas).line([(p[0], p[1]), (p[2], p[3])], fill=tuple(int(v) for v in stroke),
                                        width=_SUPERSAMPLE)

        out = np.asarray(canvas.reduce(_SUPERSAMPLE), dtype=np.float32)
        out = out + rng.standard_normal(out.shape, dtype=np.float32) * np.float32(self.noise_std * s)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)


class SyntheticHierarchy(torch.utils.data.Dataset):
    """Procedural three-scale dataset (fine = shape variant, middle = shape, coarse = shape family).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; the three splits have disjoint fine classes and share all
            9 middle and 3 coarse classes. ``"val"`` is a separate class-disjoint set for model selection.
        seed: determines the fine-class variants and every pixel (same seed and arguments → identical data).
        image_size: side of the square RGB images (default 32).
        images_per_class: images per fine class in this split.
        fine_per_shape: fine classes per shape in each split, ``{"train": 20, "val": 6, "test": 10}`` by default
            (the sum may not exceed 48, the number of colour × texture × size combinations).
        transform: ``"to_tensor"`` (default; float ``[3, H, W]`` in ``[0, 1]``), ``None`` (PIL image) or a
            callable applied to the PIL image.
        noise_std: std of the Gaussian pixel noise (0–255 scale).
        clutter: maximum number of distractor strokes/blobs per image.
        coarse_coherence: fraction of coarse groups whose three shapes are one visual family (1, the default, is
            today's hierarchy; 0 gives groups of unrelated shapes, "coarse := shape mod 3"); see
            :func:`coarse_groups` for the achievable fractions (0, 1/3, 1). Only the coarse labels change.
        test_only_middle: number of shapes (middle classes, drawn from the seed) whose fine classes appear only in
            the ``test`` split (no train/val classes of that shape). Default 0.
        class_spread: ``None`` (default: every class has today's intra-class variation) or ``(low, high)``: each
            fine class gets a spread factor drawn log-uniformly from ``[low, high]`` (from the seed) that scales its
            rotation range (capped at a full turn, about a per-class orientation), position, scale and colour
            jitter, background contrast, clutter (capped at 2x) and pixel noise. ``classes[i]["spread"]`` holds it.
        held_out_factor: ``None`` (default) or ``"texture"`` / ``"colour"``: the held-out-factor split for Sharing.
            With ``"texture"``: train classes are (shape, colour) with texture and size varying per image, val
            classes (shape, size) with colour and texture varying, test classes (shape, texture) with colour and
            size varying; ``"colour"`` swaps colour and texture. ``fine_per_shape`` does not apply.
        val_classes: only with ``held_out_factor``: how the val classes are formed. ``"other_factor"`` (the
            default, the behaviour before this option existed): val classes are (shape, size) over all 9 shapes,
            so validation holds out a *different* factor than test. ``"same_factor"``: val and test hold out the
            same factor on disjoint shapes: val classes are (shape, held-out factor) for one shape per family (3
            shapes drawn from the seed, :func:`val_shapes`; 12 classes), test classes (shape, held-out factor) for
            the other 6 shapes (24 classes); the train classes are unchanged (all 9 shapes).

    Items are ``(image, labels)`` with ``labels = LongTensor[3]`` (fine, middle, coarse). The images are in memory
    (``images``, ``uint8[N, H, W, 3]``), so ``paths`` is ``None``.
    """

    paths: None = None  # the LabeledDataset field: no image files

    def __init__(self, split: str = "train", seed: int = 0, image_size: int = 32, images_per_class: int = 10,
                 fine_per_shape: dict[str, int] | None = None,
                 transform: str | Callable[[Image.Image], Any] | None = "to_tensor",
                 noise_std: float = 8.0, clutter: int = 4, coarse_coherence: float = 1.0,
                 test_only_middle: int = 0, class_spread: tuple[float, float] | None = None,
                 held_out_factor: str | None = None, val_classes: str = "other_factor") -> None:
        if split not in SPLITS:
            raise InputError(f"split must be one of {list(SPLITS)}, got {split!r}", key="split")
        image_size = integer_option(image_size, "image_size", 8)
        check_seed(seed, "seed")
        images_per_class = integer_option(images_per_class, "images_per_class", 1)
        noise_std = number_option(noise_std, "noise_std")
        clutter = integer_option(clutter, "clutter", 0)
        coarse_coherence = number_option(coarse_coherence, "coarse_coherence", None)  # its range: coarse_groups
        test_only_middle = integer_option(test_only_middle, "test_only_middle", 0)
        counts = {"train": 20, "val": 6, "test": 10}
        if fine_per_shape is not None:
            if not isinstance(fine_per_shape, dict):
                raise InputError(f"fine_per_shape must be a mapping of split to count ({{train: 20, val: 6, test: "
                                 f"10}}), got {fine_per_shape!r}", key="fine_per_shape")
            unknown = set(fine_per_shape) - set(SPLITS)
            if unknown:
                raise InputError(f"unknown split(s) {sorted(unknown)}; expected {list(SPLITS)}", key="fine_per_shape")
            counts.update({k: integer_option(v, f"fine_per_shape.{k}", 0) for k, v in fine_per_shape.items()})
        if counts[split] < 1 or any(v < 0 for v in counts.values()):
            raise InputError(f"fine_per_shape must be >= 0 (and >= 1 for split {split!r}), got {counts}",
                             key="fine_per_shape")
        if transform is not None and transform != "to_tensor" and not callable(transform):
            raise InputError(f"transform must be 'to_tensor', None or a callable, got {transform!r}", key="transform")
        if not 0 <= int(test_only_middle) < len(SHAPES):
            raise InputError(f"test_only_middle must be in [0, {len(SHAPES) - 1}], got {test_only_middle}",
                             key="test_only_middle")
        if class_spread is not None:
            pair = list(class_spread) if isinstance(class_spread, (list, tuple)) else []
            try:
                lo, hi = (number_option(v, "class_spread", None) for v in pair) if len(pair) == 2 else (0.0, 0.0)
            except InputError:
                lo = hi = 0.0  # the message below says what a spread is
            if not 0 < lo <= hi:
                raise InputError(f"class_spread must be (low, high) with 0 < low <= high, got {class_spread}",
                                 key="class_spread")
        if held_out_factor is not None:
            if held_out_factor not in FACTOR_SPLITS:
                raise InputError(f"held_out_factor must be one of {sorted(FACTOR_SPLITS)} or None, got "
                                 f"{held_out_factor!r}", key="held_out_factor")
            if fine_per_shape is not None or test_only_middle:
                raise InputError("held_out_factor defines the classes itself; do not combine it with "
                                 "fine_per_shape or test_only_middle", key="held_out_factor")
        if val_classes not in VAL_CLASSES:
            raise InputError(f"val_classes must be one of {list(VAL_CLASSES)}, got {val_classes!r}",
                             key="val_classes")
        if val_classes != "other_factor" and held_out_factor is None:
            raise InputError(f"val_classes={val_classes!r} needs held_out_factor (it only applies to the "
                             "held-out-factor split)", key="val_classes")
        self.split = split
        self.seed = int(seed)
        self.coarse_coherence = float(coarse_coherence)
        self.test_only_middle = int(test_only_middle)
        self.class_spread = None if class_spread is None else (lo, hi)
        self.held_out_factor = held_out_factor
        self.image_size = int(image_size)
        self.images_per_class = int(images_per_class)
        self.fine_per_shape = dict(counts)
        self.transform = transform
        self.scale_names: tuple[str, ...] = SCALE_NAMES
        groups = coarse_groups(self.seed, self.coarse_coherence)
        self.coarse_groups = groups
        self.val_classes = val_classes  # how the val classes of a held-out-factor split are formed
        if held_out_factor is None:
            self.classes = [v for v in _variant_table(self.seed, counts, groups, self.test_only_middle)
                            if v["split"] == split]
        else:
            self.classes = _factor_table(split, held_out_factor, groups, self.seed, val_classes)
        if self.class_spread is not None:  # per fine class, from the seed and the fine id (split-independent)
            for v in self.classes:
                crng = np.random.default_rng(np.random.SeedSequence([self.seed, 0x5B4EAD, v["fine"]]))
                v["spread"] = float(math.exp(crng.uniform(math.log(lo), math.log(hi))))
                v["angle"] = float(crng.uniform(0, 2 * math.pi))

        n = len(self.classes) * self.images_per_class

        def too_large(exc: BaseException) -> InputError:
            # the split's images, the renderer's two float32 grids at the supersampled size, and one image's
            # drawing at that size (_RENDER_BYTES per supersampled pixel at most: a striped or two-tone fill)
            big = (self.image_size * _SUPERSAMPLE) ** 2
            need = n * self.image_size ** 2 * 3 + 2 * big * 4 + big * _RENDER_BYTES
            return InputError(f"image_size {self.image_size} is too large: the {split} split's {n} images of "
                              f"{self.image_size}x{self.image_size} need {need / 2 ** 30:.3g} GiB of memory, more "
                              f"than can be allocated here ({type(exc).__name__}); expected a smaller image_size (e.g. "
                              "32 to 256)", key="image_size")

        try:  # the split's images are held in memory, and the renderer's grids at twice the size
            renderer = _Renderer(self.image_size, float(noise_std), int(clutter))
            images = np.empty((n, self.image_size, self.image_size, 3), dtype=np.uint8)
        except (MemoryError, ValueError) as exc:  # ValueError: numpy's "Maximum allowed dimension exceeded"
            raise too_large(exc) from None
        labels = np.empty((n, 3), dtype=np.int64)
        drawn_attrs: list[tuple[str, str, str]] = []
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, SPLITS.index(split), self.image_size]))
        for c, variant in enumerate(self.classes):
            free = [f for f in FACTORS if variant[f] is None]
            for j in range(self.images_per_class):
                i = c * self.images_per_class + j
                drawn = variant
                if free:  # held-out-factor split: the factors that do not define the class vary per image
                    drawn = dict(variant)
                    for f in free:
                        drawn[f] = FACTORS[f][int(rng.integers(len(FACTORS[f])))]
                try:  # the first images touch the array's pages and draw at the supersampled size
                    images[i] = renderer.render(drawn, rng)
                except MemoryError as exc:
                    raise too_large(exc) from None
                drawn_attrs.append((drawn["colour"], drawn["texture"], drawn["size"]))
                labels[i] = (variant["fine"], variant["middle"], variant["coarse"])
        order = rng.permutation(n)  # interleave classes so that a prefix is not class-sorted
        self.images = images[order]
        self.images.setflags(write=False)
        self.labels = torch.from_numpy(labels[order])
        #: per image, the (colour, texture, size) actually drawn (in the held-out-factor split some vary per image)
        self.attributes: list[tuple[str, str, str]] = [drawn_attrs[int(i)] for i in order]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        arr = self.images[index]
        if self.transform == "to_tensor":
            image: Any = torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
        else:
            image = Image.fromarray(arr)
            if callable(self.transform):  # not None and not "to_tensor" (checked in __init__)
                image = self.transform(image)
        return image, self.labels[index].clone()

    def tensors(self) -> torch.Tensor:
        """All images as ``float[N, 3, H, W]`` in ``[0, 1]`` (ignores ``transform``)."""
        return torch.from_numpy(self.images.copy()).permute(0, 3, 1, 2).float().div_(255.0)

    def class_counts(self) -> dict[str, int]:
        """Number of distinct classes per scale in this split, keyed by scale name."""
        return {name: int(self.labels[:, s].unique().numel()) for s, name in enumerate(self.scale_names)}

    def describe(self) -> str:
        """A short human-readable summary: split, sizes, classes per scale, and the fine variants."""
        counts = self.class_counts()
        lines = [f"SyntheticHierarchy(split={self.split!r}, seed={self.seed}, image_size={self.image_size}): "
                 f"{len(self)} images, " + ", ".join(f"{counts[n]} {n}" for n in self.scale_names) + " classes",
                 "  coarse: " + ", ".join(
                     "+".join(sh for (sh, _), g in zip(SHAPES, self.coarse_groups, strict=True) if g == k)
                     for k in range(len(FAMILIES))) + f" (coherence {self.coarse_coherence:g})",
                 f"  middle: {', '.join(s for s, _ in SHAPES)}"]
        for v in self.classes:
            lines.append(f"  fine {v['fine']:3d}: {v['shape']:<9} {v['colour'] or '*':<7} {v['texture'] or '*':<8} "
                         f"{v['size'] or '*'}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"SyntheticHierarchy(split={self.split!r}, seed={self.seed}, image_size={self.image_size}, "
                f"images={len(self)})")
