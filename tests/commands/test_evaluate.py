"""``dynametric evaluate``: table and JSON output, input formats, and clear errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dynametric.cli import main
from dynametric.metrics import evaluate_embeddings


def _write_labels(path, labels, header=("fine", "coarse")):
    lines = [",".join(header)] + [",".join(str(v) for v in row) for row in labels]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture()
def data(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 5)).astype(np.float32)
    fine = rng.integers(0, 8, 40)
    labels = np.stack([fine, fine % 3], 1)
    np.save(tmp_path / "e.npy", x)
    _write_labels(tmp_path / "l.csv", labels)
    return tmp_path, x, labels


def test_table_and_json_match_the_api(data, capsys):
    tmp, x, labels = data
    out_json = tmp / "out" / "r.json"
    rc = main(["evaluate", "--embeddings", str(tmp / "e.npy"), "--labels", str(tmp / "l.csv"), "--metrics",
               "recall@K,map", "asi", "--k", "1", "5", "--json", str(out_json)])
    assert rc == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].split()[:5] == ["scale", "recall@1", "recall@5", "map", "asi"]
    assert [line.split()[0] for line in printed[2:5]] == ["fine", "coarse", "mean"]
    got = json.loads(out_json.read_text())
    assert list(got) == ["fine", "coarse", "mean"]
    ref = evaluate_embeddings(x, labels, metrics=["recall@K", "map", "asi"], k_values=(1, 5),
                              scale_names=["fine", "coarse"])
    for scale in ("fine", "coarse", "mean"):
        for m in ("recall@1", "recall@5", "map", "asi"):
            assert got[scale][m] == pytest.approx(ref[scale][m])
            assert 0.0 <= got[scale][m] <= 1.0
            assert f"{ref[scale][m]:.4f}" in printed[2 + ["fine", "coarse", "mean"].index(scale)]
    assert got["fine"]["num_queries"] == 40 and got["fine"]["excluded_queries"] == 0


def test_query_gallery_with_pt_and_safetensors_and_ids(data, capsys):
    tmp, x, labels = data
    torch.save(torch.from_numpy(x[:10]), tmp / "q.pt")
    save_file({"embeddings": torch.from_numpy(x)}, str(tmp / "g.safetensors"))
    _write_labels(tmp / "ql.csv", labels[:10])
    (tmp / "qid.txt").write_text("\n".join(f"i{i}" for i in range(10)) + "\n")
    (tmp / "gid.txt").write_text("\n".join(f"i{i}" for i in range(40)) + "\n")
    rc = main(["evaluate", "--embeddings", str(tmp / "q.pt"), "--labels", str(tmp / "ql.csv"),
               "--gallery-embeddings", str(tmp / "g.safetensors"), "--gallery-labels", str(tmp / "l.csv"),
               "--query-ids", str(tmp / "qid.txt"), "--gallery-ids", str(tmp / "gid.txt"), "--json",
               str(tmp / "r.json")])
    assert rc == 0
    got = json.loads((tmp / "r.json").read_text())
    ref = evaluate_embeddings(x[:10], labels[:10], x, labels, query_ids=[f"i{i}" for i in range(10)],
                              gallery_ids=[f"i{i}" for i in range(40)], scale_names=["fine", "coarse"])
    assert got["fine"]["map"] == pytest.approx(ref["fine"]["map"])
    assert got["fine"]["recall@1"] < 1.0  # the query's own copy in the gallery was excluded by id


def test_example_runs(capsys):
    assert main(["evaluate", "--example", "--metrics", "recall@1", "map"]) == 0
    out = capsys.readouterr().out
    assert "fine" in out and "middle" in out and "coarse" in out and "mean" in out


def test_cmc_is_accepted_as_recall(tmp_path, capsys):
    assert main(["evaluate", "--example", "--metrics", "cmc@1", "recall@1", "cmc@K", "--k", "2", "--json",
                 str(tmp_path / "cmc.json")]) == 0
    got = json.loads((tmp_path / "cmc.json").read_text())
    assert main(["evaluate", "--example", "--metrics", "recall@1", "recall@2", "--json",
                 str(tmp_path / "recall.json")]) == 0
    assert got == json.loads((tmp_path / "recall.json").read_text())


def _err(capsys, argv):
    rc = main(["evaluate", *argv])
    assert rc == 2
    return capsys.readouterr().err.strip()


def test_clear_errors(data, capsys):
    tmp, x, labels = data
    e, lab = str(tmp / "e.npy"), str(tmp / "l.csv")
    # differing row counts
    _write_labels(tmp / "short.csv", labels[:30])
    msg = _err(capsys, ["--embeddings", e, "--labels", str(tmp / "short.csv")])
    assert "short.csv" in msg and "30 label rows but 40 embeddings" in msg
    # NaN / Inf embeddings
    bad = x.copy()
    bad[7, 2] = np.inf
    np.save(tmp / "bad.npy", bad)
    msg = _err(capsys, ["--embeddings", str(tmp / "bad.npy"), "--labels", lab])
    assert "bad.npy" in msg and "NaN or Inf" in msg and "row 7" in msg
    # non-integer label
    (tmp / "frac.csv").write_text("fine,coarse\n1,2\n1.5,0\n")
    msg = _err(capsys, ["--embeddings", e, "--labels", str(tmp / "frac.csv")])
    assert "frac.csv:3" in msg and "column 'fine'" in msg and "'1.5'" in msg
    # empty files
    (tmp / "empty.csv").write_text("")
    assert "empty.csv: file is empty" in _err(capsys, ["--embeddings", e, "--labels", str(tmp / "empty.csv")])
    (tmp / "empty.npy").write_bytes(b"")
    assert "empty.npy: file is empty" in _err(capsys, ["--embeddings", str(tmp / "empty.npy"), "--labels", lab])
    (tmp / "header.csv").write_text("fine,coarse\n")
    assert "no label rows" in _err(capsys, ["--embeddings", e, "--labels", str(tmp / "header.csv")])
    # missing file
    msg = _err(capsys, ["--embeddings", str(tmp / "nope.npy"), "--labels", lab])
    assert "nope.npy: file not found" in msg
    # wrong shape, unknown suffix, missing header, ragged row, bad metric
    np.save(tmp / "vec.npy", np.zeros(5, np.float32))
    assert "expected a 2-D" in _err(capsys, ["--embeddings", str(tmp / "vec.npy"), "--labels", lab])
    (tmp / "e.txt").write_text("1 2\n")
    assert "unknown embeddings format" in _err(capsys, ["--embeddings", str(tmp / "e.txt"), "--labels", lab])
    (tmp / "nohdr.csv").write_text("1,2\n3,4\n")
    assert "missing header" in _err(capsys, ["--embeddings", e, "--labels", str(tmp / "nohdr.csv")])
    # a first row that repeats a label is numbers too: the same hint, not "duplicate column name(s) ['0']"
    (tmp / "nohdr_same.csv").write_text("0,0\n3,4\n")
    assert _err(capsys, ["--embeddings", e, "--labels", str(tmp / "nohdr_same.csv")]).endswith(
        "nohdr_same.csv:1: expected a header of scale names, got ['0', '0'] (numbers: a missing header?)")
    (tmp / "ragged.csv").write_text("fine,coarse\n1,2\n3\n")
    assert "ragged.csv:3: expected 2 fields, got 1" in _err(capsys, ["--embeddings", e, "--labels",
                                                                       str(tmp / "ragged.csv")])
    assert "unknown metric 'bogus'" in _err(capsys, ["--embeddings", e, "--labels", lab, "--metrics", "bogus"])
    torch.save({"a": torch.zeros(2, 2), "b": torch.zeros(2, 2)}, tmp / "two.pt")
    assert "expected one tensor" in _err(capsys, ["--embeddings", str(tmp / "two.pt"), "--labels", lab])


def test_evaluate_checkpoint_reads_the_run_config_once(tmp_path, capsys, monkeypatch):
    """`--checkpoint` reads and resolves the run's config once (with the `--set` overrides) and hands that config to
    the run's eval options and to the evaluation (it was read by both); the results are those of a library call."""
    import dynametric.config as config
    from dynametric.pipeline import checkpoint_config, evaluate_checkpoint, run_eval_options
    from tests.retrieval.conftest import make_run

    ckpt = make_run(tmp_path / "run", dim=8)
    reads = []
    real = config.load_config
    monkeypatch.setattr(config, "load_config", lambda *a, **kw: reads.append(a) or real(*a, **kw))
    out = tmp_path / "ev.json"
    assert main(["evaluate", "--checkpoint", str(ckpt), "--device", "cpu", "--set", "eval.k_values=[1,3]",
                 "--json", str(out)]) == 0
    assert len(reads) == 1
    loaded = checkpoint_config(ckpt, overrides=["eval.k_values=[1,3]"])
    assert loaded.config_path == ckpt.parent / "config.yaml" and list(loaded.cfg.eval.k_values) == [1, 3]
    assert run_eval_options(loaded) == run_eval_options(ckpt, overrides=["eval.k_values=[1,3]"])
    with pytest.raises(TypeError, match="apply when a CheckpointConfig is loaded"):
        run_eval_options(loaded, overrides=["eval.k_values=[2]"])  # never silently ignored
    got = json.loads(out.read_text())
    assert set(got["mean"]) >= {"recall@1", "recall@3"} and "recall@2" not in got["mean"]
    direct = evaluate_checkpoint(loaded, options=None).result
    assert got["mean"]["map@r"] == pytest.approx(direct["mean"]["map@r"], abs=1e-6)


