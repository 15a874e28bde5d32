"""Image classification: vision models (ViT, DeiT, Swin, ...) with a new classifier head.

Data comes as
- an image folder, one subfolder per class: flat (`root/<class>/*.png`; test and validation
  are carved from it with a fixed seed) or split (`root/train/<class>/...`, `root/test/<class>/...`,
  optional `root/validation|val|valid|dev/<class>/...`);
- a table (CSV / JSON / JSONL / Parquet, read by sources.load_splits) with an image path column
  (role "image", default "image"; relative paths are read from the table's folder) and a label
  column (role "label", default "label"). A hub dataset's Image column works too.

Images are decoded lazily, batch by batch, with PIL (as RGB) and the model's image processor;
every image's header is checked when the data is loaded, so a missing or non-image file is
refused before anything runs.

The token budget's unit for vision is the patch: a batch "feeds" images x patches per image
(from the config's patch_size and the processed image size), or the number of images for
models without patches (convolutional nets).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from peftbench import models
from peftbench.config import ModelSpec
from peftbench.errors import UserError
from peftbench.tasks import register
from peftbench.tasks.base import PREDICT, Batch, EvalResult, Progress, Task
from peftbench.metrics import classification_metrics
from peftbench.tasks.sources import CARVE_SEED, SPLIT_ALIASES, SPLITS, builtin_dir, load_splits, split_files

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
DEFAULT_TEST_FRACTION = 0.2  # a flat image folder has no test split: carve this share of it

# An image: a file path, or a hub Image value ({"bytes": ..., "path": ...}) kept undecoded.
Item = Any


def _label_key(v: str) -> tuple[int, Any]:
    """Sort labels as numbers when they are integers, else as text (as text classification does)."""
    return (0, int(v)) if v.lstrip("-").isdigit() else (1, v)


def _visible(p: Path) -> bool:
    return not p.name.startswith(".")


def _shuffled(n: int) -> list[int]:
    """A fixed-seed order, so carving and --max-*-examples take a mix of classes, reproducibly."""
    return np.random.default_rng(CARVE_SEED).permutation(n).tolist()


def _carve(rows: list[tuple[Item, str]], fraction: float, what: str, where: str) -> tuple[list, list]:
    """Split off ceil(fraction * n) rows (the rows are already in a seeded random order)."""
    n_out = math.ceil(fraction * len(rows))
    if n_out >= len(rows):
        raise UserError(
            f"{where} has too few images ({len(rows)}) to carve a {what} split of {fraction:g} from; "
            "add images or give the split its own folder"
        )
    return rows[n_out:], rows[:n_out]


def _name(item: Item, i: int) -> str:
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, dict) and item.get("path"):
        return str(item["path"])
    return f"<image {i}>"


def open_image(item: Item, i: int = 0, header_only: bool = False) -> Any:
    """The image as RGB (PIL); an unreadable file is a UserError naming it."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(item, Image.Image):
        return item.convert("RGB")
    src = item
    if isinstance(item, dict):
        src = io.BytesIO(item["bytes"]) if item.get("bytes") else item.get("path")
    try:
        with Image.open(src) as im:
            return im.size if header_only else im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        unknown = isinstance(err, UnidentifiedImageError)
        why = "not an image PIL can read" if unknown else " ".join(str(err).split())[:120]
        raise UserError(f"cannot read image '{_name(item, i)}': {why}; replace or remove that file") from None


