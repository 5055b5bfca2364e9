"""Outputs never replace a file the tool did not write, nor an input; write errors name the target and the option
(never the temporary file beside it)."""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from dynametric.cli import main

GOOD = "fine,coarse\n" + "".join(f"{i % 4},{i % 2}\n" for i in range(12))


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    emb = tmp_path / "e.npy"
    np.save(emb, np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32))
    lab = tmp_path / "labels.csv"
    lab.write_text(GOOD)
    return emb, lab


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    assert main(list(argv)) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    return err


def test_evaluate_outputs_never_replace_a_file_they_did_not_write(tmp_path, files, capsys) -> None:
    emb, lab = files
    base = ["evaluate", "--embeddings", str(emb), "--labels", str(lab)]
    mine = tmp_path / "mine.json"
    mine.write_text("precious\n")
    err = _error(capsys, *base, "--json", str(mine))
    assert f"{mine} key '--json': exists and is not an earlier evaluate --json result" in err
    assert mine.read_text() == "precious\n"
    other = tmp_path / "other.json"
    other.write_text('{"a": 1}')  # JSON, but not an evaluate result
    assert "exists and is not" in _error(capsys, *base, "--json", str(other))
    csv_mine = tmp_path / "mine.csv"
    csv_mine.write_text("my,own,table\n")
    err = _error(capsys, *base, "--per-query", str(csv_mine))
    assert f"{csv_mine} key '--per-query': exists and is not an earlier evaluate --per-query CSV" in err
    assert csv_mine.read_text() == "my,own,table\n"
    # the command's inputs are never outputs
    before = emb.read_bytes()
    err = _error(capsys, *base, "--json", str(emb))
    assert f"{emb} key '--json': is one of the command's inputs (--embeddings)" in err and emb.read_bytes() == before
    err = _error(capsys, *base, "--per-query", str(lab))
    assert "is one of the command's inputs (--labels)" in err and lab.read_text() == GOOD
    both = tmp_path / "both.json"
    assert "give two different files" in _error(capsys, *base, "--json", str(both), "--per-query", str(both))
    # earlier outputs of the same option are replaced
    res, per = tmp_path / "r.json", tmp_path / "q.csv"
    for _ in range(2):
        assert main([*base, "--json", str(res), "--per-query", str(per)]) == 0
    assert "mean" in json.loads(res.read_text()) and per.read_text().startswith("query,scale,num_relevant")
    assert "exists and is not" in _error(capsys, *base, "--json", str(per))  # the CSV is not a --json result


def test_evaluate_json_in_an_embed_folder_never_replaces_its_files(tmp_path, capsys) -> None:
    folder = tmp_path / "emb"
    folder.mkdir()
    np.save(folder / "embeddings.npy", np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32))
    np.save(folder / "labels.npy", np.arange(12)[:, None] % 3)
    (folder / "items.csv").write_text("index,id,path,fine\n" + "".join(f"{i},{i},p{i},{i % 3}\n" for i in range(12)))
    (folder / "embed.json").write_text(json.dumps({"format": "dynametric-embeddings", "status": "complete",
                                                   "scale_names": ["fine"], "class_names": None}))
    before = (folder / "embeddings.npy").read_bytes()
    err = _error(capsys, "evaluate", "--embeddings", str(folder), "--json", str(folder / "embeddings.npy"))
    assert "is one of the command's inputs (--embeddings (its embeddings.npy))" in err
    assert (folder / "embeddings.npy").read_bytes() == before
    assert main(["evaluate", "--embeddings", str(folder), "--json", str(folder / "result.json")]) == 0


