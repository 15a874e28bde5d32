"""Summarization (dialogues, documents) and table-to-text, scored with ROUGE on generated text."""

from __future__ import annotations

import csv
import io
from typing import Any

from datasets import DatasetDict

from peftbench.errors import UserError
from peftbench.tasks import register
from peftbench.tasks.base import ColumnRole
from peftbench.tasks.generation import Example, GenerationTask
from peftbench.metrics import ROUGE_KEYS, rouge

# Several references per example only where asked (--column references=NAME) or built in (DialogSum test);
# a split without them is scored against its target.
REFERENCES = ColumnRole("references", None, input=False, checked=False)


@register
class Summarization(GenerationTask):
    kind = "summarization"
    builtin_data = "builtin:dialogsum"
    summary = "Write a summary of a text (DialogSum, SAMSum); ROUGE-1/2/L/Lsum on generated text"
    metrics = ROUGE_KEYS
    column_roles = (ColumnRole("text", "dialogue"), ColumnRole("target", "summary", input=False), REFERENCES)
    default_prompt = "Summarize the dialogue.\n{input}\nSummary:"

    def source(self, value: Any, split: str, row: int) -> str:
        if not isinstance(value, str):
            raise UserError(
                f"text column '{self.column('text')}' in {split} row {row + 1} is not text ({type(value).__name__}); "
                "pick the text column with --text-column"
            )
        return value

    def read(self, dd: DatasetDict, split: str) -> list[Example]:
        sources = [self.source(v, split, i) for i, v in enumerate(self.text_values(dd, split, "text"))]
        targets = self.text_values(dd, split, "target")
        bad = next((i for i, t in enumerate(targets) if not isinstance(t, str)), None)
        if bad is not None:
            raise UserError(f"target column '{self.column('target')}' in {split} row {bad + 1} is not text; "
                            "pick it with --column target=NAME")
        return [Example(s, t, r) for s, t, r in zip(sources, targets, self.references(dd, split, targets))]

    def score(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        return rouge(predictions, references)


def _cell(v: Any) -> str:
    return "" if v is None else " ".join(str(v).split()).replace("|", "/")


def linearize_table(table: Any) -> str:
    """A table as text, one row per line, cells separated by " | ", header first.

    Accepts a list of rows (the first is the header), a list of records (dicts: their
    keys are the header), a dict of columns, or CSV text. Whitespace inside a cell is
    collapsed and "|" becomes "/", so the separators stay unambiguous.
    """
    if isinstance(table, str):
        rows: list[list[Any]] = [r for r in csv.reader(io.StringIO(table.strip())) if r]
    elif isinstance(table, dict):
        header = list(table)
        columns = [v if isinstance(v, list) else [v] for v in table.values()]
        rows = [header] + [list(r) for r in zip(*columns)]
    elif isinstance(table, list) and table and all(isinstance(r, dict) for r in table):
        header = list(dict.fromkeys(k for r in table for k in r))
        rows = [header] + [[r.get(k) for k in header] for r in table]
    elif isinstance(table, list) and table and all(isinstance(r, list) for r in table):
        rows = table
    else:
        raise ValueError("not a table")
    if not rows:
        raise ValueError("empty table")
    return "\n".join(" | ".join(_cell(c) for c in r) for r in rows)


@register
class TableToText(Summarization):
    kind = "table_to_text"
    builtin_data = None
    summary = "Write a title or summary of a table (linearized row by row); ROUGE on generated text"
    column_roles = (ColumnRole("text", "table"), ColumnRole("target", "target", input=False), REFERENCES)
    default_prompt = "Describe the table in one sentence.\n{input}\nDescription:"

    def source(self, value: Any, split: str, row: int) -> str:
        try:
            return linearize_table(value)
        except ValueError:
            raise UserError(
                f"table column '{self.column('text')}' in {split} row {row + 1} is not a table "
                f"(got {str(value)[:60]!r}); give a list of rows, a list of records, a dict of columns or CSV text"
            ) from None
