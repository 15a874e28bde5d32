"""The report as CSV (one row per cell, numbers), JSON (everything) and Markdown (tables).

The column definitions here are shared by the terminal, Markdown and HTML tables: each
column gives a cell's display text and a sort value.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any

from peftbench.metrics import metric_label
from peftbench.report.flags import flag_words
from peftbench.report.aggregate import COSTS, Cell, LrSearch, Report, Section, budget_text
from peftbench.stats import Interval

Sortable = float | str | None
Column = tuple[str, Callable[[Cell], tuple[str, Sortable]]]

# The costs a summary table shows (CSV and JSON carry all of COSTS).
TABLE_COSTS = ["params_trainable", "train_flops", "setup_flops", "train_seconds", "tokens_per_second", "mfu", "peak_memory_bytes",
               "adapter_bytes", "latency.b1_ms", "latency.throughput", "forgetting"]


def num(x: float, unit: str = "") -> str:
    """3 significant digits with an SI prefix: 1.23 G, 45.6 ms."""
    if unit == "%":
        return f"{x:.3g}%"
    if unit == "share":  # a fraction (MFU), read as a percentage
        return f"{100 * x:.3g}%"
    if unit in ("s", "ms", "ex/s", "tok/s"):  # read in their own unit: 1,190 ex/s, not 1.19 kex/s
        return f"{x:,.0f} {unit}" if abs(x) >= 1000 else f"{x:.3g} {unit}"
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {prefix}{unit}".rstrip()
    text = f"{x:.3g}" if x != int(x) or abs(x) < 1 else f"{int(x)}"
    return f"{text} {unit}".rstrip()


def iv_text(iv: Interval | None, digits: int = 4, sep: str = " ± ") -> str:
    if iv is None:
        return "-"
    return f"{iv.mean:.{digits}f}" if iv.half_width is None else f"{iv.mean:.{digits}f}{sep}{iv.half_width:.{digits}f}"


def cost_text(iv: Interval | None, unit: str, ci: bool = True) -> str:
    if iv is None:
        return "-"
    if not ci or iv.half_width is None or iv.half_width == 0:
        return num(iv.mean, unit)
    return f"{num(iv.mean, unit)} ± {num(iv.half_width, unit)}"


def lr_text(lr: float | None) -> str:
    return "-" if lr is None else f"{lr:.3g}"


def delta_text(c: Cell, digits: int = 4) -> str:
    r = c.vs_best
    return "-" if r is None else f"{r.delta:+.{digits}f} [{r.low:+.{digits}f}, {r.high:+.{digits}f}]"


def _mean(iv: Interval | None) -> float | None:
    return None if iv is None else iv.mean


def _ident() -> list[Column]:
    return [
        ("rank", lambda c: (c.mark, c.rank if c.rank is not None else 1.5)),  # ≈ best sorts right after the best
        ("method", lambda c: (c.label, c.label)),
    ]


def p_text(c: Cell) -> str:
    r = c.vs_best
    if r is None:
        return "-"
    return f"<{2 / r.resamples:.1g}" if r.p_value == 0 else f"{r.p_value:.3f}"  # resolution of the resamples


def columns(section: Section, compact: bool = False) -> list[Column]:
    """The quality table's columns: settings, test scores over seeds, the bootstrap against the best, curves.

    compact (terminals): intervals as 0.812±0.011 and 3 decimals for differences and AULC.
    """
    sep, d = ("±", 3) if compact else (" ± ", 4)
    cols = _ident() + [
        ("lr", lambda c: (lr_text(c.lr), c.lr)),
        ("budget", lambda c: (budget_text(c.budget), c.budget.get("value"))),
        ("seeds", lambda c: (str(len(c.runs)), len(c.runs))),
    ]
    for m in section.metrics:
        if any(m in c.test for c in section.cells):
            cols.append((f"test {metric_label(m)}", lambda c, m=m: (iv_text(c.test.get(m), d, sep), _mean(c.test.get(m)))))
    cols.append(("Δ vs best [95% CI]", lambda c: (delta_text(c, d), c.vs_best.delta if c.vs_best else None)))
    cols.append(("p", lambda c: (p_text(c), c.vs_best.p_value if c.vs_best else None)))
    cols.append(("AULC", lambda c: (iv_text(c.aulc, d, sep), _mean(c.aulc))))
    pct = f"{section.target_fraction:.0%}"
    cols.append((f"FLOPs to {pct} of best", lambda c: (_reach_text(c, compact), _mean(c.flops_to_target))))
    if any(c.flags for c in section.cells):  # degenerate / unconverged (report/flags.py); reasons under the table
        cols.append(("flags", lambda c: (flag_words(c, compact) or "-", None)))
    return cols


def cost_columns(section: Section, ci: bool = True) -> list[Column]:
    """The cost table's columns: measured costs, mean (± 95% CI over seeds unless ci is False)."""
    cols = _ident()
    for key in TABLE_COSTS:
        if any(key in c.costs for c in section.cells):
            name, unit = COSTS[key]
            if key == "latency.b1_ms":  # with its spread
                get = lambda c: (latency_text(c, ci), _mean(c.costs.get("latency.b1_ms")))  # noqa: E731
            else:
                get = lambda c, key=key, unit=unit: (cost_text(c.costs.get(key), unit, ci), _mean(c.costs.get(key)))  # noqa: E731
            cols.append((name, get))
    return cols