def _refuse_temp_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """A read-only folder (the tests may run as root, for whom chmod does not stop a write)."""
    real = tempfile.mkstemp

    def mkstemp(suffix=None, prefix=None, dir=None, text=False):  # noqa: A002 - tempfile's own parameter name
        if prefix and prefix.startswith("."):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES),
                                  os.path.join(dir, f"{prefix}j2ibi3ew{suffix}"))
        return real(suffix, prefix, dir, text)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_write_errors_name_the_target_and_the_option(tmp_path, files, capsys, monkeypatch) -> None:
    emb, lab = files
    base = ["evaluate", "--embeddings", str(emb), "--labels", str(lab)]
    (tmp_path / "dir").mkdir()
    err = _error(capsys, *base, "--per-query", str(tmp_path / "dir"))
    assert err.endswith(f"{tmp_path / 'dir'} key '--per-query': is a folder; expected the path of a file to write")
    _refuse_temp_files(monkeypatch)
    target = tmp_path / "ro" / "x.json"
    err = _error(capsys, *base, "--json", str(target))
    assert err.endswith(f"{target} key '--json': cannot write (Permission denied)") and ".tmp" not in err
    err = _error(capsys, *base, "--per-query", str(target.with_suffix(".csv")))
    assert err.endswith(f"{target.with_suffix('.csv')} key '--per-query': cannot write (Permission denied)")


def test_export_write_error_names_the_target_and_the_option(tiny_ckpt, tmp_path, capsys, monkeypatch) -> None:
    _refuse_temp_files(monkeypatch)
    out = tmp_path / "ro" / "m.pt"
    err = _error(capsys, "export", "--checkpoint", str(tiny_ckpt), "--out", str(out), "--no-check")
    assert err.endswith(f"{out} key '--out': cannot write (Permission denied)") and ".tmp" not in err


