"""The one inference path (engine/inference.py): every caller loads through ``load_trained`` and embeds through
``embed_batch``; the embeddings equal the plain eval-mode forward the callers used before; bf16 autocast on the
CPU is finite and close to fp32; the device / precision / batch / worker options fail with one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dynametric.cli import main
from dynametric.config import load_config, save_config
from dynametric.engine.builders import build_model, eval_head, load_split
from dynametric.engine.checkpoint import load_embedder_weights, save_checkpoint_file
from dynametric.engine.inference import InferenceOptions, embed_dataset, embed_from_checkpoint, load_trained
from dynametric.engine.objective import select_head
from dynametric.errors import ConfigError, InputError
from dynametric.methods.dyml.protocol import DyMLProtocol, run_protocol
from dynametric.pipeline import evaluate_dyml_checkpoint
from dynametric.retrieval.model import embed_image_files, load_embedder
from tests.dyml.helpers import write_release
from tests.retrieval.conftest import make_images, make_run


def _plain_forward(model: torch.nn.Module, dataset, head, batch_size: int = 7):
    """What the three loaders did before there was one: eval mode, a plain DataLoader, fp32 forward on the CPU."""
    model.eval()
    embs, labs = [], []
    with torch.no_grad():
        for images, labels in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            embs.append(select_head(model(images), head).float())
            labs.append(labels.reshape(len(labels), -1))
    return torch.cat(embs), torch.cat(labs)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("inference_run"), seed=3)


SMALL = ["data.options={images_per_class: 2}"]  # a small synthetic test split


def test_embed_from_checkpoint_equals_plain_forward(run: Path) -> None:
    cfg = load_config(run.parent / "config.yaml", SMALL)
    model = build_model(cfg)
    load_embedder_weights(model, run)
    ds = load_split(cfg, cfg.data.test_split, train=False)
    ref, ref_lab = _plain_forward(model, ds, eval_head(cfg))
    ce = embed_from_checkpoint(run, overrides=SMALL, options=InferenceOptions(device="cpu", batch_size=5))
    assert torch.equal(ce.query, ref) and torch.equal(ce.query_labels, ref_lab)
    assert ce.query.dtype == torch.float32 and ce.query.shape[0] == len(ds)
    assert ce.notes == []


def test_embed_from_checkpoint_returns_the_notes_a_command_prints(run: Path) -> None:
    # a run trained in fp16 mixed precision embeds in fp32 on a CPU: the note says so (it was computed and dropped)
    ce = embed_from_checkpoint(run, overrides=[*SMALL, "trainer.precision=16-mixed"],
                               options=InferenceOptions(device="cpu", batch_size=5))
    assert len(ce.notes) == 1 and "16-mixed" in ce.notes[0] and "embeds in fp32" in ce.notes[0], ce.notes
    assert torch.isfinite(ce.query).all()


def test_bf16_autocast_on_cpu_is_finite_and_close(run: Path) -> None:
    trained = load_trained(run, overrides=SMALL)
    cfg = trained.cfg
    ds = load_split(cfg, cfg.data.test_split, train=False)
    fp32, _ = embed_dataset(trained.model, ds, head=trained.head, device="cpu", precision="fp32", batch_size=16)
    bf16, _ = embed_dataset(trained.model, ds, head=trained.head, device="cpu", precision="bf16", batch_size=16)
    assert bf16.dtype == torch.float32 and torch.isfinite(bf16).all()
    assert not torch.equal(bf16, fp32)  # autocast really ran in bf16
    cos = torch.nn.functional.cosine_similarity(bf16, fp32, dim=1)
    assert cos.min() > 0.99, cos.min()
    rel = (bf16 - fp32).norm(dim=1) / fp32.norm(dim=1)
    assert rel.max() < 0.08, rel.max()


def test_load_embedder_and_image_files_equal_plain_forward(run_ckpt: Path, image_root: Path) -> None:
    from dynametric.data.base import load_rgb

    loaded = load_embedder(run_ckpt, options=InferenceOptions(device="cpu", batch_size=5))
    paths = sorted(image_root.glob("imgs/*/*.png"))
    cfg = load_config(run_ckpt.parent / "config.yaml")
    model = build_model(cfg)
    load_embedder_weights(model, run_ckpt)
    model.eval()
    with torch.no_grad():
        ref = select_head(model(torch.stack([loaded.transform(load_rgb(p)) for p in paths])), loaded.head).float()
    got = embed_image_files(loaded, paths)  # 12 images in batches of 5
    np.testing.assert_allclose(got, ref.numpy(), rtol=0, atol=1e-6)
    assert "precision" not in loaded.identity()  # fp32 jobs keep the identity they had before the option
    bf = load_embedder(run_ckpt, options=InferenceOptions(device="cpu", precision="bf16"))
    assert bf.identity()["precision"] == "bf16"


def test_max_pixels_refuses_a_large_image_before_decoding_it(run_ckpt: Path, image_root: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A service bounds the images it embeds: ``max_pixels`` refuses an image of more pixels, named, from its
    header, before anything decodes it (a small PNG holds a large image); images within it embed as without it."""
    from PIL import Image

    import dynametric.retrieval.embed as embed_module
    from dynametric.retrieval.model import image_tensor

    loaded = load_embedder(run_ckpt, options=InferenceOptions(device="cpu", batch_size=4))
    big = tmp_path / "big.png"
    Image.new("L", (3000, 2000)).save(big)  # 6 M pixels in a few KB
    small = sorted(image_root.glob("imgs/*/*.png"))[:3]
    decoded: list[str] = []
    real_load = embed_module.load_rgb
    monkeypatch.setattr(embed_module, "load_rgb", lambda p, *a, **k: decoded.append(str(p)) or real_load(p, *a, **k))
    with pytest.raises(InputError) as caught:
        image_tensor(loaded, big, max_pixels=5_000_000)
    assert str(caught.value) == f"{big}: image has 3000x2000 pixels, more than max_pixels 5000000"
    with pytest.raises(InputError) as caught:
        embed_image_files(loaded, [*small, big], max_pixels=5_000_000)
    assert str(caught.value).startswith(f"{big}: image has 3000x2000 pixels, more than max_pixels 5000000")
    assert str(big) not in decoded  # refused from its header
    assert image_tensor(loaded, big, max_pixels=6_000_000).shape == image_tensor(loaded, big).shape  # at the bound
    np.testing.assert_array_equal(embed_image_files(loaded, small, max_pixels=32 * 32),
                                  embed_image_files(loaded, small))