def test_progress_options_as_train_and_embed_have_them(tmp_path, capsys):
    """`--no-progress` was an unrecognized argument of evaluate (train and embed have it); `--progress` shows the
    embedding bar of `--checkpoint`, which is off by default (evaluating files shows no bar)."""
    from tests.retrieval.conftest import make_run

    assert main(["evaluate", "--example", "--no-progress"]) == 0
    assert main(["evaluate", "--example", "--progress"]) == 0
    assert "embedding" not in capsys.readouterr().err
    ckpt = make_run(tmp_path / "run", dim=8)
    assert main(["evaluate", "--checkpoint", str(ckpt), "--device", "cpu", "--no-progress"]) == 0
    assert "embedding:" not in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(ckpt), "--device", "cpu", "--progress"]) == 0
    assert "embedding: 100%" in capsys.readouterr().err


def test_checkpoint_query_gallery_by_id_files_reports_the_pairs_they_excluded(tmp_path, capsys):
    """`--checkpoint` with a query -> gallery protocol that excludes nothing by itself (no sequences, items that are
    not files, `eval.query_in_gallery` false) and `--query-ids` / `--gallery-ids`: the results' protocol block
    counts the pairs the files' equal ids excluded (it said `excluded_pairs: 0`) and names the files; the metrics
    are those of the same embeddings with the ids."""
    from dynametric.metrics.io import is_results_json
    from tests.retrieval.conftest import make_run

    ckpt = make_run(tmp_path / "run", dim=8)
    (tmp_path / "q.txt").write_text("".join(f"a{i % 10}\n" for i in range(900)))  # the synthetic test split
    (tmp_path / "g.txt").write_text("".join(f"a{j % 5}\n" for j in range(540)))  # and its val split
    base = ["evaluate", "--checkpoint", str(ckpt), "--device", "cpu", "--metrics", "recall@1", "map", "--set",
            "eval.protocol=query_gallery", "--set", "eval.query_split=test", "--set", "eval.gallery_split=val"]
    assert main([*base, "--json", str(tmp_path / "plain.json")]) == 0
    assert main([*base, "--query-ids", str(tmp_path / "q.txt"), "--gallery-ids", str(tmp_path / "g.txt"),
                 "--json", str(tmp_path / "ids.json")]) == 0
    plain, ids = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("plain", "ids"))
    assert plain["protocol"]["excluded_pairs"] == 0 and "id_files" not in plain["protocol"]
    assert ids["protocol"] == {**plain["protocol"], "excluded_pairs": 450 * 108,  # queries a0..a4, 108 items each
                               "id_files": {"query_ids": str(tmp_path / "q.txt"),
                                            "gallery_ids": str(tmp_path / "g.txt")}}
    assert ids["coarse"]["map"] != plain["coarse"]["map"] and is_results_json(tmp_path / "ids.json")


