"""Property-based fuzzing of everything that parses user input (issue 12, item 6).

Config files, sweep files, CLI-built configs and the CSV / JSON / JSONL / Parquet readers get
generated malformed input. Each must end in exactly one of two ways: a clean UserError with a
one-line message, or a valid parsed result of the right type. Any other exception fails.
The parsers are called directly, so the whole file runs in well under a minute.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import Dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peftbench.cli.options import _columns, _generation, _params, overrides
from peftbench.config import DataSpec, RunConfig, TaskSpec, deep_merge, load_yaml, parse_config
from peftbench.errors import UserError
from peftbench.sweep.spec import Sweep, expand
from peftbench.tasks.classification import Classification
from peftbench.tasks.sources import read_file

# 60 examples a test keeps the file under a minute on 2 slow cores; PEFTBENCH_FUZZ_EXAMPLES=2000 searches harder.
FUZZ = settings(max_examples=int(os.environ.get("PEFTBENCH_FUZZ_EXAMPLES", 60)), deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

# -- outcomes -------------------------------------------------------------------------------


def outcome(fn: Callable[[], Any], expect: type) -> Any:
    """fn's result if it is an `expect`; None if it refused cleanly; anything else fails the test."""
    try:
        result = fn()
    except UserError as e:
        msg = str(e)
        assert msg.strip() and "\n" not in msg.strip() and "Traceback" not in msg, f"not one clean line: {msg!r}"
        return None
    assert isinstance(result, expect), f"expected {expect.__name__}, got {type(result).__name__}"
    return result


def in_tmp(name: str, content: bytes) -> tuple[tempfile.TemporaryDirectory, Path]:
    d = tempfile.TemporaryDirectory()
    path = Path(d.name, name)
    path.write_bytes(content)
    return d, path


# -- values ---------------------------------------------------------------------------------

KEYS = st.sampled_from(["model", "task", "method", "train", "measure", "data", "name", "params", "source", "kind",
                        "steps", "epochs", "lr", "batch_size", "seed", "text_column", "label_column", "r", "generation",
                        "num_beams", "max_length", "test", "latency", "flops", "seconds", "prompt", "base", "axes",
                        "seeds", "study", "train.lr", "method.params.r", "x", "", "1"])
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(-2**70, 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["lora", "ia3", "full", "classification", "summarization", "{input}", "nan", "inf", "1e-3", "builtin:"]),
)
TREES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(KEYS | st.integers(-2, 2), inner, max_size=4)),
                     max_leaves=20)


def _yaml_text(tree: Any) -> str:
    return yaml.safe_dump(tree, allow_unicode=True, sort_keys=False)


# -- config files --------------------------------------------------------------------------


def _config_file(content: bytes) -> RunConfig | None:
    d, path = in_tmp("run.yaml", content)
    with d:
        data = outcome(lambda: load_yaml(path), dict)
        return None if data is None else outcome(lambda: parse_config(data), RunConfig)


@FUZZ
@given(tree=st.dictionaries(KEYS, TREES, max_size=5))
def test_config_file_of_nested_garbage(tree: dict) -> None:
    _config_file(_yaml_text(tree).encode())


@FUZZ
@given(text=st.text(max_size=200))
def test_config_file_of_random_text(text: str) -> None:
    _config_file(text.encode("utf-8", "surrogatepass"))


@FUZZ
@given(content=st.binary(max_size=200))
def test_config_file_of_random_bytes(content: bytes) -> None:
    _config_file(content)


VALID = {"model": {"name": "default"}, "task": {"kind": "classification", "data": {"source": "builtin:tweet_eval_emotion"}},
         "method": {"name": "lora", "params": {"r": 4}}, "train": {"steps": 4, "lr": 1e-3, "batch_size": 8}}


@FUZZ
@given(cut=st.integers(0, len(_yaml_text(VALID))), junk=st.text(max_size=8), section=st.sampled_from(list(VALID)),
       key=KEYS, value=TREES)
def test_config_file_truncated_or_with_a_bad_value(cut: int, junk: str, section: str, key: str, value: Any) -> None:
    text = _yaml_text(VALID)
    _config_file((text[:cut] + junk).encode("utf-8", "surrogatepass"))
    cfg = _config_file(_yaml_text(deep_merge(VALID, {section: {key: value}})).encode())
    known = RunConfig.model_fields[section].annotation.model_fields  # type: ignore[union-attr]
    assert cfg is None or key in known, f"the unknown key {section}.{key} was accepted"


