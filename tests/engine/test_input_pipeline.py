"""The training input pipeline settings: data.workers auto, pin_memory, persistent workers, prefetch factor,
model.channels_last, trainer.compile, the one-step random-resized-crop and the loss history kept on the device."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torch import nn
from torchvision import transforms as T

from dynametric.config import load_config
from dynametric.engine.builders import build_model, is_convolutional, loader_settings, use_channels_last
from dynametric.engine.data import MetricDataModule
from dynametric.engine.module import MetricLearningModule
from dynametric.errors import ConfigError
from dynametric.utils import device as D

TINY = ["model.backbone_kwargs={width: 4, depth: 2}", "model.embedding_dim=8"]


@pytest.mark.parametrize("override, message", [
    ("data.workers=many", "key 'data.workers': expected an integer from 0 to 128 or 'auto', got 'many'"),
    ("data.workers=-1", "key 'data.workers': expected an integer from 0 to 128 or 'auto', got -1"),
    ("data.prefetch_factor=0", "key 'data.prefetch_factor': expected a positive integer, got 0"),
    ("data.pin_memory=sometimes", "key 'data.pin_memory'"),
    ("model.channels_last=maybe", "key 'model.channels_last'"),
    ("trainer.compile=2", "key 'trainer.compile'"),
])
def test_bad_pipeline_keys(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(None, [override])


def test_loader_settings_cpu_and_gpu_host(monkeypatch) -> None:
    cfg = load_config(None, [])
    assert cfg.data.workers == "auto" and cfg.data.pin_memory is None and cfg.model.channels_last is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert loader_settings(cfg) == {"num_workers": 0, "pin_memory": False, "persistent_workers": True,
                                    "prefetch_factor": 4}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(D.os, "sched_getaffinity", lambda _: set(range(16)), raising=False)
    assert loader_settings(cfg)["num_workers"] == 15 and loader_settings(cfg)["pin_memory"] is True
    assert loader_settings(load_config(None, ["trainer.devices=4"]))["num_workers"] == 3  # 4 processes share 16
    cpu = load_config(None, ["trainer.accelerator=cpu", "data.workers=3", "data.pin_memory=true"])
    # a CPU run pins nothing: pin_memory=True there only made torch warn "no accelerator is found"
    assert loader_settings(cpu) == {"num_workers": 3, "pin_memory": False, "persistent_workers": True,
                                    "prefetch_factor": 4}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    pinned = load_config(None, ["data.workers=0", "data.pin_memory=true"])  # auto accelerator on a CPU-only host
    assert loader_settings(pinned)["pin_memory"] is False


def test_datamodule_keeps_workers_and_prefetches() -> None:
    from dynametric.data.synthetic import SyntheticHierarchy

    ds = SyntheticHierarchy("test", images_per_class=1)
    dm = MetricDataModule(ds, ds, batch_sampler_factory=lambda labels, r, w: [[0, 1], [2, 3]], num_workers=1,
                          persistent_workers=True, prefetch_factor=3)
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert train.persistent_workers and train.prefetch_factor == 3 and val.persistent_workers
    dm0 = MetricDataModule(ds, ds, batch_sampler_factory=lambda labels, r, w: [[0, 1]], num_workers=0,
                           persistent_workers=True, prefetch_factor=3)
    assert not dm0.train_dataloader().persistent_workers  # no workers: the options do not apply


def test_channels_last_rule_and_batches(monkeypatch) -> None:
    cfg = load_config(None, TINY)
    cnn = build_model(cfg)
    assert is_convolutional(cnn) and not is_convolutional(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(4, 4096)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not use_channels_last(cfg, cnn)  # the CPU default: unchanged memory format
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert use_channels_last(cfg, cnn)
    assert not use_channels_last(load_config(None, [*TINY, "trainer.accelerator=cpu"]), cnn)
    assert not use_channels_last(load_config(None, [*TINY, "model.channels_last=false"]), cnn)
    module = MetricLearningModule(cnn, [])
    module.channels_last = True
    images = torch.randn(2, 3, 8, 8)
    out = module.batch_images([images, torch.zeros(2, 3)])
    assert out.is_contiguous(memory_format=torch.channels_last) and torch.equal(out, images)
    module.channels_last = False
    assert module.batch_images([images]) is images


def test_compile_keeps_checkpoint_keys() -> None:
    from dynametric.pipeline import build_components

    cfg = load_config(None, [*TINY, "trainer.compile=true"])
    plain = build_components(load_config(None, TINY), datasets=None).embedder.state_dict()
    compiled = build_components(cfg, datasets=None).embedder
    assert list(compiled.state_dict()) == list(plain)


def test_loss_history_is_read_lazily() -> None:
    module = MetricLearningModule(nn.Linear(2, 2), [])
    module.loss_history.append([0.0, 1.5])
    module._pending_losses.append((10, torch.tensor(0.25)))
    module._pending_losses.append((20, torch.tensor(0.125)))
    assert module.loss_history == [[0.0, 1.5], [10.0, 0.25], [20.0, 0.125]]
    assert module._pending_losses == [] and module.loss_history == [[0.0, 1.5], [10.0, 0.25], [20.0, 0.125]]
    module.loss_history = [[1.0, 2.0]]
    assert module.loss_history == [[1.0, 2.0]]


def test_one_step_crop_draws_like_torchvision() -> None:
    from dynametric.data.transforms import build_transform, one_step_random_resized_crop

    rng = np.random.default_rng(0)
    img = Image.fromarray((rng.random((75, 100, 3)) * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(2))
    ours, theirs = one_step_random_resized_crop(32, scale=(0.16, 1.0)), T.RandomResizedCrop(32, scale=(0.16, 1.0))
    for seed in range(20):
        torch.manual_seed(seed)
        a = np.asarray(ours(img)).astype(int)
        after_a = torch.rand(1)
        torch.manual_seed(seed)
        b = np.asarray(theirs(img)).astype(int)
        assert torch.equal(after_a, torch.rand(1))  # the same number of draws
        assert a.shape == b.shape == (32, 32, 3)
        assert np.abs(a - b)[2:-2, 2:-2].max() <= 1  # the same box; only the border may read past the crop
        assert np.abs(a - b).max() <= 8
    tensor = torch.rand(3, 40, 50)
    torch.manual_seed(0)
    x = ours(tensor)
    torch.manual_seed(0)
    assert torch.equal(x, theirs(tensor))  # tensors: torchvision's own path
    steps = [type(t).__name__ for t in build_transform("standard", train=True).transforms]
    assert steps[0] == "RandomResizedCrop" and isinstance(build_transform("dyml", train=True).transforms[0],
                                                          T.RandomResizedCrop)


def _csv_data_with_a_text_file(root, bad_split: str = "test") -> str:
    """A ``csv`` dataset (train and test splits, images of their own) whose image ``imgs/<bad_split>_c1_0.jpg`` is a
    text file; returns that file's path."""
    rng = np.random.default_rng(0)
    (root / "imgs").mkdir(parents=True)
    rows = ["path,split,fine,coarse"]
    for split in ("train", "test"):
        for c in range(4):
            for i in range(4):
                name = f"imgs/{split}_c{c}_{i}.jpg"
                Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(root / name)
                rows.append(f"{name},{split},{c},{c // 2}")
    (root / "imgs" / f"{bad_split}_c1_0.jpg").write_text("not an image\n")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return str(root / "imgs" / f"{bad_split}_c1_0.jpg")


