"""`dynametric embed` under bad input: --overwrite only ever removes the files of its own job."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from dynametric.cli import main
from dynametric.engine.checkpoint import save_checkpoint_file
from tests.retrieval.conftest import make_run


def _embed(ckpt: Path, images: Path, out: Path, *extra: str) -> int:
    return main(["embed", "--checkpoint", str(ckpt), "--images", str(images / "imgs"), "--out", str(out),
                 "--batch-size", "4", "--shard-size", "5", "--no-progress", *extra])


def test_overwrite_refuses_a_folder_that_is_not_an_embed_job(tiny_ckpt, tiny_images, tmp_path, capsys) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "sub").mkdir()
    (out / "sub" / "data.csv").write_text("a,b\n")
    assert _embed(tiny_ckpt, tiny_images, out, "--overwrite") == 2
    err = capsys.readouterr().err
    assert "not an embedding job" in err and str(out) in err and len(err.strip().splitlines()) == 1
    assert (out / "thesis.tex").read_text() == "years of work" and (out / "sub" / "data.csv").is_file()


def test_overwrite_removes_only_the_files_of_its_own_job(tiny_ckpt, tiny_images, tmp_path) -> None:
    out = tmp_path / "emb"
    assert _embed(tiny_ckpt, tiny_images, out, "--keep-shards") == 0
    (out / "notes.txt").write_text("mine")  # the user's file next to the job
    (out / "shards" / "README").write_text("mine too")
    written = {p.name for p in out.iterdir()}
    assert {"embed.json", "items.csv", "embeddings.npy", "shards"} <= written
    assert _embed(tiny_ckpt, tiny_images, out, "--overwrite") == 0
    assert (out / "notes.txt").read_text() == "mine" and (out / "shards" / "README").read_text() == "mine too"
    assert (out / "embed.json").is_file() and (out / "embeddings.npy").is_file()
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["README"]  # finished job: its shards removed


def test_overwrite_of_a_missing_or_empty_folder_just_embeds(tiny_ckpt, tiny_images, tmp_path) -> None:
    assert _embed(tiny_ckpt, tiny_images, tmp_path / "new", "--overwrite") == 0
    (tmp_path / "empty").mkdir()
    assert _embed(tiny_ckpt, tiny_images, tmp_path / "empty", "--overwrite") == 0


def test_max_pixels_stops_the_job_at_a_larger_image_naming_it(tiny_ckpt, tiny_images, tmp_path, capsys) -> None:
    from PIL import Image

    images = tmp_path / "src"
    (images / "imgs").mkdir(parents=True)
    for i in range(6):
        Image.new("RGB", (32, 32), (i * 40, 0, 0)).save(images / "imgs" / f"a{i}.png")
    big = images / "imgs" / "a5.png"
    Image.new("RGB", (64, 40), (9, 9, 9)).save(big)  # 2,560 pixels, last in the list: the first shard finishes
    out = tmp_path / "emb"
    capsys.readouterr()
    assert _embed(tiny_ckpt, images, out, "--max-pixels", "2000") == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and f"{big}: image has 64x40 pixels, more than max_pixels 2000" in err
    assert not (out / "embeddings.npy").exists() and (out / "shards" / "shard_00000.npy").is_file()
    assert _embed(tiny_ckpt, images, out, "--max-pixels", "2560") == 0  # at the bound; resumes the job
    assert "1 shard(s) computed, 1 already done" in capsys.readouterr().out


def _checkpoint_commands(ckpt: Path, cfg: Path, images: Path, tmp: Path) -> dict[str, list[str]]:
    model = ["--checkpoint", str(ckpt), "--config", str(cfg)]
    return {"embed": ["embed", *model, "--images", str(images / "imgs"), "--out", str(tmp / "emb"), "--no-progress"],
            "export": ["export", *model, "--out", str(tmp / "m.pt")],
            "evaluate": ["evaluate", "--checkpoint", str(ckpt), "--config", str(cfg), "--split", "test"]}


@pytest.mark.parametrize("command", ["embed", "export", "evaluate"])
@pytest.mark.parametrize("case", ["random bytes", "no state_dict", "other width"])
def test_bad_checkpoints(tiny_ckpt, tiny_images, tmp_path, capsys, command, case) -> None:
    ckpt = tmp_path / "x.ckpt"
    if case == "random bytes":
        # random bytes that do not happen to start like a pickle (0x80, 1 in 256) or a zip file
        ckpt.write_bytes(b"\x00" + os.urandom(2047))
        expected = f"{ckpt}: not a checkpoint: the file does not start like a torch.save file"
    elif case == "no state_dict":
        save_checkpoint_file({"epoch": 3, "weights": torch.zeros(2)}, ckpt)
        expected = f"{ckpt} key 'state_dict': checkpoint has no 'state_dict'"
    else:
        ckpt = make_run(tmp_path / "wide", dim=32)
        expected = (f"{ckpt}: checkpoint does not match the configured model (2 tensor(s) of another shape; first: "
                    "size mismatch for heads.embedding.proj.weight")
    argv = _checkpoint_commands(ckpt, tiny_ckpt.parent / "config.yaml", tiny_images, tmp_path)[command]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and expected in err.splitlines()[-1]


def test_a_full_disk_is_one_line_and_the_job_resumes(tiny_ckpt, tiny_images, tmp_path, capsys, monkeypatch) -> None:
    out = tmp_path / "emb"
    real, calls = os.fsync, [0]

    def fill_up(fd: int) -> None:
        calls[0] += 1
        if calls[0] > 4:  # embed.json, items.csv, file_stats.npy and the first shard fit; then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(fd)

    monkeypatch.setattr(os, "fsync", fill_up)
    assert _embed(tiny_ckpt, tiny_images, out) == 2
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "No space left on device" in err.splitlines()[-1]
    assert not list(out.rglob("*.tmp"))  # no half-written file left behind
    monkeypatch.setattr(os, "fsync", real)
    assert _embed(tiny_ckpt, tiny_images, out) == 0
    assert "(2 shard(s) computed, 1 already done)" in capsys.readouterr().out


def test_images_folder_with_an_unreadable_subfolder_is_an_error(tiny_ckpt, tiny_images, tmp_path, capsys,
                                                                 monkeypatch) -> None:
    from tests.commands.test_bad_input_data import _deny

    _deny(monkeypatch, tiny_images / "imgs" / "plant")
    assert _embed(tiny_ckpt, tiny_images, tmp_path / "emb") == 2
    err = capsys.readouterr().err.strip()
    assert f"{tiny_images / 'imgs' / 'plant'}: cannot read folder (Permission denied)" in err.splitlines()[-1]
    assert not (tmp_path / "emb").exists()


def test_ctrl_c_is_one_line_and_the_job_resumes(tiny_ckpt, tiny_images, tmp_path, capsys, monkeypatch) -> None:
    """Ctrl-C (KeyboardInterrupt) in the middle of a job: `interrupted` on one line, exit status 130, no traceback;
    the same command afterwards finishes the job from its finished shards."""
    import dynametric.retrieval.embed as embed_mod

    out = tmp_path / "emb"
    real_save = embed_mod.np.save
    calls = {"n": 0}

    def save_then_interrupt(fh, arr, **kwargs):  # the second shard's write is interrupted (file_stats.npy: the first)
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        real_save(fh, arr, **kwargs)

    monkeypatch.setattr(embed_mod.np, "save", save_then_interrupt)
    assert _embed(tiny_ckpt, tiny_images, out) == 130
    err = capsys.readouterr().err
    assert err.strip() == ("dynametric embed: interrupted (run the same command again to resume from the finished "
                           "shards)")
    monkeypatch.setattr(embed_mod.np, "save", real_save)
    assert _embed(tiny_ckpt, tiny_images, out) == 0
    assert "1 already done" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["embed", "export"])
def test_config_keys_read_when_the_model_loads_name_where_they_were_set(tiny_ckpt, tiny_images, tmp_path, capsys,
                                                                        command) -> None:
    """The synthetic data's image_size option (the crop size of the evaluation transform) was a ValueError
    traceback; a model keyword checked when the model is built had no origin (`key 'model.backbone_kwargs.foo'`)."""
    args = ["--images", str(tiny_images / "imgs")] if command == "embed" else []
    base = [command, "--checkpoint", str(tiny_ckpt), *args, "--out", str(tmp_path / "out")]
    assert main([*base, "--set", "data.options.image_size=abc"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dynametric {command}: error: <command line> key 'data.options.image_size': image_size must be an integer "
        ">= 8, got 'abc'")
    assert main([*base, "--set", "model.backbone_kwargs.foo=1"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dynametric {command}: error: <command line> key 'model.backbone_kwargs.foo': backbone 'simple_cnn' has no "
        "option 'foo'; its options: width, depth")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["embed", "export"])
def test_an_unknown_head_names_the_head_flag_before_anything_is_written(tiny_ckpt, tiny_images, tmp_path, capsys,
                                                                       command) -> None:
    """`embed --head nope` was `key 'head': ...`, raised by the first batch after the job's embed.json recorded the
    head (a rerun without it then needed --overwrite)."""
    from dynametric.config import load_config, save_config
    from dynametric.engine.builders import build_model

    two = tmp_path / "two"  # a two-head run: its head names are the choices
    two.mkdir()
    cfg = load_config(None, ["model.embedding_dim=8", "model.num_heads=2",
                             "model.backbone_kwargs={width: 4, depth: 2}"])
    save_config(cfg, two / "config.yaml")
    save_checkpoint_file({"state_dict": {f"embedder.{k}": v for k, v in build_model(cfg).state_dict().items()},
                          "epoch": 0}, two / "best.ckpt")
    heads = list(build_model(cfg).head_names)
    args = ["--images", str(tiny_images / "imgs")] if command == "embed" else []
    out = tmp_path / ("out" if command == "embed" else "out.pt")
    for ckpt, expected in (
            (tiny_ckpt, "the model has a single output, but head 'nope' was requested (expected no head, or "
                        "'concat')"),
            (two / "best.ckpt", f"unknown head 'nope'; expected one of {[*heads, 'concat']} (the model's heads, or "
                                "'concat' for all of them)")):
        assert main([command, "--checkpoint", str(ckpt), *args, "--out", str(out), "--head", "nope"]) == 2
        assert capsys.readouterr().err.strip() == f"dynametric {command}: error: key '--head': {expected}"
        assert not out.exists()
    if command == "embed":  # the model's own head names still embed
        assert _embed(two / "best.ckpt", tiny_images, tmp_path / "out", "--head", heads[1]) == 0


def test_a_head_in_index_json_the_model_lacks_names_index_json(tiny_ckpt, tiny_images, tmp_path, capsys) -> None:
    """search has no --head: the head it embeds queries with is index.json's `model.head`."""
    import json

    pytest.importorskip("faiss")
    assert _embed(tiny_ckpt, tiny_images, tmp_path / "emb") == 0
    assert main(["index", "build", "--embeddings", str(tmp_path / "emb"), "--out", str(tmp_path / "idx")]) == 0
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    meta["model"]["head"] = "nope"
    (tmp_path / "idx" / "index.json").write_text(json.dumps(meta))
    capsys.readouterr()
    image = sorted((tiny_images / "imgs").rglob("*.png"))[0]
    assert main(["search", "--index", str(tmp_path / "idx"), "--image", str(image)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"dynametric search: error: {tmp_path / 'idx' / 'index.json'} key 'model.head': the model has a single "
        "output, but head 'nope' was requested (expected no head, or 'concat')")


@pytest.mark.parametrize("command", ["embed", "export"])
def test_an_image_size_too_large_for_memory_says_so_naming_the_flag(tiny_ckpt, tiny_images, tmp_path, capsys,
                                                                    command) -> None:
    """`--image-size 100000` said `backbone 'simple_cnn' cannot run on a 100000x100000 image ... (RuntimeError:
    [enforce fail at alloc_cpu.cpp:127] err == 0.); the run's model takes its own size`: not that it was too large
    for memory. 10**8 (107 PiB of input) fails to allocate on any machine; 10**20 is beyond torch's sizes."""
    args = ["--images", str(tiny_images / "imgs")] if command == "embed" else []
    out = tmp_path / ("out" if command == "embed" else "out.pt")
    for size, why in (
            (10**8, "out of memory running backbone 'simple_cnn' on one 100000000x100000000 image with 3 channel(s) "
                    "(its float32 input alone is 107 PiB)"),
            (10**20, f"one {10**20}x{10**20} image with 3 channel(s) is more than 2**63 - 1 bytes as float32 "
                     "(torch's limit)")):
        assert main([command, "--checkpoint", str(tiny_ckpt), *args, "--out", str(out), "--image-size",
                     str(size)]) == 2
        assert capsys.readouterr().err.strip() == (
            f"dynametric {command}: error: key '--image-size': image size {size} is too large: {why}; expected a "
            "size whose images fit in memory")
        assert not out.exists()


def test_fixing_a_bad_image_in_an_unfinished_shard_resumes(tiny_ckpt, tmp_path, capsys) -> None:
    """A bad image that stopped the job, repaired: the rerun refused `1 image file(s) changed since they were embedded
    ... use --overwrite`, though its row was never embedded (each file's size and time were recorded at the start)."""
    from PIL import Image

    images = tmp_path / "src"
    (images / "imgs").mkdir(parents=True)
    for i in range(8):
        Image.new("RGB", (32, 32), (i * 30, 0, 0)).save(images / "imgs" / f"a{i}.png")
    bad = images / "imgs" / "a7.png"
    bad.write_bytes(b"not a png at all")  # in the last of 4 shards of 2
    out = tmp_path / "emb"
    capsys.readouterr()
    assert _embed(tiny_ckpt, images, out, "--shard-size", "2") == 2
    assert f"{bad}: cannot decode image" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"shard_0000{s}.npy" for s in range(3)]
    Image.new("RGB", (32, 32), (7, 7, 7)).save(bad)  # repaired: another size and time
    assert _embed(tiny_ckpt, images, out, "--shard-size", "2") == 0
    assert "1 shard(s) computed, 3 already done" in capsys.readouterr().out
    stats = np.load(out / "file_stats.npy")
    assert tuple(stats[7]) == (bad.stat().st_size, bad.stat().st_mtime_ns)  # the file as it was embedded
    # a file of a finished shard changed since: refused as before
    first = images / "imgs" / "a0.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(first)
    os.utime(first, ns=(1, 1))
    capsys.readouterr()
    assert _embed(tiny_ckpt, images, out, "--shard-size", "2") == 2
    assert f"1 image file(s) changed since they were embedded (size or modification time): {first}" in \
        capsys.readouterr().err


