"""Multiple choice: pick one of a fixed number of answers to a question (optionally about a text).

Rows are read and checked by choice_data; each model family encodes and scores the
choices through its strategy (choice_strategies): a classifier over the choices on
encoders, the length-normalized log-likelihood of each choice on decoders and seq2seq.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from peftbench.config import ModelSpec
from peftbench.errors import UserError
from peftbench.metrics import score_metric
from peftbench.tasks import register
from peftbench.tasks.base import Batch, ColumnRole, EvalResult, Progress, Task, metered
from peftbench.tasks.choice_data import EXCERPT, letter, read_inputs, read_splits, short
from peftbench.tasks.choice_strategies import ANSWER_CUE, CHOICE_STRATEGIES, ChoiceStrategy
from peftbench.tasks.sources import SPLITS, load_splits
from peftbench.tasks.text import (  # noqa: F401  (choice_logprobs: re-exported)
    choice_logprobs, fit_max_length, length_grouped_batches, load_text_model_config, position_limit, special_affixes,
)

DEFAULT_PROMPT = "{input}\n" + ANSWER_CUE  # {input}: [context, newline] "Question: ..."


@register
class MultipleChoice(Task):
    kind = "multiple_choice"
    builtin_data = "builtin:commonsense_qa"
    summary = (
        "Pick the answer among fixed choices (CommonsenseQA, RACE, ARC...): a choice classifier on encoders, "
        "length-normalized log-likelihood of each choice on decoders and seq2seq"
    )
    families = tuple(CHOICE_STRATEGIES.by_family)
    metrics = ("accuracy",)
    select_metric = "accuracy"
    multi_column_roles = ("choices",)  # --column choices=answer_a,answer_b,answer_c,answer_d
    column_formats = {
        "choices": '— a list of texts (JSON, also inside a CSV cell), {"label": [...], "text": [...]}, '
                   "or one column per choice: --column choices=a,b,c,d",
        "answer": "— a label (A, B, ...), a 0-based index, a choice's text, or the name of its choice column",
    }
    column_roles = (
        ColumnRole("question", "question", alternates=("question",)),
        ColumnRole("choices", "choices", alternates=("choices", "options", "endings")),
        ColumnRole("answer", "answerKey", input=False, alternates=("answerKey", "answer", "label")),
        ColumnRole("text", None, alternates=("article", "context")),  # optional context (RACE's article)
    )

    num_choices: int
    strategy: ChoiceStrategy  # per family, chosen when the model loads
    splits: dict[str, dict[str, list[Any]]]  # split -> question / context / choices / answer -> values

    # -- data ------------------------------------------------------------------------

    def load_data(self) -> None:
        dd = load_splits(self.spec.data)
        self.train_columns = tuple(dd["train"].column_names)
        self.require_columns({s: list(dd[s].column_names) for s in SPLITS}, self.checked_roles())
        self.splits, self.num_choices = read_splits(dd, {r: self.column(r) for r in self.checked_roles()})

    def predict_split(self, rows: list[dict[str, Any]], root: Path | None = None) -> dict[str, list[Any]]:
        return read_inputs(rows, self.input_columns(), self.num_choices)

    @property
    def train_size(self) -> int:
        return len(self.splits["train"]["answer"])

    # -- model -----------------------------------------------------------------------

    def load_model(self, spec: ModelSpec) -> tuple[nn.Module, Any]:
        tok, config = load_text_model_config(self, spec)  # refuses other families; pad = eos where none
        tok.padding_side = "right"
        self.tokenizer = tok
        self.strategy = CHOICE_STRATEGIES.pick(self.family)(self)
        self.max_target_length = self.strategy.target_length()
        self.max_length = fit_max_length(self.spec, spec.name, tok, config, extra=self.strategy.window_extra())
        self.context_window = position_limit(tok, config)
        model = self.strategy.load(spec)
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tok.pad_token_id
        self._specials = special_affixes(tok)
        self._encoded: dict[str, list[dict[str, Any]]] = self.shared_encodings(spec)
        return model, tok

    def prompt(self, split: str, i: int) -> str:
        """The text a decoder or seq2seq model reads before the answer (task.prompt, else DEFAULT_PROMPT)."""
        cols = self.splits[split]
        context = cols["context"][i].strip()
        question = f"Question: {cols['question'][i].strip()}"
        text = (self.spec.prompt or DEFAULT_PROMPT).replace("{input}", f"{context}\n{question}" if context else question)
        return getattr(self, "_demo_text", "") + text

    def demonstrate(self, k: int, seed: int) -> dict[str, Any]:
        """Few-shot: k solved training questions before every prompt (decoder and seq2seq scoring)."""
        if not self.strategy.reads_demonstrations:
            return super().demonstrate(k, seed)
        cols = self.splits["train"]
        picks = np.random.default_rng(seed).choice(self.train_size, size=min(k, self.train_size), replace=False)
        self._demo_text = "".join(f"{self.prompt('train', i)} {cols['choices'][i][cols['answer'][i]].strip()}\n\n" for i in picks)
        tokens = len(self.tokenizer(self._demo_text, add_special_tokens=False)["input_ids"])
        if tokens >= self.max_length:
            raise UserError(
                f"{len(picks)} demonstrations take {tokens} tokens, more than max length {self.max_length} leaves; "
                "lower the few_shot k or raise --max-length"
            )
        self.demonstrations = {"k": len(picks), "context_tokens": tokens, "max_length": self.max_length,
                               "context_window": self.context_window}
        if self.context_window:
            self.demonstrations["window_share"] = tokens / self.context_window
        self._encoded = {}
        return self.demonstrations

    def _encode(self, split: str) -> list[dict[str, Any]]:
        if split not in self._encoded:
            self._encoded[split] = self.strategy.encode(split)
        return self._encoded[split]

    @staticmethod
    def _length(row: dict[str, Any]) -> int:
        return max(len(s.get("input_ids", s.get("decoder_input_ids"))) for s in row["choices"]) + len(row.get("source", []))

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        rows = self._encode("train")
        lengths = [self._length(r) for r in rows]
        rng = np.random.default_rng(seed)
        while True:
            for idx in length_grouped_batches(lengths, batch_size, rng):
                yield self.strategy.train_batch([rows[j] for j in idx])

    def pieces(self, batch: Batch, batch_size: int) -> list[tuple[Batch, float]]:
        return self.strategy.pieces(batch, batch_size)

    # -- evaluation ------------------------------------------------------------------

    def choice_scores(
        self, model: nn.Module, split: str, batch_size: int, flops: Any = None,
        progress: Progress | None = None, limit: int | None = None,
    ) -> tuple[list[list[float]], list[float]]:
        """Per example (in split order): a score per choice, and the loss of its correct answer.

        Encoder: the classifier's logits and the cross-entropy over the choices. Decoder /
        seq2seq: each choice's mean token log-probability and the correct choice's mean
        token negative log-likelihood. A batch holds at most `batch_size` sequences.
        """
        rows = self._encode(split)
        n = len(rows) if limit is None else min(limit, len(rows))
        per_batch = max(1, batch_size // self.num_choices)
        device = next(model.parameters()).device
        order = sorted(range(n), key=lambda i: self._length(rows[i]))  # little padding
        scores: list[list[float]] = [[] for _ in range(n)]
        losses = [0.0] * n
        meter = metered(flops)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for start in range(0, n, per_batch):
                    idx = order[start : start + per_batch]
                    mean, loss = self.strategy.score(model, [rows[j] for j in idx], meter, device)
                    for j, s, l in zip(idx, mean.tolist(), loss.tolist()):
                        scores[j], losses[j] = s, l
                    if progress:
                        progress(start + len(idx), n)
        finally:
            model.train(was_training)
        return scores, losses

    def evaluate(
        self, model: nn.Module, split: str, batch_size: int, flops: Any = None,
        progress: Progress | None = None, limit: int | None = None, score: bool = True,
    ) -> EvalResult:
        scores, losses = self.choice_scores(model, split, batch_size, flops, progress, limit)
        preds = [int(np.argmax(s)) for s in scores]
        refs = self.splits[split]["answer"][: len(preds)]
        if not score:  # the loss came free with the scores; only the metrics are skipped
            return EvalResult(metrics={}, predictions=preds, references=list(refs), examples=len(preds))
        n = max(len(preds), 1)
        metrics = {"accuracy": score_metric("accuracy", list(refs), preds), "loss": sum(losses) / n}
        return EvalResult(metrics=metrics, predictions=preds, references=list(refs), examples=len(preds))

    # -- display ---------------------------------------------------------------------

    def example(self, split: str, i: int) -> tuple[str, str]:
        cols = self.splits[split]
        context = cols["context"][i]
        options = "  ".join(f"{letter(j)}) {short(t, 40)}" for j, t in enumerate(cols["choices"][i]))
        head = f"{short(context, EXCERPT // 2)} | " if context.strip() else ""
        y = cols["answer"][i]
        return f"{head}{short(cols['question'][i])} | {options}", f"{letter(y)}) {cols['choices'][i][y]}"

    def render(self, prediction: Any) -> str:
        return letter(int(prediction))

    def render_for(self, split: str, i: int, prediction: Any) -> str:
        """The chosen choice as letter, 0-based index and text: "B (1): a lake"."""
        j = int(prediction)
        return f"{letter(j)} ({j}): {self.splits[split]['choices'][i][j]}"

    def describe(self) -> dict[str, Any]:
        from peftbench.metrics.trivial import choice_baselines

        family = getattr(self, "family", None)
        if "baselines" not in self.__dict__ and hasattr(self, "splits"):  # always the same letter; uniform guessing
            train, test = self.splits["train"], self.splits["test"]
            self.baselines = choice_baselines(train["answer"], test["answer"], [len(c) for c in test["choices"]])
        return {
            "baselines": getattr(self, "baselines", None),
            **super().describe(), "num_choices": getattr(self, "num_choices", None),
            "scoring": None if family is None else CHOICE_STRATEGIES.pick(family).scoring,
            "columns": {r: self.column(r) for r in ("question", "choices", "answer", "text")},
            "sizes": {s: len(c["answer"]) for s, c in getattr(self, "splits", {}).items()},
            "max_length": getattr(self, "max_length", self.spec.max_length),
        }
