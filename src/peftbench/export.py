"""Export a stored run: its adapter folder, or a plain Hugging Face model with the adapter merged in.

A merge is checked before anything is written: the merged model's outputs must match the
adapted model's within 1e-4 on a real batch, else nothing is exported. Both folders get
peftbench.json (the run, its labels and pooling, the base model to load) and a "Loading" section
in README.md with the plain transformers + peft code that reproduces the run's model.
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
            reloaded = pooling.reinstall(type(merged).from_pretrained(staged)).eval()  # the config records a pooling
            diff = float((adapted - _outputs(reloaded, batch)).abs().max())
            if diff > MERGE_TOLERANCE:
                raise RuntimeError(f"merged outputs differ from the adapter's by {diff:.2e} (> {MERGE_TOLERANCE}); nothing exported")
            info["max_abs_diff"] = diff
            info["model_class"] = type(merged).__name__
            info["pooling"] = getattr(merged.config, pooling.CONFIG_ATTR, "model")
        else:
            shutil.copytree(adapter, staged, dirs_exist_ok=True)
            _describe_adapter(row, staged, info)
        (staged / "peftbench.json").write_text(json.dumps({**info, "config": row.config}, indent=2))
        with (staged / "README.md").open("a", encoding="utf-8") as card:
            card.write(loading_section(info))
        if out.exists():
            out.rmdir()
        staged.rename(out)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return info


# peft's task types -> the transformers class a base model is loaded with
AUTO_CLASSES = {"SEQ_CLS": "AutoModelForSequenceClassification", "CAUSAL_LM": "AutoModelForCausalLM",
                "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM", "TOKEN_CLS": "AutoModelForTokenClassification"}


def _describe_adapter(row: RunRow, folder: Path, info: dict[str, Any]) -> None:
    """What loading the adapter needs besides its folder: the base model (its original path, not the GGUF
    cache's copy the run loaded, which `peftbench cache clear` removes), the labels and the pooling."""
    cfg = pooling.as_stored(parse_config(row.config))
    base = models.resolve(cfg.model)
    info["base_model_path"] = base
    info["gguf_file"] = models.SMOLLM2_FILE if cfg.model.name == models.SMOLLM2 else cfg.model.gguf_file
    conf_path = folder / "adapter_config.json"
    if conf_path.is_file():
        conf = json.loads(conf_path.read_text(encoding="utf-8"))
        conf["base_model_name_or_path"] = base
        conf_path.write_text(json.dumps(conf, indent=2))
        info["model_class"] = AUTO_CLASSES.get(conf.get("task_type") or "")
    info["pooling"] = pooling.resolve(cfg.task, cfg.model)
    task = make_task(cfg, get_method(cfg.method.name)(cfg.method.params))
    try:  # label names come from the data (as predict's); an export must not fail where the data moved
        task.load_data()
        info["labels"] = list(getattr(task, "labels", None) or []) or None
    except UserError:
        info["labels"] = None
    if info.get("model_class") == AUTO_CLASSES["SEQ_CLS"]:  # a decoder's head finds each row's last token by it
        from peftbench.tasks.text import load_text_model_config

        try:
            info["pad_token_id"] = load_text_model_config(task, cfg.model)[0].pad_token_id
        except UserError:
            pass


def loading_section(info: dict[str, Any]) -> str:
    """README.md's "Loading" section: plain transformers (+ peft) code for this folder."""
    cls = info.get("model_class") or "AutoModel"
    labels = info.get("labels")
    label_args = ""
    if labels and cls == "AutoModelForSequenceClassification":  # the checkpoint's own head (if any) has other sizes
        id2label, label2id = dict(enumerate(labels)), {name: i for i, name in enumerate(labels)}
        label_args = (f", num_labels={len(labels)},\n    id2label={id2label!r}, label2id={label2id!r},"
                      "\n    ignore_mismatched_sizes=True")
    mode = info.get("pooling", "model")
    lines = ["", "## Loading (written by peftbench)", "",
             f"Run {info['run_id']} ({info['method']} on {info['base_model']}, task {info['task']}).", "", "```python",
             f"from transformers import {cls}"]
    if info["merged"]:
        lines.append(f'model = {cls}.from_pretrained("<this folder>")')
        target = "model"
    else:
        gguf = f", gguf_file={info['gguf_file']!r}" if info.get("gguf_file") else ""
        lines += ["from peft import PeftModel", f"base = {cls}.from_pretrained({info['base_model_path']!r}{gguf}{label_args})"]
        target = "base"
    if not info["merged"] and info.get("pad_token_id") is not None and label_args:
        lines.append(f"base.config.pad_token_id = {info['pad_token_id']}")
    if mode not in ("model", "auto"):
        lines += [f"# the head reads {mode} pooling of the last hidden states, not the model's own pooler:",
                  f"from peftbench.tasks import pooling; pooling.install({target}, {mode!r})"]
    if not info["merged"]:
        lines.append('model = PeftModel.from_pretrained(base, "<this folder>")')
    lines += ["model.eval()", "```", ""]
    return "\n".join(lines)