def test_an_image_changed_while_the_job_runs_is_not_recorded_with_its_old_stamp(tmp_path) -> None:
    """An image replaced after the job recorded its size and time, before it was decoded, was embedded with its new
    content under the old stamp: restoring the original with `cp -p` then left a stale row silently."""
    import shutil

    from PIL import Image

    from dynametric.errors import InputError
    from dynametric.retrieval.embed import embed_items, list_image_folder

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(8):
        Image.new("RGB", (16, 16), (i * 30, 0, 0)).save(imgs / f"a{i}.png")
    victim = imgs / "a6.png"
    shutil.copy2(victim, tmp_path / "a6.orig")
    items = list_image_folder(imgs)
    replaced: list[bool] = []

    def to_tensor(img):  # noqa: ANN001, ANN202
        if not replaced:  # the job started (the stamp recorded), its first image decoded: a6.png is replaced
            replaced.append(True)
            Image.new("RGB", (16, 16), (0, 255, 0)).save(victim)
            os.utime(victim, ns=(10**18, 10**18))
        return torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)

    def embed(out: Path):  # noqa: ANN202
        return embed_items(list_image_folder(imgs), lambda x: x.flatten(1)[:, :6], to_tensor, out,
                           model_identity={"m": 1}, batch_size=2, shard_size=2)

    out = tmp_path / "emb"
    with pytest.raises(InputError) as err:
        embed_items(items, lambda x: x.flatten(1)[:, :6], to_tensor, out, model_identity={"m": 1}, batch_size=2,
                    shard_size=2)
    assert str(err.value) == (f"{victim}: changed while it was embedded (another size or modification time than "
                              "when the job started); run the same command again")
    assert replaced and not (out / "embeddings.npy").exists()
    res = embed(out)  # the same command again: its shard was not finished, the file recorded as it is now
    assert res.computed_shards == [3] and res.skipped_shards == [0, 1, 2]
    green = np.load(out / "embeddings.npy")[6]
    assert np.allclose(green, [0, 0, 0, 0, 0, 0]) and np.load(out / "file_stats.npy")[6][1] == 10**18
    shutil.copy2(tmp_path / "a6.orig", victim)  # the original back, its time kept (cp -p): the row is stale
    with pytest.raises(InputError, match=r"1 image file\(s\) changed since they were embedded .*a6.png"):
        embed(out)


