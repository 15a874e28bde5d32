"""Report plots as PNG bytes (matplotlib's Agg canvas; no display, no pyplot global state).

Per section: validation score against training FLOPs with seed bands, training loss,
Pareto frontiers of test quality against costs, and ablations where cells of one method
differ in a single hyper-parameter.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from peftbench.metrics import metric_label
from peftbench.report.aggregate import COSTS, Ablation, Cell, Section
from peftbench.stats.curves import band, curve_xy

PARETO_COSTS = ["params_trainable", "peak_memory_bytes", "train_flops", "latency.b1_ms", "forgetting"]  # lower is cheaper
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]


@dataclass(frozen=True)
class Plot:
    name: str  # file stem, unique within a report
    title: str
    caption: str
    png: bytes


def color(section: Section, cell: Cell) -> str:
    return COLORS[section.cells.index(cell) % len(COLORS)]


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _figure(title: str, width: float = 7.5, height: float = 4.6) -> tuple[Figure, Axes]:
    fig = Figure(figsize=(width, height), layout="constrained")
    ax = fig.add_subplot()
    ax.set_title(title, fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    return fig, ax


def _legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="best", framealpha=0.85)


CURVE_X = {  # stored per evaluation point: x key -> (axis label, log scale)
    "train_flops": ("training FLOPs", True),
    "seconds": ("training seconds (evaluation excluded)", True),
    "step": ("optimizer steps", False),
}


def _curve_plot(section: Section, metric: str, ylabel: str, title: str, target: float | None,
                x_key: str = "train_flops") -> bytes | None:
    xlabel, log = CURVE_X[x_key]
    fig, ax = _figure(title)
    drawn = False
    for cell in section.cells:
        xy = [curve_xy(c, metric, x_key) for c in cell.curves]
        xy = [(x, y) for x, y in xy if x.size]
        if not xy:
            continue
        col = color(section, cell)
        if all(x[-1] <= 0 for x, _ in xy):  # trains nothing: one score, drawn across
            if metric != "train_loss":
                ax.axhline(float(np.mean([y[-1] for _, y in xy])), color=col, ls="--", lw=1.2, label=f"{cell.label} (no training)")
                drawn = True
            continue
        xy = [(x[x > 0], y[x > 0]) for x, y in xy]
        for x, y in xy:  # every seed's measured points, faint
            ax.plot(x, y, "o", color=col, alpha=0.35, ms=3)
        b = band(xy, log=log)
        if b is None:
            continue
        seeds = f"{b.n} seeds" if b.n > 1 else "1 seed"
        ax.plot(b.x, b.mean, color=col, lw=1.8, label=f"{cell.label} ({seeds})")
        if b.low is not None and b.high is not None:
            ax.fill_between(b.x, b.low, b.high, color=col, alpha=0.18, lw=0)
        drawn = True
    if not drawn:
        return None
    if target is not None:
        ax.axhline(target, color="#444", ls=":", lw=1, label=f"{section.target_fraction:.0%} of best ({target:.3f})")
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel + (" (log scale)" if log else ""))
    ax.set_ylabel(ylabel)
    _legend(ax)
    return _png(fig)


def validation_curves(section: Section, x_key: str = "train_flops") -> bytes | None:
    m = metric_label(section.select_metric)
    against = {"train_flops": "training compute", "seconds": "training time", "step": "optimizer steps"}[x_key]
    return _curve_plot(section, section.select_metric, f"validation {m}",
                       f"Validation {m} vs {against} — mean and 95% CI over seeds\n{section.title}", section.target, x_key)


def loss_curves(section: Section) -> bytes | None:
    return _curve_plot(section, "train_loss", "training loss (mean since the previous evaluation)",
                       f"Training loss vs training compute — mean and 95% CI over seeds\n{section.title}", None)


def pareto_front(costs: Sequence[float], scores: Sequence[float], lower_is_better: bool = False) -> list[int]:
    """Indices of points no other point beats on both axes (cost lower, score better), by cost."""
    s = [-v for v in scores] if lower_is_better else list(scores)
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -s[i]))
    front, best = [], -np.inf
    for i in order:
        if s[i] > best:
            front.append(i)
            best = s[i]
    return front


def axis_values(xs: list[float], unit: str) -> tuple[list[float], str]:
    """Values and unit for an EngFormatter axis: ms become s, since SI prefixes on ms read "1 kms"."""
    return ([x / 1000 for x in xs], "s") if unit == "ms" else (xs, unit)


def pareto(section: Section, cost: str) -> bytes | None:
    metric = section.select_metric
    cells = [c for c in section.cells if cost in c.costs and metric in c.test]
    if len(cells) < 2:
        return None
    name, unit = COSTS[cost]
    xs, unit = axis_values([c.costs[cost].mean for c in cells], unit)
    ys = [c.test[metric].mean for c in cells]
    errs = [c.test[metric].half_width or 0.0 for c in cells]
    front = pareto_front(xs, ys, section.lower_is_better)
    fig, ax = _figure(f"Test {metric_label(metric)} vs {name} — Pareto frontier\n{section.title}")
    fx, fy = [xs[i] for i in front], [ys[i] for i in front]
    ax.step(fx, fy, where="post", color="#333", lw=1.2, alpha=0.7, label="Pareto frontier")
    for i, c in enumerate(cells):
        on = i in front
        ax.errorbar(xs[i], ys[i], yerr=errs[i], fmt="o", color=color(section, c), ms=9 if on else 6,
                    mec="black" if on else "none", mew=1.2, alpha=1.0 if on else 0.6, capsize=3)
    positive = [x for x in xs if x > 0]
    if positive and max(positive) / min(positive) > 20:
        if min(xs) <= 0:  # a method with no trainable parameters: linear near zero
            ax.set_xscale("symlog", linthresh=min(positive))
        else:
            ax.set_xscale("log")
        scale = " (log scale)"
    else:
        scale = ""
    ax.xaxis.set_major_formatter(EngFormatter(unit=unit if unit not in ("%", "") else ""))
    ax.set_xlabel(f"{name}{f' ({unit})' if unit and unit != '%' else ''}{scale} — lower is cheaper")
    ax.set_ylabel(f"test {metric_label(metric)} (mean ± 95% CI)")
    ax.margins(x=0.15, y=0.12)
    _annotate(ax, xs, ys, [c.label for c in cells])
    _legend(ax)
    return _png(fig)


# Offsets (points) tried in turn for a label, so labels of nearby cells do not overprint.
_OFFSETS = [(6, 4), (6, -11), (6, 15), (6, -22), (6, 26), (6, -33), (6, 37)]


def _annotate(ax: Axes, xs: Sequence[float], ys: Sequence[float], labels: Sequence[str]) -> None:
    """Label points, placing each label where it overlaps no label already placed (greedy)."""
    ax.autoscale_view()
    pts = ax.transData.transform(np.column_stack([xs, ys]))  # pixels; 1 point is dpi/72 pixels
    px = ax.figure.dpi / 72
    placed: list[tuple[float, float, float, float]] = []
    for i in sorted(range(len(labels)), key=lambda i: -pts[i][1]):
        w, h = 5.0 * len(labels[i]) * px, 9.0 * px  # ~8-point text
        for dx, dy in _OFFSETS:
            x0, y0 = pts[i][0] + dx * px, pts[i][1] + dy * px
            box = (x0, y0, x0 + w, y0 + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(labels[i], (xs[i], ys[i]), textcoords="offset points", xytext=(dx, dy), fontsize=8,
                    arrowprops={"arrowstyle": "-", "color": "#999", "lw": 0.6} if abs(dy) > 10 else None)


def ablation_plot(section: Section, ab: Ablation) -> bytes:
    metric = section.select_metric
    ys = [c.test[metric].mean if metric in c.test else np.nan for c in ab.cells]
    errs = [(c.test[metric].half_width or 0.0) if metric in c.test else 0.0 for c in ab.cells]
    fig, ax = _figure(f"{ab.method}: test {metric_label(metric)} by {ab.param} (other settings fixed)\n{section.title}", 6.5, 4.2)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ab.values)
    if numeric:
        xs = [float(v) for v in ab.values]
        ax.errorbar(xs, ys, yerr=errs, fmt="o-", color=COLORS[0], capsize=4, lw=1.6)
        if min(xs) > 0 and max(xs) / min(xs) >= 4:
            ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [f"{v:g}" for v in xs])
    else:
        names = ["+".join(map(str, v)) if isinstance(v, list) else str(v) for v in ab.values]
        pos = np.arange(len(names))
        ax.bar(pos, ys, yerr=errs, color=COLORS[0], alpha=0.8, capsize=4)
        ax.set_xticks(pos, names, rotation=20, ha="right", fontsize=8)
        lo = min(y - e for y, e in zip(ys, errs))
        ax.set_ylim(bottom=max(0.0, lo - 0.05))
    ax.set_xlabel(f"{ab.method}.{ab.param}")
    ax.set_ylabel(f"test {metric_label(metric)} (mean ± 95% CI)")
    return _png(fig)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text.lower()).strip("-")[:60]


def section_plots(section: Section, index: int = 0) -> list[Plot]:
    """Every plot a section supports, in reading order."""
    base = f"s{index + 1}"
    out: list[Plot] = []
    if (png := validation_curves(section)) is not None:
        out.append(Plot(f"{base}-validation-curves", "Validation score vs training FLOPs",
                        "Mean over seeds with a 95% t-interval band; dots are each seed's evaluations.", png))
    for x_key, name in (("seconds", "training seconds"), ("step", "optimizer steps")):
        if (png := validation_curves(section, x_key)) is not None:
            out.append(Plot(f"{base}-validation-vs-{x_key}", f"Validation score vs {name}",
                            "The same curves against wall time and steps: methods differ in cost per step.", png))
    if (png := loss_curves(section)) is not None:
        out.append(Plot(f"{base}-training-loss", "Training loss vs training FLOPs",
                        "Mean training loss between evaluations, over seeds.", png))
    from peftbench.report.budget_plot import by_budget_plot  # it imports this module

    if (png := by_budget_plot(section)) is not None:
        out.append(Plot(f"{base}-winner-by-budget", "Winner by budget (decided on validation curves)",
                        "Each cell's best validation score so far; shaded: the leader's 95% CI over seeds (one seed: "
                        "± 0.02); X: crossovers, where the leader changes; grey lines: the table's budgets.", png))
    for cost in PARETO_COSTS:
        if (png := pareto(section, cost)) is not None:
            out.append(Plot(f"{base}-pareto-{_slug(cost)}", f"Quality vs {COSTS[cost][0]}",
                            "Outlined points are on the Pareto frontier (no other cell is both cheaper and better).", png))
    for i, ab in enumerate(section.ablations):
        out.append(Plot(f"{base}-ablation{i + 1}-{_slug(ab.method)}-{_slug(ab.param)}", f"Ablation: {ab.method} {ab.param}",
                        f"Cells of {ab.method} that differ only in {ab.param}.", ablation_plot(section, ab)))
    return out
