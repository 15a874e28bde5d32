"""The Ray backend on a local Ray: every config done once, a rerun skips them all."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from peftbench.store import Store
from peftbench.sweep import expand, run_sweep

ray = pytest.importorskip("ray")


@pytest.fixture
def no_ray_left():
    yield
    ray.shutdown()  # only a safety net: run_sweep shuts down the local Ray it started


def test_ray_backend_runs_each_config_once_and_rerun_skips(tiny_config: dict, tmp_path: Path, no_ray_left) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"base": {**tiny_config, "measure": {"latency": False}},
                                    "axes": {"method": ["lora", "ia3"], "train.seed": [0, 1]}}))
    res, lines = tmp_path / "res", []
    summary = run_sweep(path, res, workers=2, backend="ray", log=lines.append)  # a local Ray of 2 CPUs
    assert [o.status for o in summary.outcomes] == ["done"] * 4, lines
    assert lines[0].endswith("Ray (local)") and sum(": done " in s for s in lines) == 4, lines
    rows = Store(res).list()
    assert sorted(r.config_hash for r in rows) == sorted(r.config_hash for r in expand(path).runs)
    assert {r.status for r in rows} == {"done"}
    assert not ray.is_initialized(), "the local Ray is shut down at the end"

    again: list[str] = []
    summary = run_sweep(path, res, backend="ray", log=again.append)
    assert summary.already_done == 4 and summary.outcomes == []
    assert sum("skipped (already done as" in s for s in again) == 4
    assert len(Store(res).list()) == 4
