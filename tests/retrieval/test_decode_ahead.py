"""``decode_ahead``: with ``decode gpu``, ``embed`` decodes the next batches in a background thread while the model
runs (on by default on CUDA). Run here with the device on the CPU (``decode_ahead=True``): the same embeddings bit
for bit as without it, a bad file stops the job at its batch with the same line and keeps the finished shards, and
the option resolves as documented."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from dynametric.data.device_decode import DecodedBatch, DeviceDecoder
from dynametric.engine.inference import InferenceOptions
from dynametric.errors import ConfigError, InputError
from dynametric.retrieval.embed import embed_items, list_image_folder
from dynametric.retrieval.model import load_embedder
from tests.retrieval.test_device_decode import OVERRIDES, mixed  # noqa: F401  (the fixture)


def _loaded(ckpt: Path, **kw):
    return load_embedder(ckpt, overrides=OVERRIDES, image_size=48,
                         options=InferenceOptions(device="cpu", batch_size=2, decode="gpu", **kw))


def test_option_resolution() -> None:
    def resolved(**kw) -> bool:
        return InferenceOptions(device="cpu", **kw).resolve().decode_ahead

    assert not resolved(decode="gpu")  # default: on for CUDA only
    assert resolved(decode="gpu", decode_ahead=True)
    assert not resolved(decode="cpu", decode_ahead=True)  # nothing to decode ahead: workers decode
    with pytest.raises(ConfigError, match="decode_ahead must be true, false or null, got 'yes'"):
        InferenceOptions(device="cpu", decode="gpu", decode_ahead="yes").resolve()  # type: ignore[arg-type]


def test_prepare_only_where_decoding_ahead(run_ckpt: Path) -> None:
    assert _loaded(run_ckpt).prepare is None
    assert load_embedder(run_ckpt, options=InferenceOptions(device="cpu", decode_ahead=True)).prepare is None
    assert _loaded(run_ckpt, decode_ahead=True).prepare is not None


def test_same_embeddings_with_the_batches_decoded_in_another_thread(run_ckpt: Path, mixed: Path,  # noqa: F811
                                                                    tmp_path: Path) -> None:
    items = list_image_folder(mixed)  # 7 images, JPEGs of several sizes and PNGs: batches of 2, shards of 3
    plain, ahead = _loaded(run_ckpt), _loaded(run_ckpt, decode_ahead=True)
    decoded_in: set[str] = set()
    prepare = ahead.prepare
    assert prepare is not None

    def spy(batch):
        out = prepare(batch)
        assert isinstance(out, DecodedBatch)
        decoded_in.add(threading.current_thread().name)
        return out

    embed_items(items, plain.embed_on_device, plain.loader_transform, tmp_path / "plain",
                model_identity=plain.identity(), batch_size=2, shard_size=3)
    embed_items(items, ahead.embed_on_device, ahead.loader_transform, tmp_path / "ahead",
                model_identity=ahead.identity(), batch_size=2, shard_size=3, prepare=spy)
    a, b = (np.load(tmp_path / name / "embeddings.npy") for name in ("plain", "ahead"))
    assert a.shape == (7, 16) and np.array_equal(a, b)
    assert decoded_in == {"dynametric-run-ahead"}
    # the identity does not record it: a job started one way resumes the other (same values)
    assert plain.identity() == ahead.identity()


def test_a_bad_file_stops_the_job_at_its_batch_and_keeps_the_finished_shards(run_ckpt: Path, mixed: Path,  # noqa: F811
                                                                               tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in sorted(mixed.iterdir()):
        (folder / p.name).write_bytes(p.read_bytes())
    data = (mixed / "im_00.jpg").read_bytes()
    bad = folder / "im_05b.jpg"  # the 7th of 8 files: shard 3 (items 6-7), batches of 2 as the shards
    bad.write_bytes(data[: len(data) // 2])
    items = list_image_folder(folder)
    assert items.paths.index(bad) == 6
    errors = []
    for name, kw in (("plain", {}), ("ahead", {"decode_ahead": True})):
        loaded = _loaded(run_ckpt, **kw)
        with pytest.raises(InputError) as err:
            embed_items(items, loaded.embed_on_device, loaded.loader_transform, tmp_path / name,
                        model_identity=loaded.identity(), batch_size=2, shard_size=2, prepare=loaded.prepare)
        errors.append(str(err.value))
        shards = sorted(p.name for p in (tmp_path / name / "shards").iterdir())
        assert len(shards) == 3, shards  # the three shards before the bad file's
    assert errors[0] == errors[1] and str(bad) in errors[0] and "\n" not in errors[0]
    assert not any(t.name == "dynametric-run-ahead" for t in threading.enumerate())  # the thread was stopped


def test_decode_ahead_hands_a_batch_to_the_callers_thread_on_the_cpu(run_ckpt: Path, mixed: Path) -> None:  # noqa: F811
    loaded = _loaded(run_ckpt)
    dec = loaded.loader_transform
    assert isinstance(dec, DeviceDecoder)
    batch = DeviceDecoder.collate([dec.read_file(p) for p in sorted(mixed.iterdir())])
    got = dec.decode_ahead(batch, "cpu")
    assert got.done is None and len(got) == 7
    assert torch.equal(got.take(), dec.decode(batch, "cpu"))
    assert torch.equal(loaded.embed_on_device(dec.decode_ahead(batch, "cpu")), loaded.embed_on_device(batch))


def test_embed_decodes_at_most_two_batches_ahead(run_ckpt: Path, mixed: Path, tmp_path: Path) -> None:  # noqa: F811
    """Two ahead as documented (one batch queued, one in the thread's hands): it held a third before."""
    import time

    loaded = _loaded(run_ckpt, decode_ahead=True)
    prepare = loaded.prepare
    assert prepare is not None
    prepared, lead = [0], []

    def counting(batch):
        out = prepare(batch)
        prepared[0] += 1
        return out

    def slow_embed(batch):
        time.sleep(0.15)  # room for the thread to run as far ahead as it may
        lead.append(prepared[0] - len(lead) - 1)  # batches prepared beyond this one
        return loaded.embed_on_device(batch)

    embed_items(list_image_folder(mixed), slow_embed, loaded.loader_transform, tmp_path / "e",
                model_identity=loaded.identity(), batch_size=1, shard_size=7, prepare=counting)
    assert max(lead) == 2, lead


def test_decode_ahead_on_cuda_waits_for_its_side_stream_before_decoding(monkeypatch, run_ckpt: Path,
                                                                        mixed: Path) -> None:  # noqa: F811
    """nvjpeg writes the images torchvision allocates on the side stream from a stream of its own: the host must
    wait until the side stream's earlier work (the previous batch's resize, reading memory freed meanwhile) is done
    before the next batch is decoded. Run with stand-ins for torch.cuda (no GPU here)."""
    import contextlib

    calls: list[str] = []

    class Stream:
        def __init__(self, device) -> None:
            self.device = device

        def synchronize(self) -> None:
            calls.append("synchronize")

    class Event:
        def record(self, stream) -> None:
            calls.append("record")

    monkeypatch.setattr(torch.cuda, "Stream", Stream)
    monkeypatch.setattr(torch.cuda, "Event", Event)
    monkeypatch.setattr(torch.cuda, "stream", lambda s: contextlib.nullcontext())
    dec = _loaded(run_ckpt).loader_transform
    assert isinstance(dec, DeviceDecoder)
    monkeypatch.setattr(dec, "_decode", lambda batch, device: calls.append("decode") or torch.zeros(len(batch), 3))
    batch = DeviceDecoder.collate([dec.read_file(p) for p in sorted(mixed.iterdir())[:2]])
    for _ in range(2):
        got = dec.decode_ahead(batch, torch.device("cuda", 0))
        assert isinstance(got.done, Event) and len(got) == 2
    assert calls == ["synchronize", "decode", "record"] * 2
