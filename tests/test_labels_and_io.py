import json

import numpy as np
import pytest
import torch

from dynametric import InputError, as_label_matrix, select_scale
from dynametric.utils.io import atomic_open, atomic_write_json


def test_label_matrix_forms():
    assert as_label_matrix(torch.tensor([3, 1, 2])).shape == (3, 1)
    m = as_label_matrix(np.array([[1, 10], [2, 10]]))
    assert m.dtype == torch.long and m.shape == (2, 2)
    assert torch.equal(select_scale(m, 1), torch.tensor([10, 10]))
    assert torch.equal(as_label_matrix(torch.tensor([1.0, 2.0])), torch.tensor([[1], [2]]))


@pytest.mark.parametrize("bad", [torch.tensor([1.5, 2.0]), torch.zeros(2, 2, 2, dtype=torch.long)])
def test_label_matrix_rejects(bad):
    with pytest.raises(InputError):
        as_label_matrix(bad)


def test_label_matrix_row_count_and_scale():
    with pytest.raises(InputError, match="expected 3 label rows"):
        as_label_matrix(torch.arange(2), num_rows=3)
    with pytest.raises(InputError, match="scale 2 out of range"):
        select_scale(torch.zeros(4, 2, dtype=torch.long), 2)


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "out.json"
    atomic_write_json(path, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as fh:
            fh.write("partial")
            raise RuntimeError("killed")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_writes_respect_umask(tmp_path):
    import os

    from dynametric.utils.io import atomic_write_with

    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "a.json", {})
        atomic_write_with(tmp_path / "b.bin", lambda p: open(p, "wb").close())
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.bin").stat().st_mode & 0o777 == 0o644


@pytest.mark.parametrize("bad", [np.array(["a", "b", "a"]), ["cat", "dog"], np.array([b"x", b"y"]),
                                 np.array([1, None], dtype=object)])
def test_text_labels_are_one_line_naming_the_fix(bad):
    """Text (or object) labels: one line saying to map them to integer ids (torch's own error listed its types)."""
    with pytest.raises(InputError) as err:
        as_label_matrix(bad, name="query_labels")
    text = str(err.value)
    assert "key 'query_labels'" in text and "labels must be integer class ids" in text
    assert "numpy.unique(labels, return_inverse=True)" in text and "\n" not in text


def test_evaluate_with_text_labels_says_so():
    from dynametric.metrics import evaluate_embeddings

    emb = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    with pytest.raises(InputError, match="labels must be integer class ids, got <U1 values"):
        evaluate_embeddings(emb, np.array(["a", "b"] * 25))


def test_npy_and_bytes_writers_write_what_np_save_writes_and_a_full_disk_names_the_file(tmp_path, monkeypatch):
    """atomic_save_npy writes np.save's bytes through Python's file IO: a full disk (a short write, then ENOSPC) is
    an OSError naming the target, the earlier file stays and no temporary file is left."""
    import errno
    import io

    from dynametric.utils.io import atomic_save_npy, atomic_write_bytes
    from tests.disk import fill_up_after

    arrays = [np.arange(12, dtype=np.int64).reshape(6, 2), np.linspace(0, 1, 35, dtype=np.float32).reshape(5, 7),
              np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)), np.zeros((0, 4), np.float32)]
    for i, arr in enumerate(arrays):
        expected = io.BytesIO()
        np.save(expected, arr)
        atomic_save_npy(tmp_path / f"{i}.npy", arr)
        assert (tmp_path / f"{i}.npy").read_bytes() == expected.getvalue()
    target = tmp_path / "0.npy"
    before = target.read_bytes()
    fill_up_after(monkeypatch, 100)  # the header (128 bytes) does not fit
    for write in (lambda: atomic_save_npy(target, np.ones((1000, 16), np.float32)),
                  lambda: atomic_write_bytes(target, b"x" * 1000)):
        with pytest.raises(OSError) as info:
            write()
        assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(target))
    assert target.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))


