"""Soft prompts generate what their training forward predicts (transformers 5.24 renamed the cache that
peft's generation path looks for: methods/prefix_compat.py). The reference is greedy decoding without a
cache, one forward through the peft model per new token: the path training and the loss use."""

from __future__ import annotations

import copy

import pytest
import torch

from peftbench.config import GenerationSpec
from test_flops_generation import adapted, varied_data  # noqa: F401 - a fixture

GEN = GenerationSpec(max_new_tokens=6, repetition_penalty=1.0, no_repeat_ngram_size=0)


def reference(model, codec, prompt: list[int], seq2seq: bool) -> list[int]:
    """Greedy, no cache: each step runs the whole sequence through model.forward (peft adds the prompt)."""
    ids = torch.tensor([prompt])
    eos, out = codec.tok.eos_token_id, []
    start = model.get_base_model().config.decoder_start_token_id if seq2seq else None
    with torch.no_grad():
        for _ in range(GEN.max_new_tokens):
            if seq2seq:
                dec = torch.tensor([[start, *out]])
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=dec).logits
            else:
                seq = torch.tensor([prompt + out])
                logits = model(input_ids=seq, attention_mask=torch.ones_like(seq)).logits
            nxt = int(logits[0, -1].argmax())
            if nxt == eos:
                break
            out.append(nxt)
    return out


def generated(model, codec, prompt: list[int]) -> list[int]:
    """New token ids from model.generate as the task calls it (greedy, the task's pad and eos ids)."""
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=GEN.max_new_tokens,
                             do_sample=False, num_beams=1, pad_token_id=codec.tok.pad_token_id,
                             eos_token_id=codec.tok.eos_token_id, temperature=None, top_k=None, top_p=None,
                             forced_bos_token_id=None, forced_eos_token_id=None)  # BART's forced ids: not in the reference
    new = out[0].tolist() if codec.seq2seq else out[0, ids.shape[1]:].tolist()
    new = new[1:] if codec.seq2seq else new  # a seq2seq output starts with the decoder's start token
    return new[: new.index(codec.tok.eos_token_id)] if codec.tok.eos_token_id in new else new


def perturbed(tiny_models, data, arch: str, method: str, **params):
    """The adapted tiny model, weights shaken so that its output depends on its input, and the test prompts by length."""
    task, model = adapted(tiny_models, data, arch, method, **params)
    torch.manual_seed(0)
    with torch.no_grad():  # tiny random models repeat one token whatever the input: make the input matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (2.0 if p.requires_grad else 1.0))
    return task, model, sorted((task.codec.prompt(e.source) for e in task.splits["test"]), key=len)


@pytest.mark.parametrize("method", ["prompt", "p_tuning", "prefix"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "t5", "bart"])
def test_generated_text_follows_the_soft_prompt(tiny_models, varied_data, arch: str, method: str) -> None:
    task, model, prompts = perturbed(tiny_models, varied_data, arch, method)
    picked = [prompts[0], prompts[-1]]  # the shortest and the longest (GPT-2 failed past ~40 tokens)
    got = [generated(model, task.codec, p) for p in picked]
    assert got == [reference(model, task.codec, p, task.codec.seq2seq) for p in picked]
    assert all(len(g) == GEN.max_new_tokens for g in got), got  # no early eos: every step was compared
    # The soft prompt changes what is generated (so the test can tell): the bare base model generates otherwise.
    base = model.get_base_model()
    assert any(generated(base, task.codec, p) != generated(model, task.codec, p) for p in prompts), "no difference"
    clone = copy.deepcopy(model)  # a copy generates through its own prompt, not the original's
    assert [generated(clone, task.codec, p) for p in picked] == got
    assert clone.prepare_inputs_for_generation.__self__ is clone
    task.codec.generate(model, picked, GEN)  # the task's own path, batched and left-padded, runs through


@pytest.mark.parametrize("method", ["prompt", "p_tuning", "prefix", "lora"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_left_padded_row_generates_what_it_generates_alone(tiny_models, varied_data, arch: str, method: str) -> None:
    """Batched generation pads short prompts on the left; a soft prompt's virtual tokens must then sit as close
    to the text as in training (peft drops generate's position ids for prompt and P-tuning: we give them back)."""
    task, model, prompts = perturbed(tiny_models, varied_data, arch, method)
    picked = [prompts[0], prompts[len(prompts) // 2], prompts[-1]]
    assert len(picked[0]) < len(picked[-1]), "the batch pads its shorter rows"
    alone = [task.codec.generate(model, [p], GEN)[0] for p in picked]
    assert task.codec.generate(model, picked, GEN) == alone
