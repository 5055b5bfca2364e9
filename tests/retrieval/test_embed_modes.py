"""``embed --overwrite`` / ``merge-embeddings --overwrite`` and the permission bits of the files they replace: a
replaced file keeps its mode, a read-only one is refused before any work (docs/reliability.md)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest

from dynametric.cli import main
from dynametric.errors import InputError
from dynametric.retrieval.embed import embed_items, list_image_folder, load_embedding_set


def _embed(ckpt: Path, root: Path, out: Path, *extra: str) -> int:
    return main(["embed", "--checkpoint", str(ckpt), "--csv", str(root / "labels.csv"), "--image-root", str(root),
                 "--out", str(out), "--device", "cpu", "--batch-size", "4", "--no-progress", *extra])


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.is_file()}


def test_embed_overwrite_keeps_the_modes_of_the_files_it_replaces(run_ckpt: Path, image_root: Path,
                                                                  tmp_path: Path) -> None:
    """--overwrite removed the job's files before writing the new ones, so a private (0600) embeddings.npy came back
    0644, readable by everyone."""
    out = tmp_path / "emb"
    assert _embed(run_ckpt, image_root, out, "--shard-size", "5") == 0
    private = {"embeddings.npy": 0o600, "items.csv": 0o600, "labels.npy": 0o640, "embed.json": 0o600,
               "file_stats.npy": 0o640}
    for name, mode in private.items():
        os.chmod(out / name, mode)
    before = np.load(out / "embeddings.npy")
    assert _embed(run_ckpt, image_root, out, "--shard-size", "3", "--overwrite") == 0  # another job: rewritten
    assert {name: mode for name, mode in _modes(out).items() if name in private} == private
    np.testing.assert_allclose(np.load(out / "embeddings.npy"), before, atol=1e-5)  # the same images and model
    emb = load_embedding_set(out)
    assert emb.embeddings.shape[0] == 12 and emb.labels is not None and emb.labels.shape == (12, 2)


@pytest.mark.parametrize("name", ["embeddings.npy", "items.csv", "embed.json"])
def test_embed_overwrite_refuses_a_read_only_file_of_the_job_before_any_work(run_ckpt: Path, image_root: Path,
                                                                              tmp_path: Path, capsys,
                                                                              name: str) -> None:
    """A read-only file (chmod 444) was replaced silently. It is refused with one line keyed --out before the
    images are listed and the model is loaded (a checkpoint that does not exist is not reached), the job as it was."""
    out = tmp_path / "emb"
    assert _embed(run_ckpt, image_root, out) == 0
    os.chmod(out / name, 0o444)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert _embed(tmp_path / "no_such.ckpt", image_root, out, "--overwrite") == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{out / name} key '--out': is read-only (mode 0444); not replaced" in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _modes(out)[name] == 0o444


def _transform(img):  # PIL -> [3, 8, 8]
    import torch

    return torch.from_numpy(np.asarray(img.convert("RGB").resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)


def _flat(batch):
    return batch.flatten(1)[:, :6]


def test_a_read_only_labels_npy_the_new_job_would_remove_is_refused_before_anything_is_removed(
        image_root: Path, tmp_path: Path) -> None:
    """The new job has no labels, so the earlier job's labels.npy would be removed: a read-only one is refused
    first (embed_items, the library call), nothing removed; a writable one is removed."""
    from dynametric.retrieval.embed import read_image_csv

    out = tmp_path / "emb"
    embed_items(read_image_csv(image_root / "labels.csv"), _flat, _transform, out, model_identity={"m": 1},
                batch_size=4, shard_size=4)
    os.chmod(out / "labels.npy", 0o444)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    items = list_image_folder(image_root / "imgs")  # no labels
    with pytest.raises(InputError, match=r"labels\.npy key '--out': is read-only \(mode 0444\)"):
        embed_items(items, _flat, _transform, out, model_identity={"m": 2}, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    os.chmod(out / "labels.npy", 0o600)
    os.chmod(out / "embeddings.npy", 0o600)
    embed_items(items, _flat, _transform, out, model_identity={"m": 2}, overwrite=True)
    assert not (out / "labels.npy").exists() and _modes(out)["embeddings.npy"] == 0o600
    assert load_embedding_set(out).labels is None
