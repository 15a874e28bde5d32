"""benchmarks/gpu/check.sh, the one-call GPU check: on a machine without CUDA it says so and runs nothing."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would really run")
def test_without_a_gpu_it_stops_at_once_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/check.sh")], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"), "PYTHON": str(Path(__import__("sys").executable))})
    assert done.returncode == 1
    assert done.stderr.strip() == "benchmarks/gpu/check.sh needs a CUDA GPU (torch sees none here); nothing was run"
    assert not list((tmp_path / "out").glob("*.log"))



def test_every_script_and_test_file_it_names_exists() -> None:
    text = (ROOT / "benchmarks/gpu/check.sh").read_text()
    for path in ("benchmarks/throughput.py", "benchmarks/gpu/qlora_vs_lora.py", "tools/fetch_gpu_wheels.sh"):
        assert path in text and (ROOT / path).is_file(), path
    assert any("mark.gpu" in p.read_text() for p in (ROOT / "tests").glob("test_*.py"))
