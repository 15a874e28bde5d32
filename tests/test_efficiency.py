"""Issue 13 item 6: tokens/s, achieved model FLOP/s and MFU per run; the device peak; CUDA peak memory."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.measure import efficiency as eff
from peftbench.measure.memory import peak_bytes, peak_reserved_bytes, reset_peak
from peftbench.store import Costs, RunResult, Store

TF = 1e12


@pytest.fixture(autouse=True)
def idle_machine(monkeypatch):
    """Probes here are cached as on an idle machine, whatever else runs (cpu_peak skips caching when busy)."""
    from peftbench.train import threads

    monkeypatch.setattr(threads, "other_load", lambda: 0.0)


@pytest.mark.parametrize("name,precision,tflops", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.0), ("NVIDIA H200", "bf16", 989.0), ("NVIDIA H100 PCIe", "bf16", 756.0),
    ("NVIDIA A100-SXM4-80GB", "bf16", 312.0), ("NVIDIA A100 80GB PCIe", "tf32", 156.0),
    ("NVIDIA L40S", "bf16", 362.0), ("NVIDIA L40", "bf16", 181.0), ("NVIDIA L4", "fp16", 121.0),
    ("NVIDIA A10G", "bf16", 125.0), ("NVIDIA GeForce RTX 4090", "bf16", 165.2),
    ("Tesla V100-SXM2-16GB", "fp16", 125.0), ("Tesla V100-SXM2-16GB", "tf32", 15.7), ("Tesla T4", "fp32", 8.1),
])
def test_gpu_peaks_are_matched_on_the_device_name(name, precision, tflops):
    peak = eff.gpu_peak(name, precision)
    assert peak.flops == pytest.approx(tflops * TF) and peak.source == f"gpu table: {name} {precision}"


def test_an_unknown_gpu_or_precision_has_no_peak_and_says_how_to_give_one():
    for name, precision in (("NVIDIA Quantum 9000", "bf16"), ("Tesla V100-SXM2-16GB", "bf16")):
        peak = eff.gpu_peak(name, precision)
        assert peak.flops is None and peak.source.startswith("unknown:") and "--peak-tflops" in peak.source
    assert eff.efficiency(100, 10**9, 2.0, eff.Peak(None, "unknown")).mfu is None


def test_the_precision_the_matmuls_ran_in():
    cpu = torch.device("cpu")
    assert [eff.matmul_precision(cpu, p) for p in ("fp32", "auto", "bf16", "fp16")] == ["fp32", "fp32", "bf16", "fp16"]


def test_efficiency_is_model_flops_and_tokens_per_training_second():
    e = eff.efficiency(tokens=3000, model_flops=6 * 10**12, seconds=2.0, peak=eff.Peak(10 * TF, "x"), devices=2)
    assert (e.tokens_per_second, e.model_flops_per_second) == (1500.0, 3 * TF)
    assert e.mfu == pytest.approx(0.15)  # 3 TFLOP/s of two 10 TFLOP/s devices
    assert eff.efficiency(0, 0, 0.0, eff.Peak(TF, "x")).costs() == {
        "tokens_per_second": None, "model_flops_per_second": None, "mfu": None, "peak_flops": TF, "peak_source": "x"}
    assert eff.device_peak(torch.device("cpu"), "fp32", override_tflops=2.5) == eff.Peak(2.5 * TF, "--peak-tflops")


def test_cpu_probe_runs_once_per_machine_and_threads_then_comes_from_the_cache(tmp_path, monkeypatch, keep_matmul):
    monkeypatch.setenv("PEFTBENCH_CACHE_DIR", str(tmp_path / "cache"))
    keep_matmul.install("torch")
    calls: list[int] = []

    def fake_probe(threads: int) -> float:
        calls.append(threads)
        return 1e10 * threads

    monkeypatch.setattr(eff, "probe_cpu", fake_probe)
    assert eff.cpu_peak(1) == eff.Peak(1e10, "cpu probe (fp32 matmul, 1 threads)")
    assert eff.cpu_peak(1).flops == 1e10 and eff.cpu_peak(2).flops == 2e10 and eff.cpu_peak(2).flops == 2e10
    assert calls == [1, 2]
    cached = json.loads((tmp_path / "cache" / "peak.json").read_text())
    assert sorted(cached.values()) == [1e10, 2e10]
    assert all(eff.cpu_model() in k and f"torch {torch.__version__}" in k for k in cached)
    (tmp_path / "cache" / "peak.json").write_text("not json")  # a damaged cache is probed over, not fatal
    assert eff.cpu_peak(1).flops == 1e10 and calls == [1, 2, 1]
    if keep_matmul.available():  # another backend reaches another peak: probed and cached apart
        keep_matmul.install("onednn")
        assert eff.cpu_peak(1) == eff.Peak(1e10, "cpu probe (fp32 matmul via onednn, 1 threads)") and calls == [1, 2, 1, 1]
        assert any(k.endswith("| onednn") for k in json.loads((tmp_path / "cache" / "peak.json").read_text()))


def test_an_unwritable_cache_costs_a_probe_and_nothing_else(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("PEFTBENCH_CACHE_DIR", str(tmp_path / "file" / "cache"))
    monkeypatch.setattr(eff, "probe_cpu", lambda threads: 5e9)
    assert eff.cpu_peak(1).flops == 5e9


def test_the_real_probe_is_short_and_measures_a_plausible_rate(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTBENCH_CACHE_DIR", str(tmp_path))
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    peak = eff.cpu_peak()
    assert time.perf_counter() - t0 < 2.5
    assert 1e8 < peak.flops < 1e14 and torch.get_num_threads() == threads  # its thread setting is undone
    t0 = time.perf_counter()
    assert eff.cpu_peak() == peak and time.perf_counter() - t0 < 0.1  # cached


def test_the_default_cache_is_under_the_users_cache_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("PEFTBENCH_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert eff.cache_file() == tmp_path / "peftbench" / "peak.json"


def test_older_results_load_without_the_new_costs():
    c = RunResult.from_dict({"costs": {"train_flops": 7, "latency": None}}).costs
    assert (c.tokens_per_second, c.mfu, c.train_hardware_flops, c.peak_memory_reserved_bytes) == (None,) * 4
    assert list(c.to_dict()) == [k for k in Costs.__dataclass_fields__ if k not in (
        "train_hardware_flops", "tokens_per_second", "model_flops_per_second", "mfu", "peak_flops", "peak_source",
        "peak_memory_reserved_bytes", "setup_flops", "forgetting", "lm_loss_before", "lm_loss_after", "forgetting_note")]
    full = Costs(train_flops=7, mfu=0.5, peak_source="x")
    assert list(full.to_dict())[-3:] == ["latency", "mfu", "peak_source"] and Costs.from_dict(full.to_dict()) == full


def run_cli(tiny_model: str, tiny_data: Path, results: Path, *extra: str):
    return CliRunner().invoke(app, [
        "run", "--model", tiny_model, "--data", str(tiny_data), "--max-length", "32", "--steps", "3",
        "--batch-size", "8", "--eval-batch-size", "16", "--results-dir", str(results), *extra])


def test_a_run_stores_shows_and_tabulates_its_efficiency(tiny_model, tiny_data, tmp_path, peak_cache):
    res = run_cli(tiny_model, tiny_data, tmp_path / "a")
    assert res.exit_code == 0, res.output
    assert "tokens/s" in res.stdout and "MFU" in res.stdout  # the run's table
    with Store(tmp_path / "a") as store:
        row = store.list()[0]
    c = row.run_result.costs
    assert c.tokens_per_second == pytest.approx(c.tokens / c.train_seconds)
    assert c.model_flops_per_second == pytest.approx(c.train_flops / c.train_seconds)
    assert c.mfu == pytest.approx(c.model_flops_per_second / c.peak_flops) and 0 < c.mfu < 1
    from peftbench.train import matmul

    via = {"torch": "", "onednn": " via onednn"}[matmul.current()["backend"]]  # the probe ran through the run's own
    assert c.peak_source == f"cpu probe (fp32 matmul{via}, {torch.get_num_threads()} threads)"
    assert c.peak_memory_reserved_bytes is None and c.train_hardware_flops == c.train_flops  # CPU; no checkpointing
    assert (peak_cache / "peak.json").is_file()  # the session's cache, not the home folder's
    shown = json.loads(CliRunner().invoke(app, ["results", "show", row.run_id, "--results-dir", str(tmp_path / "a"),
                                                "--json"]).stdout)
    assert {"tokens_per_second", "model_flops_per_second", "mfu", "peak_flops", "peak_source"} <= set(shown["result"]["costs"])
    listed = json.loads(CliRunner().invoke(app, ["results", "--results-dir", str(tmp_path / "a"), "--json"]).stdout)
    assert listed[0]["tokens_per_second"] == c.tokens_per_second and listed[0]["mfu"] == c.mfu

    # --peak-tflops replaces the probe; it changes no trained number, so not the config's identity either
    res = run_cli(tiny_model, tiny_data, tmp_path / "b", "--peak-tflops", "0.5")
    assert res.exit_code == 0, res.output
    with Store(tmp_path / "b") as store:
        other = store.list()[0]
    assert other.config_hash == row.config_hash and "peak_tflops" not in other.config["measure"]
    o = other.run_result.costs
    assert (o.peak_flops, o.peak_source) == (0.5e12, "--peak-tflops") and o.mfu == pytest.approx(o.model_flops_per_second / 0.5e12)
    assert o.train_flops == c.train_flops and other.run_result.test == row.run_result.test


def test_the_report_shows_tokens_per_second_and_mfu(tiny_model, tiny_data, tmp_path):
    assert run_cli(tiny_model, tiny_data, tmp_path, "-m", "lora").exit_code == 0
    md, js = tmp_path / "report.md", tmp_path / "report.json"
    res = CliRunner().invoke(app, ["report", "--results-dir", str(tmp_path), "--md", str(md), "--json", str(js),
                                   "--resamples", "100"])
    assert res.exit_code == 0, res.output
    assert "train tokens/s" in res.stdout and "MFU" in res.stdout
    assert "train tokens/s" in md.read_text() and "MFU" in md.read_text()
    doc = json.loads(js.read_text())
    costs = doc["sections"][0]["cells"][0]["costs"]
    assert {"tokens_per_second", "model_flops_per_second", "mfu", "train_hardware_flops"} <= set(costs)


def test_a_bad_peak_is_refused_in_one_line(tiny_model, tiny_data, tmp_path):
    res = run_cli(tiny_model, tiny_data, tmp_path, "--peak-tflops", "-3")
    assert res.exit_code == 2 and "peak_tflops" in res.stderr and "Traceback" not in res.output


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_peaks_are_allocated_and_reserved_and_reset_per_run():
    dev = torch.device("cuda")
    big = torch.empty(256 * 2**20, dtype=torch.uint8, device=dev)
    del big
    reset_peak(dev)
    small = torch.empty(2**20, dtype=torch.uint8, device=dev)
    allocated, kind = peak_bytes(dev)
    assert kind == "cuda_max_allocated" and 2**20 <= allocated < 256 * 2**20  # the big one was before the reset
    assert peak_reserved_bytes(dev) >= allocated
    del small
    peak = eff.device_peak(dev, eff.matmul_precision(dev, "auto"))
    assert peak.source.startswith(("gpu table:", "unknown:"))


def test_a_stale_low_cpu_peak_is_probed_again(tmp_path, monkeypatch):
    """A peak probed on a busy machine reads low; a run achieving more than it re-probes, keeping the higher,
    and a probe taken while the machine is busy is not cached."""
    import json

    import torch

    from peftbench.measure import efficiency
    from peftbench.train import threads

    monkeypatch.setenv("PEFTBENCH_CACHE_DIR", str(tmp_path))
    key = efficiency.peak_key(torch.get_num_threads())
    (tmp_path / "peak.json").write_text(json.dumps({key: 1e9}))  # 1 GFLOP/s: far below any real CPU
    monkeypatch.setattr(efficiency, "probe_cpu", lambda t: 5e10)
    monkeypatch.setattr(threads, "other_load", lambda: 0.0)
    eff = efficiency.measure(100, int(2e10), 1.0, torch.device("cpu"))  # 20 GFLOP/s achieved: 2000% of the stale peak
    assert eff.mfu == 0.4 and json.loads((tmp_path / "peak.json").read_text())[key] == 5e10
    monkeypatch.setattr(threads, "other_load", lambda: 1.5)
    (tmp_path / "peak.json").write_text(json.dumps({}))
    assert "not cached" in efficiency.cpu_peak().source and json.loads((tmp_path / "peak.json").read_text()) == {}
