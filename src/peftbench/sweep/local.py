"""Running a sweep's configs: one at a time in this process, or in N worker processes.

Kept free of torch at import time: spawned workers import this module first and must pick
their GPU (CUDA_VISIBLE_DEVICES) before torch is loaded.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


@dataclass
class Outcome:
    """What became of one config (plain data: it crosses process and Ray boundaries)."""

    index: int  # position in the sweep, 0-based
    status: str  # done | skipped | failed
    run_id: str | None = None
    metric: tuple[str, float] | None = None  # the selection metric on test (validation when untested)
    seconds: float = 0.0
    error: str | None = None  # one line
    flops: float | None = None  # training FLOPs of a finished run
    train_seconds: float | None = None  # ... and its training time (progress: measured FLOP/s)
    node: str | None = None  # where it ran (Ray backend)


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _headline(result: dict[str, Any] | None) -> tuple[str, float] | None:
    if not result:
        return None
    name = result.get("select_metric")
    for split in ("test", "validation"):
        value = (result.get(split) or {}).get(name)
        if isinstance(value, (int, float)):
            return name, float(value)
    return None


def execute(index: int, config: dict[str, Any], results_dir: str, force: bool,
            report_to: list[str] | None = None, reporter: Any = None) -> Outcome:
    """Run one config through the runner; every failure becomes an Outcome, never an exception
    (a failing run is already recorded as failed by the store; the sweep goes on)."""
    from peftbench.config import parse_config
    from peftbench.errors import UserError
    from peftbench.runner import excerpt, run
    from peftbench.train.loop import Quiet

    t0 = time.perf_counter()
    try:
        out = run(parse_config(config), results_dir, force=force, report_to=report_to, reporter=reporter or Quiet())
    except UserError as e:
        return Outcome(index, "failed", error=str(e), seconds=time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - any crash of one run must not stop the sweep
        return Outcome(index, "failed", error=excerpt(f"{type(e).__name__}: {e}"), seconds=time.perf_counter() - t0)
    row = out.row  # None only in a helper process of a multi-process (accelerate) run
    costs = ((row and row.result or {}).get("costs") or {})
    return Outcome(index, "skipped" if out.skipped else "done", row and row.run_id, _headline(row and row.result),
                   time.perf_counter() - t0, flops=costs.get("train_flops"), train_seconds=costs.get("train_seconds"))


def run_inline(jobs: list[tuple[int, dict[str, Any]]], results_dir: Path, force: bool,
               report_to: list[str] | None = None) -> Iterator[tuple[str, Any]]:
    """Sequentially in this process: yields ("start", index) and ("end", Outcome)."""
    for index, config in jobs:
        yield "start", index
        yield "end", execute(index, config, str(results_dir), force, report_to)


# -- worker processes ------------------------------------------------------------------
def _die_with_parent(parent: int) -> None:
    """A kill -9 of the sweep must not leave workers training forever: on Linux the kernel
    sends SIGKILL when the parent dies (PR_SET_PDEATHSIG); elsewhere the loop polls getppid."""
    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _quiet_settings() -> dict[str, Any]:
    """The parent's warning filters and transformers verbosity (the CLI silences load reports)."""
    out: dict[str, Any] = {"warnings": list(warnings.filters)}
    if "transformers" in sys.modules:
        from transformers.utils import logging

        out.update(verbosity=logging.get_verbosity(), bars=logging.is_progress_bar_enabled())
    return out


def _worker(slot: int, parent: int, threads: tuple[int, str], gpus: int, quiet: dict[str, Any], results_dir: str,
            force: bool, report_to: list[str] | None, jobs: Any, events: Any) -> None:
    _die_with_parent(parent)
    if gpus:  # one GPU per worker, round robin, chosen before torch initialises CUDA
        os.environ["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
    import torch

    from peftbench.train.threads import fix

    torch.set_num_threads(threads[0])  # also for what a worker does outside a run (FLOPs calibration)
    fix(*threads)  # and each run sets and records it (runner)
    warnings.filters[:] = quiet["warnings"]
    if "verbosity" in quiet:
        from transformers.utils import logging

        logging.set_verbosity(quiet["verbosity"])
        if not quiet["bars"]:
            logging.disable_progress_bar()
    try:
        while os.getppid() == parent:
            try:
                job = jobs.get(timeout=1.0)
            except queue.Empty:
                continue
            if job is None:
                return
            index, config = job
            events.put(("start", index, os.getpid()))
            events.put(("end", execute(index, config, results_dir, force, report_to), os.getpid()))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the runner marked its run
        return


def run_workers(jobs: list[tuple[int, dict[str, Any]]], results_dir: Path, force: bool, workers: int,
                gpus: int = 0, report_to: list[str] | None = None) -> Iterator[tuple[str, Any]]:
    """In N spawned worker processes pulling from a queue: yields ("start", index) and ("end", Outcome).

    A worker that dies mid-run (out of memory, killed) fails that config and is replaced."""
    ctx = mp.get_context("spawn")  # fork would copy a process that may hold torch threads or CUDA
    todo, events = ctx.Queue(), ctx.Queue()
    for job in jobs:
        todo.put(job)
    n = min(workers, len(jobs))
    for _ in range(n):
        todo.put(None)
    threads = (max(1, cores() // workers), f"sweep: {cores()} cores / {workers} workers")
    quiet = _quiet_settings()
    procs: dict[int, Any] = {}
    current: dict[int, int] = {}  # worker pid -> index of the config it runs

    def start(slot: int) -> None:
        # not daemonic, so a run may start processes of its own; the finally below ends stragglers
        p = ctx.Process(target=_worker, args=(slot, os.getpid(), threads, gpus, quiet, str(results_dir), force,
                                              report_to, todo, events))
        p.start()
        procs[slot] = p

    for slot in range(n):
        start(slot)
    pending = {index for index, _ in jobs}
    try:
        while pending:
            try:
                kind, payload, pid = events.get(timeout=1.0)
            except queue.Empty:
                for slot, p in list(procs.items()):
                    if p.is_alive():
                        continue
                    del procs[slot]
                    index = current.pop(p.pid, None)
                    if index is not None:  # it died mid-run: fail that config, replace the worker
                        pending.discard(index)
                        yield "end", Outcome(index, "failed", error=f"worker process ended (exit code {p.exitcode})")
                        start(slot)  # it takes the stop signal the dead worker never read
                if not procs:  # every worker is gone (e.g. all failed to start): nothing will run the rest
                    for index in sorted(pending):
                        yield "end", Outcome(index, "failed", error="no worker process left to run it")
                    return
                continue
            if kind == "start":
                current[pid] = payload
                yield "start", payload
            else:
                current.pop(pid, None)
                pending.discard(payload.index)
                yield "end", payload
    finally:
        for p in procs.values():
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
