"""Reading and checking image-classification data: an image folder or a table of image paths.

- an image folder, one subfolder per class: flat (`root/<class>/*.png`; test and validation
  are carved from it with a fixed seed) or split (`root/train/<class>/...`, `root/test/<class>/...`,
  optional `root/validation|val|valid|dev/<class>/...`);
- a table (CSV / JSON / JSONL / Parquet, read by sources.load_splits) with an image path column
  (role "image", default "image"; relative paths are read from the table's folder) and a label
  column (role "label", default "label"). A hub dataset's Image column works too.

Every image's header is checked here, so a missing or non-image file is refused before
anything runs; the pixels are decoded later, batch by batch.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from peftbench.config import DataSpec
from peftbench.errors import UserError
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


def image_name(item: Item, i: int) -> str:
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
        raise UserError(f"cannot read image '{image_name(item, i)}': {why}; replace or remove that file") from None


Raw = dict[str, list[tuple[Item, str]]]  # split -> (image, label name) rows


@dataclass
class ImageData:
    labels: list[str]
    splits: dict[str, dict[str, list[Any]]]  # split -> {"image": [Item], "label": [int]}
    layout: str  # "folder", "split folders" or "table"


class ImageReader:
    """Reads a task's image data; `column` and `require_columns` are the task's (its column roles)."""

    def __init__(self, data: DataSpec, column: Callable[[str], str | None],
                 require_columns: Callable[[dict[str, list[str]], list[str]], None]) -> None:
        self.data, self.column, self.require_columns = data, column, require_columns
        self.layout = ""
        self.train_dir: Path | None = None

    def read(self) -> ImageData:
        d = self.data
        root = Path(d.source).expanduser()
        files_given = any(getattr(d, f"{s}_file") for s in SPLITS)
        if not files_given and root.is_dir() and not split_files(root):
            raw, labels = self.from_folder(root)
        else:
            raw, labels = self.from_table()
        if len(labels) < 2:
            got = f" ({labels[0]!r})" if labels else ""
            if self.layout == "table":
                where = f"label column '{self.column('label')}' has a single class{got} in train"
                fix = "give rows of another class"
            else:
                where = f"image folder '{self.train_dir or root}' has a single class{got}"
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
        if d.max_train_examples and self.layout != "table":  # load_splits cut tables already
            raw["train"] = raw["train"][: d.max_train_examples]
        if d.max_eval_examples and self.layout != "table":
            for split in ("validation", "test"):
                raw[split] = raw[split][: d.max_eval_examples]
        for split in SPLITS:
            if not raw[split]:
                raise UserError(f"the {split} split is empty; give it at least one image")
            for i, (item, _) in enumerate(raw[split]):
                open_image(item, i, header_only=True)  # refuse a non-image now, not mid-run
        splits = {s: {"image": [it for it, _ in raw[s]], "label": [index[y] for _, y in raw[s]]} for s in SPLITS}
        return ImageData(labels, splits, self.layout)

    def from_folder(self, root: Path) -> tuple[Raw, list[str]]:
        d = self.data
        subdirs = [p for p in sorted(root.iterdir()) if p.is_dir() and _visible(p)]
        split_dirs: dict[str, Path] = {}
        for p in subdirs:
            for split, names in SPLIT_ALIASES.items():
                if p.name.lower() in names and split not in split_dirs:
                    split_dirs[split] = p
        raw: Raw = {}
        if split_dirs:
            self.layout = "split folders"
            others = [p.name for p in subdirs if p not in split_dirs.values()]
            if others:
                raise UserError(
                    f"image folder '{root}' mixes split folders ({', '.join(p.name for p in split_dirs.values())}) "
                    f"with other folders ({', '.join(others[:5])}); put class folders inside the split folders only"
                )
            if "train" not in split_dirs:
                raise UserError(f"image folder '{root}' has no train folder; add {root / 'train'}/<class>/ images")
            for split, folder in split_dirs.items():
                rows = scan(folder)
                raw[split] = [rows[j] for j in _shuffled(len(rows))]
            labels = classes(split_dirs["train"])
            self.train_dir = split_dirs["train"]
            test_fraction = d.test_fraction
        else:
            self.layout = "folder"
            rows = scan(root)
            raw["train"] = [rows[j] for j in _shuffled(len(rows))]
            labels = classes(root)
            test_fraction = d.test_fraction or DEFAULT_TEST_FRACTION
        if "test" not in raw:
            if not test_fraction:
                raise UserError(
                    f"image folder '{root}' has no test folder; add {root / 'test'}/<class>/ images "
                    "or pass --test-fraction 0.2 (data.test_fraction in a config file) to carve it from train"
                )
            raw["train"], raw["test"] = _carve(raw["train"], test_fraction, "test", f"image folder '{root}'")
        if "validation" not in raw:
            raw["train"], raw["validation"] = _carve(
                raw["train"], d.validation_fraction, "validation", f"image folder '{root}'"
            )
        return raw, labels

    def table_sources(self) -> tuple[dict[str, Path], dict[str, Path | None]]:
        """Per split: the folder its relative image paths are read from (that of its table file),
        and the file whose rows it holds in order (None for a carved split: its row numbers would
        not match any file)."""
        d = self.data
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

    def from_table(self) -> tuple[Raw, list[str]]:
        import datasets

        self.layout = "table"
        dd = load_splits(self.data)
        self.require_columns({s: dd[s].column_names for s in SPLITS}, ["image", "label"])
        img_col, lab_col = self.column("image"), self.column("label")
        folders, ordered = self.table_sources()
        feat = dd["train"].features.get(lab_col)
        names = list(feat.names) if getattr(feat, "names", None) else None  # ClassLabel of a hub dataset
        raw: Raw = {}
        for split in SPLITS:
            ds = dd[split]
            if isinstance(ds.features.get(img_col), datasets.Image):
                ds = ds.cast_column(img_col, datasets.Image(decode=False))  # keep bytes; decode per batch
            labels = list(ds[lab_col])
            rows = []
            for k, (v, y) in enumerate(zip(list(ds[img_col]), labels), 1):
                at = f"row {k} of {ordered[split]}" if ordered[split] else f"a row of the {split} split (label {y!r})"
                rows.append((table_item(v, folders[split], at, img_col), label_str(y, names, at, lab_col)))
            raw[split] = rows
        labels = names or sorted({y for _, y in raw["train"]}, key=_label_key)
        return raw, labels


def classes(folder: Path) -> list[str]:
    return sorted((p.name for p in folder.iterdir() if p.is_dir() and _visible(p)), key=_label_key)


def scan(folder: Path) -> list[tuple[str, str]]:
    """(path, class) of every image under folder/<class>/ (recursively), in a stable order."""
    exts = ", ".join(IMAGE_SUFFIXES)
    class_dirs = [p for p in sorted(folder.iterdir()) if p.is_dir() and _visible(p)]
    loose = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not class_dirs:
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
    for c in class_dirs:
        images = sorted(
            f for f in c.rglob("*")
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file()
            and all(_visible(Path(part)) for part in f.relative_to(c).parts)
        )
        if not images:
            raise UserError(f"class folder '{c}' holds no images ({exts}); add images or remove the folder")
        rows += [(str(f), c.name) for f in images]
    return rows


def label_str(v: Any, names: list[str] | None, at: str, col: str | None) -> str:
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


def table_item(v: Any, folder: Path, at: str, col: str | None) -> Item:
    """An image of a table row: a hub Image value, a PIL image, or a path (relative ones from folder)."""
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