def test_an_image_that_is_a_fifo_is_one_line_never_waited_on(tmp_path, tiny_images) -> None:
    """An `embed --csv` row naming a FIFO said `image file not found`; an image replaced by a FIFO while the job
    ran blocked in Image.open for ever."""
    import threading

    from torchvision import transforms as T

    from dynametric.errors import InputError
    from dynametric.retrieval.embed import ImageFiles, read_image_csv

    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    (tmp_path / "list.csv").write_text(f"path\n{tiny_images / 'imgs' / 'plant' / 'img_01.png'}\npipe.png\n")
    with pytest.raises(InputError) as err:
        read_image_csv(tmp_path / "list.csv")
    assert f"list.csv:3: {fifo} is not a regular file; expected an image file" in str(err.value)
    found: list[BaseException] = []

    def read() -> None:
        try:
            ImageFiles([fifo], T.ToTensor())[0]
        except BaseException as exc:  # noqa: BLE001 - what the reader raised, for the assertion below
            found.append(exc)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(20)
    if reader.is_alive():  # waiting for a writer: give it one, so that the thread ends
        with open(fifo, "wb"):
            pass
        reader.join(5)
        pytest.fail("the reader waited on the FIFO")
    assert len(found) == 1 and str(found[0]) == f"{fifo}: not a regular file: a FIFO (named pipe); expected a file"
