"""`peftbench report`: the command line of peftbench.report."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from peftbench.cli.common import friendly, out
from peftbench.cli.options import REPORT, results_dir_option, with_options

Opt = typer.Option


@friendly
@with_options(REPORT)
def report_cmd(
    results_dir: Path = results_dir_option(),
    html: Optional[Path] = Opt(None, "--html", help="Write one self-contained HTML report (plots, sortable tables, samples, configs)."),
    csv: Optional[Path] = Opt(None, "--csv", help="Write the comparison as CSV (one row per method cell)."),
    json_path: Optional[Path] = Opt(None, "--json", help="Write the whole aggregate as JSON."),
    markdown: Optional[Path] = Opt(None, "--markdown", "--md", help="Write the tables as Markdown."),
    plots: Optional[Path] = Opt(None, "--plots", help="Write the PNG plots into this folder."),
    resamples: int = Opt(1000, "--resamples", min=100, help="Paired-bootstrap resamples over test examples."),
    fraction: float = Opt(0.9, "--fraction", min=0.01, max=1.0, help="Report the training FLOPs to reach this fraction of the best validation score."),
    opts: dict[str, Any] = {},
) -> None:
    """Aggregate stored runs: mean ± 95% CI over seeds, paired bootstrap against the best, curves, Pareto plots."""
    from peftbench.report.command import report
    from peftbench.report.constraints import parse_limits

    report(results_dir, html=html, csv=csv, json_path=json_path, markdown=markdown, plots_dir=plots,
           console=out, resamples=resamples, target_fraction=fraction,
           limits=parse_limits(opts))
