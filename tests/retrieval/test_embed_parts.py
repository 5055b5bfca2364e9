"""``dynametric embed --part K/N`` (one process per GPU) and ``dynametric merge-embeddings``: the merged parts equal
one run over the whole list, text labels included; a wrong set of parts is a one-line error naming the part."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dynametric.cli import main
from dynametric.errors import InputError
from dynametric.retrieval.embed import load_embedding_set, merge_embedding_parts, read_image_csv

from .conftest import make_run


@pytest.fixture(scope="module")
def grouped_csv(image_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 12 images listed grouped by their text coarse label, so that a part of the list misses some classes
    (a part numbered on its own would call 'plant' class 0)."""
    rows = (image_root / "labels.csv").read_text(encoding="utf-8").splitlines()
    body = sorted(rows[1:], key=lambda r: r.split(",")[3])
    path = tmp_path_factory.mktemp("lists") / "grouped.csv"
    path.write_text("\n".join([rows[0], *body]) + "\n", encoding="utf-8")
    return path


def _embed(ckpt: Path, csv_path: Path, image_root: Path, out: Path, *extra: str) -> int:
    return main(["embed", "--checkpoint", str(ckpt), "--csv", str(csv_path), "--image-root", str(image_root),
                 "--out", str(out), "--device", "cpu", "--batch-size", "4", "--shard-size", "3", "--no-progress",
                 *extra])


