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
