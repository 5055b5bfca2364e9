"""Evaluation protocols as one interface: leave-one-out, query -> gallery and DyML run through
``EvaluationProtocol.run`` with the same numbers as a direct evaluation, on both ranking engines; `dynametric
evaluate --checkpoint` reruns a query -> gallery run's test protocol, its own-copy exclusion included."""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from dynametric.cli import main
from dynametric.engine.protocols import EmbeddedSet, EvaluationProtocol, LeaveOneOut, QueryGallery, image_identities
from dynametric.methods.dyml.protocol import DyMLProtocol, run_protocol
from dynametric.metrics import evaluate_embeddings
from dynametric.pipeline import protocol_from_config


@dataclass
class _Set:
    """An in-memory split: embeddings stand in for the model's output, ``paths`` give file-name identities."""

    emb: torch.Tensor
    labels: torch.Tensor
    paths: list[str] | None
    scale_names: list[str]
    images: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.emb)


def _splits(seed: int = 0) -> dict[str, _Set]:
    rng = np.random.default_rng(seed)
    names = ["fine", "coarse"]

    def make(n: int, prefix: str) -> _Set:
        emb = torch.from_numpy(rng.integers(-2, 3, (n, 6)).astype(np.float32))
        fine = torch.from_numpy(rng.integers(0, 6, n))
        return _Set(emb, torch.stack([fine, fine // 3], 1), [f"/x/{prefix}{i}.jpg" for i in range(n)], names)

    q, g = make(12, "q"), make(30, "g")
    # the first four queries also sit in the gallery: the same files (same embedding, same labels)
    g.emb[:4], g.labels[:4], g.paths[:4] = q.emb[:4], q.labels[:4], q.paths[:4]
    # four other gallery files carry the next queries' file names in another folder: different images
    g.paths[4:8] = [p.replace("/x/q", "/y/q") for p in q.paths[4:8]]
    return {"test": make(40, "t"), "query": q, "gallery": g}


def _embed(ds: _Set) -> tuple[torch.Tensor, torch.Tensor]:
    return ds.emb, ds.labels


def test_every_protocol_is_one_interface():
    dyml = DyMLProtocol("vehicle", "contained", scales=("fine", "coarse"))
    for p, splits in ((LeaveOneOut("test"), ["test"]), (QueryGallery("query", "gallery"), ["query", "gallery"]),
                      (dyml, ["query_fine", "gallery_fine", "query_coarse", "gallery_coarse"]),
                      (DyMLProtocol("all_in_one", "disjoint").bind(test_split="val"), ["val"])):
        assert isinstance(p, EvaluationProtocol)
        assert p.required_splits() == splits
    assert dyml.view_split() == "gallery_fine" and QueryGallery().view_split() is None
    assert LeaveOneOut().name == "leave_one_out" and QueryGallery().name == "query_gallery"
    assert dyml.name == dyml.header()["name"] == "dyml-vehicle"


@pytest.mark.parametrize("engine", ["cpu", "torch"])
def test_generic_protocols_equal_a_direct_evaluation(engine):
    sets = _splits()
    evaluate = functools.partial(evaluate_embeddings, metrics=["recall@K", "map@r", "map"], k_values=(1, 4),
                                 ranking_engine=engine)
    loo = LeaveOneOut("test").run(sets.__getitem__, _embed, evaluate)
    t = sets["test"]
    assert loo == evaluate(t.emb, t.labels, scale_names=["fine", "coarse"])
    q, g = sets["query"], sets["gallery"]
    got = QueryGallery("query", "gallery", True).run(sets.__getitem__, _embed, evaluate)
    want = evaluate(q.emb, q.labels, g.emb, g.labels, scale_names=["fine", "coarse"],
                    query_ids=[(p, None) for p in q.paths], gallery_ids=[(p, None) for p in g.paths])
    assert got.pop("protocol") == {"name": "query_gallery", "query_split": "query", "gallery_split": "gallery",
                                   "queries": 12, "gallery": 30, "query_in_gallery": True, "queries_in_gallery": 4,
                                   "same_sequence_excluded": False, "excluded_pairs": 4}
    assert got == want
    # disjoint sets (the gallery without the four query files; its files named like queries in /y/ are other
    # images): query_in_gallery false ranks exactly as a plain query -> gallery evaluation, nothing excluded
    sets["gallery"] = _Set(g.emb[4:], g.labels[4:], g.paths[4:], g.scale_names)
    got = QueryGallery("query", "gallery", False).run(sets.__getitem__, _embed, evaluate)
    assert got.pop("protocol")["queries_in_gallery"] == 0
    assert got == evaluate(q.emb, q.labels, g.emb[4:], g.labels[4:], scale_names=["fine", "coarse"])


def test_queries_in_the_gallery_with_query_in_gallery_false_are_refused_before_embedding(tmp_path: Path):
    """Every OML row both query and gallery, query_in_gallery left false: with random embeddings each query would
    find itself at rank 1 (recall@1 1.0); refused, one line naming the key, the count and the first items."""
    from dynametric.data import build_dataset
    from dynametric.errors import ConfigError

    _both_roles_oml(tmp_path, 3)
    datasets = {s: build_dataset("oml", tmp_path, s) for s in ("query", "gallery")}
    embedded: list[object] = []

    def embed(ds):
        embedded.append(ds)
        return torch.randn(len(ds), 4, generator=torch.Generator().manual_seed(0)), ds.labels

    with pytest.raises(ConfigError) as err:
        QueryGallery("query", "gallery", False).run(datasets.__getitem__, embed)
    assert not embedded  # refused before anything was embedded
    message = str(err.value)
    assert err.value.key == "eval.query_in_gallery" and "\n" not in message
    assert "6 of the 6 queries of split 'query' are also in the gallery split 'gallery'" in message
    assert f"'{tmp_path}/cls0/0.png'" in message and "expected true" in message
    with pytest.raises(ConfigError, match="6 of the 6 queries"):  # evaluate() on embeddings checks it too
        QueryGallery().evaluate({s: EmbeddedSet(d, *embed(d)) for s, d in datasets.items()})
    # one split as both query and gallery is the same case
    with pytest.raises(ConfigError, match="6 of the 6 queries"):
        QueryGallery("query", "query").run(datasets.__getitem__, embed)


def _both_roles_oml(root: Path, classes: int) -> None:
    """OML's usual layout: ``classes`` classes of images ``cls<c>/0.png`` and ``cls<c>/1.png`` (pixel value 10 c + k),
    every validation row both query and gallery."""
    rows = ["label,path,split,is_query,is_gallery"]
    for c in range(classes):
        for k in range(2):
            _png(root / f"cls{c}" / f"{k}.png", 10 * c + k)
            rows.append(f"{c},cls{c}/{k}.png,validation,True,True")
    (root / "df.csv").write_text("\n".join(rows) + "\n")


def _png(path: Path, value: int = 0) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(path)


def test_query_in_gallery_excludes_the_item_itself_not_files_of_the_same_name(tmp_path: Path):
    """OML's usual layout (every validation row both query and gallery, per-class file numbering): image k of class
    c sits nearest image k of the other class. Each query loses only its own row: its nearest candidate is then the
    other class's same-numbered image (recall@1 0, as OML's cmc@1), never dropped for sharing the name ``k.png``."""
    from dynametric.data import build_dataset

    _both_roles_oml(tmp_path, 2)
    q, g = build_dataset("oml", tmp_path, "query"), build_dataset("oml", tmp_path, "gallery")
    # e(c, k) = onehot(k) + 0.5 onehot(c): cos to (1-c, k) = 0.8, to (c, 1-k) = 0.2, to (1-c, 1-k) = 0
    emb = torch.tensor([[1.0 * (j == k) for j in range(2)] + [0.5 * (j == c) for j in range(2)]
                        for c in range(2) for k in range(2)])
    sets = {"query": EmbeddedSet(q, emb, q.labels), "gallery": EmbeddedSet(g, emb, g.labels)}
    res = QueryGallery("query", "gallery", query_in_gallery=True).evaluate(sets)
    # every query: its own row excluded; ranks: other class (0.8), own class (0.2, the one relevant item), other
    assert res["label"]["recall@1"] == 0.0 and res["label"]["recall@2"] == 1.0
    assert res["label"]["map@r"] == 0.0 and res["label"]["map"] == pytest.approx(0.5)
    assert res["label"]["num_queries"] == 4 and res["protocol"]["queries_in_gallery"] == 4


def test_image_identities_are_resolved_paths_and_boxes(tmp_path: Path):
    _png(tmp_path / "d" / "a.png")
    _png(tmp_path / "e" / "a.png")
    (tmp_path / "link").symlink_to(tmp_path / "d")
    paths = [str(tmp_path / "d" / "a.png"), f"{tmp_path}/d/./a.png", str(tmp_path / "link" / "a.png"),
             str(tmp_path / "e" / "a.png")]
    ids = image_identities(_Set(torch.zeros(4, 1), torch.zeros(4, 1, dtype=torch.long), paths, ["fine"]))
    assert ids is not None and ids[0] == ids[1] == ids[2] == (str((tmp_path / "d" / "a.png").resolve()), None)
    assert ids[3] != ids[0]  # the same file name in another folder: another image
    cropped = _Set(torch.zeros(2, 1), torch.zeros(2, 1, dtype=torch.long), paths[:2], ["fine"])
    cropped.boxes = [(0, 0, 2, 2), (2, 2, 4, 4)]  # type: ignore[attr-defined]  # two boxes of one image
    boxed = image_identities(cropped)
    assert boxed is not None and boxed[0] != boxed[1]
    assert image_identities(_Set(torch.zeros(1, 1), torch.zeros(1, 1, dtype=torch.long), None, ["fine"])) is None


def test_a_file_listed_as_query_and_gallery_in_a_csv_is_one_item(tmp_path: Path):
    """CSV query / gallery rows: the same file (``imgs/a.png`` and ``./imgs/a.png``) is one item; ``other/a.png``
    and ``other/b.png`` share the queries' file names but are other images and stay candidates."""
    from dynametric.data import build_dataset

    for name in ("imgs/a.png", "imgs/b.png", "other/a.png", "other/b.png", "imgs/c.png"):
        _png(tmp_path / name)
    (tmp_path / "labels.csv").write_text("path,split,fine\nimgs/a.png,query,0\nimgs/b.png,query,1\n"
                                         "./imgs/a.png,gallery,0\nother/a.png,gallery,0\nother/b.png,gallery,1\n"
                                         "imgs/c.png,gallery,1\n")
    q, g = build_dataset("csv", tmp_path, "query"), build_dataset("csv", tmp_path, "gallery")
    qe = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    ge = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [-0.6, -0.8]])
    res = QueryGallery("query", "gallery", True).evaluate({"query": EmbeddedSet(q, qe, q.labels),
                                                           "gallery": EmbeddedSet(g, ge, g.labels)})
    # query a: its own file excluded; other/a (0.8, relevant) first. query b (not in the gallery): other/b (0.8,
    # relevant), other/a (0.6), imgs/a (0), imgs/c (-0.8, relevant): relevant ranks 1 and 4
    assert res["fine"]["num_queries"] == 2 and res["fine"]["recall@1"] == 1.0
    assert res["fine"]["map"] == pytest.approx((1 + (1 + 2 / 4) / 2) / 2)
    assert res["fine"]["map@r"] == pytest.approx((1 + 1 / 2) / 2)
    assert res["protocol"]["queries_in_gallery"] == 1


def _oml_sets(root: Path, rows: list[str], degrees: list[float]) -> dict[str, EmbeddedSet]:
    """An OML CSV of ``rows`` (``label,path,is_query,is_gallery,sequence``, validation) and embeddings at the given
    angles (``[cos, sin]``), one per row, as query and gallery ``EmbeddedSet``s."""
    from dynametric.data import build_dataset

    lines = ["label,path,split,is_query,is_gallery,sequence"]
    for r in rows:
        label, path, *rest = r.split(",")
        _png(root / path)
        lines.append(",".join([label, path, "validation", *rest]))
    (root / "df.csv").write_text("\n".join(lines) + "\n")
    emb = {Path(r.split(",")[1]).name: [math.cos(math.radians(d)), math.sin(math.radians(d))]
           for r, d in zip(rows, degrees)}
    out = {}
    for split in ("query", "gallery"):
        ds = build_dataset("oml", root, split)
        out[split] = EmbeddedSet(ds, torch.tensor([emb[Path(p).name] for p in ds.paths]), ds.labels)
    return out


def test_oml_sequence_and_own_row_are_excluded_together(tmp_path: Path):
    """OML's calc_mask_to_ignore: a query ignores its own row and every gallery row of its sequence."""
    sets = _oml_sets(tmp_path, ["0,a0.png,True,True,s1",    # 0 deg
                                "0,a1.png,False,True,s1",   # 2 deg: a0's near-duplicate frame, same sequence
                                "0,a2.png,False,True,s2",   # 60 deg
                                "1,b0.png,True,True,s3",    # 90 deg
                                "1,b1.png,False,True,s4"],  # 30 deg
                     [0, 2, 60, 90, 30])
    res = QueryGallery("query", "gallery", True).evaluate(sets)
    # a0: without a0, a1 (its sequence): b1 (30), a2 (60, relevant), b0 -> relevant at rank 2 of R = 1
    # b0: without b0: a2 (30 deg away), b1 (60, relevant), a1, a0 -> relevant at rank 2 of R = 1
    assert res["label"]["recall@1"] == 0.0 and res["label"]["recall@2"] == 1.0
    assert res["label"]["map"] == pytest.approx(0.5) and res["label"]["num_queries"] == 2
    info = res["protocol"]
    assert info["queries_in_gallery"] == 2 and info["same_sequence_excluded"] is True
    assert info["excluded_pairs"] == 3  # a0: a0, a1; b0: b0
    assert sets["gallery"].dataset.sequence_ids == ["s1", "s1", "s2", "s3", "s4"]


def test_oml_sequence_is_excluded_in_disjoint_query_and_gallery_sets(tmp_path: Path):
    sets = _oml_sets(tmp_path, ["0,q.png,True,False,s1",    # 0 deg
                                "0,g1.png,False,True,s1",   # 1 deg, the query's sequence
                                "0,g2.png,False,True,s2",   # 50 deg
                                "1,g3.png,False,True,s3"],  # 20 deg
                     [0, 1, 50, 20])
    res = QueryGallery("query", "gallery", False).evaluate(sets)
    assert res["label"]["recall@1"] == 0.0 and res["label"]["map"] == pytest.approx(0.5)  # g3, then g2
    assert res["protocol"]["queries_in_gallery"] == 0 and res["protocol"]["excluded_pairs"] == 1


def test_one_item_in_two_sequences_is_refused(tmp_path: Path):
    from dynametric.errors import InputError

    # one image on two rows, a query of sequence s1 and a gallery item of sequence s2
    sets = _oml_sets(tmp_path, ["0,a.png,True,False,s1", "0,a.png,False,True,s2", "0,b.png,False,True,s3"],
                     [0, 0, 10])
    with pytest.raises(InputError, match=r"a.png' is a query of sequence 's1' but a gallery item of sequence 's2'"):
        QueryGallery("query", "gallery", True).evaluate(sets)


def test_dyml_contained_excludes_the_same_file_only():
    def one(paths: list[str], emb: list[list[float]], labels: list[int]) -> _Set:
        return _Set(torch.tensor(emb), torch.tensor(labels).reshape(-1, 1), paths, ["fine"])

    sets = {"query_fine": one(["/x/q0.jpg", "/x/q1.jpg"], [[1.0, 0.0], [0.0, 1.0]], [0, 1]),
            "gallery_fine": one(["/x/q0.jpg", "/y/q1.jpg", "/x/g2.jpg"], [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]],
                                [0, 1, 0])}
    res = DyMLProtocol("vehicle", "contained", scales=("fine",)).run(sets.__getitem__, _embed)
    # q0 loses its own file (/x/q0.jpg) and finds g2; q1 keeps /y/q1.jpg (same name, another file) at rank 1
    assert res["fine"]["excluded_queries_with_match"] == 1 and res["fine"]["queries_without_gallery_copy"] == 1
    assert res["fine"]["num_queries"] == 2 and res["fine"]["recall@1"] == 1.0


