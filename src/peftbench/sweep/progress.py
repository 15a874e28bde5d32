"""A sweep's progress: after each finished run, where the sweep stands, with an ETA from measured FLOP/s.

compare's Tracker does the counting (compare/progress.py). A sweep has no plan of per-step FLOPs,
so a run's expected training FLOPs are its FLOP budget where it has one, else what finished runs
of the same model, method and budget trained (else the mean over all finished runs). Tracker's
ETA is for runs one after another; the sweep runs `slots` at once, so it divides by that.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from peftbench.compare.progress import Tracker, progress_line
from peftbench.sweep.local import Outcome


@dataclass
class _Row:
    """What Tracker.run_finished reads of a stored row."""

    result: dict[str, Any]
    finished: float


def group(config: Any) -> str:
    """Runs expected to cost the same training FLOPs: same model, task, method and budget."""
    c = config.canonical()
    budget = {k: c["train"].get(k) for k in ("steps", "epochs", "flops", "seconds", "batch_size")}
    return json.dumps([c["model"]["name"], c["task"]["kind"], c["method"], budget], sort_keys=True, default=str)


class SweepProgress:
    def __init__(self, configs: dict[int, Any], slots: int = 1) -> None:
        self.groups = {i: group(c) for i, c in configs.items()}
        self.budgets = {self.groups[i]: float(c.train.flops) for i, c in configs.items() if c.train.flops}
        self.tracker = Tracker({}, dict(Counter(self.groups.values())), len(configs))
        self.measured: dict[str, list[float]] = {}
        self.slots = slots

    def _expect(self) -> None:
        def mean(xs: list[float]) -> float | None:
            return sum(xs) / len(xs) if xs else None

        every = mean([f for fs in self.measured.values() for f in fs])
        for g in self.tracker.left:
            self.tracker.flops[g] = self.budgets.get(g) or mean(self.measured.get(g, [])) or every or 0.0

    def finished(self, o: Outcome) -> str:
        """Count one finished run; the overall line."""
        g = self.groups[o.index]
        if o.status == "done" and o.flops:
            self.measured.setdefault(g, []).append(float(o.flops))
        self.tracker.since = time.time() - o.seconds  # the run's own wall time, not the gap since the last one
        row = None
        if o.status == "done":
            costs = {"train_flops": o.flops, "train_seconds": o.train_seconds} if o.flops else {}
            row = _Row({"costs": costs}, time.time())
        elif o.status == "skipped":
            row = _Row({}, 0.0)  # reused: costs nothing, measures nothing
        self._expect()
        self.tracker.run_finished(g, "", row)
        eta, left = self.tracker.eta()
        runs_left = sum(self.tracker.left.values())
        if eta is not None and runs_left:
            eta /= min(self.slots, runs_left)
        t = self.tracker
        how = "failed" if row is None else ("reused" if o.status == "skipped" else f"{o.seconds:.1f} s")
        return progress_line(t.finished, t.total, f"last {o.node or 'here'}", how, t.rate(), eta, left)
