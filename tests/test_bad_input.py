"""Bad input through the CLI: one clear line on stderr, exit code 2, no traceback, nothing stored.

Every case goes through `peftbench.cli.app` exactly as a user would type it. A refusal must
name the problem (and the fix) on a single `error:` line, exit 2, and leave no run behind:
all input is validated before `runner.run` opens the Store, so the results folder is not
even created.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import transformers
from typer.testing import CliRunner

import peftbench.runner  # noqa: F401  (import torch/transformers outside the captured streams)
from peftbench.cli import app
from peftbench.store import Store
from conftest import make_rows, write_jsonl

# What peftbench.cli.main() does before it runs the app (CliRunner calls the app itself).
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

pytestmark = pytest.mark.timeout(120)


# -- helpers ---------------------------------------------------------------------------


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_nothing_stored(results_dir: Path) -> None:
    db = results_dir / "results.sqlite"
    if db.exists():
        store = Store(results_dir)
        try:
            assert not store.list(status="done"), "bad input left a run stored as done"
        finally:
            store.close()
    # Validation happens before the store is opened, so nothing is created at all.
    assert not results_dir.exists(), f"bad input created the results folder: {sorted(results_dir.rglob('*'))}"


def assert_refused(result, *words: str, results_dir: Path | None = None) -> str:
    """Exit 2, one `error:` line on stderr holding every word (case-insensitive), no traceback."""
    shown = f"exit {result.exit_code}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert not (result.exception and not isinstance(result.exception, SystemExit)), (
        f"uncaught {type(result.exception).__name__}: {result.exception}\n{shown}"
    )
    assert result.exit_code == 2, shown
    assert "Traceback" not in result.output, shown
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a single line on stderr\n{shown}"
    line = lines[0]
    assert line.startswith("error: "), shown
    for w in words:
        assert w.lower() in line.lower(), f"{w!r} missing from the message\n{shown}"
    print(line)  # shown when a test fails
    if results_dir is not None:
        assert_nothing_stored(results_dir)
    return line


@pytest.fixture
def res(tmp_path: Path) -> Path:
    return tmp_path / "results"


@pytest.fixture
def base(tiny_model: str, res: Path) -> list[str]:
    """Options of a quick run; each case adds what it gets wrong."""
    return ["run", "--model", tiny_model, "--steps", "2", "--batch-size", "8", "--max-length", "32",
            "--results-dir", str(res)]


@pytest.fixture
def good(base: list[str], tiny_data: Path) -> list[str]:
    return [*base, "--data", str(tiny_data)]


def set_flag(args: list[str], flag: str, value: object) -> list[str]:
    """args with FLAG's value replaced."""
    i = args.index(flag)
    return [*args[: i + 1], str(value), *args[i + 2 :]]


def split_files(root: Path, train: Path | None = None, validation: Path | None = None,
                test: Path | None = None) -> list[str]:
    """--train/validation/test-file flags; any split not given gets a good file."""
    root.mkdir(parents=True, exist_ok=True)
    train = train or write_jsonl(root / "good-train.jsonl", make_rows(48, 1))
    validation = validation or write_jsonl(root / "good-validation.jsonl", make_rows(12, 2))
    test = test or write_jsonl(root / "good-test.jsonl", make_rows(12, 3))
    return ["--train-file", str(train), "--validation-file", str(validation), "--test-file", str(test)]


# -- methods and hyper-parameters ------------------------------------------------------


def test_unknown_method(good: list[str], res: Path) -> None:
    line = assert_refused(invoke(*good, "--method", "nosuchmethod"), "unknown method", "nosuchmethod",
                          "lora", "peftbench methods", results_dir=res)
    assert "did you mean" not in line


def test_misspelled_method_suggests_the_right_one(good: list[str], res: Path) -> None:
    assert_refused(invoke(*good, "--method", "lorra"), "unknown method", "lorra", "did you mean 'lora'",
                   results_dir=res)


def test_compare_refuses_a_misspelled_method_before_any_run(tiny_model: str, tiny_data: Path, res: Path) -> None:
    r = invoke("compare", "--methods", "head,lorra", "--model", tiny_model, "--data", tiny_data, "--steps", 2,
               "--batch-size", 8, "--max-length", 32, "--results-dir", res)
    assert_refused(r, "unknown method", "lorra", "did you mean 'lora'", results_dir=res)


