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


def _modules() -> list[str]:
    import pkgutil

    import dynametric

    return ["dynametric", *(m.name for m in pkgutil.walk_packages(dynametric.__path__, "dynametric.")
                            if not m.name.endswith("__main__"))]


def test_every_class_and_function_of_a_public_all_has_its_own_docstring() -> None:
    """A class docstring placed after annotated attributes is no docstring (``CSLLoss``, ``BNInception`` had
    ``help()`` show their base class's); every class and function a module exports has its own."""
    import inspect

    missing = []
    for name in _modules():
        module = importlib.import_module(name)
        if not module.__doc__:
            missing.append(name)
        for attr in getattr(module, "__all__", ()):
            obj = getattr(module, attr)
            own = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", "x")
            if (inspect.isclass(obj) or inspect.isfunction(obj)) and not (own or "").strip():
                missing.append(f"{name}.{attr}")
    assert missing == []


def test_the_package_docstring_points_at_the_entry_points() -> None:
    import dynametric

    doc = dynametric.__doc__ or ""
    refs = set(re.findall(r":(?:func|class|mod):`~?([\w.]+)`", doc))
    assert {"dynametric.metrics.evaluate_embeddings", "dynametric.models.build_embedder",
            "dynametric.losses.build_loss", "dynametric.pipeline.run_training", "dynametric.retrieval"} <= refs
    for ref in refs:
        module, _, name = ref.rpartition(".")
        owner = importlib.import_module(module)
        assert hasattr(owner, name) or importlib.util.find_spec(ref) is not None, ref


def test_dynametric_pml_exports_its_public_names() -> None:
    import inspect

    import dynametric.pml as pml

    public = {n for n, v in vars(pml).items() if not n.startswith("_") and not inspect.ismodule(v)
              and getattr(v, "__module__", "dynametric.pml") == "dynametric.pml"}
    assert sorted(pml.__all__) == sorted(public)
    assert {"PML_PREFIX", "PML_CLASSES", "pml_catalogue", "pml_hint", "PMLAwareRegistry"} <= set(pml.__all__)


def test_the_public_classes_document_their_fields_and_methods() -> None:
    """The docstrings a ``help()`` reader relies on say what they should: every field of the result classes, every
    formula helper of ``RankRows``, the label column ``scale`` (and ArcFace / CosFace's ``label_scale``)."""
    import dataclasses
    import typing

    from dynametric.losses import MetricLoss
    from dynametric.metrics.ranking import RankRows, metrics_from_sorted_ranks
    from dynametric.miners import Miner
    from dynametric.models import Embedder
    from dynametric.retrieval.embed import EmbeddingSet, EmbedResult, shard_path

    for cls in (EmbedResult, EmbeddingSet):
        doc = cls.__dict__.get("__doc__") or ""
        for field in dataclasses.fields(cls):
            assert f"``{field.name}``" in doc, (cls.__name__, field.name)
    assert "str" in str(typing.get_type_hints(EmbeddingSet)["source"])  # docs build one with source="x.npy"
    rank_doc = RankRows.__doc__ or ""
    for method in ("sum", "count", "full", "as_float", "denom_at", "harmonic"):
        assert f":meth:`{method}`" in rank_doc, method
    assert "Returns" in (metrics_from_sorted_ranks.__doc__ or "")
    for method in (Embedder.forward, Miner.forward):
        assert (method.__doc__ or "").strip(), method.__qualname__
    assert "shard_" in (shard_path.__doc__ or "")
    assert "``scale``" in (MetricLoss.__doc__ or "") and "``label_scale``" in (MetricLoss.__doc__ or "")
    assert "``scale=``" in (Miner.__doc__ or "") and "``label_scale=``" in (Miner.__doc__ or "")
