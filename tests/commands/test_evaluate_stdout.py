"""`evaluate --json -` prints the JSON on stdout (the table on stderr), as `search --json` and `data inspect --json`
print theirs; it wrote a file named `-`. `--per-query -` is refused by name."""

from __future__ import annotations

import json

from dynametric.cli import main


def test_json_dash_is_stdout_and_stdout_is_pure_json(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--example", "--json", "-"]) == 0
    captured = capsys.readouterr()
    printed = json.loads(captured.out)  # nothing but the JSON
    assert list(printed) == ["fine", "middle", "coarse", "mean"]
    assert "recall@1" in printed["mean"] and "scale" in captured.err and "recall@1" in captured.err  # the table
    assert list(tmp_path.iterdir()) == []  # no file named '-'
    assert main(["evaluate", "--example", "--json", "r.json"]) == 0
    assert json.loads((tmp_path / "r.json").read_text()) == printed  # the same JSON as the file


def test_per_query_dash_is_refused(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["evaluate", "--example", "--per-query", "-"]) == 2
    assert capsys.readouterr().err.strip() == ("dynametric evaluate: error: key '--per-query': writes a CSV file; "
                                              "'-' (stdout) is taken by --json only: give a file name")
    assert list(tmp_path.iterdir()) == []