def test_unknown_hyper_parameter_suggests_the_right_one(good: list[str], res: Path) -> None:
    assert_refused(invoke(*good, "--method", "lora", "--param", "rank=4"), "lora", "'rank'",
                   "did you mean 'r'", results_dir=res)


def test_misspelled_hyper_parameter_suggests_the_right_one(good: list[str], res: Path) -> None:
    assert_refused(invoke(*good, "--method", "lora", "--param", "dropuot=0.1"), "'dropuot'",
                   "did you mean 'dropout'", results_dir=res)


def test_param_without_equals(good: list[str], res: Path) -> None:
    assert_refused(invoke(*good, "--param", "r"), "--param 'r'", "KEY=VALUE", results_dir=res)


def test_lora_rank_zero(good: list[str], res: Path) -> None:
    assert_refused(invoke(*good, "--method", "lora", "--param", "r=0"), "lora", "'r'",
                   "greater than or equal to 1", "got 0", results_dir=res)


def test_negative_learning_rate(good: list[str], res: Path) -> None:
    assert_refused(invoke(*good, "--lr", "-1"), "train.lr", "greater than 0", "-1", results_dir=res)


def test_zero_steps(base: list[str], tiny_data: Path, res: Path) -> None:
    assert_refused(invoke(*set_flag(base, "--steps", 0), "--data", tiny_data), "train.steps", "greater than or equal to 1", "got 0",
                   results_dir=res)


def test_target_modules_that_match_nothing(good: list[str], res: Path) -> None:
    line = assert_refused(invoke(*good, "--method", "lora", "--param", "target_modules=[nope]"),
                          "target modules", "nope", "match nothing", results_dir=res)
    for layer in ("query", "key", "value", "dense"):  # what the tiny BERT has, listed as the fix
        assert layer in line


def test_target_module_regex_that_matches_nothing(good: list[str], res: Path) -> None:
    assert_refused(invoke(*good, "--method", "ia3", "--param", r"target_modules=.*\.nope"),
                   "target modules", "nope", "match nothing", "query", results_dir=res)


def test_peft_name_for_a_hyper_parameter_suggests_ours(good: list[str], res: Path) -> None:
    assert_refused(invoke(*good, "--method", "lora", "--param", "lora_alpha=32"), "'lora_alpha'",
                   "did you mean 'alpha'", results_dir=res)


def test_hyper_parameter_of_the_wrong_type(good: list[str], res: Path) -> None:
    assert_refused(invoke(*good, "--method", "lora", "--param", "target_modules=5"),
                   "lora hyper-parameter 'target_modules'", "a list of strings or a string", "got 5",
                   results_dir=res)


def test_hyper_parameters_that_contradict_each_other(good: list[str], res: Path) -> None:
    line = assert_refused(invoke(*good, "--method", "adalora", "--param", "target_r=20"), "adalora",
                          "target_r (20) must not exceed init_r (12)", results_dir=res)
    assert "''" not in line and "Value error" not in line


def test_ia3_feedforward_modules_outside_the_targets(good: list[str], res: Path) -> None:
    r = invoke(*good, "--method", "ia3", "--param", "target_modules=[query, value]",
               "--param", "feedforward_modules=[dense]")
    assert_refused(r, "feedforward_modules", "subset of target_modules", "dense", results_dir=res)


def test_ia3_feedforward_modules_that_match_nothing(good: list[str], res: Path) -> None:
    r = invoke(*good, "--method", "ia3", "--param", "target_modules=[query, nope]",
               "--param", "feedforward_modules=[nope]")
    assert_refused(r, "feedforward modules nope match nothing", "query", results_dir=res)


def test_hyper_parameter_for_a_method_that_takes_none(good: list[str], res: Path) -> None:
    assert_refused(invoke(*good, "--method", "head", "--param", "r=4"), "'head'", "no hyper-parameter 'r'",
                   "takes none", results_dir=res)


# -- YAML config files -----------------------------------------------------------------


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_misspelled_top_level_config_key(good: list[str], res: Path, tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "run.yaml", "trian:\n  steps: 2\n")
    assert_refused(invoke(*good, "--config", cfg), "unknown config key", "'trian'", "did you mean 'train'",
                   results_dir=res)


