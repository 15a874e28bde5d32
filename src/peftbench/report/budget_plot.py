"""The winner-by-budget plot: each cell's score at every budget (as by_budget.py reads it), the
leader's band shaded, the crossovers (where the leader changes) and the table's budgets marked."""

from __future__ import annotations

import numpy as np

from peftbench.metrics import metric_label
from peftbench.report.by_budget import ONE_SEED_TOLERANCE, cell_series, fraction_text, standings
from peftbench.report.model import Section
from peftbench.report.plots import _figure, _legend, _png, color


def by_budget_plot(section: Section) -> bytes | None:
    bb = section.by_budget
    if bb is None:
        return None
    cells = {c.label: cell_series(c.curves, c.seeds, section.select_metric) for c in section.cells}
    xs = sorted({float(v) for s in cells.values() for x, _ in s.values() for v in x if v > 0})
    if not xs:
        return None
    tables = [standings(cells, x, bb.lower_is_better) for x in xs]
    fig, ax = _figure(f"Winner by budget: validation {metric_label(bb.metric)} (best so far, mean over seeds)\n{section.title}")
    for cell in section.cells:
        means = [next((s.score.mean for s in t if s.label == cell.label), np.nan) for t in tables]
        if not np.isfinite(means).any():
            continue
        out = cell.label in bb.excluded
        style = {"ls": "--", "alpha": 0.6} if out else {}
        label = f"{cell.label} (degenerate: never leads)" if out else cell.label
        ax.step(xs, means, where="post", color=color(section, cell), lw=1.6, label=label, **style)
    leaders = [next((s for s in t if s.label not in bb.excluded), None) for t in tables]
    ends = [*xs[1:], xs[-1] * 1.05]
    for (x0, x1, lead) in zip(xs, ends, leaders):  # the leader's band: its 95% CI (one seed: ± the tolerance)
        if lead is None:
            continue
        sc = lead.score
        low, high = (sc.low, sc.high) if sc.half_width is not None else (sc.mean - ONE_SEED_TOLERANCE, sc.mean + ONE_SEED_TOLERANCE)
        cell = next(c for c in section.cells if c.label == lead.label)
        ax.fill_between([x0, x1], low, high, color=color(section, cell), alpha=0.15, lw=0)
    for i, cross in enumerate(bb.crossovers):
        lead = leaders[xs.index(cross.flops)] if cross.flops in xs else None
        if lead is None:
            continue
        score = lead.score.mean
        ax.axvline(cross.flops, color="#555", ls=":", lw=0.9)
        ax.plot([cross.flops], [score], marker="X", ms=9, color="black", ls="none",
                label="crossover (leader changes)" if i == 0 else None)
        ax.annotate(f"→ {lead.label}", (cross.flops, score), textcoords="offset points", xytext=(4, 6), fontsize=8)
    for row in bb.rows:
        ax.axvline(row.flops, color="#bbb", lw=0.8, ls="-", zorder=0)
        ax.annotate(fraction_text(row.fraction), (row.flops, 1.0), xycoords=("data", "axes fraction"),
                    textcoords="offset points", xytext=(2, -10), fontsize=8, color="#666")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs (log scale); grey lines: the table's budgets")
    ax.set_ylabel(f"validation {metric_label(bb.metric)}")
    _legend(ax)
    return _png(fig)