def _read_only_below(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """No folder can be made inside ``folder`` (a read-only file system, as Linux reports it: a missing folder above
    first); root, whom chmod does not stop, included."""
    real = os.mkdir

    def mkdir(path, mode=0o777, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if str(path).startswith(str(folder) + os.sep):
            code = errno.EROFS if os.path.isdir(os.path.dirname(path)) else errno.ENOENT
            raise OSError(code, os.strerror(code), str(path))
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)


def test_a_folder_that_cannot_be_made_is_named(tmp_path, tiny_ckpt, capsys, monkeypatch) -> None:
    """`train --out ro/run` on a read-only file system said `ro/run/config.yaml: Read-only file system`, `export
    --out ro/sub/m.pt` `ro/sub/m.pt key '--out': cannot write (...)`: the folder that could not be made is named."""
    from tests.commands.test_train import TINY

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(TINY)
    ro = tmp_path / "ro"
    ro.mkdir()
    _read_only_below(monkeypatch, ro)
    erofs = os.strerror(errno.EROFS)
    err = _error(capsys, "train", "--config", str(cfg), "--out", str(ro / "run"), "--no-progress")
    assert err == f"dynametric train: error: {ro / 'run'} key '--out': cannot create the folder ({erofs})"
    err = _error(capsys, "export", "--checkpoint", str(tiny_ckpt), "--out", str(ro / "sub" / "m.pt"), "--no-check")
    assert err == f"dynametric export: error: {ro / 'sub'} key '--out': cannot create the folder ({erofs})"
    assert list(ro.iterdir()) == []


def test_stale_temp_files_of_killed_writes_are_removed_only_in_own_folders(tmp_path, tiny_images) -> None:
    """What a SIGKILL leaves (``.NAME.<8 chars>.tmp`` of the tool's own files) goes when the command rewrites its
    own folder; files of other names, or of another pattern, stay."""
    import torch

    from dynametric.retrieval.embed import embed_items, list_image_folder, load_embedding_set
    from dynametric.retrieval.index import RetrievalIndex

    items = list_image_folder(tiny_images / "imgs")

    def f(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :6]

    def to_tensor(img):  # noqa: ANN001, ANN202
        return torch.from_numpy(np.asarray(img.resize((4, 4)), dtype=np.float32)).permute(2, 0, 1)

    emb = tmp_path / "emb"
    embed_items(items, f, to_tensor, emb, model_identity={"m": 1}, batch_size=4, shard_size=4, keep_shards=True)
    stale = [emb / ".embeddings.npy.ab12cd34.tmp", emb / ".items.csv.x_y_z_09.tmp",
             emb / "shards" / ".shard_00001.npy.qwertyui.tmp"]
    kept = [emb / ".mine.txt.ab12cd34.tmp", emb / ".embeddings.npy.MINE.tmp", emb / "shards" / "notes.tmp"]
    for p in stale + kept:
        p.write_text("x")
    embed_items(items, f, to_tensor, emb, model_identity={"m": 1}, batch_size=4, shard_size=4, keep_shards=True)
    assert not any(p.exists() for p in stale) and all(p.read_text() == "x" for p in kept)
    idx_dir = tmp_path / "idx"
    index = RetrievalIndex.build(load_embedding_set(emb), "flat", "cosine")
    index.save(idx_dir)
    stale = [idx_dir / ".index.faiss.abcdefgh.tmp", idx_dir / ".index.json.12345678.tmp"]
    kept = [idx_dir / ".index.faiss.tmp", idx_dir / ".other.bin.abcdefgh.tmp"]
    for p in stale + kept:
        p.write_text("x")
    index.save(idx_dir)
    assert not any(p.exists() for p in stale) and all(p.read_text() == "x" for p in kept)


def _fake_embed(items, out: Path, **kw):  # noqa: ANN001, ANN003, ANN201
    import torch

    from dynametric.retrieval.embed import embed_items

    def f(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, :6] + 1.0

    def to_tensor(img):  # noqa: ANN001, ANN202
        return torch.from_numpy(np.asarray(img.resize((4, 4)), dtype=np.float32)).permute(2, 0, 1)

    return embed_items(items, f, to_tensor, out, **{"model_identity": {"m": 1}, "batch_size": 4, "shard_size": 4,
                                                    **kw})


def test_truncated_embeddings_npy_is_one_line_everywhere(tmp_path, tiny_images, capsys) -> None:
    from dynametric.errors import InputError
    from dynametric.retrieval.embed import list_image_folder, load_embedding_set

    items = list_image_folder(tiny_images / "imgs")
    emb = tmp_path / "emb"
    _fake_embed(items, emb)
    data = (emb / "embeddings.npy").read_bytes()
    (emb / "embeddings.npy").write_bytes(data[:-40])
    needle = (f"{emb / 'embeddings.npy'}: truncated .npy file: its header says float32 [12, 6] ({len(data)} bytes), "
              f"the file has {len(data) - 40} bytes")
    with pytest.raises(InputError) as exc:
        load_embedding_set(emb)  # index build --embeddings, search --embeddings
    assert str(exc.value) == needle
    with pytest.raises(InputError, match="use --overwrite to embed again") as exc:
        _fake_embed(items, emb)  # embed run again on the finished job
    assert str(exc.value).startswith(needle)
    assert _error(capsys, "index", "build", "--embeddings", str(emb), "--out", str(tmp_path / "idx")).endswith(needle)
    assert _error(capsys, "evaluate", "--embeddings", str(emb)).endswith(needle)
    assert not (tmp_path / "idx").exists()


def test_truncated_checkpoint_message_keeps_whole_sentences(tiny_ckpt, tmp_path, capsys) -> None:
    from dynametric.errors import first_sentence

    bad = tmp_path / "last.ckpt"
    bad.write_bytes(tiny_ckpt.read_bytes()[:-200])
    (tmp_path / "config.yaml").write_bytes((tiny_ckpt.parent / "config.yaml").read_bytes())
    err = _error(capsys, "evaluate", "--checkpoint", str(bad))
    assert f"{bad}: truncated or corrupt checkpoint (torch could not read it: " in err
    assert err.endswith(".)") or err.endswith("argument)"), err
    assert first_sentence(RuntimeError("One. Two is long.\nthree")) == "One."
    assert first_sentence("v1.5 is bad: x") == "v1.5 is bad: x"
    assert first_sentence("word " * 100, limit=20) == "word word word word ..."


def test_index_labels_that_do_not_match_index_json(tmp_path, capsys) -> None:
    from dynametric.errors import InputError
    from dynametric.retrieval.embed import EmbeddingSet
    from dynametric.retrieval.index import RetrievalIndex

    rng = np.random.default_rng(0)
    n = 30
    s = EmbeddingSet(rng.normal(size=(n, 8)).astype(np.float32), [f"i{i}" for i in range(n)], [""] * n,
                     np.stack([np.arange(n) % 5, np.arange(n) % 2], axis=1), ["fine", "coarse"], None, [], {},
                     tmp_path / "e")
    idx = tmp_path / "idx"
    RetrievalIndex.build(s, "flat", "cosine").save(idx)
    labels = np.load(idx / "labels.npy")
    np.save(idx / "labels.npy", labels[:, :1])  # fewer columns than scale_names
    with pytest.raises(InputError) as exc:
        RetrievalIndex.load(idx)
    assert str(exc.value) == (f"{idx / 'labels.npy'}: has 1 label column(s), but index.json names 2 scale(s) "
                              "['fine', 'coarse']")
    q = tmp_path / "q.npy"
    np.save(q, rng.normal(size=(2, 8)).astype(np.float32))
    assert "has 1 label column(s)" in _error(capsys, "search", "--index", str(idx), "--embeddings", str(q))
    np.save(idx / "labels.npy", labels[:-1])  # one row short
    with pytest.raises(InputError) as exc:
        RetrievalIndex.load(idx)
    assert str(exc.value) == (f"{idx / 'labels.npy'}: inconsistent index: index.json says {n} items; index.faiss "
                              f"{n}, items.csv {n}, labels.npy {n - 1} (labels.npy does not match)")
    data = (idx / "labels.npy").read_bytes()
    (idx / "labels.npy").write_bytes(data[:-8])  # truncated
    with pytest.raises(InputError, match=r"labels.npy: truncated .npy file: its header says int64 \[29, 2\]"):
        RetrievalIndex.load(idx)


def test_a_folder_where_a_file_is_expected_is_named_as_such(tmp_path, tiny_images, capsys) -> None:
    from dynametric.errors import InputError
    from dynametric.retrieval.embed import EmbeddingSet, read_image_csv
    from dynametric.retrieval.index import RetrievalIndex

    folder = tmp_path / "best.ckpt"
    folder.mkdir()
    for argv in (["evaluate", "--checkpoint", str(folder)], ["export", "--checkpoint", str(folder), "--out",
                                                            str(tmp_path / "m.pt")],
                 ["embed", "--checkpoint", str(folder), "--images", str(tiny_images / "imgs"), "--out",
                  str(tmp_path / "emb")]):
        assert f"{folder}: is a folder; expected a checkpoint file" in _error(capsys, *argv)
    (tiny_images / "dir.png").mkdir(exist_ok=True)
    csv = tmp_path / "list.csv"
    csv.write_text(f"path\n{tiny_images / 'imgs' / 'rock' / 'img_02.png'}\n{tiny_images / 'dir.png'}\n")
    with pytest.raises(InputError, match=r"list.csv:3: .*dir.png is a folder; expected an image file"):
        read_image_csv(csv)
    n = 10
    s = EmbeddingSet(np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32), [str(i) for i in range(n)],
                     [""] * n, None, [], None, [], {}, tmp_path / "e")
    idx = tmp_path / "idx"
    RetrievalIndex.build(s, "flat", "cosine").save(idx)
    (idx / "index.faiss").unlink()
    (idx / "index.faiss").mkdir()
    with pytest.raises(InputError, match=r"index.faiss: is a folder; expected the faiss index file"):
        RetrievalIndex.load(idx)
    emb_dir = tmp_path / "e.npy"
    emb_dir.mkdir()
    err = _error(capsys, "evaluate", "--embeddings", str(emb_dir), "--labels", str(tiny_images / "labels.csv"))
    assert "e.npy: not an embeddings folder" in err  # a folder named like a file is read as an embed folder


