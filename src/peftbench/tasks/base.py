"""The Task interface: data, the model it needs, batching, metrics and sample outputs.

A task states the model families it can use; `load_model` refuses the others with one
line, and sets what methods need to know: the family, peft's task type (None where peft
has none) and the new head modules that every method but `base` trains.
"""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from peftbench.config import ModelSpec, TaskSpec
from peftbench.errors import UserError
from peftbench.measure.flops import FlopMeter
from peftbench.tasks.families import LM_FAMILIES
from peftbench.train.precision import autocast

Batch = dict[str, torch.Tensor]
Progress = Callable[[int, int], None]
PREDICT = "predict"  # the split new inputs become while Task.predict scores them


def metered(flops: FlopMeter | None) -> FlopMeter:
    """The meter to run passes through: the caller's, else one that counts nothing."""
    return flops if flops is not None else FlopMeter(enabled=False)


@dataclass(frozen=True)
class ColumnRole:
    """A part of a row a task reads, and the column it comes from unless the config names one."""

    name: str  # the role (`--column NAME=...` and the config's <name>_column)
    default: str | None = None  # the column when neither config nor built-in data names one; None: optional
    input: bool = True  # read from new inputs by predict (not a label or target)
    checked: bool = True  # every split must have the column, when there is one
    alternates: tuple[str, ...] = ()  # columns looked for in train, in order, before the default


@dataclass
class EvalResult:
    metrics: dict[str, float]
    predictions: list[Any] = field(default_factory=list)  # in the split's order
    references: list[Any] = field(default_factory=list)
    examples: int = 0


