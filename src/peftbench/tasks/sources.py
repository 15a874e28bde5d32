"""Where data comes from: built-in demo data, local files, or a hub dataset.

Every source ends as a DatasetDict with train / validation / test. A missing validation
split is carved from train with a fixed seed, so every method and seed sees the same split.
"""

from __future__ import annotations

import json
import math
from importlib import resources
from pathlib import Path

import pandas as pd
import pyarrow as pa
from datasets import Dataset, DatasetDict

from peftbench.config import DataSpec
from peftbench.errors import UserError

SPLITS = ("train", "validation", "test")
SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".json": "json", ".jsonl": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
SPLIT_ALIASES = {"train": ("train",), "validation": ("validation", "valid", "val", "dev"), "test": ("test",)}
CARVE_SEED = 0


def builtin_names() -> list[str]:
    return sorted(p.name for p in (resources.files("peftbench") / "data").iterdir()
                  if p.is_dir() and not p.name.startswith(("_", ".")))


def builtin_dir(name: str) -> Path:
    # Only a listed name: '' or '../x' would otherwise resolve to some folder and read as "no train split".
    if name not in builtin_names():
        what = f"unknown built-in dataset '{name}'" if name.strip() else "no built-in dataset named after 'builtin:'"
        raise UserError(f"{what}; known: {', '.join(builtin_names())} (e.g. --data builtin:tweet_eval_emotion)")
    return Path(str(resources.files("peftbench") / "data" / name))


def builtin_columns(spec: DataSpec) -> dict[str, str]:
    """A built-in dataset's column names by role (its columns.json), so no flags are needed."""
    if not spec.source.startswith("builtin:") or spec.train_file or spec.test_file:
        return {}
    f = builtin_dir(spec.source[8:]) / "columns.json"
    return json.loads(f.read_text()) if f.is_file() else {}


def read_file(path: Path) -> Dataset:
    """Read one CSV / TSV / JSON / JSONL / Parquet file; malformed input names its line."""
    if path.is_dir():
        raise UserError(f"data file '{path}' is a folder, not a file; give a file (or pass the folder with --data)")
    if not path.is_file():
        raise UserError(f"data file '{path}' does not exist; check the path")
    fmt = SUFFIXES.get(path.suffix.lower())
    if fmt is None:
        raise UserError(f"data file '{path}' has an unknown type; use .csv, .tsv, .json, .jsonl or .parquet")
    try:
        if fmt in ("csv", "tsv"):
            try:
                df = pd.read_csv(path, sep="\t" if fmt == "tsv" else ",")
            except pd.errors.EmptyDataError:  # a 0-byte file: an empty split, reported as such
                df = pd.DataFrame()
        elif fmt == "parquet":
            df = pd.read_parquet(path)
        else:
            df = pd.DataFrame(_read_json_records(path))
        return Dataset.from_pandas(df, preserve_index=False)
    except UserError:
        raise
    except UnicodeDecodeError:
        raise UserError(f"cannot read data file '{path}': it is not UTF-8 text ({_bad_byte(path)}); "
                        "re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    except OverflowError:
        raise UserError(f"cannot read data file '{path}': a number is too large for a 64-bit column; "
                        "write it as text (quoted) or make it smaller") from None
    except (pd.errors.ParserError, ValueError, TypeError, OSError, pa.ArrowException) as err:
        # ArrowException: values pyarrow cannot put in one typed column (ArrowInvalid is also a ValueError)
        raise UserError(f"cannot read data file '{path}': {_one_line(err)}; fix the file") from None


def _bad_byte(path: Path) -> str:
    """Where a file's first non-UTF-8 byte is: pandas reports offsets within its read buffer, not the file."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        return f"bad byte 0x{data[err.start]:02x} at file offset {err.start}, line {line}"
    return "a bad byte"


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _kind(value: object) -> str | None:
    """A JSON value's kind, for refusing columns that mix kinds (None: missing, fits any)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "text", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def _read_json_records(path: Path) -> list[dict]:
    """Records of a JSON array, a single JSON object, or JSON Lines; each mistake names its line."""
    text = path.read_text(encoding="utf-8-sig")
    rows: list | None = None
    where: list[str] = []  # "line N" / "record N" for each row, for messages
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text) if text.strip() else []
        except json.JSONDecodeError as err:
            if err.msg != "Extra data":  # "Extra data": several values, so JSON Lines under .json
                raise UserError(
                    f"data file '{path}' is not valid JSON at line {err.lineno}: {err.msg}; fix that line"
                ) from None
        else:
            if isinstance(doc, dict):
                doc = [doc]
            if not isinstance(doc, list):
                raise UserError(
                    f"data file '{path}' holds a JSON {type(doc).__name__}; give a list of records "
                    "([{...}, ...]) or JSON Lines (one {...} per line)"
                )
            rows, where = doc, [f"record {i}" for i in range(1, len(doc) + 1)]
    if rows is None:  # JSON Lines
        rows = []
        for no, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise UserError(f"data file '{path}' line {no} is not valid JSON ({err.msg}); fix or remove that line") from None
            where.append(f"line {no}")
    first_seen: dict[str, tuple[str, str]] = {}  # column -> (kind, where)
    for row, at in zip(rows, where):
        if not isinstance(row, dict):
            got = _kind(row) or "null"
            raise UserError(
                f"data file '{path}' {at} is a JSON {got}, not a JSON object; make each record one {{...}} object"
            )
        for col, value in row.items():
            kind = _kind(value)
            if kind is None:
                continue
            seen = first_seen.setdefault(col, (kind, at))
            if seen[0] != kind:
                raise UserError(
                    f"data file '{path}' column '{col}' mixes value types ({seen[0]} at {seen[1]}, {kind} at {at}); "
                    "give every value of a column the same type (e.g. quote numbers as strings)"
                )
    return rows


