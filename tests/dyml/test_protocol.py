"""The DyML protocols: per-scale query -> gallery and all-in-one leave-one-out against brute force; the
query_in_gallery modes (disjoint / contained by identity / detect by bytes) and what every result carries."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynametric.data import build_dataset
from dynametric.errors import ConfigError
from dynametric.methods.dyml.protocol import (
    DyMLProtocol,
    evaluate_all_in_one,
    evaluate_query_gallery,
    exclusion_ids,
    image_digests,
    image_identities,
    run_protocol,
)
from tests.dyml.helpers import brute_force, write_release

KEYS = ("asi", "map", "recall@1", "recall@10", "recall@20")


def _close(res: dict, ref: dict) -> None:
    for k in KEYS:
        assert res[k] == pytest.approx(ref[k], abs=1e-6), k
    assert res["num_queries"] == ref["num_queries"]


def test_query_in_gallery_has_no_default_and_options_are_checked() -> None:
    with pytest.raises(ConfigError) as err:
        DyMLProtocol.from_kwargs({"variant": "vehicle"})
    assert err.value.key == "method.kwargs.query_in_gallery" and "no default" in str(err.value)
    with pytest.raises(ConfigError) as err:
        DyMLProtocol.from_kwargs({"variant": "vehicle", "query_in_gallery": "yes"})
    assert err.value.key == "method.kwargs.query_in_gallery"
    with pytest.raises(ConfigError) as err:
        DyMLProtocol.from_kwargs({"variant": "vehicle", "query_in_gallery": "detect", "protocol": "mine"})
    assert err.value.key == "method.kwargs.protocol"
    with pytest.raises(ConfigError) as err:
        DyMLProtocol.from_kwargs({"variant": "vehicle", "query_in_gallery": "detect", "querys": 1})
    assert err.value.key == "method.kwargs.querys"
    # a scalar where a list is expected: one line on the key (10 used to be a TypeError traceback, "fine" split
    # into the scales 'f', 'i', 'n', 'e')
    for name, value, got in (("k_values", 10, "10 (int)"), ("scales", "fine", "'fine' (str)")):
        with pytest.raises(ConfigError) as err:
            DyMLProtocol.from_kwargs({"variant": "vehicle", "query_in_gallery": "detect", name: value})
        assert err.value.key == f"method.kwargs.{name}" and err.value.message.endswith(f"got {got}")
    p = DyMLProtocol.from_kwargs({"variant": "animal", "query_in_gallery": "disjoint"})
    assert p.protocol == "released-files" and p.k_values == (1, 10, 20) and p.asi_cutoff == "R_q"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_query_gallery_matches_brute_force(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    q, gal = torch.randn(13, 5, generator=g), torch.randn(31, 5, generator=g)
    ql = torch.randint(0, 4, (13,), generator=g).tolist()
    gl = torch.randint(0, 5, (31,), generator=g).tolist()
    ql[0] = 9  # no relevant gallery item: excluded and counted
    p = DyMLProtocol("vehicle", "disjoint")
    res = evaluate_query_gallery(q, torch.tensor(ql), gal, torch.tensor(gl), p, scale="fine")
    _close(res, brute_force(q, ql, gal, gl))
    assert res["excluded_queries"] == 1 and res["query_in_gallery"] == "disjoint"
    assert res["excluded_queries_with_match"] == 0 and res["gallery_size"] == 31


def test_contained_excludes_by_identity_never_rank_one() -> None:
    # query 0's own copy (identity "a.jpg") sits at rank 3; rank 1 is another relevant image that must be kept
    q = torch.tensor([[1.0, 0.0]])
    gal = torch.tensor([[1.0, 0.01], [0.9, 0.3], [0.5, 0.5], [-1.0, 0.0]])  # b, c, a, d by decreasing cosine
    gl = [7, 3, 7, 7]
    p = DyMLProtocol("vehicle", "contained")
    res = evaluate_query_gallery(q, torch.tensor([7]), gal, torch.tensor(gl), p, scale="fine",
                                 query_keys=["a.jpg"], gallery_keys=["b.jpg", "c.jpg", "a.jpg", "d.jpg"])
    _close(res, brute_force(q, [7], gal, gl, excluded=[{2}]))
    # gallery without a: b, c, d -> relevant at ranks 1 and 3
    assert res["recall@1"] == 1.0 and res["map"] == pytest.approx((1 + 2 / 3) / 2)
    assert res["asi"] == pytest.approx((1 + 1 / 2) / 2)
    assert res["excluded_queries_with_match"] == 1 and res["queries_without_gallery_copy"] == 0
    dropped_rank1 = brute_force(q, [7], gal, gl, excluded=[{0}])  # the convention this option forbids
    assert dropped_rank1["recall@1"] == 0.0 and dropped_rank1["map"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_exclusion_ids_counts() -> None:
    assert exclusion_ids("disjoint", None, None)[2] == {"excluded_queries_with_match": 0, "excluded_gallery_items": 0}
    q_ids, g_ids, stats = exclusion_ids("detect", ["h1", "h2", "h3"], ["h2", "h9", "h2", "h1"])
    assert q_ids == ["h1", "h2", "h3"] and g_ids == ["h2", "h9", "h2", "h1"]
    assert stats == {"excluded_queries_with_match": 2, "excluded_gallery_items": 3}
    stats = exclusion_ids("contained", ["a", "z"], ["a", "b"])[2]
    assert stats["queries_without_gallery_copy"] == 1
    with pytest.raises(ConfigError):
        exclusion_ids("auto", [], [])


def test_all_in_one_leave_one_out_matches_brute_force_per_scale() -> None:
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(20, 6, generator=g)
    fine = torch.randint(0, 6, (20,), generator=g)
    labels = torch.stack([fine, fine // 2, fine // 4], 1)
    p = DyMLProtocol("product", "disjoint")
    res = evaluate_all_in_one(emb, labels, p)
    assert list(res) == ["fine", "middle", "coarse", "mean"]
    for s, name in enumerate(("fine", "middle", "coarse")):
        col = labels[:, s].tolist()
        ref = brute_force(emb, col, emb, col, excluded=[{i} for i in range(20)])
        _close(res[name], ref)
        assert res[name]["self_excluded_by"] == "identity (index)"
    for k in KEYS:
        assert res["mean"][k] == pytest.approx(sum(res[n][k] for n in ("fine", "middle", "coarse")) / 3)


def test_all_in_one_detect_excludes_identical_copies() -> None:
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    labels = torch.tensor([[0], [0], [1], [1], [1]])
    digests = ["x", "x", "y", "z", "w"]  # items 0 and 1 are the same image
    disjoint = evaluate_all_in_one(emb, labels, DyMLProtocol("product", "disjoint"), scale_names=["fine"])
    detect = evaluate_all_in_one(emb, labels, DyMLProtocol("product", "detect"), scale_names=["fine"],
                                 digests=digests)
    assert disjoint["fine"]["recall@1"] == pytest.approx(4 / 5)  # the copies find each other
    # detect: items 0 and 1 lose their only relevant item and are excluded as empty queries
    assert detect["fine"]["num_queries"] == 3 and detect["fine"]["excluded_queries"] == 2
    assert detect["fine"]["excluded_queries_with_match"] == 2 and detect["fine"]["excluded_gallery_items"] == 2
    ref = brute_force(emb, [0, 0, 1, 1, 1], emb, [0, 0, 1, 1, 1], excluded=[{0, 1}, {0, 1}, {2}, {3}, {4}])
    _close(detect["fine"], ref)


def test_run_protocol_on_a_release_every_mode(tmp_path: Path) -> None:
    root = write_release(tmp_path / "dyml_vehicle", "vehicle")

    def load(split: str):
        return build_dataset("dyml-vehicle", root, split)

    def embed(ds):  # a fixed, image-dependent embedding: mean colour of a 2x2 grid
        import numpy as np

        rows = []
        for i in range(len(ds)):
            img = np.asarray(ds.load_image(i), dtype=np.float32)
            rows.append(torch.from_numpy(img.reshape(2, 6, 2, 6, 3).mean((1, 3)).reshape(-1)))
        return torch.stack(rows), torch.as_tensor(ds.labels)

    results = {m: run_protocol(DyMLProtocol("vehicle", m), embed, load) for m in ("disjoint", "detect")}
    # contained identifies items by resolved path: the released query/ and gallery/ folders hold different files
    # (the copy has the query's file name in another folder), so no query is in the gallery, and that is refused
    with pytest.raises(ConfigError) as err:
        run_protocol(DyMLProtocol("vehicle", "contained"), embed, load)
    assert err.value.key == "method.kwargs.query_in_gallery" and "none of the 6 queries" in str(err.value)
    assert "detect" in str(err.value)
    for mode, res in results.items():
        assert list(res) == ["fine", "middle", "coarse", "mean", "protocol"]
        assert res["protocol"]["query_in_gallery"] == mode and res["protocol"]["tag"] == "released-files"
        for level in ("fine", "middle", "coarse"):
            assert res[level]["query_in_gallery"] == mode
            assert res["protocol"]["sizes"][level] == {"queries": 6, "gallery": 10}
            expected = 0 if mode == "disjoint" else 1
            assert res[level]["excluded_queries_with_match"] == expected
            assert res["protocol"]["excluded_identical_queries"][level] == expected
    # the query's copy is its nearest neighbour: counted as a hit only when nothing is excluded
    for level in ("fine", "middle", "coarse"):
        q, g = load(f"query_{level}"), load(f"gallery_{level}")
        qe, ql = embed(q)
        ge, gl = embed(g)
        excl = [{9} if i == 0 else set() for i in range(6)]
        _close(results["detect"][level], brute_force(qe, ql[:, 0].tolist(), ge, gl[:, 0].tolist(), excluded=excl))
        _close(results["disjoint"][level], brute_force(qe, ql[:, 0].tolist(), ge, gl[:, 0].tolist()))
    assert results["disjoint"]["fine"]["recall@1"] > results["detect"]["fine"]["recall@1"] or \
        results["disjoint"]["fine"]["map"] > results["detect"]["fine"]["map"]


def test_identities_and_digests(tmp_path: Path) -> None:
    root = write_release(tmp_path / "dyml_vehicle", "vehicle")
    q = build_dataset("dyml-vehicle", root, "query_fine")
    g = build_dataset("dyml-vehicle", root, "gallery_fine")
    # the same file name in the query and gallery folders: two files, two identities (resolved path, no box)
    assert image_identities(q)[0] == (str((root / "bmk_fine" / "query" / "6000.jpg").resolve()), None)
    assert image_identities(g)[-1] == (str((root / "bmk_fine" / "gallery" / "6000.jpg").resolve()), None)
    dq, dg = image_digests(q), image_digests(g)
    assert dq[0] == dg[-1] and len(set(dq) | set(dg)) == 15
    from dynametric.data import SyntheticHierarchy

    syn = SyntheticHierarchy(split="test", images_per_class=2, image_size=8, fine_per_shape={"test": 1})
    assert len(set(image_digests(syn))) == len(syn)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 9), st.integers(2, 12), st.integers(1, 4))
def test_detect_excludes_exactly_the_identical_items_property(seed: int, nq: int, ng: int, n_hash: int) -> None:
    g = torch.Generator().manual_seed(seed)
    q, gal = torch.randn(nq, 3, generator=g), torch.randn(ng, 3, generator=g)
    ql = torch.randint(0, 3, (nq,), generator=g)
    gl = torch.randint(0, 3, (ng,), generator=g)
    qk = [f"h{int(v)}" for v in torch.randint(0, n_hash + 3, (nq,), generator=g)]
    gk = [f"h{int(v)}" for v in torch.randint(0, n_hash + 3, (ng,), generator=g)]
    res = evaluate_query_gallery(q, ql, gal, gl, DyMLProtocol("animal", "detect", k_values=(1, 2)), scale="fine",
                                 query_keys=qk, gallery_keys=gk)
    excluded = [{j for j in range(ng) if gk[j] == qk[i]} for i in range(nq)]
    ref = brute_force(q, ql.tolist(), gal, gl.tolist(), excluded=excluded, ks=(1, 2))
    if ref["num_queries"] == 0:
        assert res["num_queries"] == 0
    else:
        for k in ("asi", "map", "recall@1", "recall@2"):
            assert res[k] == pytest.approx(ref[k], abs=1e-6)
        assert res["num_queries"] == ref["num_queries"]
    assert res["excluded_queries_with_match"] == sum(1 for e in excluded if e)
    assert res["excluded_gallery_items"] == sum(len(e) for e in excluded)


def test_per_scale_mean_keeps_int_and_numpy_metric_values_of_a_callers_evaluate(tmp_path: Path) -> None:
    # the per-scale protocols average each scale's query -> gallery metrics; a metric an evaluate of the caller's
    # gives as an int or a numpy float32 was dropped from the mean (only Python floats counted), while the counts
    # (the evaluation's and the protocol's) stay out of it
    import numpy as np

    from dynametric.metrics import evaluate_embeddings

    root = write_release(tmp_path / "dyml_vehicle", "vehicle")

    def load(split: str):
        return build_dataset("dyml-vehicle", root, split)

    def embed(ds):
        rows = [torch.from_numpy(np.asarray(ds.load_image(i), dtype=np.float32).reshape(2, 6, 2, 6, 3)
                                 .mean((1, 3)).reshape(-1)) for i in range(len(ds))]
        return torch.stack(rows), torch.as_tensor(ds.labels)

    calls = []

    def evaluate(*args, **kwargs):
        res = evaluate_embeddings(*args, **kwargs)
        (scale,) = [k for k in res if k != "mean"]
        calls.append(scale)
        res[scale]["hits@1"] = len(calls)  # an int metric: 1, 2, 3 over the three scales
        res[scale]["recall@1"] = np.float32(res[scale]["recall@1"])
        return res

    res = run_protocol(DyMLProtocol("vehicle", "disjoint"), embed, load, evaluate=evaluate)
    assert calls == ["fine", "middle", "coarse"]
    assert res["mean"]["hits@1"] == 2.0
    assert res["mean"]["recall@1"] == pytest.approx(np.mean([res[s]["recall@1"] for s in calls]))
    assert not {"num_queries", "excluded_queries", "empty_queries", "gallery_size", "excluded_queries_with_match",
                "excluded_gallery_items"} & set(res["mean"])
