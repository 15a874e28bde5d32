"""Running a sweep's configs as Ray tasks: one task per config, one GPU each where GPUs exist.

Every task writes to the same results folder, so on a cluster of several machines that
folder must be on a filesystem they all share (and that supports SQLite's locking); paths in
the configs (models, data) must resolve on every node. Tasks run in the driver's working
directory when it exists there, so relative paths behave as they do locally.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

from peftbench.errors import UserError
from peftbench.sweep.local import Outcome, execute


def _task(index: int, config: dict[str, Any], results_dir: str, force: bool, cwd: str, threads: int,
          report_to: list[str] | None) -> Outcome:
    import torch

    from peftbench.train.threads import fix

    if os.path.isdir(cwd):
        os.chdir(cwd)
    torch.set_num_threads(threads)
    fix(threads, f"ray task: {threads} CPU")  # each run sets and records it (runner)
    return execute(index, config, results_dir, force, report_to)


def require_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("the ray backend needs Ray: pip install 'peftbench[ray]'") from None
    return ray


def run_ray(jobs: list[tuple[int, dict[str, Any]]], results_dir: Path, force: bool, address: str | None,
            workers: int, cores: int, report_to: list[str] | None = None) -> Iterator[tuple[str, Any]]:
    """Yields ("end", Outcome) as tasks finish, in the order they finish (ray.wait)."""
    ray = require_ray()
    started = not ray.is_initialized()  # a caller's own Ray session is left running
    if started:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers if workers > 1 else cores, include_dashboard=False, log_to_driver=False)
    try:
        gpu = ray.cluster_resources().get("GPU", 0) > 0
        # A task holds one GPU where there are GPUs, else one CPU (torch then uses one thread).
        remote = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=1)(_task)
        cwd = os.getcwd()
        waiting: dict[Any, int] = {}
        for index, config in jobs:
            waiting[remote.remote(index, config, str(results_dir.resolve()), force, cwd, 1, report_to)] = index
        while waiting:
            ready, _ = ray.wait(list(waiting), num_returns=1)
            index = waiting.pop(ready[0])
            try:
                yield "end", ray.get(ready[0])
            except Exception as e:  # noqa: BLE001 - the task's worker died (node lost, out of memory)
                yield "end", Outcome(index, "failed", error=" ".join(f"{type(e).__name__}: {e}".split())[:300])
    finally:
        if started:
            ray.shutdown()
