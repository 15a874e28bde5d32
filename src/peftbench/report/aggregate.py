"""Stored runs -> sections of comparable cells, with seed intervals, curve summaries and ranks.

A section is one (task kind + data, model); a cell is the runs whose configs are equal
except for train.seed. Every output format (terminal, CSV, JSON, Markdown, HTML, plots)
renders the same Report, so they cannot disagree.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftbench.metrics import lower_is_better, metric_for, metric_label
from peftbench.stats import Interval, mean_ci, paired_bootstrap_seeds
from peftbench.stats.curves import aulc, curve_xy, flops_to_fraction, target_score
from peftbench.config import flatten
from peftbench.report.flags import attach_verdicts, flag_degenerate, is_degenerate
from peftbench.report.model import COSTS, Ablation, Cell, LrPoint, LrSearch, Report, RunInfo, Section
from peftbench.report.model import budget_text  # noqa: F401  (imported from here by the renderers)
from peftbench.store import RunResult, RunRow, Store


# -- helpers ---------------------------------------------------------------------------
def without(config: dict[str, Any], *paths: str) -> dict[str, Any]:
    flat = flatten(config)
    return {k: v for k, v in flat.items() if k not in paths}


def _key(flat: dict[str, Any]) -> str:
    return json.dumps(flat, sort_keys=True, default=str)


def result_of(row: RunRow) -> RunResult:
    """A done run's typed result (the report reads only done runs)."""
    assert row.run_result is not None, f"run {row.run_id} has no result"
    return row.run_result


SEARCH_FREE = ("train.seed", "train.lr", "train.test")  # what may vary inside one learning-rate search


Score = Callable[[RunResult, str], float | None]  # a result's number by name


def _intervals(results: list[RunResult], keys: list[str], value: Score) -> dict[str, Interval]:
    out = {}
    for k in keys:
        vals = [v for r in results if (v := value(r, k)) is not None]
        if vals:
            out[k] = mean_ci(vals)
    return out


def _short(v: Any) -> str:
    if isinstance(v, list):
        return "+".join(str(x) for x in v)
    return f"{v:g}" if isinstance(v, float) else str(v)


def _labels(cells: list[Cell]) -> None:
    """Name each cell by its method plus whatever sets it apart from the same method's other cells."""
    by_method: dict[str, list[Cell]] = {}
    for c in cells:
        by_method.setdefault(c.method, []).append(c)
    for group in by_method.values():
        flats = [without(c.config, "train.seed") for c in group]
        keys = sorted({k for f in flats for k in f if any(g.get(k) != f.get(k) for g in flats)})
        for c, f in zip(group, flats):
            # a method setting left off (None, False) beside variants that set it names nothing: plain
            # LoRA among DoRA and PiSSA is "lora", not "lora (init=None, use_dora=False)"
            shown = [k for k in keys if not (k.startswith("method.") and f.get(k) in (None, False))]
            extra = ", ".join(f"{k.rsplit('.', 1)[-1]}={_short(f.get(k))}" for k in shown)
            c.label = f"{c.method} ({extra})" if extra else c.method
    seen: dict[str, int] = {}
    for c in cells:  # keys that only differ in nesting could still collide
        seen[c.label] = seen.get(c.label, 0) + 1
        if seen[c.label] > 1:
            c.label = f"{c.label} #{seen[c.label]}"


# -- building --------------------------------------------------------------------------
def _cell(runs: list[RunRow], store: Store) -> Cell:
    runs = sorted(runs, key=lambda r: (r.seed or 0, r.created))
    first = runs[0]
    results = [result_of(r) for r in runs]
    metric_order = list(dict.fromkeys([*results[0].metrics, *(k for r in results for k in (r.test or {}))]))
    cell = Cell(
        key=_key(without(first.config, "train.seed")), label=first.method, method=first.method,
        params=first.params, lr=results[0].lr,
        budget=results[0].budget.to_dict(), config=first.config, runs=runs, seeds=[r.seed for r in runs],
    )
    cell.test = _intervals(results, metric_order, RunResult.test_score)
    val_keys = list(dict.fromkeys(k for r in results for k in r.validation))
    cell.validation = _intervals(results, val_keys, RunResult.validation_score)
    cell.costs = _intervals(results, list(COSTS), lambda r, path: r.costs.value(path))
    cell.curves = [store.curve(r.run_id) for r in runs]
    return cell


def _select(section_runs: list[RunRow]) -> str:
    return result_of(section_runs[0]).select_metric


