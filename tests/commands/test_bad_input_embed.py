"""`dynametric embed` under bad input: --overwrite only ever removes the files of its own job."""

from __future__ import annotations

from pathlib import Path

from dynametric.cli import main


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
