"""What `dynametric train` (and its dry run) says about a DyML release before anything is written: a test file the
release lacks is named, keyed on data.root (was a wrong split suggestion keyed on data.test_split, which the user
never set), and a root named for another release is said as `data inspect` says it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynametric.cli import main
from tests.dyml.helpers import write_release

CFG = """
data: {{format: dyml-{variant}, root: {root}, transform: small, image_size: 16, sampler: three_scale, m: 2,
        batch_size: 12, val_split: null, val_fraction: 0.25, eval_batch_size: 64}}
model: {{backbone: simple_cnn, embedding_dim: 8, pooling: max, backbone_kwargs: {{width: 4, depth: 2}}}}
loss: {{name: CSLLoss}}
eval: {{metrics: [recall@K, map, asi], k_values: [1, 10, 20]}}
trainer: {{max_steps: 1, max_epochs: 1, progress_bar: false, monitor: mean/map}}
method: {{name: dyml, kwargs: {{variant: {variant}, query_in_gallery: detect}}}}
run: {{report: false}}
"""


def _config(tmp_path: Path, variant: str, root: Path) -> Path:
    cfg = tmp_path / f"{variant}.yaml"
    cfg.write_text(CFG.format(variant=variant, root=root))
    return cfg


@pytest.mark.parametrize("variant, removed, split", [
    ("vehicle", "bmk_fine/gallery.csv", "gallery_fine"),
    ("product", "mini-bmk_all_in_one/label.csv", "test"),
])
def test_a_missing_benchmark_file_is_named_on_data_root(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                        variant: str, removed: str, split: str) -> None:
    """Was `key 'data.test_split': ... has the splits train, query_fine, ...; did you mean 'gallery_middle'?` (and
    for Product only `has the splits train`)."""
    root = write_release(tmp_path / f"dyml_{variant}", variant)
    (root / removed).unlink()
    cfg = _config(tmp_path, variant, root)
    expected = (f"{cfg}:2 key 'data.root': the DyML {variant!r} protocol tests on split {split!r}, but its file "
                f"{root / removed} is not found: data.root holds no complete dyml-{variant} release")
    assert main(["train", "--config", str(cfg), "--dry-run"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"dynametric train: error: {expected}"
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"dynametric train: error: {expected}"
    assert not out.exists()


def test_a_root_of_another_release_is_named_with_its_test_files(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A Product release read as Vehicle: its bmk files are all missing, and the root holds Product's test set."""
    root = write_release(tmp_path / "release", "product")
    cfg = _config(tmp_path, "vehicle", root)
    assert main(["train", "--config", str(cfg), "--dry-run"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"dynametric train: error: {cfg}:2 key 'data.root': the DyML 'vehicle' protocol tests on split "
        f"'query_fine', but its file {root / 'bmk_fine' / 'query.csv'} is not found (nor are 5 more of the "
        "release's test files): data.root holds no complete dyml-vehicle release; it holds the test files of "
        "dyml-product: is data.format right?")


def test_a_root_named_for_another_release_is_said_by_the_run_and_its_dry_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`dyml_vehicle` read as dyml-animal: the note was only in `data inspect`."""
    root = write_release(tmp_path / "dyml_vehicle", "animal")  # (Animal's layout is Vehicle's)
    cfg = _config(tmp_path, "animal", root)
    note = ("note: the root is named 'dyml_vehicle' but is read as dyml-animal (data.format: dyml-animal)")
    assert main(["train", "--config", str(cfg), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert note in captured.err.splitlines() and note not in captured.out
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert note in capsys.readouterr().err.splitlines()
    vehicle = _config(tmp_path, "vehicle", root)  # the name fits: nothing said
    assert main(["train", "--config", str(vehicle), "--dry-run"]) == 0
    assert "root is named" not in capsys.readouterr().err