def test_a_valid_config_file_parses() -> None:
    cfg = _config_file(_yaml_text(VALID).encode())
    assert cfg is not None and cfg.train.steps == 4 and cfg.method.params == {"r": 4}


# -- sweep files ---------------------------------------------------------------------------

AXIS_KEYS = st.sampled_from(["method", "model", "task", "train.lr", "train.steps", "train.nope", "method.params.r",
                             "study", "seeds", "train", "x.y.z"]) | KEYS
AXES = st.dictionaries(AXIS_KEYS, st.one_of(TREES, st.lists(TREES, max_size=3)), max_size=3)


@FUZZ
@given(name=SCALARS, base=st.one_of(TREES, st.just(VALID)), axes=st.one_of(TREES, AXES),
       seeds=st.one_of(st.none(), SCALARS, st.lists(SCALARS, max_size=3)), extra=st.dictionaries(KEYS, TREES, max_size=1))
def test_sweep_file_of_garbage(name: Any, base: Any, axes: Any, seeds: Any, extra: dict) -> None:
    doc = {"name": name, "base": base, "axes": axes, **({"seeds": seeds} if seeds is not None else {}), **extra}
    d, path = in_tmp("sweep.yaml", _yaml_text(doc).encode())
    with d:
        sweep = outcome(lambda: expand(path), Sweep)
    if sweep is not None:
        assert all(isinstance(r.config, RunConfig) for r in sweep.runs)


# -- configs built from CLI flags ----------------------------------------------------------

ITEMS = st.lists(st.text(max_size=16) | st.builds(lambda k, v: f"{k}={v}", KEYS, st.text(max_size=10)), max_size=3)


@FUZZ
@given(params=ITEMS, columns=ITEMS, generation=ITEMS, steps=st.none() | st.integers(), lr=st.none() | st.floats(),
       epochs=st.none() | st.floats(), seed=st.none() | st.integers(), data=st.none() | st.text(max_size=10))
def test_cli_flags_build_a_config_or_refuse(params: list[str], columns: list[str], generation: list[str],
                                            steps: int | None, lr: float | None, epochs: float | None,
                                            seed: int | None, data: str | None) -> None:
    values = {"param": params, "column": columns, "generation": generation, "steps": steps, "lr": lr,
              "epochs": epochs, "seed": seed, "data": data}
    raw = outcome(lambda: overrides(values), dict)
    if raw is not None:
        outcome(lambda: parse_config(raw), RunConfig)
    for fn, items in ((_params, params), (_columns, columns), (_generation, generation)):
        outcome(lambda: fn(items), dict)


# -- data files ----------------------------------------------------------------------------