def test_misspelled_nested_config_key(good: list[str], res: Path, tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "run.yaml", "train:\n  batchsize: 8\n")
    assert_refused(invoke(*good, "--config", cfg), "unknown config key", "train.batchsize",
                   "did you mean 'batch_size'", results_dir=res)


def test_misspelled_data_key_in_config(good: list[str], res: Path, tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "run.yaml", "task:\n  data:\n    label_colum: label\n")
    assert_refused(invoke(*good, "--config", cfg), "task.data.label_colum", "did you mean 'label_column'",
                   results_dir=res)


def test_misspelled_hyper_parameter_in_config(good: list[str], res: Path, tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "run.yaml", "method:\n  name: lora\n  params:\n    alpah: 8\n")
    assert_refused(invoke(*good, "--config", cfg), "'alpah'", "did you mean 'alpha'", results_dir=res)


def test_config_that_is_not_valid_yaml(good: list[str], res: Path, tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "run.yaml", "train:\n  steps: 2\n  batch_size: [8\nmodel: x\n")
    assert_refused(invoke(*good, "--config", cfg), "run.yaml", "not valid YAML", "line", results_dir=res)


def test_config_that_is_not_a_mapping(good: list[str], res: Path, tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "run.yaml", "- lora\n- ia3\n")
    assert_refused(invoke(*good, "--config", cfg), "run.yaml", "mapping", results_dir=res)


def test_config_that_does_not_exist(good: list[str], res: Path, tmp_path: Path) -> None:
    assert_refused(invoke(*good, "--config", tmp_path / "missing.yaml"), "missing.yaml", "does not exist",
                   "--config", results_dir=res)


# -- data ------------------------------------------------------------------------------


def test_missing_text_column(good: list[str], res: Path) -> None:
    assert_refused(invoke(*good, "--text-column", "nope"), "text column 'nope'", "missing",
                   "columns: text, label", "--text-column", results_dir=res)


def test_missing_label_column(good: list[str], res: Path) -> None:
    assert_refused(invoke(*good, "--label-column", "nope"), "label column 'nope'", "missing",
                   "columns: text, label", "--label-column", results_dir=res)


def test_missing_text_pair_column(good: list[str], res: Path) -> None:
    assert_refused(invoke(*good, "--text-pair-column", "nope"), "text pair column 'nope'",
                   "columns: text, label", "--text-pair-column", results_dir=res)


def test_single_class_label(base: list[str], res: Path, tmp_path: Path) -> None:
    one = [{**r, "label": "joy"} for r in make_rows(48, 1)]
    train = write_jsonl(tmp_path / "train.jsonl", one)
    val = write_jsonl(tmp_path / "validation.jsonl", one[:8])
    test = write_jsonl(tmp_path / "test.jsonl", one[8:16])
    assert_refused(invoke(*base, *split_files(tmp_path, train, val, test)), "single class", "'joy'",
                   "at least two", results_dir=res)


def test_label_unseen_in_train(base: list[str], res: Path, tmp_path: Path) -> None:
    test = write_jsonl(tmp_path / "test.jsonl", make_rows(8, 3) + [{"text": "happy day", "label": "surprise"}])
    assert_refused(invoke(*base, *split_files(tmp_path, test=test)), "test split", "surprise",
                   "not seen in train", results_dir=res)


