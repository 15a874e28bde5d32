"""benchmarks/throughput.py and benchmarks/gpu/qlora_vs_lora.py: importable and runnable on a CPU.

The A/B machinery (peftbench's loop vs HF Trainer on the same model, batches and optimizer) runs on a
tiny Llama for a few steps: both arms must see the same losses, step for step."""

from __future__ import annotations

import functools
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, vocab_size=500)


@pytest.fixture
def throughput(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import llama_shape
    import throughput

    for k, v in TINY.items():
        monkeypatch.setitem(llama_shape.LLAMA_1B, k, v)
    monkeypatch.setattr(throughput, "synthetic_batches", functools.partial(llama_shape.synthetic_batches, seq=16))
    return throughput


def test_both_arms_train_the_same_losses(throughput) -> None:
    case = throughput.Case("tiny-lora", "lora", "cpu", model="llama1b", batch=2, steps=2, params=throughput.GPU_LORA)
    row = throughput.series(case, reps=1, steps=2, warmup=1)
    traj = row["loss_trajectory"]
    assert len(traj["peftbench"]) == 3 and traj["peftbench"] == pytest.approx(traj["trainer"], abs=1e-6)
    assert row["speed_ratio"]["median"] > 0 and row["memory_ratio"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_paths_say_why_on_a_cpu(throughput, capsys: pytest.CaptureFixture[str]) -> None:
    assert throughput.main(["--device", "cuda"]) == 2
    assert "needs a CUDA GPU" in capsys.readouterr().err
    assert throughput.main(["--cases", "llama1b"]) == 2
    assert "pass --device cuda" in capsys.readouterr().err
    sys.path.insert(0, str(BENCH / "gpu"))
    try:
        import qlora_vs_lora
    finally:
        sys.path.remove(str(BENCH / "gpu"))
    assert qlora_vs_lora.main([]) == 0
    assert "skipped: no CUDA GPU" in capsys.readouterr().out
    with pytest.raises(SystemExit) as done:
        throughput.main(["--help"])
    assert done.value.code == 0 and "--cases" in capsys.readouterr().out


def test_tuner_lrs_searches_widens_and_prints_measured_entries(monkeypatch, capsys, tmp_path: Path, tiny_model: str,
                                                               tiny_data: Path) -> None:
    """benchmarks/tuner_lrs.py (issue 17 item 4) on the tiny model: one tuner that trains, one refused."""
    monkeypatch.syspath_prepend(str(BENCH))
    import tuner_lrs

    assert tuner_lrs.majority_macro_f1(["a", "a", "a", "b"]) == pytest.approx((2 * 0.75 / 1.75) / 2)
    given = SimpleNamespace(param=["c3a.block_size=128", "oft.r=4", "c3a.init_weights=gaussian"])
    assert tuner_lrs.params(given, "c3a") == {"block_size": 128, "init_weights": "gaussian"}  # typed as YAML
    assert tuner_lrs.params(given, "hra") == {}
    monkeypatch.setattr(sys, "argv", ["tuner_lrs.py", "--results-dir", str(tmp_path), "--methods", "oft,c3a",
                                      "--model", tiny_model, "--data", str(tiny_data), "--steps", "2",
                                      "--batch-size", "8", "--max-length", "32"])
    tuner_lrs.main()
    out = capsys.readouterr().out
    assert "| c3a | refused on this model:" in out
    assert '"oft": Tuned(' in out and "0.000667 → " in out and "0.002 → " in out and "0.006 → " in out