class Task(ABC):
    kind: ClassVar[str]
    summary: ClassVar[str] = ""
    families: ClassVar[tuple[str, ...]]  # model families it can use (models.FAMILIES)
    metrics: ClassVar[tuple[str, ...]]  # headline metrics, as evaluate reports them
    select_metric: ClassVar[str]  # default validation metric for checkpoint selection
    builtin_data: ClassVar[str | None] = None  # a built-in dataset of this kind, named when no data is given
    column_roles: ClassVar[tuple[ColumnRole, ...]] = ()  # what a row holds; the first input is the main one
    default_columns: ClassVar[dict[str, str]] = {}  # role -> column name when neither config nor data says (from column_roles)
    lm_scoring: bool = False  # set by the runner for in-context methods: no new head, score with the LM
    train_columns: tuple[str, ...] = ()  # the train split's columns, where a task looks for a role's alternates
    column_formats: ClassVar[dict[str, str]] = {}  # role -> what its values may look like (peftbench tasks)
    multi_column_roles: ClassVar[tuple[str, ...]] = ()  # roles that may read several columns: --column choices=a,b,c

    # Set by load_model:
    family: str
    peft_task_type: str | None
    head_modules: list[str]

    truncated: dict[str, Any] | None = None  # the truncation report (tasks/truncation.py), once measured
    truncation_key: str = ""
    precision: str = "fp32"  # set by the runner (train/precision.py): evaluation runs under its autocast

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "evaluate" in cls.__dict__:  # every caller (validation, test, latency, predict) gets the autocast
            cls.evaluate = _under_autocast(cls.__dict__["evaluate"])  # type: ignore[method-assign]
        if "default_columns" not in cls.__dict__:
            cls.default_columns = {r.name: r.default for r in cls.column_roles if r.default is not None}

    def __init__(self, spec: TaskSpec, model_kwargs: dict[str, Any] | None = None) -> None:
        self.spec = spec
        self.case_matched: dict[str, str] = {}  # role -> the column used, found by a case-insensitive match
        self.notes: list[str] = []  # what the user should know about how the data was read (logged once)
        self.head_modules = []
        self.model_kwargs = model_kwargs or {}  # the method's extra from_pretrained arguments (QLoRA's 4-bit)

    @abstractmethod
    def load_data(self) -> None:
        """Read and validate every split; raise UserError on bad data."""

    @abstractmethod
    def load_model(self, spec: ModelSpec) -> tuple[nn.Module, Any]:
        """Base model (with the task's head) and its tokenizer or processor."""

    @abstractmethod
    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        """Endless shuffled training batches, reshuffled each epoch from the seed."""

    def pieces(self, batch: Batch, batch_size: int) -> list[tuple[Batch, float]]:
        """A training batch as the forward passes that run it, each with its share of the batch's mean
        loss: one pass, unless a task's examples are several sequences each (multiple choice)."""
        return [(batch, 1.0)]

    @abstractmethod
    def evaluate(
        self, model: nn.Module, split: str, batch_size: int, flops: Any = None,
        progress: Progress | None = None, limit: int | None = None, score: bool = True,
    ) -> EvalResult:
        """Score a split (its first `limit` examples if given); forward FLOPs go to `flops`.

        score=False: predictions only, no loss and no metrics (metrics {}): new inputs have no
        targets, and latency should time what a user waits for, not the scoring."""

    def shared_encodings(self, model: ModelSpec) -> dict[str, Any]:
        """split -> encoded rows, shared with every task of this process that encodes alike (reuse.py):
        the same task spec, data files, model (its tokenizer) and scoring. Few-shot prompts get their own."""
        from peftbench import reuse

        return reuse.encodings(self.kind, self.spec.model_dump(mode="json"), reuse.data_stamp(self.spec.data),
                               model.model_dump(mode="json"), self.lm_scoring, getattr(self, "family", None))

    def cut_lengths(self) -> tuple[dict[str, list[int]], int, int] | None:
        """Per split, each example's untruncated token count of the part max_length cuts; the budget it is
        cut at; the tokens the rest of the input takes (tasks/truncation.py). None: not measured."""
        return None

    def truncation(self, model: ModelSpec) -> dict[str, Any] | None:
        """The truncation report (shares cut per split, a suggested max_length), measured once per process."""
        from peftbench import reuse
        from peftbench.tasks import truncation

        key = reuse.key(self.kind, self.spec.model_dump(mode="json"), reuse.data_stamp(self.spec.data),
                        model.model_dump(mode="json"), self.lm_scoring, getattr(self, "demonstrations", None))
        limit = getattr(self, "context_window", None) or getattr(self, "model_limit", None)
        self.truncated = reuse.memo("truncation", key, lambda: truncation.report(
            self.cut_lengths(), limit, getattr(self, "max_length", None) or self.spec.max_length))
        self.truncation_key = key
        return self.truncated

    def input_columns(self) -> dict[str, str]:
        """Role -> column name of what a prediction reads; the first is the main input."""
        cols = {r.name: self.column(r.name) for r in self.column_roles if r.input}
        if not cols:
            raise UserError(f"task '{self.kind}' cannot predict new inputs")
        return {role: col for role, col in cols.items() if col is not None}

    def predict_split(self, rows: list[dict[str, Any]], root: Path | None = None) -> Any:
        """New inputs (rows keyed by column name) as one split of this task's data, with placeholder
        labels or targets; bad rows are refused as bad data is. root: where relative paths start."""
        raise UserError(f"task '{self.kind}' cannot predict new inputs")

    def predict(self, model: nn.Module, rows: list[dict[str, Any]], batch_size: int,
                root: Path | None = None) -> list[str]:
        """Rendered predictions for new inputs, through the same encoding and decoding as evaluate."""
        if not rows:
            raise UserError("no inputs to predict; give texts or a file with at least one row")
        splits = self.splits  # type: ignore[attr-defined]  (every task keeps its data by split)
        splits[PREDICT] = self.predict_split(rows, root)
        try:
            preds = self.evaluate(model, PREDICT, batch_size, score=False).predictions
            return [self.render_for(PREDICT, i, p) for i, p in enumerate(preds)]
        finally:
            splits.pop(PREDICT, None)
            getattr(self, "_encoded", {}).pop(PREDICT, None)

    def render_for(self, split: str, i: int, prediction: Any) -> str:
        """Example i's prediction as text; tasks whose answer depends on the example override."""
        return self.render(prediction)

    @property
    @abstractmethod
    def train_size(self) -> int: ...

    def split_size(self, split: str) -> int:
        return int(self.describe().get("sizes", {}).get(split, 0))

    @abstractmethod
    def example(self, split: str, i: int) -> tuple[str, str]:
        """Example i of a split as (input excerpt, target) text, for sample predictions."""

    def render(self, prediction: Any) -> str:
        """A prediction as text (a label index becomes its name, etc.)."""
        return str(prediction)

    def batch_tokens(self, batch: Batch) -> int:
        """Tokens a training batch feeds the model (the token budget's unit)."""
        if "attention_mask" in batch:
            mask = batch["attention_mask"]  # 4D: a packed batch's (train/packing.py)
            n = int(mask.sum()) if mask.dim() != 4 else int((mask[:, 0].diagonal(dim1=-2, dim2=-1) == 0).sum())
        else:
            n = batch["input_ids"].numel() if "input_ids" in batch else next(iter(batch.values())).shape[0]
        if "decoder_attention_mask" in batch:
            n += int(batch["decoder_attention_mask"].sum())
        elif "labels" in batch and batch["labels"].ndim == 2 and "decoder_input_ids" not in batch and self._labels_feed_decoder:
            n += int((batch["labels"] != -100).sum())
        return n

    @property
    def _labels_feed_decoder(self) -> bool:
        """An encoder-decoder reads its labels (shifted right) as decoder input: they are tokens fed."""
        lm = LM_FAMILIES.get(getattr(self, "family", ""))
        return lm is not None and lm.encoder_decoder

    def demonstrate(self, k: int, seed: int) -> dict[str, Any]:
        """Few-shot prompting: put k training examples before every input; returns context stats."""
        raise UserError(
            f"task '{self.kind}' on {getattr(self, 'family', 'this')} models has no in-context path; "
            "few_shot works with decoder or seq2seq models on classification, summarization, "
            "table_to_text, distractors and multiple_choice"
        )

    def codec_demonstrations(self, codec: Any, pairs: list[tuple[str, str]]) -> dict[str, Any]:
        tokens = codec.set_demonstrations(pairs)
        self.demonstrations = {"k": len(pairs), "context_tokens": tokens, "max_length": codec.max_length,
                               "context_window": getattr(self, "context_window", None)}
        if self.demonstrations["context_window"]:
            self.demonstrations["window_share"] = tokens / self.demonstrations["context_window"]
        self._encoded = {}  # prompts change
        return self.demonstrations

    def column(self, role: str) -> str | None:
        """The column that plays `role`: the config's, else the built-in dataset's, else the first of the
        role's alternates that train has, else the task default."""
        from peftbench.tasks.sources import builtin_columns

        if role in self.case_matched:
            return self.case_matched[role]
        explicit = getattr(self.spec.data, f"{role}_column") or builtin_columns(self.spec.data).get(role)
        if explicit:
            return explicit
        alternates = next((r.alternates for r in self.column_roles if r.name == role), ())
        return next((c for c in alternates if c in self.train_columns), None) or self.default_columns.get(role)

    def checked_roles(self) -> list[str]:
        return [r.name for r in self.column_roles if r.checked]

    @classmethod
    def column_docs(cls) -> dict[str, str]:
        """Role -> the column(s) it is read from by default, as `peftbench tasks` lists them."""
        return {r.name: " ".join(filter(None, [" / ".join(r.alternates) or r.default, "(optional)" * (r.default is None),
                                               cls.column_formats.get(r.name, "")]))
                for r in cls.column_roles}

    def require_columns(self, columns: dict[str, list[str]], roles: list[str]) -> None:
        """Refuse splits that lack a role's column, every missing one in one message. `columns`: split -> its
        column names. A column that differs only in case from the one asked for is used, with a note."""
        self.require_distinct_columns()
        missing: list[tuple[str, str, list[str]]] = []  # role, column, splits without it
        for role in roles:
            col = self.column(role)
            for name in (col.split(",") if col and role in self.multi_column_roles else [col]) if col else []:
                absent = [s for s, cols in columns.items() if name not in cols]
                if not absent:
                    continue
                same = {next((c for c in cols if c.lower() == name.lower()), None) for cols in columns.values()}
                if len(same) == 1 and None not in same and "," not in col:  # every split has it, in another case
                    actual = same.pop()
                    self.case_matched[role] = actual
                    self.notes.append(f"{role.replace('_', ' ')} column '{name}' not found; using '{actual}', which differs in case")
                    continue
                missing.append((role, name, absent))
        if not missing:
            return
        parts = [f"{role.replace('_', ' ')} column '{name}' is missing from the {', '.join(splits)} split{'s' * (len(splits) > 1)}"
                 for role, name, splits in missing]
        flags = " and ".join(dict.fromkeys(self.column_flag(role) for role, _, _ in missing))
        there = next(cols for s, cols in columns.items() if s in missing[0][2])
        raise UserError(f"{'; '.join(parts)} (columns: {', '.join(there)}); pass {flags}")

    @staticmethod
    def column_flag(role: str) -> str:
        return f"--{role.replace('_', '-')}-column NAME" if role in ("text", "label", "text_pair") else f"--column {role}=NAME"

    def require_distinct_columns(self) -> None:
        """Refuse two roles read from one column: `--text-column label` would train on the answers."""
        seen: dict[str, str] = {}
        for r in self.column_roles:
            col = self.column(r.name)
            if col is not None and seen.setdefault(col, r.name) != r.name:
                raise UserError(f"the {seen[col]} and {r.name} roles both read column '{col}'; give each role its own "
                                f"column (--column {seen[col]}=NAME or --column {r.name}=NAME)")

    def check_family(self, family: str, model_name: str) -> None:
        if family not in self.families:
            raise UserError(
                f"task '{self.kind}' cannot use model '{model_name}' ({family} family); "
                f"it takes {' or '.join(self.families)} models"
            )
        self.family = family

    def describe(self) -> dict[str, Any]:
        out = {"kind": self.kind, "family": getattr(self, "family", None)}
        if getattr(self, "demonstrations", None):
            out["demonstrations"] = self.demonstrations
        if getattr(self, "truncated", None):
            out["truncation"] = self.truncated
        return out


def _under_autocast(evaluate: Callable[..., EvalResult]) -> Callable[..., EvalResult]:
    @functools.wraps(evaluate)
    def wrapper(self: Task, model: nn.Module, *args: Any, **kwargs: Any) -> EvalResult:
        if self.precision == "fp32":
            return evaluate(self, model, *args, **kwargs)
        with autocast(self.precision, next(model.parameters()).device.type):
            return evaluate(self, model, *args, **kwargs)

    return wrapper
