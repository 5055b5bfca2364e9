"""File names with carriage returns, line breaks, quotes and commas survive ``items.csv`` (embed, merge-embeddings,
index build, search), and a damaged ``items.csv`` is one line naming the file and the line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynametric.errors import InputError
from dynametric.retrieval.embed import embed_items, list_image_folder, load_embedding_set, merge_embedding_parts
from dynametric.retrieval.index import RetrievalIndex

NAMES = ["cr\rname.png", "lf\nname.png", "crlf\r\nname.png", 'quote"d.png', "com,ma.png", "plain.png",
         "trailing cr\r.png", "\rlead.png"]


def _images(folder: Path) -> Path:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in NAMES:
        Image.fromarray(rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)).save(folder / name, format="PNG")
    return folder


def _to_tensor(img: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1) / 255


def _embed(x: torch.Tensor) -> torch.Tensor:
    proj = torch.randn(3 * 8 * 8, 5, generator=torch.Generator().manual_seed(0))
    return x.flatten(1) @ proj


def test_names_with_line_breaks_quotes_and_commas_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    items = list_image_folder(_images(tmp_path / "imgs"))
    assert sorted(items.ids) == sorted(NAMES)
    embed_items(items, _embed, _to_tensor, tmp_path / "emb", model_identity={"m": 1}, batch_size=3, shard_size=3)
    emb = load_embedding_set(tmp_path / "emb")
    assert emb.ids == items.ids and emb.paths == [str(p) for p in items.paths]
    idx = RetrievalIndex.build(emb, "flat", "l2")
    idx.save(tmp_path / "idx")
    back = RetrievalIndex.load(tmp_path / "idx")
    assert back.ids == items.ids and back.paths == emb.paths
    res = back.search(np.asarray(emb.embeddings), k=1)
    assert [back.ids[i] for i in res.ids[:, 0]] == items.ids  # every item finds itself, under its own name
    # the parts of `embed --part` and their merge keep the names too
    for k in range(2):
        embed_items(items.select_part(k, 2), _embed, _to_tensor, tmp_path / f"part{k}", model_identity={"m": 1},
                    batch_size=3, shard_size=3)
    merge_embedding_parts([tmp_path / "part1", tmp_path / "part0"], tmp_path / "merged")
    merged = load_embedding_set(tmp_path / "merged")
    assert merged.ids == items.ids and merged.paths == emb.paths
    assert (tmp_path / "merged" / "items.csv").read_bytes() == (tmp_path / "emb" / "items.csv").read_bytes()


def _split_row_csv(path: Path) -> None:
    """``items.csv`` as an older dynametric wrote it for a file name with a bare carriage return (unquoted)."""
    path.write_bytes(b"index,id,path\n0,a.png,/x/a.png\n1,cr\rname.png,/x/cr\rname.png\n2,b.png,/x/b.png\n")


def test_a_damaged_embed_items_csv_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    items = list_image_folder(_images(tmp_path / "imgs"))
    embed_items(items, _embed, _to_tensor, tmp_path / "emb", model_identity={"m": 1}, batch_size=4, shard_size=4)
    _split_row_csv(tmp_path / "emb" / "items.csv")
    with pytest.raises(InputError) as err:
        load_embedding_set(tmp_path / "emb")
    assert err.value.file == str(tmp_path / "emb" / "items.csv") and err.value.line == 3
    assert "expected 3 fields (index,id,path), got 2" in str(err.value)


def test_a_damaged_merge_part_items_csv_is_one_line(tmp_path: Path) -> None:
    items = list_image_folder(_images(tmp_path / "imgs"))
    for k in range(2):
        embed_items(items.select_part(k, 2), _embed, _to_tensor, tmp_path / f"part{k}", model_identity={"m": 1},
                    batch_size=4, shard_size=4)
    _split_row_csv(tmp_path / "part1" / "items.csv")
    with pytest.raises(InputError) as err:
        merge_embedding_parts([tmp_path / "part0", tmp_path / "part1"], tmp_path / "merged")
    assert err.value.file == str(tmp_path / "part1" / "items.csv") and err.value.line == 3
    assert not (tmp_path / "merged").exists()


def test_a_damaged_index_items_csv_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    pytest.importorskip("faiss")
    items = list_image_folder(_images(tmp_path / "imgs"))
    embed_items(items, _embed, _to_tensor, tmp_path / "emb", model_identity={"m": 1}, batch_size=4, shard_size=4)
    RetrievalIndex.build(load_embedding_set(tmp_path / "emb"), "flat", "l2").save(tmp_path / "idx")
    shutil.copy(tmp_path / "idx" / "items.csv", tmp_path / "items.bak")
    text = (tmp_path / "idx" / "items.csv").read_bytes()
    (tmp_path / "idx" / "items.csv").write_bytes(text.replace(b'"', b""))  # the quotes of the old writer's output
    with pytest.raises(InputError) as err:
        RetrievalIndex.load(tmp_path / "idx")
    assert err.value.file == str(tmp_path / "idx" / "items.csv") and err.value.line is not None
