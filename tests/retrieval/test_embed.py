"""dynametric.retrieval.embed: sources, exact embeddings, sharding, resume after an interruption and after a kill."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from dynametric.errors import InputError
from dynametric.retrieval.embed import (
    embed_items,
    list_image_folder,
    load_embedding_set,
    read_image_csv,
    shard_path,
)
from dynametric.retrieval.model import embed_image_files, load_embedder


def test_folder_listing_is_sorted_relative_and_complete(image_root: Path) -> None:
    items = list_image_folder(image_root / "imgs")
    assert len(items.ids) == 12
    assert items.ids == sorted(items.ids)
    assert items.ids[0] == "animal/img_00.png"
    assert all(p.is_file() and p.is_absolute() for p in items.paths)
    assert items.roots == [(image_root / "imgs").resolve()]
    assert items.labels is None


def test_files_a_folder_listing_leaves_out_are_counted_and_named(image_root: Path, tmp_path: Path, run_ckpt: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Files without an image extension were skipped without a word (the `folder` dataset reader reports them): a
    note counts them and names the first five, hidden ones (.DS_Store, .git/) counted only; an image name that is
    not a file (a broken link) is named too. Never an error while there are images; the images embedded are the
    same."""
    import shutil

    from dynametric.cli import main

    folder = tmp_path / "imgs"
    shutil.copytree(image_root / "imgs", folder)
    before = list_image_folder(folder)
    assert before.notes == []
    (folder / "README").write_text("about these photos")
    for i in range(6):
        (folder / "plant" / f"scan_{i}.heic").write_bytes(b"x")
    (folder / ".DS_Store").write_bytes(b"x")
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref")
    (folder / "gone.png").symlink_to(tmp_path / "nowhere.png")
    items = list_image_folder(folder)
    assert items.ids == before.ids and items.paths == before.paths
    exts = ".bmp .gif .jfif .jpe .jpeg .jpg .png .tif .tiff .webp"
    assert items.notes == [
        f"9 file(s) under {folder} not embedded, their names lacking an image extension ({exts}): README, "
        "plant/scan_0.heic, plant/scan_1.heic, plant/scan_2.heic, plant/scan_3.heic, ... (2 more) and 2 hidden "
        "file(s) (a name or folder starting with '.', e.g. .DS_Store)",
        f"1 entry under {folder} with an image name not embedded, not being a readable file (a broken symbolic "
        "link?): gone.png"]
    assert main(["embed", "--checkpoint", str(run_ckpt), "--images", str(folder), "--out", str(tmp_path / "emb"),
                 "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert [line for line in err.splitlines() if line.startswith("note: ")] == [f"note: {n}" for n in items.notes]
    only_hidden = tmp_path / "hidden"
    only_hidden.mkdir()
    (only_hidden / ".DS_Store").write_bytes(b"x")
    with pytest.raises(InputError) as info:
        list_image_folder(only_hidden)
    assert str(info.value) == (
        f"{only_hidden}: no image files ({exts.replace(' ', ', ')}) under the folder (found 1 other file(s): 1 hidden "
        "file(s) (a name or folder starting with '.', e.g. .DS_Store))")


def test_csv_labels_integer_and_text_columns(image_root: Path) -> None:
    items = read_image_csv(image_root / "labels.csv")
    assert items.scale_names == ["fine", "coarse"]
    assert items.ids[:2] == ["item00", "item01"]
    # fine stays integer, coarse text -> ids by sorted name (animal=0, plant=1, rock=2)
    assert items.labels[:, 0].tolist() == [i % 6 for i in range(12)]
    assert items.labels[:, 1].tolist() == [i % 3 for i in range(12)]
    assert items.class_names == [[], ["animal", "plant", "rock"]]


def test_csv_label_cells_mean_the_same_whatever_the_column_holds(image_root: Path, tmp_path: Path) -> None:
    """A column was all integers (by Python's int(), which also reads '1_000', '٣' and numbers past int64, those
    raising OverflowError) or else all text, so '1' and '01' were one class or two as the rest of the column
    happened to be. Now a cell that is an integer is that integer (as in the `csv` dataset format)."""
    csv_path = tmp_path / "list.csv"
    cells = ["1", "01", "x", "10", "1.0"]
    csv_path.write_text("path,fine\n" + "".join(f"imgs/{c}/img_{i:02d}.png,{v}\n" for i, (c, v) in
                                                enumerate(zip(["animal", "plant", "rock"] * 2, cells))))
    items = read_image_csv(csv_path, image_root=image_root)
    assert items.class_names == [["1", "10", "1.0", "x"]]  # integers by value, then text by name
    assert items.labels[:, 0].tolist() == [0, 0, 3, 1, 2]  # was [1, 0, 4, 3, 2]: '1' and '01' two classes
    assert items.notes == ["column 'fine' of list.csv: cells '1' (line 2) and '01' (line 3) are one class 1 (a cell "
                           "that is an integer is read by its value, as pandas reads an integer column)"]
    csv_path.write_text("path,fine\nimgs/animal/img_00.png,7\nimgs/plant/img_01.png,03\n")  # integers: as before
    items = read_image_csv(csv_path, image_root=image_root)
    assert items.labels[:, 0].tolist() == [7, 3] and items.class_names is None and items.notes == []
    big = "9" * 20
    csv_path.write_text(f"path,fine\nimgs/animal/img_00.png,1_000\nimgs/plant/img_01.png,5\n"
                        f"imgs/rock/img_02.png,{big}\nimgs/animal/img_03.png,\u0663\n")
    items = read_image_csv(csv_path, image_root=image_root)  # text, as the dataset readers read them
    assert items.class_names == [["5", "1_000", big, "\u0663"]]
    assert items.labels[:, 0].tolist() == [1, 0, 2, 3]


@pytest.mark.parametrize(("header", "message"), [
    ("path,,fine", "header column 2 has no name (empty or blank); every label column needs a scale name (it names "
                   "the scale in results), got ['path', '', 'fine']"),
    ("path, ,fine", "header column 2 has no name (empty or blank); every label column needs a scale name (it names "
                    "the scale in results), got ['path', '', 'fine']"),
    ("path,fine,mean", "a scale column cannot be named 'mean' (an evaluation reports the mean over the scales under "
                       "it); got ['path', 'fine', 'mean']"),
])
def test_csv_scale_columns_need_names(image_root: Path, tmp_path: Path, header: str, message: str) -> None:
    """An empty scale name went into embed.json, and `evaluate` of the folder then refused its `scale_names`."""
    csv_path = tmp_path / "list.csv"
    csv_path.write_text(f"{header}\nimgs/animal/img_00.png,1,2\n")
    with pytest.raises(InputError) as err:
        read_image_csv(csv_path, image_root=image_root)
    assert str(err.value) == f"{csv_path}:1: {message}"


@pytest.mark.parametrize(("text", "line", "needle"), [
    ("id,fine\nx,1\n", 1, "no 'path' column"),
    ("path,fine\nimgs/animal/img_00.png,1\nimgs/nope.png,2\n", 3, "image file not found"),
    ("path,fine\nimgs/animal/img_00.png\n", 2, "expected 2 fields"),
    ("path,id\nimgs/animal/img_00.png,a\nimgs/plant/img_01.png,a\n", 3, "duplicate id 'a'"),
    ("path,fine\nimgs/animal/img_00.png,\n", 2, "empty label in column 'fine'"),
])
def test_csv_errors_name_file_and_line(image_root: Path, tmp_path: Path, text: str, line: int, needle: str) -> None:
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text(text, encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_image_csv(csv_path, image_root=image_root)
    assert needle in str(err.value)
    assert f"bad.csv:{line}" in str(err.value) or f"line {line}" in str(err.value)


def test_csv_lists_every_bad_row_in_one_error(image_root: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "bad.csv"
    csv_path.write_text("path,id,fine\n"
                        "imgs/animal/img_00.png,a,1\n"
                        "imgs/plant/img_01.png,a,2\n"  # line 3: duplicate id
                        "imgs/nope.png,b,3\n"  # line 4: no such image
                        "imgs/rock/img_02.png,c,\n"  # line 5: empty label
                        "imgs/animal/img_03.png,d,4\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_image_csv(csv_path, image_root=image_root)
    lines = str(err.value).split("\n")
    assert lines[0] == f"{csv_path}:3: 3 problem(s) in the image list bad.csv: duplicate id 'a' (first on line 2)"
    assert lines[1:] == [f"  {csv_path}:3: duplicate id 'a' (first on line 2)",
                         f"  {csv_path}:4: image file not found: {image_root.resolve() / 'imgs' / 'nope.png'}",
                         f"  {csv_path}:5: empty label in column 'fine'"]
    many = "path,id\n" + "".join(f"imgs/nope{i}.png,{i}\n" for i in range(25))  # 20 spelled out, then a count
    csv_path.write_text(many, encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_image_csv(csv_path, image_root=image_root)
    text = str(err.value)
    assert "25 problem(s)" in text and f"{csv_path}:21: image file not found" in text
    assert f"{csv_path}:22:" not in text and text.endswith("... and 5 more")


def test_csv_lists_each_image_file_once_as_the_dataset_readers_do(image_root: Path, tmp_path: Path) -> None:
    # one file under two spellings (or two ids) is one image listed twice: the readers' DuplicateTracker rule
    csv_path = tmp_path / "dup.csv"
    (tmp_path / "link.png").symlink_to(image_root / "imgs" / "rock" / "img_02.png")
    csv_path.write_text("path,id,fine\n"
                        "imgs/animal/img_00.png,a,1\n"
                        "./imgs/animal/img_00.png,b,1\n"  # line 3: the same file, the same label
                        "imgs/plant/img_01.png,c,2\n"
                        "imgs/../imgs/plant/img_01.png,d,3\n"  # line 5: the same file, another label
                        "imgs/rock/img_02.png,e,01\n"
                        f"{tmp_path / 'link.png'},f,1\n"  # line 7: a link to line 6's file, label 1 == 01
                        "imgs/animal/img_03.png,g,1\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_image_csv(csv_path, image_root=image_root)
    lines = str(err.value).split("\n")
    assert lines[0].startswith(f"{csv_path}:3: 3 problem(s) in the image list dup.csv: ./imgs/animal/img_00.png "
                               "(the same file as 'imgs/animal/img_00.png') listed again with the same labels as "
                               "line 2")
    assert lines[2] == (f"  {csv_path}:5: imgs/../imgs/plant/img_01.png (the same file as 'imgs/plant/img_01.png') "
                        "listed again with labels [3] but line 4 gives [2]")
    assert lines[3].startswith(f"  {csv_path}:7: {tmp_path / 'link.png'} (the same file as 'imgs/rock/img_02.png') "
                               "listed again with the same labels as line 6")
    assert len(lines) == 4
    # different files are not repeats, and one id per row still holds
    csv_path.write_text("path,id,fine\nimgs/animal/img_00.png,a,1\nimgs/animal/img_03.png,b,1\n", encoding="utf-8")
    assert read_image_csv(csv_path, image_root=image_root).ids == ["a", "b"]


def test_csv_quoted_line_breaks_keep_line_numbers(image_root: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "quoted.csv"
    csv_path.write_text('path,id,coarse\n'
                        'imgs/animal/img_00.png,"one\nid",animal\n'  # lines 2-3: one record
                        'imgs/plant/img_01.png,b,plant\n'
                        'imgs/nope.png,c,rock\n'  # line 5
                        'imgs/rock/img_02.png,"d,rock\n', encoding="utf-8")  # line 6: a quote never closed
    with pytest.raises(InputError) as err:
        read_image_csv(csv_path, image_root=image_root)
    assert [ln.strip().split(": ")[0] for ln in str(err.value).split("\n")[1:]] == [f"{csv_path}:5", f"{csv_path}:6"]
    assert "unterminated quoted field" in str(err.value)
    csv_path.write_text('path,id,coarse\nimgs/animal/img_00.png,"one\nid",animal\nimgs/plant/img_01.png,b,plant\n',
                        encoding="utf-8")
    items = read_image_csv(csv_path, image_root=image_root)
    assert items.ids == ["one\nid", "b"] and items.class_names == [["animal", "plant"]]


def test_csv_image_root_is_relative_to_the_csvs_folder(run_ckpt: Path, image_root: Path, tmp_path: Path,
                                                       monkeypatch, capsys) -> None:
    """read_image_csv's image_root as the csv and oml dataset formats take it: relative to the CSV's folder, not to
    the working directory (docs/data.md); a folder only the working directory has is one error naming both. The
    command line's --image-root is a shell path, relative to the working directory."""
    from dynametric.cli import main

    lists, elsewhere = tmp_path / "lists", tmp_path / "elsewhere"
    lists.mkdir()
    elsewhere.mkdir()
    csv_path = lists / "all.csv"
    csv_path.write_text((image_root / "labels.csv").read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.chdir(elsewhere)
    items = read_image_csv(csv_path, image_root=os.path.relpath(image_root, lists))
    assert items.roots == [image_root.resolve()] and len(items.ids) == 12 and items.notes == []
    (elsewhere / "imgs_here").mkdir()
    with pytest.raises(InputError) as err:
        read_image_csv(csv_path, image_root="imgs_here")
    assert str(err.value) == (f"key 'image_root': folder not found: {lists / 'imgs_here'} (a relative image_root "
                              f"is relative to the CSV's folder {lists}, not to the working directory, where "
                              f"{elsewhere / 'imgs_here'} exists); write the folder as an absolute path or as a path "
                              f"relative to {lists}")
    # on the command line a relative --image-root is a shell path: relative to the working directory
    capsys.readouterr()
    code = main(["embed", "--checkpoint", str(run_ckpt), "--csv", str(csv_path), "--image-root", "imgs_here",
                 "--out", str(tmp_path / "emb"), "--no-progress"])
    stderr = capsys.readouterr().err
    assert code == 2 and f"{elsewhere / 'imgs_here'}/" in stderr and "image file not found" in stderr, stderr
    assert not (tmp_path / "emb").exists()
    (elsewhere / "imgs_here").rmdir()
    code = main(["embed", "--checkpoint", str(run_ckpt), "--csv", str(csv_path), "--image-root",
                 os.path.relpath(image_root, elsewhere), "--out", str(tmp_path / "emb"), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    capsys.readouterr()
    code = main(["embed", "--checkpoint", str(run_ckpt), "--csv", str(csv_path), "--image-root", "nowhere",
                 "--out", str(tmp_path / "emb2"), "--no-progress"])
    stderr = capsys.readouterr().err
    assert code == 2 and f"key '--image-root': folder not found: {elsewhere / 'nowhere'} (--image-root is the " \
        "folder the listed image paths are relative to)" in stderr, stderr


def _latin1_name(folder: Path, name: bytes) -> Path:
    """``folder/name`` with ``name`` bytes that are not UTF-8 (a Latin-1 name), created as an empty file; the test
    is skipped where the filesystem refuses such names (macOS APFS, some network shares)."""
    path = Path(os.fsdecode(os.path.join(os.fsencode(folder), name)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    except (OSError, UnicodeError) as exc:
        pytest.skip(f"this filesystem refuses a file name that is not UTF-8 ({exc})")
    return path


def test_file_names_that_are_not_utf8_are_one_line(run_ckpt: Path, image_root: Path, tmp_path: Path,
                                                   capsys) -> None:
    """As the dataset readers report them (problem non_utf8_name): --images listing such a name, a folder so
    named, a --csv row whose file (through a link) is so named: one line naming it, bytes escaped (was a
    UnicodeEncodeError traceback from the job's fingerprint)."""
    from dynametric.cli import main

    png = (image_root / "imgs" / "animal" / "img_00.png").read_bytes()
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    (folder / "ok.png").write_bytes(png)
    _latin1_name(folder, b"caf\xe9.png").write_bytes(png)
    _latin1_name(folder, b"sub/d\xe9j\xe0.png").write_bytes(png)
    hint = "the file name is not UTF-8 text; rename it to UTF-8 (e.g. convmv -f latin1 -t utf8 --notest -r FOLDER)"
    with pytest.raises(InputError) as err:
        list_image_folder(folder)
    assert str(err.value) == f"{folder}/caf\\xe9.png: {hint} (2 such file names under {folder})"
    capsys.readouterr()
    code = main(["embed", "--checkpoint", str(run_ckpt), "--images", str(folder), "--out", str(tmp_path / "emb"),
                 "--no-progress"])
    assert code == 2 and capsys.readouterr().err.strip() == f"dynametric embed: error: {err.value}"
    assert not (tmp_path / "emb").exists()
    odd = _latin1_name(tmp_path, b"r\xe9/x.png").parent  # the folder itself
    (odd / "x.png").write_bytes(png)
    with pytest.raises(InputError) as err:
        list_image_folder(odd)
    assert str(err.value) == (f"{tmp_path}/r\\xe9: the folder's path is not UTF-8 text (image paths are written to "
                              "UTF-8 files); rename it to UTF-8 (e.g. convmv -f latin1 -t utf8 --notest -r FOLDER)")
    (folder / "link.png").symlink_to(Path(os.fsdecode(os.path.join(os.fsencode(folder), b"caf\xe9.png"))))
    (folder / "list.csv").write_text("path\nok.png\nlink.png\n", encoding="utf-8")
    with pytest.raises(InputError) as err:
        read_image_csv(folder / "list.csv")
    assert str(err.value).splitlines()[1:] == [f"  {folder / 'list.csv'}:3: {folder}/caf\\xe9.png: {hint}"]


def test_embeddings_match_the_model_image_by_image(run_ckpt: Path, image_root: Path, tmp_path: Path) -> None:
    loaded = load_embedder(run_ckpt)
    items = read_image_csv(image_root / "labels.csv")
    res = embed_items(items, loaded.embed, loaded.transform, tmp_path / "emb", model_identity=loaded.identity(),
                      batch_size=4, shard_size=5)
    assert res.computed_shards == [0, 1, 2] and res.dim == 16
    emb = np.load(tmp_path / "emb" / "embeddings.npy")
    ref = embed_image_files(loaded, items.paths)  # one forward over all images at once
    np.testing.assert_allclose(emb, ref, atol=1e-5)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)  # model normalises
    s = load_embedding_set(tmp_path / "emb")
    assert s.ids == items.ids and s.scale_names == ["fine", "coarse"]
    np.testing.assert_array_equal(s.labels, items.labels)
    meta = json.loads((tmp_path / "emb" / "embed.json").read_text())
    assert meta["status"] == "complete" and meta["model"]["weights_hash"] == loaded.weights_hash
    assert not (tmp_path / "emb" / "shards").exists()  # removed after assembly by default


class Counting:
    """Embed by flattening + a fixed projection; counts batches; raises on batch ``fail_at`` (1-based)."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls = 0
        self.fail_at = fail_at
        self.proj = torch.randn(3 * 8 * 8, 6, generator=torch.Generator().manual_seed(0))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        return x.flatten(1) @ self.proj


def _transform():
    from torchvision import transforms as T

    return T.Compose([T.Resize((8, 8)), T.ToTensor()])


def test_interrupted_embed_resumes_without_recomputing(image_root: Path, tmp_path: Path) -> None:
    items = list_image_folder(image_root / "imgs")
    out = tmp_path / "emb"
    full = Counting()
    embed_items(items, full, _transform(), tmp_path / "ref", model_identity={"m": 1}, batch_size=4, shard_size=4)
    broken = Counting(fail_at=3)  # shards of one batch each: shards 0, 1 finish, shard 2 dies
    with pytest.raises(KeyboardInterrupt):
        embed_items(items, broken, _transform(), out, model_identity={"m": 1}, batch_size=4, shard_size=4,
                    keep_shards=True)
    assert shard_path(out, 0).is_file() and shard_path(out, 1).is_file() and not shard_path(out, 2).exists()
    assert json.loads((out / "embed.json").read_text())["status"] == "in_progress"
    with pytest.raises(InputError, match="not finished"):
        load_embedding_set(out)
    resumed = Counting()
    res = embed_items(items, resumed, _transform(), out, model_identity={"m": 1}, batch_size=4, shard_size=4)
    assert res.skipped_shards == [0, 1] and res.computed_shards == [2]
    assert resumed.calls == 1  # only the unfinished shard's single batch
    np.testing.assert_allclose(np.load(out / "embeddings.npy"), np.load(tmp_path / "ref" / "embeddings.npy"),
                               atol=1e-6)
    again = Counting()
    res2 = embed_items(items, again, _transform(), out, model_identity={"m": 1}, batch_size=4, shard_size=4)
    assert again.calls == 0 and res2.computed_shards == []


def test_torn_shard_is_recomputed_and_foreign_job_refused(image_root: Path, tmp_path: Path) -> None:
    items = list_image_folder(image_root / "imgs")
    out = tmp_path / "emb"
    with pytest.raises(KeyboardInterrupt):
        embed_items(items, Counting(fail_at=3), _transform(), out, model_identity={"m": 1}, batch_size=4,
                    shard_size=4)
    data = shard_path(out, 1).read_bytes()
    shard_path(out, 1).write_bytes(data[: len(data) // 2])  # torn file (e.g. copied by hand)
    c = Counting()
    res = embed_items(items, c, _transform(), out, model_identity={"m": 1}, batch_size=4, shard_size=4)
    assert res.computed_shards == [1, 2] and c.calls == 2
    with pytest.raises(InputError, match=r"different embedding job \(differs in \['model'\]: model.m 1 -> 2\)"):
        embed_items(items, Counting(), _transform(), out, model_identity={"m": 2}, batch_size=4, shard_size=4)
    res = embed_items(items, Counting(), _transform(), out, model_identity={"m": 2}, batch_size=4, shard_size=4,
                      overwrite=True)
    assert res.computed_shards == [0, 1, 2]
    # the same weights from a moved run folder are the same job
    c = Counting()
    res = embed_items(items, c, _transform(), out, model_identity={"m": 2, "checkpoint": "/moved/best.ckpt"},
                      batch_size=4, shard_size=4)
    assert c.calls == 0 and res.skipped_shards == [0, 1, 2]
    with pytest.raises(InputError, match=r"differs in \['num_shards', 'shard_size'\]"):
        embed_items(items, Counting(), _transform(), out, model_identity={"m": 2}, batch_size=4, shard_size=3)


KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys, numpy as np, torch
    from dynametric.retrieval.embed import embed_items, list_image_folder
    items = list_image_folder(sys.argv[1])
    proj = torch.randn(3 * 8 * 8, 6, generator=torch.Generator().manual_seed(0))
    calls = [0]
    kill_at = int(sys.argv[3])
    def f(x):
        calls[0] += 1
        if calls[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # no cleanup, no finally blocks
        return x.flatten(1) @ proj
    def to_tensor(img):  # plain PIL -> tensor (no torchvision import: faster subprocess start)
        return torch.from_numpy(np.asarray(img.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1) / 255
    res = embed_items(items, f, to_tensor, sys.argv[2], model_identity={"m": 1}, batch_size=2, shard_size=4)
    print("computed", res.computed_shards, "calls", calls[0])
""")


def test_killed_process_resumes(image_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-c", KILL_SCRIPT, str(image_root / "imgs"), str(out)]
    killed = subprocess.run([*cmd, "5"], capture_output=True, text=True, env=env, timeout=120)
    assert killed.returncode == -9, killed.stderr[-2000:]  # batch 5 = first batch of shard 2
    assert sorted(p.name for p in (out / "shards").glob("*.npy")) == ["shard_00000.npy", "shard_00001.npy"]
    done = subprocess.run([*cmd, "0"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "computed [2] calls 2" in done.stdout  # shard 2 only: two batches of 2
    assert np.load(out / "embeddings.npy").shape == (12, 6)


def test_undecodable_image_is_an_error_naming_the_file(image_root: Path, tmp_path: Path) -> None:
    import shutil

    src = tmp_path / "imgs"
    shutil.copytree(image_root / "imgs" / "animal", src)
    (src / "zz_broken.png").write_bytes(b"not a png")
    items = list_image_folder(src)
    with pytest.raises(InputError, match=r"zz_broken.png: cannot decode image"):
        embed_items(items, Counting(), _transform(), tmp_path / "emb", model_identity={"m": 1}, batch_size=2,
                    shard_size=2)
    assert shard_path(tmp_path / "emb", 0).is_file()  # finished shards are kept for a rerun


class _Pending:
    """A batch's embeddings as a GPU would hand them out: usable later; logs when they are copied to the host."""

    def __init__(self, value: torch.Tensor, index: int, log: list[str]) -> None:
        self.value, self.index, self.log = value, index, log

    def __len__(self) -> int:
        return len(self.value)

    def detach(self) -> torch.Tensor:
        self.log.append(f"host {self.index}")
        return self.value


def test_each_batch_reaches_the_host_after_the_next_one_was_handed_over(image_root: Path, tmp_path: Path) -> None:
    """The overlap of ``embed_items``: batch i's result is read only after batch i + 1 was given to the model (on a
    GPU its forward pass runs while the next batch is loaded / decoded); the output is unchanged."""
    items = list_image_folder(image_root / "imgs")
    ref = Counting()
    embed_items(items, ref, _transform(), tmp_path / "ref", model_identity={"m": 1}, batch_size=3, shard_size=7)
    log: list[str] = []
    inner = Counting()

    def lazy(batch: torch.Tensor) -> _Pending:
        log.append(f"embed {inner.calls}")
        return _Pending(inner(batch), inner.calls - 1, log)

    embed_items(items, lazy, _transform(), tmp_path / "lazy", model_identity={"m": 1}, batch_size=3, shard_size=7)
    np.testing.assert_array_equal(np.load(tmp_path / "lazy" / "embeddings.npy"),
                                  np.load(tmp_path / "ref" / "embeddings.npy"))
    n = len(items.ids)
    shards = [(lo, min(n, lo + 7)) for lo in range(0, n, 7)]
    expected: list[str] = []
    b = 0
    for lo, hi in shards:  # within a shard: embed 0, embed 1, host 0, embed 2, host 1, ..., host last
        count = len(range(lo, hi, 3))
        for j in range(count):
            expected.append(f"embed {b + j}")
            if j:
                expected.append(f"host {b + j - 1}")
        expected.append(f"host {b + count - 1}")
        b += count
    assert log == expected and n > 7  # more than one shard, several batches per shard


def test_assembled_embeddings_are_np_save_bytes_and_a_full_disk_names_the_file(tmp_path: Path, monkeypatch) -> None:
    """embeddings.npy (embed's assembly, merge-embeddings) was written through a memory map of a sparse file, which
    a full disk kills with SIGBUS (exit status 135) and a temporary file left behind; it is written block by block
    with Python's file IO: np.save's bytes, and a full disk is an OSError naming the file."""
    import errno
    import io

    from dynametric.retrieval.embed import _write_rows
    from tests.disk import fill_up_after

    rows = np.random.default_rng(0).normal(size=(37, 5)).astype(np.float32)
    out = tmp_path / "embeddings.npy"
    _write_rows(out, [rows[:10], rows[10:11], rows[11:]], 37, 5)
    expected = io.BytesIO()
    np.save(expected, rows)
    assert out.read_bytes() == expected.getvalue()
    with pytest.raises(RuntimeError, match="36 rows were written, the header says 37"):
        _write_rows(tmp_path / "short.npy", [rows[:36]], 37, 5)
    fill_up_after(monkeypatch, 300)
    with pytest.raises(OSError) as info:
        _write_rows(out, [rows[:10], rows[10:]], 37, 5)
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(out))
    monkeypatch.undo()
    assert out.read_bytes() == expected.getvalue() and sorted(p.name for p in tmp_path.iterdir()) == [out.name]
