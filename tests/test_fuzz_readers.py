"""Property tests: the label CSV reader and the config reader turn ANY bytes into a result or one of dynametric's
own errors (InputError / ConfigError, printed as one line by the CLI), never another exception.

The examples are bounded (a few hundred, no deadline) so the suite stays fast; the strategies mix raw bytes with
near-valid text (CSV-ish and YAML-ish fragments), where the interesting failures live.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynametric.config import Config, load_config
from dynametric.errors import InputError
from dynametric.utils.readers import load_labels_csv

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

CSV_PIECES = st.sampled_from(["fine", "coarse", ",", "\n", "\r\n", '"', "1", "-3", "99999999999999999999", " ",
                              "\ufeff", "\x00", "x", "1e3", "\t", "٣", "1_0", ""])
YAML_PIECES = st.sampled_from(["trainer:", "optim:", "data:", "\n", "  ", "lr: ", "max_epochs: ", "-1", ".nan",
                               "1e-3", "[", "]", "{", "}", ":", "- ", "&a ", "*a ", "!!python/object:os.system ",
                               "extends: ", "x.yaml", "2020-99-99", "0x1F", "~", "'", '"', "? ", "%TAG ",
                               "loss:", "name: ", "kwargs: {", "monitor: ", "fine/map@r", "\t", "\x00", "é"])


def _text(pieces: st.SearchStrategy[str]) -> st.SearchStrategy[bytes]:
    joined = st.lists(pieces, max_size=40).map("".join)
    return st.one_of(st.binary(max_size=300), joined.map(lambda t: t.encode("utf-8")),
                     st.text(max_size=120).map(lambda t: t.encode("utf-8", "surrogatepass")))


@FUZZ
@given(data=_text(CSV_PIECES))
def test_label_csv_any_bytes(tmp_path_factory, data: bytes) -> None:
    path = Path(tmp_path_factory.mktemp("csv")) / "labels.csv"
    path.write_bytes(data)
    try:
        labels, names = load_labels_csv(path)
    except InputError as exc:
        assert str(path) in str(exc)  # every error names the file
        return
    assert labels.dtype == np.int64 and labels.ndim == 2 and labels.shape[1] == len(names) >= 1
    assert len(labels) >= 1 and all(names)


@FUZZ
@given(data=_text(YAML_PIECES))
def test_config_any_bytes(tmp_path_factory, data: bytes) -> None:
    path = Path(tmp_path_factory.mktemp("cfg")) / "config.yaml"
    path.write_bytes(data)
    try:
        cfg = load_config(path)
    except InputError:  # ConfigError is an InputError
        return
    assert isinstance(cfg, Config)