def _compare(section: Section, store: Store, resamples: int, confidence: float) -> None:
    """Rank cells: the best by mean test score; a paired bootstrap decides who is ≈ best."""
    key = section.select_metric
    sign = 1.0 if section.lower_is_better else -1.0
    # a degenerate cell is never best: it sorts last and stays unranked (report/flags.py)
    section.cells.sort(key=lambda c: (is_degenerate(c), (c.test[key].mean * sign) if key in c.test else float("inf")))
    best = section.cells[0]
    preds: dict[str, tuple[list[list[Any]], list[Any]] | None] = {}
    metric = None
    try:
        first = result_of(best.runs[0])
        labels = list(range(len(first.labels))) if first.family == "seq2seq" and first.labels else None
        metric = metric_for(section.task, key, labels)
    except ValueError as e:
        section.bootstrap = f"No paired bootstrap: {e}; cells ranked by mean"
    if metric is not None:
        for c in section.cells:
            loaded = [p for r in c.runs if (p := store.predictions(r.run_id)) is not None]
            complete = loaded and len(loaded) == len(c.runs)
            preds[c.key] = ([p.predictions for p in loaded], loaded[0].references) if complete else None
        section.bootstrap = (f"Paired bootstrap of test {key} against the best over test examples ({resamples} "
                             f"resamples, {confidence:.0%} interval; every seed scored on each resample)")
    if metric is not None and preds.get(best.key) is None:
        section.bootstrap = "No paired bootstrap: the best cell's predictions.json is missing; cells ranked by mean"
    if is_degenerate(best):
        section.bootstrap, metric = "No best: every cell is degenerate (see the flags)", None
    for i, c in enumerate(section.cells):  # by mean test score; equal scores share a rank (1, 2, 2, 4)
        if is_degenerate(c):
            continue
        mean = _mean_of(c, key)
        same = i and mean is not None and mean == _mean_of(section.cells[i - 1], key)
        c.rank = section.cells[i - 1].rank if same else i + 1
    for c in section.cells[1:]:  # ≈ best: the paired bootstrap cannot tell it from the best, whatever its rank
        a, b = preds.get(c.key), preds.get(best.key)
        if metric is not None and a and b and a[1] == b[1]:
            c.vs_best = paired_bootstrap_seeds(a[1], a[0], b[0], metric, resamples, confidence)
        c.near_best = ((c.vs_best is not None and not c.vs_best.distinguishable) or c.rank == 1) and not is_degenerate(c)


def _mean_of(c: Cell, key: str) -> float | None:
    return round(c.test[key].mean, 12) if key in c.test else None  # equal up to float noise across seeds' sums


def collapse_notes(section: Section) -> list[str]:
    """Methods that score no better than always predicting the majority class learned nothing usable."""
    majority = (section.baselines.get("majority") or {}).get(section.select_metric)
    if majority is None or section.lower_is_better:
        return []
    flat = [c.label for c in section.cells if section.select_metric in c.test and c.test[section.select_metric].mean <= majority + 1e-12]
    if not flat:
        return []
    return [f"{', '.join(flat)} score{'s' * (len(flat) == 1)} no better than always predicting the majority class "
            f"(test {metric_label(section.select_metric)} {majority:.4f}): {'it' if len(flat) == 1 else 'they'} learned nothing usable"]


def _curve_summaries(section: Section) -> None:
    key, lower = section.select_metric, section.lower_is_better
    finals = [c.validation[key].mean for c in section.cells if key in c.validation]
    if not finals:
        return
    section.target = target_score(min(finals) if lower else max(finals), section.target_fraction, lower)
    for c in section.cells:
        areas = [aulc(*xy) for curve in c.curves if (xy := curve_xy(curve, key))[0].size]
        c.aulc = mean_ci(areas) if areas else None
        hits = [x for curve in c.curves if (x := flops_to_fraction(curve, section.target, key, lower)) is not None]
        c.reached = len(hits)
        c.flops_to_target = mean_ci(hits) if hits else None


def _samples(section: Section) -> list[dict[str, Any]]:
    """Stored sample outputs aligned by test example: input, target, untuned, each cell's tuned."""
    if not section.cells:
        return []
    ref = result_of(section.cells[0].runs[0]).samples
    out = []
    for i, s in enumerate(ref):
        tuned = {}
        for c in section.cells:
            theirs = result_of(c.runs[0]).samples
            if i < len(theirs) and theirs[i].input == s.input:
                tuned[c.label] = theirs[i].tuned
        out.append({"input": s.input, "target": s.target, "untuned": s.untuned, "tuned": tuned})
    return out


