"""What a notebook user sees of the package: ``dir(dynametric)`` (tab completion) and the module docstrings that
point at the entry points."""

from __future__ import annotations

import importlib
import importlib.util
import re
import subprocess
import sys


def test_dir_lists_the_public_names_and_modules_not_the_typing_helpers() -> None:
    import dynametric

    names = dir(dynametric)
    assert {"as_label_matrix", "select_scale", "__version__", "InputError", "losses", "metrics", "retrieval",
            "labels"} <= set(names)
    assert not {"Any", "TYPE_CHECKING", "annotations"} & set(names)
    assert names == sorted(names)
    assert all(hasattr(dynametric, n) or importlib.util.find_spec(f"dynametric.{n}") for n in names)


def test_dir_imports_neither_torch_nor_numpy() -> None:
    code = "import sys, dynametric; dir(dynametric); print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_the_retrieval_package_docstring_names_entry_points_that_exist() -> None:
    import dynametric.retrieval as retrieval

    refs = re.findall(r":(?:func|class|mod):`~?([\w.]+)`", retrieval.__doc__ or "")
    assert len(refs) >= 10
    for ref in refs:
        module, _, name = ref.rpartition(".")
        if ref.count(".") == 2:  # a module: dynametric.retrieval.<module>
            importlib.import_module(ref)
            continue
        owner = importlib.import_module(module)
        assert hasattr(owner, name), ref
