"""An embed folder's files must belong together: every reader (evaluate, index build, search --embeddings,
load_embedding_set) checks items.csv / labels.npy against embed.json's fingerprint and embeddings.npy against its
recorded size and SHA-256; a lost labels.npy is refused, and the same embed command restores what the list gives;
a merge checks every part file before it writes; format versions newer than this code's are refused; a moved
project is said as one; index build reads EMB/embeddings.npy as its folder; check_pixels names the size of an image
beyond Pillow's own limit."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from dynametric.cli import main
from dynametric.errors import InputError
from dynametric.retrieval.embed import check_pixels, load_embedding_set

pytest.importorskip("faiss")


def _embed(ckpt: Path, csv_path: Path, out: Path, *extra: str) -> None:
    assert main(["embed", "--checkpoint", str(ckpt), "--csv", str(csv_path), "--out", str(out), "--device", "cpu",
                 "--batch-size", "4", "--no-progress", *extra]) == 0


def _error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.fixture(scope="module")
def finished(run_ckpt: Path, image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("integrity") / "emb"
    _embed(run_ckpt, image_root / "labels.csv", out, "--shard-size", "5")
    return out


@pytest.fixture()
def emb(finished: Path, tmp_path: Path) -> Path:
    """A copy of the finished folder to damage."""
    return Path(shutil.copytree(finished, tmp_path / "emb"))


def _readers_refuse(capsys: pytest.CaptureFixture[str], folder: Path, tmp_path: Path, expected: str) -> None:
    """evaluate, index build, search --embeddings (of an index of another folder) and load_embedding_set: the
    same one line."""
    assert _error(capsys, ["evaluate", "--embeddings", str(folder)]).endswith(expected)
    assert _error(capsys, ["index", "build", "--embeddings", str(folder), "--out", str(tmp_path / "idx")]).endswith(
        expected)
    assert not (tmp_path / "idx" / "index.json").exists()
    with pytest.raises(InputError) as err:
        load_embedding_set(folder / "embeddings.npy")
    assert str(err.value).endswith(expected)


def test_the_job_records_the_digest_of_its_embeddings(finished: Path) -> None:
    meta = json.loads((finished / "embed.json").read_text())
    data = (finished / "embeddings.npy").read_bytes()
    assert meta["embeddings_size"] == len(data)
    assert meta["embeddings_sha256"] == hashlib.sha256(data).hexdigest()


def test_reversed_labels_are_refused(emb: Path, tmp_path: Path, capsys) -> None:
    np.save(emb / "labels.npy", np.load(emb / "labels.npy")[::-1])
    _readers_refuse(capsys, emb, tmp_path, f"{emb / 'labels.npy'}: its rows differ from the label columns of "
                    "items.csv (first at row 0): not the labels this job embedded; re-run the `dynametric embed` "
                    "command that wrote the folder (it restores what it can) or embed again")


def test_reversed_embeddings_are_refused(emb: Path, tmp_path: Path, capsys) -> None:
    np.save(emb / "embeddings.npy", np.load(emb / "embeddings.npy")[::-1])
    _readers_refuse(capsys, emb, tmp_path, f"{emb / 'embeddings.npy'}: not the file this job wrote (its SHA-256 "
                    "differs from embed.json's embeddings_sha256): a file was replaced or edited; re-run the "
                    "`dynametric embed` command that wrote the folder (it restores what it can) or embed again; "
                    "embeddings changed on purpose (PCA, whitening) go into a new folder with their items and labels: "
                    "dynametric.retrieval.embed.derive_embedding_folder")
    # a file of another size is refused by its size (no read)
    np.save(emb / "embeddings.npy", np.load(emb / "embeddings.npy")[:, :8])
    size = (emb / "embeddings.npy").stat().st_size
    want = json.loads((emb / "embed.json").read_text())["embeddings_size"]
    assert _error(capsys, ["evaluate", "--embeddings", str(emb)]).endswith(
        f"embeddings.npy: has {size} bytes, embed.json's embeddings_size says {want}: not the file this job wrote; "
        "re-run the `dynametric embed` command that wrote the folder (it restores what it can) or embed again; "
        "embeddings changed on purpose (PCA, whitening) go into a new folder with their items and labels: "
        "dynametric.retrieval.embed.derive_embedding_folder")


def test_derived_embeddings_keep_their_items_and_labels_and_refuse_image_queries(
        finished: Path, run_ckpt: Path, image_root: Path, tmp_path: Path, capsys) -> None:
    """Embeddings post-processed after embed (PCA) were refused by the digest check with only 'embed again' as the
    way out; a derived folder keeps the ids and labels, and an index of it refuses queries the model embeds."""
    from dynametric.retrieval.embed import derive_embedding_folder
    from dynametric.retrieval.index import RetrievalIndex

    x = np.load(finished / "embeddings.npy").astype(np.float64)
    x -= x.mean(0)
    pca = (x @ np.linalg.svd(x, full_matrices=False)[2][:4].T).astype(np.float32)
    out = derive_embedding_folder(finished, tmp_path / "pca", pca, "pca 4")
    derived = load_embedding_set(out)
    base = load_embedding_set(finished)
    assert np.array_equal(derived.embeddings, pca) and derived.ids == base.ids and derived.paths == base.paths
    assert np.array_equal(derived.labels, base.labels) and derived.model["derived"] == "pca 4"
    assert json.loads((out / "embed.json").read_text())["derived_from"] == str(finished.resolve())
    assert main(["index", "build", "--embeddings", str(out), "--out", str(tmp_path / "idx")]) == 0
    assert RetrievalIndex.load(tmp_path / "idx").labels is not None
    capsys.readouterr()
    err = _error(capsys, ["search", "--index", str(tmp_path / "idx"), "--image",
                          str(image_root / "imgs/plant/img_01.png"), "--device", "cpu"])
    assert "embeddings as the model makes them against the index's derived by 'pca 4'" in err, err
    # queries derived the same way are searched; the model's own embeddings of them are refused
    assert main(["search", "--index", str(tmp_path / "idx"), "--embeddings", str(out), "-k", "1", "--json"]) == 0
    err = _error(capsys, ["search", "--index", str(tmp_path / "idx"), "--embeddings", str(finished), "-k", "1"])
    assert "against the index's derived by 'pca 4'" in err
    again = derive_embedding_folder(out, tmp_path / "white", pca / np.linalg.norm(pca, axis=0), "whitening")
    assert load_embedding_set(again).model["derived"] == "pca 4; then whitening"
    with pytest.raises(InputError, match=r"expected \[12, D\] embeddings"):
        derive_embedding_folder(finished, tmp_path / "bad", pca[:5], "pca 4")
    with pytest.raises(InputError, match="not a new or empty folder"):
        derive_embedding_folder(finished, out, pca, "pca 4")


def test_swapped_item_rows_are_refused(emb: Path, tmp_path: Path, capsys) -> None:
    lines = (emb / "items.csv").read_text(encoding="utf-8").splitlines(keepends=True)
    first, second = lines[1].split(",", 3), lines[2].split(",", 3)  # index,id,path,labels: swap id and path only
    lines[1] = ",".join([first[0], second[1], second[2], first[3]])
    lines[2] = ",".join([second[0], first[1], first[2], second[3]])
    (emb / "items.csv").write_text("".join(lines), encoding="utf-8")
    fp = json.loads((emb / "embed.json").read_text())["fingerprint"]
    _readers_refuse(capsys, emb, tmp_path, f"{emb / 'items.csv'}: items.csv is not what this job embedded (the "
                    f"fingerprint of its ids, paths and labels differs from embed.json's {fp!r}): a file was replaced "
                    "or edited; re-run the `dynametric embed` command that wrote the folder (it restores what it "
                    "can) or embed again")


def test_a_folder_without_the_digest_still_loads(emb: Path, tmp_path: Path) -> None:
    meta = json.loads((emb / "embed.json").read_text())
    del meta["embeddings_sha256"], meta["embeddings_size"]
    (emb / "embed.json").write_text(json.dumps(meta))
    assert main(["evaluate", "--embeddings", str(emb)]) == 0
    assert load_embedding_set(emb).labels is not None


def test_a_lost_labels_file_is_refused_and_restored(emb: Path, run_ckpt: Path, image_root: Path, tmp_path: Path,
                                                    capsys) -> None:
    labels = np.load(emb / "labels.npy")
    items = (emb / "items.csv").read_bytes()
    (emb / "labels.npy").unlink()
    _readers_refuse(capsys, emb, tmp_path, f"{emb / 'labels.npy'}: labels.npy missing: embed.json names the label "
                    "scale(s) ['fine', 'coarse'], so the job wrote one and the folder lost it; re-run the `dynametric "
                    "embed` command that wrote the folder (it restores what it can) or embed again")
    (emb / "items.csv").unlink()
    _embed(run_ckpt, image_root / "labels.csv", emb, "--shard-size", "5")  # the same job: finished, files restored
    out = capsys.readouterr()
    assert "0 shard(s) computed" in out.out
    assert f"note: items.csv, labels.npy written again from the list (missing or changed in {emb})" in out.err
    assert np.array_equal(np.load(emb / "labels.npy"), labels)
    assert (emb / "items.csv").read_bytes() == items
    assert main(["evaluate", "--embeddings", str(emb)]) == 0


def test_a_damaged_finished_job_is_said_on_rerun(emb: Path, run_ckpt: Path, image_root: Path, capsys) -> None:
    argv = ["embed", "--checkpoint", str(run_ckpt), "--csv", str(image_root / "labels.csv"), "--out", str(emb),
            "--device", "cpu", "--batch-size", "4", "--no-progress", "--shard-size", "5"]
    good = (emb / "embeddings.npy").read_bytes()
    (emb / "embeddings.npy").write_bytes(b"")
    assert _error(capsys, argv).endswith(
        f"{emb / 'embeddings.npy'}: file is empty; this job's output is damaged: use --overwrite to embed again")
    np.save(emb / "embeddings.npy", np.load(io_bytes(good))[::-1])
    assert "SHA-256 differs from embed.json's embeddings_sha256" in _error(capsys, argv)


def io_bytes(data: bytes):  # noqa: ANN201 - a file object for np.load
    import io

    return io.BytesIO(data)


@pytest.fixture()
def parts(run_ckpt: Path, image_root: Path, tmp_path: Path) -> list[Path]:
    out = []
    for k in range(2):
        _embed(run_ckpt, image_root / "labels.csv", tmp_path / f"p{k}", "--part", f"{k}/2", "--shard-size", "3")
        out.append(tmp_path / f"p{k}")
    return out


def test_a_merge_checks_every_part_file_before_writing(parts: list[Path], tmp_path: Path, capsys) -> None:
    out = tmp_path / "m"
    argv = ["merge-embeddings", *map(str, parts), "--out", str(out)]
    stats = (parts[1] / "file_stats.npy").read_bytes()
    (parts[1] / "file_stats.npy").write_bytes(b"")
    assert "file_stats.npy: " in _error(capsys, argv)
    assert not out.exists()  # nothing half-written: the merge can be run again
    (parts[1] / "file_stats.npy").write_bytes(stats)
    emb = (parts[0] / "embeddings.npy").read_bytes()
    (parts[0] / "embeddings.npy").write_bytes(b"")
    assert _error(capsys, argv).endswith(f"{parts[0] / 'embeddings.npy'}: file is empty")
    (parts[0] / "embeddings.npy").unlink()
    assert _error(capsys, argv).endswith(
        f"{parts[0] / 'embeddings.npy'}: embeddings.npy missing, though embed.json says the job is complete (the "
        "folder lost a file); re-run the `dynametric embed` command that wrote the folder (it restores what it can) "
        "or embed again")
    assert not out.exists()
    (parts[0] / "embeddings.npy").write_bytes(emb)
    assert main(argv) == 0
    meta = json.loads((out / "embed.json").read_text())
    assert meta["embeddings_sha256"] == hashlib.sha256((out / "embeddings.npy").read_bytes()).hexdigest()
    assert main(["evaluate", "--embeddings", str(out)]) == 0


NEWER = "written by a newer dynametric ({what} format version 99; this dynametric reads up to version 1): upgrade " \
        "dynametric"


def test_newer_formats_are_refused(emb: Path, run_ckpt: Path, image_root: Path, tmp_path: Path, capsys) -> None:
    meta = json.loads((emb / "embed.json").read_text())
    (emb / "embed.json").write_text(json.dumps({**meta, "version": 99, "new_key": 1}))
    expected = f"{emb / 'embed.json'} key 'version': " + NEWER.format(what="embed job")
    _readers_refuse(capsys, emb, tmp_path, expected)
    assert _error(capsys, ["embed", "--checkpoint", str(run_ckpt), "--csv", str(image_root / "labels.csv"), "--out",
                           str(emb), "--device", "cpu", "--no-progress", "--shard-size", "5"]).endswith(expected)
    for fmt in ({"format": "dynametric-embeddings-v2"}, {}):
        (emb / "embed.json").write_text(json.dumps({**{k: v for k, v in meta.items() if k != "format"}, **fmt}))
        found = fmt.get("format")
        _readers_refuse(capsys, emb, tmp_path, f"{emb / 'embed.json'} key 'format': not a dynametric embed job file "
                        f"(format {found!r}, expected 'dynametric-embeddings')")
    (emb / "embed.json").write_text(json.dumps(meta))
    assert main(["index", "build", "--embeddings", str(emb), "--out", str(tmp_path / "idx")]) == 0
    imeta = json.loads((tmp_path / "idx" / "index.json").read_text())
    (tmp_path / "idx" / "index.json").write_text(json.dumps({**imeta, "version": 99}))
    assert _error(capsys, ["search", "--index", str(tmp_path / "idx"), "--embeddings", str(emb)]).endswith(
        f"{tmp_path / 'idx' / 'index.json'} key 'version': "  # index format 2: the input transform
        + NEWER.format(what="index").replace("up to version 1", "up to version 2"))


def test_a_newer_part_is_not_merged(parts: list[Path], tmp_path: Path, capsys) -> None:
    meta = json.loads((parts[1] / "embed.json").read_text())
    (parts[1] / "embed.json").write_text(json.dumps({**meta, "version": 99}))
    assert _error(capsys, ["merge-embeddings", *map(str, parts), "--out", str(tmp_path / "m")]).endswith(
        NEWER.format(what="embed job"))
    assert not (tmp_path / "m").exists()


def test_index_build_reads_the_folder_of_its_embeddings_npy(finished: Path, tmp_path: Path) -> None:
    assert main(["index", "build", "--embeddings", str(finished / "embeddings.npy"), "--out",
                 str(tmp_path / "idx")]) == 0
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert meta["has_labels"] is True and meta["scale_names"] == ["fine", "coarse"]
    assert meta["model"]["weights_hash"]
    ids = (tmp_path / "idx" / "items.csv").read_text(encoding="utf-8").splitlines()[1].split(",")[1]
    assert ids == "item00"


def test_a_moved_project_is_said(run_ckpt: Path, image_root: Path, tmp_path: Path, capsys) -> None:
    proj = tmp_path / "proj"
    shutil.copytree(image_root, proj / "data", copy_function=shutil.copy2)
    shutil.copytree(run_ckpt.parent, proj / "run")
    _embed(proj / "run" / "best.ckpt", proj / "data" / "labels.csv", proj / "emb", "--shard-size", "5")
    assert main(["index", "build", "--embeddings", str(proj / "emb"), "--out", str(proj / "idx")]) == 0
    moved = tmp_path / "proj2"
    proj.rename(moved)
    err = _error(capsys, ["embed", "--checkpoint", str(moved / "run" / "best.ckpt"), "--csv",
                          str(moved / "data" / "labels.csv"), "--out", str(moved / "emb"), "--device", "cpu",
                          "--no-progress", "--shard-size", "5"])
    assert err.endswith(f"embed.json: the images moved since this job was started (image roots {proj / 'data'} -> "
                        f"{moved / 'data'}): the job records them by absolute path (items.csv, its fingerprint), so "
                        "it cannot resume here; move the images back to resume it, or use --overwrite (or another "
                        "--out) to embed them again from their new place")
    err = _error(capsys, ["search", "--index", str(moved / "idx"), "--image", str(moved / "data/imgs/rock/img_02.png"),
                          "--device", "cpu"])
    assert err.endswith(f"{moved / 'idx' / 'index.json'} key 'model.checkpoint': checkpoint file "
                        f"{proj / 'run' / 'best.ckpt'} not found: the index records it under model.checkpoint, where "
                        "the model was when the index was built (moved since?); give --checkpoint with its path now")
    from dynametric.retrieval.explorer import Explorer
    from dynametric.retrieval.index import RetrievalIndex

    explorer = Explorer(RetrievalIndex.load(moved / "idx"), None, k=2)
    assert explorer.notes == [f"the index's image root(s) {proj / 'data'} (recorded in its index.json) no longer "
                              "exist (moved?): no image under them is shown; build the index again from embeddings "
                              "of the images where they are now"]
    assert explorer.image(0) == (403, "refused: the item's file is not inside the index's image roots, and the "
                                      f"root(s) {proj / 'data'} no longer exist (moved?)")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def test_check_pixels_names_the_size_beyond_pillows_limit(tmp_path: Path) -> None:
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    (tmp_path / "big.png").write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
                                       + _chunk(b"IDAT", zlib.compress(b"\0" * 49)) + _chunk(b"IEND", b""))
    with pytest.raises(InputError) as err:
        check_pixels(tmp_path / "big.png", 1_000_000)
    assert str(err.value) == f"{tmp_path / 'big.png'}: image has 30000x30000 pixels, more than max_pixels 1000000"


def _rename_in_after_hashing(monkeypatch: pytest.MonkeyPatch, folder: Path, other: Path) -> list[bool]:
    """Once embed's code has hashed every byte of ``folder``'s embeddings.npy, ``other``'s embeddings.npy and then its
    embed.json are renamed into ``folder`` (what an `embed --overwrite` / `merge-embeddings --overwrite` finishing
    at that moment does): the hash stands in for the race the QA forced with a sleep. Returns a flag set once
    swapped."""
    import dynametric.retrieval.embed as E

    size = (folder / "embeddings.npy").stat().st_size
    real = hashlib.sha256
    swapped: list[bool] = []

    class Racing:
        def __init__(self, *args: bytes) -> None:
            self.h, self.n = real(*args), 0

        def update(self, data: bytes) -> None:
            self.h.update(data)
            self.n += len(data)

        def hexdigest(self) -> str:
            if self.n == size and not swapped:
                swapped.append(True)
                for name in ("embeddings.npy", "embed.json"):
                    shutil.copy(other / name, folder / f".{name}.race.tmp")
                    (folder / f".{name}.race.tmp").replace(folder / name)
            return self.h.hexdigest()

    monkeypatch.setattr(E, "hashlib", type("H", (), {"sha256": Racing}))
    return swapped


@pytest.mark.parametrize("mmap", [True, False])
def test_a_job_renamed_in_while_it_is_read_is_not_paired_with_the_one_read(emb: Path, tmp_path: Path, mmap: bool,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """load_embedding_set hashed embeddings.npy, then opened it again: another job renamed in between gave its rows
    under the first job's record (index build recorded model A with model B's vectors)."""
    from dynametric.retrieval.embed import derive_embedding_folder

    rows_a = np.load(emb / "embeddings.npy")
    other = derive_embedding_folder(emb, tmp_path / "other", rows_a * 2, "doubled")
    rows_b = np.load(other / "embeddings.npy")
    model_a, model_b = (json.loads((f / "embed.json").read_text())["model"] for f in (emb, other))
    assert model_a != model_b and not np.array_equal(rows_a, rows_b)
    swapped = _rename_in_after_hashing(monkeypatch, emb, other)
    got = load_embedding_set(emb, mmap=mmap)
    assert swapped
    # the rows are those of the job whose record came with them: the job renamed in, read again
    assert got.model == model_b, got.model
    assert np.array_equal(got.embeddings, rows_b)


def test_a_part_renamed_in_while_the_merge_reads_it_is_refused(parts: list[Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """merge-embeddings hashed a part's embeddings.npy, then opened it again: another job renamed in between was
    merged under the part's record. The parts are read again (a part rewritten meanwhile is no damage), and the job
    renamed in is then refused for what it is: another model's rows."""
    from dynametric.retrieval.embed import derive_embedding_folder, merge_embedding_parts

    rows = np.load(parts[0] / "embeddings.npy")
    other = derive_embedding_folder(parts[0], tmp_path / "other", rows * 2, "doubled")
    swapped = _rename_in_after_hashing(monkeypatch, parts[0], other)
    with pytest.raises(InputError) as err:
        merge_embedding_parts(parts, tmp_path / "m")
    assert swapped
    assert str(err.value) == (f"{parts[1]}/embed.json key 'model': differs from {parts[0]} in 'model': "
                              "model.derived None here, doubled there: the parts must come from one list embedded by "
                              "one model")
    assert not (tmp_path / "m").exists()
