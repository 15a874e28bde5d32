"""Winner by budget: which method leads at each fraction of the compute, decided on validation curves.

Choices (all documented in the report's legend):
- Budget: a fraction of the section's reference budget, the largest training FLOPs any run
  measured (so the fraction 1 reads every run to its end). A run that ended before a budget
  keeps its final score there: it is not extrapolated.
- A cell's score at budget B is, per seed, the best validation score among the points at or
  before B (best-so-far), because a run stopped at B would keep its best-validated checkpoint,
  as every finished run here does. A cell with a seed that has no point by B yet is "not yet
  evaluated" there. Methods that do not train have one point at 0 FLOPs and score it everywhere.
- The leader has the best mean over seeds; ties on the mean go to the cell listed first.
- Indistinguishable from the leader (≈): with two or more shared seeds, the 95% paired
  t-interval of the per-seed difference contains 0; with two or more seeds each but none
  shared, their 95% intervals overlap; with one seed no interval exists, so a cell within
  ONE_SEED_TOLERANCE of the leader is marked ≈ as a tolerance, not a test.
- Degenerate cells (report/flags.py) are never leaders; they are listed as excluded.
Test-set verdicts stay at the final budget only (the quality table): nothing here reads test.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from peftbench.stats import Interval, mean_ci
from peftbench.stats.curves import curve_xy

if TYPE_CHECKING:
    from peftbench.report.model import Section

Series = Mapping[Any, tuple[np.ndarray, np.ndarray]]  # seed -> (training FLOPs, validation scores), by FLOPs
DEFAULT_FRACTIONS = (0.25, 0.5, 0.75, 1.0)
ONE_SEED_TOLERANCE = 0.02  # 2 points on a 0-1 metric: the same line item 5's one-seed convergence rule draws
FRACTION_NAMES = {0.25: "¼", 0.5: "½", 0.75: "¾", 1.0: "1"}


def best_so_far(xs: np.ndarray, ys: np.ndarray, budget: float, lower_is_better: bool = False) -> float | None:
    """The best score among points at or before `budget`; None before the first point."""
    seen = np.asarray(ys, dtype=float)[np.asarray(xs, dtype=float) <= budget * (1 + 1e-9)]
    if seen.size == 0:
        return None
    return float(seen.min() if lower_is_better else seen.max())


@dataclass
class Standing:
    label: str
    score: Interval  # mean and 95% t-interval over seeds
    scores: dict[Any, float] = field(repr=False)  # per seed


def standings(cells: Mapping[str, Series], budget: float, lower_is_better: bool = False,
              exclude: Iterable[str] = ()) -> list[Standing]:
    """Cells whose every seed has a point by `budget`, best mean first (stable: ties keep the given order)."""
    skip, out = set(exclude), []
    for label, series in cells.items():
        if label in skip or not series:
            continue
        scores = {seed: best_so_far(x, y, budget, lower_is_better) for seed, (x, y) in series.items()}
        if all(v is not None for v in scores.values()):
            done = {k: float(v) for k, v in scores.items() if v is not None}
            out.append(Standing(label, mean_ci(list(done.values())), done))
    sign = 1.0 if lower_is_better else -1.0
    return sorted(out, key=lambda s: sign * s.score.mean)


def tie_rule(leader: Standing, other: Standing) -> str:
    """Which rule decides whether `other` can be told from `leader` (see the module note)."""
    if len(set(leader.scores) & set(other.scores)) >= 2:
        return "paired"
    if leader.score.n >= 2 and other.score.n >= 2:
        return "overlap"
    return "tolerance"


def indistinguishable(leader: Standing, other: Standing) -> bool:
    rule = tie_rule(leader, other)
    if rule == "paired":
        shared = [s for s in leader.scores if s in other.scores]
        d = mean_ci([other.scores[s] - leader.scores[s] for s in shared])
        return d.low is not None and d.high is not None and d.low <= 0.0 <= d.high
    if rule == "overlap":
        a, b = leader.score, other.score
        return a.low is not None and a.high is not None and b.low is not None and b.high is not None \
            and b.low <= a.high and a.low <= b.high
    return abs(other.score.mean - leader.score.mean) <= ONE_SEED_TOLERANCE + 1e-12


RULE_TEXT = {
    "paired": "the 95% paired t-interval over shared seeds of its difference to the leader contains 0",
    "overlap": "its 95% interval over seeds overlaps the leader's",
    "tolerance": f"one seed, so no interval: within {ONE_SEED_TOLERANCE:g} of the leader (a tolerance, not a test)",
}


@dataclass
class BudgetRow:
    fraction: float
    flops: float
    leader: str | None  # None: no cell has been evaluated by this budget
    score: Interval | None
    ties: list[str]  # cells indistinguishable from the leader here
    unmeasured: list[str]  # cells with a seed not yet evaluated by this budget
    rules: list[str]  # the rules that decided this row's ties (keys of RULE_TEXT)


@dataclass
class Crossover:
    flops: float  # the first evaluated budget at which `after` leads
    before: str
    after: str


@dataclass
class ByBudget:
    metric: str
    lower_is_better: bool
    reference_flops: float  # the fraction 1: the largest training FLOPs any run measured
    rows: list[BudgetRow]
    crossovers: list[Crossover]
    excluded: list[str]  # degenerate cells: never leaders
    basis: str = "validation curves (best score so far per seed); test verdicts only at the final budget"
    verdict: str | None = None  # set by flags.py when the leading methods are unconverged

    @property
    def last_change(self) -> float | None:
        return self.crossovers[-1].flops if self.crossovers else None


def leader_path(cells: Mapping[str, Series], lower_is_better: bool = False,
                exclude: Iterable[str] = ()) -> list[tuple[float, Standing]]:
    """The leader at every distinct evaluated FLOPs value: scores only change there, so this is exact."""
    xs = sorted({float(v) for series in cells.values() for x, _ in series.values() for v in np.asarray(x)})
    path = []
    for x in xs:
        table = standings(cells, x, lower_is_better, exclude)
        if table:
            path.append((x, table[0]))
    return path


def crossovers(path: Sequence[tuple[float, Standing]]) -> list[Crossover]:
    out = []
    for (_, a), (x, b) in zip(path, path[1:]):
        if a.label != b.label:
            out.append(Crossover(x, a.label, b.label))
    return out


def by_budget(cells: Mapping[str, Series], metric: str, lower_is_better: bool = False,
              fractions: Sequence[float] = DEFAULT_FRACTIONS, exclude: Iterable[str] = ()) -> ByBudget | None:
    """The winner-by-budget table; None when no run trained (nothing to divide)."""
    ends = [float(np.asarray(x)[-1]) for series in cells.values() for x, _ in series.values() if np.asarray(x).size]
    reference = max(ends, default=0.0)
    if reference <= 0:
        return None
    skip = [label for label in cells if label in set(exclude)]
    rows = []
    for f in fractions:
        budget = f * reference
        table = standings(cells, budget, lower_is_better, skip)
        ranked = {s.label for s in table}
        unmeasured = [label for label, series in cells.items() if series and label not in skip and label not in ranked]
        if not table:
            rows.append(BudgetRow(f, budget, None, None, [], unmeasured, []))
            continue
        lead = table[0]
        ties = [s.label for s in table[1:] if indistinguishable(lead, s)]
        rules = list(dict.fromkeys(tie_rule(lead, s) for s in table[1:]))
        rows.append(BudgetRow(f, budget, lead.label, lead.score, ties, unmeasured, rules))
    return ByBudget(metric, lower_is_better, reference, rows, crossovers(leader_path(cells, lower_is_better, skip)), skip)


def fraction_text(f: float) -> str:
    return FRACTION_NAMES.get(round(f, 6), f"{f:g}")


def cell_series(curves: Sequence[list[dict[str, Any]]], seeds: Sequence[Any], metric: str) -> dict[Any, tuple[np.ndarray, np.ndarray]]:
    """A cell's stored curves as seed -> (training FLOPs, validation scores); seeds without the metric are left out."""
    out = {}
    for i, (seed, curve) in enumerate(zip(seeds, curves)):
        x, y = curve_xy(curve, metric)
        if x.size:
            out[seed if seed is not None else i] = (x, y)
    return out


def section_by_budget(section: Section, exclude: Iterable[str] = (),
                      fractions: Sequence[float] = DEFAULT_FRACTIONS) -> ByBudget | None:
    """The table for one report section, from its cells' stored validation curves."""
    cells = {c.label: cell_series(c.curves, c.seeds, section.select_metric) for c in section.cells}
    return by_budget(cells, section.select_metric, section.lower_is_better, fractions, exclude)