def test_id_files_that_do_not_fit_the_protocol_are_refused_before_anything_is_embedded(tmp_path, capsys,
                                                                                        monkeypatch):
    """`--gallery-ids` with a leave-one-out run (or `--split`), and one of `--query-ids` / `--gallery-ids` alone
    with a query -> gallery run: one line naming the option and the protocol, before any split is loaded or
    embedded (they were refused only once the splits had been embedded, minutes on a real dataset)."""
    import dynametric.engine.builders as builders
    import dynametric.engine.inference as inference
    from tests.retrieval.conftest import make_run

    def never(*args, **kwargs):
        raise AssertionError("loaded or embedded before the check")

    monkeypatch.setattr(inference, "embed_dataset", never)
    monkeypatch.setattr(builders, "load_eval_split", never)
    ckpt = make_run(tmp_path / "run", dim=8)
    ids = tmp_path / "ids.txt"
    ids.write_text("a\n")
    base = ["--checkpoint", str(ckpt), "--device", "cpu"]
    no_gallery = ("which has no gallery: it is for a query -> gallery evaluation; leave-one-out takes --query-ids "
                  "alone (each query's ranking then leaves out every item sharing its id)")
    assert _err(capsys, [*base, "--gallery-ids", str(ids)]) == (
        "dynametric evaluate: error: key '--gallery-ids': does not apply to leave-one-out (the run's eval.protocol "
        f"is leave_one_out on split 'test'), {no_gallery}")
    assert _err(capsys, [*base, "--split", "val", "--query-ids", str(ids), "--gallery-ids", str(ids)]) == (
        "dynametric evaluate: error: key '--gallery-ids': does not apply to leave-one-out (--split evaluates split "
        f"'val' leave-one-out), {no_gallery}")
    qg = [*base, "--set", "eval.protocol=query_gallery", "--set", "eval.query_split=test", "--set",
          "eval.gallery_split=val"]
    pair = ("the run's eval.protocol is query_gallery (split 'test' -> 'val'), which leaves a gallery item out of a "
            "query's ranking when their ids are equal; give both files (one id per line, a line per item of each "
            "split)")
    assert _err(capsys, [*qg, "--query-ids", str(ids)]) == (
        f"dynametric evaluate: error: key '--gallery-ids': is needed with --query-ids: {pair}")
    assert _err(capsys, [*qg, "--gallery-ids", str(ids)]) == (
        f"dynametric evaluate: error: key '--query-ids': is needed with --gallery-ids: {pair}")


