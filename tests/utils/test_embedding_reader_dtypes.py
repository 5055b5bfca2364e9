"""``load_embeddings`` keeps what a file holds up to the library's float64 preparation: float64 files (and the
integers float32 cannot hold exactly) are read as float64, every other dtype as float32; values beyond float32's
range are left to the callers, which know the distance (was: every file cast to float32, so float64 data far from
the origin was rounded to a few distinct points and subnormal float64 rows lost their direction)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dynametric.errors import InputError
from dynametric.retrieval.embed import load_embedding_set
from dynametric.utils.readers import load_embeddings


def _far(n: int = 40, d: int = 8) -> np.ndarray:
    """float64 rows at 1e6 with a spread of 1e-3: float32 (spacing 0.0625 there) holds none of the spread."""
    return 1e6 + 1e-3 * np.random.default_rng(0).standard_normal((n, d))


def _save(path: Path, arr: np.ndarray, how: str) -> Path:
    if how == "npy":
        np.save(path.with_suffix(".npy"), arr)
        return path.with_suffix(".npy")
    if how == "pt":
        torch.save(torch.from_numpy(arr), path.with_suffix(".pt"))
        return path.with_suffix(".pt")
    if how == "pt-dict":
        torch.save({"embeddings": torch.from_numpy(arr), "step": torch.tensor(3)}, path.with_suffix(".pth"))
        return path.with_suffix(".pth")
    from safetensors.torch import save_file

    save_file({"embeddings": torch.from_numpy(arr)}, str(path.with_suffix(".safetensors")))
    return path.with_suffix(".safetensors")


@pytest.mark.parametrize("how", ["npy", "pt", "pt-dict", "safetensors"])
def test_float64_files_are_read_as_float64_exactly(tmp_path: Path, how: str) -> None:
    x = _far()
    got = load_embeddings(_save(tmp_path / "e", x, how))
    assert got.dtype == np.float64 and got.flags.c_contiguous
    assert np.array_equal(got, x)  # every digit: float32 would have rounded the spread away
    assert len(np.unique(got[:, 0])) == len(x)


def test_a_bare_float64_file_stays_float64_in_load_embedding_set(tmp_path: Path) -> None:
    """``index build`` and ``search --embeddings`` read bare files through load_embedding_set."""
    x = _far()
    np.save(tmp_path / "e.npy", x)
    got = load_embedding_set(tmp_path / "e.npy").embeddings
    assert got.dtype == np.float64 and np.array_equal(got, x)


@pytest.mark.parametrize(("dtype", "value", "want"), [
    (np.float32, 1.0 + 2.0 ** -23, np.float32),
    (np.float16, 1.0 + 2.0 ** -10, np.float32),
    (np.int8, -100, np.float32),
    (np.int16, 30000, np.float32),
    (np.uint8, 200, np.float32),
    (np.uint16, 60000, np.float32),
    (np.int32, 2 ** 30 + 1, np.float64),  # not a float32: 2^30 + 1 rounds to 2^30
    (np.uint32, 2 ** 32 - 1, np.float64),
    (np.int64, 2 ** 40 + 1, np.float64),
    (np.uint64, 2 ** 50 + 3, np.float64),
    (">f8", 1e6 + 1e-3, np.float64),  # big-endian: the native float64 it holds
])
def test_each_dtype_is_read_as_the_library_converts_it(tmp_path: Path, dtype, value, want) -> None:
    x = np.full((3, 2), value, dtype=dtype)
    x[1, 0] = 0
    np.save(tmp_path / "e.npy", x)
    got = load_embeddings(tmp_path / "e.npy")
    assert got.dtype == want and got.dtype.isnative
    assert float(got[0, 0]) == float(value) and float(got[1, 0]) == 0.0  # exact, whatever was stored


def test_values_beyond_float32_and_subnormal_rows_are_kept(tmp_path: Path) -> None:
    """The reader does not know the distance (a cosine index takes 1e300, an evaluation refuses it): it returns
    the values, and float64 rows in float32's subnormal range keep their direction (cast, [1e-45, 1.4e-45]
    became [1.4e-45, 1.4e-45] and [1e-46, 3e-46] became zeros)."""
    x = np.array([[1e300, -2.0], [1e-45, 1.4e-45], [1e-46, 3e-46]])
    np.save(tmp_path / "e.npy", x)
    got = load_embeddings(tmp_path / "e.npy")
    assert got.dtype == np.float64 and np.array_equal(got, x)


def test_non_finite_values_are_still_one_line_naming_the_row(tmp_path: Path) -> None:
    x = _far(5, 3)
    x[3, 1] = np.nan
    np.save(tmp_path / "e.npy", x)
    with pytest.raises(InputError) as err:
        load_embeddings(tmp_path / "e.npy")
    assert str(err.value) == f"{tmp_path / 'e.npy'}: NaN or Inf in 1 row(s), first at row 3 (0-based)"


@pytest.mark.skipif(np.finfo(np.longdouble).max <= np.finfo(np.float64).max, reason="longdouble is float64 here")
def test_a_longdouble_beyond_float64_is_named_as_such(tmp_path: Path) -> None:
    x = np.ones((3, 2), dtype=np.longdouble)
    x[2, 1] = np.longdouble(10) ** 400
    np.save(tmp_path / "e.npy", x)
    with pytest.raises(InputError) as err:
        load_embeddings(tmp_path / "e.npy")
    assert str(err.value) == (f"{tmp_path / 'e.npy'}: values beyond float64's range in 1 row(s), first at row 2 "
                              "(0-based); scale them down")
    x[2, 1] = 0.5
    np.save(tmp_path / "e.npy", x)
    got = load_embeddings(tmp_path / "e.npy")
    assert got.dtype == np.float64 and got[2, 1] == 0.5
