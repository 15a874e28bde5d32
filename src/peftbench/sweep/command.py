"""`peftbench sweep FILE`: expand, skip what is done, run the rest, summarize.

Resumable by config hash: a config with a done run in the store is skipped, so after a
kill -9 the same command finishes the sweep and every config ends with exactly one done run
(the killed run's row stays, marked interrupted).
"""

from __future__ import annotations

import json
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from peftbench.errors import UserError
from peftbench.sweep.local import Outcome, cores, run_inline, run_workers
from peftbench.sweep.spec import Sweep, expand

BACKENDS = ("local", "ray")


@dataclass
class SweepSummary:
    name: str
    total: int  # configs after deduplication
    duplicates: int  # dropped: same config hash as an earlier entry
    already_done: int  # skipped because the store had them done before this sweep started
    outcomes: list[Outcome] = field(default_factory=list)  # one per config that was run (or tried)
    seconds: float = 0.0

    @property
    def done(self) -> int:
        return sum(o.status in ("done", "skipped") for o in self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]


def _done_runs(sweep: Sweep, results_dir: Path) -> dict[int, str]:
    """Index -> run id of configs the store already has done (opening it marks dead runs interrupted)."""
    from peftbench.store import Store

    if not (results_dir / "results.sqlite").exists():
        return {}
    with closing(Store(results_dir)) as store:
        found = {i: store.find_done(r.config_hash) for i, r in enumerate(sweep.runs)}
    return {i: row.run_id for i, row in found.items() if row}


def check_backend(backend: str, workers: int, address: str | None) -> None:
    """Refuse a bad backend, worker count or address (and a missing Ray) before anything runs."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend '{backend}'; use one of: {', '.join(BACKENDS)}")
    if workers < 1:
        raise UserError(f"--workers must be at least 1 (got {workers})")
    if address and backend != "ray":
        raise UserError("--address is a Ray cluster address; use it with --backend ray")
    if backend == "ray":
        from peftbench.sweep.ray_backend import require_ray

        require_ray()


def _line(o: Outcome, seed: str = "") -> str:
    if o.status == "failed":
        return f"failed: {o.error}"
    if o.status == "skipped":
        return f"skipped (already done as {o.run_id})"
    metric = f" {o.metric[0]} {o.metric[1]:.4f}" if o.metric else ""
    flops = f", {o.flops:.3g} FLOPs" if o.flops else ""
    node = f" on {o.node}" if o.node else ""
    return f"done{seed}{metric}{flops}{node} ({o.seconds:.1f} s, {o.run_id})"


def preflight(runs: list[Any], log: Callable[[str], None]) -> None:
    """Check every distinct model x task x method of the sweep before anything trains (runner.check);
    refuse the unfit ones together, one line each."""
    from peftbench.runner import check

    seen: dict[str, str | None] = {}
    for r in runs:
        c = r.config.canonical()
        key = json.dumps([c["model"], c["task"], c["method"], c["train"].get("packing")], sort_keys=True)
        if key not in seen:
            try:
                check(r.config)
                seen[key] = None
            except UserError as err:
                seen[key] = f"{r.label}: it cannot run here: {err}"
    bad = [line for line in seen.values() if line]
    for line in bad:
        log(line)
    if bad:
        raise UserError(f"{len(bad)} of the sweep's configs cannot run on their task and model (listed above); "
                        "fix or drop them in the sweep file")


def run_sweep(
    path: Path, results_dir: Path, workers: int = 1, backend: str = "local", address: str | None = None,
    force: bool = False, log: Callable[[str], None] = print, report_to: list[str] | None = None,
    trust_remote_code: bool = False, keep_weights: str = "all", shared_inputs: bool = False,
) -> SweepSummary:
    """Run every config of a sweep file not yet done; returns what became of each.

    workers == 1 runs in this process; more runs that many worker processes (local) or caps
    a local Ray's CPUs (ray). `address` joins an existing Ray cluster. `force` re-runs done configs.
    `report_to` mirrors each run to trackers (tensorboard, mlflow, wandb), as `run --report-to` does.
    `trust_remote_code` (from the command line only) lets every run's model run its repository's code.
    Ray only: `keep_weights` "adapters" leaves full fine-tuning's weights on the workers; `shared_inputs`
    says the configs' local paths exist on every node (else they are shipped, sweep/ship.py).
    """
    from peftbench.track import check_trackers

    check_backend(backend, workers, address)
    if keep_weights not in ("all", "adapters"):
        raise UserError(f"--keep-weights {keep_weights!r}: use all (full fine-tuning weights too) or adapters")
    if backend != "ray" and (keep_weights != "all" or shared_inputs):
        raise UserError("--keep-weights and --shared-inputs are for Ray workers; use them with --backend ray")
    check_trackers(report_to or [])
    t0 = time.perf_counter()
    sweep = expand(path, trust_remote_code)
    results_dir = Path(results_dir)
    done = {} if force else _done_runs(sweep, results_dir)
    total = len(sweep.runs)
    summary = SweepSummary(sweep.name, total, sweep.duplicates, len(done))
    dropped = f", {sweep.duplicates} duplicate configs dropped" if sweep.duplicates else ""
    where = f"{workers} worker{'s' * (workers > 1)}" if backend == "local" else f"Ray {address or '(local)'}"
    log(f"sweep {sweep.name}: {total} runs ({len(done)} done, {total - len(done)} to run){dropped}; {where}")
    width = len(str(total))

    def tag(i: int) -> str:
        return f"[{i + 1:>{width}}/{total}] {sweep.runs[i].label}"

    for i, run_id in done.items():
        log(f"{tag(i)}: skipped (already done as {run_id})")
    # The whole config, checkpoint_every too (canonical() leaves it out: it changes no result).
    jobs = [(i, r.config.model_dump(mode="json")) for i, r in enumerate(sweep.runs) if i not in done]
    preflight([sweep.runs[i] for i, _ in jobs], log)
    if jobs:
        from peftbench.sweep.progress import SweepProgress  # imports torch: not at module level (local.py's workers)

        progress = SweepProgress({i: sweep.runs[i].config for i, _ in jobs}, workers)
        if backend == "ray":
            from peftbench.runner import stored_config
            from peftbench.sweep.ray_backend import run_ray

            ids = {i: (sweep.runs[i].config_hash, stored_config(sweep.runs[i].config)) for i, _ in jobs}
            events = run_ray(jobs, results_dir, force, address, workers, cores(), report_to, ids, keep_weights,
                             shared_inputs)
        elif workers > 1:
            events = run_workers(jobs, results_dir, force, workers, gpus(), report_to)
        else:
            events = run_inline(jobs, results_dir, force, report_to)
        for kind, payload in events:
            if kind == "slots":  # the Ray cluster's: tasks it runs at once
                progress.slots = payload
            elif kind == "start":
                log(f"{tag(payload)}: started")
            else:
                summary.outcomes.append(payload)
                label = sweep.runs[payload.index].label
                seed = "" if "seed=" in label else f" seed={sweep.runs[payload.index].config.train.seed}"
                log(f"{tag(payload.index)}: {_line(payload, seed)}")
                log(progress.finished(payload))
    summary.seconds = time.perf_counter() - t0
    failed = summary.failed
    log(f"sweep {sweep.name}: {summary.done + len(done)} of {total} done, {len(failed)} failed "
        f"({summary.seconds:.1f} s); results in {results_dir}")
    for o in failed:
        log(f"  failed {tag(o.index)}: {o.error}")
    return summary


def gpus() -> int:
    """GPUs to spread local workers over (0: none, or torch without CUDA)."""
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0
