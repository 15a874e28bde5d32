"""Reading and checking multiple-choice rows.

Rows hold a question, the choices (a list of strings, or CommonsenseQA's
{"label": [...], "text": [...]}), the answer (a choice label such as "A", a 0-based
index, or the choice's text) and optionally a context (RACE's article). Every example
must have the same number of choices (AutoModelForMultipleChoice scores a fixed number).
"""

from __future__ import annotations

import ast
import json
import math
from string import ascii_uppercase
from typing import Any

import numpy as np
from datasets import DatasetDict

from peftbench.errors import UserError
from peftbench.tasks.base import PREDICT
from peftbench.tasks.sources import SPLITS

EXCERPT = 160  # characters of question / context shown by example()

Columns = dict[str, list[Any]]  # question / context / choices / answer -> values


def letter(i: int) -> str:
    return ascii_uppercase[i] if i < 26 else str(i)


def short(text: str, n: int = EXCERPT) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def read_text(value: Any, where: str, role: str, col: str | None, required: bool) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        value = ""
    if not isinstance(value, str):
        raise UserError(f"{role} column '{col}' in {where} holds {value!r}, not text; pick the right column")
    if required and not value.strip():
        raise UserError(f"{role} column '{col}' in {where} is empty; fill or drop that row")
    return value


def read_choices(value: Any, where: str, col: str | None) -> tuple[list[str], list[str]]:
    """(choice texts, their labels): a list of strings, {"label": [...], "text": [...]} or such a list as text."""
    if isinstance(value, str) and value.strip()[:1] in "[{":  # a list written into a CSV cell
        for parse in (json.loads, ast.literal_eval):
            try:
                value = parse(value)
                break
            except (ValueError, SyntaxError):
                continue
    labels: list[str] | None = None
    if isinstance(value, dict):
        texts = value.get("text")
        if value.get("label") is not None:
            labels = [str(x) for x in value["label"]]
    else:
        texts = value
    if isinstance(texts, (tuple, np.ndarray)):
        texts = list(texts)
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise UserError(
            f"choices column '{col}' in {where} holds {short(repr(value), 80)}; give a list of choice texts "
            "or an object {\"label\": [...], \"text\": [...]} (pass the right --column choices=NAME)"
        )
    if len(texts) < 2:
        raise UserError(f"{where} has {len(texts)} choice(s); multiple choice needs at least 2 per example")
    empty = next((j for j, t in enumerate(texts) if not t.strip()), None)
    if empty is not None:
        raise UserError(f"choice {empty + 1} of {where} is empty; give every choice some text")
    if labels is None or len(labels) != len(texts):
        labels = [letter(j) for j in range(len(texts))]
    return texts, labels


def read_answer(value: Any, texts: list[str], labels: list[str], where: str, col: str | None) -> int:
    """The answer's 0-based index: from a label ("A"), a 0-based index, or the choice's text."""
    if isinstance(value, float) and not math.isnan(value) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < len(texts):
            return value
    elif isinstance(value, str):
        v = value.strip()
        stripped = [t.strip() for t in texts]
        for key, candidates in ((v, labels), (v, stripped), (v.lower(), [x.lower() for x in labels]),
                                (v.lower(), [x.lower() for x in stripped])):
            if key in candidates:
                return candidates.index(key)
        if v.isdigit() and int(v) < len(texts):  # HellaSwag's "0".."3"
            return int(v)
    shown = "empty" if value is None or (isinstance(value, float) and math.isnan(value)) else repr(value)
    raise UserError(
        f"answer column '{col}' in {where} is {shown}, which matches no choice (labels {', '.join(labels)}, "
        f"an index 0-{len(texts) - 1}, or a choice's text); fix the answer or pass the right --column answer=NAME"
    )


def read_splits(dd: DatasetDict, columns: dict[str, str | None]) -> tuple[dict[str, Columns], int]:
    """Every split's checked rows, and the number of choices (train's first row sets it for all)."""
    q_col, c_col, a_col, t_col = (columns[r] for r in ("question", "choices", "answer", "text"))
    splits: dict[str, Columns] = {}
    num_choices, first = 0, ""
    for split in SPLITS:
        ds = dd[split]
        questions = ds[q_col][:]  # [:]: one Arrow read; iterating a datasets Column formats row by row
        raw_choices = choice_values(ds, c_col)
        answers = ds[a_col][:]
        contexts = ds[t_col][:] if t_col else None
        cols: Columns = {"question": [], "context": [], "choices": [], "answer": []}
        for i in range(len(ds)):
            where = f"{split} row {i + 1}"
            question = read_text(questions[i], where, "question", q_col, required=True)
            context = read_text(contexts[i], where, "context", t_col, required=False) if contexts else ""
            texts, labels = read_choices(raw_choices[i], where, c_col)
            if split == "train" and i == 0:  # train comes first: its first row sets the count
                num_choices, first = len(texts), where
            if len(texts) != num_choices:
                raise UserError(
                    f"every example needs the same number of choices: {first} has {num_choices}, "
                    f"{where} ({short(question, 60)!r}) has {len(texts)}; drop those rows or pad their "
                    "choices to one count (a multiple-choice model scores a fixed number of choices)"
                )
            cols["question"].append(question)
            cols["context"].append(context)
            cols["choices"].append(texts)
            answer = answers[i]
            if "," in c_col and isinstance(answer, str) and answer.strip() in c_col.split(","):  # names its column
                answer = c_col.split(",").index(answer.strip())
            cols["answer"].append(read_answer(answer, texts, labels, where, a_col))
        splits[split] = cols
    return splits, num_choices


def choice_values(ds: Any, col: str) -> list[Any]:
    """Each row's choices: one column's lists, or, for `--column choices=a,b,c,d`, the texts of those columns."""
    if "," not in col:
        return ds[col][:]
    cols = [ds[c][:] for c in col.split(",")]
    return [[str(c[i]) if c[i] is not None else "" for c in cols] for i in range(len(cols[0]))]


def read_inputs(rows: list[dict[str, Any]], columns: dict[str, str], num_choices: int) -> Columns:
    """New inputs (question, choices and the context where the run has one), with placeholder answers."""
    split: Columns = {"question": [], "context": [], "choices": [], "answer": []}
    for i, r in enumerate(rows):
        where = f"{PREDICT} row {i + 1}"
        texts, _ = read_choices(choice_values({c: [r.get(c)] for c in columns["choices"].split(",")}, columns["choices"])[0]
                                if "," in columns["choices"] else r.get(columns["choices"]), where, columns["choices"])
        if len(texts) != num_choices:  # the model scores a fixed number, as trained
            raise UserError(f"{where} has {len(texts)} choices; this run scores {num_choices} per question")
        split["question"].append(read_text(r.get(columns["question"]), where, "question", columns["question"], required=True))
        split["context"].append(read_text(r.get(columns["text"]), where, "context", columns["text"], required=False)
                                if "text" in columns else "")
        split["choices"].append(texts)
        split["answer"].append(0)  # a placeholder; score=False ignores it
    return split