def test_unreadable_embed_json_advice_is_the_same_with_and_without_overwrite(tmp_path, tiny_images) -> None:
    from dynametric.errors import InputError
    from dynametric.retrieval.embed import list_image_folder

    items = list_image_folder(tiny_images / "imgs")
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "embed.json").write_text("")  # not provably the tool's: never replaced
    for overwrite in (False, True):
        with pytest.raises(InputError, match="this tool does not replace it .not even with --overwrite.: remove it "
                                             "yourself or use another --out"):
            _fake_embed(items, lone, overwrite=overwrite)
        assert (lone / "embed.json").read_text() == ""
    job = tmp_path / "job"
    with pytest.raises(KeyboardInterrupt):
        def boom(x):  # noqa: ANN001, ANN202
            raise KeyboardInterrupt

        from dynametric.retrieval.embed import embed_items
        embed_items(items, boom, lambda img: np.zeros((3, 2, 2), np.float32), job, model_identity={"m": 1},
                    batch_size=4, shard_size=4)
    (job / "embed.json").write_text('{"format": "dynamet')  # torn beside the job's items.csv
    with pytest.raises(InputError, match="beside this tool's items.csv or shards: use --overwrite"):
        _fake_embed(items, job)
    res = _fake_embed(items, job, overwrite=True)
    assert res.count == 12 and json.loads((job / "embed.json").read_text())["status"] == "complete"