def _order(v: Any) -> tuple[bool, Any]:
    """Numbers by value, then anything else by its text."""
    numeric = isinstance(v, (int, float)) and not isinstance(v, bool)
    return (not numeric, v if numeric else str(v))


def _ablations(section: Section) -> list[Ablation]:
    """Cells of one method that differ in exactly one method parameter."""
    out = []
    for method in dict.fromkeys(c.method for c in section.cells):
        cells = [c for c in section.cells if c.method == method]
        flats = {c.key: without(c.config, "train.seed") for c in cells}
        params = sorted({k for f in flats.values() for k in f if k.startswith("method.params.")})
        for p in params:
            groups: dict[str, list[Cell]] = {}
            for c in cells:
                rest = {k: v for k, v in flats[c.key].items() if k != p}
                groups.setdefault(_key(rest), []).append(c)
            for group in groups.values():
                if len({_key({"v": flats[c.key].get(p)}) for c in group}) >= 2:
                    group.sort(key=lambda c: _order(flats[c.key].get(p)))
                    out.append(Ablation(method, p.removeprefix("method.params."), [flats[c.key].get(p) for c in group], group))
    return out


def _lr_searches(rows: list[RunRow], cells: dict[str, list[Cell]], titles: dict[tuple[str, str, str], str]) -> list[LrSearch]:
    """Validation-only runs grouped by config minus seed and lr: the score per lr and the lr chosen."""
    groups: dict[str, list[RunRow]] = {}
    for r in rows:
        groups.setdefault(_key(without(r.config, *SEARCH_FREE)), []).append(r)
    made: list[tuple[LrSearch, dict[str, Any]]] = []
    for key, runs in groups.items():
        first, select = runs[0], _select(runs)
        by_lr: dict[Any, list[RunRow]] = {}
        for r in runs:
            by_lr.setdefault(result_of(r).lr, []).append(r)
        points = []
        for lr, rs in sorted(by_lr.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)):
            vals = [v for r in rs if (v := result_of(r).validation_score(select)) is not None]
            if vals:
                points.append(LrPoint(lr, mean_ci(vals), [r.seed for r in rs], [r.run_id for r in rs]))
        if not points:
            continue
        lower = lower_is_better(select)
        ordered = sorted(points, key=lambda p: p.validation.mean, reverse=not lower)
        tested = [c.lr for c in cells.get(key, [])]
        # The lr a test-scored run of the same config used (the best-validated one if several) ...
        chosen, chosen_by = next((p.lr for p in ordered if p.lr in tested), tested[0] if tested else None), "test run"
        if chosen is None:  # ... else the search's own pick
            chosen, chosen_by = ordered[0].lr, "best validation"
        search = LrSearch(
            section=titles.get(first.section, " · ".join(first.section)), label=first.method,
            method=first.method, params=first.params, budget=result_of(first).budget.to_dict(),
            select_metric=select, points=points, chosen_lr=chosen, chosen_by=chosen_by,
        )
        made.append((search, without(first.config, *SEARCH_FREE)))
    for method in {s.method for s, _ in made}:  # name searches like cells
        group = [(s, f) for s, f in made if s.method == method]
        keys = sorted({k for _, f in group for k in f if any(g.get(k) != f.get(k) for _, g in group)})
        for s, f in group:
            if keys:
                s.label = f"{method} ({', '.join(k.rsplit('.', 1)[-1] + '=' + _short(f.get(k)) for k in keys)})"
    return [s for s, _ in made]


VERSIONED = ("torch", "transformers", "peft", "datasets", "peftbench")


def caveats(rows: list[RunRow]) -> list[str]:
    """Runs compared across package versions, and runs whose folder is gone."""
    notes = []
    for package in VERSIONED:
        seen: dict[str, int] = {}
        for r in rows:
            v = result_of(r).versions.get(package)
            if v:
                seen[v] = seen.get(v, 0) + 1
        if len(seen) > 1:
            counts = ", ".join(f"{v} ({n} run{'s' * (n > 1)})" for v, n in sorted(seen.items()))
            notes.append(f"Runs compared across {package} versions: {counts}; differences may come from the versions")
    if note := busy_latency_note(rows):
        notes.append(note)
    if note := short_latency_note(rows):
        notes.append(note)
    gone = [r.run_id for r in rows if not r.folder.is_dir()]
    if gone:
        notes.append(f"{len(gone)} run folder(s) deleted ({', '.join(gone[:5])}{', …' if len(gone) > 5 else ''}): "
                     "their scores come from the index alone; they cannot be predicted with, exported or bootstrapped")
    return notes


