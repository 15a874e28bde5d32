"""`peftbench results` and `peftbench results show RUN_ID`: stored runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from peftbench.cli.common import err, friendly, out
from peftbench.cli.options import results_dir_option
from peftbench.errors import UserError

Opt = typer.Option
results_app = typer.Typer(help="List and show stored runs.", invoke_without_command=True)


@results_app.callback()
@friendly
def results_list(
    ctx: typer.Context,
    results_dir: Path = results_dir_option(),
    json_out: bool = Opt(False, "--json", help="Print as JSON."),
    rebuild: bool = Opt(False, "--rebuild", help="Rebuild a damaged or lost index (results.sqlite) from the run "
                        "folders; the damaged file is kept aside."),
    watch: bool = Opt(False, "--watch", help="Refresh the table every few seconds until no run is running (Ctrl-C stops watching, not the runs)."),
    interval: float = Opt(5.0, "--interval", min=0.01, help="Seconds between refreshes with --watch."),
    watch_count: Optional[int] = Opt(None, "--watch-count", min=1, hidden=True),  # tests: stop after N tables
) -> None:
    """List stored runs (or: peftbench results show RUN_ID)."""
    if ctx.invoked_subcommand:
        return
    from peftbench.report.tables import runs_table, summary
    from peftbench.store import Store

    if rebuild:
        rebuilt_index(results_dir)
    if watch:
        from peftbench.cli.background import watch as watch_runs

        watch_runs(results_dir, out, interval, watch_count)
        return
    with Store.open_existing(results_dir) as store:
        rows = store.list()
    if json_out:
        print(json.dumps([summary(r) for r in rows], indent=2))
    else:
        out.print(runs_table(rows))


def rebuilt_index(results_dir: Path) -> None:
    from peftbench.store import Store

    if not Path(results_dir, "runs").is_dir():
        raise UserError(f"no run folders in '{results_dir}' to rebuild from; pass the results folder with --results-dir")
    done = Store.rebuild(results_dir)
    aside = f"; the old index is kept as {done.aside}" if done.aside else ""
    err.print(f"rebuilt the index of {results_dir}: {len(done.restored)} finished run(s) restored from their folders{aside}",
              markup=False, highlight=False, soft_wrap=True)
    for why in done.skipped:
        err.print(f"skipped unreadable run folder {why}", markup=False, highlight=False, soft_wrap=True)


@results_app.command("show")
@friendly
def results_show(
    run_id: str = typer.Argument(..., help="Run id or config hash (a unique prefix is enough)."),
    results_dir: Path = results_dir_option(),
    json_out: bool = Opt(False, "--json", help="Print as JSON."),
) -> None:
    """Show one stored run: config, metrics, costs and its validation curve."""
    from peftbench.store import Store

    with Store.open_existing(results_dir) as store:
        row = store.get(run_id)
        curve = store.curve(row.run_id)
    doc = {"run_id": row.run_id, "status": row.status, "config_hash": row.config_hash, "folder": str(row.folder),
           "config": row.config, "result": row.result, "error": row.error, "curve": curve}
    if json_out:
        print(json.dumps(doc, indent=2))
        return
    samples = row.run_result.samples if row.run_result else []
    out.print_json(json.dumps({**doc, "result": {k: v for k, v in (row.result or {}).items() if k != "samples"}}))
    if samples:
        from peftbench.report.tables import samples_table

        out.print(samples_table(samples))