def test_a_replaced_image_file_is_not_served_from_the_old_embeddings(tmp_path, tiny_images) -> None:
    import shutil

    from dynametric.errors import InputError
    from dynametric.retrieval.embed import list_image_folder

    imgs = tmp_path / "imgs"
    shutil.copytree(tiny_images / "imgs", imgs)
    emb = tmp_path / "emb"
    _fake_embed(list_image_folder(imgs), emb)
    assert _fake_embed(list_image_folder(imgs), emb).skipped_shards == [0, 1, 2]  # unchanged: nothing recomputed
    victim = imgs / "rock" / "img_02.png"
    victim.write_bytes((imgs / "plant" / "img_01.png").read_bytes())  # other content under the same path
    with pytest.raises(InputError, match=r"1 image file\(s\) changed since they were embedded \(size or "
                                         r"modification time\): .*img_02.png; .*use --overwrite"):
        _fake_embed(list_image_folder(imgs), emb)
    assert _fake_embed(list_image_folder(imgs), emb, overwrite=True).computed_shards == [0, 1, 2]


def test_all_zero_rows_are_refused_for_cosine(tmp_path, files, capsys) -> None:
    from dynametric.errors import InputError
    from dynametric.retrieval.embed import load_embedding_set
    from dynametric.retrieval.index import RetrievalIndex

    _, lab = files
    zeros = tmp_path / "z.npy"
    arr = np.random.default_rng(0).normal(size=(12, 4)).astype(np.float32)
    arr[5] = 0
    np.save(zeros, arr)
    err = _error(capsys, "evaluate", "--embeddings", str(zeros), "--labels", str(lab))
    assert err.endswith(f"{zeros}: 1 all-zero row(s), first at row 5 (0-based): a zero vector has no direction for "
                        "cosine; fix the embeddings or use a Euclidean distance")
    assert main(["evaluate", "--embeddings", str(zeros), "--labels", str(lab), "--distance", "euclidean"]) == 0
    with pytest.raises(InputError, match=r"z.npy: 1 all-zero row\(s\), first at row 5"):
        RetrievalIndex.build(load_embedding_set(zeros), "flat", "cosine")
    assert RetrievalIndex.build(load_embedding_set(zeros), "flat", "l2").size == 12
    assert "first at row 5" in _error(capsys, "index", "build", "--embeddings", str(zeros), "--out",
                                      str(tmp_path / "idx"))


# ------------------------------------------------------------------------------------------- a disk that fills up


_LIMITED_CHILD = """
import contextlib, io, json, sys
from dynametric.cli import main
done = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(argv)
    done.append([code, err.getvalue().strip()])
print(json.dumps(done))
"""


