"""Generation FLOPs counted per forward shape (measure/gen_flops.py) equal a counter around the whole
`generate` call exactly: decoders and seq2seq, plain, LoRA and soft prompts, greedy and beam search."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from conftest import write_jsonl
from peftbench.config import GenerationSpec
from peftbench.measure.flops import FlopMeter, counter
from peftbench.measure.gen_flops import Line, cache_length, describe
from test_generation import config, dialogue_rows
from test_latency import adapted as adapted_as_run


class Whole:
    """The reference: one FlopCounterMode around every generate call (peftbench before issue 14)."""

    def __init__(self) -> None:
        self.flops = 0

    def generate(self, model: nn.Module, batch: dict[str, torch.Tensor], **kwargs: Any) -> Any:
        with counter() as fc:
            out = model.generate(**batch, **kwargs)
        self.flops += fc.get_total_flops()
        return out


@pytest.fixture(scope="module")
def varied_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Dialogues of varied length, so that batches differ in prompt length (and padding)."""
    root = tmp_path_factory.mktemp("varied")
    for split, n, seed in (("train", 8, 1), ("validation", 4, 2), ("test", 12, 3)):
        rows = dialogue_rows(n, seed)
        for i, r in enumerate(rows):
            r["dialogue"] = " ".join([r["dialogue"]] * (1 + i % 3))
        write_jsonl(root / f"{split}.jsonl", rows)
    return root


def adapted(tiny_models, data: Path, arch: str, method: str, **params: Any):
    raw = config(tiny_models(arch), data, "summarization", max_length=56)
    task, model, _ = adapted_as_run(raw, method, **params)
    model.eval()
    return task, model


def both(task, model, gen: GenerationSpec, batch: int = 3, passes: int = 2) -> tuple[FlopMeter, list[int], list[int]]:
    """Per-batch FLOPs of the shape-counted meter and of the whole-call counter, over `passes` passes."""
    prompts = sorted((task.codec.prompt(e.source) for e in task.splits["test"]), key=len)
    meter, ours, whole = FlopMeter(), [], []
    for _ in range(passes):
        for i in range(0, len(prompts), batch):
            ref, before = Whole(), meter.forward_flops
            expected = task.codec.generate(model, prompts[i : i + batch], gen, ref)
            assert task.codec.generate(model, prompts[i : i + batch], gen, meter) == expected  # hooks change nothing
            ours.append(meter.forward_flops - before)
            whole.append(ref.flops)
    return meter, ours, whole


# gpt2 with prompt tuning included: its generate failed past ~40 tokens until methods/prefix_compat.py's
# generation_ready (peft looked for the cache under its old name and re-injected the prompt every step).
CASES = [(arch, method) for arch in ("gpt2", "llama", "t5", "bart") for method in ("base", "lora", "prompt", "prefix")]


@pytest.mark.parametrize("arch,method", CASES + [("llama", "p_tuning"), ("t5", "p_tuning")])
@pytest.mark.parametrize("beams", [1, 3])
def test_shape_counted_generation_equals_whole_counter(tiny_models, varied_data: Path, arch: str, method: str, beams: int) -> None:
    task, model = adapted(tiny_models, varied_data, arch, method)
    gen = GenerationSpec(max_new_tokens=10, num_beams=beams)
    meter, ours, whole = both(task, model, gen)
    assert ours == whole and all(f > 0 for f in whole)
    assert meter.calls.outside == 0  # nothing counted between forwards: later calls ran with no spanning counter
    half = len(whole) // 2
    assert meter.calls.counted_calls < meter.calls.reused_calls  # most forwards were not counted again
    assert meter.calls.counted_calls == len(meter.calls.exact)  # each counted once; the second pass counted nothing new
    assert ours[half:] == ours[:half]


def test_decoding_steps_read_off_a_checked_line(tiny_models, varied_data: Path) -> None:
    """Steps alike but for the cache length are counted at three lengths, then read off the line."""
    task, model = adapted(tiny_models, varied_data, "llama", "lora")
    meter, ours, whole = both(task, model, GenerationSpec(max_new_tokens=12, repetition_penalty=1.0), batch=4, passes=1)
    assert ours == whole
    lines = [line for line in meter.calls.lines.values() if line.state == "affine"]
    assert lines and all(len(line.points) == 3 for line in lines)
    steps = 3 * 11  # 3 batches, 11 decoding steps each (the first token comes from the prefill)
    assert meter.calls.counted_calls < 3 + steps // 2


def test_prefix_projection_counted_outside_the_model(tiny_models, varied_data: Path) -> None:
    """Prefix tuning's MLP runs in peft's wrapper, before the model's first forward: counted too."""
    task, model = adapted(tiny_models, varied_data, "gpt2", "prefix", prefix_projection=True, encoder_hidden_size=16)
    _, ours, whole = both(task, model, GenerationSpec(max_new_tokens=6))
    assert ours == whole


def test_line_refuses_points_off_it() -> None:
    line = Line()
    for n in (10, 11, 13):
        line.add(n, 100 + 7 * n)
    assert line.state == "affine" and line.predict(40) == 380
    line.add(50, 1)  # a later count that disagrees: the line is never used again
    assert line.state == "broken" and line.predict(40) is None
    bent = Line()
    for n in (10, 11, 12):
        bent.add(n, n * n)
    assert bent.state == "broken"


def test_cache_length_and_relative_description() -> None:
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache()
    assert cache_length({"past_key_values": cache}) is None  # empty: a prefill, counted by shape
    for layer in range(2):
        cache.update(torch.zeros(2, 4, 7, 8), torch.zeros(2, 4, 7, 8), layer)
    assert cache_length({"past_key_values": cache}) == 7
    mask = torch.ones(2, 8)
    assert describe(mask, 7) == describe(torch.ones(2, 9), 8) != describe(mask)  # L + 1 either way
    assert describe({"past_key_values": cache}, 7) != describe({"past_key_values": cache})


class MatmulProcessor:
    """A logits processor doing a matrix product outside the model's forwards."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores + (scores @ torch.ones(scores.shape[-1], 2)).sum(-1, keepdim=True) * 0


def test_flops_between_forwards_keep_the_spanning_counter(tiny_models, varied_data: Path) -> None:
    from transformers import LogitsProcessorList

    task, model = adapted(tiny_models, varied_data, "llama", "lora")
    prompts = sorted((task.codec.prompt(e.source) for e in task.splits["test"]), key=len)
    meter = FlopMeter()
    for i in range(0, len(prompts), 4):
        batch = task.codec.collate([{"input_ids": p} for p in prompts[i : i + 4]], left=True)
        kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0, "logits_processor": LogitsProcessorList([MatmulProcessor()])}
        ref, before = Whole(), meter.forward_flops
        ref.generate(model, batch, **kwargs)
        meter.generate(model, batch, **kwargs)
        assert meter.forward_flops - before == ref.flops
    assert meter.calls.outside > 0 and meter.calls.reused_calls > 0
