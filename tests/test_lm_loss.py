"""Issue 13 item 4: the chunked LM loss equals model(**batch).loss, its gradients and FLOPs too."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

from peftbench.measure.flops import FlopMeter
from peftbench.tasks.text import choice_logprobs
from peftbench.train import lm_loss

ARCHS = ["gpt2", "llama", "t5", "bart"]


def load(tiny_models, arch: str) -> torch.nn.Module:
    auto = AutoModelForSeq2SeqLM if arch in ("t5", "bart") else AutoModelForCausalLM
    torch.manual_seed(0)
    return auto.from_pretrained(tiny_models(arch), dtype=torch.float32)


def batch_of(arch: str, rows: int = 3, length: int = 11) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, 60, (rows, length), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0  # a padded row
    labels = ids.clone() if arch not in ("t5", "bart") else torch.randint(4, 60, (rows, 7), generator=g)
    labels[:, :2] = -100  # an unscored prompt
    labels[0, -2:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def wrap(model: torch.nn.Module, arch: str, method: str) -> torch.nn.Module:
    task = "SEQ_2_SEQ_LM" if arch in ("t5", "bart") else "CAUSAL_LM"
    cfg = {
        "lora": LoraConfig(task_type=task, r=4, target_modules="all-linear"),
        "prefix": PrefixTuningConfig(task_type=task, num_virtual_tokens=3),
        "prompt": PromptTuningConfig(task_type=task, num_virtual_tokens=3),
    }[method]
    return get_peft_model(model, cfg)


def losses_and_grads(model: torch.nn.Module, batch: dict, chunked: bool, chunk: int = 5) -> tuple[float, dict, FlopMeter]:
    meter = FlopMeter()
    old = lm_loss.ENABLED, lm_loss.CHUNK
    lm_loss.ENABLED, lm_loss.CHUNK = chunked, chunk
    try:
        model.zero_grad()
        with meter.count(batch):
            loss = lm_loss.loss(model, batch)
            loss.backward()
    finally:
        lm_loss.ENABLED, lm_loss.CHUNK = old
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads, meter


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("method", ["full", "lora", "prefix", "prompt"])
def test_chunked_loss_gradients_and_flops_equal_the_plain_ones(tiny_models, arch: str, method: str) -> None:
    model = load(tiny_models, arch)
    if method != "full":
        model = wrap(model, arch, method)
    batch = batch_of(arch)
    assert lm_loss.lm_head(model) is not None  # the chunked path really runs
    plain, plain_grads, plain_meter = losses_and_grads(model, batch, chunked=False)
    chunked, grads, meter = losses_and_grads(model, batch, chunked=True)
    assert chunked == pytest.approx(plain, abs=1e-5)
    assert grads.keys() == plain_grads.keys() and grads
    for n, g in grads.items():
        torch.testing.assert_close(g, plain_grads[n], atol=1e-5, rtol=1e-4, msg=n)
    # The model FLOPs of forward and backward, each as the unchunked head counts them.
    assert (meter.forward_flops, meter.backward_flops) == (plain_meter.forward_flops, plain_meter.backward_flops)


@pytest.mark.parametrize("arch", ARCHS)
def test_chunked_logprobs_equal_the_full_logits_ones(tiny_models, arch: str) -> None:
    model = load(tiny_models, arch).eval()
    batch = batch_of(arch)
    labels = batch.pop("labels")
    seq2seq = arch in ("t5", "bart")
    with torch.inference_mode():
        inputs = dict(batch)
        if seq2seq:
            inputs["decoder_input_ids"] = model.prepare_decoder_input_ids_from_labels(labels=labels)
        want = choice_logprobs(model(**inputs).logits, labels, shift=not seq2seq)
        old = lm_loss.CHUNK
        lm_loss.CHUNK = 4
        try:
            got = lm_loss.logprobs(model, batch, labels, seq2seq)
        finally:
            lm_loss.CHUNK = old
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    assert got[1].tolist() == want[1].tolist()


def test_a_lora_wrapped_head_falls_back_to_the_plain_loss(tiny_models) -> None:
    model = get_peft_model(load(tiny_models, "gpt2"), LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["lm_head"]))
    assert lm_loss.lm_head(model) is None
    batch = batch_of("gpt2")
    assert float(lm_loss.loss(model, batch)) == pytest.approx(float(model(**batch).loss), abs=1e-6)


@pytest.mark.parametrize("arch", ["llama", "t5"])
def test_evaluation_in_row_groups_gives_the_batch_loss_and_flops(tiny_models, arch: str) -> None:
    model = load(tiny_models, arch).eval()
    batch = batch_of(arch)
    with torch.inference_mode():
        plain_meter, meter = FlopMeter(), FlopMeter()
        with plain_meter.count(batch):
            plain = float(model(**batch).loss)
        old = lm_loss.EVAL_POSITIONS, lm_loss.CHUNK
        lm_loss.EVAL_POSITIONS, lm_loss.CHUNK = 1, 4  # one row per pass
        try:
            with meter.count(batch):
                grouped = float(lm_loss.loss(model, batch))
        finally:
            lm_loss.EVAL_POSITIONS, lm_loss.CHUNK = old
    assert grouped == pytest.approx(plain, abs=1e-5)
    assert (meter.forward_flops, meter.backward_flops) == (plain_meter.forward_flops, 0)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("chunked", [True, False])
def test_loss_and_scoring_passes_build_no_key_value_cache(tiny_models, monkeypatch, arch: str, chunked: bool) -> None:
    """The configs turn use_cache on; a pass that never decodes further must not keep every layer's keys and values."""
    from transformers.cache_utils import DynamicLayer

    model = wrap(load(tiny_models, arch), arch, "lora")
    assert lm_loss.base_model(model).config.use_cache
    updates = []
    update = DynamicLayer.update
    monkeypatch.setattr(DynamicLayer, "update", lambda self, *a, **k: updates.append(1) or update(self, *a, **k))
    monkeypatch.setattr(lm_loss, "ENABLED", chunked)
    batch = batch_of(arch)
    lm_loss.loss(model, batch).backward()
    with torch.no_grad():
        lm_loss.loss(model, batch)
        lm_loss.logprobs(model, {k: v for k, v in batch.items() if k != "labels"}, batch["labels"], arch in ("t5", "bart"))
    assert updates == []
    with torch.no_grad():  # the counter does see a cache when there is one
        model(**{k: v for k, v in batch.items() if k != "labels"}, **({"decoder_input_ids": batch["labels"].clamp(min=0)} if arch in ("t5", "bart") else {}))
    assert updates