def _limited(tmp_path: Path, limit: int, *commands: list[str]) -> list[tuple[int, str]]:
    """Run each ``dynametric`` command line of ``commands`` in one child process whose files may not grow past
    ``limit`` bytes (RLIMIT_FSIZE: a write past it fails as on a full disk, ``EFBIG`` for ``ENOSPC``, with the same
    short writes, also of the C/C++ writers of torch, faiss and numpy; Python ignores SIGXFSZ). Returns each one's
    exit status and stderr."""
    import subprocess
    import sys

    resource = pytest.importorskip("resource")

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[2] / "src"),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", _LIMITED_CHILD, json.dumps(commands)], capture_output=True,
                          text=True, env=env, cwd=tmp_path, preexec_fn=limit_file_size, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])  # (a C++ terminate kills the child)
    return [(code, err) for code, err in json.loads(proc.stdout.strip().splitlines()[-1])]


@pytest.fixture(scope="module")
def wide_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run of 256-d embeddings: 12 images give a 12 KiB shard, larger than every file written before it."""
    from tests.retrieval.conftest import make_run

    return make_run(tmp_path_factory.mktemp("wide_run"), dim=256)


def test_a_full_disk_is_one_line_naming_the_file_and_leaves_no_temporary_file(tmp_path, tiny_ckpt, tiny_images,
                                                                              wide_run) -> None:
    """Each writer whose library writes the file in C/C++ meets the full disk at its own write: the checkpoint of
    `train` (torch.save: was a 70-line `RuntimeError: ... unexpected pos` traceback), `export` (torch.jit.save:
    was a C++ terminate, exit status 134, and `.m.pt.XXXXXXXX.tmp` left behind), an `embed` shard (numpy's
    tofile: was `error: 12416 requested and 4096 written`, no file named), `index build`'s index.faiss (faiss: was
    a RuntimeError traceback). Each is now one line `<file>: <reason>` (exit status 2) and no temporary file."""
    from tests.commands.test_train import TINY

    (tmp_path / "tiny.yaml").write_text(TINY)
    emb = tmp_path / "full_emb"  # written without a limit, for index build
    assert main(["embed", "--checkpoint", str(wide_run), "--images", str(tiny_images / "imgs"), "--out", str(emb),
                 "--no-progress"]) == 0
    too_big = os.strerror(errno.EFBIG)
    cases = [  # (command, its folder, the one line expected): at 4 KiB each meets the limit at the file named
        (["train", "--config", "tiny.yaml", "--out", "run", "--no-progress"], "run",
         f"dynametric train: error: {tmp_path / 'run' / 'best.ckpt'}: {too_big}"),
        (["export", "--checkpoint", str(tiny_ckpt), "--out", "x/m.pt", "--no-check"], "x",
         f"dynametric export: error: x/m.pt key '--out': cannot write ({too_big})"),
        (["embed", "--checkpoint", str(wide_run), "--images", str(tiny_images / "imgs"), "--out", "emb",
          "--no-progress"], "emb", f"dynametric embed: error: {Path('emb') / 'shards' / 'shard_00000.npy'}: {too_big}"),
        (["index", "build", "--embeddings", str(emb), "--out", "idx"], "idx",
         f"dynametric index build: error: {Path('idx') / 'index.faiss'}: {too_big}")]
    results = _limited(tmp_path, 4096, *(argv for argv, _, _ in cases))
    for (argv, folder, expected), (code, err) in zip(cases, results):
        assert (code, err.splitlines()[-1:]) == (2, [expected]), (argv, err)
        assert "Traceback" not in err and not list((tmp_path / folder).rglob("*.tmp")), argv


def test_every_output_file_option_creates_its_missing_folders(tmp_path, capsys):
    """One rule for output files (docs/reliability.md, Output paths): the folders a path names that do not exist
    yet are made, by every writer of dynametric.utils.io and so by every command's output option (`evaluate --json`
    and `--per-query`, `data inspect --grid` here); an existing file where a folder goes is a one-line error."""
    import numpy as np
    import torch

    from dynametric.utils.io import (
        atomic_save_npy,
        atomic_torch_save,
        atomic_write_bytes,
        atomic_write_json,
        atomic_write_text,
        atomic_write_with,
    )

    writers = [lambda p: atomic_write_text(p, "x"), lambda p: atomic_write_json(p, {"a": 1}),
               lambda p: atomic_write_bytes(p, b"x"), lambda p: atomic_save_npy(p, np.zeros(2)),
               lambda p: atomic_torch_save(p, {"a": torch.zeros(1)}),
               lambda p: atomic_write_with(p, lambda tmp: open(tmp, "w").write("x"))]
    for k, write in enumerate(writers):
        target = tmp_path / f"w{k}" / "deeper" / "out.bin"
        write(target)
        assert target.is_file()
    ev = tmp_path / "new" / "a"
    assert main(["evaluate", "--example", "--json", str(ev / "r.json"), "--per-query", str(ev / "b" / "q.csv")]) == 0
    assert json.loads((ev / "r.json").read_text())["mean"] and (ev / "b" / "q.csv").read_text().startswith("query,")
    capsys.readouterr()
    (tmp_path / "afile").write_text("mine")
    assert main(["evaluate", "--example", "--json", str(tmp_path / "afile" / "sub" / "r.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"dynametric evaluate: error: {tmp_path / 'afile'} key '--json': is a file, not a folder; expected "
                   f"a folder to hold {tmp_path / 'afile' / 'sub' / 'r.json'}")
    assert (tmp_path / "afile").read_text() == "mine"


def test_a_checkpoint_with_nan_weights_is_named_as_such(tiny_ckpt, tmp_path, capsys) -> None:
    """An earlier version could save NaN weights after a NaN update; evaluate --checkpoint of such a file said
    `key 'query_emb': contains NaN or Inf` (the evaluator's input): now the checkpoint's weights are named."""
    import torch

    state = torch.load(tiny_ckpt, weights_only=True)
    name = next(k for k, v in state["state_dict"].items() if k.startswith("embedder.") and v.is_floating_point()
                and v.dim() > 1)
    state["state_dict"][name].view(-1)[0] = float("nan")
    bad = tmp_path / "best.ckpt"
    torch.save(state, bad)
    (tmp_path / "config.yaml").write_bytes((tiny_ckpt.parent / "config.yaml").read_bytes())
    err = _error(capsys, "evaluate", "--checkpoint", str(bad))
    assert f"{bad}: the checkpoint's weights are non-finite: 1 parameter(s) hold NaN/Inf, first " in err
    assert "query_emb" not in err


def test_a_second_export_to_the_file_being_exported_is_refused_and_the_first_finishes(tiny_ckpt, tmp_path, capsys,
                                                                                    monkeypatch) -> None:
    """Two `export --out m.pt` at once: the second removed the first's temporary file as a killed export's, and the
    first failed naming it."""
    import dynametric.retrieval.export as ex

    out = tmp_path / "m.pt"
    argv = ["export", "--checkpoint", str(tiny_ckpt), "--out", str(out)]
    real = ex.check_export
    second: list[tuple[int, str]] = []

    def check_while_another_starts(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - the first's temp file is there
        if not second:
            second.append((0, ""))
            capsys.readouterr()
            code = main(argv)
            second[0] = (code, capsys.readouterr().err.strip())
        return real(*args, **kwargs)

    monkeypatch.setattr(ex, "check_export", check_while_another_starts)
    assert main(argv) == 0
    assert second == [(2, f"dynametric export: error: {out} key '--out': the file is being written by another "
                          f"export (process {os.getpid()}); wait for it to finish or use another --out")]
    import hashlib

    info = json.loads(out.with_name("m.pt.json").read_text())
    assert info["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt", "m.pt.json"]  # no lock, no temporary file left