@pytest.fixture(scope="module")
def jobs(run_ckpt: Path, image_root: Path, grouped_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("jobs")
    assert _embed(run_ckpt, grouped_csv, image_root, root / "whole") == 0
    parts = []
    for k in range(3):
        assert _embed(run_ckpt, grouped_csv, image_root, root / f"part{k}", "--part", f"{k}/3") == 0
        parts.append(root / f"part{k}")
    return {"root": root, "whole": root / "whole", "parts": parts}


def test_parts_keep_the_whole_lists_label_ids(image_root: Path, grouped_csv: Path) -> None:
    items = read_image_csv(grouped_csv, image_root=image_root)
    assert items.class_names == [[], ["animal", "plant", "rock"]]
    seen = []
    for k in range(3):
        part = items.select_part(k, 3)
        lo, hi = k * 12 // 3, (k + 1) * 12 // 3
        assert part.ids == items.ids[lo:hi]
        np.testing.assert_array_equal(part.labels, items.labels[lo:hi])
        assert part.class_names == items.class_names and part.source_count == 12
        assert part.source_fingerprint == items.fingerprint() != part.fingerprint()
        seen += part.ids
    assert seen == items.ids
    # the second part holds only 'plant' and 'rock': still ids 1 and 2, not 0 and 1
    assert sorted(set(items.select_part(1, 3).labels[:, 1].tolist())) == [1]
    assert sorted(set(items.select_part(2, 3).labels[:, 1].tolist())) == [2]


def test_merged_parts_equal_one_run(jobs: dict) -> None:
    merged = jobs["root"] / "merged"
    res = merge_embedding_parts([jobs["parts"][2], jobs["parts"][0], jobs["parts"][1]], merged)  # any order
    assert res.count == 12
    whole, got = jobs["whole"], merged
    np.testing.assert_allclose(np.load(got / "embeddings.npy"), np.load(whole / "embeddings.npy"), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(np.load(got / "labels.npy"), np.load(whole / "labels.npy"))
    assert (got / "items.csv").read_text(encoding="utf-8") == (whole / "items.csv").read_text(encoding="utf-8")
    a = json.loads((got / "embed.json").read_text(encoding="utf-8"))
    b = json.loads((whole / "embed.json").read_text(encoding="utf-8"))
    for key in ("count", "fingerprint", "model", "scale_names", "class_names", "image_roots", "dim", "status"):
        assert a[key] == b[key], key
    assert a["merged_parts"] == 3
    loaded = load_embedding_set(got)
    assert loaded.class_names == [[], ["animal", "plant", "rock"]] and loaded.labels.shape == (12, 2)
    # the same job: re-running the whole-list command on the merged folder finds it complete
    assert a["shard_size"] == b["shard_size"] and a["num_shards"] == b["num_shards"]


def test_the_cli_merges_and_a_part_job_resumes(jobs: dict, run_ckpt: Path, image_root: Path, grouped_csv: Path,
                                               capsys) -> None:
    assert _embed(run_ckpt, grouped_csv, image_root, jobs["parts"][1], "--part", "1/3") == 0
    assert "(part 1/3 of 12 images)" in capsys.readouterr().out  # resumed: nothing computed
    out = jobs["root"] / "merged_cli"
    assert main(["merge-embeddings", *map(str, jobs["parts"]), "--out", str(out)]) == 0
    assert "3 parts, 12 images" in capsys.readouterr().out
    assert main(["merge-embeddings", *map(str, jobs["parts"]), "--out", str(out)]) == 2
    assert "output folder is not empty" in capsys.readouterr().err
    assert main(["merge-embeddings", *map(str, jobs["parts"]), "--out", str(out), "--overwrite"]) == 0


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_a_wrong_set_of_parts_is_one_line_naming_it(jobs: dict, run_ckpt: Path, image_root: Path,
                                                    grouped_csv: Path, tmp_path: Path) -> None:
    p0, p1, p2 = jobs["parts"]
    cases = [
        ([p0, p2], "missing part(s) 1/3"),
        ([p0, p1, p1, p2], "part 1/3 given twice"),
        ([p0, p1, p2, jobs["whole"]], "not a part job"),
        ([p0, p1, tmp_path], "no embed.json"),
    ]
    unfinished = _copy(p2, tmp_path / "unfinished")
    meta = json.loads((unfinished / "embed.json").read_text(encoding="utf-8"))
    (unfinished / "embed.json").write_text(json.dumps({**meta, "status": "in_progress"}), encoding="utf-8")
    cases.append(([p0, p1, unfinished], "not finished"))
    other_model = make_run(tmp_path / "other_run", seed=1)
    assert _embed(other_model, grouped_csv, image_root, tmp_path / "other2", "--part", "2/3") == 0
    cases.append(([p0, p1, tmp_path / "other2"], "in 'model'"))
    assert _embed(run_ckpt, grouped_csv, image_root, tmp_path / "four1", "--part", "1/4") == 0
    cases.append(([p0, tmp_path / "four1", p2], "one of 3 parts"))
    for k, (parts, needle) in enumerate(cases):
        with pytest.raises(InputError) as err:
            merge_embedding_parts(parts, tmp_path / f"out{k}")
        assert needle in str(err.value), (needle, str(err.value))
        assert "\n" not in str(err.value)
        assert not (tmp_path / f"out{k}").exists()  # nothing written before the parts were checked
    with pytest.raises(InputError, match="one of the parts"):
        merge_embedding_parts([p0, p1, p2], p1)


def test_part_flag_errors(run_ckpt: Path, image_root: Path, grouped_csv: Path, tmp_path: Path, capsys) -> None:
    for bad in ("3/3", "1", "a/b", "-1/2", "0/0"):
        assert _embed(run_ckpt, grouped_csv, image_root, tmp_path / "bad", f"--part={bad}") == 2
        assert "expected K/N with 0 <= K < N" in capsys.readouterr().err
    assert _embed(run_ckpt, grouped_csv, image_root, tmp_path / "empty", "--part", "0/20") == 2
    assert "part 0/20 of 12 images is empty" in capsys.readouterr().err
    assert not (tmp_path / "empty").exists()
    # a part job in a folder of the whole list's job is another job
    assert _embed(run_ckpt, grouped_csv, image_root, tmp_path / "job") == 0
    assert _embed(run_ckpt, grouped_csv, image_root, tmp_path / "job", "--part", "0/2") == 2
    assert "holds a different embedding job" in capsys.readouterr().err


def test_a_part_embedded_before_file_stamps_merges_with_newer_parts(jobs: dict, tmp_path: Path) -> None:
    """A part job written by a dynametric older than file stamps (no ``source_file_stamp``, no ``file_stats.npy``)
    merges with parts written by this version (a multi-part job that went on after an upgrade); parts that both
    record a stamp must still agree on it."""
    p0, p1, p2 = (_copy(p, tmp_path / f"p{k}") for k, p in enumerate(jobs["parts"]))
    meta = json.loads((p0 / "embed.json").read_text(encoding="utf-8"))
    stamp = meta.pop("source_file_stamp")
    assert stamp and meta.pop("file_stamp", None) is not None
    (p0 / "embed.json").write_text(json.dumps(meta), encoding="utf-8")
    (p0 / "file_stats.npy").unlink()
    res = merge_embedding_parts([p0, p1, p2], tmp_path / "merged")
    assert res.count == 12
    merged = json.loads((tmp_path / "merged" / "embed.json").read_text(encoding="utf-8"))
    assert merged["file_stamp"] == stamp and merged["status"] == "complete"
    np.testing.assert_allclose(np.load(tmp_path / "merged" / "embeddings.npy"),
                               np.load(jobs["whole"] / "embeddings.npy"), rtol=0, atol=1e-6)
    # two parts with stamps that disagree: the files changed between them
    meta2 = json.loads((p2 / "embed.json").read_text(encoding="utf-8"))
    (p2 / "embed.json").write_text(json.dumps({**meta2, "source_file_stamp": "0" * 16}), encoding="utf-8")
    with pytest.raises(InputError, match="source_file_stamp"):
        merge_embedding_parts([p0, p1, p2], tmp_path / "merged2")


def test_merge_overwrite_keeps_the_modes_it_replaces_and_refuses_a_read_only_file(jobs: dict, tmp_path: Path,
                                                                                    capsys) -> None:
    """merge-embeddings --overwrite removed the earlier job's files first: a private (0600) embeddings.npy came
    back 0644, a read-only one was replaced."""
    import os
    import stat

    out = tmp_path / "merged"
    args = ["merge-embeddings", *map(str, jobs["parts"]), "--out", str(out), "--overwrite"]
    assert main(args) == 0
    os.chmod(out / "embeddings.npy", 0o600)
    os.chmod(out / "items.csv", 0o640)
    assert main(args) == 0
    assert stat.S_IMODE((out / "embeddings.npy").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "items.csv").stat().st_mode) == 0o640
    assert load_embedding_set(out).embeddings.shape[0] == 12
    os.chmod(out / "embeddings.npy", 0o444)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert f"{out / 'embeddings.npy'} key '--out': is read-only (mode 0444)" in err and "\n" not in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


_MERGE_FILES = ("embed.json", "items.csv", "embeddings.npy", "file_stats.npy", "labels.npy")


@pytest.mark.parametrize("failing", _MERGE_FILES)
def test_a_merge_overwrite_on_a_full_disk_leaves_the_earlier_merge_readable(jobs: dict, tmp_path: Path, monkeypatch,
                                                                             capsys, failing: str) -> None:
    """Was: embed.json was switched to in_progress first and the files replaced one by one, so a full disk left the
    earlier merge's data beside an unfinished embed.json: every reader refused the folder."""
    from tests.disk import fail_writes_of

    out = tmp_path / "merged"
    args = ["merge-embeddings", *map(str, jobs["parts"]), "--out", str(out), "--overwrite"]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert set(before) == set(_MERGE_FILES)
    old = load_embedding_set(out)
    capsys.readouterr()
    with monkeypatch.context() as m:
        failed = fail_writes_of(m, failing)
        assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(failed) == 1 and f"{out / failing}: No space left on device" in err and "\n" not in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no temporary file, no lock left
    again = load_embedding_set(out)
    np.testing.assert_array_equal(again.embeddings, old.embeddings)
    assert again.ids == old.ids and again.labels is not None and old.labels is not None
    np.testing.assert_array_equal(again.labels, old.labels)
    assert main(args) == 0  # with room again
    assert load_embedding_set(out).embeddings.shape[0] == 12


def test_an_unfinished_merge_folder_says_to_run_the_merge_again(jobs: dict, tmp_path: Path, capsys) -> None:
    """Was: `embedding job is not finished; run the same `dynametric embed` command again to resume`, which cannot
    finish a merge folder."""
    out = tmp_path / "merged"
    assert main(["merge-embeddings", *map(str, jobs["parts"]), "--out", str(out)]) == 0
    meta = json.loads((out / "embed.json").read_text(encoding="utf-8"))
    (out / "embed.json").write_text(json.dumps({**meta, "status": "in_progress"}), encoding="utf-8")
    with pytest.raises(InputError) as err:
        load_embedding_set(out)
    message = str(err.value)
    assert message.startswith(f"{out / 'embed.json'} key 'status': the merge into this folder is not finished")
    assert f"`dynametric merge-embeddings PART... --out {out} --overwrite`" in message
    assert "dynametric embed`" not in message and "\n" not in message
    # an unfinished embed job (not a merge) still says to run its embed command again
    part = tmp_path / "part0"
    shutil.copytree(jobs["parts"][0], part)
    meta = json.loads((part / "embed.json").read_text(encoding="utf-8"))
    (part / "embed.json").write_text(json.dumps({**meta, "status": "in_progress"}), encoding="utf-8")
    with pytest.raises(InputError, match="run the same `dynametric embed` command again to resume"):
        load_embedding_set(part)


class _Killed(BaseException):
    """A kill of the merge (not an Exception: none of its own clean-up runs)."""


def test_a_merge_killed_between_its_renames_is_refused_then_taken_up_by_overwrite(jobs: dict, tmp_path: Path,
                                                                                 monkeypatch, capsys) -> None:
    import dynametric.utils.io as io_mod  # StagedFiles, which the merge stages and renames its files with

    out = tmp_path / "merged"
    args = ["merge-embeddings", *map(str, jobs["parts"]), "--out", str(out), "--overwrite"]
    assert main(args) == 0
    real = io_mod.commit_staged
    renamed: list[str] = []

    def commit(tmp, path, **kwargs):  # noqa: ANN001, ANN003, ANN202
        if Path(path).name == "embeddings.npy":
            raise _Killed
        real(tmp, path, **kwargs)
        renamed.append(Path(path).name)

    with monkeypatch.context() as m:
        m.setattr(io_mod, "commit_staged", commit)
        m.setattr(io_mod, "discard_staged", lambda tmps: None)  # a kill: nothing is cleaned up
        with pytest.raises(_Killed):
            merge_embedding_parts(jobs["parts"], out, overwrite=True)
    assert renamed == ["embed.json", "items.csv"]  # the unfinished embed.json is renamed first
    with pytest.raises(InputError, match="the merge into this folder is not finished"):
        load_embedding_set(out)
    assert main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(_MERGE_FILES)  # the killed merge's temporary files gone
    assert load_embedding_set(out).embeddings.shape[0] == 12