def busy_latency_note(rows: list[RunRow]) -> str | None:
    """Runs whose latency was timed while other work kept the CPU busy (measure/latency.py): the * in tables."""
    busy = [(r.method, lat.machine or {}) for r in rows if (lat := result_of(r).costs.latency) and lat.busy]
    if not busy:
        return None
    methods = ", ".join(sorted({m for m, _ in busy}))
    worst = max(busy, key=lambda b: (b[1].get("other_load") or 0, b[1].get("load_average") or 0))[1]
    load = (f"other work kept {worst['other_load']:.1f} of {worst.get('cores')} cores busy beside {worst.get('threads')} threads"
            if worst.get("other_load") is not None else f"load average {worst.get('load_average')} on {worst.get('cores')} cores")
    return (f"* latency of {methods} was timed on a busy machine (at worst {load}): slower and more spread than on an "
            "idle one; to quote it, rerun those runs with --force when the machine is idle")


def short_latency_note(rows: list[RunRow]) -> str | None:
    """Runs whose latency stopped on its time budget (measure.latency_seconds) with a wide interval: the † in tables."""
    short = sorted({r.method for r in rows if (lat := result_of(r).costs.latency) and lat.timed_short})
    if not short:
        return None
    return (f"† latency of {', '.join(short)} stopped on its time budget (measure.latency_seconds) after as few as 3 "
            "timed repeats, before the median's 95% interval was within ±5%; raise measure.latency_seconds to time it longer")


def aggregate(results_dir: str | Path, resamples: int = 1000, confidence: float = 0.95,
              target_fraction: float = 0.9, run_ids: set[str] | None = None) -> Report:
    """Read every done run under results_dir (or only `run_ids`) and build the report (the store is only read)."""
    with Store(results_dir, read_only=True) as store:
        rows = [r for r in store.list(status="done") if run_ids is None or r.run_id in run_ids]
        tested = [r for r in rows if not r.validation_only]
        searches = [r for r in rows if r.validation_only]
        by_section: dict[tuple[str, str, str], list[RunRow]] = {}
        for r in tested:
            by_section.setdefault(r.section, []).append(r)
        sections: list[Section] = []
        titles: dict[tuple[str, str, str], str] = {}
        cells_by_search_key: dict[str, list[Cell]] = {}
        for skey, srows in by_section.items():
            title = f"{skey[0]} · {skey[1]} · {skey[2]}"
            titles[skey] = title
            groups: dict[str, list[RunRow]] = {}
            for r in srows:
                groups.setdefault(_key(without(r.config, "train.seed")), []).append(r)
            cells = [_cell(g, store) for g in groups.values()]
            _labels(cells)
            select = _select(srows)
            metrics = list(dict.fromkeys(m for r in srows for m in result_of(r).metrics))
            section = Section(title, skey[0], skey[1], skey[2], select, lower_is_better(select), metrics, cells, target_fraction)
            section.notes = caveats(srows)
            section.baselines = next((b for r in srows if (b := (result_of(r).task or {}).get("baselines"))), {})
            flag_degenerate(section, store)
            _compare(section, store, resamples, confidence)
            section.notes += collapse_notes(section)
            _curve_summaries(section)
            attach_verdicts(section)
            section.samples = _samples(section)
            section.ablations = _ablations(section)
            sections.append(section)
            for c in cells:
                k = _key(without(c.config, *SEARCH_FREE))
                cells_by_search_key.setdefault(k, []).append(c)
        lr_searches = _lr_searches(searches, cells_by_search_key, titles)
        runs = []
        for s in sections:
            for c in s.cells:
                runs += [RunInfo(r.run_id, s.title, c.label, r.seed, False, r.config) for r in c.runs]
        for ls in lr_searches:
            for p in ls.points:
                for rid, seed in zip(p.run_ids, p.seeds):
                    row = next(r for r in searches if r.run_id == rid)
                    runs.append(RunInfo(rid, ls.section, f"{ls.label} lr={_short(p.lr)}", seed, True, row.config))
        return Report(str(results_dir), time.time(), sections, lr_searches, runs, resamples, confidence)
