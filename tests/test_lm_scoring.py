"""Issue 14 item 3: LM scoring (choice log-likelihoods, label scoring) without full-vocabulary logits.

lm_loss.logprobs must give the scores the full [rows, length, vocab] logits gave (within 1e-6), count the
same FLOPs, and never build a logits tensor over more than CHUNK positions: for decoders and seq2seq
models, plain, with LoRA, prompt tuning, and a peft-wrapped LM head (LoRA on lm_head, modules_to_save)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import LoraConfig, PromptTuningConfig, get_peft_model
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from peftbench.config import parse_config
from peftbench.measure.flops import FlopMeter
from peftbench.runner import normalize, prepare
from peftbench.tasks.text import choice_logprobs
from peftbench.train import lm_loss

CHUNK = 4
METHODS = ["none", "lora", "prompt", "lora_head", "saved_head"]


def model_for(tiny_models: Any, arch: str, method: str) -> torch.nn.Module:
    seq2seq = arch in ("t5", "bart")
    torch.manual_seed(0)
    model = (AutoModelForSeq2SeqLM if seq2seq else AutoModelForCausalLM).from_pretrained(tiny_models(arch), dtype=torch.float32)
    task = "SEQ_2_SEQ_LM" if seq2seq else "CAUSAL_LM"
    cfg = {
        "none": None,
        "lora": LoraConfig(task_type=task, r=4, target_modules="all-linear"),
        "prompt": PromptTuningConfig(task_type=task, num_virtual_tokens=3),
        "lora_head": LoraConfig(task_type=task, r=4, target_modules=["lm_head"], init_lora_weights=False),
        "saved_head": LoraConfig(task_type=task, r=4, target_modules="all-linear", modules_to_save=["lm_head"]),
    }[method]
    model = model if cfg is None else get_peft_model(model, cfg)
    if method == "saved_head":  # the trained copy differs from the original head
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "modules_to_save" in n:
                    p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def scoring_batch(arch: str) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 60, (3, 11), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0
    if arch in ("t5", "bart"):
        labels = torch.randint(4, 60, (3, 6), generator=g)
        labels[0, -2:] = -100
        dec = torch.cat([torch.zeros(3, 1, dtype=torch.long), labels[:, :-1].clamp(min=0)], 1)
        return {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec}, labels
    labels = ids.clone()
    labels[:, :5] = -100  # the prompt: not scored
    labels[0, -3:] = -100
    return {"input_ids": ids, "attention_mask": mask}, labels


def old_logprobs(model: torch.nn.Module, batch: dict, labels: torch.Tensor, seq2seq: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """What scoring did before: the whole batch's logits at once."""
    logits = model(**batch).logits[:, -labels.shape[1] :]
    return choice_logprobs(logits, labels, shift=not seq2seq)


