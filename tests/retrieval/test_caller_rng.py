"""Embedding and loading leave torch's global random state as the caller left it: the image loader of
``embed_items`` has a generator of its own (a DataLoader without one draws its workers' base seed from the global
generator each time it is iterated, with or without workers), and the model a checkpoint or a model folder is loaded
into draws its random initial weights (replaced by the loaded ones) on a forked generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dynametric.retrieval.embed import embed_items, list_image_folder
from dynametric.retrieval.model import load_embedder


def _embed(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1)[:, :6]


def _transform():
    from torchvision import transforms as T

    return T.Compose([T.Resize((8, 8)), T.ToTensor()])


@pytest.mark.parametrize("workers", [0, 2])
def test_embed_items_leaves_the_global_torch_rng_alone(image_root: Path, tmp_path: Path, workers: int) -> None:
    items = list_image_folder(image_root / "imgs")
    torch.manual_seed(0)
    before = torch.get_rng_state()
    res = embed_items(items, _embed, _transform(), tmp_path / "emb", model_identity={"m": 1}, batch_size=4,
                      shard_size=5, num_workers=workers)
    assert torch.equal(torch.get_rng_state(), before)  # two loader passes (shards) drew from it before
    assert res.computed_shards == [0, 1, 2]
    emb = np.load(tmp_path / "emb" / "embeddings.npy")
    first = _embed(_transform()(Image.open(items.paths[0]).convert("RGB"))[None])
    np.testing.assert_array_equal(emb[0], first[0].numpy())  # the same images embedded, in order


def test_load_embedder_leaves_the_global_torch_rng_alone(run_ckpt: Path) -> None:
    from dynametric.engine.checkpoint import load_checkpoint_file

    torch.manual_seed(0)
    before = torch.get_rng_state()
    loaded = load_embedder(run_ckpt)
    assert torch.equal(torch.get_rng_state(), before)
    saved = load_checkpoint_file(run_ckpt)["state_dict"]
    assert all(torch.equal(v, saved[f"embedder.{k}"]) for k, v in loaded.model.state_dict().items())


def test_from_pretrained_leaves_the_global_torch_rng_alone(run_ckpt: Path, tmp_path: Path) -> None:
    from dynametric.models import Embedder

    reference = load_embedder(run_ckpt).model
    reference.save_pretrained(tmp_path / "folder")
    for source in (tmp_path / "folder", run_ckpt.parent):  # a model folder, a run folder
        torch.manual_seed(0)
        before = torch.get_rng_state()
        model = Embedder.from_pretrained(source)
        assert torch.equal(torch.get_rng_state(), before), source
        state = reference.state_dict()
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


_START_METHOD = """
import multiprocessing, sys
from dynametric.retrieval.embed import embed_items, list_image_folder
from torchvision import transforms as T
embed_items(list_image_folder(sys.argv[1]), lambda x: x.flatten(1)[:, :6], T.Compose([T.Resize((8, 8)), T.ToTensor()]),
            sys.argv[2], model_identity={"m": 1}, batch_size=4, num_workers=2)
print(multiprocessing.get_start_method(allow_none=True))
multiprocessing.set_start_method("spawn")  # raised 'context has already been set'
print(multiprocessing.get_start_method())
"""


def test_embed_items_leaves_an_unset_start_method_unset(image_root: Path, tmp_path: Path) -> None:
    """Loader workers fix the default start method for the rest of the process; in a fresh process, where it is
    unset, embed_items leaves it unset."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", _START_METHOD, str(image_root / "imgs"), str(tmp_path / "emb")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["None", "spawn"]


_START_METHOD_FILES = """
import multiprocessing, sys, torch
from dynametric.engine.inference import InferenceOptions, embed_dataset
from dynametric.retrieval.model import embed_image_files, load_embedder
loaded = load_embedder(sys.argv[1], options=InferenceOptions(device="cpu", workers=2, batch_size=2))
files = embed_image_files(loaded, sys.argv[2:])
print(multiprocessing.get_start_method(allow_none=True))
images = [loaded.loader_transform(__import__("PIL.Image").Image.open(p).convert("RGB")) for p in sys.argv[2:]]
emb, lab = embed_dataset(loaded.model, [(x, i) for i, x in enumerate(images)], num_workers=2, batch_size=2,
                         device="cpu")
print(multiprocessing.get_start_method(allow_none=True))
print(int(torch.allclose(emb, torch.from_numpy(files), atol=1e-5)), lab.dtype)
multiprocessing.set_start_method("spawn")  # raised 'context has already been set'
print(multiprocessing.get_start_method())
"""


def test_embed_image_files_and_embed_dataset_leave_an_unset_start_method_unset(run_ckpt: Path,
                                                                                image_root: Path) -> None:
    """The same for the query images of search/explore (embed_image_files) and embed_dataset, with loader workers."""
    import subprocess
    import sys

    paths = [str(p) for p in list_image_folder(image_root / "imgs").paths[:4]]
    out = subprocess.run([sys.executable, "-c", _START_METHOD_FILES, str(run_ckpt), *paths],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["None", "None", "1", "torch.int64", "spawn"]
