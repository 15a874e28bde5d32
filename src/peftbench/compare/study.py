"""A comparison study: equal budgets, a learning-rate search per method on validation, then seeds scored on test.

The order matters for honesty: every method gets the same training FLOPs (by default what
the reference method spends in the given steps, counted before anything trains); each
method's rate is chosen on validation only (runs with train.test false never see test);
only then are the chosen configs run with every seed and scored on test, once.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from peftbench.config import deep_merge, parse_config
from peftbench.errors import UserError, suggest
from peftbench.methods import REFERENCE, get_method
from peftbench.metrics import lower_is_better
from peftbench.store import RunRow

AUTO_GRID = (1 / 3, 1.0, 3.0)  # multiples of the method's default rate
SEARCHES = ("grid", "halving")
RUNG = 0.25  # halving: the share of the budget every candidate gets before the best third go on
KEEP = 1 / 3  # ... and the share of candidates (rounded up) that go on to the full budget
Execute = Callable[[dict[str, Any]], RunRow]  # runs (or finds) one raw config, returns its stored row
# runs (or finds) raw configs, yielding (position, its stored row or the error it failed with) as each ends
Batch = Callable[[list[dict[str, Any]]], Iterator[tuple[int, RunRow | BaseException]]]


@dataclass
class Entry:
    """One method of the study: its spec and, optionally, its own learning-rate grid and head rate(s)."""

    spec: dict[str, Any]
    lr_grid: list[float] | None = None
    head_lr: float | None = None  # train.head_lr for this method alone
    head_lr_grid: list[float] | None = None  # searched jointly with the lr grid (every pair)

    @property
    def name(self) -> str:
        return str(self.spec.get("name", ""))

    @property
    def label(self) -> str:
        params = self.spec.get("params") or {}
        head = f"[head_lr={self.head_lr:g}]" if self.head_lr is not None else ""
        return self.name + (f"({', '.join(f'{k}={v}' for k, v in params.items())})" if params else "") + head


@dataclass
class StudyPlan:
    raw: dict[str, Any]  # the base config (model, task, train) every method shares
    entries: list[Entry]
    seeds: list[int]
    budget: str = "flops"  # "flops": equal training FLOPs; "steps": the config's steps/epochs/flops/seconds as given
    reference: str | None = None  # the method whose steps set the FLOPs budget; default lora, else the first trainer
    lr_grid: str | list[float] | None = None  # "auto", explicit rates for every method, or None (method defaults)
    lr_search: str = "grid"  # grid: every candidate at the full budget; halving: all at 1/4, the best third at full
    notes: list[str] = field(default_factory=list)
    drop_unfit: bool = False  # methods the user did not pick (the default list): drop those that cannot run here
    dry_run: bool = False  # print the plan and stop
    probes: dict[str, Any] = field(default_factory=dict)  # label -> compare.plan.Probe, from the preflight


@dataclass
class Failure:
    label: str  # method label, with the seed or rate of the run
    error: BaseException

    @property
    def line(self) -> str:
        text = " ".join(str(self.error).split()) or type(self.error).__name__
        return f"{self.label}: {text}"


@dataclass
class StudyResult:
    rows: list[RunRow]  # the test-scored runs, every method x seed
    search: list[RunRow]  # the validation-only learning-rate search runs
    chosen_lr: dict[str, float]  # method label -> the rate chosen on validation
    budget: dict[str, Any]
    failures: list[Failure] = field(default_factory=list)  # runs that failed midway; the others went on
    chosen_head_lr: dict[str, float] = field(default_factory=dict)  # method label -> head rate, where searched


def _rates(value: Any, key: str, name: Any) -> list[float] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not value or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < float("inf") for x in value):
        raise UserError(f"{key} of method '{name}' must be a non-empty list of positive rates, e.g. [1.0e-4, 1.0e-3]")
    return [float(x) for x in value]


ENTRY_KEYS = ("name", "params", "lr_grid", "head_lr", "head_lr_grid")


def entries_from(items: list[Any]) -> list[Entry]:
    """Methods as the CLI or a config file lists them: names, or mappings with params, lr_grid, head_lr
    (this method's train.head_lr) and head_lr_grid (head rates searched jointly with the lr grid)."""
    out = []
    for item in items:
        spec = dict(item) if isinstance(item, dict) else {"name": item}
        name = spec.get("name")
        grid = _rates(spec.pop("lr_grid", None), "lr_grid", name)
        head = spec.pop("head_lr", None)
        if head is not None and (isinstance(head, bool) or not isinstance(head, (int, float)) or not 0 < head < float("inf")):
            raise UserError(f"head_lr of method '{name}' must be a positive rate, e.g. 5.0e-2")
        head_grid = _rates(spec.pop("head_lr_grid", None), "head_lr_grid", name)
        unknown = sorted(set(spec) - {"name", "params"})  # parse_config would list only a method section's own keys
        if unknown:
            raise UserError(f"unknown key '{unknown[0]}' in the methods: entry of '{name}'{suggest(unknown[0], ENTRY_KEYS)}; "
                            f"an entry takes {', '.join(ENTRY_KEYS)}")
        if head is not None and head_grid:
            raise UserError(f"method '{name}' gives both head_lr and head_lr_grid; keep one of them")
        get_method(spec.get("name", "")).validate(spec.get("params", {}))
        out.append(Entry(spec, grid, None if head is None else float(head), head_grid))
    if not out:
        raise UserError("no methods to compare; pass --methods lora,ia3,... or list methods: in the config")
    return out


def _trains(entry: Entry) -> bool:
    return get_method(entry.name).trains


def grid_for(entry: Entry, plan: StudyPlan) -> list[float] | None:
    """The rates to search for one method, or None when it keeps one rate."""
    if not _trains(entry):
        return None
    if entry.lr_grid:
        return entry.lr_grid
    if plan.lr_grid is None:
        return None
    if isinstance(plan.lr_grid, list):
        return plan.lr_grid
    from peftbench.train import optim

    cfg = parse_config(deep_merge(plan.raw, {"method": entry.spec}))
    base = cfg.train.lr or optim.default_lr(cfg.train.optimizer, get_method(entry.name).default_lr)
    return [float(f"{base * m:.3g}") for m in AUTO_GRID]


def candidates(entry: Entry, plan: StudyPlan) -> list[dict[str, float]]:
    """The train settings the search tries for one method (lr, and head_lr when its grid is given);
    empty when nothing is searched."""
    if not _trains(entry):
        return []
    lrs = grid_for(entry, plan)
    heads = entry.head_lr_grid
    if not lrs and not heads:
        return []
    return [{**({"lr": lr} if lr is not None else {}), **({"head_lr": h} if h is not None else {})}
            for lr in (lrs or [None]) for h in (heads or [None])]


def search_runs(entry: Entry, plan: StudyPlan) -> tuple[int, float]:
    """A method's search runs: how many (every candidate, plus under halving the best third again at the
    full budget), and what they cost in full-budget runs (a halving rung's run costs RUNG of one)."""
    n = len(candidates(entry, plan))
    if plan.lr_search == "halving" and n > 1:
        keep = max(1, math.ceil(n * KEEP))
        return n + keep, n * RUNG + keep
    return n, float(n)


def _fixed(entry: Entry) -> dict[str, float]:
    return {"head_lr": entry.head_lr} if entry.head_lr is not None else {}


def _shown(pick: dict[str, float]) -> str:
    return ", ".join(f"{'lr' if k == 'lr' else 'head lr'} {v:g}" for k, v in pick.items())


def _with_budget(raw: dict[str, Any], flops: float | None) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    if flops is not None:
        train = raw.setdefault("train", {})
        for key in ("steps", "epochs", "seconds"):
            train.pop(key, None)
        train["flops"] = flops
    return raw


def equal_flops(plan: StudyPlan, log: Callable[[str], None]) -> dict[str, Any]:
    """Resolve the FLOPs every method gets: the reference method's count for the configured steps."""
    from peftbench.runner import calibrate_flops

    cfg = parse_config(plan.raw)
    if cfg.train.flops is not None:
        return {"kind": "flops", "value": cfg.train.flops, "reference": "given"}
    if cfg.train.seconds is not None:
        return {"kind": "seconds", "value": cfg.train.seconds, "reference": "given"}
    trainers = [e for e in plan.entries if _trains(e)]
    if not trainers:
        return {"kind": "none", "value": None, "reference": "no method trains"}
    names = [e.name for e in trainers]
    ref_name = plan.reference or (REFERENCE if REFERENCE in names else names[0])
    if ref_name not in names:
        raise UserError(f"reference method '{ref_name}' is not among the compared training methods ({', '.join(names)}); pick one of them")
    ref = next(e for e in trainers if e.name == ref_name)
    ref_cfg = parse_config(deep_merge(plan.raw, {"method": ref.spec, "train": {"seed": plan.seeds[0]}}))
    t = ref_cfg.train
    span = f"{t.steps} steps" if t.steps is not None else f"{t.epochs:g} epoch{'s' if t.epochs != 1 else ''}"
    log(f"budget: measuring {ref_name}'s training FLOPs for {span}…")
    flops = calibrate_flops(ref_cfg)  # over the reference's own steps or epochs budget
    note = f"{ref_name}'s measured training FLOPs for {span} of {t.batch_size * t.grad_accum} examples"
    log(f"budget: {flops:.4g} training FLOPs per method ({note}; --budget steps gives every method the same steps instead)")
    return {"kind": "flops", "value": float(flops), "reference": note, "method": ref_name}


def check(plan: StudyPlan) -> None:
    """Refuse what would fail midway, before anything runs."""
    if plan.lr_search not in SEARCHES:
        raise UserError(f"unknown learning-rate search '{plan.lr_search}'; use --lr-search grid or halving")
    if plan.budget not in ("flops", "steps"):
        raise UserError(f"unknown budget '{plan.budget}'; use --budget flops (equal training FLOPs, the default) or steps")
    if len(set(plan.seeds)) != len(plan.seeds) or not plan.seeds:
        raise UserError("seeds must be distinct and at least one; use --seeds N")
    cfg = parse_config(plan.raw)
    if plan.lr_grid is not None and cfg.train.lr is not None and isinstance(plan.lr_grid, list):
        raise UserError("--lr and --lr-grid both set the learning rate; give one of them")
    flops_budget = plan.budget == "flops" or cfg.train.flops is not None or cfg.train.seconds is not None
    for e in plan.entries:
        method = get_method(e.name)
        if flops_budget and method.needs_step_budget:
            raise UserError(f"{e.name}'s {method.step_schedule} is set in optimizer steps; compare it with --budget steps")
        parse_config(deep_merge(plan.raw, {"method": e.spec}))


def preflight(plan: StudyPlan, log: Callable[[str], None]) -> None:
    """Check every method against the task and model before anything trains (runner.check: the refusals
    a run would meet before its first step). Unfit methods are refused together, in one line each, or,
    when the user did not pick them (the default list), dropped with one line each."""
    from peftbench.compare.plan import probe

    unfit: list[tuple[Entry, str]] = []
    plan.probes = {}
    for e in plan.entries:
        try:
            plan.probes[e.label] = probe(parse_config(deep_merge(plan.raw, {"method": e.spec, "train": {"seed": plan.seeds[0]}})), e.label)
        except UserError as err:
            unfit.append((e, str(err)))
    if not unfit:
        return
    refuse = not plan.drop_unfit or len(unfit) == len(plan.entries)
    for e, why in unfit:
        log(f"{e.label}: {'' if refuse else 'dropped, '}it cannot run here: {why}")
    if refuse:
        raise UserError(f"{len(unfit)} of {len(plan.entries)} methods cannot run on this task and model (listed above); "
                        "drop them from --methods")
    dropped = [x for x, _ in unfit]
    plan.entries = [e for e in plan.entries if not any(e is x for x in dropped)]


def show_plan(plan: StudyPlan, budget: dict[str, Any], base: dict[str, Any], log: Callable[[str], None]) -> list[Any]:
    """Methods, their steps and epochs under the budget, and an estimated wall time (compare/plan.py)."""
    from peftbench.compare.plan import estimate, lines

    cfg = parse_config(base)
    kind = budget.get("kind")
    text = (f"{budget['value']:.4g} training FLOPs each" if kind == "flops" else
            f"{budget['value']:g} training seconds each" if kind == "seconds" else "each method's steps or epochs as configured")
    text += f", {len(plan.seeds)} seed{'s' * (len(plan.seeds) > 1)}"
    refs = {e.name: plan.probes[e.label] for e in plan.entries if e.label in plan.probes}
    ests = [estimate(plan.probes[e.label], budget, cfg, len(plan.seeds), *search_runs(e, plan), refs=refs)
            for e in plan.entries if e.label in plan.probes]
    for line in lines(ests, text) if ests else []:
        log(line)
    for line in (m for p in plan.probes.values() for m in p.messages):
        log(line)
    return ests


def _batch(runner: Batch, items: list[tuple[str, str, dict[str, Any]]], track: Any,
           failures: list[Failure], log: Callable[[str], None], share: float = 1.0) -> list[RunRow | None]:
    """Run (method label, which run, raw config) items, at once where the runner can, each with `share` of
    the budget; a failure is recorded and the study goes on (an interrupt stops it). Returns each item's
    row, None where it failed."""
    rows: list[RunRow | None] = [None] * len(items)
    for k, got in runner([raw for _, _, raw in items]):
        method, what, _ = items[k]
        label = f"{method} ({what})"
        if isinstance(got, BaseException):
            failures.append(Failure(label, got))
            log(f"{label} failed: {Failure(label, got).line.split(': ', 1)[1]}; the study goes on")
        else:
            rows[k] = got
        log(track.run_finished(method, what, rows[k], share))
    return rows


def sequential(execute: Execute) -> Batch:
    """A runner that executes one config after another in this process."""
    def runner(raws: list[dict[str, Any]]) -> Iterator[tuple[int, RunRow | BaseException]]:
        for k, raw in enumerate(raws):
            try:
                yield k, execute(raw)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as err:  # noqa: BLE001  (reported under the table; a bug is raised again at the end)
                yield k, err
    return runner


Scored = list[tuple[dict[str, float], float, str]]  # (train settings, validation score, metric)


def _best(scored: Scored) -> tuple[dict[str, float], float, str]:
    lower = lower_is_better(scored[0][2])
    return min(scored, key=lambda t: t[1]) if lower else max(scored, key=lambda t: t[1])


def _share(raw: dict[str, Any], share: float) -> dict[str, Any]:
    """The config with `share` of its budget (FLOPs, seconds, steps or epochs, whichever it gives)."""
    train = dict(raw.get("train") or {})
    for key in ("flops", "seconds", "steps", "epochs"):
        if train.get(key) is not None:
            value = train[key] * share
            train[key] = max(1, round(value)) if key == "steps" else value
            return {**raw, "train": train}
    return raw


def _rung(plan: StudyPlan, picks: list[tuple[int, dict[str, float]]], raw: dict[str, Any], what: str, runner: Batch,
          track: Any, failures: list[Failure], spent: list[RunRow], log: Callable[[str], None],
          share: float = 1.0) -> dict[int, Scored]:
    """Search runs, (entry index, train settings) each, all at once: each entry's validation scores."""
    items = [(plan.entries[i].label, f"{_shown(pick)}, {what}", deep_merge(raw, {"method": plan.entries[i].spec, "train": {
        **_fixed(plan.entries[i]), **pick, "seed": plan.seeds[0], "test": False}})) for i, pick in picks]
    scored: dict[int, Scored] = {i: [] for i, _ in picks}
    for (i, pick), row in zip(picks, _batch(runner, items, track, failures, log, share)):
        if row is None:
            continue
        spent.append(row)
        r = row.result or {}
        select = r.get("select_metric")
        if row.done and select in (r.get("validation") or {}):
            scored[i].append((pick, r["validation"][select], select))
    return scored


def _search(plan: StudyPlan, tries: dict[int, list[dict[str, float]]], base: dict[str, Any], runner: Batch,
            track: Any, failures: list[Failure], spent: list[RunRow], log: Callable[[str], None]) -> dict[int, Scored]:
    """Each searched entry's candidates scored on validation at the full budget: all of them (grid), or,
    under halving, those that led at RUNG of the budget (the best KEEP of them, at least one). The runs of
    every method go out together, so parallel workers stay busy. Never scores test."""
    halve = {i for i, t in tries.items() if plan.lr_search == "halving" and len(t) > 1}
    full = [(i, p) for i, t in tries.items() if i not in halve for p in t]
    first = _rung(plan, [(i, p) for i in halve for p in tries[i]], _share(base, RUNG),
                  f"search at {RUNG:g} of the budget", runner, track, failures, spent, log, RUNG) if halve else {}
    for i, scored in first.items():
        if not scored:
            continue
        e = plan.entries[i]
        keep = max(1, math.ceil(len(scored) * KEEP))
        ordered = sorted(scored, key=lambda t: t[1], reverse=not lower_is_better(scored[0][2]))
        log(f"{e.label}: at {RUNG:g} of the budget {', '.join(f'{_shown(p)}: {v:.4f}' for p, v, _ in ordered)}; "
            f"{', '.join(_shown(p) for p, _, _ in ordered[:keep])} go on to the full budget")
        full += [(i, p) for p, _, _ in ordered[:keep]]
    out = _rung(plan, full, base, "search", runner, track, failures, spent, log)
    return {i: out.get(i, []) for i in tries}


def run_study(plan: StudyPlan, execute: Execute, log: Callable[[str], None], batch: Batch | None = None) -> StudyResult:
    """The study; `batch` runs a phase's configs together (worker processes, Ray: compare/backends.py),
    else `execute` runs them one by one in this process."""
    check(plan)
    preflight(plan, log)
    budget = equal_flops(plan, log) if plan.budget == "flops" else {"kind": "as configured", "value": None}
    flops = budget["value"] if budget["kind"] == "flops" and budget.get("reference") != "given" else None
    base = _with_budget(plan.raw, flops)
    ests = show_plan(plan, budget, base, log)
    if plan.dry_run:
        return StudyResult([], [], {}, budget)
    from peftbench.compare.progress import Tracker

    track = Tracker.from_plan(ests, plan.probes)  # a progress line with an ETA after every run

    runner = batch or sequential(execute)
    chosen: dict[int, dict[str, float]] = {}  # entry index -> the train settings chosen (lr, head_lr)
    search: list[RunRow] = []
    failures: list[Failure] = []
    skip: set[int] = set()  # methods whose every search run failed
    tries = {i: t for i, e in enumerate(plan.entries) if (t := candidates(e, plan))}
    found = _search(plan, tries, base, runner, track, failures, search, log) if tries else {}
    for i, scored in found.items():
        e = plan.entries[i]
        if not scored:
            skip.add(i)
            track.drop(e.label, len(plan.seeds))
            log(f"{e.label}: every learning-rate search run failed, so it is not run on test")
            continue
        best = _best(scored)
        chosen[i] = best[0]
        shown = ", ".join(f"{_shown(pick)}: {v:.4f}" for pick, v, _ in scored)
        edges = [k for k in best[0] if len({t[k] for t in tries[i]}) > 1 and best[0][k] in (min(t[k] for t in tries[i]), max(t[k] for t in tries[i]))]
        log(f"{e.label}: {_shown(best[0])} chosen on validation {best[2]} ({shown})"
            + (f"; {' and '.join('lr' if k == 'lr' else 'head lr' for k in edges)} at the edge of the grid, so a wider grid may do better" if edges else ""))

    finals = [(i, seed) for i in range(len(plan.entries)) if i not in skip for seed in plan.seeds]
    items = [(plan.entries[i].label, f"seed {seed}", deep_merge(base, {"method": plan.entries[i].spec, "train": {**_fixed(plan.entries[i]), **chosen.get(i, {}), "seed": seed}}))
             for i, seed in finals]
    got = _batch(runner, items, track, failures, log)
    rows = [r for r in got if r is not None]
    return StudyResult(rows, search, {plan.entries[i].label: c["lr"] for i, c in chosen.items() if "lr" in c}, budget, failures,
                       {plan.entries[i].label: c["head_lr"] for i, c in chosen.items() if "head_lr" in c})