def test_empty_test_split(base: list[str], res: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", make_rows(48, 1))
    write_jsonl(data / "validation.jsonl", make_rows(12, 2))
    (data / "test.jsonl").write_text("")
    assert_refused(invoke(*base, "--data", data), "test split is empty", results_dir=res)


def test_blank_lines_only_train_split(base: list[str], res: Path, tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text("\n\n  \n")
    assert_refused(invoke(*base, *split_files(tmp_path, train=train)), "train split is empty", results_dir=res)


def test_empty_csv_split(base: list[str], res: Path, tmp_path: Path) -> None:
    test = tmp_path / "test.csv"
    test.write_text("")
    assert_refused(invoke(*base, *split_files(tmp_path, test=test)), "test", "empty", results_dir=res)


def test_header_only_csv_split(base: list[str], res: Path, tmp_path: Path) -> None:
    test = tmp_path / "test.csv"
    test.write_text("text,label\n")
    assert_refused(invoke(*base, *split_files(tmp_path, test=test)), "test split is empty", results_dir=res)


def test_data_folder_without_test_split(base: list[str], res: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", make_rows(48, 1))
    assert_refused(invoke(*base, "--data", data), "no test split", "--test-file", results_dir=res)


def test_jsonl_with_a_broken_line(base: list[str], res: Path, tmp_path: Path) -> None:
    rows = make_rows(10, 1)
    train = tmp_path / "train.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines[6] = lines[6][:-5]  # line 7 loses its end
    train.write_text("\n".join(lines) + "\n")
    assert_refused(invoke(*base, *split_files(tmp_path, train=train)), "train.jsonl", "line 7",
                   "not valid JSON", results_dir=res)


def test_jsonl_record_that_is_not_an_object(base: list[str], res: Path, tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(r) + "\n" for r in make_rows(4, 1)) + '["happy", "joy"]\n')
    assert_refused(invoke(*base, *split_files(tmp_path, train=train)), "train.jsonl", "line 5",
                   "JSON object", results_dir=res)


def test_json_array_file_that_is_broken(base: list[str], res: Path, tmp_path: Path) -> None:
    train = tmp_path / "train.json"
    train.write_text('[\n  {"text": "happy", "label": "joy"},\n  {"text": "sad" "label": "sadness"}\n]\n')
    assert_refused(invoke(*base, *split_files(tmp_path, train=train)), "train.json", "line 3",
                   "not valid JSON", results_dir=res)


def test_malformed_csv(base: list[str], res: Path, tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_text("text,label\nhappy day,joy\nsad day,sadness,extra,fields\nmad day,anger\n")
    assert_refused(invoke(*base, *split_files(tmp_path, train=train)), "train.csv", "cannot read",
                   "line 3", results_dir=res)


def test_csv_with_an_unterminated_quote(base: list[str], res: Path, tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_text('text,label\nhappy day,joy\n"sad day,sadness\nmad day,anger\n')
    assert_refused(invoke(*base, *split_files(tmp_path, train=train)), "train.csv", "cannot read",
                   results_dir=res)


def test_data_file_that_is_not_utf8(base: list[str], res: Path, tmp_path: Path) -> None:
    train = tmp_path / "train.jsonl"
    train.write_bytes(b'{"text": "caf\xe9 happy", "label": "joy"}\n')
    assert_refused(invoke(*base, *split_files(tmp_path, train=train)), "train.jsonl", "cannot read",
                   "utf-8", results_dir=res)


def test_parquet_file_that_is_not_parquet(base: list[str], res: Path, tmp_path: Path) -> None:
    train = tmp_path / "train.parquet"
    train.write_text("text,label\nhappy,joy\n")
    assert_refused(invoke(*base, *split_files(tmp_path, train=train)), "train.parquet", "cannot read",
                   results_dir=res)


def test_data_file_with_an_unknown_extension(base: list[str], res: Path, tmp_path: Path) -> None:
    train = tmp_path / "train.txt"
    train.write_text("happy day\tjoy\n")
    assert_refused(invoke(*base, *split_files(tmp_path, train=train)), "train.txt", "unknown type",
                   ".csv", ".jsonl", results_dir=res)


def test_data_file_that_does_not_exist(base: list[str], res: Path, tmp_path: Path) -> None:
    assert_refused(invoke(*base, *split_files(tmp_path, train=tmp_path / "nope.jsonl")), "nope.jsonl",
                   "does not exist", results_dir=res)


def test_data_file_that_is_a_folder(base: list[str], res: Path, tmp_path: Path) -> None:
    folder = tmp_path / "train.jsonl"
    folder.mkdir()
    assert_refused(invoke(*base, *split_files(tmp_path, train=folder)), "train.jsonl", "is a folder",
                   "not a file", results_dir=res)


def test_data_folder_with_no_split_files(base: list[str], res: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("nothing here\n")
    assert_refused(invoke(*base, "--data", data), "holds no train/validation/test", results_dir=res)


def test_unknown_builtin_dataset(base: list[str], res: Path) -> None:
    assert_refused(invoke(*base, "--data", "builtin:nosuch"), "unknown built-in dataset 'nosuch'",
                   "tweet_eval_emotion", results_dir=res)


def test_jsonl_column_mixing_value_types(base: list[str], res: Path, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", make_rows(3, 1) + [{"text": "happy", "label": 1}])
    assert_refused(invoke(*base, *split_files(tmp_path, train=train)), "train.jsonl", "column 'label'",
                   "mixes value types", "text at line 1", "number at line 4", results_dir=res)


def test_json_object_text_among_strings(base: list[str], res: Path, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", make_rows(2, 1) + [{"text": {"a": 1}, "label": "joy"}])
    assert_refused(invoke(*base, *split_files(tmp_path, train=train)), "column 'text'", "mixes value types",
                   "object at line 3", results_dir=res)


def test_non_text_values_in_the_text_column(base: list[str], res: Path, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", make_rows(6, 1) + [{"text": None, "label": "joy"}])
    assert_refused(invoke(*base, *split_files(tmp_path, train=train)), "text column 'text'", "train",
                   "non-text values", results_dir=res)


def test_non_text_values_in_the_text_pair_column(base: list[str], res: Path, tmp_path: Path) -> None:
    rows = [{**r, "context": r["text"]} for r in make_rows(12, 1)]
    rows[3]["context"] = None
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    val = write_jsonl(tmp_path / "validation.jsonl", [{**r, "context": "x"} for r in make_rows(6, 2)])
    test = write_jsonl(tmp_path / "test.jsonl", [{**r, "context": "x"} for r in make_rows(6, 3)])
    assert_refused(invoke(*base, *split_files(tmp_path, train, val, test), "--text-pair-column", "context"),
                   "text pair column 'context'", "non-text values", results_dir=res)


def test_empty_label_values(base: list[str], res: Path, tmp_path: Path) -> None:
    train = tmp_path / "train.csv"
    train.write_text("text,label\nhappy day,joy\nsad day,\nmad day,anger\n")
    assert_refused(invoke(*base, *split_files(tmp_path, train=train)), "label column 'label'", "empty values",
                   results_dir=res)


def test_list_labels(base: list[str], res: Path, tmp_path: Path) -> None:
    train = write_jsonl(tmp_path / "train.jsonl", [{**r, "label": [r["label"]]} for r in make_rows(12, 1)])
    assert_refused(invoke(*base, *split_files(tmp_path, train=train)), "label column 'label'", "train",
                   "lists or objects", "one string or number", results_dir=res)


def test_max_length_beyond_the_model(good: list[str], res: Path) -> None:
    # the tiny model takes 64 positions
    assert_refused(invoke(*set_flag(good, "--max-length", 100)), "max length 100", "64 tokens", "--max-length 64", results_dir=res)


def test_default_max_length_is_lowered_to_the_model_limit(tiny_model: str, res: Path, tmp_path: Path) -> None:
    """Not bad input: the default (128) meets a 64-position model and texts longer than that."""
    long = [{**r, "text": " ".join([r["text"]] * 20)} for r in make_rows(16, 1)]
    files = split_files(tmp_path, write_jsonl(tmp_path / "train.jsonl", long),
                        write_jsonl(tmp_path / "validation.jsonl", long[:8]), write_jsonl(tmp_path / "test.jsonl", long[8:]))
    r = invoke("run", "--model", tiny_model, *files, "--steps", 1, "--batch-size", 8, "--results-dir", res,
               "--json")
    assert r.exit_code == 0, (r.exception, r.stderr)
    assert json.loads(r.stdout)["result"]["task"]["max_length"] == 64


# -- models ----------------------------------------------------------------------------


def test_model_path_that_does_not_exist(tiny_data: Path, res: Path) -> None:
    r = invoke("run", "--model", "./no/such/model", "--data", tiny_data, "--steps", 2, "--batch-size", 8,
               "--results-dir", res)
    assert_refused(r, "./no/such/model", "does not exist", "model path", results_dir=res)


def test_model_folder_without_config(tiny_data: Path, res: Path, tmp_path: Path) -> None:
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    r = invoke("run", "--model", folder, "--data", tiny_data, "--steps", 2, "--batch-size", 8, "--results-dir", res)
    assert_refused(r, "not-a-model", "no config.json", results_dir=res)


def test_unreachable_hub_model(tiny_data: Path, res: Path) -> None:
    r = invoke("run", "--model", "nosuch-org/nosuch-model-xyz", "--data", tiny_data, "--steps", 2,
               "--batch-size", 8, "--results-dir", res)
    assert_refused(r, "cannot load model 'nosuch-org/nosuch-model-xyz'", "offline", results_dir=res)


def test_model_path_that_is_a_file(tiny_model: str, tiny_data: Path, res: Path) -> None:
    r = invoke("run", "--model", Path(tiny_model) / "config.json", "--data", tiny_data, "--steps", 2,
               "--batch-size", 8, "--results-dir", res)
    assert_refused(r, "config.json", "is a file", "folder", results_dir=res)


def test_model_folder_of_an_unknown_architecture(tiny_data: Path, res: Path, tmp_path: Path) -> None:
    folder = tmp_path / "odd-model"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "nosuchtype"}')
    r = invoke("run", "--model", folder, "--data", tiny_data, "--steps", 2, "--batch-size", 8, "--results-dir", res)
    line = assert_refused(r, "cannot load model", "odd-model", results_dir=res)
    assert "offline" not in line  # a local folder: the hub has nothing to do with it


def test_model_folder_without_weights(tiny_model: str, tiny_data: Path, res: Path, tmp_path: Path) -> None:
    folder = tmp_path / "no-weights"
    folder.mkdir()
    for f in Path(tiny_model).iterdir():
        if not f.name.endswith(".safetensors"):
            (folder / f.name).write_bytes(f.read_bytes())
    r = invoke("run", "--model", folder, "--data", tiny_data, "--steps", 2, "--batch-size", 8, "--results-dir", res)
    assert_refused(r, "cannot load model", "no-weights", "model.safetensors", results_dir=res)


# -- results ---------------------------------------------------------------------------


def test_results_show_with_no_results_yet(res: Path) -> None:
    assert_refused(invoke("results", "show", "nosuchid", "--results-dir", res), "no results", "peftbench compare")
    assert not res.exists()


def test_results_show_unknown_id(res: Path) -> None:
    Store(res).close()  # an empty store
    assert_refused(invoke("results", "show", "nosuchid", "--results-dir", res), "no stored run matches 'nosuchid'",
                   "peftbench results")


def test_results_list_with_no_results_yet(res: Path) -> None:
    assert_refused(invoke("results", "--results-dir", res), "no results", "--results-dir")
    assert not res.exists()


# -- the real program ------------------------------------------------------------------


def test_the_real_program_prints_exactly_one_line(tiny_model: str, tiny_data: Path, res: Path) -> None:
    """Through main() in a fresh process, after the model loaded: nothing around the one line, exit 2."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run(
        [sys.executable, "-m", "peftbench.cli", "run", "--model", tiny_model, "--data", str(tiny_data),
         "--steps", "2", "--batch-size", "8", "--max-length", "32", "--results-dir", str(res),
         "--param", "target_modules=[nope]"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert p.returncode == 2, p.stderr
    assert p.stderr.splitlines() == [p.stderr.strip()], p.stderr
    assert p.stderr.startswith("error: lora target modules nope match nothing"), p.stderr
    assert p.stdout == ""
    assert_nothing_stored(res)


# -- refusals that need a fix in cli.py ------------------------------------------------
# The message is printed as console markup, so user text in [brackets] is eaten or (a
# closing tag like [/x]) crashes the printer; --param values that are not valid YAML and
# flags of the wrong type escape `friendly` altogether.



def test_missing_column_with_brackets_in_its_name(good: list[str], res: Path) -> None:
    # The message quotes user input; it must reach the terminal verbatim.
    assert_refused(invoke(*good, "--text-column", "[nope]"), "text column '[nope]'", "missing",
                   results_dir=res)


def test_missing_column_with_a_closing_tag_in_its_name(good: list[str], res: Path) -> None:
    assert_refused(invoke(*good, "--text-column", "[/nope]"), "text column '[/nope]'", "missing", results_dir=res)


def test_param_value_that_is_not_valid_yaml(good: list[str], res: Path) -> None:
    assert_refused(invoke(*good, "--param", "target_modules=[query"), "--param", "target_modules",
                   results_dir=res)


def test_flag_of_the_wrong_type(good: list[str], res: Path) -> None:
    assert_refused(invoke(*set_flag(good, "--steps", "two")), "--steps", "integer", "--help", results_dir=res)


@pytest.mark.parametrize("args", [[], ["cache"], ["results", "--help"]])
def test_a_command_group_without_a_command_prints_its_help_and_no_empty_error(args: list[str]) -> None:
    r = invoke(*args)
    assert r.exit_code == 0, f"exit {r.exit_code}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"
    assert "Usage:" in r.stdout and "Commands" in r.stdout
    assert "error" not in r.stderr


def test_a_missing_argument_is_still_one_line_exit_2() -> None:
    assert_refused(invoke("results", "show"), "missing argument", "results show --help")


# -- config that would be silently ignored (found by exploratory testing, 2026-12-07) ------------------

def test_steps_and_epochs_together_are_refused(good: list[str], res: Path, tmp_path: Path) -> None:
    assert_refused(invoke(*good, "--epochs", "1"), "train.steps", "train.epochs", "not both", results_dir=res)
    cfg = write_yaml(tmp_path / "run.yaml", "train:\n  steps: 2\n  epochs: 1\n")
    i = good.index("--steps")
    assert_refused(invoke(*good[:i], *good[i + 2 :], "--config", cfg), "not both", results_dir=res)


def test_a_budget_flag_replaces_the_files_budget(good: list[str], res: Path, tmp_path: Path) -> None:
    from peftbench.cli.options import build_config

    cfg = write_yaml(tmp_path / "run.yaml", "train:\n  epochs: 3\n  batch_size: 4\n")
    raw, _ = build_config(cfg, {"steps": 2})
    assert raw["train"] == {"steps": 2, "batch_size": 4}


def test_an_empty_config_file_is_refused(good: list[str], res: Path, tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "run.yaml", "")
    assert_refused(invoke(*good, "--config", cfg), "is empty", "drop --config", results_dir=res)
    assert_refused(invoke("compare", "--config", cfg, "--results-dir", res), "is empty", results_dir=res)


def test_a_run_config_listing_methods_is_refused(good: list[str], res: Path, tmp_path: Path) -> None:
    cfg = write_yaml(tmp_path / "run.yaml", "methods: [ia3]\n")
    assert_refused(invoke(*good, "--config", cfg), "methods:", "peftbench compare --config", results_dir=res)
    both = write_yaml(tmp_path / "both.yaml", "method: {name: prompt}\nmethods: [lora]\n")
    assert_refused(invoke("compare", "--config", both, "--results-dir", res), "both method: and methods:", results_dir=res)


def test_a_model_config_field_of_the_wrong_type(base: list[str], tiny_data: Path, res: Path, tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "bert", "hidden_size": "x"}')
    args = set_flag([*base, "--data", str(tiny_data)], "--model", tmp_path / "bad")
    assert_refused(invoke(*args), "cannot load model", "hidden_size", results_dir=res)


def test_suggestions_point_at_the_right_key(good: list[str], res: Path, tmp_path: Path) -> None:
    from peftbench.errors import suggest

    assert suggest("train.learningrate", ["train.lr", "train.packing"]) == " (did you mean 'train.lr'?)"
    assert suggest("learning_rate", ["lr", "seed"]) == " (did you mean 'lr'?)"
    cfg = write_yaml(tmp_path / "c.yaml", "methods: [lora, {name: ia3, lr_grd: [0.01, 0.03]}]\n")
    assert_refused(invoke("compare", "--config", cfg, "--dry-run", "--results-dir", res), "'lr_grd'",
                   "did you mean 'lr_grid'", "head_lr_grid", results_dir=res)
    i = good.index("--steps")
    line = assert_refused(invoke(*good[:i], *good[i + 2 :], "-m", "lora(r=4, alpha=8)"), results_dir=res)
    assert "-m lora -p r=4 -p alpha=8" in line


@pytest.mark.parametrize("kind, hint", [("summarization", "--data builtin:dialogsum"), ("multiple_choice", "--data builtin:commonsense_qa"),
                                        ("table_to_text", "--data FILE_OR_FOLDER"), ("image_classification", "--data FILE_OR_FOLDER")])
def test_a_task_without_data_of_its_kind_names_some(tiny_model: str, res: Path, kind: str, hint: str) -> None:
    """It once read the default TweetEval and suggested remapping its columns."""
    line = assert_refused(invoke("run", "--model", tiny_model, "--task", kind, "--steps", "1", "--results-dir", res),
                          f"task '{kind}' needs data of its kind", results_dir=res)
    assert hint in line and ("(built in)" in line) == ("builtin:" in hint)
