"""Run pytorch-metric-learning's own loss/miner tests against dynametric's classes (the drop-in check of issue 16).

Needs a checkout of https://github.com/KevinMusgrave/pytorch-metric-learning (its ``tests/`` folder) and the
installed ``pytorch-metric-learning`` package. The tests are copied to a temporary folder; a ``conftest.py`` there
replaces every class of ``pytorch_metric_learning.losses`` / ``.miners`` that dynametric implements (same name, in
``dynametric.losses.LOSSES`` / ``dynametric.miners.MINERS``) by dynametric's before the tests import them. Only the
test files that use one of those classes are run, one pytest process per file (``--timeout`` each), and the passing
test functions are counted from pytest's JUnit XML.

    python benchmarks/pml_test_suite.py --pml-repo /path/to/pytorch-metric-learning [--dtypes float32,float64]

Nothing of PML is copied into this repository; the output is a per-file table and the total.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

CONFTEST = '''
import pytorch_metric_learning.losses as _pml_losses
import pytorch_metric_learning.miners as _pml_miners

import dynametric.losses as _dm_losses
import dynametric.miners as _dm_miners

for _module, _registry in ((_pml_losses, _dm_losses.LOSSES), (_pml_miners, _dm_miners.MINERS)):
    for _name, _cls in dict(_registry).items():
        if hasattr(_module, _name):
            setattr(_module, _name, _cls)
'''


def swapped_names() -> list[str]:
    import pytorch_metric_learning.losses as pml_losses
    import pytorch_metric_learning.miners as pml_miners

    from dynametric.losses import LOSSES
    from dynametric.miners import MINERS

    losses = [n for n in dict(LOSSES) if hasattr(pml_losses, n)]
    return sorted(losses + [n for n in dict(MINERS) if hasattr(pml_miners, n)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pml-repo", required=True, type=Path, help="checkout of pytorch-metric-learning")
    parser.add_argument("--dtypes", default="float32,float64", help="PML's TEST_DTYPES (default: float32,float64)")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per test file")
    parser.add_argument("--skip", default="", help="comma-separated test file stems to leave out")
    args = parser.parse_args(argv)
    tests = args.pml_repo / "tests"
    if not (tests / "losses").is_dir() or not (tests / "miners").is_dir():
        parser.error(f"{tests} has no losses/ and miners/ test folders")
    names = swapped_names()
    pattern = re.compile(r"\b(" + "|".join(names) + r")\b")
    skip = {s for s in args.skip.split(",") if s}
    with tempfile.TemporaryDirectory(prefix="pml-suite-") as tmp:
        root = Path(tmp)
        shutil.copytree(tests, root / "tests")
        (root / "conftest.py").write_text(CONFTEST, encoding="utf-8")
        files = sorted(p for sub in ("losses", "miners") for p in (root / "tests" / sub).glob("test_*.py")
                       if pattern.search(p.read_text(encoding="utf-8")) and p.stem not in skip)
        env = {**os.environ, "TEST_DEVICE": "cpu", "TEST_DTYPES": args.dtypes}
        total = passed = 0
        print(f"swapped classes: {', '.join(names)}")
        for path in files:
            xml = root / f"{path.stem}.xml"
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path.relative_to(root)),
                   f"--junitxml={xml}"]
            try:
                subprocess.run(cmd, cwd=root, env=env, capture_output=True, timeout=args.timeout, check=False)
            except subprocess.TimeoutExpired:
                print(f"{path.parent.name}/{path.name}: timed out after {args.timeout} s")
                continue
            suite = ET.parse(xml).getroot()
            suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
            failed = [c.get("name") for c in suite.iter("testcase")
                      if c.find("failure") is not None or c.find("error") is not None]
            n = int(suite.get("tests")) - int(suite.get("skipped"))
            total += n
            passed += n - len(failed)
            print(f"{path.parent.name}/{path.name}: {n - len(failed)}/{n}" + (f"  failed: {failed}" if failed else ""))
        print(f"TOTAL {passed}/{total} test functions pass")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