def test_a_write_error_without_errno_names_the_file(tmp_path, monkeypatch):
    """numpy's short write (`OSError: 16000 requested and 10208 written`, no errno) was passed on as it was, naming
    no file: it names the target, and where the file system has no free block left it is the full disk it is."""
    import errno
    import os
    from types import SimpleNamespace

    from dynametric.utils.io import atomic_write_text

    target = tmp_path / "out.npy"

    def short_write():  # noqa: ANN202
        with atomic_open(target, "wb") as fh:
            fh.write(b"abc")
            raise OSError("16000 requested and 10208 written")

    with pytest.raises(OSError) as info:
        short_write()
    assert (info.value.errno, info.value.filename, info.value.strerror) == (
        None, str(target), "16000 requested and 10208 written")
    monkeypatch.setattr(os, "statvfs", lambda path: SimpleNamespace(f_bavail=0))  # a full file system
    with pytest.raises(OSError) as info:
        short_write()
    assert (info.value.errno, info.value.filename, info.value.strerror) == (
        errno.ENOSPC, str(target), f"{os.strerror(errno.ENOSPC)}; 16000 requested and 10208 written")
    with pytest.raises(InputError) as keyed:
        with atomic_open(target, "wb", key="--out"):
            raise OSError("16000 requested and 10208 written")
    assert str(keyed.value) == (f"{target} key '--out': cannot write ({os.strerror(errno.ENOSPC)}; 16000 requested "
                                "and 10208 written; nothing was left half-written: outputs are written to a temporary "
                                "file and renamed)")
    assert not target.exists() and not list(tmp_path.iterdir())
    atomic_write_text(tmp_path / "ok.txt", "fine")  # an error with an errno keeps it, whatever the free space
    assert (tmp_path / "ok.txt").read_text() == "fine"


