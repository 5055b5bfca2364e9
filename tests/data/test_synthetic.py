"""SyntheticHierarchy: determinism, hierarchy and split structure, item formats, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dynametric.data.synthetic import COLOURS, SHAPES, SIZES, TEXTURES, SyntheticHierarchy
from dynametric.errors import InputError

SMALL = {"train": 3, "val": 1, "test": 2}


def small(split: str = "train", seed: int = 0, **kw) -> SyntheticHierarchy:
    return SyntheticHierarchy(split, seed=seed, images_per_class=kw.pop("images_per_class", 3),
                              fine_per_shape=kw.pop("fine_per_shape", SMALL), **kw)


def test_same_seed_identical_other_seed_different():
    a, b, c = small(seed=5), small(seed=5), small(seed=6)
    assert np.array_equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert a.classes == b.classes
    assert not np.array_equal(a.images, c.images)
    assert [v["colour"] + v["texture"] + v["size"] for v in a.classes] != \
        [v["colour"] + v["texture"] + v["size"] for v in c.classes]


def test_sizes_labels_and_hierarchy():
    ds = small("train", images_per_class=4)
    assert len(ds) == 9 * 3 * 4 and ds.labels.shape == (len(ds), 3) and ds.labels.dtype == torch.long
    assert ds.scale_names == ("fine", "middle", "coarse")
    assert ds.class_counts() == {"fine": 27, "middle": 9, "coarse": 3}
    _, counts = ds.labels[:, 0].unique(return_counts=True)
    assert set(counts.tolist()) == {4}
    for fine in ds.labels[:, 0].unique():  # each fine class has one parent per coarser scale
        rows = ds.labels[ds.labels[:, 0] == fine]
        assert (rows[:, 1:] == rows[0, 1:]).all()
    for middle, (_, family) in enumerate(SHAPES):
        assert set(ds.labels[ds.labels[:, 1] == middle, 2].tolist()) == {family}
    assert not torch.equal(ds.labels[:27, 0].sort().values, ds.labels[:27, 0])  # rows are interleaved
    for v in ds.classes:
        assert v["colour"] in COLOURS and v["texture"] in TEXTURES and v["size"] in SIZES
    per_shape = {}
    for v in ds.classes:
        per_shape.setdefault(v["middle"], set()).add((v["colour"], v["texture"], v["size"]))
    assert all(len(s) == 3 for s in per_shape.values())  # variants of one shape are distinct


def test_splits_disjoint_at_fine_scale_and_share_middle_and_coarse():
    splits = {s: small(s) for s in ("train", "val", "test")}
    fine = {s: set(d.labels[:, 0].tolist()) for s, d in splits.items()}
    assert not fine["train"] & fine["test"] and not fine["train"] & fine["val"] and not fine["val"] & fine["test"]
    variants = {s: {(v["shape"], v["colour"], v["texture"], v["size"]) for v in d.classes} for s, d in splits.items()}
    assert not variants["train"] & variants["test"] and not variants["val"] & variants["test"]
    for d in splits.values():
        assert set(d.labels[:, 1].tolist()) == set(range(9)) and set(d.labels[:, 2].tolist()) == {0, 1, 2}
    # the split's fine classes do not depend on which split was built first, or on the image count
    assert small("test", images_per_class=1).classes == splits["test"].classes


def test_intra_class_variation_and_image_statistics():
    ds = small(images_per_class=5)
    fine0 = ds.labels[:, 0] == ds.labels[0, 0]
    imgs = ds.images[fine0.numpy()].astype(np.float32)
    assert imgs.shape[0] == 5
    diffs = [np.abs(imgs[i] - imgs[j]).mean() for i in range(5) for j in range(i + 1, 5)]
    assert min(diffs) > 5.0  # no two images of a class are near copies
    assert 30 < ds.images.mean() < 200 and ds.images.std() > 20


def test_item_formats():
    ds = small()
    x, y = ds[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    assert torch.equal(y, ds.labels[3])
    assert torch.equal(x, ds.tensors()[3])
    pil = small(transform=None)
    img, _ = pil[3]
    assert isinstance(img, Image.Image) and img.size == (32, 32) and img.mode == "RGB"
    assert np.array_equal(np.asarray(img), ds.images[3])
    flipped = small(transform=lambda im: np.asarray(im)[:, ::-1])
    assert np.array_equal(flipped[3][0], ds.images[3][:, ::-1])
    big = small(image_size=48, images_per_class=1)
    assert big.images.shape[1:] == (48, 48, 3) and big[0][0].shape == (3, 48, 48)
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    xb, yb = next(iter(loader))
    assert xb.shape == (8, 3, 32, 32) and yb.shape == (8, 3)


def test_describe_and_repr():
    ds = small("val")
    text = ds.describe()
    assert "27 images" in text and "split='val'" in text and "9 fine, 9 middle, 3 coarse" in text
    assert text.count("\n  fine ") == 9
    assert "SyntheticHierarchy" in repr(ds)


def test_build_dataset_synthetic():
    from dynametric.data import build_dataset, build_transform

    ds = build_dataset("synthetic", None, "test", images_per_class=1, fine_per_shape={"test": 1})
    assert len(ds) == 9 and ds.split == "test"
    assert isinstance(ds[0][0], Image.Image)  # build_dataset passes transform=None: PIL images
    aug = build_dataset("synthetic", None, "test", transform=build_transform("small", train=True),
                        images_per_class=1, fine_per_shape={"test": 1})
    x, y = aug[0]
    assert x.shape == (3, 32, 32) and torch.equal(y, ds.labels[0])


def test_errors():
    with pytest.raises(InputError, match="split"):
        SyntheticHierarchy("query")
    with pytest.raises(InputError, match="at most 48"):
        SyntheticHierarchy(fine_per_shape={"train": 40, "test": 10})
    with pytest.raises(InputError, match="unknown split"):
        SyntheticHierarchy(fine_per_shape={"gallery": 1})
    with pytest.raises(InputError, match="transform"):
        SyntheticHierarchy(transform="resize")
    with pytest.raises(InputError, match="images_per_class"):
        SyntheticHierarchy(images_per_class=0)
    with pytest.raises(InputError, match="fine_per_shape"):
        SyntheticHierarchy("val", fine_per_shape={"val": 0})


@pytest.mark.parametrize("size, why", [(10**20, "ValueError"), (10**7, "MemoryError")])
def test_an_image_size_beyond_memory_is_one_line_keyed_image_size(size, why):
    # 10**20: beyond numpy's largest dimension; 10**7: petabytes for the renderer's grids and the images
    with pytest.raises(InputError) as info:
        SyntheticHierarchy("val", image_size=size, images_per_class=2)
    assert info.value.key == "image_size"
    # val: 6 fine classes of each of the 9 shapes; the renderer's two float32 grids and one image's drawing (56
    # bytes) per supersampled pixel
    need = 54 * 2 * size ** 2 * 3 + 2 * (2 * size) ** 2 * 4 + (2 * size) ** 2 * 56
    assert info.value.message == (
        f"image_size {size} is too large: the val split's 108 images of {size}x{size} need {need / 2 ** 30:.3g} GiB "
        f"of memory, more than can be allocated here ({why}); expected a smaller image_size (e.g. 32 to 256)")


def test_running_out_of_memory_while_drawing_is_the_same_one_line(monkeypatch):
    """The images' array and the grids allocated, the first drawing (at twice the size, in float64) or the pages of
    the array it touches fail: a MemoryError traceback before; the same keyed line as an allocation that fails."""
    from dynametric.data import synthetic

    def out_of_memory(self, variant, rng):
        raise MemoryError

    monkeypatch.setattr(synthetic._Renderer, "render", out_of_memory)
    with pytest.raises(InputError) as info:
        SyntheticHierarchy("val", image_size=16, images_per_class=2)
    need = 108 * 16 ** 2 * 3 + 2 * 32 ** 2 * 4 + 32 ** 2 * 56
    assert (info.value.key, info.value.message) == ("image_size", (
        f"image_size 16 is too large: the val split's 108 images of 16x16 need {need / 2 ** 30:.3g} GiB of memory, "
        "more than can be allocated here (MemoryError); expected a smaller image_size (e.g. 32 to 256)"))


def test_the_drawing_memory_bound_holds():
    """_RENDER_BYTES bounds one image's drawing: the numpy temporaries of a striped fill at their peak (traced;
    float64 RGB values at the supersampled size and more) plus Pillow's four images of that size (4 bytes a pixel
    each, untraced) fit in it."""
    import tracemalloc

    from dynametric.data import synthetic

    renderer = synthetic._Renderer(128, 8.0, 6)
    variant = {"shape": next(iter(synthetic._POLYGONS)), "colour": next(iter(synthetic.COLOURS)),
               "texture": "striped", "size": list(synthetic.SIZES)[-1]}
    tracemalloc.start()
    try:
        renderer.render(variant, np.random.default_rng(0))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    big = (128 * synthetic._SUPERSAMPLE) ** 2
    assert 24 * big <= peak and peak + 4 * 4 * big <= synthetic._RENDER_BYTES * big


def test_a_train_dry_run_with_a_synthetic_image_size_beyond_memory_is_keyed_data_options(capsys):
    from dynametric.cli import main

    assert main(["train", "--dry-run", "data.format=synthetic", "data.options.image_size=100000000000000000000"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert err.startswith("dynametric train: error: <command line> key 'data.options.image_size': image_size "
                          "100000000000000000000 is too large: the train split's 1800 images of ")