def test_identities_are_computed_once_per_dataset_by_the_protocols(monkeypatch):
    """QueryGallery (check and exclusion) and DyML contained (per scale), run twice on the same datasets: one
    computation per dataset; one split as both query and gallery needs none (its indices)."""
    import dynametric.data.splits as splits
    import dynametric.engine.protocols as protocols
    import dynametric.methods.dyml.protocol as dyml_module

    computed: list[object] = []
    real = splits.image_identities

    def counting(dataset):
        computed.append(dataset)
        return real(dataset)

    for module in (splits, protocols, dyml_module):  # wherever a protocol may call it from
        monkeypatch.setattr(module, "image_identities", counting)
    sets = _splits()
    first = QueryGallery("query", "gallery", True).run(sets.__getitem__, _embed)
    assert QueryGallery("query", "gallery", True).run(sets.__getitem__, _embed) == first
    assert first["protocol"]["queries_in_gallery"] == 4
    assert len(computed) == 2 and computed[0] is sets["query"] and computed[1] is sets["gallery"]
    computed.clear()
    assert QueryGallery("test", "test", True).run(sets.__getitem__, _embed)["protocol"]["queries_in_gallery"] == 40
    assert computed == []
    dyml = {"query_fine": sets["query"], "gallery_fine": sets["gallery"], "query_coarse": sets["query"],
            "gallery_coarse": sets["gallery"]}
    res = DyMLProtocol("vehicle", "contained", scales=("fine", "coarse")).run(
        dyml.__getitem__, lambda ds: (ds.emb, ds.labels[:, :1]))  # per scale: one label column
    assert res["fine"]["excluded_queries_with_match"] == res["coarse"]["excluded_queries_with_match"] == 4
    assert computed == []  # the query and gallery datasets' identities are those computed above


