"""The Python examples in docs/metrics.md run as written."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"


def test_docs_metrics_example_runs(capsys):
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/metrics.md lost its python example"
    exec(compile(blocks[0], str(DOC), "exec"), {})  # noqa: S102 - the documented example itself
    out = capsys.readouterr().out
    assert "['coarse', 'fine', 'mean']" in out
    for block in blocks[1:]:  # the others (indented inside lists) run too
        exec(compile(textwrap.dedent(block), str(DOC), "exec"), {})  # noqa: S102
