"""`peftbench predict` and `peftbench export`: use a stored run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from peftbench.cli.common import friendly, out
from peftbench.cli.options import results_dir_option
from peftbench.errors import UserError

Opt = typer.Option


@friendly
def export_cmd(
    run_id: str = typer.Argument(..., help="Run id or config hash (a unique prefix is enough)."),
    out_dir: Path = typer.Argument(..., help="New folder to write."),
    merge: bool = Opt(False, help="Write a plain Hugging Face model with the adapter merged in (checked within 1e-4)."),
    results_dir: Path = results_dir_option(),
    json_out: bool = Opt(False, "--json", help="Print what was written as JSON."),
) -> None:
    """Write a stored run's adapter folder, or with --merge a merged plain model."""
    from peftbench.export import export
    from peftbench.store import Store

    with Store.open_existing(results_dir) as store:
        row = store.get(run_id)
    info = export(row, out_dir, merge)
    if json_out:
        print(json.dumps({**info, "folder": str(out_dir)}, indent=2))
    else:
        what = "merged model" if merge else "adapter"
        extra = f" (merged outputs within {info['max_abs_diff']:.1e} of the adapter's)" if merge else ""
        out.print(f"wrote the {what} of run {row.run_id} to {out_dir}{extra}", highlight=False)


@friendly
def predict_cmd(
    run_id: str = typer.Argument(..., help="Run id or config hash (a unique prefix is enough)."),
    texts: Optional[list[str]] = typer.Argument(None, help="Inputs (image paths for image runs)."),
    file: Optional[Path] = Opt(None, "--file", help="CSV/JSON/JSONL/Parquet with the run's input columns."),
    out_file: Optional[Path] = Opt(None, "--out", help="Also write inputs + predictions as JSONL."),
    results_dir: Path = results_dir_option(),
) -> None:
    """Predict with a stored run: label names, generated text, or the chosen answer."""
    from peftbench.predict import predict_command

    predict_command(run_id, texts or [], file, out_file, results_dir, out)
