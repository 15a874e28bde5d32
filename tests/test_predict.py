"""peftbench predict: a stored run's predictions for new texts or files equal what evaluation gives."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from rich.console import Console

from conftest import write_csv, write_jsonl
from peftbench.config import parse_config
from peftbench.errors import UserError
from peftbench.export import rebuild
from peftbench.predict import predict, predict_command, read_inputs
from peftbench.runner import run
from peftbench.store import RunRow

pytestmark = pytest.mark.timeout(300)


def train(raw: dict, results: Path) -> RunRow:
    raw = {**raw, "task": {**raw["task"], "samples": 0}, "train": {**raw["train"], "steps": 2, "eval_every": 2}}
    return run(parse_config(raw), results).row


def evaluated(row: RunRow) -> list[str]:
    """The rendered test-split predictions of the rebuilt run, as evaluate gives them."""
    task, model, method, _ = rebuild(row)
    method.prepare_task(task)
    preds = task.evaluate(model, "test", parse_config(row.config).train.eval_batch_size).predictions
    return [task.render_for("test", i, p) for i, p in enumerate(preds)]


def refused(fn, *words: str) -> str:
    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    return msg


@pytest.fixture(scope="module")
def cls_run(tiny_model: str, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> RunRow:
    raw = {"model": {"name": tiny_model}, "task": {"kind": "classification", "data": {"source": str(tiny_data)}, "max_length": 32},
           "method": {"name": "lora"}, "train": {"batch_size": 8, "eval_batch_size": 16}}
    return train(raw, tmp_path_factory.mktemp("cls-results"))


def test_classification_texts_and_csv_match_evaluate(cls_run: RunRow, tiny_data: Path, tmp_path: Path) -> None:
    test_rows = [json.loads(line) for line in (tiny_data / "test.jsonl").read_text().splitlines()]
    want = evaluated(cls_run)
    assert set(want) <= {"joy", "anger", "sadness"}

    rows, root = read_inputs(cls_run, [r["text"] for r in test_rows], None)
    assert rows[0] == {"text": test_rows[0]["text"]} and root is None
    assert predict(cls_run, rows) == want

    rows, root = read_inputs(cls_run, [], write_csv(tmp_path / "in.csv", test_rows))  # extra columns are fine
    assert root == tmp_path and predict(cls_run, rows) == want


def test_predict_command_prints_a_table_and_writes_jsonl(cls_run: RunRow, tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    out = tmp_path / "out" / "p.jsonl"
    texts = ["happy glad [bold]day[/bold]", "angry mad today"]
    predict_command(cls_run.run_id[:8], texts, None, out, cls_run.folder.parent.parent, console)
    shown = console.export_text()
    assert "input" in shown and "prediction" in shown and "[bold]day[/bold]" in shown  # not taken as markup
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in lines] == texts and all(r["prediction"] in ("joy", "anger", "sadness") for r in lines)


def test_bad_inputs_are_refused(cls_run: RunRow, tmp_path: Path) -> None:
    refused(lambda: predict(dataclasses.replace(cls_run, status="failed"), [{"text": "x"}]), "failed, not done")
    refused(lambda: read_inputs(cls_run, [], None), "nothing to predict")
    refused(lambda: read_inputs(cls_run, ["happy", "  "], None), "input text 2 is empty")
    refused(lambda: read_inputs(cls_run, ["happy"], tmp_path / "x.csv"), "not both")
    (tmp_path / "header.csv").write_text("text,label\n")
    refused(lambda: read_inputs(cls_run, [], tmp_path / "header.csv"), "no rows")
    (tmp_path / "in.txt").write_text("happy\n")
    refused(lambda: read_inputs(cls_run, [], tmp_path / "in.txt"), "unknown type", ".csv")
    refused(lambda: read_inputs(cls_run, [], tmp_path / "missing.csv"), "does not exist")
    rows, _ = read_inputs(cls_run, [], write_csv(tmp_path / "tweets.csv", [{"tweet": "happy day"}]))
    refused(lambda: predict(cls_run, rows), "no column 'text'", "tweet")
    refused(lambda: predict(cls_run, [{"text": None}]), "text column 'text'")
    refused(lambda: predict(cls_run, []), "nothing to predict")
    refused(lambda: predict_command("zzzz", ["x"], None, None, cls_run.folder.parent.parent, Console()), "no stored run")


def test_generation_run_predicts_text(tiny_models, tmp_path: Path) -> None:
    from test_generation import config, dialogue_rows

    data = tmp_path / "data"
    data.mkdir()
    for split, n, seed in (("train", 16, 1), ("validation", 4, 2), ("test", 6, 3)):
        write_jsonl(data / f"{split}.jsonl", dialogue_rows(n, seed))
    row = train(config(tiny_models("gpt2"), data, "summarization"), tmp_path / "r")
    rows, _ = read_inputs(row, [r["dialogue"] for r in dialogue_rows(6, 3)], None)
    preds = predict(row, rows)
    assert len(preds) == 6 and all(isinstance(p, str) for p in preds)
    assert preds == evaluated(row)


def test_multiple_choice_predicts_the_chosen_text(tiny_models, tmp_path: Path) -> None:
    from test_multiple_choice import data_dir

    data = data_dir(tmp_path / "data")
    raw = {"model": {"name": tiny_models("gpt2")}, "task": {"kind": "multiple_choice", "data": {"source": str(data)}, "max_length": 48},
           "method": {"name": "lora"}, "train": {"batch_size": 8, "eval_batch_size": 16}}
    row = train(raw, tmp_path / "r")
    rows, _ = read_inputs(row, [], data / "test.jsonl")  # choices as {"label": [...], "text": [...]}
    preds = predict(row, rows)
    for p, r in zip(preds, rows):  # "B (1): the text": letter, 0-based index and the choice's text
        letter, index, text = p[0], int(p[p.index("(") + 1 : p.index(")")]), p.split("): ", 1)[1]
        assert r["choices"]["text"][index] == text and letter == "ABCD"[index]
    assert preds == evaluated(row)
    refused(lambda: read_inputs(row, ["a question ?"], None), "several columns", "--file")
    refused(lambda: predict(row, [{"question": "q ?", "choices": ["red", "blue"]}]), "predict row 1 has 2 choices", "4")


def test_image_run_predicts_labels_from_paths(tiny_models, tmp_path: Path) -> None:
    from test_image_classification import class_tree, config

    data = tmp_path / "images"
    class_tree(data / "train", 6, seed=1), class_tree(data / "val", 2, seed=2), class_tree(data / "test", 2, seed=3)
    row = train(config(tiny_models("vit"), data), tmp_path / "r")
    task, _, _, _ = rebuild(row)
    paths = task.splits["test"]["image"]
    rows, _ = read_inputs(row, paths, None)
    assert predict(row, rows) == evaluated(row)
    # relative paths are read from the input file's folder
    rel = write_csv(data / "in.csv", [{"image": str(Path(p).relative_to(data))} for p in paths])
    rows, root = read_inputs(row, [], rel)
    assert predict(row, rows, root) == evaluated(row)
    refused(lambda: predict(row, [{"image": "nowhere.png"}], tmp_path), "nowhere.png", "does not exist")


def test_few_shot_prompts_keep_their_demonstrations(tiny_models, tiny_data: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import peftbench.predict

    raw = {"model": {"name": tiny_models("gpt2")}, "task": {"kind": "classification", "data": {"source": str(tiny_data)}, "max_length": 96},
           "method": {"name": "few_shot", "params": {"k": 2}}, "train": {"batch_size": 8, "eval_batch_size": 16}}
    row = train(raw, tmp_path / "r")
    seen = []
    monkeypatch.setattr(peftbench.predict, "rebuild", lambda r: seen.append(rebuild(r)) or seen[-1])
    texts = [json.loads(line)["text"] for line in (tiny_data / "test.jsonl").read_text().splitlines()]
    stored = json.loads((row.folder / "predictions.json").read_text())["predictions"]  # as the run scored them
    assert predict(row, read_inputs(row, texts, None)[0]) == [row.result["task"]["labels"][p] for p in stored]
    assert seen[0][0].demonstrations["k"] == 2  # the prompts held the run's demonstrations