def test_id_files_that_do_not_fit_the_files_are_refused_before_they_are_read(data, capsys, monkeypatch):
    """The same without `--checkpoint`: `--gallery-ids` without `--gallery-embeddings`, one id file alone with
    them: one line naming the options, before any embedding file is read (the second was `key 'gallery_ids':
    query_ids given without gallery_ids`, the metrics' own argument names)."""
    import dynametric.retrieval.evaluate_io as evaluate_io

    tmp, _, _ = data
    monkeypatch.setattr(evaluate_io, "read_evaluation_files", lambda *a: pytest.fail("read before the check"))
    (tmp / "ids.txt").write_text("a\n" * 40)
    e, lab, ids = str(tmp / "e.npy"), str(tmp / "l.csv"), str(tmp / "ids.txt")
    assert _err(capsys, ["--embeddings", e, "--labels", lab, "--query-ids", ids, "--gallery-ids", ids]) == (
        "dynametric evaluate: error: key '--gallery-ids': needs --gallery-embeddings (a query -> gallery "
        "evaluation); a leave-one-out evaluation has no gallery: give --query-ids alone (each query's ranking then "
        "leaves out every item sharing its id)")
    qg = ["--embeddings", e, "--labels", lab, "--gallery-embeddings", e, "--gallery-labels", lab]
    pair = ("--gallery-embeddings makes it a query -> gallery evaluation, which leaves a gallery item out of a "
            "query's ranking when their ids are equal; give both files (one id per line, a line per row of each "
            "side)")
    assert _err(capsys, [*qg, "--query-ids", ids]) == (
        f"dynametric evaluate: error: key '--gallery-ids': is needed with --query-ids: {pair}")
    assert _err(capsys, [*qg, "--gallery-ids", ids]) == (
        f"dynametric evaluate: error: key '--query-ids': is needed with --gallery-ids: {pair}")


