"""Fixtures that WRITE tiny datasets in each official layout into tmp_path (tiny generated PIL images)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# A colour per raw class id so tests can tell which file an item came from.
_PALETTE = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30), (200, 30, 200), (30, 200, 200)]


def write_image(path: Path, colour: tuple[int, int, int] = (200, 30, 30), size: int = 6) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.new("RGB", (size, size), colour).save(path, format=fmt)
    return path


def write_corrupt(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return path


def _colour(i: int) -> tuple[int, int, int]:
    return _PALETTE[i % len(_PALETTE)]


# ------------------------------------------------------------------------------------------------------ DyML
DYML_TRAIN_ROWS = [  # fname, coarse, middle, fine  (coarsest first, ids non-contiguous)
    ("0.jpg", 7, 30, 100),
    ("1.jpg", 7, 30, 101),
    ("2.jpg", 7, 31, 205),
    ("3.jpg", 9, 40, 300),
    ("4.jpg", 9, 40, 300),
]


def write_dyml(root: Path, variant: str = "vehicle", header: str = "glued") -> Path:
    """A tiny DyML release: train/label.csv (+ bmk_<level> for vehicle/animal, mini-bmk for product)."""
    def body(rows: list[tuple], head: str) -> str:
        recs = [", ".join(str(v) for v in r) for r in rows]
        if header == "glued":
            text = head + "\n".join(recs)
        elif header == "own_line":
            text = head + "\n" + "\n".join(recs)
        else:
            text = "\n".join(recs)
        return text + "\n"  # files end with an empty line

    for i, (fname, *_rest) in enumerate(DYML_TRAIN_ROWS):
        write_image(root / "train" / "imgs" / fname, _colour(i))
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "train" / "label.csv").write_text(body(DYML_TRAIN_ROWS, "fname, coarse_id, middle_id, fine_id"))
    if variant == "product":
        rows = [("10.jpg", 3, 50, 900), ("11.jpg", 3, 50, 900), ("12.jpg", 4, 60, 950)]
        for i, r in enumerate(rows):
            write_image(root / "mini-bmk_all_in_one" / "imgs" / r[0], _colour(i))
        (root / "mini-bmk_all_in_one" / "label.csv").write_text(body(rows, "fname, coarse_id, middle_id, fine_id"))
        return root
    bmk = {  # level -> (query rows, gallery rows) of (fname, label)
        "fine": ([("20.jpg", 5), ("21.jpg", 8)], [("22.jpg", 5), ("23.jpg", 8), ("24.jpg", 12)]),
        "middle": ([("30.jpg", 2)], [("31.jpg", 2), ("32.jpg", 3)]),
        "coarse": ([("40.jpg", 1)], [("41.jpg", 1), ("42.jpg", 0)]),
    }
    for level, parts in bmk.items():
        for part, rows in zip(("query", "gallery"), parts):
            for fname, label in rows:
                write_image(root / f"bmk_{level}" / part / fname, _colour(label))
            (root / f"bmk_{level}" / f"{part}.csv").write_text(body(rows, "fname, labels"))
    return root


# ------------------------------------------------------------------------------------------------------ CUB / CARS
CUB_ROWS = [(1, "001.A/a1.jpg", 1), (2, "001.A/a2.jpg", 1), (3, "002.B/b1.jpg", 2), (4, "100.C/c1.jpg", 100),
            (5, "101.D/d1.jpg", 101), (6, "101.D/d2.jpg", 101), (7, "200.E/e1.jpg", 200)]


def write_cub(root: Path) -> Path:
    base = root / "CUB_200_2011"
    base.mkdir(parents=True, exist_ok=True)
    for _iid, rel, cls in CUB_ROWS:
        write_image(base / "images" / rel, _colour(cls))
    (base / "images.txt").write_text("".join(f"{i} {rel}\n" for i, rel, _ in CUB_ROWS))
    (base / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, _, c in CUB_ROWS))
    (base / "classes.txt").write_text("1 001.A\n2 002.B\n100 100.C\n101 101.D\n200 200.E\n")
    return root


CARS_ROWS = [("car_ims/000001.jpg", 1), ("car_ims/000002.jpg", 1), ("car_ims/000003.jpg", 98),
             ("car_ims/000004.jpg", 99), ("car_ims/000005.jpg", 196), ("car_ims/000006.jpg", 196)]


def write_cars(root: Path, rows: list[tuple[str, int]] | None = None) -> Path:
    import scipy.io

    rows = CARS_ROWS if rows is None else rows
    root.mkdir(parents=True, exist_ok=True)
    dtype = [("relative_im_path", "O"), ("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"),
             ("class", "O"), ("test", "O")]
    ann = np.zeros((1, len(rows)), dtype=dtype)
    for i, (rel, cls) in enumerate(rows):
        ann[0, i] = (rel, 1, 1, 5, 5, np.uint8(cls), np.uint8(i % 2))
        write_image(root / rel, _colour(cls))
    names = np.array([f"car {i}" for i in range(1, 197)], dtype=object)
    scipy.io.savemat(str(root / "cars_annos.mat"), {"annotations": ann, "class_names": names[None, :]})
    return root


def write_cars_devkit(root: Path) -> Path:
    """The devkit layout of the common CARS196 mirrors (torchvision/Kaggle): per-part annos, per-part folders."""
    import scipy.io

    top = root / "stanford_cars"
    dtype = [("bbox_x1", "O"), ("bbox_y1", "O"), ("bbox_x2", "O"), ("bbox_y2", "O"), ("class", "O"), ("fname", "O")]
    parts = {"train": [("00001.jpg", 1), ("00002.jpg", 99)], "test": [("00001.jpg", 98), ("00002.jpg", 196)]}
    for part, rows in parts.items():
        ann = np.zeros((1, len(rows)), dtype=dtype)
        for i, (fname, cls) in enumerate(rows):
            ann[0, i] = (1, 1, 5, 5, np.uint8(cls), fname)
            write_image(top / f"cars_{part}" / fname, _colour(cls))
        mat = top / "devkit" / "cars_train_annos.mat" if part == "train" else top / "cars_test_annos_withlabels.mat"
        mat.parent.mkdir(parents=True, exist_ok=True)
        scipy.io.savemat(str(mat), {"annotations": ann})
    names = np.array([f"car {i}" for i in range(1, 197)], dtype=object)
    scipy.io.savemat(str(top / "devkit" / "cars_meta.mat"), {"class_names": names[None, :]})
    return root


# ------------------------------------------------------------------------------------------------------ SOP / In-Shop
SOP_TRAIN = [(1, 1, 1, "bicycle_final/111_0.JPG"), (2, 1, 1, "bicycle_final/111_1.JPG"),
             (3, 2, 1, "bicycle_final/222_0.JPG"), (4, 3, 2, "cabinet_final/333_0.JPG")]
SOP_TEST = [(5, 11, 1, "bicycle_final/444_0.JPG"), (6, 11, 1, "bicycle_final/444_1.JPG"),
            (7, 12, 2, "cabinet_final/555_0.JPG")]


def write_sop(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, rows in (("Ebay_train.txt", SOP_TRAIN), ("Ebay_test.txt", SOP_TEST)):
        for _iid, cls, _sup, rel in rows:
            write_image(root / rel, _colour(cls))
        text = "image_id class_id super_class_id path\n" + "".join(f"{i} {c} {s} {p}\n" for i, c, s, p in rows)
        (root / name).write_text(text)
    return root


INSHOP_ROWS = [("img/WOMEN/Dresses/id_00000002/02_1_front.jpg", "id_00000002", "train"),
               ("img/WOMEN/Dresses/id_00000002/02_2_side.jpg", "id_00000002", "train"),
               ("img/MEN/Denim/id_00000007/01_1_front.jpg", "id_00000007", "train"),
               ("img/WOMEN/Skirts/id_00000010/01_1_front.jpg", "id_00000010", "query"),
               ("img/WOMEN/Skirts/id_00000010/01_2_side.jpg", "id_00000010", "gallery"),
               ("img/MEN/Pants/id_00000012/01_1_front.jpg", "id_00000012", "gallery"),
               ("img/MEN/Pants/id_00000013/01_1_front.jpg", "id_00000013", "gallery")]  # (every query item has
# gallery images, as In-Shop's protocol defines; id_00000012 and id_00000013 are gallery-only items)


def write_inshop(root: Path, declared: int | None = None) -> Path:
    (root / "Eval").mkdir(parents=True, exist_ok=True)
    for i, (rel, _item, _status) in enumerate(INSHOP_ROWS):
        write_image(root / rel, _colour(i))
    n = len(INSHOP_ROWS) if declared is None else declared
    text = f"{n}\nimage_name item_id evaluation_status\n"
    text += "".join(f"{rel}          {item}          {status}\n" for rel, item, status in INSHOP_ROWS)
    (root / "Eval" / "list_eval_partition.txt").write_text(text)
    return root


# ------------------------------------------------------------------------------------------------------ generic
CSV_ROWS = [("imgs/a.png", "train", "brown_bear", "bear", "mammal"),
            ("imgs/b.png", "train", "brown_bear", "bear", "mammal"),
            ("imgs/c.png", "train", "polar_bear", "bear", "mammal"),
            ("imgs/d.png", "train", "robin", "thrush", "bird"),
            ("imgs/e.png", "query", "grizzly", "bear", "mammal"),
            ("imgs/f.png", "gallery", "grizzly", "bear", "mammal"),
            ("imgs/g.png", "gallery", "wren", "wren_family", "bird")]


def write_csv_dataset(root: Path, rows: list[tuple[str, ...]] | None = None) -> Path:
    rows = CSV_ROWS if rows is None else rows
    root.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(rows):
        write_image(root / r[0], _colour(i))
    text = "path,split,fine,middle,coarse\n" + "".join(",".join(r) + "\n" for r in rows)
    (root / "labels.csv").write_text(text)
    return root


FOLDER_FILES = ["train/mammal/bear/brown/1.png", "train/mammal/bear/brown/2.png", "train/mammal/bear/polar/1.png",
                "train/bird/thrush/robin/1.png", "test/mammal/cat/lynx/1.png", "test/bird/wren/wren/1.png"]


def write_folder(root: Path, files: list[str] | None = None) -> Path:
    for i, rel in enumerate(FOLDER_FILES if files is None else files):
        write_image(root / rel, _colour(i))
    return root


@pytest.fixture
def image_writer() -> Callable[..., Path]:
    return write_image


@pytest.fixture
def corrupt_writer() -> Callable[[Path], Path]:
    return write_corrupt


@pytest.fixture
def dyml_vehicle(tmp_path: Path) -> Path:
    return write_dyml(tmp_path / "dyml_vehicle")


@pytest.fixture
def dyml_product(tmp_path: Path) -> Path:
    return write_dyml(tmp_path / "dyml_product", variant="product")


@pytest.fixture
def cub_root(tmp_path: Path) -> Path:
    return write_cub(tmp_path / "cub")


@pytest.fixture
def cars_root(tmp_path: Path) -> Path:
    return write_cars(tmp_path / "cars")


@pytest.fixture
def sop_root(tmp_path: Path) -> Path:
    return write_sop(tmp_path / "sop")


@pytest.fixture
def inshop_root(tmp_path: Path) -> Path:
    return write_inshop(tmp_path / "inshop")


@pytest.fixture
def csv_root(tmp_path: Path) -> Path:
    return write_csv_dataset(tmp_path / "mydata")


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    return write_folder(tmp_path / "tree")
