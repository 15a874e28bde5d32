"""One self-contained HTML report: inline CSS, inline PNG plots (data URIs), a small sort script.

Nothing is fetched from anywhere (no fonts, scripts or images by URL), so the file works
offline and can be mailed or archived as is. All stored text is escaped.
"""

from __future__ import annotations

import base64
import json
import time
from html import escape
from typing import Any

from peftbench.metrics import metric_label
from peftbench.report import budget_view
from peftbench.report.formats import LR_HEADER, RANK_LEGEND, Column, baseline_rows, columns, cost_columns
from peftbench.report.model import Report, Section, budget_text
from peftbench.report.plots import Plot, section_plots

CSS = """
:root { --fg:#1d2430; --muted:#5b6575; --line:#d9dee7; --best:#e3f4e6; --near:#f1f9f2; --head:#f4f6fa; --accent:#2457a6; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); margin: 0; background: #fff; }
header { padding: 20px 32px 12px; border-bottom: 1px solid var(--line); background: var(--head); }
h1 { margin: 0 0 4px; font-size: 22px; }
h2 { margin: 32px 0 8px; font-size: 18px; border-bottom: 2px solid var(--line); padding-bottom: 4px; }
h3 { margin: 22px 0 8px; font-size: 15px; }
main { padding: 0 32px 40px; max-width: 1500px; }
.meta, .note { color: var(--muted); margin: 4px 0; }
.caveat { color: #9a5b00; font-weight: 600; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; }
nav a:hover { text-decoration: underline; }
.wrap { overflow-x: auto; margin: 8px 0; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 5px 9px; vertical-align: top; }
th { background: var(--head); text-align: left; white-space: nowrap; position: sticky; top: 0; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th:hover { background: #e8ecf4; }
table.sortable th::after { content: " \\2195"; color: #9aa3b2; font-size: 11px; }
table.sortable th[aria-sort="ascending"]::after { content: " \\25B2"; color: var(--accent); }
table.sortable th[aria-sort="descending"]::after { content: " \\25BC"; color: var(--accent); }
td.num { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
tr.best td { background: var(--best); }
tr.near td { background: var(--near); }
tr.trivial td { color: var(--muted, #777); font-style: italic; }
tbody tr:hover td { background: #eef3fb; }
.mark { font-weight: 600; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 18px; margin: 12px 0; }
figure { margin: 0; border: 1px solid var(--line); border-radius: 6px; padding: 8px; background: #fff; }
figure img { max-width: 100%; height: auto; display: block; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 12px; margin-top: 4px; }
figcaption b { color: var(--fg); }
table.samples td { max-width: 360px; white-space: pre-wrap; word-break: break-word; }
table.samples td.input { max-width: 460px; }
details { border: 1px solid var(--line); border-radius: 4px; margin: 4px 0; padding: 4px 10px; }
summary { cursor: pointer; }
pre { background: #f7f8fa; padding: 8px; overflow-x: auto; font-size: 12px; }
code { font-size: 12px; }
.verdict { font-size: 15px; font-weight: 600; margin: 16px 0 4px; padding: 8px 12px; border-left: 4px solid var(--accent); background: var(--head); }
.legend span { display: inline-block; padding: 1px 8px; margin-right: 8px; border: 1px solid var(--line); }
"""

# Click (or Enter on) a header to sort by that column; again to reverse. Numeric columns
# sort on each cell's data-sort value; empty values go last either way.
JS = """
(function () {
  function sortTable(table, col, th) {
    var asc = th.getAttribute('aria-sort') !== 'ascending';
    var numeric = th.getAttribute('data-type') === 'num';
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].getAttribute('data-sort'), y = b.cells[col].getAttribute('data-sort');
      if (x === '' && y === '') return 0;
      if (x === '') return 1;
      if (y === '') return -1;
      var r = numeric ? parseFloat(x) - parseFloat(y) : x.localeCompare(y);
      return asc ? r : -r;
    });
    rows.forEach(function (r) { body.appendChild(r); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
  }
  document.querySelectorAll('table.sortable').forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.tabIndex = 0;
      th.addEventListener('click', function () { sortTable(table, col, th); });
      th.addEventListener('keydown', function (e) { if (e.key === 'Enter') sortTable(table, col, th); });
    });
  });
})();
"""


def _e(text: Any) -> str:
    return escape(str(text), quote=True)


def _sort_attr(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (int, float)):
        return repr(float(value))
    return str(value)


def sortable_table(header: list[str], rows: list[list[tuple[str, Any]]], row_classes: list[str] | None = None) -> str:
    """A table whose headers sort it: rows of (text, sort value) pairs."""
    numeric = [all(isinstance(r[i][1], (int, float)) or r[i][1] is None for r in rows) and any(r[i][1] is not None for r in rows)
               for i in range(len(header))]
    head = "".join(f'<th data-type="{"num" if n else "text"}" scope="col">{_e(h)}</th>' for h, n in zip(header, numeric))
    body = []
    for k, row in enumerate(rows):
        cls = f' class="{_e(row_classes[k])}"' if row_classes and row_classes[k] else ""
        tds = "".join(f'<td{" class=num" if n else ""} data-sort="{_e(_sort_attr(v))}">{_e(t)}</td>' for (t, v), n in zip(row, numeric))
        body.append(f"<tr{cls}>{tds}</tr>")
    return f'<div class="wrap"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _summary(section: Section, cols: list[Column], trivial: bool = False) -> str:
    rows = [[get(c) for _, get in cols] for c in section.cells]
    classes = ["best" if c.rank == 1 else "near" if c.near_best else "" for c in section.cells]
    extra = baseline_rows(section, cols) if trivial else []
    table = sortable_table([name for name, _ in cols], rows + extra, classes + ["trivial"] * len(extra))
    return table + (f'<p class="legend">Ranks: {_e(RANK_LEGEND)}.</p>' if trivial else "")


