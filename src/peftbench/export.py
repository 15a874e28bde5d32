"""Export a stored run: its adapter folder, or a plain Hugging Face model with the adapter merged in.

A merge is checked before anything is written: the merged model's outputs must match the
adapted model's within 1e-4 on a real batch, else nothing is exported.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from peftbench import models
from peftbench.config import parse_config
from peftbench.errors import UserError
from peftbench.methods import get_method
from peftbench.store import RunRow
from peftbench.runner import make_task
from peftbench.tasks import pooling
from peftbench.train import precision

MERGE_TOLERANCE = 1e-4


def _outputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits.float()


def rebuild(row: RunRow, full_precision: bool = False) -> tuple[Any, torch.nn.Module, Any, Any]:
    """The run's task, its base model with the saved adapter loaded, the method, and the processor.

    In the run's precision and base dtype; full_precision: in fp32 and float32 (a merge to save)."""
    cfg = pooling.as_stored(precision.as_stored(parse_config(row.config), full=full_precision))
    # The stored config spells every default out; a default max_length the run lowered to the
    # model's limit must be lowered the same way again, not refused as if the user had asked for it.
    cfg.task.model_fields_set.discard("max_length")
    method = get_method(cfg.method.name)(cfg.method.params)
    task = make_task(cfg, method)
    task.load_data()  # labels (and the head's size) come from the data
    model, processor = task.load_model(cfg.model)
    return task, method.load(model, adapter_of(row)), method, processor


def adapter_of(row: RunRow) -> Path:
    """The run's saved weights, refused in one line when their folder is gone."""
    if not row.adapter.is_dir() and (row.result or {}).get("weights") == "dropped":
        raise UserError(f"run {row.run_id} kept no weights (a cluster sweep with --keep-weights adapters); "
                        "train it again with: peftbench run ... --force")
    if not row.adapter.is_dir():
        raise UserError(f"run {row.run_id}'s adapter folder {row.adapter} is missing (deleted or moved?); "
                        "train it again with: peftbench run ... --force")
    return row.adapter


def export(row: RunRow, out: Path, merge: bool = False) -> dict[str, Any]:
    if not row.done:
        raise UserError(f"run {row.run_id} is {row.status}, not done; export a finished run (see: peftbench results)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"'{out}' already exists and is not an empty folder; choose a new folder")
    info = {"run_id": row.run_id, "method": row.method, "base_model": row.model, "task": row.task, "merged": merge}
    if merge and not get_method(row.method).can_merge:
        raise UserError(
            f"method '{row.method}' cannot be merged into the base weights (it adds tokens or modules); "
            "export without --merge to get the adapter folder"
        )
    out = out.resolve()  # '.' and 'x/..' have no name to stage beside
    adapter = adapter_of(row)
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))  # new: never someone else's folder
    try:
        if merge:
            task, model, method, processor = rebuild(row, full_precision=True)
            model.eval()
            batch = next(task.train_batches(4, seed=0))
            adapted = _outputs(model, batch)
            merged = method.merge(model)
            merged.save_pretrained(staged, safe_serialization=True)
            processor.save_pretrained(staged)
            # Check what was written, reloaded as a user would, not the object in memory.
            reloaded = type(merged).from_pretrained(staged).eval()
            diff = float((adapted - _outputs(reloaded, batch)).abs().max())
            if diff > MERGE_TOLERANCE:
                raise RuntimeError(f"merged outputs differ from the adapter's by {diff:.2e} (> {MERGE_TOLERANCE}); nothing exported")
            info["max_abs_diff"] = diff
        else:
            shutil.copytree(adapter, staged, dirs_exist_ok=True)
            info["base_model_path"] = models.resolve(parse_config(row.config).model)
        (staged / "peftbench.json").write_text(json.dumps({**info, "config": row.config}, indent=2))
        if out.exists():
            out.rmdir()
        staged.rename(out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return info