CELLS = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.integers(-2**80, 2**80),
                  st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=10),
                  st.lists(st.integers(0, 3), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
ROWS = st.lists(st.dictionaries(st.sampled_from(["text", "label", "x", ""]), CELLS, max_size=4), max_size=8)


def _read(name: str, content: bytes) -> Dataset | None:
    d, path = in_tmp(name, content)
    with d:
        return outcome(lambda: read_file(path), Dataset)


def _csv(rows: list[dict]) -> bytes:
    return pd.DataFrame(rows).to_csv(index=False).encode() if rows else b""


def _jsonl(rows: list[Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


@FUZZ
@given(suffix=st.sampled_from([".csv", ".json", ".jsonl", ".parquet"]), content=st.binary(max_size=300))
def test_any_reader_on_random_bytes(suffix: str, content: bytes) -> None:
    _read("train" + suffix, content)


@FUZZ
@given(rows=ROWS, fmt=st.sampled_from(["csv", "jsonl", "json"]), cut=st.floats(0, 1),
       encoding=st.sampled_from(["utf-8", "latin-1", "utf-16", "utf-8-sig", "cp1252"]))
def test_text_readers_on_generated_rows_truncated_and_re_encoded(rows: list[dict], fmt: str, cut: float,
                                                                  encoding: str) -> None:
    text = {"csv": _csv(rows).decode(), "jsonl": _jsonl(rows).decode(), "json": json.dumps(rows)}[fmt]
    try:
        content = text.encode(encoding)
    except UnicodeEncodeError:
        content = text.encode("utf-8")
    whole = _read("train." + fmt, content)
    if whole is not None and encoding in ("utf-8", "utf-8-sig") and fmt != "csv":
        assert set(whole.column_names) == {k for r in rows for k in r}
        assert len(whole) == len(rows) or not whole.column_names  # records without keys hold no rows
    _read("train." + fmt, content[: int(len(content) * cut)])


@FUZZ
@given(lines=st.lists(st.lists(st.text("ab,\"\n\r;x1é", max_size=6), max_size=5), max_size=6))
def test_csv_reader_on_ragged_rows(lines: list[list[str]]) -> None:
    text = "text,label\n" + "\n".join(",".join(cells) for cells in lines)
    ds = _read("train.csv", text.encode())
    if ds is not None:
        assert ds.column_names[:2] == ["text", "label"] or len(ds.column_names) <= 2


@FUZZ
@given(records=st.lists(TREES, max_size=6), wrap=st.booleans())
def test_json_readers_on_nested_values(records: list[Any], wrap: bool) -> None:
    _read("train.jsonl", _jsonl(records))
    _read("train.json", json.dumps(records if wrap else (records[0] if records else {}), allow_nan=True).encode())


PA_TYPES = st.sampled_from([pa.int64(), pa.float64(), pa.string(), pa.bool_(), pa.list_(pa.int32()), pa.binary(),
                            pa.struct([("a", pa.int8())]), pa.null(), pa.timestamp("s"), pa.dictionary(pa.int8(), pa.string())])


@FUZZ
@given(types=st.lists(PA_TYPES, min_size=1, max_size=3), n=st.integers(0, 5), cut=st.floats(0, 1),
       names=st.lists(st.sampled_from(["text", "label", "x"]), min_size=3, max_size=3))
def test_parquet_reader_on_odd_column_types_and_truncation(types: list[pa.DataType], n: int, cut: float,
                                                           names: list[str]) -> None:
    cols = [pa.array([None] * n, type=t) if not pa.types.is_dictionary(t) else pa.array([None] * n, pa.string()).dictionary_encode()
            for t in types]
    table = pa.table(cols, names=names[: len(cols)]) if len(set(names[: len(cols)])) == len(cols) else pa.table(
        cols, names=[f"c{i}" for i in range(len(cols))])
    content = _parquet(table)
    ds = _read("train.parquet", content)
    if ds is not None:
        assert ds.column_names == table.column_names and len(ds) == n
    _read("train.parquet", content[: int(len(content) * cut)])


@FUZZ
@given(text=st.lists(st.one_of(st.text(max_size=8), st.floats(), st.none()), min_size=6, max_size=6),
       label=st.lists(st.one_of(st.sampled_from(["a", "b"]), st.integers(0, 1), st.floats(), st.none(),
                                st.lists(st.integers(), max_size=1)), min_size=6, max_size=6),
       drop=st.sampled_from([None, "text", "label"]), fmt=st.sampled_from(["jsonl", "csv", "parquet"]))
def test_a_classification_task_reads_its_columns_or_refuses(text: list[Any], label: list[Any], drop: str | None,
                                                            fmt: str) -> None:
    rows = [{k: v for k, v in {"text": t, "label": y}.items() if k != drop} for t, y in zip(text, label)]
    write = {"jsonl": lambda r: _jsonl(r), "csv": _csv,
             "parquet": lambda r: _parquet(pa.Table.from_pandas(pd.DataFrame(r)))}[fmt]
    with tempfile.TemporaryDirectory() as d:
        for split in ("train", "validation", "test"):
            try:
                Path(d, f"{split}.{fmt}").write_bytes(write(rows))
            except (pa.ArrowException, ValueError, TypeError):
                return  # pyarrow cannot even write such a table
        task = Classification(TaskSpec(data=DataSpec(source=d)))
        done = outcome(lambda: task.load_data() or task, Classification)
    if done is not None:
        assert set(done.splits) == {"train", "validation", "test"}
        assert all(isinstance(x, str) for x in done.splits["train"]["text"])
        assert len(done.labels) >= 2


@pytest.mark.parametrize("value", [math.nan, math.inf, 1e308, -1e308, 2**64])
def test_huge_and_nan_numbers_in_every_format(value: float) -> None:
    rows = [{"text": "a", "label": value}, {"text": "b", "label": 1}]
    for name, content in (("t.csv", _csv(rows)), ("t.jsonl", _jsonl(rows)), ("t.json", json.dumps(rows).encode())):
        ds = _read(name, content)
        assert ds is None or ds.column_names == ["text", "label"]
