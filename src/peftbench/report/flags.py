"""Runs that learned nothing usable, or had not finished learning, flagged with a one-line reason.

- degenerate: a seed predicts one class (or choice) for at least DEGENERATE_SHARE of the test
  examples (classification, multiple choice), generates the same text for every test input
  (generation tasks), or ended with a non-finite training loss or score. A cell with any
  degenerate seed is flagged and is never named best (aggregate._compare ranks it last, unranked).
- unconverged: the validation score is still rising at the end of the budget. Per seed, the
  gain is the best score so far at the end minus the best score so far at ¾ of that seed's
  training FLOPs (the same reading as by_budget.py); the cell is flagged when the mean gain
  exceeds the 95% CI half-width of its final scores over seeds, or ONE_SEED_GAIN with one seed.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from peftbench.metrics import metric_label
from peftbench.report.by_budget import ByBudget, Series, best_so_far, cell_series, section_by_budget
from peftbench.stats import mean_ci

if TYPE_CHECKING:
    from peftbench.report.model import Cell, Section
    from peftbench.store import Store

DEGENERATE_SHARE = 0.95
ONE_SEED_GAIN = 0.02  # 2 points on a 0-1 metric
LAST_PART = 0.25  # the last quarter of the budget
CLASS_KINDS = ("classification", "image_classification", "multiple_choice")  # else: generated text


@dataclass
class Flag:
    kind: str  # "degenerate" or "unconverged"
    reason: str  # one line

    def __str__(self) -> str:
        return f"{self.kind}: {self.reason}"


def _shown(value: Any, labels: Sequence[Any] | None) -> str:
    if labels and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
        return repr(str(labels[value]))
    if not isinstance(value, str):
        return json.dumps(value, default=str)
    return repr(value if len(value) <= 40 else value[:39] + "…")


def collapsed(predictions: Sequence[Any], generation: bool = False, labels: Sequence[Any] | None = None,
              references: Sequence[Any] | None = None) -> str | None:
    """Why these test predictions are degenerate, or None: one class for ≥ 95%, or one text for all.
    With references, the reason says how common that class truly is (a skewed test set explains some)."""
    if len(predictions) < 2:
        return None  # one example says nothing about collapse
    keys = [p.strip() if isinstance(p, str) else json.dumps(p, sort_keys=True, default=str) for p in predictions]
    key, count = Counter(keys).most_common(1)[0]
    value = predictions[keys.index(key)]
    if generation:
        return f"generates the same text for every test input ({_shown(value, None)})" if count == len(keys) else None
    share = count / len(keys)
    if share >= DEGENERATE_SHARE:
        truth = sum(1 for r in references or [] if r == value) / len(references) if references else None
        said = f" (it is {truth:.0%} of the references)" if truth is not None else ""
        return f"predicts {_shown(value, labels)} for {share:.0%} of test examples{said}"
    return None


def non_finite(curve: Sequence[dict[str, Any]], scores: dict[str, Any] | None = None) -> str | None:
    """Why a run ended non-finite, or None: its last training loss, or a final score, is nan or inf."""
    losses = [p.get("train_loss") for p in curve if p.get("train_loss") is not None]
    if losses and not math.isfinite(float(losses[-1])):
        return f"training loss ended non-finite ({losses[-1]})"
    bad = [k for k, v in (scores or {}).items() if isinstance(v, float) and not math.isfinite(v)]
    return f"final {bad[0]} is non-finite" if bad else None


def last_quarter_gain(xs: np.ndarray, ys: np.ndarray, lower_is_better: bool = False) -> float | None:
    """How much the best-so-far score improved over the last quarter of the run's FLOPs; None if unmeasurable
    (nothing trained, or no point in the first three quarters)."""
    if xs.size == 0 or xs[-1] <= 0:
        return None
    end = best_so_far(xs, ys, float(xs[-1]), lower_is_better)
    before = best_so_far(xs, ys, (1 - LAST_PART) * float(xs[-1]), lower_is_better)
    if end is None or before is None:
        return None
    return before - end if lower_is_better else end - before


def unconverged(series: Series, metric: str, lower_is_better: bool = False) -> Flag | None:
    """The unconverged flag for one cell's seeds' curves, or None (see the module note for the rule)."""
    gains, finals = [], []
    for x, y in series.values():
        g = last_quarter_gain(np.asarray(x, dtype=float), np.asarray(y, dtype=float), lower_is_better)
        if g is not None:
            gains.append(g)
            finals.append(best_so_far(x, y, float(x[-1]), lower_is_better))
    if not gains:
        return None
    gain = float(np.mean(gains))
    if len(finals) >= 2:
        threshold = mean_ci([float(f) for f in finals if f is not None]).half_width or 0.0
        why = f"the 95% CI over {len(finals)} seeds, ±{threshold:.3f}"
    else:
        threshold, why = ONE_SEED_GAIN, f"{ONE_SEED_GAIN:g} with one seed"
    if gain <= threshold + 1e-12:
        return None
    word = "falling" if lower_is_better else "rising"
    return Flag("unconverged", f"validation {metric_label(metric)} still {word} at the end of its budget: {gain:+.3f} over the last "
                               f"quarter of its training FLOPs, more than {why}; a larger budget may change its rank")


def _folder_curve(folder: Path, fallback: Sequence[dict[str, Any]]) -> Sequence[dict[str, Any]]:
    """The run folder's curve.json: it keeps a nan loss, which the index stores as NULL (None)."""
    try:
        return json.loads((folder / "curve.json").read_text())
    except (OSError, ValueError):
        return fallback


