"""The verdict under the user's constraints (--max-memory, --max-trainable, --max-adapter-bytes,
--max-latency-ms, --max-flops): the best method that fits, with its ≈ best tie set, and what
excluded the overall best.

A cell fits when the mean over its seeds of every constrained cost is within the limit; a cost
that was not measured cannot be shown to fit, so it excludes the cell. The best feasible cell is the
first feasible one in the report's ranking. Its tie set is the feasible cells the paired bootstrap
cannot tell from it: the report's own ≈ best marks when it is the overall best, else a bootstrap
against it (equal means when predictions are missing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftbench.errors import UserError
from peftbench.report.quantities import format_bytes, format_count, format_flops, format_ms, parse_bytes, parse_count, parse_ms
from peftbench.report.flags import is_degenerate

if TYPE_CHECKING:  # the CLI's option table imports KINDS: keep numpy, scipy and the store out of its start
    from rich.console import Console

    from peftbench.report.model import Cell, Report, Section

@dataclass(frozen=True)
class Kind:
    """One constraint flag: the cost it bounds, how its value is read and shown."""

    flag: str
    cost: str  # a key of Cell.costs (report/model.py COSTS)
    noun: str  # "1.37 MB adapter", "2 GB peak memory"
    example: str
    parse: Callable[[str, str, str], float]
    show: Callable[[float, bool], str]  # (value, binary units) -> text
    help: str


KINDS: dict[str, Kind] = {k.flag.removeprefix("--").replace("-", "_"): k for k in (
    Kind("--max-memory", "peak_memory_bytes", "peak memory", "2GB", parse_bytes, format_bytes,
         "Verdict: best method whose peak training memory fits, e.g. 2GB, 1.5GiB, 500MB."),
    Kind("--max-trainable", "params_trainable", "trainable params", "1M", parse_count, lambda v, _: format_count(v),
         "Verdict: best method with at most this many trainable parameters, e.g. 1M, 250k."),
    Kind("--max-adapter-bytes", "adapter_bytes", "adapter", "1MB", parse_bytes, format_bytes,
         "Verdict: best method whose saved adapter fits, e.g. 1MB, 500kB."),
    Kind("--max-latency-ms", "latency.b1_ms", "latency at batch 1", "20", parse_ms, lambda v, _: format_ms(v),
         "Verdict: best method whose batch-1 latency is at most this many milliseconds, e.g. 20."),
    Kind("--max-flops", "train_flops", "training FLOPs", "2.5e12", parse_count, lambda v, _: format_flops(v),
         "Verdict: best method whose training FLOPs fit, e.g. 2.5e12."),
)}


@dataclass(frozen=True)
class Limit:
    name: str  # a key of KINDS
    value: float
    text: str  # as the user typed it

    @property
    def kind(self) -> Kind:
        return KINDS[self.name]

    def show(self, value: float) -> str:
        """A value in this limit's units, with its noun: '1.37 MB adapter'."""
        return f"{self.kind.show(value, 'i' in self.text.lower())} {self.kind.noun}"

    @property
    def label(self) -> str:
        return self.show(self.value)

    def excess(self, cell: Cell) -> float:
        """The cell's cost over the limit (≤ 1 fits); infinite when it was not measured."""
        iv = cell.costs.get(self.kind.cost)
        return float("inf") if iv is None else iv.mean / self.value

    def why(self, cell: Cell) -> str:
        iv = cell.costs.get(self.kind.cost)
        return f"its {self.show(iv.mean)}" if iv is not None else f"its {self.kind.noun} (not measured)"


def parse_limits(values: Mapping[str, Any]) -> list[Limit]:
    """The constraint flags given (by parameter name, as text), parsed; unset ones are skipped."""
    out = []
    for name, kind in KINDS.items():
        text = values.get(name)
        if text is not None:
            out.append(Limit(name, kind.parse(str(text), kind.flag, kind.example), str(text)))
    return out


@dataclass
class Verdict:
    section: str
    fits: bool
    line: str
    best: str | None = None  # the best feasible cell's label
    ties: list[str] = field(default_factory=list)  # feasible cells ≈ best
    excluded: dict[str, list[str]] = field(default_factory=dict)  # label -> what excluded it


Ties = Callable[["Section", "Cell", "list[Cell]"], "list[Cell]"]  # (section, feasible best, other feasible) -> ≈ best


def _within(limits: list[Limit]) -> str:
    labels = [lim.label for lim in limits]
    return labels[0] if len(labels) == 1 else ", ".join(labels[:-1]) + " and " + labels[-1]


def _score(c: Cell, key: str) -> str:
    from peftbench.metrics import metric_label

    iv = c.test[key]
    if iv.half_width is None:
        return f"{iv.mean:.3f} (test {metric_label(key)}; 1 seed, no CI)"
    return f"{iv.mean:.3f} ± {iv.half_width:.3f} (test {metric_label(key)})"