def _figure(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{_e(plot.title)}">'
            f"<figcaption><b>{_e(plot.title)}.</b> {_e(plot.caption)}</figcaption></figure>")


def _samples(section: Section) -> str:
    if not section.samples:
        return ""
    labels = [c.label for c in section.cells]
    head = "".join(f"<th>{_e(h)}</th>" for h in ["#", "input", "target", "untuned", *labels])
    body = []
    for i, s in enumerate(section.samples):
        tuned = "".join(f"<td>{_e(s['tuned'].get(label, '-'))}</td>" for label in labels)
        body.append(f'<tr><td class="num">{i + 1}</td><td class="input">{_e(s["input"])}</td><td>{_e(s["target"])}</td>'
                    f"<td>{_e(s['untuned'])}</td>{tuned}</tr>")
    return ('<h3>Sample predictions (first test examples)</h3><p class="note">Each method\'s output is from its first seed; '
            f'"untuned" is the model before fine-tuning.</p><div class="wrap"><table class="samples"><thead><tr>{head}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table></div>')


def _section(section: Section, index: int, plots: list[Plot]) -> str:
    m = metric_label(section.select_metric)
    parts = [f'<section id="s{index + 1}"><h2>{_e(section.title)}</h2>',
             f'<p class="note">{len(section.cells)} configurations, {sum(len(c.runs) for c in section.cells)} runs. '
             f"Ranked on test {_e(m)} ({'lower' if section.lower_is_better else 'higher'} is better); "
             f"mean ± 95% CI over seeds (Student t). {_e(section.bootstrap)}.</p>",
             '<p class="note legend"><span style="background:var(--best)">1: best mean</span>'
             '<span style="background:var(--near)">≈ best: the 95% interval of its difference to the best contains 0</span>'
             "other cells ranked 2, 3, … by mean.</p>"]
    parts += [f'<p class="note caveat">Note: {_e(note)}.</p>' for note in section.notes]
    if section.target is not None:
        parts.append(f'<p class="note">AULC: mean validation {_e(m)} over training progress. FLOPs to '
                     f"{section.target_fraction:.0%} of best: training FLOPs until validation {_e(m)} first reaches "
                     f"{section.target:.4f} ({section.target_fraction:.0%} of the best cell's).</p>")
    parts.append(_summary(section, columns(section), trivial=True))
    parts.append(budget_view.html(section))  # flags and the winner by budget (report/budget_view.py)
    parts.append('<h3>Costs</h3><p class="note">Measured per run; mean ± 95% CI over seeds where they vary.</p>')
    parts.append(_summary(section, cost_columns(section)))
    if plots:
        parts.append('<h3>Plots</h3><div class="plots">' + "".join(_figure(p) for p in plots) + "</div>")
    parts.append(_samples(section))
    parts.append("</section>")
    return "".join(parts)


def _lr(report: Report) -> str:
    if not report.lr_searches:
        return ""
    rows = []
    for s in report.lr_searches:
        for p in s.points:
            chosen = f"✓ ({s.chosen_by})" if p.lr == s.chosen_lr else ""
            rows.append([(s.section, s.section), (s.label, s.label), (budget_text(s.budget), s.budget.get("value")),
                         (f"{p.lr:.3g}" if p.lr is not None else "-", p.lr),
                         (f"{metric_label(s.select_metric)} {p.validation}", p.validation.mean),
                         (str(len(p.seeds)), len(p.seeds)), (chosen, chosen)])
    return ('<section id="lr"><h2>Learning-rate search (validation only)</h2><p class="note">Runs with train.test off, '
            "grouped by configuration; the chosen rate is the one a test-scored run of the same configuration used, "
            f"else the best validation score.</p>{sortable_table(LR_HEADER, rows)}</section>")


def _runs(report: Report) -> str:
    items = []
    for r in report.runs:
        what = " · LR search" if r.lr_search else ""
        items.append(f"<details><summary><code>{_e(r.run_id)}</code> — {_e(r.label)} · seed {_e(r.seed)}{what} "
                     f'<span class="meta">({_e(r.section)})</span></summary>'
                     f"<pre>{_e(json.dumps(r.config, indent=2, sort_keys=True))}</pre></details>")
    return f'<section id="runs"><h2>Runs and their configurations</h2>{"".join(items)}</section>'


def render(report: Report, plots: list[list[Plot]] | None = None, verdicts: list[str] | None = None) -> str:
    """The whole report as one HTML document; plots: each section's, when already drawn; verdicts: the
    lines of the verdict under the user's constraints (report/constraints.py), shown above the tables."""
    if plots is None:
        plots = [section_plots(s, i) for i, s in enumerate(report.sections)]
    nav = "".join(f'<a href="#s{i + 1}">{_e(s.title)}</a>' for i, s in enumerate(report.sections))
    if report.lr_searches:
        nav += '<a href="#lr">learning-rate search</a>'
    nav += '<a href="#runs">runs &amp; configs</a>'
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(report.created))
    body = "".join(_section(s, i, plots[i]) for i, s in enumerate(report.sections))
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,"><title>peftbench report</title>'
        f"<style>{CSS}</style></head><body><header><h1>peftbench report</h1>"
        f'<p class="meta">Results folder <code>{_e(report.results_dir)}</code> · {len(report.runs)} finished runs · '
        f"generated {_e(when)} · paired bootstrap with {report.resamples} resamples</p><nav>{nav}</nav></header>"
        f"<main>{''.join(f'<p class=verdict>{_e(v)}</p>' for v in verdicts or [])}{body}{_lr(report)}{_runs(report)}</main><script>{JS}</script></body></html>"
    )
