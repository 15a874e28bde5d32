"""Wrong input that used to be accepted (issue 12, items 7 and 10): each is refused through the CLI
in one line with exit 2, and nothing reaches the results store."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from peftbench.config import DataSpec, DuplicateKey, RunConfig, TaskSpec, _numeric, nest, parse_config, parse_yaml
from peftbench.errors import UserError
from peftbench.tasks import REGISTRY
from conftest import make_rows, write_csv
from test_bad_input import assert_nothing_stored, assert_refused, invoke, split_files

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def res(tmp_path: Path) -> Path:
    return tmp_path / "res"


@pytest.fixture
def quick(tiny_model: str, tiny_data: Path, res: Path) -> list[str]:
    return ["run", "--model", tiny_model, "--data", str(tiny_data), "--steps", "2", "--batch-size", "8",
            "--max-length", "32", "--results-dir", str(res)]


# -- an empty sweep file -----------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "# only a comment\n# and another\n", "{}", "null", "---\n", "~\n",
                                  "name: nothing\n", "base: {}\naxes: {}\n"])
def test_an_empty_sweep_file_is_refused_instead_of_a_default_job(text: str, res: Path, tmp_path: Path) -> None:
    (tmp_path / "sweep.yaml").write_text(text)
    assert_refused(invoke("sweep", tmp_path / "sweep.yaml", "--results-dir", res), "sweep.yaml", "empty", "base:",
                   "axes:", results_dir=res)


# -- an empty results folder -------------------------------------------------------------


def _commands(tmp_path: Path) -> dict[str, list[str]]:
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("base: {train: {steps: 1}}\naxes: {train.lr: [1.0e-3]}\n")
    return {"run": ["run"], "compare": ["compare"], "sweep": ["sweep", str(sweep)], "results": ["results"],
            "results show": ["results", "show", "abc"], "report": ["report"], "predict": ["predict", "abc", "hi"],
            "export": ["export", "abc", str(tmp_path / "out")]}


@pytest.mark.parametrize("value", ["", " ", "\t"])
@pytest.mark.parametrize("command", ["run", "compare", "sweep", "results", "results show", "report", "predict", "export"])
def test_an_empty_results_dir_is_refused_by_every_command(command: str, value: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    args = _commands(tmp_path)[command]
    monkeypatch.chdir(tmp_path)
    before = sorted(tmp_path.iterdir())
    assert_refused(invoke(*args, "--results-dir", value), "--results-dir", "empty", "peftbench-results")
    assert sorted(tmp_path.iterdir()) == before, "nothing may be written into the current folder"
    assert not (tmp_path / "results.sqlite").exists()


# -- two roles on one column ---------------------------------------------------------------


@pytest.mark.parametrize("flags, roles", [
    (["--text-column", "label"], ("text", "label")),
    (["--label-column", "text"], ("text", "label")),
    (["--text-pair-column", "text"], ("text", "text_pair")),
    (["--column", "text_pair=label"], ("label", "text_pair")),
])
def test_two_roles_reading_one_column_are_refused(flags: list[str], roles: tuple[str, str], quick: list[str],
                                                  res: Path) -> None:
    assert_refused(invoke(*quick, *flags), *roles, "both read column", "--column", results_dir=res)
    assert_nothing_stored(res)


@pytest.mark.parametrize("kind, first, second", [
    (kind, a.name, b.name) for kind, cls in sorted(REGISTRY.items()) for a, b in itertools.combinations(cls.column_roles, 2)
])
def test_every_task_refuses_any_two_roles_on_one_column(kind: str, first: str, second: str) -> None:
    data = DataSpec(source="some/folder", **{f"{first}_column": "col", f"{second}_column": "col"})
    task = REGISTRY[kind](TaskSpec(kind=kind, data=data))
    with pytest.raises(UserError, match=f"the {first} and {second} roles both read column 'col'"):
        task.require_distinct_columns()
    task.spec = TaskSpec(kind=kind, data=DataSpec(source="some/folder", **{f"{first}_column": "a", f"{second}_column": "b"}))
    task.require_distinct_columns()  # distinct columns pass


# -- true/false where a number belongs -----------------------------------------------------


def _numeric_keys(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys += _numeric_keys(field.annotation, f"{prefix}{name}.")
        elif _numeric(field.annotation):
            keys.append(prefix + name)
    return keys


NUMERIC = _numeric_keys()


def test_the_numeric_fields_are_found() -> None:
    assert {"train.steps", "train.epochs", "train.batch_size", "train.seed", "train.lr", "task.max_length",
            "task.generation.num_beams", "task.data.test_fraction", "measure.latency_batch"} <= set(NUMERIC)
    assert "train.test" not in NUMERIC and "measure.latency" not in NUMERIC  # real booleans stay booleans


@pytest.mark.parametrize("key", ["train.steps", "train.epochs", "train.batch_size", "train.seed", "train.lr"])
def test_true_or_false_for_a_number_in_a_config_file_is_refused(key: str, tiny_config: dict, res: Path,
                                                                tmp_path: Path) -> None:
    cfg = {**tiny_config, "train": {"batch_size": 8}}
    section, name = key.split(".")
    cfg[section] = {**cfg[section], name: True}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert_refused(invoke("run", "--config", tmp_path / "run.yaml", "--results-dir", res), key,
                   "must be a number, not true/false", results_dir=res)


def test_true_for_steps_in_a_sweep_axis_is_refused(tiny_config: dict, res: Path, tmp_path: Path) -> None:
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump({"base": tiny_config, "axes": {"train.steps": [4, True]}}))
    assert_refused(invoke("sweep", tmp_path / "sweep.yaml", "--results-dir", res), "train.steps", "entry 2",
                   "not true/false", results_dir=res)


@settings(max_examples=150, deadline=None, database=None)
@given(key=st.sampled_from(NUMERIC), value=st.booleans())
def test_no_numeric_field_takes_a_boolean(key: str, value: bool) -> None:
    with pytest.raises(UserError, match=f"'{key}': must be a number, not true/false"):
        parse_config(nest(key, value))


@settings(max_examples=100, deadline=None, database=None)
@given(steps=st.integers(1, 10**6), epochs=st.floats(0.01, 100), test=st.booleans(), latency=st.booleans())
def test_real_numbers_and_real_booleans_still_pass(steps: int, epochs: float, test: bool, latency: bool) -> None:
    cfg = parse_config({"train": {"steps": steps, "epochs": epochs, "test": test}, "measure": {"latency": latency}})
    assert (cfg.train.steps, cfg.train.epochs, cfg.train.test, cfg.measure.latency) == (steps, epochs, test, latency)


# -- duplicate YAML keys -------------------------------------------------------------------


@pytest.mark.parametrize("text, key, line", [
    ("train:\n  steps: 2\ntrain:\n  steps: 4\n", "train", 3),
    ("train:\n  steps: 2\n  batch_size: 8\n  steps: 4\n", "steps", 4),
    ("method: {name: lora, params: {r: 4, r: 8}}\n", "r", 1),
])
def test_a_config_file_with_a_duplicate_key_is_refused(text: str, key: str, line: int, res: Path, tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_text(text)
    assert_refused(invoke("run", "--config", tmp_path / "run.yaml", "--results-dir", res), "run.yaml",
                   f"repeats the key '{key}' (line {line})", results_dir=res)


def test_a_sweep_file_with_a_duplicate_key_deep_inside_is_refused(res: Path, tmp_path: Path) -> None:
    text = "base:\n  train: {steps: 2}\naxes:\n  study:\n    - {train: {lr: 1.0e-3, lr: 1.0e-2}}\n"
    (tmp_path / "sweep.yaml").write_text(text)
    assert_refused(invoke("sweep", tmp_path / "sweep.yaml", "--results-dir", res), "sweep.yaml",
                   "repeats the key 'lr' (line 5)", results_dir=res)


NAMES = st.text("abcxyz_", min_size=1, max_size=4)
TREES = st.recursive(st.integers(-5, 5) | st.booleans() | NAMES,
                     lambda inner: st.dictionaries(NAMES, inner, min_size=1, max_size=3), max_leaves=10)


def _paths(tree: Any, prefix: tuple = ()) -> list[tuple]:
    """Every mapping's location in a tree."""
    if not isinstance(tree, dict):
        return []
    return [prefix, *(p for k, v in tree.items() for p in _paths(v, (*prefix, k)))]