def verdict(section: Section, limits: list[Limit], ties: Ties | None = None) -> Verdict:
    """The best feasible cell of one section and why the overall best is not it."""
    key = section.select_metric
    ranked = [c for c in section.cells if key in c.test and not is_degenerate(c)]  # a degenerate run is never named best
    within = _within(limits)
    excluded = {c.label: [lim.why(c) for lim in limits if lim.excess(c) > 1] for c in ranked}
    feasible = [c for c in ranked if not excluded[c.label]]
    excluded = {k: v for k, v in excluded.items() if v}
    if not feasible:
        return Verdict(section.title, False, no_fit(ranked, limits, within), excluded=excluded)
    best = feasible[0]
    tied = (ties or equal_means)(section, best, feasible[1:])
    line = f"best within {within}: {best.label} {_score(best, key)}"
    if tied:
        line += f", indistinguishable from {', '.join(c.label for c in tied)}"
    top = ranked[0]
    if top is best:
        line += "; it is also the overall best"
    else:
        line += f"; the overall best, {top.label}, is excluded by {' and '.join(excluded[top.label])}"
    return Verdict(section.title, True, line, best.label, [c.label for c in tied], excluded)


def no_fit(ranked: list[Cell], limits: list[Limit], within: str) -> str:
    """No cell fits: the tightest limit (it excludes the most cells, the farthest) and what the closest cell needs."""
    if not ranked:
        return f"no method fits within {within}: no method has a test score that is not degenerate (see the flag lines)"
    tight = max(limits, key=lambda lim: (sum(lim.excess(c) > 1 for c in ranked), min(lim.excess(c) for c in ranked)))
    closest = min(ranked, key=lambda c: max(lim.excess(c) for lim in limits))
    needs = [lim.why(closest).removeprefix("its ") for lim in limits if lim.excess(closest) > 1]
    n = sum(tight.excess(c) > 1 for c in ranked)
    return (f"no method fits within {within}; the tightest is --{tight.name.replace('_', '-')} {tight.text} "
            f"({n} of {len(ranked)} methods exceed it); the closest, {closest.label}, needs {' and '.join(needs)}")


def equal_means(section: Section, best: Cell, others: list[Cell]) -> list[Cell]:
    """Ties without a bootstrap: the report's ≈ best when the best is the report's, else equal means."""
    key = section.select_metric
    if best is section.best:
        return [c for c in others if c.near_best]
    return [c for c in others if round(c.test[key].mean, 12) == round(best.test[key].mean, 12)]


def bootstrap_ties(results_dir: str | Path, resamples: int, confidence: float) -> Ties:
    """Ties judged as the report judges ≈ best, by a paired bootstrap, but against the feasible best."""
    from peftbench.metrics import metric_for
    from peftbench.stats import paired_bootstrap_seeds
    from peftbench.store import Store

    def ties(section: Section, best: Cell, others: list[Cell]) -> list[Cell]:
        if best is section.best or not others:
            return equal_means(section, best, others)
        first = best.runs[0].run_result
        labels = list(range(len(first.labels))) if first and first.family == "seq2seq" and first.labels else None
        try:
            metric = metric_for(section.task, section.select_metric, labels)
        except ValueError:
            return equal_means(section, best, others)
        with Store(results_dir, read_only=True) as store:
            preds = {c.key: [store.predictions(r.run_id) for r in c.runs] for c in [best, *others]}
        if any(p is None for p in preds[best.key]):
            return equal_means(section, best, others)
        ref = preds[best.key][0].references
        out = []
        for c in others:
            mine = preds[c.key]
            if any(p is None or p.references != ref for p in mine):
                out += equal_means(section, best, [c])
                continue
            res = paired_bootstrap_seeds(ref, [p.predictions for p in mine], [p.predictions for p in preds[best.key]],
                                         metric, resamples, confidence)
            out += [c] if not res.distinguishable else []
        return out

    return ties


def verdicts(rep: Report, limits: list[Limit]) -> list[Verdict]:
    """One verdict per section with test scores; each line names its section when there are several."""
    ties = bootstrap_ties(rep.results_dir, rep.resamples, rep.confidence)
    out = [verdict(s, limits, ties) for s in rep.sections if s.cells]
    if len(out) > 1:
        for v in out:
            v.line = f"{v.section}: {v.line}"
    return out


def show(rep: Report, limits: list[Limit], console: Console) -> list[Verdict]:
    """Under the tables: the verdict line of each section where a method fits (refuse_unfit says the others)."""
    found = verdicts(rep, limits) if limits else []
    for v in found:
        if v.fits:
            console.print(v.line, style="bold", highlight=False, soft_wrap=True)
    return found


def refuse_unfit(found: list[Verdict]) -> None:
    """Exit 2 (UserError) when no method fits in some section; call it after the tables are shown."""
    unfit = [v.line for v in found if not v.fits]
    if unfit:
        raise UserError("; ".join(unfit))
