"""Issue 17 item 5: forgetting, the change of the LM loss on general text from before tuning to after.
The probe's loss is the library's own LM loss (masked or causal); a run stores before, after and their
difference; the report shows it; checkpoints without an LM head are skipped with a note."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.config import ModelSpec, parse_config
from peftbench.measure import forgetting
from peftbench.store import Store


@pytest.fixture(scope="module")
def mlm_bert(tmp_path_factory) -> str:
    """The tiny test BERT's vocabulary, saved with its masked-LM head (as BERT checkpoints are)."""
    from conftest import write_tiny_bert
    from transformers import BertConfig, BertForMaskedLM

    root = Path(write_tiny_bert(tmp_path_factory.mktemp("mlm-bert")))
    cfg = BertConfig.from_pretrained(root)
    torch.manual_seed(1)
    BertForMaskedLM(cfg).save_pretrained(root)
    return str(root)


def test_the_general_text_sample_ships_with_its_licence():
    rows = forgetting.texts(1000)
    assert len(rows) == 96 and all(len(t.split()) >= 60 and "<unk>" not in t and " @-@ " not in t for t in rows)
    from importlib import resources

    note = resources.files("peftbench.data").joinpath("general_text").joinpath("LICENSE.md").read_text()
    assert "CC BY-SA 3.0" in note and "WikiText" in note


def test_masked_probe_equals_the_masked_lm_loss_of_the_checkpoint(mlm_bert):
    from transformers import AutoTokenizer, BertForMaskedLM, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(mlm_bert)
    classifier = BertForSequenceClassification.from_pretrained(mlm_bert, num_labels=3)
    probe = forgetting.prepare(classifier, tok, "encoder", ModelSpec(name=mlm_bert), n_texts=8)
    assert isinstance(probe, forgetting.Probe) and probe.kind == "masked" and len(probe.batches) == 1
    [batch] = probe.batches
    masked = batch["labels"] != -100
    assert 0.05 < masked.float().mean() < 0.3 and not (batch["input_ids"][masked] != tok.mask_token_id).any()
    lm = BertForMaskedLM.from_pretrained(mlm_bert).eval()
    with torch.no_grad():
        want = lm(**batch).loss.item()
    assert probe.loss(classifier) == pytest.approx(want, rel=1e-5)
    assert probe.loss(classifier) == probe.loss(classifier)  # the same masks every time


def test_causal_probe_equals_the_lm_loss_with_and_without_a_task_head(tiny_models):
    from transformers import AutoTokenizer, GPT2ForSequenceClassification, GPT2LMHeadModel

    path = tiny_models("gpt2")
    tok = AutoTokenizer.from_pretrained(path)
    lm = GPT2LMHeadModel.from_pretrained(path).eval()
    own = forgetting.prepare(lm, tok, "decoder", ModelSpec(name=path), n_texts=8)
    assert isinstance(own, forgetting.Probe) and own.head is None
    with torch.no_grad():
        want = lm(**own.batches[0]).loss.item()
    assert own.loss(lm) == pytest.approx(want, rel=1e-5)
    classifier = GPT2ForSequenceClassification.from_pretrained(path, num_labels=3)
    via_head = forgetting.prepare(classifier, tok, "decoder", ModelSpec(name=path), n_texts=8)
    assert isinstance(via_head, forgetting.Probe) and via_head.head is not None
    assert via_head.loss(classifier) == pytest.approx(want, rel=1e-5)  # same body, the checkpoint's LM head


def test_without_an_lm_head_or_for_other_families_it_is_skipped_with_a_reason(tiny_model, tiny_models):
    from transformers import AutoTokenizer, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = BertForSequenceClassification.from_pretrained(tiny_model)
    why = forgetting.prepare(model, tok, "encoder", ModelSpec(name=tiny_model))
    assert isinstance(why, str) and "no masked-LM head" in why
    assert "not on vision models" in forgetting.prepare(model, None, "vision", ModelSpec(name=tiny_model))


def run(*args: str) -> None:
    res = CliRunner().invoke(app, ["run", *args])
    assert res.exit_code == 0, res.output


def test_runs_store_forgetting_and_the_report_shows_it(mlm_bert, tiny_model, tiny_data, tmp_path, monkeypatch):
    from peftbench import reuse

    reuse.clear()
    losses = []  # the untouched model's loss is taken once per process and model, then each run's after
    real = forgetting.Probe.loss
    monkeypatch.setattr(forgetting.Probe, "loss", lambda self, model: losses.append(1) or real(self, model))
    common = ["--data", str(tiny_data), "--steps", "3", "--batch-size", "8", "--max-length", "32",
              "--results-dir", str(tmp_path), "--forgetting"]
    run("-m", "base", "--model", mlm_bert, *common)
    run("-m", "full", "--model", mlm_bert, "--lr", "1e-2", *common)
    run("-m", "lora", "--model", tiny_model, *common)  # no MLM head: a note, no figure
    rows = {(r.method, r.config["model"]["name"]): r.result["costs"] for r in Store(tmp_path).list("done")}
    base, full = rows[("base", mlm_bert)], rows[("full", mlm_bert)]
    assert base["forgetting"] == 0.0 and base["lm_loss_before"] == base["lm_loss_after"] > 0
    assert full["lm_loss_before"] == base["lm_loss_before"]  # the same untuned model and sample
    assert len(losses) == 1 + 2, "before: once for mlm_bert's two runs; after: once per run"
    assert full["forgetting"] == pytest.approx(full["lm_loss_after"] - full["lm_loss_before"]) and full["forgetting"] != 0
    lora = rows[("lora", tiny_model)]
    assert lora.get("forgetting") is None and "no masked-LM head" in lora["forgetting_note"]
    res = CliRunner().invoke(app, ["report", "--results-dir", str(tmp_path), "--csv", str(tmp_path / "r.csv"),
                                   "--html", str(tmp_path / "r.html")])
    assert res.exit_code == 0 and "forgetting" in res.output, res.output
    import csv

    got = {r["method"]: r for r in csv.DictReader((tmp_path / "r.csv").open())}
    assert float(got["full"]["cost_forgetting_mean"]) == pytest.approx(full["forgetting"])
    assert "Quality vs forgetting" in (tmp_path / "r.html").read_text()  # the Pareto plot of quality against it


def test_forgetting_off_keeps_stored_hashes():
    assert "forgetting" not in parse_config({}).canonical()["measure"]
    assert parse_config({"measure": {"forgetting": True}}).canonical()["measure"]["forgetting"] is True
