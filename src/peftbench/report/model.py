"""What a report is: sections of comparable cells, learning-rate searches and the runs behind them.

aggregate.py builds it from the store; every output format (terminal, CSV, JSON, Markdown,
HTML, plots) renders it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peftbench.report.by_budget import ByBudget
from peftbench.report.flags import Flag
from peftbench.stats import Interval, PairedResult
from peftbench.stats.curves import Curve
from peftbench.store import RunRow

# Costs summarised per cell (dotted paths into Costs), with display names and units.
COSTS: dict[str, tuple[str, str]] = {
    "params_trainable": ("trainable params", ""),
    "trainable_pct": ("trainable %", "%"),
    "train_flops": ("train FLOPs", "FLOP"),
    "train_seconds": ("train time", "s"),
    "train_hardware_flops": ("hardware FLOPs", "FLOP"),
    "setup_flops": ("setup FLOPs", "FLOP"),  # a data-driven initialisation's forward passes (EVA, CorDA)  # train FLOPs plus gradient checkpointing's recomputation
    "tokens_per_second": ("train tokens/s", "tok/s"),
    "model_flops_per_second": ("model FLOP/s", "FLOP/s"),
    "mfu": ("MFU", "share"),  # a fraction of the device's peak, shown as a percentage
    "peak_memory_bytes": ("peak memory", "B"),
    "peak_memory_reserved_bytes": ("peak reserved memory", "B"),
    "adapter_bytes": ("adapter size", "B"),
    "latency.b1_ms": ("latency b=1", "ms"),
    "latency.b1_q1_ms": ("latency b=1 first quartile", "ms"),  # shown with the median as its IQR
    "latency.b1_q3_ms": ("latency b=1 third quartile", "ms"),
    "latency.bN_ms": ("latency b=N", "ms"),
    "latency.throughput": ("throughput", "ex/s"),
    "latency.merged.b1_ms": ("merged latency b=1", "ms"),
    "latency.merged.throughput": ("merged throughput", "ex/s"),
    "forgetting": ("forgetting", ""),  # general-text LM loss after tuning minus before; lower forgot less
}


@dataclass
class Cell:
    key: str  # the config minus the seed, as sorted JSON
    label: str  # method plus the settings that tell it apart from the section's other cells of that method
    method: str
    params: dict[str, Any]
    lr: float | None
    budget: dict[str, Any]  # Budget.to_dict()
    config: dict[str, Any]  # the first seed's config
    runs: list[RunRow] = field(repr=False)
    seeds: list[int] = field(default_factory=list)
    test: dict[str, Interval] = field(default_factory=dict)
    validation: dict[str, Interval] = field(default_factory=dict)
    costs: dict[str, Interval] = field(default_factory=dict)
    curves: list[Curve] = field(default_factory=list, repr=False)  # per seed, as stored
    aulc: Interval | None = None
    flops_to_target: Interval | None = None  # over the seeds that reached the target
    reached: int = 0  # seeds whose curve reached the target
    rank: int | None = None  # by mean test score, 1 = best; equal scores share a rank
    near_best: bool = False  # the paired bootstrap cannot tell it from the best (or it ties the best)
    vs_best: PairedResult | None = None  # this cell minus the best on the select metric (test)
    flags: list[Flag] = field(default_factory=list)  # degenerate / unconverged, with reasons (report/flags.py)

    @property
    def mark(self) -> str:
        text = str(self.rank) if self.rank is not None else "-"
        return f"{text} ≈ best" if self.near_best and self.rank != 1 else text


@dataclass
class Ablation:
    method: str
    param: str  # method.params key that varies
    values: list[Any]
    cells: list[Cell]


@dataclass
class Section:
    title: str
    task: str
    data: str
    model: str
    select_metric: str
    lower_is_better: bool
    metrics: list[str]  # headline test metrics
    cells: list[Cell]  # best first, then by rank
    target_fraction: float
    target: float | None = None  # validation score the FLOPs-to-target column is about
    bootstrap: str = ""  # how cells were compared, or why they could not be
    notes: list[str] = field(default_factory=list)  # what a reader must know before trusting the comparison
    samples: list[dict[str, Any]] = field(default_factory=list)
    ablations: list[Ablation] = field(default_factory=list)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)  # trivial: majority, chance (test scores)
    by_budget: ByBudget | None = None  # the leader at fractions of the budget, on validation curves (report/by_budget.py)

    @property
    def best(self) -> Cell | None:
        return next((c for c in self.cells if c.rank == 1), None)  # none when every cell is degenerate


@dataclass
class LrPoint:
    lr: float | None
    validation: Interval
    seeds: list[int]
    run_ids: list[str]


@dataclass
class LrSearch:
    section: str
    label: str
    method: str
    params: dict[str, Any]
    budget: dict[str, Any]  # Budget.to_dict()
    select_metric: str
    points: list[LrPoint]
    chosen_lr: float | None
    chosen_by: str  # "test run" (a test-scored run used it) or "best validation"


@dataclass
class RunInfo:
    run_id: str
    section: str
    label: str
    seed: int | None
    lr_search: bool
    config: dict[str, Any]


@dataclass
class Report:
    results_dir: str
    created: float
    sections: list[Section]
    lr_searches: list[LrSearch]
    runs: list[RunInfo]
    resamples: int
    confidence: float = 0.95

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable(self)


def interval_dict(iv: Interval | None) -> dict[str, Any] | None:
    if iv is None:
        return None
    return {"mean": iv.mean, "half_width": iv.half_width, "low": iv.low, "high": iv.high, "n": iv.n}


def to_jsonable(obj: Any) -> Any:
    """Dataclasses to plain JSON values; run rows become their ids, intervals dicts."""
    if isinstance(obj, Interval):
        return interval_dict(obj)
    if isinstance(obj, RunRow):
        return obj.run_id
    if isinstance(obj, PairedResult):
        return {"delta": obj.delta, "low": obj.low, "high": obj.high, "p_value": obj.p_value,
                "resamples": obj.resamples, "distinguishable": obj.distinguishable}
    if isinstance(obj, Ablation):  # its cells are the section's: name them, do not repeat them
        return {"method": obj.method, "param": obj.param, "values": obj.values, "cells": [c.label for c in obj.cells]}
    if isinstance(obj, Cell):
        out = {k: to_jsonable(v) for k, v in vars(obj).items() if k not in ("key",)}
        out["mark"] = obj.mark
        return out
    if hasattr(obj, "__dataclass_fields__"):
        return {k: to_jsonable(v) for k, v in vars(obj).items()}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def budget_text(b: dict[str, Any]) -> str:
    v = b.get("value")
    if v is None:
        return "-"
    kind = b.get("kind", "")
    if kind == "flops":
        return f"{v:.3g} FLOPs"
    if kind == "seconds":
        return f"{v:g} s"
    return f"{v:g} {kind}"
