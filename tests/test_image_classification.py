"""Image classification on a tiny random ViT: folder and table layouts, methods, bad input.

Images are generated here: three classes of noisy colour fields (red, green, blue) that a
tiny ViT tells apart within a few LoRA steps. Everything runs offline in seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_csv
import torch
import transformers
import yaml
from typer.testing import CliRunner

import peftbench.runner  # noqa: F401  (import torch/transformers outside the captured streams)
from peftbench.cli import app
from peftbench.config import ModelSpec, TaskSpec, parse_config
from peftbench.errors import UserError
from peftbench.methods import get_method
from peftbench.methods.base import Context
from peftbench.runner import run
from peftbench.store import Store
from peftbench.tasks import get_task
from peftbench.tasks.image_classification import ImageClassification

transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

pytestmark = pytest.mark.timeout(120)

COLOURS = {"red": (200, 20, 20), "green": (20, 180, 20), "blue": (20, 20, 200)}


def write_images(folder: Path, cls: str, n: int, seed: int, suffix: str = ".png") -> list[Path]:
    """n noisy 32x32 images of the class's colour, with a darker stripe at a random row."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        a = np.clip(rng.normal(COLOURS[cls], 25, (32, 32, 3)), 0, 255).astype(np.uint8)
        r = int(rng.integers(0, 28))
        a[r : r + 4] //= 2
        p = folder / f"{cls}_{i}{suffix}"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


def class_tree(root: Path, n: int = 20, classes: tuple[str, ...] = tuple(COLOURS), seed: int = 0) -> Path:
    for k, cls in enumerate(classes):
        write_images(root / cls, cls, n, seed * 10 + k)
    return root


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vit(tiny_models) -> str:
    return tiny_models("vit")