class LargestLogits(TorchDispatchMode):
    """Records the most rows of any tensor an op returns whose last dimension is the vocabulary."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.rows = vocab, 0

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if func._schema.is_mutable or any(a.alias_info for a in func._schema.returns):  # views (W.t()), in-place
            return out
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.dim() >= 1 and t.shape[-1] == self.vocab:
                self.rows = max(self.rows, t.numel() // self.vocab)
        return out


@contextmanager
def chunk(n: int) -> Iterator[None]:
    old = lm_loss.CHUNK
    lm_loss.CHUNK = n
    try:
        yield
    finally:
        lm_loss.CHUNK = old


@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5", "bart"])
@pytest.mark.parametrize("method", METHODS)
def test_logprobs_equal_the_full_logits_ones_without_building_them(tiny_models: Any, arch: str, method: str) -> None:
    model = model_for(tiny_models, arch, method)
    batch, labels = scoring_batch(arch)
    seq2seq = arch in ("t5", "bart")
    vocab = lm_loss.base_model(model).get_output_embeddings().weight.shape[0] if method != "lora_head" else \
        lm_loss.base_model(model).config.vocab_size
    old_meter, meter = FlopMeter(), FlopMeter()
    with torch.inference_mode():
        with old_meter.count(batch):
            want = old_logprobs(model, batch, labels, seq2seq)
        with chunk(CHUNK), LargestLogits(vocab) as seen, meter.count(batch):
            got = lm_loss.logprobs(model, batch, labels, seq2seq)
    assert (got[0] - want[0]).abs().max() <= 1e-6 * max(1.0, float(want[0].abs().max()))
    mean, old_mean = got[0] / got[1].clamp(min=1), want[0] / want[1].clamp(min=1)
    assert (mean - old_mean).abs().max() <= 1e-6
    assert got[1].tolist() == want[1].tolist()
    assert 0 < seen.rows <= CHUNK  # logits over CHUNK positions at most, never [rows, length, vocab]
    assert meter.forward_flops == old_meter.forward_flops  # every position still projected, as before


@pytest.mark.parametrize("method", ["lora_head", "saved_head"])
def test_evaluation_loss_with_a_wrapped_head_is_chunked_too(tiny_models: Any, method: str) -> None:
    model = model_for(tiny_models, "llama", method)
    batch, labels = scoring_batch("llama")
    batch = {**batch, "labels": labels}
    vocab = lm_loss.base_model(model).config.vocab_size
    with torch.inference_mode():
        want = float(model(**batch).loss)
        with chunk(CHUNK), LargestLogits(vocab) as seen:
            loss, out = lm_loss.loss_and_output(model, batch)
    assert out is None and abs(float(loss) - want) <= 1e-6
    assert seen.rows <= CHUNK


def test_logits_changed_after_the_head_are_scored_in_small_row_groups(tiny_models: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A model that soft-caps its logits gets the model's own logits, a few rows at a time."""
    model = model_for(tiny_models, "llama", "none")
    batch, labels = scoring_batch("llama")
    monkeypatch.setattr(lm_loss, "_LOGIT_CHANGES", ("vocab_size",))  # as if the config asked for a change
    assert lm_loss.lm_head(model, wrapped=True) is None
    with torch.inference_mode():
        want = old_logprobs(model, batch, labels, False)
        with chunk(11), LargestLogits(model.config.vocab_size) as seen:  # one 11-token row per pass
            got = lm_loss.logprobs(model, batch, labels, False)
    assert (got[0] - want[0]).abs().max() <= 1e-5 and got[1].tolist() == want[1].tolist()
    assert seen.rows <= 11


# -- through the tasks: multiple choice and few-shot label scoring -------------------------------------


def prepared(model: str, kind: str, data: str, method: str, max_length: int = 48) -> Any:
    raw = {"model": {"name": model}, "method": {"name": method},
           "task": {"kind": kind, "data": {"source": data}, "max_length": max_length},
           "train": {"steps": 1, "eval_batch_size": 16}}
    cfg, m = normalize(parse_config(raw))
    return prepare(cfg, m, samples=False)


def scores_old_and_new(monkeypatch: pytest.MonkeyPatch, run: Any) -> tuple[Any, Any]:
    with chunk(CHUNK):
        new = run()
    with monkeypatch.context() as m:
        m.setattr(lm_loss, "logprobs", old_logprobs)
        old = run()
    return old, new


@pytest.mark.parametrize("arch,method", [("llama", "lora"), ("gpt2", "prompt"), ("t5", "lora"), ("bart", "prompt")])
def test_multiple_choice_scores_are_unchanged(tiny_models: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              arch: str, method: str) -> None:
    from test_multiple_choice import data_dir

    prep = prepared(tiny_models(arch), "multiple_choice", str(data_dir(tmp_path / "mc")), method)
    old, new = scores_old_and_new(monkeypatch, lambda: prep.task.choice_scores(prep.model, "test", 16, FlopMeter()))
    assert len(new[0]) == 10
    for a, b in zip(old[0], new[0]):
        assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-6
    assert max(abs(x - y) for x, y in zip(old[1], new[1])) <= 1e-6


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_few_shot_label_scores_are_unchanged(tiny_models: Any, tiny_data: Path, monkeypatch: pytest.MonkeyPatch, arch: str) -> None:
    prep = prepared(tiny_models(arch), "classification", str(tiny_data), "few_shot", max_length=200)
    strategy = prep.task.strategy
    prompts = [r["prompt"] for r in prep.task._encode("test")[:6]]

    def run() -> torch.Tensor:
        with torch.inference_mode():
            return strategy.score_labels(prep.model, prompts, FlopMeter())

    old, new = scores_old_and_new(monkeypatch, run)
    assert new.shape == (6, 3) and (new - old).abs().max() <= 1e-6