def latency_text(c: Cell, ci: bool = True) -> str:
    """Batch-1 latency: the median (mean over seeds), with the timed repeats' interquartile range
    (first and third quartiles, means over seeds), * where it was timed on a busy machine and † where it
    stopped on its time budget before its interval was met."""
    text = cost_text(c.costs.get("latency.b1_ms"), "ms", ci)
    q1, q3 = c.costs.get("latency.b1_q1_ms"), c.costs.get("latency.b1_q3_ms")
    if q1 is not None and q3 is not None:
        text += f" (IQR {num(q1.mean)}–{num(q3.mean, 'ms')})"
    lats = [r.run_result.costs.latency for r in c.runs if r.run_result and r.run_result.costs.latency]
    return text + " *" * any(lat.busy for lat in lats) + " †" * any(lat.timed_short for lat in lats)


BASELINE_NAMES = {"majority": "(majority class)", "chance": "(uniform chance)"}
RANK_LEGEND = ("equal scores share a rank; ≈ best: the paired bootstrap cannot tell it from the best, "
               "whatever its rank; trivial baselines score always predicting the majority training class, "
               "and uniform guessing (expected); their rows are in parentheses; - : degenerate, never ranked (see its flag)")


def baseline_rows(section: Section, cols: list[Column], digits: int = 4) -> list[list[tuple[str, Any]]]:
    """The trivial baselines as rows of a quality table: a name and their test scores, the rest blank."""
    rows = []
    for name, scores in section.baselines.items():
        row = []
        for col, _ in cols:
            metric = next((m for m in scores if col == f"test {metric_label(m)}"), None)
            text = BASELINE_NAMES.get(name, name) if col == "method" else f"{scores[metric]:.{digits}f}" if metric else ""
            row.append((text, scores[metric] if metric else None))
        rows.append(row)
    return rows


def _reach_text(c: Cell, compact: bool = False) -> str:
    if c.flops_to_target is None:
        return "never"
    text = num(c.flops_to_target.mean, "FLOP")
    seeds = f"({c.reached}/{len(c.runs)})" if compact else f"({c.reached}/{len(c.runs)} seeds)"
    return text if c.reached == len(c.runs) else f"{text} {seeds}"