def test_id_files_of_the_wrong_length_are_refused_before_anything_is_embedded(tmp_path, capsys, monkeypatch):
    """With `--checkpoint`, an id file whose line count is not its split's item count: one line naming the file,
    the option and the split, once the split is loaded and before anything is embedded (it was found only when the
    metrics were computed, after every split had been embedded)."""
    import dynametric.engine.inference as inference
    from tests.retrieval.conftest import make_run

    monkeypatch.setattr(inference, "embed_dataset", lambda *a, **kw: pytest.fail("embedded before the check"))
    ckpt = make_run(tmp_path / "run", dim=8)
    short, test_ids = tmp_path / "short.txt", tmp_path / "test.txt"
    short.write_text("a\nb\n")
    test_ids.write_text("a\n" * 900)  # the synthetic test split
    base = ["--checkpoint", str(ckpt), "--device", "cpu"]
    assert _err(capsys, [*base, "--query-ids", str(short)]) == (
        f"dynametric evaluate: error: {short} key '--query-ids': expected 900 ids of split 'test' (one per line), "
        "got 2")
    qg = [*base, "--set", "eval.protocol=query_gallery", "--set", "eval.query_split=test", "--set",
          "eval.gallery_split=val"]
    assert _err(capsys, [*qg, "--query-ids", str(test_ids), "--gallery-ids", str(short)]) == (
        f"dynametric evaluate: error: {short} key '--gallery-ids': expected 540 ids of split 'val' (one per line), "
        "got 2")


def test_checkpoint_leave_one_out_by_id_files_records_them_in_a_protocol_block(tmp_path, capsys):
    """`--checkpoint` leave-one-out on a split without sequences with `--query-ids`: the results carry a
    `protocol` block (there was none, so nothing said the file's ids had excluded anything), in the shape of the
    protocol's own leave-one-out block, counting the ordered pairs of one id left out besides each query itself
    and naming the file; without the file, no block, as before. With `--per-query` too."""
    from dynametric.metrics.io import is_results_json
    from tests.retrieval.conftest import make_run

    ckpt = make_run(tmp_path / "run", dim=8)
    (tmp_path / "q.txt").write_text("".join(f"a{i % 10}\n" for i in range(900)))  # the synthetic test split
    base = ["evaluate", "--checkpoint", str(ckpt), "--device", "cpu", "--metrics", "recall@1", "map"]
    assert main([*base, "--json", str(tmp_path / "plain.json")]) == 0
    assert main([*base, "--query-ids", str(tmp_path / "q.txt"), "--json", str(tmp_path / "ids.json"),
                 "--per-query", str(tmp_path / "pq.csv")]) == 0
    plain, ids = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("plain", "ids"))
    assert "protocol" not in plain
    assert ids["protocol"] == {"name": "leave_one_out", "split": "test", "queries": 900,
                               "same_sequence_excluded": False, "excluded_pairs": 10 * 90 * 89,
                               "id_files": {"query_ids": str(tmp_path / "q.txt")}}
    assert ids["coarse"]["map"] != plain["coarse"]["map"] and is_results_json(tmp_path / "ids.json")