def test_run_still_takes_the_deprecated_identities_argument():
    """`run(load, embed, evaluate, identities)` (docs/metrics.md until this release): a DeprecationWarning; a given
    split's identities are used as its dataset's, and the others the protocol knows are added to the mapping."""
    sets = _splits()
    q, g = sets["query"], sets["gallery"]
    # the caller says the four shared files are other items: query_in_gallery=true then finds no query inside
    given: dict = {"gallery": [(f"/elsewhere/{i}.jpg", None) for i in range(len(g))]}
    with pytest.warns(DeprecationWarning, match="identities"), pytest.raises(Exception, match="none of the 12"):
        QueryGallery("query", "gallery", True).run(sets.__getitem__, _embed, None, given)
    assert list(given) == ["gallery", "query"] and given["query"] == [(p, None) for p in q.paths]
    fresh = _splits()  # new datasets: computed from their files, and the mapping filled with both
    filled: dict = {}
    with pytest.warns(DeprecationWarning):
        res = QueryGallery("query", "gallery", True).run(fresh.__getitem__, _embed, None, filled)
    assert res["protocol"]["queries_in_gallery"] == 4
    assert filled == {s: [(p, None) for p in fresh[s].paths] for s in ("query", "gallery")}


def test_dyml_protocol_through_the_interface_on_both_engines():
    rng = np.random.default_rng(3)
    sets = _splits(3)
    sets["test"].paths = None  # in memory: detect hashes the pixel arrays
    sets["test"].images = rng.integers(0, 256, (40, 2, 2), dtype=np.uint8)
    sets["test"].images[7] = sets["test"].images[2]  # a byte-identical pair: each excludes the other
    protocol = DyMLProtocol("all_in_one", "detect", k_values=(1, 2))
    ref = run_protocol(protocol, _embed, sets.__getitem__, scale_names=["fine", "coarse"])
    assert ref["fine"]["excluded_queries_with_match"] == 2
    for engine in ("cpu", "torch"):
        evaluate = functools.partial(evaluate_embeddings, ranking_engine=engine, metrics=["nmi"], k_values=(5,))
        got = protocol.bind(scale_names=["fine", "coarse"]).run(sets.__getitem__, _embed, evaluate)
        # the protocol's own metric options win over the caller's; the engines agree to 1e-12 (summation order)
        assert got.pop("protocol") == ref["protocol"] and list(got) == [k for k in ref if k != "protocol"]
        for scale, values in got.items():
            assert list(values) == list(ref[scale])
            assert values == {k: pytest.approx(v, abs=1e-12) if isinstance(v, float) else v
                              for k, v in ref[scale].items()}


