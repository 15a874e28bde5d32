"""Latency and throughput, merged too where the method can merge, on tiny models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel

from peftbench import models
from peftbench.config import MeasureSpec, parse_config
from peftbench.measure.latency import measure
from peftbench.methods.base import Context
from peftbench.runner import make_task, normalize

SPEC = MeasureSpec(latency_batch=8, latency_repeats=2)
KEYS = {"b1_ms", "bN_ms", "batch", "throughput"}


def adapted(raw: dict, method: str, **params: Any):
    """Task, adapted model and method as the runner builds them, the adapter's weights made non-trivial
    (an untrained LoRA adds zero, so merging it would prove nothing)."""
    cfg, m = normalize(parse_config({**raw, "method": {"name": method, "params": params}}))
    task = make_task(cfg, m)
    task.load_data()
    model, _ = task.load_model(cfg.model)
    ctx = Context(task.peft_task_type, models.resolve(cfg.model), 10, family=task.family, head_modules=list(task.head_modules))
    model = m.apply(model, ctx)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    return task, model, m


def check_figures(fig: dict, batch: int) -> None:
    assert KEYS <= set(fig) and fig["batch"] == batch
    assert fig["b1_ms"] > 0 and fig["bN_ms"] > 0 and fig["throughput"] > 0
    assert fig["throughput"] == pytest.approx(batch / fig["bN_ms"] * 1000)


def test_lora_latency_and_merged_copy(tiny_config: dict) -> None:
    task, model, method = adapted(tiny_config, "lora")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = measure(task, model, method, torch.device("cpu"), SPEC)
    check_figures(out, 8)
    check_figures(out["merged"], 8)
    assert out["merged"]["merged_matches"] is True
    # the caller's model is untouched: still a peft model, with the same weights
    assert isinstance(model, PeftModel) and any("lora_A" in n for n, _ in model.named_parameters())
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


def test_prompt_tuning_has_no_merged_entry_and_batch_is_clamped(tiny_config: dict) -> None:
    task, model, method = adapted(tiny_config, "prompt")
    out = measure(task, model, method, torch.device("cpu"), MeasureSpec(latency_batch=1000, latency_repeats=1))
    check_figures(out, 24)  # the tiny test split has 24 examples
    assert "merged" not in out


def test_base_gets_latency_and_its_merge_is_the_same_model(tiny_config: dict) -> None:
    task, model, method = adapted(tiny_config, "base")
    out = measure(task, model, method, torch.device("cpu"), SPEC)
    check_figures(out, 8)
    assert out["merged"]["same_model"] and out["merged"]["bN_ms"] == out["bN_ms"]


def test_generation_latency_times_decoding(tiny_models, tmp_path: Path) -> None:
    from conftest import write_jsonl
    from test_generation import config, dialogue_rows

    for split, n in (("train", 8), ("validation", 4), ("test", 4)):
        write_jsonl(tmp_path / f"{split}.jsonl", dialogue_rows(n, 1))
    task, model, method = adapted(config(tiny_models("gpt2"), tmp_path, "summarization"), "lora")
    out = measure(task, model, method, torch.device("cpu"), SPEC)
    check_figures(out, 4)
    assert out["merged"]["merged_matches"] is True


def test_a_merge_that_changes_predictions_is_reported(tiny_config: dict) -> None:
    task, model, method = adapted(tiny_config, "lora")
    preds = task.evaluate(model, "test", 8, limit=8, score=False).predictions
    wrong = next(c for c in range(3) if c != preds[0])  # a class some example does not get
    real_merge = method.merge

    def broken_merge(m):  # a merge that loses the adapter's effect: one class always wins
        merged = real_merge(m)
        with torch.no_grad():
            merged.classifier.bias.copy_(torch.nn.functional.one_hot(torch.tensor(wrong), 3) * 100.0)
        return merged

    method.merge = broken_merge
    assert measure(task, model, method, torch.device("cpu"), SPEC)["merged"]["merged_matches"] is False


# -- adaptive repeats (issue 14 item 5) ------------------------------------------------------------

class FakeClock:
    """Each timed call reads the clock twice; the call lasts the next of `durations` (ms)."""

    def __init__(self, durations: list[float]) -> None:
        self.durations, self.reads, self.now = iter(durations), 0, 0.0

    def __call__(self) -> float:
        self.reads += 1
        if self.reads % 2 == 0:
            self.now += next(self.durations) / 1000
        return self.now


def test_repeats_stop_once_the_median_interval_is_within_five_percent() -> None:
    from peftbench.measure.latency import repeat_until_stable

    # n = 6..8 the 95% interval of the median is [min, max] and holds the 200; at n = 9 it is [x2, x8]
    values = iter([100.0] * 5 + [200.0] + [100.0] * 20)
    t = repeat_until_stable(lambda: next(values), least=2, most=20)
    assert (t.repeats, t.met, t.median) == (9, True, 100.0)
    steady = iter([50.0] * 30)
    assert repeat_until_stable(lambda: next(steady), least=1, most=20).repeats == 6  # the fewest a 95% interval needs
    steady = iter([50.0] * 30)
    assert repeat_until_stable(lambda: next(steady), least=8, most=20).repeats == 8  # never fewer than asked


def test_the_cap_holds_when_the_interval_never_narrows() -> None:
    from peftbench.measure.latency import repeat_until_stable

    noisy = iter([100.0, 200.0] * 50)
    t = repeat_until_stable(lambda: next(noisy), least=2, most=12)
    assert (t.repeats, t.met) == (12, False)
    noisy = iter([100.0, 200.0] * 50)
    assert repeat_until_stable(lambda: next(noisy), least=15, most=12).repeats == 15  # latency_repeats wins


def test_measure_records_repeats_and_whether_the_interval_was_met(tiny_config: dict, monkeypatch) -> None:
    from peftbench.measure import latency
    from peftbench.store import Latency

    task, model, method = adapted(tiny_config, "prompt")  # no merged copy: one b1 and one bN series
    b1 = [500.0] + [10.0] * 6  # warm-up, then steady: stops at 6
    bn = [900.0] + [40.0, 80.0] * 4  # never within 5%: the cap of 8
    clock = FakeClock(b1 + bn)
    monkeypatch.setattr(latency, "clock", clock)
    out = measure(task, model, method, torch.device("cpu"), MeasureSpec(latency_batch=8, latency_repeats=3, latency_max_repeats=8))
    assert out["repeats"] == {"b1": 6, "bN": 8} and out["interval_met"] == {"b1": True, "bN": False}
    assert out["b1_ms"] == pytest.approx(10.0) and out["bN_ms"] == pytest.approx(60.0)
    assert clock.reads == 2 * (len(b1) + len(bn))  # the warm-ups are timed and dropped
    stored = Latency.from_dict(out)
    assert stored is not None and stored.to_dict()["repeats"] == {"b1": 6, "bN": 8}
    assert stored.to_dict()["interval_met"] == {"b1": True, "bN": False}


def test_generation_latency_uses_a_few_prompts(tiny_models, tmp_path: Path) -> None:
    from conftest import write_jsonl
    from peftbench.measure.latency import GENERATION_BATCH
    from test_generation import config, dialogue_rows

    for split, n in (("train", 8), ("validation", 4), ("test", 12)):
        write_jsonl(tmp_path / f"{split}.jsonl", dialogue_rows(n, 1))
    task, model, method = adapted(config(tiny_models("llama"), tmp_path, "summarization"), "prompt")
    out = measure(task, model, method, torch.device("cpu"), MeasureSpec(latency_batch=32, latency_repeats=1, latency_max_repeats=6))
    check_figures(out, GENERATION_BATCH)
    assert 1 <= out["repeats"]["bN"] <= 6


def test_latency_max_repeats_keeps_old_hashes_at_its_default() -> None:
    from peftbench.config import RunConfig

    assert "latency_max_repeats" not in RunConfig().canonical()["measure"]
    assert RunConfig(measure=MeasureSpec(latency_max_repeats=9)).canonical()["measure"]["latency_max_repeats"] == 9
