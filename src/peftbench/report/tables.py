"""Comparison tables from stored runs: rich for people, dicts for --json."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from peftbench.store import RunRow


def human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {suffix}{unit}".rstrip()
    return f"{n:.0f} {unit}".rstrip()


def summary(row: RunRow) -> dict[str, Any]:
    r = row.result or {}
    c = r.get("costs", {})
    t = r.get("test", {})
    return {
        "run_id": row.run_id, "status": row.status, "method": row.method, "model": row.model, "task": row.task,
        "lr": r.get("lr"), "trainable_pct": c.get("trainable_pct"), "params_trainable": c.get("params_trainable"),
        "test_accuracy": t.get("accuracy"), "test_macro_f1": t.get("macro_f1"),
        "train_flops": c.get("train_flops"), "train_seconds": c.get("train_seconds"),
        "peak_memory_bytes": c.get("peak_memory_bytes"), "adapter_bytes": c.get("adapter_bytes"),
    }


def compare_table(rows: list[RunRow], title: str = "peftbench compare") -> Table:
    table = Table(title=title)
    for col in ("method", "trainable %", "test acc", "test macro-F1", "train FLOPs", "train s", "peak memory", "adapter"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for row in rows:
        s = summary(row)
        if not row.done:
            table.add_row(row.method, *["-"] * 6, row.status)
            continue
        table.add_row(
            s["method"], f"{s['trainable_pct']:.3f}", f"{s['test_accuracy']:.4f}", f"{s['test_macro_f1']:.4f}",
            human(s["train_flops"]), f"{s['train_seconds']:.1f}", human(s["peak_memory_bytes"], "B"),
            human(s["adapter_bytes"], "B"),
        )
    return table


def runs_table(rows: list[RunRow]) -> Table:
    table = Table(title="stored runs")
    for col in ("run id", "status", "method", "model", "task", "test macro-F1", "finished"):
        table.add_column(col)
    import time

    for row in rows:
        f1 = (row.result or {}).get("test", {}).get("macro_f1")
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(row.finished)) if row.finished else "-"
        table.add_row(row.run_id, row.status, row.method, row.model[-30:], row.task,
                      f"{f1:.4f}" if f1 is not None else "-", when)
    return table