QG_CONFIG = """
data: {{format: oml, root: {root}, transform: small, image_size: 8, m: 2, batch_size: 8, val_split: null,
        val_fraction: 0.25, eval_batch_size: 64}}
model: {{backbone: simple_cnn, embedding_dim: 8, pooling: max, backbone_kwargs: {{width: 4, depth: 2}}}}
optim: {{lr: 0.003}}
eval: {{metrics: [recall@K, map, asi], k_values: [1, 10], protocol: query_gallery, query_split: query,
        gallery_split: gallery, query_in_gallery: true}}
trainer: {{max_epochs: 1, progress_bar: false, log_every_n_steps: 1, monitor: mean/map}}
run: {{report: false}}
"""


def _oml_rows(root: Path) -> None:
    """An OML CSV: 8 training classes; 3 validation classes of 3 images, the first of each both query and gallery
    (its own item in the gallery), the others gallery only."""
    rng = np.random.default_rng(0)
    rows = ["label,path,split,is_query,is_gallery"]
    for c in range(11):
        for i in range(3 if c >= 8 else 4):
            _png(root / f"c{c}" / f"{i}.png", int(rng.integers(0, 255)))
            flags = ",," if c < 8 else (",True,True" if i == 0 else ",False,True")
            rows.append(f"{c},c{c}/{i}.png,{'train' if c < 8 else 'validation'}{flags}")
    (root / "df.csv").write_text("\n".join(rows) + "\n")


