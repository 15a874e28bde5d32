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
    assert out["stopped"] == {"b1": "interval", "bN": "cap"}
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


def test_latency_max_repeats_and_seconds_keep_old_hashes_at_their_defaults() -> None:
    from peftbench.config import RunConfig

    assert not {"latency_max_repeats", "latency_seconds"} & set(RunConfig().canonical()["measure"])
    assert RunConfig(measure=MeasureSpec(latency_max_repeats=9)).canonical()["measure"]["latency_max_repeats"] == 9
    assert RunConfig(measure=MeasureSpec(latency_seconds=5)).canonical()["measure"]["latency_seconds"] == 5


def test_a_slow_series_stops_at_three_repeats_once_its_time_is_up() -> None:
    from peftbench.measure.latency import repeat_until_stable

    slow = iter([9000.0, 14000.0] * 20)  # 9-14 s a call, never within 5%: 20 s are up after the second call
    t = repeat_until_stable(lambda: next(slow), least=5, most=10, seconds=20)
    assert (t.repeats, t.met, t.stopped) == (3, False, "time") and t.median == 9000.0
    slow = iter([30000.0] * 5)
    assert repeat_until_stable(lambda: next(slow), least=1, most=10, seconds=20).repeats == 1  # latency_repeats 1: one
    fast = iter([100.0, 200.0] * 50)  # 0.1-0.2 s a call: the cap comes long before 20 s
    t = repeat_until_stable(lambda: next(fast), least=5, most=10, seconds=20)
    assert (t.repeats, t.stopped) == (10, "cap")
    steady = iter([3000.0] * 20)  # 3 s a call, steady: the interval is met at 6, before 20 s are up
    t = repeat_until_stable(lambda: next(steady), least=6, most=10, seconds=20)
    assert (t.repeats, t.met, t.stopped) == (6, True, "interval")


def test_measure_stops_a_slow_series_by_time_and_says_so(tiny_config: dict, monkeypatch) -> None:
    from peftbench.measure import latency
    from peftbench.store import Latency

    task, model, method = adapted(tiny_config, "prompt")
    b1 = [500.0] + [10.0] * 6  # fast: the interval
    bn = [9000.0] + [8000.0, 12000.0, 10000.0]  # a warm-up, then 3 slow calls (30 s > 20 s)
    monkeypatch.setattr(latency, "clock", FakeClock(b1 + bn))
    out = measure(task, model, method, torch.device("cpu"), MeasureSpec(latency_batch=8, latency_repeats=5))
    assert out["repeats"] == {"b1": 6, "bN": 3} and out["stopped"] == {"b1": "interval", "bN": "time"}
    assert out["bN_ms"] == pytest.approx(10000.0) and out["interval_met"]["bN"] is False
    stored = Latency.from_dict(out)
    assert stored is not None and stored.to_dict()["stopped"] == out["stopped"]


# -- spread and a busy machine (issue 15 item 8) ---------------------------------------------------

def test_measure_records_the_interquartile_range_of_the_repeats(tiny_config: dict, monkeypatch) -> None:
    from peftbench.measure import latency
    from peftbench.store import Latency

    task, model, method = adapted(tiny_config, "prompt")
    b1 = [500.0, 10.0, 30.0, 20.0, 40.0, 50.0]  # warm-up, then 5 timed (40 ms apart in the middle)
    bn = [900.0, 60.0, 60.0, 60.0, 60.0, 60.0, 60.0]
    monkeypatch.setattr(latency, "clock", FakeClock(b1 + bn))
    out = measure(task, model, method, torch.device("cpu"), MeasureSpec(latency_batch=8, latency_repeats=5, latency_max_repeats=5))
    assert out["b1_ms"] == pytest.approx(30.0)
    assert out["iqr_ms"]["b1"] == pytest.approx([20.0, 40.0]) and out["iqr_ms"]["bN"] == pytest.approx([60.0, 60.0])
    stored = Latency.from_dict(out)
    assert stored is not None and (stored.b1_q1_ms, stored.b1_q3_ms) == pytest.approx((20.0, 40.0))
    assert stored.to_dict()["iqr_ms"] == out["iqr_ms"] and stored.to_dict()["machine"] == out["machine"]