def degenerate(cell: Cell, store: Store, task: str) -> Flag | None:
    """The degenerate flag for one cell from its seeds' stored predictions, curves and scores, or None."""
    reasons = []
    for run, curve in zip(cell.runs, cell.curves):
        result = run.run_result
        scores = {**(result.validation if result else {}), **((result.test or {}) if result else {})}
        why = non_finite(_folder_curve(run.folder, curve), scores)
        preds = store.predictions(run.run_id) if why is None else None
        if why is None and preds is not None:
            why = collapsed(preds.predictions, task not in CLASS_KINDS, result.labels if result else None, preds.references)
        if why is not None:
            reasons.append(why)
    if not reasons:
        return None
    reason = Counter(reasons).most_common(1)[0][0]
    return Flag("degenerate", f"{reason}, in {len(reasons)}/{len(cell.runs)} seed{'s' * (len(cell.runs) > 1)}; never ranked best")


def is_degenerate(cell: Cell) -> bool:
    return any(f.kind == "degenerate" for f in cell.flags)


def flag_degenerate(section: Section, store: Store) -> None:
    """Before ranking: flag each degenerate cell (aggregate._compare then keeps it from being best)."""
    for c in section.cells:
        if (flag := degenerate(c, store, section.task)) is not None:
            c.flags.append(flag)


def flag_unconverged(section: Section) -> None:
    for c in section.cells:  # a degenerate cell's flag already says it learned nothing usable
        if not is_degenerate(c) and (flag := unconverged(cell_series(c.curves, c.seeds, section.select_metric), section.select_metric,
                                section.lower_is_better)) is not None:
            c.flags.append(flag)


def convergence_verdict(section: Section, table: ByBudget | None) -> str | None:
    """When a leading cell (best or ≈ best on test) is unconverged: say so, with where the validation leader last changed."""
    leading = [c for c in section.cells if (c.rank == 1 or c.near_best) and any(f.kind == "unconverged" for f in c.flags)]
    if not leading:
        return None
    names = ", ".join(c.label for c in leading)
    text = (f"{names} {'is' if len(leading) == 1 else 'are'} among the leading methods but unconverged: the budget is too "
            "small to rank the methods for sure")
    if table is not None and table.last_change is not None:
        last = table.crossovers[-1]
        from peftbench.report.formats import num  # it imports this module

        text += (f"; on validation the leader last changed at {num(last.flops, 'FLOP')} of training "
                 f"({last.flops / table.reference_flops:.2f} of the budget: {last.before} → {last.after})")
    elif table is not None and table.rows and table.rows[-1].leader:
        text += f"; on validation {table.rows[-1].leader} has led since its first evaluation"
    return text


def flag_lines(section: Section) -> list[str]:
    """One line per flag: the cell, what it is and why."""
    return [f"{c.label} — {f}" for c in section.cells for f in c.flags]


SHORT = {"unconverged": "unconv.", "degenerate": "degen."}  # terminals: the flag lines under the table say the rest


def flag_words(cell: Cell, short: bool = False) -> str:
    return ", ".join(dict.fromkeys(SHORT.get(f.kind, f.kind) if short else f.kind for f in cell.flags))



def attach_verdicts(section: Section) -> None:
    """After ranking and curve summaries: unconverged flags, the winner-by-budget table and its verdict."""
    flag_unconverged(section)
    section.by_budget = section_by_budget(section, exclude=[c.label for c in section.cells if is_degenerate(c)])
    if section.by_budget is not None:
        section.by_budget.verdict = convergence_verdict(section, section.by_budget)
