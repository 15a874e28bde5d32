"""The winner-by-budget table and the flag lines as text: shared by the terminal, Markdown and HTML.

Kept apart from by_budget.py and flags.py (pure logic) because it needs formats.py, which
imports the report model that imports them.
"""

from __future__ import annotations

from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from peftbench.metrics import metric_label
from peftbench.report.by_budget import RULE_TEXT, ByBudget, BudgetRow, fraction_text
from peftbench.report.flags import flag_lines
from peftbench.report.formats import iv_text, md_table, num
from peftbench.report.model import Section


def header(table: ByBudget) -> list[str]:
    return ["budget", "leader (validation)", f"validation {metric_label(table.metric)}", "≈ leader", "not yet evaluated"]


def row_texts(row: BudgetRow, digits: int = 4, sep: str = " ± ") -> list[str]:
    budget = f"{fraction_text(row.fraction)} · {num(row.flops, 'FLOP')}"
    return [budget, row.leader or "-", iv_text(row.score, digits, sep), ", ".join(row.ties) or "-",
            ", ".join(row.unmeasured) or "-"]


def title(section: Section) -> str:
    return f"{section.title}: winner by budget, decided on validation curves"


def legend(table: ByBudget) -> str:
    """How the table was read: the budget, the score at a budget, the ≈ rules used, the crossovers."""
    if all(row.leader is None for row in table.rows):
        why = f"every method is degenerate ({', '.join(table.excluded)})" if table.excluded else "no method was evaluated"
        return f"no leader at any budget: {why}"
    rules = sorted({r for row in table.rows for r in row.rules}, key=list(RULE_TEXT).index)
    text = (f"budget: a fraction of {num(table.reference_flops, 'FLOP')}, the largest training FLOPs of any run; a cell's "
            f"score at a budget: per seed, its best validation {metric_label(table.metric)} at or before it, then the mean "
            "± 95% CI over seeds; ≈ leader: " + "; or ".join(RULE_TEXT[r] for r in rules or ["paired"])
            + "; test verdicts (the quality table) are only at the final budget")
    if table.excluded:
        text += f"; never leaders, as degenerate: {', '.join(table.excluded)}"
    return text + "; " + crossover_text(table)


def crossover_text(table: ByBudget) -> str:
    if not table.crossovers:
        return "the validation leader never changes"
    moves = ", ".join(f"{c.before} → {c.after} at {num(c.flops, 'FLOP')} ({c.flops / table.reference_flops:.2f})"
                      for c in table.crossovers)
    return f"the validation leader changes: {moves}"


def verdict_lines(section: Section) -> list[str]:
    """What a reader must not miss: unconverged leaders (the verdict) and every flagged cell, prefixed."""
    bb = section.by_budget
    return ([f"verdict: {bb.verdict}"] if bb is not None and bb.verdict else []) + [f"flag: {x}" for x in flag_lines(section)]


def terminal(section: Section) -> Table | None:
    bb = section.by_budget
    if bb is None:
        return None
    table = Table(title=title(section), caption=legend(bb), caption_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for name in header(bb):
        table.add_column(name, justify="right" if name.startswith(("budget", "validation")) else "left", overflow="fold")
    for row in bb.rows:
        table.add_row(*row_texts(row, 3, "±"))
    return table


def print_section(section: Section, console: Console) -> None:
    """The by-budget table, then one line per verdict or flag."""
    if (table := terminal(section)) is not None:
        console.print(table)
    for line in verdict_lines(section):
        console.print(line, style="yellow", highlight=False)


def markdown(section: Section) -> list[str]:
    bb, out = section.by_budget, []
    if bb is not None:
        out += [f"### {title(section)}", "", md_table(header(bb), [row_texts(r) for r in bb.rows]), "",
                f"Read as: {legend(bb)}.", ""]
    for line in verdict_lines(section):
        kind, text = line.split(": ", 1)
        out.append(f"> **{kind.capitalize()}:** {text}.")
    return out + ([""] if verdict_lines(section) else [])


def html_rows(table: ByBudget) -> list[list[tuple[str, Any]]]:
    """(text, sort value) pairs, as html.sortable_table takes them."""
    return [[(t, v) for t, v in zip(row_texts(r), (r.fraction, r.leader, r.score.mean if r.score else None, None, None))]
            for r in table.rows]


def html(section: Section) -> str:
    """The by-budget table and flag lines as HTML (escaped), for html._section."""
    from html import escape

    from peftbench.report.html import sortable_table

    out = "".join(f'<p class="note caveat">{escape(line[:1].upper() + line[1:])}.</p>' for line in verdict_lines(section))
    bb = section.by_budget
    if bb is not None:
        out += (f"<h3>{escape(title(section))}</h3>{sortable_table(header(bb), html_rows(bb))}"
                f'<p class="note">Read as: {escape(legend(bb))}.</p>')
    return out


def verdicts_json(rep: Any) -> dict[str, Any]:
    """For `compare --json`: per section of the comparison's report, the winner by budget, the verdict and
    every flag with its reason (nothing when no run finished)."""
    from peftbench.report.model import to_jsonable

    if rep is None:
        return {}
    return {"sections": [{"section": s.title, "by_budget": to_jsonable(s.by_budget),
                          "flags": [{"label": c.label, "kind": f.kind, "reason": f.reason} for c in s.cells for f in c.flags]}
                         for s in rep.sections]}
