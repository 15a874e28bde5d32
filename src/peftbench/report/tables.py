"""Comparison tables from stored runs: rich for people, dicts for --json."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from peftbench.metrics import metric_label
from peftbench.store import Costs, RunRow, Sample
from peftbench.store.result import LEGACY_METRICS

EFFICIENCY = ("tokens_per_second", "model_flops_per_second", "mfu")  # a run's training speed, where measured


def human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {suffix}{unit}".rstrip()
    return f"{n:.0f} {unit}".rstrip()


def metric_names(row: RunRow) -> list[str]:
    return list(row.run_result.metrics if row.run_result else LEGACY_METRICS)


def summary(row: RunRow) -> dict[str, Any]:
    r = row.run_result
    c = r.costs if r else Costs()
    test = (r.test if r else None) or {}
    return {
        "run_id": row.run_id, "status": row.status, "method": row.method, "model": row.model, "task": row.task,
        "lr": r.lr if r else None, "trainable_pct": c.trainable_pct, "params_trainable": c.params_trainable,
        **{f"test_{k}": test.get(k) for k in metric_names(row)},
        "train_flops": c.train_flops, "train_seconds": c.train_seconds,
        "peak_memory_bytes": c.peak_memory_bytes, "adapter_bytes": c.adapter_bytes,
        **{k: v for k in EFFICIENCY if (v := getattr(c, k)) is not None},  # runs stored before them lack them
    }


def compare_table(rows: list[RunRow], title: str = "peftbench compare") -> Table:
    metrics = next((metric_names(r) for r in rows if r.done), LEGACY_METRICS)
    table = Table(title=title)
    speed = any(r.run_result and r.run_result.costs.tokens_per_second is not None for r in rows)
    cols = ["method", "trainable %", *(f"test {metric_label(m)}" for m in metrics), "train FLOPs", "train s",
            *(["tokens/s", "MFU"] if speed else []), "peak memory", "adapter"]
    for col in cols:
        table.add_column(col, justify="left" if col == "method" else "right")
    for row in rows:
        s = summary(row)
        if not row.done:
            table.add_row(row.method, *["-"] * (len(cols) - 2), row.status)
            continue
        scores = [f"{v:.4f}" if isinstance(v := s.get(f"test_{m}"), float) else "-" for m in metrics]
        table.add_row(
            s["method"], f"{s['trainable_pct']:.3f}", *scores,
            human(s["train_flops"]), f"{s['train_seconds']:.1f}", *(speed_texts(s) if speed else []),
            human(s["peak_memory_bytes"], "B"), human(s["adapter_bytes"], "B"),
        )
    return table


def speed_texts(s: dict[str, Any]) -> list[str]:
    """Training tokens/s and MFU, "-" where not measured (nothing trained, or an older run)."""
    tps, mfu = s.get("tokens_per_second"), s.get("mfu")
    return [f"{tps:,.0f}" if tps is not None else "-", f"{100 * mfu:.3g}%" if mfu is not None else "-"]


def runs_table(rows: list[RunRow]) -> Table:
    import time

    table = Table(title="stored runs")
    for col in ("run id", "status", "method", "model", "task", "test score", "finished"):
        table.add_column(col)
    for row in rows:
        r = row.run_result
        metric = r.select_metric if r else "macro_f1"
        value = r.test_score(metric) if r else None
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.finished)) if row.finished else "-"
        table.add_row(row.run_id, row.status, row.method, row.model[-30:], row.task,
                      f"{metric_label(metric)} {value:.4f}" if value is not None else "-", when)
    return table


def samples_table(samples: list[Sample]) -> Table:
    """Test examples with the untuned and the tuned model's outputs, side by side."""
    table = Table(title="sample predictions (test)", show_lines=True)
    for col in ("input", "target", "untuned", "tuned"):
        table.add_column(col, overflow="fold", ratio=3 if col == "input" else 2)
    for s in samples:
        table.add_row(s.input, s.target, s.untuned, s.tuned)
    return table
