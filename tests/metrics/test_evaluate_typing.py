"""``evaluate_embeddings``'s return type as a user's type checker sees it: ``typing.overload`` s keyed on
``per_query`` (``False``, the default: the result dict; ``True``: ``(result, per_query_table)``), so the documented
calls pass ``mypy --strict`` and a wrong unpacking of the plain call is caught where the "table" is used. Also the
argument hints accept what works at runtime (numpy ``k_values``, ``asi_cutoff``, ids and categories)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

import dynametric

GOOD = '''
from __future__ import annotations

import math

import numpy as np

from dynametric.metrics import evaluate_embeddings

rng = np.random.default_rng(0)
emb = rng.standard_normal((200, 16)).astype("float32")
fine = rng.integers(0, 20, 200)
labels = np.stack([fine, fine % 4], axis=1)
res = evaluate_embeddings(emb, labels, metrics=["recall@K", "map@r", "map", "asi"], k_values=(1, 4))
assert res["mean"]["map"] == (res["fine"]["map"] + res["coarse"]["map"]) / 2
r1: float = res["fine"]["recall@1"]
res_q, per_q = evaluate_embeddings(emb, labels, per_query=True)
num_relevant: np.ndarray = per_q["fine"]["num_relevant"]
categories = rng.choice(["bird", "fish", "tree"], 200).tolist()
by = evaluate_embeddings(emb, labels, metrics=["recall@1", "map"], query_categories=categories)["by_category"]
weighted = math.fsum(by[c]["fine"]["map"] for c in by)
res_np = evaluate_embeddings(emb, labels, k_values=np.arange(1, 5), asi_cutoff=np.int64(10),
                             query_ids=np.arange(200) // 2, query_categories=np.array(["a", "b"] * 100))
flag = bool(rng.integers(0, 2))
either = evaluate_embeddings(emb, labels, per_query=flag)
'''

BAD = '''
import numpy as np

from dynametric.metrics import evaluate_embeddings

emb = np.zeros((4, 2), np.float32)
labels = np.arange(4)
res, table = evaluate_embeddings(emb, labels)  # per_query=False: a dict, whose two keys this unpacks
per_fine = table["fine"]["num_relevant"]
'''

CONFIG = '''
[mypy]
strict = True
follow_imports = silent
[mypy-torchvision.*,onnxruntime.*,onnx.*,onnxscript.*,scipy.*,tqdm.*,yaml.*,faiss.*,pytorch_metric_learning.*,sklearn.*]
ignore_missing_imports = True
'''


@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed (the dev extra has it)")
def test_the_documented_calls_pass_mypy_strict_and_a_wrong_unpacking_is_flagged(tmp_path):
    (tmp_path / "good.py").write_text(textwrap.dedent(GOOD))
    (tmp_path / "bad.py").write_text(textwrap.dedent(BAD))
    (tmp_path / "mypy.ini").write_text(CONFIG)
    # one cache for every run of this test on the machine: a cold run reads torch's and numpy's stubs (~30 s),
    # a warm one takes about a second (mypy re-checks what changed)
    cache = Path(tempfile.gettempdir()) / f"dynametric-test-mypy-cache-{os.getuid() if hasattr(os, 'getuid') else 0}"
    src = Path(dynametric.__file__).resolve().parents[1]  # the dynametric under test, not another installed copy
    # a source tree (an editable install, PYTHONPATH=src) is named; an installed copy (CI: pip install .) mypy finds
    # itself, and refuses site-packages in MYPYPATH
    installed = src.name in ("site-packages", "dist-packages")
    env = {**os.environ, **({} if installed else {"MYPYPATH": str(src)})}
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--cache-dir", str(cache),
                           "--no-error-summary", "--hide-error-context", "good.py", "bad.py"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ": error:" in ln]
    assert [ln for ln in lines if ln.startswith("good.py")] == [], proc.stdout + proc.stderr
    bad = [ln for ln in lines if ln.startswith("bad.py")]
    assert len(bad) == 1 and bad[0].startswith("bad.py:9: error: Invalid index type"), proc.stdout + proc.stderr
