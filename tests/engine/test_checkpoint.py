"""Checkpoint safety: weights_only loading refuses crafted pickles; writes are atomic."""

from __future__ import annotations

import pickle

import pytest
import torch

from dynametric.engine.checkpoint import load_checkpoint_file, load_embedder_weights, save_checkpoint_file
from dynametric.errors import InputError
from tests.engine.toy import ToyEmbedder


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))  # would create a file when unpickled


def test_malicious_pickle_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": {}, "payload": _Evil(str(marker))}, fh)
    with pytest.raises(InputError, match="refusing to load") as info:
        load_checkpoint_file(path)
    assert str(path) in str(info.value)
    assert not marker.exists()
    # the same object through torch.save is refused too
    torch.save({"payload": _Evil(str(marker))}, tmp_path / "evil2.ckpt")
    with pytest.raises(InputError, match="weights_only"):
        load_checkpoint_file(tmp_path / "evil2.ckpt")
    assert not marker.exists()


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_checkpoint_file(tmp_path / "nope.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00garbage")
    with pytest.raises(InputError, match="bad.ckpt"):
        load_checkpoint_file(bad)


def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "last.ckpt"
    save_checkpoint_file({"step": torch.tensor(1)}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint_file({"step": Unpicklable()}, path)
    assert load_checkpoint_file(path)["step"].item() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no temp file left behind


def test_a_checkpoint_on_a_full_disk_is_an_oserror_naming_it(tmp_path, monkeypatch):
    """torch.save writing the file itself reported a full disk as `RuntimeError: [enforce fail at
    inline_container.cc:672] ... unexpected pos` (a 70-line traceback from `train`); the checkpoint is written with
    Python's file IO and the write's own error is raised, so a full disk is an OSError (ENOSPC) naming the
    checkpoint, the earlier checkpoint stays whole and no temporary file is left."""
    import errno

    from tests.disk import fill_up_after

    path = tmp_path / "last.ckpt"
    save_checkpoint_file({"step": torch.tensor(1)}, path)
    fill_up_after(monkeypatch, 700)  # the zip's first entries fit, the rest does not
    with pytest.raises(OSError) as info:
        save_checkpoint_file({"step": torch.tensor(2), "w": torch.zeros(10_000)}, path)
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(path))
    monkeypatch.undo()
    assert load_checkpoint_file(path)["step"].item() == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    save_checkpoint_file({"step": torch.tensor(3), "w": torch.zeros(10_000)}, path)  # a round trip in memory
    loaded = load_checkpoint_file(path)
    assert loaded["step"].item() == 3 and torch.equal(loaded["w"], torch.zeros(10_000))


def test_a_checkpoint_is_streamed_to_its_file_not_serialised_in_memory_first(tmp_path, monkeypatch):
    """The checkpoint goes to the temporary file in the pieces torch.save writes (each tensor's bytes, the zip's
    records), not as one buffer holding the whole serialised checkpoint beside the checkpoint itself."""
    import os

    writes: list[int] = []
    real = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        fh = real(fd, mode, *args, **kwargs)
        if "w" in mode:
            write = fh.write
            fh.write = lambda data: writes.append(memoryview(data).nbytes) or write(data)
        return fh

    monkeypatch.setattr(os, "fdopen", fdopen)
    path = tmp_path / "last.ckpt"
    save_checkpoint_file({f"w{i}": torch.full((65_536,), float(i)) for i in range(8)}, path)  # 8 x 256 KiB
    monkeypatch.undo()
    size = path.stat().st_size
    assert sum(writes) == size > 8 * 262_144 and max(writes) <= 262_144 + 4096
    assert all(torch.equal(t, torch.full((65_536,), float(i))) for i, t in
               enumerate(load_checkpoint_file(path)[f"w{i}"] for i in range(8)))


def test_embedder_weights_round_trip_and_mismatch(tmp_path):
    src = ToyEmbedder()
    path = tmp_path / "best.ckpt"
    save_checkpoint_file({"state_dict": {f"embedder.{k}": v for k, v in src.state_dict().items()}}, path)
    dst = ToyEmbedder()
    load_embedder_weights(dst, path)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)
    with pytest.raises(InputError, match="does not match"):
        load_embedder_weights(torch.nn.Sequential(torch.nn.Linear(8, 4)), path)


def test_damaged_checkpoints_are_one_input_error_whatever_torch_raises(tmp_path, recwarn):
    """A damaged file makes torch's readers raise IndexError, KeyError, struct.error, ... (a legacy pickle with
    flipped bytes) besides the usual RuntimeError/EOFError: every one is the one-line InputError naming the file,
    and torch's 'Detected pickle protocol N' warning about the damaged header is not shown."""
    import io
    import random

    buf = io.BytesIO()
    torch.save({"a": torch.ones(3)}, buf, _use_new_zipfile_serialization=False)
    legacy = buf.getvalue()
    rng = random.Random(0)
    raised = set()
    path = tmp_path / "damaged.ckpt"
    for _ in range(400):
        data = bytearray(legacy)
        for _ in range(rng.randrange(1, 10)):
            data[rng.randrange(2, len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            load_checkpoint_file(path)
        except InputError as exc:
            assert str(path) in str(exc) and "\n" not in str(exc)
            raised.add(str(exc).split("(torch could not read it: ")[0])
    path.write_bytes(b"\x80\x02.")  # a legacy header, then STOP: torch raises IndexError (pop from empty list)
    with pytest.raises(InputError, match="truncated or corrupt checkpoint"):
        load_checkpoint_file(path)
    path.write_bytes(b"\x80\x02\x99\x99")  # an opcode no pickle has (153): damaged, not "needs other objects"
    with pytest.raises(InputError, match=r"truncated or corrupt checkpoint \(its pickle data is damaged: "
                                         r"Unsupported operand"):
        load_checkpoint_file(path)
    assert raised  # some of the 400 were refused (the others flipped bytes of tensor data only)
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]
