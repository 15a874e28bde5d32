"""Data sources and metrics: local formats, label kinds, the validation carve, scores."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from conftest import make_rows, write_jsonl
from peftbench.config import DataSpec, TaskSpec
from peftbench.tasks.classification import Classification, classification_metrics, length_grouped_batches
from peftbench.tasks.sources import load_splits


def write(df: pd.DataFrame, path: Path) -> str:
    {".csv": lambda: df.to_csv(path, index=False), ".parquet": lambda: df.to_parquet(path),
     ".json": lambda: df.to_json(path, orient="records"), ".jsonl": lambda: df.to_json(path, orient="records", lines=True)}[path.suffix]()
    return str(path)


@pytest.mark.parametrize("suffix", [".csv", ".json", ".jsonl", ".parquet"])
def test_every_local_format_with_custom_columns(tmp_path: Path, suffix: str) -> None:
    rows = pd.DataFrame(make_rows(40, 0)).rename(columns={"text": "sentence", "label": "emotion"})
    spec = DataSpec(train_file=write(rows, tmp_path / f"train{suffix}"), test_file=write(rows[:10], tmp_path / f"test{suffix}"),
                    text_column="sentence", label_column="emotion")
    task = Classification(TaskSpec(data=spec))
    task.load_data()
    assert task.labels == ["anger", "joy", "sadness"]
    sizes = task.describe()["sizes"]
    assert sizes == {"train": 36, "validation": 4, "test": 10}  # 10% of train carved off
    assert task.splits["test"]["text"][0] == rows["sentence"][0]


def test_integer_labels_keep_numeric_order(tmp_path: Path) -> None:
    df = pd.DataFrame({"text": [f"t{i}" for i in range(30)], "label": [i % 3 for i in range(30)]})
    df.loc[0, "label"] = 10
    spec = DataSpec(train_file=write(df, tmp_path / "train.csv"), test_file=write(df, tmp_path / "test.csv"))
    task = Classification(TaskSpec(data=spec))
    task.load_data()
    assert task.labels == ["0", "1", "2", "10"]
    assert task.splits["test"]["label"][:4] == [3, 1, 2, 0]


def test_validation_carve_is_reproducible_and_disjoint(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "train.jsonl", [{**r, "text": f"{i} {r['text']}"} for i, r in enumerate(make_rows(100, 0))])
    write_jsonl(tmp_path / "test.jsonl", make_rows(10, 1))
    a, b = load_splits(DataSpec(source=str(tmp_path))), load_splits(DataSpec(source=str(tmp_path)))
    assert list(a["validation"]["text"]) == list(b["validation"]["text"]) and len(a["validation"]) == 10
    assert not set(a["validation"]["text"]) & set(a["train"]["text"])


def test_builtin_tweet_eval_emotion_ships_with_the_package() -> None:
    task = Classification(TaskSpec())
    task.load_data()
    assert task.labels == ["anger", "joy", "optimism", "sadness"]
    assert task.describe()["sizes"] == {"train": 3257, "validation": 374, "test": 1421}


def test_metrics_match_hand_computed_values() -> None:
    refs = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 2, 0]
    m = classification_metrics(refs, preds)
    # class 0: P=1/2 R=1/2 F1=1/2; class 1: P=2/3 R=1 F1=4/5; class 2: P=1 R=1/2 F1=2/3
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert m["macro_recall"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    assert m["macro_f1"] == pytest.approx((1 / 2 + 4 / 5 + 2 / 3) / 3)


def test_length_grouped_batches_cover_every_example_once() -> None:
    import numpy as np

    lengths = list(np.random.default_rng(0).integers(3, 60, size=1000))
    batches = length_grouped_batches(lengths, 32, np.random.default_rng(1))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1000))
    spread = np.mean([max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches])
    assert spread < 10  # similar lengths in a batch: little padding


def test_hub_dataset_path_maps_splits_and_classlabel_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """No hub is reachable here, so load_dataset is replaced by what the hub would return."""
    import datasets
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    feats = Features({"sentence": Value("string"), "label": ClassLabel(names=["neg", "pos"])})
    rows = {"sentence": ["bad", "good", "awful", "great"] * 5, "label": [0, 1, 0, 1] * 5}
    seen = {}

    def fake_load_dataset(name: str, subset: str | None = None) -> DatasetDict:
        seen.update(name=name, subset=subset)
        return DatasetDict({"train": Dataset.from_dict(rows, features=feats),
                            "dev": Dataset.from_dict(rows, features=feats),
                            "test": Dataset.from_dict(rows, features=feats)})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = Classification(TaskSpec(data=DataSpec(source="someone/sst2", subset="default", text_column="sentence")))
    task.load_data()
    assert seen == {"name": "someone/sst2", "subset": "default"}
    assert task.labels == ["neg", "pos"]
    assert task.describe()["sizes"]["validation"] == 20  # "dev" is taken as validation, not carved
    assert task.splits["train"]["label"][:2] == [0, 1]