@register
class ImageClassification(Task):
    kind = "image_classification"
    summary = "Image classification: vision models (ViT, ...) with a new classifier head; image folder or table"
    families = ("vision",)
    metrics = ("accuracy", "macro_f1")
    select_metric = "macro_f1"
    default_columns = {"image": "image", "label": "label"}

    labels: list[str]
    splits: dict[str, dict[str, list[Any]]]  # split -> {"image": [Item], "label": [int]}
    source_layout: str  # "folder", "split folders" or "table"

    # -- data ------------------------------------------------------------------------

    def load_data(self) -> None:
        d = self.spec.data
        root = Path(d.source).expanduser()
        files_given = any(getattr(d, f"{s}_file") for s in SPLITS)
        if not files_given and root.is_dir() and not self._has_tables(root):
            raw, labels = self._from_folder(root)
        else:
            raw, labels = self._from_table()
        if len(labels) < 2:
            got = f" ({labels[0]!r})" if labels else ""
            if self.source_layout == "table":
                where = f"label column '{self.column('label')}' has a single class{got} in train"
                fix = "give rows of another class"
            else:
                where = f"image folder '{getattr(self, '_train_dir', root)}' has a single class{got}"
                fix = "add a folder of images for each other class"
            raise UserError(f"{where}; image classification needs at least two: {fix}")
        index = {name: i for i, name in enumerate(labels)}
        for split in SPLITS:
            unknown = sorted({y for _, y in raw[split] if y not in index}, key=_label_key)
            if unknown:
                raise UserError(
                    f"{split} split has labels not seen in train: {', '.join(unknown[:5])}; "
                    "give train images of those classes or drop them from the split"
                )
        if d.max_train_examples and self.source_layout != "table":  # load_splits cut tables already
            raw["train"] = raw["train"][: d.max_train_examples]
        if d.max_eval_examples and self.source_layout != "table":
            for split in ("validation", "test"):
                raw[split] = raw[split][: d.max_eval_examples]
        for split in SPLITS:
            if not raw[split]:
                raise UserError(f"the {split} split is empty; give it at least one image")
            for i, (item, _) in enumerate(raw[split]):
                open_image(item, i, header_only=True)  # refuse a non-image now, not mid-run
        self.labels = labels
        self.splits = {s: {"image": [it for it, _ in raw[s]], "label": [index[y] for _, y in raw[s]]} for s in SPLITS}

    def _has_tables(self, folder: Path) -> bool:
        return bool(split_files(folder))

    def _from_folder(self, root: Path) -> tuple[dict[str, list[tuple[Item, str]]], list[str]]:
        d = self.spec.data
        subdirs = [p for p in sorted(root.iterdir()) if p.is_dir() and _visible(p)]
        split_dirs: dict[str, Path] = {}
        for p in subdirs:
            for split, names in SPLIT_ALIASES.items():
                if p.name.lower() in names and split not in split_dirs:
                    split_dirs[split] = p
        raw: dict[str, list[tuple[Item, str]]] = {}
        if split_dirs:
            self.source_layout = "split folders"
            others = [p.name for p in subdirs if p not in split_dirs.values()]
            if others:
                raise UserError(
                    f"image folder '{root}' mixes split folders ({', '.join(p.name for p in split_dirs.values())}) "
                    f"with other folders ({', '.join(others[:5])}); put class folders inside the split folders only"
                )
            if "train" not in split_dirs:
                raise UserError(f"image folder '{root}' has no train folder; add {root / 'train'}/<class>/ images")
            for split, folder in split_dirs.items():
                rows = self._scan(folder)
                raw[split] = [rows[j] for j in _shuffled(len(rows))]
            labels = self._classes(split_dirs["train"])
            self._train_dir = split_dirs["train"]
            test_fraction = d.test_fraction
        else:
            self.source_layout = "folder"
            rows = self._scan(root)
            raw["train"] = [rows[j] for j in _shuffled(len(rows))]
            labels = self._classes(root)
            test_fraction = d.test_fraction or DEFAULT_TEST_FRACTION
        if "test" not in raw:
            if not test_fraction:
                raise UserError(
                    f"image folder '{root}' has no test folder; add {root / 'test'}/<class>/ images "
                    "or set data.test_fraction to carve it from train"
                )
            raw["train"], raw["test"] = _carve(raw["train"], test_fraction, "test", f"image folder '{root}'")
        if "validation" not in raw:
            raw["train"], raw["validation"] = _carve(
                raw["train"], d.validation_fraction, "validation", f"image folder '{root}'"
            )
        return raw, labels

    @staticmethod
    def _classes(folder: Path) -> list[str]:
        return sorted((p.name for p in folder.iterdir() if p.is_dir() and _visible(p)), key=_label_key)

    @staticmethod
    def _scan(folder: Path) -> list[tuple[str, str]]:
        """(path, class) of every image under folder/<class>/ (recursively), in a stable order."""
        exts = ", ".join(IMAGE_SUFFIXES)
        classes = [p for p in sorted(folder.iterdir()) if p.is_dir() and _visible(p)]
        loose = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not classes:
            if loose:
                raise UserError(
                    f"images in '{folder}' are not in class folders; lay them out as {folder}/<class>/<image>"
                )
            raise UserError(
                f"image folder '{folder}' has no class folders (and no train/test data files); lay it out as "
                f"{folder}/<class>/<image>.png or give a table with image and label columns"
            )
        if loose:
            raise UserError(
                f"image '{loose[0]}' lies outside the class folders of '{folder}'; move it into the folder of its class"
            )
        rows: list[tuple[str, str]] = []
        for c in classes:
            images = sorted(
                f for f in c.rglob("*")
                if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
                and all(_visible(Path(part)) for part in f.relative_to(c).parts)
            )
            if not images:
                raise UserError(f"class folder '{c}' holds no images ({exts}); add images or remove the folder")
            rows += [(str(f), c.name) for f in images]
        return rows

    def _table_sources(self) -> tuple[dict[str, Path], dict[str, Path | None]]:
        """Per split: the folder its relative image paths are read from (that of its table file),
        and the file whose rows it holds in order (None for a carved split: its row numbers would
        not match any file)."""
        d = self.spec.data
        files = {s: Path(getattr(d, f"{s}_file")).expanduser() for s in SPLITS if getattr(d, f"{s}_file")}
        if not files:
            root = builtin_dir(d.source[8:]) if d.source.startswith("builtin:") else Path(d.source).expanduser()
            files = split_files(root) if root.is_dir() else {}
        first = files.get("train") or next(iter(files.values()), None)
        base = first.parent if first else Path.cwd()  # a hub dataset: paths as given
        folders = {s: files[s].parent if s in files else base for s in SPLITS}
        ordered: dict[str, Path | None] = {s: files.get(s) for s in SPLITS}
        if "validation" not in files or "test" not in files:  # load_splits carves them from (shuffled) train
            ordered["train"] = None
        return folders, ordered

    def _from_table(self) -> tuple[dict[str, list[tuple[Item, str]]], list[str]]:
        import datasets

        self.source_layout = "table"
        dd = load_splits(self.spec.data)
        self.require_columns({s: dd[s].column_names for s in SPLITS}, ["image", "label"])
        img_col, lab_col = self.column("image"), self.column("label")
        folders, ordered = self._table_sources()
        feat = dd["train"].features.get(lab_col)
        names = list(feat.names) if getattr(feat, "names", None) else None  # ClassLabel of a hub dataset
        raw: dict[str, list[tuple[Item, str]]] = {}
        for split in SPLITS:
            ds = dd[split]
            if isinstance(ds.features.get(img_col), datasets.Image):
                ds = ds.cast_column(img_col, datasets.Image(decode=False))  # keep bytes; decode per batch
            labels = list(ds[lab_col])
            rows = []
            for k, (v, y) in enumerate(zip(list(ds[img_col]), labels), 1):
                at = f"row {k} of {ordered[split]}" if ordered[split] else f"a row of the {split} split (label {y!r})"
                rows.append((self._table_item(v, folders[split], at, img_col), self._label_str(y, names, at, lab_col)))
            raw[split] = rows
        labels = names or sorted({y for _, y in raw["train"]}, key=_label_key)
        return raw, labels

    @staticmethod
    def _label_str(v: Any, names: list[str] | None, at: str, col: str) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)) or v == "":
            raise UserError(f"label column '{col}' is empty in {at}; fill or drop that row")
        if isinstance(v, (list, dict)):
            raise UserError(
                f"label column '{col}' holds a list or object in {at} ({v!r}); each label must be one string or number"
            )
        if names is not None and isinstance(v, int):
            return names[v]
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        return str(v)

    def input_columns(self) -> dict[str, str]:
        return {"image": self.column("image")}

    def predict_split(self, rows: list[dict[str, Any]], root: Path | None = None) -> dict[str, list[Any]]:
        """Image paths (relative ones from root, else the working folder), checked as data images are."""
        col = self.column("image")
        items = [self._table_item(r.get(col), root or Path.cwd(), f"{PREDICT} row {k}", col) for k, r in enumerate(rows, 1)]
        for i, item in enumerate(items):
            open_image(item, i, header_only=True)
        return {"image": items, "label": [0] * len(items)}  # placeholder labels

    @staticmethod
    def _table_item(v: Any, folder: Path, at: str, col: str) -> Item:
        if isinstance(v, dict) and (v.get("bytes") or v.get("path")):  # a hub Image value
            if v.get("bytes"):
                return v
            v = v["path"]
        if not hasattr(v, "convert") and (not isinstance(v, str) or not v.strip()):
            shown = "empty" if v is None or v == "" or (isinstance(v, float) and math.isnan(v)) else f"not a path ({v!r})"
            raise UserError(f"image column '{col}' is {shown} in {at}; give each row an image file path")
        if not isinstance(v, str):
            return v  # a PIL image already in memory
        path = Path(v).expanduser()
        if not path.is_absolute():
            path = folder / path
        if not path.is_file():
            why = "is a folder" if path.is_dir() else "does not exist"
            raise UserError(
                f"image '{v}' in {at} {why} (looked for {path}); fix the path "
                "(relative paths are read from the table's folder)"
            )
        return str(path)

    @property
    def train_size(self) -> int:
        return len(self.splits["train"]["label"])

    # -- model -----------------------------------------------------------------------

    def load_model(self, spec: ModelSpec) -> tuple[nn.Module, Any]:
        from transformers import AutoConfig, AutoImageProcessor, AutoModelForImageClassification

        config = models.load_pretrained(AutoConfig, spec)
        self.check_family(models.family(config), spec.name)  # a text model: one line, nothing loaded
        processor = models.load_pretrained(AutoImageProcessor, spec)
        model, self.head_modules = models.load_with_new_modules(  # the new classifier: trained by all but base
            AutoModelForImageClassification, spec, num_labels=len(self.labels), ignore_mismatched_sizes=True,
            id2label=dict(enumerate(self.labels)), label2id={name: i for i, name in enumerate(self.labels)},
            **self.model_kwargs,
        )
        self.peft_task_type = None  # peft has no image-classification task type
        self.processor = processor
        self.config = model.config
        px = self._batch("train", [0])["pixel_values"]  # the processor works on this data, now
        self.image_size = [int(px.shape[-2]), int(px.shape[-1])]
        return model, processor

    def _batch(self, split: str, idx: list[int]) -> Batch:
        cols = self.splits[split]
        images = [open_image(cols["image"][j], j) for j in idx]
        return {
            "pixel_values": self.processor(images=images, return_tensors="pt")["pixel_values"],
            "labels": torch.tensor([cols["label"][j] for j in idx], dtype=torch.long),
        }

    # -- training and evaluation -----------------------------------------------------

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        rng = np.random.default_rng(seed)
        n = self.train_size
        while True:
            order = rng.permutation(n).tolist()  # a new order every epoch
            for i in range(0, n, batch_size):
                yield self._batch("train", order[i : i + batch_size])

    @torch.inference_mode()
    def evaluate(
        self, model: nn.Module, split: str, batch_size: int, flops: Any = None,
        progress: Progress | None = None, limit: int | None = None, score: bool = True,
    ) -> EvalResult:
        n = len(self.splits[split]["label"])
        if limit is not None:
            n = min(n, limit)
        if n == 0:
            return EvalResult(metrics={}, examples=0)
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        preds: list[int] = []
        loss_sum = 0.0
        try:
            for i in range(0, n, batch_size):
                idx = list(range(i, min(i + batch_size, n)))
                batch = {k: v.to(device) for k, v in self._batch(split, idx).items()}
                out = flops.forward(model, batch) if flops is not None else model(**batch)
                loss_sum += float(out.loss) * len(idx)
                preds += out.logits.argmax(-1).tolist()
                if progress:
                    progress(i + len(idx), n)
        finally:
            model.train(was_training)
        refs = self.splits[split]["label"][:n]
        if not score:
            return EvalResult(metrics={}, predictions=preds, references=list(refs), examples=n)
        # sklearn's macro average over the classes present (predictions are always class indices):
        # a class absent from a small split is not counted as a zero.
        metrics = classification_metrics(refs, preds)
        metrics["loss"] = loss_sum / max(n, 1)
        return EvalResult(metrics=metrics, predictions=preds, references=list(refs), examples=n)

    def batch_tokens(self, batch: Batch) -> int:
        """Patches the batch feeds the model: images x patches per image (images, for patchless models)."""
        px = batch["pixel_values"]
        return int(px.shape[0]) * self._patches(int(px.shape[-2]), int(px.shape[-1]))

    def _patches(self, height: int, width: int) -> int:
        """Patches per image of this size (the token unit for vision); 1 for models without patches."""
        patch = getattr(getattr(self, "config", None), "patch_size", None)
        if not patch:
            return 1
        ph, pw = (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[-1]))
        return max(1, height // ph) * max(1, width // pw)

    # -- samples and description -----------------------------------------------------

    def example(self, split: str, i: int) -> tuple[str, str]:
        cols = self.splits[split]
        return _name(cols["image"][i], i), self.labels[cols["label"][i]]

    def render(self, prediction: Any) -> str:
        return self.labels[int(prediction)]

    def describe(self) -> dict[str, Any]:
        size = getattr(self, "image_size", None)
        out: dict[str, Any] = {
            **super().describe(), "labels": self.labels,
            "sizes": {s: len(c["label"]) for s, c in self.splits.items()}, "layout": self.source_layout,
            "image_size": size,
        }
        if size:
            out["patches_per_image"] = self._patches(*size)
        return out