@pytest.fixture(scope="module")
def flat(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/<class>/*.png, 20 images per class."""
    return class_tree(tmp_path_factory.mktemp("flat"))


@pytest.fixture(scope="module")
def split_folders(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/train|val|test/<class>/*.png."""
    root = tmp_path_factory.mktemp("splits")
    class_tree(root / "train", 16, seed=1)
    class_tree(root / "val", 4, seed=2)
    class_tree(root / "test", 5, seed=3)
    return root


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/train.csv + root/test.csv with relative paths into root/images/."""
    root = tmp_path_factory.mktemp("table")
    for split, n, seed in (("train", 16, 4), ("test", 5, 5)):
        rows = []
        for k, cls in enumerate(COLOURS):
            for p in write_images(root / "images" / split, cls, n, seed * 10 + k, ".jpg"):
                rows.append({"file": str(p.relative_to(root)), "colour": cls})
        write_csv(root / f"{split}.csv", rows)
    return root


def task_for(source: Path | str, **data) -> ImageClassification:
    t = get_task("image_classification")(TaskSpec(kind="image_classification", data={"source": str(source), **data}))
    assert isinstance(t, ImageClassification)
    return t


def loaded(source: Path | str, **data) -> ImageClassification:
    t = task_for(source, **data)
    t.load_data()
    return t


def refused(source: Path | str, *words: str, **data) -> str:
    with pytest.raises(UserError) as e:
        loaded(source, **data)
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w.lower() in msg.lower(), msg
    return msg


def config(model: str, source: Path | str, method: str = "lora", **data) -> dict:
    return {
        "model": {"name": model},
        "task": {"kind": "image_classification", "data": {"source": str(source), **data}, "samples": 3},
        "method": {"name": method},
        "train": {"steps": 4, "batch_size": 8, "eval_batch_size": 16, "eval_every": 2},
    }


# -- data layouts --------------------------------------------------------------------------


def test_flat_folder_is_carved_reproducibly(flat: Path) -> None:
    t = loaded(flat)
    assert t.labels == ["blue", "green", "red"]  # sorted class folder names
    sizes = {s: len(c["label"]) for s, c in t.splits.items()}
    assert sizes == {"train": 43, "validation": 5, "test": 12}  # test 0.2 of 60, validation 0.1 of the rest
    again = loaded(flat)
    assert again.splits == t.splits
    train, test = set(t.splits["train"]["image"]), set(t.splits["test"]["image"])
    assert not train & test and not train & set(t.splits["validation"]["image"])
    assert len(set(t.splits["test"]["label"])) > 1  # carved from a shuffled order, not class by class
    other = loaded(flat, test_fraction=0.5)
    assert len(other.splits["test"]["label"]) == 30


def test_split_folders_with_a_val_alias(split_folders: Path) -> None:
    t = loaded(split_folders)
    assert t.source_layout == "split folders"
    assert {s: len(c["label"]) for s, c in t.splits.items()} == {"train": 48, "validation": 12, "test": 15}
    assert all("/val/" in p for p in t.splits["validation"]["image"])


def test_split_folders_without_validation_carve_it_from_train(tmp_path: Path) -> None:
    class_tree(tmp_path / "train", 10)
    class_tree(tmp_path / "test", 2, seed=1)
    t = loaded(tmp_path)
    assert {s: len(c["label"]) for s, c in t.splits.items()} == {"train": 27, "validation": 3, "test": 6}


def test_split_folders_without_test_need_a_test_fraction(tmp_path: Path) -> None:
    class_tree(tmp_path / "train", 10)
    refused(tmp_path, "no test folder", "test_fraction")
    t = loaded(tmp_path, test_fraction=0.2)
    assert len(t.splits["test"]["label"]) == 6


def test_table_with_relative_paths_and_other_column_names(table: Path) -> None:
    t = loaded(table, image_column="file", label_column="colour")
    assert t.source_layout == "table" and t.labels == ["blue", "green", "red"]
    assert {s: len(c["label"]) for s, c in t.splits.items()} == {"train": 43, "validation": 5, "test": 15}
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in t.splits["train"]["image"])


def test_explicit_table_files_with_absolute_paths(tmp_path: Path) -> None:
    rows = {}
    for split, seed in (("train", 1), ("test", 2)):
        rows[split] = [{"image": str(p), "label": cls} for k, cls in enumerate(COLOURS)
                       for p in write_images(tmp_path / "img" / split, cls, 6, seed * 10 + k)]
    (tmp_path / "tables").mkdir()
    for split in rows:
        (tmp_path / "tables" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[split]))
    t = loaded("unused", train_file=str(tmp_path / "tables" / "train.jsonl"),
               test_file=str(tmp_path / "tables" / "test.jsonl"), max_train_examples=10)
    assert t.train_size == 10 and len(t.splits["test"]["label"]) == 18


def test_max_examples_take_a_mix_of_classes(flat: Path) -> None:
    t = loaded(flat, max_train_examples=9, max_eval_examples=4)
    assert t.train_size == 9 and len(set(t.splits["train"]["label"])) > 1
    assert len(t.splits["test"]["label"]) == 4 == len(t.splits["validation"]["label"])


# -- the model, batches, evaluation -----------------------------------------------------------


def test_task_pieces_and_lora_on_vit(flat: Path, vit: str) -> None:
    """Without the runner: model, LoRA through peft with the head saved, batches, evaluation."""
    torch.manual_seed(0)
    t = loaded(flat)
    model, processor = t.load_model(ModelSpec(name=vit))
    assert t.family == "vision" and t.peft_task_type is None and t.head_modules == ["classifier"]
    assert model.config.id2label == {0: "blue", 1: "green", 2: "red"}
    # transformers 5 names ViT's attention projections q_proj / k_proj / v_proj / o_proj
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"} <= names and "query" not in names

    ctx = Context(t.peft_task_type, vit, 20, family=t.family, head_modules=t.head_modules)
    with pytest.raises(UserError, match="query, value match nothing.*q_proj"):
        get_method("lora")({"target_modules": ["query", "value"]}).apply(model, ctx)
    peft_model = get_method("lora")({}).apply(model, ctx)  # all-linear
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert any("q_proj.lora_A" in n for n in trainable) and any("fc2.lora_B" in n for n in trainable)
    assert any("classifier.modules_to_save" in n for n in trainable)  # the new head trains
    assert not any("classifier.lora" in n for n in trainable)

    a, b = t.train_batches(16, seed=3), t.train_batches(16, seed=3)
    first = [next(a) for _ in range(3)]  # 43 images: the third batch closes the epoch
    assert all(torch.equal(x["pixel_values"], y["pixel_values"]) for x, y in zip(first, (next(b) for _ in range(3))))
    assert first[0]["pixel_values"].shape == (16, 3, 32, 32) and first[0]["labels"].dtype == torch.long
    assert sorted(torch.cat([x["labels"] for x in first]).tolist()) == sorted(t.splits["train"]["label"])
    epoch2 = [next(a) for _ in range(3)]
    assert not torch.equal(first[0]["labels"], epoch2[0]["labels"]) or not torch.equal(first[1]["labels"], epoch2[1]["labels"])
    assert t.batch_tokens(first[0]) == 16 * (32 // 8) ** 2  # patches: the token budget's unit for vision

    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=2e-2)
    peft_model.train()
    for _ in range(15):
        peft_model(**next(a)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    res = t.evaluate(peft_model, "test", 5)
    assert peft_model.training  # restored
    assert res.examples == 12 and res.references == t.splits["test"]["label"]
    assert set(res.metrics) >= {"accuracy", "macro_f1", "macro_precision", "macro_recall", "loss"}
    assert res.metrics["accuracy"] >= 0.75, res.metrics  # colours are easy
    seen: list[tuple[int, int]] = []
    part = t.evaluate(peft_model, "test", 5, progress=lambda d, n: seen.append((d, n)), limit=7)
    assert part.examples == 7 and part.predictions == res.predictions[:7] and seen == [(5, 7), (7, 7)]

    image, label = t.example("test", 0)
    assert image == t.splits["test"]["image"][0] and label == t.labels[t.splits["test"]["label"][0]]
    assert t.render(2) == "red"
    info = t.describe()
    assert info["kind"] == "image_classification" and info["family"] == "vision" and info["image_size"] == [32, 32]
    assert info["sizes"] == {"train": 43, "validation": 5, "test": 12} and info["patches_per_image"] == 16


# -- end to end through the runner ------------------------------------------------------------


@pytest.mark.parametrize("method", ["lora", "full", "head"])
def test_runner_on_a_flat_folder(method: str, flat: Path, vit: str, tmp_path: Path) -> None:
    out = run(parse_config(config(vit, flat, method)), tmp_path)
    assert out.row.done and out.row.task == "image_classification"
    result = out.row.result
    assert set(result["test"]) >= {"accuracy", "macro_f1", "loss"} and result["select_metric"] == "macro_f1"
    assert result["costs"]["tokens"] == 4 * 8 * 16  # steps x batch x patches
    assert result["costs"]["train_flops"] > 0 and result["task"]["labels"] == ["blue", "green", "red"]
    assert len(result["samples"]) == 3 and result["samples"][0]["target"] in COLOURS
    assert result["samples"][0]["tuned"] in COLOURS and result["samples"][0]["input"].endswith(".png")
    trainable = result["costs"]["params_trainable"]
    assert (trainable == 32 * 3 + 3) if method == "head" else trainable > 99


def test_runner_on_split_folders_and_a_table(split_folders: Path, table: Path, vit: str, tmp_path: Path) -> None:
    a = run(parse_config(config(vit, split_folders)), tmp_path / "a")
    assert a.row.done and a.row.result["task"]["sizes"] == {"train": 48, "validation": 12, "test": 15}
    b = run(parse_config(config(vit, table, image_column="file", label_column="colour")), tmp_path / "b")
    assert b.row.done and b.row.result["task"]["layout"] == "table"


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_soft_prompts_are_refused_on_vit(method: str, flat: Path, vit: str, tmp_path: Path) -> None:
    with pytest.raises(UserError) as e:
        get_method(method)({}).check(Context(None, vit, 10, family="vision", head_modules=["classifier"]))
    assert "vision model" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="vision model"):
        run(parse_config(config(vit, flat, method)), tmp_path / "res")
    assert not (tmp_path / "res").exists()


# -- bad input ------------------------------------------------------------------------------


def test_one_class(tmp_path: Path) -> None:
    class_tree(tmp_path, 5, classes=("red",))
    refused(tmp_path, "single class", "'red'", "at least two")


def test_empty_class_folder(tmp_path: Path) -> None:
    class_tree(tmp_path, 5, classes=("red", "green"))
    (tmp_path / "blue").mkdir()
    (tmp_path / "blue" / "notes.txt").write_text("no images here")
    refused(tmp_path, "class folder", "blue", "holds no images")


def test_no_images_at_all(tmp_path: Path) -> None:
    refused(tmp_path, "no class folders", "<class>")
    write_images(tmp_path, "red", 2, 0)
    refused(tmp_path, "not in class folders")


def test_folder_mixing_splits_and_classes(tmp_path: Path) -> None:
    class_tree(tmp_path / "train", 3)
    class_tree(tmp_path / "red", 3, classes=("red",))
    refused(tmp_path, "mixes split folders", "red")


def test_corrupt_image_is_named(tmp_path: Path) -> None:
    class_tree(tmp_path, 5)
    bad = tmp_path / "green" / "broken.png"
    bad.write_bytes(b"this is not a png")
    refused(tmp_path, "cannot read image", str(bad))


def test_truncated_image_is_named_when_decoded(flat: Path, tmp_path: Path, vit: str) -> None:
    from peftbench.tasks.image_classification import open_image

    good = sorted((flat / "red").glob("*.png"))[0]
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[:200])  # header intact, pixels missing
    open_image(str(cut), header_only=True)
    with pytest.raises(UserError, match=f"cannot read image '{cut}'"):
        open_image(str(cut))


def test_missing_image_path_in_a_table(table: Path, tmp_path: Path) -> None:
    rows = [{"image": str(p), "label": "red"} for p in sorted((table / "images" / "train").glob("red_*"))[:3]]
    rows += [{"image": str(p), "label": "blue"} for p in sorted((table / "images" / "train").glob("blue_*"))[:3]]
    rows.append({"image": "pics/nowhere.png", "label": "blue"})
    write_csv(tmp_path / "train.csv", rows)
    write_csv(tmp_path / "test.csv", rows[:2])
    # train is carved (no validation file): its row numbers match no file, so the label says which row
    refused(tmp_path, "'pics/nowhere.png'", "train split (label 'blue')", "does not exist")
    write_csv(tmp_path / "validation.csv", rows[3:5])
    msg = refused(tmp_path, "'pics/nowhere.png'", f"row 7 of {tmp_path / 'train.csv'}", "does not exist",
                  str(tmp_path / "pics" / "nowhere.png"))
    assert "relative paths" in msg
    rows[-1]["image"] = ""
    write_csv(tmp_path / "train.csv", rows)
    refused(tmp_path, "image column 'image' is empty", "row 7 of")


def test_missing_image_or_label_column(table: Path) -> None:
    refused(table, "image column 'image' is missing", "file, colour", label_column="colour")
    refused(table, "label column 'label' is missing", "--label-column", image_column="file")


def test_labels_not_in_train(split_folders: Path, tmp_path: Path) -> None:
    root = tmp_path / "data"
    shutil.copytree(split_folders, root)
    class_tree(root / "test", 2, classes=("red",), seed=9)
    (root / "test" / "purple").mkdir()
    write_images(root / "test" / "purple", "blue", 2, 1)
    refused(root, "test split has labels not seen in train: purple")


def test_a_text_model_is_refused(flat: Path, tiny_model: str) -> None:
    t = loaded(flat)
    with pytest.raises(UserError) as e:
        t.load_model(ModelSpec(name=tiny_model))
    assert "image_classification" in str(e.value) and "encoder family" in str(e.value) and "vision" in str(e.value)


# -- bad input through the CLI: exit 2, one line, nothing stored ---------------------------------


def cli_refuses(cfg: dict, tmp_path: Path, *words: str) -> str:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res_dir = tmp_path / "results"
    r = CliRunner().invoke(app, ["run", "--config", str(path), "--results-dir", str(res_dir)])
    shown = f"exit {r.exit_code}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"
    assert not (r.exception and not isinstance(r.exception, SystemExit)), shown
    assert r.exit_code == 2 and "Traceback" not in r.output, shown
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    for w in words:
        assert w.lower() in lines[0].lower(), shown
    assert not res_dir.exists() or not Store(res_dir).list(status="done")
    assert not res_dir.exists(), "bad input created the results folder"
    return lines[0]


def test_cli_refuses_a_one_class_folder(tmp_path: Path, vit: str) -> None:
    class_tree(tmp_path / "imgs", 4, classes=("blue",))
    cli_refuses(config(vit, tmp_path / "imgs"), tmp_path, "single class", "'blue'")


def test_cli_refuses_a_text_model(flat: Path, tiny_model: str, tmp_path: Path) -> None:
    cli_refuses(config(tiny_model, flat), tmp_path, "cannot use model", "vision")


def test_cli_refuses_a_corrupt_image(tmp_path: Path, vit: str) -> None:
    class_tree(tmp_path / "imgs", 4)
    (tmp_path / "imgs" / "red" / "zz.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    cli_refuses(config(vit, tmp_path / "imgs"), tmp_path, "cannot read image", "zz.jpg")


def test_cli_refuses_prompt_tuning_on_vit(flat: Path, vit: str, tmp_path: Path) -> None:
    cli_refuses(config(vit, flat, "prompt"), tmp_path, "method 'prompt'", "vision model")


def test_parquet_with_image_bytes_and_a_table_with_one_class(tmp_path: Path, vit: str) -> None:
    """Images stored in the table ({"bytes": ..., "path": ...}, as the datasets Image feature writes them)."""
    import pandas as pd

    for split, n, seed in (("train", 8, 1), ("validation", 2, 2), ("test", 3, 3)):
        rows = [{"image": {"bytes": p.read_bytes(), "path": None}, "label": k}
                for k, cls in enumerate(COLOURS) for p in write_images(tmp_path / "img" / split, cls, n, seed * 10 + k)]
        pd.DataFrame(rows).to_parquet(tmp_path / f"{split}.parquet")
    shutil.rmtree(tmp_path / "img")  # the bytes are all there is
    t = loaded(tmp_path)
    assert t.labels == ["0", "1", "2"] and t.train_size == 24
    assert t.example("test", 1) == ("<image 1>", t.labels[t.splits["test"]["label"][1]])
    assert t.example("train", 0)[0] == "<image 0>"
    t.load_model(ModelSpec(name=vit))
    assert next(t.train_batches(4, 0))["pixel_values"].shape == (4, 3, 32, 32)

    pd.DataFrame([{"image": r["image"], "label": 7} for r in rows]).to_parquet(tmp_path / "train.parquet")
    refused(tmp_path, "label column 'label' has a single class ('7') in train")
