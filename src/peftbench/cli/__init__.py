"""The peftbench command line. Thin: it builds a RunConfig and calls the runner.

Options of run, compare and sweep are declared once in cli/options.py; each command group
lives in its own module, and this package puts them on one app, in the order --help lists them.
"""

from __future__ import annotations

import os
import warnings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TQDM_DISABLE", "1")  # libraries' own bars (GGUF dequantizing); ours are rich

from peftbench.cli import cache, listing, predict_export, report, results, run, sweep  # noqa: E402
from peftbench.cli.common import app  # noqa: E402

app.command("run")(run.run_cmd)
app.command("compare")(run.compare_cmd)
app.command("methods")(listing.methods_cmd)
app.command("export")(predict_export.export_cmd)
app.command("sweep")(sweep.sweep_cmd)
app.command("report")(report.report_cmd)
app.command("predict")(predict_export.predict_cmd)
app.command("tasks")(listing.tasks_cmd)
app.add_typer(results.results_app, name="results")
app.add_typer(cache.cache_app, name="cache")

__all__ = ["app", "main"]


def main() -> None:
    import transformers

    transformers.logging.set_verbosity_error()  # load reports are noise here; errors still show
    # peft 0.21 calls a transformers 5 API deprecated for v6; users can do nothing about it.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    transformers.utils.logging.disable_progress_bar()
    from peftbench.measure import phases

    try:
        app()
    finally:  # benchmarks/compare_cost.py asks for where the time went (PEFTBENCH_PHASES)
        phases.dump_if_asked()