def test_dyml_protocol_from_checkpoint_equals_plain_forward(tmp_path: Path) -> None:
    root = write_release(tmp_path / "rel", "vehicle")
    cfg = load_config(None, ["data.format=dyml-vehicle", f"data.root={root}", "data.transform=small",
                             "data.image_size=16", "model.embedding_dim=8",
                             "model.backbone_kwargs={width: 4, depth: 2}", "method.name=dyml",
                             "method.kwargs={variant: vehicle, query_in_gallery: detect, "
                             "protocol: released-files}"])
    save_config(cfg, tmp_path / "config.yaml")
    torch.manual_seed(1)
    model = build_model(cfg)
    save_checkpoint_file({"state_dict": {f"embedder.{k}": v for k, v in model.state_dict().items()}, "epoch": 0},
                         tmp_path / "best.ckpt")
    got = evaluate_dyml_checkpoint(tmp_path / "best.ckpt", None,
                                   options=InferenceOptions(device="cpu", precision="fp32"))
    ref = run_protocol(DyMLProtocol.from_kwargs(cfg.method.kwargs), lambda ds: _plain_forward(model, ds, None),
                       lambda split: load_split(cfg, split, train=False), test_split=cfg.data.test_split)
    assert got == ref


def test_missing_files_and_options(run: Path, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(InputError, match="checkpoint file not found"):
        load_trained(tmp_path / "nope.ckpt")
    (tmp_path / "lonely.ckpt").write_bytes(run.read_bytes())
    with pytest.raises(ConfigError, match="no --config given and no config.yaml beside"):
        load_trained(tmp_path / "lonely.ckpt")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # the library names its fields; the commands (flags=True) their flags
    with pytest.raises(ConfigError, match="key 'device'.*no CUDA GPU.*; use device='cpu' or 'auto'$"):
        InferenceOptions(device="cuda").resolve()
    with pytest.raises(ConfigError, match="key '--device'.*no CUDA GPU.*; use --device cpu or auto$"):
        InferenceOptions(device="cuda", flags=True).resolve()
    with pytest.raises(ConfigError, match="key 'workers'.*'auto'"):
        InferenceOptions(workers="many").resolve()
    with pytest.raises(ConfigError, match="key 'precision': unknown precision 'int8'"):
        InferenceOptions(device="cpu", precision="int8").resolve()
    with pytest.raises(ConfigError, match="key 'batch_size'.*>= 1, got 0"):
        InferenceOptions(device="cpu", batch_size=0).resolve()
    with pytest.raises(ConfigError, match="key '--batch-size'.*>= 1, got 0"):
        InferenceOptions(device="cpu", batch_size=0, flags=True).resolve()
    with pytest.raises(ConfigError, match="key 'decode'"):
        InferenceOptions(device="cpu", decode="fpga").resolve()
    r = InferenceOptions(device="cpu", workers="auto").resolve()
    assert r.workers == 0 and r.pin_memory is False and r.dtype is None


@pytest.mark.parametrize("argv, message", [
    (["--device", "cuda"], "key '--device': device 'cuda' asked for, but no CUDA GPU is available"),
    (["--device", "gpu0"], "key '--device': unknown device 'gpu0'; expected auto, cpu, cuda, cuda:N or mps"),
    (["--precision", "fp16", "--device", "cpu"], "key '--precision': fp16 autocast needs a CUDA device"),
    (["--batch-size", "0"], "argument --batch-size: expected an integer from 1 to 2147483647, got '0'"),
    (["--workers", "-2"], "argument --workers: expected an integer from 0 to 128 or 'auto', got -2"),
    (["--workers", "100000"], "argument --workers: expected an integer from 0 to 128 or 'auto', got 100000"),
])
def test_cli_flags_are_validated(run_ckpt: Path, image_root: Path, tmp_path: Path, monkeypatch, capsys, argv,
                                 message) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    embed = ["embed", "--checkpoint", str(run_ckpt), "--images", str(image_root / "imgs"), "--out",
             str(tmp_path / "emb"), "--no-progress"]
    evaluate = ["evaluate", "--checkpoint", str(run_ckpt)]
    search = ["search", "--index", str(tmp_path / "no-index"), "--image", str(image_root / "imgs/rock/img_02.png")]
    for cmd in (embed, evaluate, search):
        if cmd is evaluate and "--device" in argv and "--device" not in _evaluate_options():
            continue  # evaluate's --device comes with the ranking engine's device option
        capsys.readouterr()
        try:
            code = main([*cmd, *argv])
        except SystemExit as exc:  # argparse's own type checks exit with 2
            code = exc.code
        assert code != 0
        err = capsys.readouterr().err.strip().splitlines()
        err = [line for line in err if not line.startswith("usage:") and not line.startswith(" ")]
        assert len(err) == 1 and message in err[0], (cmd[0], err)
    assert not (tmp_path / "emb").exists()  # nothing written


def _evaluate_options() -> set[str]:
    import argparse

    from dynametric.commands import evaluate

    sub = argparse.ArgumentParser().add_subparsers()
    evaluate.register(sub)
    return {o for a in sub.choices["evaluate"]._actions for o in a.option_strings}


def test_cli_worker_argument_and_checkpoint_only_options(capsys) -> None:
    assert main(["embed", "--checkpoint", "x", "--images", "y", "--out", "z", "--workers", "lots"]) == 2
    assert "argument --workers: expected an integer from 0 to 128 or 'auto', got 'lots'" in capsys.readouterr().err
    assert main(["evaluate", "--example", "--precision", "bf16"]) != 0
    assert "--precision, --batch-size and --workers need --checkpoint" in capsys.readouterr().err


def test_embed_cli_bf16_and_workers(run_ckpt: Path, tmp_path: Path, capsys) -> None:
    root = make_images(tmp_path / "data", n=6)
    out32, out16 = tmp_path / "e32", tmp_path / "e16"
    assert main(["embed", "--checkpoint", str(run_ckpt), "--images", str(root / "imgs"), "--out", str(out32),
                 "--device", "cpu", "--batch-size", "4", "--shard-size", "4", "--no-progress"]) == 0
    assert main(["embed", "--checkpoint", str(run_ckpt), "--images", str(root / "imgs"), "--out", str(out16),
                 "--device", "cpu", "--precision", "bf16", "--batch-size", "3", "--workers", "1",
                 "--no-progress"]) == 0
    a, b = np.load(out32 / "embeddings.npy"), np.load(out16 / "embeddings.npy")
    assert a.shape == b.shape == (6, 16) and np.isfinite(b).all()
    assert 0 < np.abs(a - b).max() < 0.1 * np.abs(a).max()


def _run_in(root: Path, precision: str) -> Path:
    """A run folder whose config.yaml says trainer.precision ``precision`` (a small synthetic test split)."""
    ckpt = make_run(root, seed=1)
    save_config(load_config(root / "config.yaml", [f"trainer.precision={precision}", *SMALL]), root / "config.yaml")
    return ckpt


def test_checkpoint_commands_default_to_the_precision_of_the_run(tmp_path: Path, monkeypatch, capsys) -> None:
    """`evaluate --checkpoint` and `embed` embed in the precision the run validated and tested in (bf16 for a
    bf16-mixed run; they used fp32 unless told), `--precision` still wins, and a 16-mixed run on a machine without
    CUDA embeds in fp32 with a note instead of failing."""
    import json

    from dynametric.pipeline import evaluate_checkpoint

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    bf16 = _run_in(tmp_path / "bf16", "bf16-mixed")

    def test_embeddings(**options) -> torch.Tensor:
        ce = evaluate_checkpoint(bf16, options=None if not options else InferenceOptions(**options, batch_size=None,
                                                                                            workers=None))
        return next(iter(ce.sets.values())).emb

    default, as_bf16, as_fp32 = test_embeddings(), test_embeddings(precision="bf16"), test_embeddings(precision="fp32")
    assert torch.equal(default, as_bf16) and not torch.equal(default, as_fp32)
    assert torch.equal(test_embeddings(device="cpu"), as_bf16)  # options given, precision left unset

    results = {}
    for name, extra in (("default", []), ("bf16", ["--precision", "bf16"]), ("fp32", ["--precision", "fp32"])):
        out = tmp_path / f"{name}.json"
        assert main(["evaluate", "--checkpoint", str(bf16), "--metrics", "map@r", "--json", str(out)]
                    + extra) == 0
        results[name] = json.loads(out.read_text())
    assert results["default"] == results["bf16"] and results["default"] != results["fp32"]

    images = make_images(tmp_path / "data", n=6) / "imgs"
    embed = ["embed", "--checkpoint", str(bf16), "--images", str(images), "--device", "cpu", "--no-progress"]
    assert main([*embed, "--out", str(tmp_path / "e_default")]) == 0
    assert main([*embed, "--out", str(tmp_path / "e_fp32"), "--precision", "fp32"]) == 0
    assert json.loads((tmp_path / "e_default" / "embed.json").read_text())["model"]["precision"] == "bf16"
    assert "precision" not in json.loads((tmp_path / "e_fp32" / "embed.json").read_text())["model"]
    assert not np.array_equal(np.load(tmp_path / "e_default" / "embeddings.npy"),
                              np.load(tmp_path / "e_fp32" / "embeddings.npy"))
    capsys.readouterr()
    # a job an earlier version started in fp32 (its default then), run again with today's default: the one line says
    # what differs and how to resume it
    assert main([*embed, "--out", str(tmp_path / "e_fp32")]) == 2
    assert capsys.readouterr().err.strip().endswith(
        "differs in ['model']: model.precision fp32 -> bf16; --precision fp32 resumes the job as it was started); "
        "use another --out or --overwrite")

    fp16 = _run_in(tmp_path / "fp16", "16-mixed")
    note = ("note: the run trained in trainer.precision 16-mixed (fp16), which needs CUDA; this runs on cpu, so it "
            "embeds in fp32")
    assert main(["evaluate", "--checkpoint", str(fp16), "--metrics", "map@r"]) == 0
    assert note in capsys.readouterr().err.splitlines()
    assert main([*embed[:2], str(fp16), *embed[3:], "--out", str(tmp_path / "e_fp16")]) == 0
    assert note in capsys.readouterr().err.splitlines()
    assert "precision" not in json.loads((tmp_path / "e_fp16" / "embed.json").read_text())["model"]
    assert main(["evaluate", "--checkpoint", str(fp16), "--precision", "fp16"]) == 2  # asked for: still an error
    assert "key '--precision': fp16 autocast needs a CUDA device" in capsys.readouterr().err


def test_every_training_precision_has_its_inference_precision() -> None:
    from dynametric.config.schema import PRECISIONS, inference_precision

    assert {p: inference_precision(p) for p in PRECISIONS} == {
        "32": "fp32", "32-true": "fp32", "64": "fp32", "64-true": "fp32", "16-mixed": "fp16", "bf16-mixed": "bf16",
        "16-true": "fp16", "bf16-true": "bf16"}
    assert inference_precision(32) == "fp32"  # YAML reads `precision: 32` as an int


def test_split_transform_gives_the_same_values(run_ckpt: Path, image_root: Path) -> None:
    from torchvision import transforms as T

    from dynametric.data.base import load_rgb
    from dynametric.data.transforms import build_transform
    from dynametric.engine.inference import split_transform

    img = load_rgb(sorted(image_root.glob("imgs/*/*.png"))[0])
    for full in (build_transform("standard", train=False, size=24), T.Compose([T.Resize((20, 20)), T.ToTensor()])):
        loader, finish = split_transform(full)
        part = loader(img)
        assert part.dtype == torch.uint8 and finish is not None
        assert torch.equal(finish(part[None])[0], full(img))  # bit-identical
    assert split_transform(T.Compose([T.ToTensor(), T.Resize(8)]))[1] is None  # not ending with ToTensor
    loaded = load_embedder(run_ckpt, options=InferenceOptions(device="cpu"))
    assert loaded.loader_transform is loaded.transform  # the uint8 path is for GPUs only
    x = torch.stack([loaded.transform(img), loaded.transform(img.transpose(0))])
    u8 = torch.stack([loaded._loader_transform(img), loaded._loader_transform(img.transpose(0))])
    assert u8.dtype == torch.uint8 and torch.equal(loaded.embed(u8), loaded.embed(x))


def test_one_inference_batch_size_default_for_the_commands_and_the_library() -> None:
    """`embed` and `search --image` default to the documented 64 images per forward pass, as InferenceOptions,
    embed_dataset and embed_items do (the commands once said 64 and the library 128); `evaluate --checkpoint`
    leaves it to the config's data.eval_batch_size."""
    import inspect

    from dynametric.cli import build_parser
    from dynametric.retrieval.embed import embed_items
    from dynametric.utils.device import INFERENCE_BATCH_SIZE

    assert INFERENCE_BATCH_SIZE == 64
    parser = build_parser()
    embed = parser.parse_args(["embed", "--checkpoint", "c.ckpt", "--images", "d", "--out", "o"])
    search = parser.parse_args(["search", "--index", "i", "--image", "q.png"])
    evaluate = parser.parse_args(["evaluate", "--checkpoint", "c.ckpt"])
    assert embed.batch_size == 64 and evaluate.batch_size is None
    # search keeps None for "not given" (refused with --embeddings); its --image run resolves to the same 64
    from dynametric.commands.options import inference_options

    assert search.batch_size is None
    assert inference_options(search, workers="auto").resolve().batch_size == 64
    assert InferenceOptions().batch_size == 64
    assert InferenceOptions(device="cpu", batch_size=None).resolve().batch_size == 64
    assert inspect.signature(embed_dataset).parameters["batch_size"].default == 64
    assert inspect.signature(embed_items).parameters["batch_size"].default == 64
    for command in ("embed", "search"):
        help_text = " ".join(parser._subparsers._group_actions[0].choices[command].format_help().split())
        assert "images per forward pass (default 64)" in help_text


def _small_model_and_data():
    from dynametric.data import SyntheticHierarchy
    from dynametric.models import build_embedder

    torch.manual_seed(0)
    model = build_embedder("simple_cnn", embedding_dim=4, backbone_kwargs={"width": 4, "depth": 2})
    return model, SyntheticHierarchy("test", images_per_class=1)


def test_embed_dataset_restores_each_submodules_own_mode() -> None:
    """model.train(was) afterwards put every submodule in the model's mode: a backbone frozen by hand
    (``backbone.eval()`` under a model in train mode) came back training."""
    model, ds = _small_model_and_data()
    model.train()
    model.backbone.eval()
    before = {name: m.training for name, m in model.named_modules()}
    assert before[""] and not before["backbone"]
    embed_dataset(model, ds, device="cpu", batch_size=16)
    assert {name: m.training for name, m in model.named_modules()} == before
    model.eval()  # and the other way round: a model in eval mode stays so
    model.backbone.train()
    before = {name: m.training for name, m in model.named_modules()}
    embed_dataset(model, ds, device="cpu", batch_size=16)
    assert {name: m.training for name, m in model.named_modules()} == before


@pytest.mark.parametrize("workers", [0, 1])
def test_embed_dataset_leaves_the_global_rng_alone_and_embeds_alike(workers: int) -> None:
    model, ds = _small_model_and_data()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first, labels = embed_dataset(model, ds, device="cpu", batch_size=16, num_workers=workers)
    assert torch.equal(torch.get_rng_state(), state)  # the loader's base seed came from the global generator
    again, _ = embed_dataset(model, ds, device="cpu", batch_size=16, num_workers=workers)
    reference, reference_labels = _plain_forward(model, ds, None, batch_size=16)
    assert torch.equal(first, again) and torch.equal(first, reference) and torch.equal(labels, reference_labels)
