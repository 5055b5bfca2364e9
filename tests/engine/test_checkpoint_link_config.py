"""A checkpoint given as a link (`sl/ck.ckpt -> ../run1/best.ckpt`) takes the config.yaml beside the link, else the
one beside the file it links to; with neither, the error names both places (was: `no config.yaml beside
sl/ck.ckpt`, though the run folder the link points into has one)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dynametric.cli import main
from dynametric.engine.inference import config_beside, load_trained
from dynametric.errors import ConfigError
from tests.retrieval.conftest import make_run


@pytest.fixture
def linked(tmp_path: Path) -> Path:
    make_run(tmp_path / "run1")
    (tmp_path / "sl").mkdir()
    link = tmp_path / "sl" / "ck.ckpt"
    link.symlink_to(Path("..") / "run1" / "best.ckpt")
    return link


def test_a_linked_checkpoint_takes_the_config_of_its_run_folder(linked: Path, tmp_path: Path) -> None:
    assert config_beside(linked, None) == tmp_path / "run1" / "config.yaml"
    trained = load_trained(linked)
    assert trained.config_path == tmp_path / "run1" / "config.yaml" and trained.cfg.model.embedding_dim == 16


def test_a_config_beside_the_link_comes_first(linked: Path, tmp_path: Path) -> None:
    make_run(tmp_path / "other", dim=8)
    os.replace(tmp_path / "other" / "config.yaml", tmp_path / "sl" / "config.yaml")
    assert config_beside(linked, None) == tmp_path / "sl" / "config.yaml"


def test_a_link_with_no_config_at_either_end_names_both(linked: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "run1" / "config.yaml").unlink()
    target = tmp_path / "run1" / "best.ckpt"
    with pytest.raises(ConfigError, match=r"^key '--config': no --config given and no config.yaml beside "
                                          rf"{linked} \({tmp_path / 'sl' / 'config.yaml'}\) nor beside the file it "
                                          rf"links to, {target} \({tmp_path / 'run1' / 'config.yaml'}\)$"):
        config_beside(linked, None)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(linked)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"nor beside the file it links to, {target}" in err, err


def test_export_of_a_linked_checkpoint(linked: Path, tmp_path: Path, capsys) -> None:
    """The QA case through a command: `export --checkpoint sl/ck.ckpt` (evaluate reads the same config)."""
    out = tmp_path / "m.pt"
    assert main(["export", "--checkpoint", str(linked), "--out", str(out), "--no-check"]) == 0
    assert out.is_file()


def test_a_plain_checkpoint_without_a_config_names_one_place(tmp_path: Path) -> None:
    ckpt = make_run(tmp_path / "run")
    (tmp_path / "run" / "config.yaml").unlink()
    with pytest.raises(ConfigError, match=rf"^key '--config': no --config given and no config.yaml beside {ckpt}$"):
        config_beside(ckpt, None)