def test_files_evaluated_by_id_files_record_them_in_a_protocol_block(data, capsys):
    """Without `--checkpoint`, `--query-ids` (leave-one-out) or `--query-ids` / `--gallery-ids` (query -> gallery):
    the results carry a `protocol` block counting the pairs the files' ids excluded and naming the files, as
    `--checkpoint` records them (there was none); without the files, none; the metrics are the library's."""
    tmp, x, labels = data
    ids = [f"i{i % 8}" for i in range(40)]
    (tmp / "ids.txt").write_text("".join(f"{i}\n" for i in ids))
    (tmp / "qid.txt").write_text("".join(f"{i}\n" for i in ids[:10]))
    e, lab = str(tmp / "e.npy"), str(tmp / "l.csv")
    loo = ["evaluate", "--embeddings", e, "--labels", lab, "--metrics", "map", "--device", "cpu"]
    assert main([*loo, "--json", str(tmp / "plain.json")]) == 0
    assert "protocol" not in json.loads((tmp / "plain.json").read_text())
    assert main([*loo, "--query-ids", str(tmp / "ids.txt"), "--json", str(tmp / "loo.json")]) == 0
    got = json.loads((tmp / "loo.json").read_text())
    assert got["protocol"] == {"name": "leave_one_out", "queries": 40, "same_sequence_excluded": False,
                               "excluded_pairs": 8 * 5 * 4, "id_files": {"query_ids": str(tmp / "ids.txt")}}
    ref = evaluate_embeddings(x, labels, metrics=["map"], query_ids=ids, scale_names=["fine", "coarse"])
    assert got["fine"]["map"] == pytest.approx(ref["fine"]["map"])
    np.save(tmp / "q.npy", x[:10])
    _write_labels(tmp / "ql.csv", labels[:10])
    assert main(["evaluate", "--embeddings", str(tmp / "q.npy"), "--labels", str(tmp / "ql.csv"),
                 "--gallery-embeddings", e, "--gallery-labels", lab, "--metrics", "map", "--device", "cpu",
                 "--query-ids", str(tmp / "qid.txt"), "--gallery-ids", str(tmp / "ids.txt"),
                 "--json", str(tmp / "qg.json")]) == 0
    assert json.loads((tmp / "qg.json").read_text())["protocol"] == {
        "name": "query_gallery", "queries": 10, "gallery": 40, "same_sequence_excluded": False,
        "excluded_pairs": 10 * 5, "id_files": {"query_ids": str(tmp / "qid.txt"), "gallery_ids": str(tmp / "ids.txt")}}


def test_evaluate_removes_what_a_killed_write_of_its_outputs_left(tmp_path):
    """A killed `--json` / `--per-query` write left `.res.json.XXXXXXXX.tmp` beside the output, which no command
    removed: the next evaluation writing that file removes its own, nothing else; a refused one removes nothing."""
    stale = [tmp_path / ".res.json.ab12cd34.tmp", tmp_path / ".pq.csv.x_y_z_09.tmp"]
    kept = [tmp_path / ".res.json.AB12CD34.tmp", tmp_path / ".other.json.ab12cd34.tmp",
            tmp_path / "res.json.ab12cd34.tmp"]
    for p in stale + kept:
        p.write_text("x")
    (tmp_path / "res.json").write_text("mine")  # the user's: the evaluation is refused and removes nothing
    args = ["evaluate", "--example", "--metrics", "recall@1", "--json", str(tmp_path / "res.json"), "--per-query",
            str(tmp_path / "pq.csv")]
    assert main(args) == 2
    assert all(p.read_text() == "x" for p in stale + kept)
    (tmp_path / "res.json").unlink()
    assert main(args) == 0
    assert not any(p.exists() for p in stale) and all(p.read_text() == "x" for p in kept)
    assert json.loads((tmp_path / "res.json").read_text())["mean"]