def _train_query_gallery_run(tmp_path: Path) -> tuple[Path, Path]:
    """Trains the query -> gallery run of ``QG_CONFIG`` on ``_oml_rows`` data: ``(its config, its run folder)``."""
    root = tmp_path / "oml"
    _oml_rows(root)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(QG_CONFIG.format(root=root))
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    return cfg, out


def test_evaluate_checkpoint_reruns_the_query_gallery_test_of_a_run(tmp_path: Path, capsys):
    cfg, out = _train_query_gallery_run(tmp_path)
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert test["protocol"]["queries_in_gallery"] == 3 and test["label"]["num_queries"] == 3
    assert main(["evaluate", "--checkpoint", str(out / "best.ckpt"), "--metrics", "recall@K", "map", "asi", "--k",
                 "1", "10", "--device", "cpu", "--json", str(tmp_path / "ev.json")]) == 0
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["protocol"] == test["protocol"] and ev["protocol"]["query_in_gallery"] is True
    for m in ("recall@1", "recall@10", "map", "asi", "num_queries"):
        assert ev["label"][m] == pytest.approx(test["label"][m], abs=1e-6), m
    # eval.query_in_gallery=false would let each query find its own item: refused, one line
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "best.ckpt"), "--device", "cpu", "--set",
                 "eval.query_in_gallery=false"]) == 2
    err = capsys.readouterr().err.strip()
    assert "key 'eval.query_in_gallery'" in err
    assert "3 of the 3 queries of split 'query' are also in the gallery split 'gallery'" in err
    assert len(err.splitlines()) == 1
    from dynametric.config import load_config

    assert protocol_from_config(load_config(cfg)) == QueryGallery("query", "gallery", True)
    assert protocol_from_config(load_config(cfg), split="val") == LeaveOneOut("val")


