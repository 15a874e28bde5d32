"""Issue 15 item 6: every missing column in one message, case-insensitive matches with a note, TSV files,
and multiple-choice choices from separate columns (--column choices=a,b,c,d)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.store import Store
from conftest import make_rows


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def write_tsv(path: Path, rows: list[dict], rename: dict[str, str] | None = None) -> None:
    rename = rename or {}
    cols = list(rows[0])
    lines = ["\t".join(rename.get(c, c) for c in cols)] + ["\t".join(str(r[c]) for c in cols) for r in rows]
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("cased", [("train", "validation", "test"), ("train",)])
def test_tsv_with_differently_cased_columns_trains_and_says_so(tiny_model, tmp_path, cased):
    """Every split cased alike, or only train (test's `text,label` once made both roles "missing")."""
    data = tmp_path / "d"
    data.mkdir()
    for split, n in (("train", 48), ("validation", 16), ("test", 16)):
        write_tsv(data / f"{split}.tsv", make_rows(n, len(split)), {"text": "Text", "label": "Label"} if split in cased else {})
    res = invoke("run", "--model", tiny_model, "--data", str(data), "--max-length", "32", "--steps", "2",
                 "--results-dir", str(tmp_path / "r"), "--json")
    assert res.exit_code == 0, res.output
    assert "note: text column 'text' not found; using 'Text', which differs in case" in res.output
    assert "note: label column 'label' not found; using 'Label'" in res.output
    assert Store(tmp_path / "r").list("done")


def test_every_missing_column_in_one_message(tiny_model, tmp_path):
    data = tmp_path / "d"
    data.mkdir()
    for split in ("train", "validation", "test"):
        write_tsv(data / f"{split}.tsv", make_rows(12, 1), {"text": "body", "label": "topic"})
    res = invoke("run", "--model", tiny_model, "--data", str(data), "--steps", "1", "--results-dir", str(tmp_path / "r"))
    assert res.exit_code == 2
    line = " ".join(res.output.split())
    assert "text column 'text' is missing from the train, validation, test splits" in line
    assert "label column 'label' is missing" in line and "(columns: body, topic)" in line
    assert "--text-column NAME and --label-column NAME" in line


def test_choices_from_separate_columns(tiny_model, tmp_path):
    data = tmp_path / "mc"
    data.mkdir()
    for split, n in (("train", 24), ("validation", 8), ("test", 8)):
        rows = [{"question": f"which is {i % 3}?", "answer_a": "zero", "answer_b": "one", "answer_c": "two",
                 "correct": ["answer_a", "B", "2"][i % 3]} for i in range(n)]  # a column name, a letter, an index
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = invoke("run", "--model", tiny_model, "--task", "multiple_choice", "--data", str(data), "--max-length", "32",
                 "--column", "choices=answer_a,answer_b,answer_c", "--column", "answer=correct", "--steps", "2",
                 "--batch-size", "4", "--results-dir", str(tmp_path / "r"), "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output[res.output.index("{"):])
    assert doc["result"]["task"]["num_choices"] == 3
    listed = {d["task"]: d for d in json.loads(invoke("tasks", "--json").output)}
    assert "--column choices=a,b,c,d" in listed["multiple_choice"]["columns"]["choices"]