def test_a_folder_that_cannot_be_made_is_named_not_the_file(tmp_path, monkeypatch):
    """On a read-only file system the error named the file to write (`ro/run/config.yaml: Read-only file system`)
    though the folder above it could not be made: it names that folder."""
    import errno
    import os

    from dynametric.utils.io import atomic_write_text

    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.mkdir

    def mkdir(path, mode=0o777, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if str(path).startswith(str(ro) + os.sep):  # as Linux: a missing folder above first, then read-only
            code = errno.EROFS if os.path.isdir(os.path.dirname(path)) else errno.ENOENT
            raise OSError(code, os.strerror(code), str(path))
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(OSError) as info:
        atomic_write_text(ro / "run" / "config.yaml", "x")
    assert (info.value.errno, info.value.filename) == (errno.EROFS, str(ro / "run"))
    with pytest.raises(OSError) as info:  # the first folder that could not be made, here the one above
        atomic_write_text(ro / "a" / "b" / "c.txt", "x")
    assert info.value.filename == str(ro / "a")
    with pytest.raises(InputError) as keyed:
        atomic_write_text(ro / "sub" / "m.json", "x", key="--out")
    assert str(keyed.value) == f"{ro / 'sub'} key '--out': cannot create the folder ({os.strerror(errno.EROFS)})"
    assert list(ro.iterdir()) == []


def test_json_files_are_strict_json_with_null_for_nan(tmp_path):
    """Every JSON file the library or a benchmark writes goes through atomic_write_json: a NaN anywhere (a metric of
    a scale without queries, a benchmark figure that could not be measured) is `null`, never the bare `NaN` that
    json.dumps writes and a strict reader (JavaScript's JSON.parse, jq) refuses."""
    import math

    from dynametric.utils.io import null_to_nan

    path = tmp_path / "r.json"
    obj = {"a": math.nan, "b": [1.0, float("nan"), {"c": np.float64("nan")}], "d": (2, math.nan), "e": "NaN", "f": 0.5}
    atomic_write_json(path, obj)
    text = path.read_text()
    assert "NaN" not in text.replace('"NaN"', "")
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert strict == {"a": None, "b": [1.0, None, {"c": None}], "d": [2, None], "e": "NaN", "f": 0.5}
    assert math.isnan(null_to_nan(strict)["a"]) and null_to_nan(strict)["f"] == 0.5
    atomic_write_json(path, {"p": tmp_path}, default=str)  # what JSON has no type for, through default=
    assert json.loads(path.read_text()) == {"p": str(tmp_path)}


@pytest.mark.parametrize("reader", ["embeddings", "labels"])
def test_npy_readers_name_a_file_that_is_no_plain_npy_array(tmp_path, reader):
    """Both bare ``.npy`` readers say what the file is (numpy's own message, "This file contains pickled (object)
    data", is what a text file named .npy used to give) and what was expected."""
    from dynametric.utils.readers import load_embeddings, load_labels_npy

    load, expected = {"embeddings": (load_embeddings, "a float array [N, D] of embeddings"),
                      "labels": (load_labels_npy, "an integer array [N] or [N, S]")}[reader]
    text, binary, obj, npz = (tmp_path / f"{n}.npy" for n in ("text", "binary", "obj", "npz"))
    text.write_text("0.1 0.2\n0.3 0.4\n")
    binary.write_bytes(bytes(range(200, 256)))
    np.save(obj, np.array([{"a": 1}, {"b": 2}], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "z.npz", a=np.zeros((2, 2)))
    npz.write_bytes((tmp_path / "z.npz").read_bytes())
    cases = {text: "not an .npy file (no NumPy header: numpy's format starts with \\x93NUMPY, this file holds text)",
             binary: "not an .npy file (no NumPy header: numpy's format starts with \\x93NUMPY, this file holds "
                     "other data)",
             obj: "an array of Python objects (would need unpickling)",
             npz: "an .npz archive (or another zip file), not one .npy array"}
    for path, what in cases.items():
        with pytest.raises(InputError) as info:
            load(path)
        assert str(info.value) == f"{path}: {what}; expected {expected}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_float_labels_beyond_int64_are_refused_not_merged(dtype):
    """.long() of 2^63, 1e19 and 2^64 gives one value: three classes became one."""
    with pytest.raises(InputError) as err:
        as_label_matrix(torch.tensor([2.0**63, 1e19, 2.0**64], dtype=dtype))
    assert err.value.key == "labels" and err.value.message.startswith(
        "labels must be integers in the int64 range [-2^63, 2^63), found 9.22337e+18")
    with pytest.raises(InputError, match="int64 range"):
        as_label_matrix(np.array([[0.0, -1e19]]))
    edge = as_label_matrix(torch.tensor([-(2.0**63), 2.0**62, 0.0], dtype=torch.float64))
    assert edge[:, 0].tolist() == [-(2**63), 2**62, 0]  # the int64 range's own end values are kept exactly


def test_select_scale_counts_negative_scales_from_the_coarsest_and_refuses_non_integers():
    m = np.array([[1, 10, 100], [2, 10, 200]])
    assert torch.equal(select_scale(m, -1), torch.tensor([100, 200]))  # -1: the last (coarsest) column
    assert torch.equal(select_scale(m, np.int64(1)), torch.tensor([10, 10]))
    assert "``-1`` the last (coarsest) one" in (select_scale.__doc__ or "")
    for bad in (True, 1.0, "1"):
        with pytest.raises(InputError) as info:
            select_scale(m, bad)
        assert info.value.key == "scale" and str(info.value) == (
            f"key 'scale': scale must be an integer label column (0 = the finest), got {bad!r} "
            f"({type(bad).__name__})")


def test_a_string_of_scale_names_is_refused_not_read_letter_by_letter():
    from dynametric.labels import check_scale_names
    from dynametric.losses import TripletMarginLoss
    from dynametric.metrics import evaluate_embeddings

    with pytest.raises(InputError) as info:
        check_scale_names("fine")
    assert str(info.value) == "key 'scale_names': expected a list of names, got a string 'fine'"
    x = np.random.default_rng(0).standard_normal((8, 3))
    with pytest.raises(InputError) as info:
        evaluate_embeddings(x, np.arange(8) % 2, scale_names="fine", metrics=["recall@1"])
    assert str(info.value) == "key 'scale_names': expected a list of names, got a string 'fine'"
    loss = TripletMarginLoss()
    with pytest.raises(InputError) as info:
        loss.scale_names = "fine"
    assert str(info.value) == "key 'scale_names': expected a list of names, got a string 'fine'"
