"""Fixtures shared by the bad-input tests of every command: a tiny run folder and a small labelled image set."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.retrieval.conftest import make_images, make_run


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("badinput_run"))


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_images(tmp_path_factory.mktemp("badinput_data"))
