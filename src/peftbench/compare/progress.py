"""A study's progress as it goes: one line per finished run, with an ETA from the FLOP/s measured so far.

The remaining work is the plan's (compare/plan.py): each method's runs left times its training FLOPs
per run (steps under the budget times one measured step). The ETA divides that by the training FLOP/s
the study's own runs reached, and adds each remaining run's measured overhead (loading, validation,
test, saving: wall time beyond training). Runs found finished in the store (reused) cost nothing and
measure nothing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from peftbench.compare.plan import duration


@dataclass
class Done:
    wall: float  # seconds from its start to its stored result
    train_flops: float
    train_seconds: float


@dataclass
class Tracker:
    flops: dict[str, float]  # method label -> training FLOPs of one of its runs (planned)
    left: dict[str, float]  # method label -> full-budget runs' worth of training not yet done
    total: int  # runs
    finished: int = 0
    measured: list[Done] = field(default_factory=list)
    since: float = field(default_factory=time.time)  # when the current run started
    started: float = field(default_factory=time.time)

    @classmethod
    def from_plan(cls, estimates: list[Any], probes: dict[str, Any]) -> Tracker:
        """From compare.plan's Estimates (steps, runs) and Probes (FLOPs of one step)."""
        flops = {e.label: float(e.steps * probes[e.label].step_flops) for e in estimates if e.label in probes}
        return cls(flops, {e.label: e.full_runs for e in estimates}, sum(e.runs for e in estimates))

    def drop(self, label: str, runs: int) -> None:
        """Full-budget runs of a method that will not happen (its every search run failed)."""
        runs = min(runs, math.ceil(self.left.get(label, 0)))
        self.left[label] = max(0.0, self.left.get(label, 0) - runs)
        self.total -= runs

    def rate(self) -> float | None:
        """Training FLOP/s over the runs this study trained."""
        flops = sum(d.train_flops for d in self.measured)
        seconds = sum(d.train_seconds for d in self.measured)
        return flops / seconds if flops > 0 and seconds > 0 else None

    def eta(self) -> tuple[float | None, float]:
        """(seconds left or None before any run has trained here, training FLOPs left)."""
        flops_left = sum(self.flops.get(k, 0.0) * n for k, n in self.left.items())
        runs_left = max(0, self.total - self.finished)
        rate = self.rate()
        if not runs_left:
            return 0.0, 0.0
        if rate is None:
            return None, flops_left
        overhead = sum(max(d.wall - d.train_seconds, 0.0) for d in self.measured) / len(self.measured)
        return flops_left / rate + overhead * runs_left, flops_left

    def run_finished(self, label: str, what: str, row: Any, share: float = 1.0) -> str:
        """Count one run with `share` of the budget (a stored row, or None when it failed) and say where the
        study stands."""
        now = time.time()
        wall, self.since = now - self.since, now
        self.finished += 1
        self.left[label] = max(0.0, self.left.get(label, 0) - share)
        result = getattr(row, "result", None) or {}
        costs = result.get("costs") or {}
        reused = row is not None and (row.finished or 0) < self.started
        if row is None:
            how = "failed"
        elif reused:
            how = "reused from the store"
        else:
            how = duration(wall)
            if costs.get("train_flops") and costs.get("train_seconds"):
                self.measured.append(Done(wall, float(costs["train_flops"]), float(costs["train_seconds"])))
        eta, flops_left = self.eta()
        return progress_line(self.finished, self.total, f"{label} {what}", how, self.rate(), eta, flops_left)


def progress_line(done: int, total: int, run: str, how: str, rate: float | None, eta: float | None,
                  flops_left: float) -> str:
    """'progress: 3/8 runs (lora seed 1: 41 s); ETA ~2.3 min (1.1e+13 FLOPs left at a measured 5.2e+10 FLOP/s)'."""
    line = f"progress: {done}/{total} runs ({run}: {how})"
    if done >= total:
        return line + "; all done"
    if eta is None or rate is None:
        return line + "; ETA after the first run that trains here"
    return line + f"; ETA ~{duration(eta)} ({flops_left:.3g} FLOPs left at a measured {rate:.3g} FLOP/s)"
