"""`peftbench sweep FILE`: the command line of peftbench.sweep."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from peftbench.cli.common import friendly, out
from peftbench.cli.options import SWEEP, with_options

Opt = typer.Option


@friendly
@with_options(SWEEP)
def sweep_cmd(
    file: Path = typer.Argument(..., help="Sweep file: base: (a run config) and axes: (lists whose product is run)."),
    workers: int = Opt(1, "--workers", "-w", help="Runs at once on this machine (one GPU each where GPUs exist)."),
    backend: str = Opt("local", "--backend", help="local (worker processes) or ray (one task per run; a local Ray unless --address)."),
    address: Optional[str] = Opt(None, "--address", help="Ray cluster address (with --backend ray)."),
    keep_weights: str = Opt("all", "--keep-weights", help="Ray: all (full fine-tuning weights travel back too) "
                            "or adapters (they stay on the worker; the run records it)."),
    shared_inputs: bool = Opt(False, "--shared-inputs", help="Ray: the configs' local data and model paths exist on "
                              "every node (shared storage); do not ship them to the workers."),
    opts: dict[str, Any] = {},
) -> None:
    """Run every configuration of a sweep file, resumably (done configs are skipped by config hash)."""
    from peftbench.sweep import run_sweep
    from peftbench.track import parse_kinds

    summary = run_sweep(file, opts["results_dir"], workers=workers, backend=backend, address=address, force=opts["force"],
                        log=lambda line: out.print(line, highlight=False), report_to=parse_kinds(opts["report_to"]),
                        trust_remote_code=opts["trust_remote_code"], keep_weights=keep_weights,
                        shared_inputs=shared_inputs)
    if summary.failed:
        raise typer.Exit(1)
