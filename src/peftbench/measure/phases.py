"""Where a process's time goes: wall and CPU seconds per named phase (load, train, validate, ...).

Phases nest; each second is charged to the innermost open phase only, so the shares add up to
the whole. CPU time (`time.process_time`, every thread) is what other jobs on a shared machine
do not distort. `benchmarks/compare_cost.py` reads the totals: set PEFTBENCH_PHASES=FILE and the
CLI writes them there as JSON when it exits.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ENV = "PEFTBENCH_PHASES"

_totals: dict[str, list[float]] = {}  # phase -> [wall seconds, cpu seconds, entries]
_stack: list[str] = []
_mark: tuple[float, float] = (0.0, 0.0)


def _charge() -> None:
    """Charge the time since the last mark to the innermost open phase."""
    global _mark
    now = (time.perf_counter(), time.process_time())
    if _stack:
        t = _totals.setdefault(_stack[-1], [0.0, 0.0, 0])
        t[0] += now[0] - _mark[0]
        t[1] += now[1] - _mark[1]
    _mark = now


@contextmanager
def phase(name: str) -> Iterator[None]:
    _charge()
    _stack.append(name)
    _totals.setdefault(name, [0.0, 0.0, 0])[2] += 1
    try:
        yield
    finally:
        _charge()
        _stack.pop()


def totals() -> dict[str, dict[str, float]]:
    """Phase -> wall, cpu (seconds) and count, so far."""
    _charge()
    return {k: {"wall": v[0], "cpu": v[1], "count": v[2]} for k, v in _totals.items()}


def reset() -> None:
    _totals.clear()
    _charge()


def dump_if_asked() -> None:
    """Write the totals where PEFTBENCH_PHASES points (the cost benchmark's subprocesses)."""
    target = os.environ.get(ENV)
    if target:
        Path(target).write_text(json.dumps(totals(), indent=1))
