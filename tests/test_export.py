"""peftbench export: the adapter folder, or a merged plain model matching the adapter within 1e-4."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from peftbench.config import parse_config
from peftbench.export import rebuild
from peftbench.methods import REGISTRY
from peftbench.methods.peft_generic import GenericTuner  # their merges: test_peft_generic.py
from peftbench.runner import run
from conftest import WORDS
from test_bad_input import assert_refused, invoke

HAND = {n: c for n, c in REGISTRY.items() if not issubclass(c, GenericTuner)}
MERGEABLE = sorted(n for n, c in HAND.items() if c.can_merge and n != "qlora")
# qlora needs CUDA and few_shot a generator: neither runs on the tiny BERT these tests train.
NOT_MERGEABLE = sorted(n for n, c in HAND.items() if not c.can_merge and n not in ("qlora", "few_shot"))


def trained(tiny_config: dict, method: str, results: Path, params: dict | None = None):
    raw = {**tiny_config, "method": {"name": method, "params": params or {}}, "task": {**tiny_config["task"], "samples": 0}}
    return run(parse_config(raw), results).row


@pytest.mark.parametrize("method", MERGEABLE)
def test_merged_export_matches_the_adapter(tiny_config: dict, tmp_path: Path, method: str) -> None:
    row = trained(tiny_config, method, tmp_path / "r")
    res = invoke("export", row.run_id, tmp_path / "merged", "--merge", "--results-dir", tmp_path / "r", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["merged"] and info["max_abs_diff"] <= 1e-4

    task, adapted, _, _ = rebuild(row)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert not any("lora_" in n or "ia3_" in n or "hada_" in n for n, _ in plain.named_parameters())
    batch = next(task.train_batches(8, seed=3))
    adapted.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, adapted(**batch).logits, rtol=0, atol=1e-4)


def test_merged_generation_model_and_plain_export(tiny_models, tmp_path: Path) -> None:
    from test_generation import config, dialogue_rows
    from conftest import write_jsonl

    data = tmp_path / "data"
    data.mkdir()
    for s, n in (("train", 16), ("test", 4)):
        write_jsonl(data / f"{s}.jsonl", dialogue_rows(n, 1))
    raw = config(tiny_models("llama"), data, "summarization", method="lora")
    raw["method"]["params"] = {"use_dora": True}
    row = run(parse_config(raw), tmp_path / "r").row
    assert invoke("export", row.run_id, tmp_path / "m", "--merge", "--results-dir", tmp_path / "r").exit_code == 0
    task, adapted, _, _ = rebuild(row)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    batch = next(task.train_batches(4, seed=0))
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, adapted.eval()(**batch).logits, rtol=0, atol=1e-4)
    # without --merge: the adapter folder, loadable by peft onto the base model
    assert invoke("export", row.run_id, tmp_path / "a", "--results-dir", tmp_path / "r").exit_code == 0
    assert (tmp_path / "a" / "adapter_config.json").is_file() and (tmp_path / "a" / "peftbench.json").is_file()


@pytest.mark.parametrize("method", NOT_MERGEABLE)
def test_methods_that_cannot_merge_say_so(tiny_config: dict, tmp_path: Path, method: str) -> None:
    row = trained(tiny_config, method, tmp_path / "r")
    res = invoke("export", row.run_id, tmp_path / "out", "--merge", "--results-dir", tmp_path / "r")
    assert_refused(res, f"method '{method}' cannot be merged", "without --merge")
    assert not (tmp_path / "out").exists()
    assert invoke("export", row.run_id, tmp_path / "out", "--results-dir", tmp_path / "r").exit_code == 0


def test_export_refuses_a_used_folder_and_unknown_runs(tiny_config: dict, tmp_path: Path) -> None:
    row = trained(tiny_config, "lora", tmp_path / "r")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("keep me")
    assert_refused(invoke("export", row.run_id, tmp_path / "used", "--results-dir", tmp_path / "r"), "not an empty folder")
    assert (tmp_path / "used" / "x").read_text() == "keep me"
    assert_refused(invoke("export", "zzzz", tmp_path / "o", "--results-dir", tmp_path / "r"), "no stored run matches")


def from_card(folder: Path) -> torch.nn.Module:
    """The model the folder's README "Loading" code builds, run as a user would paste it."""
    card = (folder / "README.md").read_text()
    code = card.split("## Loading (written by peftbench)")[1].split("```python\n")[1].split("```")[0]
    scope: dict = {}
    exec(code.replace("<this folder>", str(folder)), scope)  # noqa: S102 - our own generated snippet
    return scope["model"]


@pytest.mark.parametrize("merge", [False, True])
@pytest.mark.parametrize("mode", ["mean", "model"])
def test_the_exported_card_loads_the_runs_model_in_plain_transformers(tiny_config: dict, tmp_path: Path, mode: str,
                                                                     merge: bool) -> None:
    """A mean-pooled run (the bundled MiniLM's default) once failed its merge check; an adapter folder gave no
    labels, pooling or usable base path. Now either folder's README code rebuilds the run's model."""
    from peftbench import models

    raw = {**tiny_config, "task": {**tiny_config["task"], "samples": 0, "pooling": mode}}
    row = run(parse_config(raw), tmp_path / "r").row
    flags = ["--merge"] if merge else []
    res = invoke("export", row.run_id, tmp_path / "out", *flags, "--results-dir", tmp_path / "r", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "out" / "peftbench.json").read_text())
    assert info["pooling"] == mode
    if not merge:
        conf = json.loads((tmp_path / "out" / "adapter_config.json").read_text())
        assert conf["base_model_name_or_path"] == info["base_model_path"] == models.resolve(parse_config(row.config).model)
        assert info["labels"] == sorted(WORDS)
    task, adapted, _, _ = rebuild(row)
    loaded = from_card(tmp_path / "out")
    batch = next(task.train_batches(8, seed=3))
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, adapted.eval()(**batch).logits, rtol=0, atol=1e-4)


def test_a_decoder_classification_adapter_loads_from_its_card(tiny_models, tiny_config: dict, tmp_path: Path) -> None:
    """GPT-2 has no pad token: the card sets the one the run padded with (batches of unequal rows need it)."""
    raw = {**tiny_config, "model": {"name": tiny_models("gpt2")}, "task": {**tiny_config["task"], "samples": 0}}
    row = run(parse_config(raw), tmp_path / "r").row
    assert invoke("export", row.run_id, tmp_path / "out", "--results-dir", tmp_path / "r").exit_code == 0
    assert "base.config.pad_token_id = " in (tmp_path / "out" / "README.md").read_text()
    task, adapted, _, _ = rebuild(row)
    batch = next(task.train_batches(8, seed=3))
    assert (batch["attention_mask"] == 0).any()  # rows of unequal length
    with torch.no_grad():
        torch.testing.assert_close(from_card(tmp_path / "out")(**batch).logits, adapted.eval()(**batch).logits,
                                   rtol=0, atol=1e-4)
