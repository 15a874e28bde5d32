"""Distractor generation: article + question + answer -> plausible wrong options (BLEU, ROUGE-L)."""

from __future__ import annotations

from typing import Any

from datasets import DatasetDict

from peftbench.errors import UserError
from peftbench.tasks import register
from peftbench.tasks.base import ColumnRole
from peftbench.tasks.generation import Example, GenerationTask
from peftbench.metrics import bleu, rouge

SEPARATOR = " ; "  # between distractors in one target, as generated


@register
class Distractors(GenerationTask):
    kind = "distractors"
    summary = "Write wrong options for a multiple-choice question (RACE-style); BLEU-1..4 and ROUGE-L"
    metrics = ("bleu1", "bleu2", "bleu3", "bleu4", "rougeL")
    column_roles = (ColumnRole("text", "article"), ColumnRole("question", "question"), ColumnRole("answer", "answer"),
                    ColumnRole("target", "distractors", input=False))
    default_prompt = "{input}\nWrong options:"

    def read(self, dd: DatasetDict, split: str) -> list[Example]:
        articles = self.text_values(dd, split, "text")
        questions = self.text_values(dd, split, "question")
        answers = self.text_values(dd, split, "answer")
        out = []
        for i, d in enumerate(self.text_values(dd, split, "target")):
            target = self.join(d, split, i)
            source = f"Article: {articles[i]}\nQuestion: {questions[i]}\nAnswer: {answers[i]}"
            out.append(Example(source, target, [target]))
        return out

    def join(self, value: Any, split: str, row: int) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and all(isinstance(v, str) and v.strip() for v in value):
            return SEPARATOR.join(v.strip() for v in value)
        raise UserError(
            f"distractors column '{self.column('target')}' in {split} row {row + 1} must be a list of "
            f"non-empty strings or one string (got {str(value)[:60]!r}); fix that row"
        )

    def score(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]:
        return {**bleu(predictions, references), "rougeL": rouge(predictions, references)["rougeL"]}
