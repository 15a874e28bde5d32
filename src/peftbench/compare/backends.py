"""Where a comparison's runs execute: this process (one by one), N local worker processes, or Ray.

The study hands over each phase's configs at once (every method's search runs at a rung, then every
method's seeds), so parallel workers stay busy; the sweep's backends run them (sweep/local.py,
sweep/ray_backend.py: Ray workers never touch the results store, the driver stores what they return),
and the study reads each finished run back from the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from peftbench.compare.study import Batch, Execute, sequential
from peftbench.errors import UserError
from peftbench.store import RunRow, Store

@contextmanager
def runner(execute: Execute, results_dir: Path, force: bool, workers: int = 1, backend: str = "local",
           address: str | None = None, report_to: list[str] | None = None,
           log: Callable[[str], None] = print) -> Iterator[Batch]:
    """A Batch for the study: `execute` in this process when one local worker, else the sweep's backends.
    Ray is joined once for the whole study (each phase would otherwise start a job and ship inputs anew)."""
    if backend == "local" and workers == 1:
        yield sequential(execute)
        return
    started = False
    if backend == "ray":
        from peftbench.sweep.local import cores
        from peftbench.sweep.ray_backend import connect, require_ray

        started = connect(address, workers, cores())
    try:
        yield _parallel(results_dir, force, workers, backend, address, report_to, log)
    finally:
        if started:
            require_ray().shutdown()


def _parallel(results_dir: Path, force: bool, workers: int, backend: str, address: str | None,
              report_to: list[str] | None, log: Callable[[str], None]) -> Batch:
    def batch(raws: list[dict[str, Any]]) -> Iterator[tuple[int, RunRow | BaseException]]:
        from peftbench.sweep.local import cores, run_workers

        jobs, found, identities = _pending(raws, results_dir, force)
        for k, row in found.items():  # a rerun's finished runs: read back, not trained again on a worker
            log(f"  {row.method} run {row.run_id} already done")
            yield k, row
        if not jobs:
            return
        if backend == "ray":
            from peftbench.sweep.ray_backend import run_ray

            events = run_ray(jobs, results_dir, force, address, workers, cores(), report_to, identities)
        else:
            from peftbench.sweep.command import gpus

            events = run_workers(jobs, results_dir, force, workers, gpus(), report_to)
        for kind, out in events:
            if kind != "end":
                continue
            if out.status == "failed" or not out.run_id:
                yield out.index, UserError(out.error or "the run failed")
                continue
            with closing(Store(results_dir)) as store:
                row = store.get(out.run_id)
            if out.node:
                log(f"  {row.method} run {row.run_id} ran on {out.node}")
            yield out.index, row

    return batch


Identity = tuple[str, dict[str, Any]]  # (config hash, stored config), as runner.run stores a run


def _pending(raws: list[dict[str, Any]], results_dir: Path, force: bool
             ) -> tuple[list[tuple[int, dict[str, Any]]], dict[int, RunRow], dict[int, Identity]]:
    """The configs still to run, the done runs the store already has for the others (none under force), as a
    sweep skips its done configs, and each config's identity: the hash of its normalized config, which
    runner.run stores it under, and which the Ray driver stores a returned run under."""
    from peftbench.config import parse_config
    from peftbench.runner import config_hash, normalize, stored_config

    parsed = {k: parse_config(raw) for k, raw in enumerate(raws)}
    jobs = [(k, cfg.model_dump(mode="json")) for k, cfg in parsed.items()]
    identities = {k: (config_hash(n), stored_config(n)) for k, cfg in parsed.items() for n in [normalize(cfg)[0]]}
    if force or not (results_dir / "results.sqlite").exists():
        return jobs, {}, identities
    with closing(Store(results_dir)) as store:
        found = {k: store.find_done(digest) for k, (digest, _) in identities.items()}
    done = {k: row for k, row in found.items() if row is not None}
    return [(k, c) for k, c in jobs if k not in done], done, identities
