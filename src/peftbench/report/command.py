"""`peftbench report`: rich tables on the terminal, and whichever files were asked for."""

from __future__ import annotations

import io
from pathlib import Path

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table

from peftbench.errors import UserError
from peftbench.metrics import metric_label
from peftbench.report import budget_view, constraints
from peftbench.report.aggregate import Report, Section, aggregate
from peftbench.report.constraints import Limit
from peftbench.report.formats import LR_HEADER, RANK_LEGEND, baseline_rows, columns, cost_columns, lr_rows, to_csv, to_json, to_markdown


TERMINAL_PARTS = {  # three narrow tables read better in a terminal than one wide one
    "quality": "test quality",
    "training": "learning curves and training cost (means over seeds)",
    "footprint": "size, memory and speed (means over seeds)",
}
TRAINING_COSTS = ("train FLOPs", "train time", "train tokens/s", "MFU")


def section_table(section: Section, part: str = "quality", width: int | None = None) -> Table:
    """One section's cells: rank or ≈ best, test scores (mean ± 95% CI) and the bootstrap against
    the best (part "quality"); AULC, FLOPs to target and training cost ("training"); trainable
    parameters, memory, adapter size and latency ("footprint").

    Compact for terminals: costs without their intervals (the files have them), and a
    column every cell shares (the budget, usually) moves into the title.
    """
    quality = columns(section, compact=True)
    costs = cost_columns(section, ci=False)
    curves = {"AULC", f"FLOPs to {section.target_fraction:.0%} of best"}
    if part == "quality":
        cols = [c for c in quality if c[0] not in curves]
    elif part == "training":
        cols = quality[:2] + [(n.removesuffix(" of best"), g) for n, g in quality if n in curves]
        cols += [c for c in costs if c[0] in TRAINING_COSTS]
    elif part == "footprint":
        cols = [c for c in costs if c[0] not in TRAINING_COSTS]
    else:
        raise ValueError(f"part must be one of {', '.join(TERMINAL_PARTS)}")
    shared = {name: next(iter(texts)) for name, get in cols if name in ("budget", "lr", "seeds")
              and len(texts := {get(c)[0] for c in section.cells}) == 1}
    cols = [(name, get) for name, get in cols if name not in shared]
    title = f"{section.title}: {TERMINAL_PARTS[part]}"
    if shared:
        said = {"budget": "{v}", "lr": "lr {v}", "seeds": "{v} seeds each"}
        title += " (" + ", ".join(said[k].format(v=v) for k, v in shared.items()).replace("1 seeds", "1 seed") + ")"
    caption = None if part != "quality" else (f"ranked on test {metric_label(section.select_metric)}; {section.bootstrap[:1].lower()}"
                                               f"{section.bootstrap[1:]}; {RANK_LEGEND}")
    table = Table(title=title, caption=caption, caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name, get in cols:
        # numbers keep their line, names fold instead (at most 15 wide)
        widest = max(len(get(c)[0]) for c in section.cells)
        table.add_column(name, justify="left" if name == "method" else "right", overflow="fold",
                         min_width=None if name == "method" else min(widest, 15))
    for c in section.cells:
        style = "bold green" if c.rank == 1 else "green" if c.near_best else None
        table.add_row(*(get(c)[0] for _, get in cols), style=style)
    for row in baseline_rows(section, cols, digits=3) if part == "quality" else []:
        table.add_row(*(t for t, _ in row), style="dim")
    if width is not None and _too_wide(table, width):  # measured with its rows: they set the widths
        for col in table.columns:  # rich crops (not folds) the last columns when minimum widths leave no room
            col.min_width = None
    return table


def _too_wide(table: Table, width: int) -> bool:
    """Whether rich renders the table wider than `width` (it then crops its right edge)."""
    probe = Console(width=width, file=io.StringIO(), markup=False)
    probe.print(table, crop=False)
    return any(cell_len(line) > width for line in probe.file.getvalue().splitlines())


def lr_table(report: Report) -> Table:
    rows = lr_rows(report.lr_searches)
    sections = {r[0] for r in rows}
    one = len(sections) == 1  # then the section goes in the title
    title = "learning-rate search (validation only)" + (f": {next(iter(sections))}" if one else "")
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for name in LR_HEADER[1:] if one else LR_HEADER:
        table.add_column(name, justify="right" if name in ("lr", "seeds") else "left")
    for row in rows:
        table.add_row(*(row[1:] if one else row), style="bold" if row[-1] else None)
    return table


def _check(results_dir: Path) -> None:
    if not results_dir.exists():
        raise UserError(f"results folder '{results_dir}' does not exist; run: peftbench compare (or pass --results-dir)")
    from peftbench.store import Store

    with Store.open_existing(results_dir) as store:
        rows = store.list()
    if not any(r.done for r in rows):
        raise UserError(f"no finished runs in '{results_dir}' ({len(rows)} unfinished); "
                        "let a run finish (peftbench compare) before reporting")


def _write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")


def print_report(rep: Report, console: Console) -> None:
    for s in rep.sections:
        for part in TERMINAL_PARTS:
            console.print(section_table(s, part, console.width))
        for note in s.notes:
            console.print(f"note: {note}", style="yellow", highlight=False)
        budget_view.print_section(s, console)  # winner by budget, then flag lines
    if rep.lr_searches:
        console.print(lr_table(rep))


def report(
    results_dir: Path, html: Path | None = None, csv: Path | None = None, json_path: Path | None = None,
    markdown: Path | None = None, plots_dir: Path | None = None, console: Console | None = None,
    resamples: int = 1000, target_fraction: float = 0.9, limits: list[Limit] | None = None,
) -> Report:
    """Aggregate the finished runs in results_dir, print the tables, write the requested files.
    limits: the verdict under those constraints goes under the tables and atop the HTML; none fits: UserError."""
    results_dir = Path(results_dir)
    _check(results_dir)
    rep = aggregate(results_dir, resamples=resamples, target_fraction=target_fraction)
    written: list[Path] = []
    if console is not None:
        print_report(rep, console)
    found = constraints.show(rep, limits or [], console) if console is not None else constraints.verdicts(rep, limits or [])
    for path, make in ((csv, to_csv), (json_path, to_json), (markdown, to_markdown)):
        if path is not None:
            _write(path, make(rep))
            written.append(path)
    if html is not None or plots_dir is not None:
        from peftbench.report.html import render
        from peftbench.report.plots import section_plots

        plots = [section_plots(s, i) for i, s in enumerate(rep.sections)]  # drawn once for both
        if html is not None:
            _write(html, render(rep, plots, verdicts=[v.line for v in found]))
            written.append(html)
        if plots_dir is not None:
            for plot in (p for ps in plots for p in ps):
                _write(plots_dir / f"{plot.name}.png", plot.png)
            written.append(plots_dir)
    if console is not None and written:
        console.print("wrote " + ", ".join(str(p) for p in written), highlight=False)
    constraints.refuse_unfit(found)
    return rep