def test_a_loader_workers_error_is_the_line_it_is_without_workers(tmp_path) -> None:
    """torch re-raises a worker's InputError as 'Caught InputError in DataLoader worker process 0. Original
    Traceback ...' (30-46 lines in train/evaluate); unwrap_worker_error gives back the one line of 0 workers."""
    from torch.utils.data import DataLoader

    from dynametric.data import build_dataset
    from dynametric.data.base import unwrap_worker_error
    from dynametric.errors import InputError

    bad = _csv_data_with_a_text_file(tmp_path)
    ds = build_dataset("csv", str(tmp_path), "test", transform=T.ToTensor())
    errors = []
    for workers in (0, 1):
        with pytest.raises(InputError) as err:
            list(DataLoader(ds, batch_size=4, num_workers=workers))
        errors.append(err.value)
    assert str(errors[0]) == (f"{bad}: cannot read image (UnidentifiedImageError: cannot identify image file "
                              f"'{bad}')")
    assert str(errors[1]).startswith("Caught InputError in DataLoader worker process 0.")  # torch's wrapping
    clean = unwrap_worker_error(errors[1])
    assert type(clean) is InputError and str(clean) == str(errors[0])
    assert unwrap_worker_error(errors[0]) is errors[0]  # not a worker's: unchanged


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_train_and_evaluate_print_a_workers_bad_image_in_one_line(tmp_path, capsys, command) -> None:
    from dynametric.cli import main
    from tests.retrieval.conftest import make_run

    bad = _csv_data_with_a_text_file(tmp_path / "data", "train" if command == "train" else "test")
    data = ["data.format=csv", f"data.root={tmp_path / 'data'}", "data.image_size=16", "data.transform=small"]
    if command == "train":
        argv = ["train", "--out", str(tmp_path / "run"), *TINY, *data, "data.workers=1", "data.batch_size=6",
                "data.m=2", "trainer.max_epochs=1", "trainer.progress_bar=false"]
    else:
        ckpt = make_run(tmp_path / "run", dim=8)
        argv = ["evaluate", "--checkpoint", str(ckpt), "--workers", "1", *(a for d in data for a in ("--set", d))]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.strip().splitlines()
           if not line.startswith(("warning: ", "note: "))]  # train's warnings and notes are on stderr too
    assert err == [f"dynametric {command}: error: {bad}: cannot read image (UnidentifiedImageError: cannot identify "
                   f"image file '{bad}')"]


