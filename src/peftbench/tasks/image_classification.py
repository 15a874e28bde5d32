"""Image classification: vision models (ViT, DeiT, Swin, ...) with a new classifier head.

Data (an image folder or a table of image paths) is read and checked by image_data; images
are decoded lazily here, batch by batch, with PIL (as RGB) and the model's image processor.

The token budget's unit for vision is the patch: a batch "feeds" images x patches per image
(from the config's patch_size and the processed image size), or the number of images for
models without patches (convolutional nets).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from peftbench import models
from peftbench.config import ModelSpec
from peftbench.tasks import register
from peftbench.tasks.base import PREDICT, Batch, ColumnRole, EvalResult, Progress, Task, metered
from peftbench.tasks.image_data import ImageReader, image_name, open_image, table_item
from peftbench.metrics import classification_metrics

__all__ = ["ImageClassification", "open_image"]


@register
class ImageClassification(Task):
    kind = "image_classification"
    summary = "Image classification: vision models (ViT, ...) with a new classifier head; image folder or table"
    families = ("vision",)
    metrics = ("accuracy", "macro_f1")
    select_metric = "macro_f1"
    column_roles = (ColumnRole("image", "image"), ColumnRole("label", "label", input=False))

    labels: list[str]
    splits: dict[str, dict[str, list[Any]]]  # split -> {"image": [Item], "label": [int]}
    source_layout: str  # "folder", "split folders" or "table"

    # -- data ------------------------------------------------------------------------

    def load_data(self) -> None:
        data = ImageReader(self.spec.data, self.column, self.require_columns).read()
        self.labels, self.splits, self.source_layout = data.labels, data.splits, data.layout

    def predict_split(self, rows: list[dict[str, Any]], root: Path | None = None) -> dict[str, list[Any]]:
        """Image paths (relative ones from root, else the working folder), checked as data images are."""
        col = self.column("image")
        items = [table_item(r.get(col), root or Path.cwd(), f"{PREDICT} row {k}", col) for k, r in enumerate(rows, 1)]
        for i, item in enumerate(items):
            open_image(item, i, header_only=True)
        return {"image": items, "label": [0] * len(items)}  # placeholder labels

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
        meter = metered(flops)
        preds: list[int] = []
        loss_sum = 0.0
        try:
            for i in range(0, n, batch_size):
                idx = list(range(i, min(i + batch_size, n)))
                batch = {k: v.to(device) for k, v in self._batch(split, idx).items()}
                out = meter.forward(model, batch)
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
        return image_name(cols["image"][i], i), self.labels[cols["label"][i]]

    def render(self, prediction: Any) -> str:
        return self.labels[int(prediction)]

    def describe(self) -> dict[str, Any]:
        size = getattr(self, "image_size", None)
        out: dict[str, Any] = {
            **super().describe(), "labels": self.labels,
            "sizes": {s: len(c["label"]) for s, c in self.splits.items()}, "layout": self.source_layout,
            "image_size": size,
        }
        if "baselines" not in self.__dict__:  # what always-the-majority and uniform guessing score on test
            from peftbench.metrics.trivial import label_baselines

            self.baselines = label_baselines(self.splits["train"]["label"], self.splits["test"]["label"], len(self.labels))
        out["baselines"] = self.baselines
        if size:
            out["patches_per_image"] = self._patches(*size)
        return out