def test_item_identities_are_computed_once_per_dataset_over_a_run_and_evaluate_checkpoint(tmp_path: Path,
                                                                                            monkeypatch):
    """The item identities (a realpath per item) of a query -> gallery run with validation: the test's query and
    gallery splits' were computed by `QueryGallery.embed_splits` (the check before embedding), again by `evaluate`
    (the exclusion), and once more before training (`_held_out_data`), 3 times each over the run's two tests
    (untrained and trained); now once per dataset, kept with it (`dataset_identities`), and the training and
    validation data's once each (the held-out check). `evaluate --checkpoint` computed the test splits' twice: once.
    Every dataset whose identities were computed is kept alive here, so that no computation can hide behind a
    collected dataset's reused address."""
    import dynametric.data.splits as splits
    import dynametric.engine.protocols as protocols

    seen: list[object] = []
    real = splits.image_identities
    realpaths = [0]

    def counted(dataset):
        seen.append(dataset)
        realpaths[0] += len(dataset.paths)
        return real(dataset)

    def per_dataset() -> list[tuple[str, int]]:  # (split, computations) for each dataset computed
        ids = [id(d) for d in seen]
        return sorted((getattr(d, "split", None), ids.count(id(d))) for d in {id(d): d for d in seen}.values())

    monkeypatch.setattr(splits, "image_identities", counted)
    monkeypatch.setattr(protocols, "image_identities", counted)
    _, out = _train_query_gallery_run(tmp_path)
    # 8 training classes of 4 images (6 train, 2 carved for validation), 3 queries, 9 gallery images
    assert per_dataset() == [("gallery", 1), ("query", 1), ("train", 1), ("val", 1)]  # query, gallery: were 3 each
    assert realpaths[0] == 24 + 8 + 3 + 9
    test = json.loads((out / "metrics.json").read_text())["test"]
    assert test["protocol"]["queries_in_gallery"] == 3
    seen.clear()
    realpaths[0] = 0
    assert main(["evaluate", "--checkpoint", str(out / "best.ckpt"), "--metrics", "recall@K", "map", "asi", "--k",
                 "1", "10", "--device", "cpu", "--json", str(tmp_path / "ev.json")]) == 0
    assert per_dataset() == [("gallery", 1), ("query", 1)] and realpaths[0] == 3 + 9  # were twice each
    ev = json.loads((tmp_path / "ev.json").read_text())
    assert ev["protocol"] == test["protocol"] and ev["protocol"]["queries_in_gallery"] == 3
    for m in ("recall@1", "recall@10", "map", "asi", "num_queries"):
        assert ev["label"][m] == pytest.approx(test["label"][m], abs=1e-6), m