def split_files(folder: Path) -> dict[str, Path]:
    """The train / validation / test data files of a folder, by name (aliases: valid, val, dev)."""
    found: dict[str, Path] = {}
    for f in sorted(folder.iterdir()):
        if not f.is_file() or f.suffix.lower() not in SUFFIXES:
            continue
        for split, names in SPLIT_ALIASES.items():
            if f.stem.lower() in names and split not in found:
                found[split] = f
    return found


def _from_hub(spec: DataSpec) -> DatasetDict:
    from datasets import load_dataset

    try:
        dd = load_dataset(spec.source, spec.subset)
    except Exception as err:  # datasets raises many types; all mean "cannot get it"
        raise UserError(
            f"cannot load dataset '{spec.source}': {str(err).splitlines()[0][:160]}; "
            "give a local file/folder, 'builtin:<name>', or a reachable hub dataset"
        ) from None
    out = {}
    for split, names in SPLIT_ALIASES.items():
        for n in names:
            if n in dd:
                out[split] = dd[n]
                break
    return DatasetDict(out)


def _same_case(dd: DatasetDict) -> DatasetDict:
    """Every split's columns spelled as train spells them where they differ only in case (train.csv with
    `Text,Label`, test.csv with `text,label`): a role then finds one column name in all splits."""
    if "train" not in dd:
        return dd
    spelling = {c.lower(): c for c in dd["train"].column_names}
    out = {}
    for split, ds in dd.items():
        lower = [c.lower() for c in ds.column_names]
        renames = {c: spelling[c.lower()] for c in ds.column_names
                   if c.lower() in spelling and spelling[c.lower()] != c and spelling[c.lower()] not in ds.column_names
                   and lower.count(c.lower()) == 1}
        out[split] = ds.rename_columns(renames) if renames else ds
    return DatasetDict(out)


def load_splits(spec: DataSpec) -> DatasetDict:
    """Return train / validation / test; validation carved from train when absent. Read once per process (reuse.py)."""
    from peftbench import reuse

    return reuse.splits(spec, lambda: _read_splits(spec))


def _read_splits(spec: DataSpec) -> DatasetDict:
    files = {s: getattr(spec, f"{s}_file") for s in SPLITS if getattr(spec, f"{s}_file")}
    if files:
        dd = DatasetDict({s: read_file(Path(p).expanduser()) for s, p in files.items()})
    elif spec.source.startswith("builtin:"):
        dd = DatasetDict({s: read_file(p) for s, p in split_files(builtin_dir(spec.source[8:])).items()})
    elif Path(spec.source).expanduser().is_dir():
        folder = Path(spec.source).expanduser()
        found = split_files(folder)
        if not found:
            raise UserError(f"data folder '{folder}' holds no train/validation/test .csv/.tsv/.json/.jsonl/.parquet files")
        dd = DatasetDict({s: read_file(p) for s, p in found.items()})
    elif Path(spec.source).suffix.lower() in SUFFIXES:
        if not Path(spec.source).expanduser().is_file():
            raise UserError(f"data file '{spec.source}' does not exist; check the path")
        raise UserError(f"data source '{spec.source}' is one file; give --train-file and --test-file instead")
    else:
        dd = _from_hub(spec)
    dd = _same_case(dd)
    if "test" not in dd and "train" in dd and spec.test_fraction:
        parts = dd["train"].train_test_split(test_size=spec.test_fraction, seed=CARVE_SEED)
        dd = DatasetDict({**dd, "train": parts["train"], "test": parts["test"]})
    for split in ("train", "test"):
        if split not in dd:
            fix = " or pass --test-fraction 0.2 (data.test_fraction in a config file) to carve it from train" if split == "test" else ""
            raise UserError(f"data has no {split} split; provide one (e.g. --{split}-file PATH){fix}")
    if "validation" not in dd:
        parts = dd["train"].train_test_split(test_size=spec.validation_fraction, seed=CARVE_SEED)
        dd = DatasetDict({"train": parts["train"], "validation": parts["test"], "test": dd["test"]})
    for split in SPLITS:
        if len(dd[split]) == 0:
            raise UserError(f"the {split} split is empty; give it at least one example")
    if spec.max_train_examples:
        dd["train"] = dd["train"].select(range(min(spec.max_train_examples, len(dd["train"]))))
    if spec.max_eval_examples:
        for split in ("validation", "test"):
            dd[split] = dd[split].select(range(min(spec.max_eval_examples, len(dd[split]))))
    return dd