def lr_rows(searches: list[LrSearch]) -> list[list[str]]:
    """One row per (search, lr): section, method, budget, lr, validation score, seeds, chosen."""
    rows = []
    for s in searches:
        for p in s.points:
            chosen = f"✓ ({s.chosen_by})" if p.lr == s.chosen_lr else ""
            rows.append([s.section, s.label, budget_text(s.budget), lr_text(p.lr),
                         f"{metric_label(s.select_metric)} {iv_text(p.validation)}", str(len(p.seeds)), chosen])
    return rows


LR_HEADER = ["section", "method", "budget", "lr", "validation score", "seeds", "chosen"]


# -- files -----------------------------------------------------------------------------
def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2, default=str)


def csv_rows(report: Report) -> list[dict[str, Any]]:
    rows = []
    for s in report.sections:
        for c in s.cells:
            row: dict[str, Any] = {
                "section": s.title, "task": s.task, "data": s.data, "model": s.model, "method": c.method, "label": c.label,
                "params": json.dumps(c.params, sort_keys=True), "lr": c.lr, "budget_kind": c.budget.get("kind"),
                "budget_value": c.budget.get("value"), "n_seeds": len(c.runs), "seeds": " ".join(str(x) for x in c.seeds),
                "run_ids": " ".join(r.run_id for r in c.runs), "rank": c.rank, "near_best": c.near_best, "mark": c.mark,
                "select_metric": s.select_metric, "flags": "; ".join(str(f) for f in c.flags),
            }
            for prefix, ivs in (("test", c.test), ("val", c.validation), ("cost", c.costs)):
                for k, iv in ivs.items():
                    row[f"{prefix}_{k}_mean"], row[f"{prefix}_{k}_ci"] = iv.mean, iv.half_width
            r = c.vs_best
            row.update({"delta_vs_best": r and r.delta, "delta_low": r and r.low, "delta_high": r and r.high,
                        "p_value": r and r.p_value})
            row.update({"aulc_mean": _mean(c.aulc), "aulc_ci": c.aulc and c.aulc.half_width, "target": s.target,
                        "flops_to_target_mean": _mean(c.flops_to_target),
                        "flops_to_target_ci": c.flops_to_target and c.flops_to_target.half_width, "seeds_reached": c.reached})
            rows.append(row)
    return rows


def to_csv(report: Report) -> str:
    rows = csv_rows(report)
    fields = list(dict.fromkeys(k for r in rows for k in r)) or ["section", "task", "data", "model", "method", "label"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, restval="", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if v is None else v for k, v in r.items()})
    return buf.getvalue()


def _md(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(report: Report) -> str:
    from peftbench.report.budget_view import markdown as budget_markdown  # it imports this module

    out = ["# peftbench report", "", f"Results: `{report.results_dir}`; mean ± 95% CI over seeds (Student t).", ""]
    for s in report.sections:
        cols = columns(s)
        out += [f"## {s.title}", "", f"Ranked on test {metric_label(s.select_metric)}"
                f" ({'lower' if s.lower_is_better else 'higher'} is better). {s.bootstrap}.", ""]
        out += [f"> **Note:** {note}." for note in s.notes] + ([""] if s.notes else [])
        if s.target is not None:
            out += [f"FLOPs to {s.target_fraction:.0%} of best: training FLOPs until validation "
                    f"{metric_label(s.select_metric)} first reaches {s.target:.4f}.", ""]
        trivial = [[t for t, _ in row] for row in baseline_rows(s, cols)]
        out += [md_table([name for name, _ in cols], [[get(c)[0] for _, get in cols] for c in s.cells] + trivial), ""]
        out += [f"Ranks: {RANK_LEGEND}.", ""] if trivial or len(s.cells) > 1 else []
        out += [md_table([name for name, _ in cost_columns(s)], [[get(c)[0] for _, get in cost_columns(s)] for c in s.cells]), ""]
        out += budget_markdown(s)  # winner by budget and flag lines (report/budget_view.py)
    if report.lr_searches:
        out += ["## Learning-rate search (validation only)", "", md_table(LR_HEADER, lr_rows(report.lr_searches)), ""]
    return "\n".join(out)
