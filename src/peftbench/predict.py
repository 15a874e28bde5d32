"""peftbench predict: a stored run's predictions for new inputs, given as texts or as a table file.

Inputs go through the task's own encoding and decoding (Task.predict: they become a split of
their own), so a prediction is what evaluation would have produced for the same example.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from peftbench.config import parse_config
from peftbench.errors import UserError
from peftbench.export import rebuild
from peftbench.methods import get_method
from peftbench.runner import excerpt, make_task, pick_device
from peftbench.store import RunRow, Store
from peftbench.tasks.sources import read_file


def input_columns(row: RunRow) -> dict[str, str]:
    """Role -> column the run's task reads, from its config alone (no data or model loaded)."""
    cfg = parse_config(row.config)
    return make_task(cfg, get_method(cfg.method.name)(cfg.method.params)).input_columns()


def read_inputs(row: RunRow, texts: list[str], file: Path | None) -> tuple[list[dict[str, Any]], Path | None]:
    """Rows keyed by column name, and the folder relative paths in them are read from (the file's)."""
    if texts and file is not None:
        raise UserError("give texts or --file, not both")
    if file is not None:
        rows = read_file(file).to_list()  # refuses a missing file or an unknown type in one line
        if not rows:
            raise UserError(f"input file '{file}' has no rows; give at least one input")
        return rows, file.parent
    if not texts:
        raise UserError("nothing to predict; give texts (peftbench predict RUN_ID 'some text') or --file F")
    blank = next((i for i, t in enumerate(texts, 1) if not t.strip()), None)
    if blank is not None:
        raise UserError(f"input text {blank} is empty; give some text")
    cols = input_columns(row)
    if len(cols) > 1:
        raise UserError(
            f"task '{row.task}' reads several columns ({', '.join(cols.values())}); give them in a file with --file"
        )
    return [{next(iter(cols.values())): t} for t in texts], None


def predict(row: RunRow, inputs: list[dict[str, Any]], root: Path | None = None) -> list[str]:
    """The run's rendered predictions for `inputs` (rows keyed by the column names its task reads):
    label names, generated text, the chosen choice's text."""
    if not row.done:
        raise UserError(f"run {row.run_id} is {row.status}, not done; predict with a finished run (see: peftbench results)")
    if not inputs:
        raise UserError("nothing to predict; give at least one input")
    task, model, method, _ = rebuild(row)
    method.prepare_task(task)  # few-shot demonstrations go before every prompt, as in the run
    given = {k for r in inputs for k in r}
    for role, col in task.input_columns().items():
        if col not in given:
            raise UserError(
                f"the inputs have no column '{col}' (the run's {role.replace('_', ' ')} column); "
                f"columns given: {', '.join(sorted(given)) or 'none'}"
            )
    device = pick_device()
    if next(model.parameters()).device.type != device.type:  # a 4-bit model is placed when loaded
        model.to(device)
    return task.predict(model, inputs, parse_config(row.config).train.eval_batch_size, root)


def _shown(value: Any) -> str:
    return excerpt(value if isinstance(value, str) else json.dumps(value, default=str), 120)


def predict_command(run_id: str, texts: list[str], file: Path | None, out: Path | None, results_dir: Path,
                    console: Any) -> None:
    """The CLI's work: find the run, read the inputs, predict, print a table, optionally write JSONL."""
    from rich.table import Table
    from rich.text import Text

    with Store.open_existing(results_dir) as store:
        row = store.get(run_id)
    if not row.done:
        raise UserError(f"run {row.run_id} is {row.status}, not done; predict with a finished run (see: peftbench results)")
    rows, root = read_inputs(row, texts, file)
    preds = predict(row, rows, root)
    main = next(iter(input_columns(row).values()))
    table = Table(title=f"predictions of run {row.run_id} ({row.method}, {row.task})")
    table.add_column("input")
    table.add_column("prediction")
    for r, p in zip(rows, preds):
        table.add_row(Text(_shown(r.get(main))), Text(p))  # Text: brackets in inputs are not markup
    console.print(table)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps({**r, "prediction": p}, default=str) + "\n" for r, p in zip(rows, preds)))
        console.print(f"wrote {len(preds)} predictions to {out}", highlight=False)
