"""A decoder's evaluation loss from generate's own prefill (train/prefill_loss.py): the same loss and the same
generated text as a loss pass of its own, fewer FLOPs, and the loss pass wherever the prefill cannot be reused."""

from __future__ import annotations

import pytest
import torch

from peftbench.config import GenerationSpec
from peftbench.measure.flops import FlopMeter
from peftbench.train import lm_loss, prefill_loss
from test_flops_generation import varied_data  # noqa: F401 - a fixture
from test_prompt_generation import perturbed


def evaluated(task, model, monkeypatch, share: bool, batch: int = 5) -> tuple[dict, list[str], int, int]:
    """(metrics, predictions, eval FLOPs, loss passes run) of the test split, with or without the prefill's reuse."""
    passes = []
    real_loss = lm_loss.loss
    with monkeypatch.context() as m:
        m.setattr(lm_loss, "loss", lambda model, batch: passes.append(1) or real_loss(model, batch))
        if not share:
            m.setattr(prefill_loss, "applies", lambda model, num_beams: False)
        meter = FlopMeter()
        res = task.evaluate(model, "test", batch, meter)
    return res.metrics, res.predictions, meter.total, len(passes)


PLAIN = [("gpt2", "base", {}), ("gpt2", "lora", {}), ("gpt2", "ia3", {}), ("gpt2", "full", {}),
         ("llama", "base", {}), ("llama", "lora", {}), ("llama", "full", {}),
         ("llama", "lora", {"target_modules": ["q_proj", "v_proj", "lm_head"]}),  # a peft-wrapped head
         ("llama", "adaption_prompt", {"adapter_len": 3, "adapter_layers": 1}),
         ("gpt2", "few_shot", {"k": 1}),  # demonstrations in every prompt (and in the rows scored)
         ("t5", "base", {}), ("t5", "lora", {}), ("bart", "base", {}), ("bart", "ia3", {})]


@pytest.mark.parametrize(("arch", "method", "params"), PLAIN, ids=[f"{a}-{m}{'-head' if 'lm_head' in str(p) else ''}"
                                                                  for a, m, p in PLAIN])
def test_the_loss_from_the_prefill_equals_a_loss_pass_and_the_text_is_unchanged(
    tiny_models, varied_data, monkeypatch, arch: str, method: str, params: dict
) -> None:
    task, model, _ = perturbed(tiny_models, varied_data, arch, method, **params)
    if method == "few_shot":  # what the runner's method.prepare_task does
        task.demonstrate(params["k"], 0)
        assert task.codec.demos
    shared, shared_preds, shared_flops, shared_passes = evaluated(task, model, monkeypatch, share=True)
    apart, apart_preds, apart_flops, apart_passes = evaluated(task, model, monkeypatch, share=False)
    assert (shared_passes, apart_passes) == (0, 3)  # 12 examples in batches of 5: no loss pass when shared
    assert shared_preds == apart_preds and len(set(apart_preds)) > 1  # generation untouched, and varied
    assert shared["loss"] == pytest.approx(apart["loss"], rel=1e-5)
    assert {k: v for k, v in shared.items() if k != "loss"} == {k: v for k, v in apart.items() if k != "loss"}
    assert shared_flops < apart_flops  # the prompts ran once


def test_rows_in_groups_give_the_same_loss(tiny_models, varied_data, monkeypatch) -> None:
    task, model, _ = perturbed(tiny_models, varied_data, "llama", "lora")
    whole = evaluated(task, model, monkeypatch, share=True, batch=12)[0]["loss"]
    monkeypatch.setattr(lm_loss, "EVAL_POSITIONS", 100)  # one or two rows of cache + targets per forward
    grouped = evaluated(task, model, monkeypatch, share=True, batch=12)[0]["loss"]
    apart = evaluated(task, model, monkeypatch, share=False, batch=12)[0]["loss"]
    assert grouped == pytest.approx(whole, rel=1e-5) and grouped == pytest.approx(apart, rel=1e-5)


@pytest.mark.parametrize(("arch", "method"), [("gpt2", "prompt"), ("llama", "p_tuning"), ("gpt2", "prefix"),
                                              ("t5", "prompt"), ("bart", "prefix")])
def test_soft_prompts_run_the_loss_pass(tiny_models, varied_data, monkeypatch, arch: str, method: str) -> None:
    task, model, _ = perturbed(tiny_models, varied_data, arch, method)
    assert not prefill_loss.applies(model, 1)
    assert evaluated(task, model, monkeypatch, share=True)[3] == 3


def test_beam_search_runs_a_decoders_loss_pass(tiny_models, varied_data, monkeypatch) -> None:
    task, model, _ = perturbed(tiny_models, varied_data, "llama", "lora")
    assert prefill_loss.applies(model, 1) and not prefill_loss.applies(model, 2)
    task.spec.generation = GenerationSpec(num_beams=2, max_new_tokens=4)
    metrics, _, _, passes = evaluated(task, model, monkeypatch, share=True)
    assert passes == 3 and metrics["loss"] > 0


def test_a_seq2seq_model_shares_its_encoder_under_beam_search_too(tiny_models, varied_data, monkeypatch) -> None:
    task, model, _ = perturbed(tiny_models, varied_data, "t5", "lora")
    task.spec.generation = GenerationSpec(num_beams=2, max_new_tokens=4)
    shared, shared_preds, _, passes = evaluated(task, model, monkeypatch, share=True)
    apart, apart_preds, _, _ = evaluated(task, model, monkeypatch, share=False)
    assert passes == 0 and shared_preds == apart_preds and shared["loss"] == pytest.approx(apart["loss"], rel=1e-5)


def test_a_prefill_that_did_not_read_the_whole_batch_is_not_used(tiny_models, varied_data) -> None:
    task, model, prompts = perturbed(tiny_models, varied_data, "llama", "lora")
    batch = task.codec._prompt_batch(model, prompts[:3])
    with torch.inference_mode(), prefill_loss.capture(model, batch["input_ids"].shape[1] + 8, True) as prefill:
        task.codec._generate(model, batch, GenerationSpec(max_new_tokens=2), None, None)
    assert prefill.seen and not prefill.ready
    with torch.inference_mode(), prefill_loss.capture(model, batch["input_ids"].shape[1], True) as prefill:
        task.codec._generate(model, batch, GenerationSpec(max_new_tokens=2), None, None)
    assert prefill.ready and prefill.kv[0][0].shape[-2] == batch["input_ids"].shape[1]
    assert not model.get_base_model()._forward_hooks  # the hook is gone after the call