@pytest.mark.parametrize("ticks, own, cores, threads, busy", [
    ((0, 0, 100, 400), 0.5, 2, 2, False),   # 2 cores: 100 of 200 busy ticks a core... all of it this process
    ((0, 0, 190, 200), 1.0, 2, 2, True),    # another process kept ~0.9 cores busy beside 2 threads on 2 cores
    ((0, 0, 190, 200), 1.0, 2, 1, False),   # with 1 thread there was a core for it
])
def test_a_busy_machine_is_when_other_work_and_the_threads_exceed_the_cores(monkeypatch, ticks, own, cores, threads, busy) -> None:
    from peftbench.train import threads as th

    a0, a1, b0, b1 = ticks
    seq = iter([(a0, a1), (b0, b1)])
    monkeypatch.setattr(th, "_busy_ticks", lambda: next(seq))
    monkeypatch.setattr(th.os, "cpu_count", lambda: cores)
    monkeypatch.setattr(th, "usable_cores", lambda: cores)
    clock = iter([0.0, 1.0])
    monkeypatch.setattr(th.time, "monotonic", lambda: next(clock))
    cpu = iter([0.0, own])
    monkeypatch.setattr(th.time, "process_time", lambda: next(cpu))
    machine = th.LoadWindow().machine(threads)
    assert machine["busy"] is busy and machine["cores"] == cores and machine["threads"] == threads
    assert machine["other_load"] == pytest.approx(max(0.0, (b0 - a0) / (b1 - a1) * cores - own), abs=0.01)


def test_the_report_shows_latency_with_its_spread_and_marks_a_busy_machine(tiny_model: str, tiny_data: Path,
                                                                           tmp_path: Path, monkeypatch) -> None:
    from typer.testing import CliRunner

    from peftbench.cli import app
    from peftbench.train import threads as th

    results = tmp_path / "r"
    common = ["--model", tiny_model, "--data", str(tiny_data), "--max-length", "32", "--batch-size", "8",
              "--eval-batch-size", "16", "--steps", "2", "--samples", "0", "--results-dir", str(results)]
    monkeypatch.setattr(th, "usable_cores", lambda: 2)
    for method, other in (("lora", 0.1), ("bitfit", 1.6)):  # bitfit's latency is timed while 1.6 cores are taken
        monkeypatch.setattr(th.LoadWindow, "other", lambda self, other=other: other)
        res = CliRunner().invoke(app, ["run", *common, "-m", method, "--threads", "1" if other < 1 else "2"])
        assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["report", "--results-dir", str(results)], terminal_width=250)
    assert res.exit_code == 0, res.output
    rows = {line.split()[1]: line for line in res.stdout.splitlines() if line.split()[1:2] in (["lora"], ["bitfit"])
            and "IQR" in line}
    assert set(rows) == {"lora", "bitfit"}, res.stdout
    assert "ms) *" in rows["bitfit"] and "ms) *" not in rows["lora"] and "*" not in rows["lora"]
    flat = " ".join(res.stdout.split())  # the note wraps
    assert flat.count("note: * latency") == 1
    assert ("note: * latency of bitfit was timed on a busy machine (at worst other work kept 1.6 of 2 cores busy "
                    "beside 2 threads): slower and more spread than on an idle one; to quote it, rerun those runs with "
                    "--force when the machine is idle") in flat, res.stdout


def test_the_report_marks_latency_that_stopped_on_its_time_budget(tiny_model: str, tiny_data: Path, tmp_path: Path) -> None:
    """A run whose latency series ran out of measure.latency_seconds: † in the table and a note saying how to time longer."""
    import yaml
    from typer.testing import CliRunner

    from peftbench.cli import app
    from peftbench.store import Store

    results = tmp_path / "r"
    common = ["--model", tiny_model, "--data", str(tiny_data), "--max-length", "32", "--batch-size", "8",
              "--eval-batch-size", "16", "--steps", "2", "--samples", "0", "--results-dir", str(results)]
    (tmp_path / "short.yaml").write_text(yaml.safe_dump({"measure": {"latency_seconds": 1e-9}}))
    for method, extra in (("lora", []), ("bitfit", ["--config", str(tmp_path / "short.yaml")])):
        res = CliRunner().invoke(app, ["run", *common, "-m", method, *extra])
        assert res.exit_code == 0, res.output
    with Store(results) as store:
        stopped = {r.method: r.result["costs"]["latency"]["stopped"] for r in store.list()}
    assert stopped["bitfit"] == {"b1": "time", "bN": "time"} and "time" not in stopped["lora"].values(), stopped
    res = CliRunner().invoke(app, ["report", "--results-dir", str(results)], terminal_width=250)
    assert res.exit_code == 0, res.output
    rows = {line.split()[1]: line for line in res.stdout.splitlines() if line.split()[1:2] in (["lora"], ["bitfit"])
            and "IQR" in line}
    assert "†" in rows["bitfit"] and "†" not in rows["lora"], res.stdout
    flat = " ".join(res.stdout.split())
    assert ("note: † latency of bitfit stopped on its time budget (measure.latency_seconds) after as few as 3 timed "
            "repeats, before the median's 95% interval was within ±5%; raise measure.latency_seconds to time it longer") in flat