def _photo(w: int, h: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([127 + 120 * np.sin(xx / (w / 7 + 1)), 127 + 120 * np.cos(yy / (h / 5 + 1)), (xx + yy) % 256], -1)
    return Image.fromarray(np.clip(arr + rng.normal(0, 25, arr.shape), 0, 255).astype(np.uint8))


def test_eval_resize_of_normal_images_is_unchanged_and_thin_ones_are_bounded() -> None:
    from dynametric.data.transforms import build_transform

    new = build_transform("standard", train=False)
    old = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(new.spec.mean, new.spec.std)])
    # aspect ratios up to 8:1 (the bound itself included): bit-identical to torchvision's Resize + CenterCrop
    for k, (w, h) in enumerate([(300, 200), (200, 300), (640, 480), (257, 256), (999, 125), (80, 640), (50, 37),
                                (800, 100), (100, 800)]):
        img = _photo(w, h, k)
        assert torch.equal(new(img), old(img)), (w, h)
    # a 30x600 strip: the resize works on its central 30x240 (256x2048, not 256x5120); its scale is the same
    # (600/5120 = 240/2048), so the centre crop is the same pixels
    thin = _photo(30, 600, 9)
    resize = new.transforms[0]
    assert resize(thin).size == (256, 2048)
    assert torch.equal(new(thin), old(thin))
    # --decode gpu applies the same bound to the decoded tensor
    from dynametric.data.device_decode import DeviceDecoder
    from dynametric.engine.inference import split_transform

    decoder = DeviceDecoder.from_transform(split_transform(new)[0])
    assert decoder is not None
    strip = torch.zeros(1, 3, 2, 20000, dtype=torch.uint8)
    assert tuple(decoder._geometry(strip).shape) == (1, 3, 224, 224)
    for w, h in [(1, 4000), (4000, 1), (2, 20000)]:  # took seconds and GBs; bounded now
        assert max(resize(Image.new("RGB", (w, h))).size) <= 8 * 256
        assert tuple(new(Image.new("RGB", (w, h), (10, 200, 10))).shape) == (3, 224, 224)
    train = build_transform("reality_check", train=True)  # its Resize before the random crop is bounded too
    assert max(train.transforms[0](Image.new("RGB", (2, 20000))).size) <= 8 * 256
    import pickle  # spawned loader workers get the transforms pickled (by reference to the module's classes)

    assert type(pickle.loads(pickle.dumps(train)).transforms[0]) is type(resize)