def _render(node: Any, path: tuple, where: tuple, key: str) -> str:
    """node as YAML flow text (JSON is YAML); the mapping at `where` holds `key` twice."""
    if not isinstance(node, dict):
        return json.dumps(node)
    items = [(k, v) for k, v in node.items()] + ([(key, node[key])] if path == where else [])
    return "{" + ", ".join(f"{json.dumps(k)}: {_render(v, (*path, k), where, key)}" for k, v in items) + "}"


@settings(max_examples=150, deadline=None, database=None)
@given(tree=st.dictionaries(NAMES, TREES, min_size=1, max_size=4), data=st.data())
def test_a_duplicate_key_is_found_at_any_depth(tree: dict, data: st.DataObject) -> None:
    assert parse_yaml(yaml.safe_dump(tree)) == tree  # without duplicates, exactly what safe_load reads
    assert parse_yaml(_render(tree, (), (None,), "")) == tree
    where = data.draw(st.sampled_from(_paths(tree)))
    node = tree
    for k in where:
        node = node[k]
    key = data.draw(st.sampled_from(sorted(node)))
    with pytest.raises(DuplicateKey) as err:
        parse_yaml(_render(tree, (), where, key))
    assert err.value.key == key


# -- misleading messages -------------------------------------------------------------------


def test_a_latin1_csv_names_the_file_offset_and_line_of_its_bad_byte(tiny_model: str, res: Path, tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", make_rows(48, 1))
    good = train.read_bytes()
    train.write_bytes(good + "café happy,joy\n".encode("latin-1"))
    offset, line = len(good) + 3, good.count(b"\n") + 1
    write_csv(tmp_path / "validation.csv", make_rows(12, 2))
    write_csv(tmp_path / "test.csv", make_rows(12, 3))
    msg = assert_refused(invoke("run", "--model", tiny_model, "--data", tmp_path, "--results-dir", res), "train.csv",
                         f"file offset {offset}", f"line {line}", "0xe9", "UTF-8", results_dir=res)
    assert offset > 300 and "offset 3)" not in msg


@pytest.mark.parametrize("source", ["builtin:", "builtin: ", "builtin:../x", "builtin:..", "builtin:.",
                                    "builtin:tweet_eval_emotion/..", "builtin:/etc"])
def test_a_missing_or_unknown_builtin_name_lists_the_builtin_datasets(source: str, quick: list[str], res: Path) -> None:
    i = quick.index("--data")
    args = [*quick[: i + 1], source, *quick[i + 2:]]
    line = assert_refused(invoke(*args), "built-in dataset", "tweet_eval_emotion", "dialogsum", "commonsense_qa",
                          results_dir=res)
    assert "no train split" not in line


@pytest.mark.parametrize("grid", ["nan", "NaN", "1e-3,nan", "inf,nan"])
def test_a_nan_learning_rate_grid_is_refused_at_the_flag_check(grid: str, res: Path) -> None:
    assert_refused(invoke("compare", "--methods", "lora", "--lr-grid", grid, "--results-dir", res), "--lr-grid",
                   results_dir=res)


def test_a_config_file_that_is_not_utf8_is_refused(res: Path, tmp_path: Path) -> None:
    (tmp_path / "run.yaml").write_bytes("train: {steps: 2}\n# café\n".encode("latin-1"))
    assert_refused(invoke("run", "--config", tmp_path / "run.yaml", "--results-dir", res), "run.yaml", "UTF-8",
                   results_dir=res)


# -- found by tests/test_fuzz_inputs.py ----------------------------------------------------


@pytest.mark.parametrize("text, words", [
    ("base: {train: {steps: 1}}\nseeds: 100000000000\n", ("seeds: 100000000000", "more than 10000")),
    ("base: {train: {steps: 1}}\naxes:\n" + "".join(f"  study{i}: [{', '.join('{train: {seed: %d}}' % j for j in range(10))}]\n" for i in range(5)),
     ("100000 runs", "more than 10000")),
    ("base: {train: {steps: 1}}\naxes:\n  method:\n    - {name: lora, grid: {r: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], "
     "alpha: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], dropout: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0.1], "
     "target_modules: [a, b, c, d, e, f, g, h, i, j]}}\n", ("grid", "more than 10000")),
])
def test_a_sweep_that_expands_beyond_reason_is_refused_at_once(text: str, words: tuple, res: Path, tmp_path: Path) -> None:
    (tmp_path / "sweep.yaml").write_text(text)
    assert_refused(invoke("sweep", tmp_path / "sweep.yaml", "--results-dir", res), *words, results_dir=res)


@pytest.mark.parametrize("flag, value", [("--generation", "num_beams=,"), ("--generation", "top_k=[1"),
                                         ("--param", "r={a: 1, a: 2}"), ("--param", "\n")])
def test_a_flag_value_that_is_not_yaml_is_one_line(flag: str, value: str, quick: list[str], res: Path) -> None:
    assert_refused(invoke(*quick, flag, value), flag, results_dir=res)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_a_number_beyond_64_bits_in_a_data_file_is_refused(suffix: str, tiny_model: str, res: Path,
                                                           tmp_path: Path) -> None:
    rows = [{**r, "label": 2**64 + i % 2} for i, r in enumerate(make_rows(24, 1))]
    train = tmp_path / f"train{suffix}"
    if suffix == ".csv":
        write_csv(train, rows)
    else:
        train.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert_refused(invoke("run", "--model", tiny_model, *split_files(tmp_path, train=train), "--results-dir", res),
                   f"train{suffix}", "too large", results_dir=res)


def test_compare_refuses_an_absurd_seed_count_before_allocating_it(res: Path) -> None:
    assert_refused(invoke("compare", "--methods", "lora", "--seeds", "100000000000", "--results-dir", res), "--seeds",
                   "10000", results_dir=res)
