"""Text-to-text tasks on decoder-only and seq2seq models.

Decoders see prompt + target as one sequence, with the loss on target tokens only;
seq2seq models read the prompt and learn to write the target. Evaluation generates for
real (never a teacher-forced argmax) and scores the decoded text; the teacher-forced
loss is reported beside it.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from torch import nn
from transformers import LogitsProcessorList, RepetitionPenaltyLogitsProcessor

from peftbench import models
from peftbench.config import GenerationSpec, ModelSpec
from peftbench.errors import UserError
from peftbench.tasks.base import PREDICT, Batch, ColumnRole, EvalResult, Progress, Task, metered
from peftbench.tasks.families import LM_FAMILIES
from peftbench.tasks.sources import SPLITS, load_splits
from peftbench.tasks.text import endless_batches, fit_max_length, load_text_model_config, pad, position_limit, special_affixes
from peftbench.train import lm_loss, packing, prefill_loss


class PairCodec:
    """Turns (source, target) text into model inputs for one family, and generates."""

    def __init__(self, tok: Any, family: str, template: str, max_length: int, max_target_length: int) -> None:
        self.tok, self.family = tok, family
        self.seq2seq = LM_FAMILIES[family].encoder_decoder
        pre, post = template.split("{input}")
        self.pre = tok(pre, add_special_tokens=False)["input_ids"] if pre else []
        self.post = tok(post, add_special_tokens=False)["input_ids"] if post else []
        self.prefix, suffix = special_affixes(tok)
        self.suffix = suffix if self.seq2seq else []  # a decoder's prompt must not end the sequence
        self.max_length, self.max_target_length = max_length, max_target_length
        self.template = template
        self.demos: list[int] = []  # in-context demonstrations, before every prompt (few_shot)

    def set_demonstrations(self, pairs: list[tuple[str, str]]) -> int:
        """Put solved examples before every prompt; returns the tokens they take."""
        text = "".join(self.template.replace("{input}", s) + " " + t + "\n\n" for s, t in pairs)
        self.demos = self.tok(text, add_special_tokens=False)["input_ids"]
        fixed = len(self.prefix) + len(self.demos) + len(self.pre) + len(self.post) + len(self.suffix)
        if fixed >= self.max_length:
            raise UserError(
                f"{len(pairs)} demonstrations take {len(self.demos)} tokens, more than max length "
                f"{self.max_length} leaves; lower the few_shot k or raise --max-length"
            )
        return len(self.demos)

    def source_budget(self) -> int:
        """Tokens left for the source once the template, demonstrations and special tokens are in."""
        return self.max_length - len(self.prefix) - len(self.demos) - len(self.pre) - len(self.post) - len(self.suffix)

    def source_lengths(self, sources: list[str]) -> list[int]:
        """Untruncated token counts of sources, to compare with source_budget (truncation.py)."""
        return [len(ids) for ids in self.tok(sources, add_special_tokens=False)["input_ids"]]

    def prompt(self, source: str) -> list[int]:
        """Template around the source; the source is what truncation cuts (its end)."""
        budget = self.source_budget()
        if budget < 1:
            raise UserError(f"the prompt template alone takes more than max length {self.max_length}; shorten it")
        src = self.tok(source, add_special_tokens=False, truncation=True, max_length=budget)["input_ids"]
        return self.prefix + self.demos + self.pre + src + self.post + self.suffix

    def target(self, text: str) -> list[int]:
        ids = self.tok(text, add_special_tokens=False, truncation=True, max_length=self.max_target_length - 1)["input_ids"]
        return ids + [self.tok.eos_token_id]

    def train_row(self, source: str, target: str) -> dict[str, list[int]]:
        p, t = self.prompt(source), self.target(target)
        if self.seq2seq:
            return {"input_ids": p, "labels": t}
        return {"input_ids": p + t, "labels": [-100] * len(p) + t}

    def split_row(self, row: dict[str, list[int]]) -> tuple[list[int], list[int]]:
        """A train_row's (prompt, target)."""
        target = [t for t in row["labels"] if t != lm_loss.IGNORE]
        return (row["input_ids"] if self.seq2seq else row["input_ids"][: len(row["input_ids"]) - len(target)]), target

    def collate(self, rows: list[dict[str, list[int]]], left: bool = False) -> Batch:
        """Pad to a multiple of 8 (few shapes for the FLOP cache); labels pad with -100."""
        ids = [r["input_ids"] for r in rows]
        batch = {"input_ids": pad(ids, self.tok.pad_token_id, left), "attention_mask": pad([[1] * len(s) for s in ids], 0, left)}
        if "labels" in rows[0]:
            batch["labels"] = pad([r["labels"] for r in rows], -100, left)
        return batch

    def generate(self, model: nn.Module, prompts: list[list[int]], gen: GenerationSpec, flops: Any = None,
                 max_new_tokens: int | None = None) -> list[str]:
        return self._generate(model, self._prompt_batch(model, prompts), gen, flops, max_new_tokens)

    def generate_scored(self, model: nn.Module, prompts: list[list[int]], targets: list[list[int]], gen: GenerationSpec,
                        flops: Any = None) -> tuple[list[str], tuple[torch.Tensor, torch.Tensor] | None]:
        """Generated text, and each target's teacher-forced (summed NLL, token count) after its prompt, taken
        from generate's own prefill where that applies (train/prefill_loss.py); None: run the loss pass apart."""
        batch = self._prompt_batch(model, prompts)
        share = prefill_loss.applies(model, gen.num_beams)
        with prefill_loss.capture(model, batch["input_ids"].shape[1], share) as prefill:
            texts = self._generate(model, batch, gen, flops, None)
        if not prefill.ready:
            return texts, None
        return texts, prefill_loss.target_nll(model, prefill, batch["attention_mask"], targets, self.tok.pad_token_id,
                                              metered(flops))

    def _prompt_batch(self, model: nn.Module, prompts: list[list[int]]) -> Batch:
        device = next(model.parameters()).device
        return {k: v.to(device) for k, v in self.collate([{"input_ids": p} for p in prompts], left=not self.seq2seq).items()}

    def _generate(self, model: nn.Module, batch: Batch, gen: GenerationSpec, flops: Any,
                  max_new_tokens: int | None) -> list[str]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens or gen.max_new_tokens, "num_beams": gen.num_beams, "do_sample": gen.do_sample,
            "no_repeat_ngram_size": gen.no_repeat_ngram_size,
            "pad_token_id": self.tok.pad_token_id, "eos_token_id": self.tok.eos_token_id,
        }
        if gen.repetition_penalty != 1.0:
            # On generated tokens only: transformers' built-in penalty also hits a decoder's prompt,
            # which would stop a summary from reusing the names and words of its source.
            skip = None if self.seq2seq else batch["input_ids"].shape[1]
            kwargs["logits_processor"] = LogitsProcessorList(
                [RepetitionPenaltyLogitsProcessor(gen.repetition_penalty, prompt_ignore_length=skip)]
            )
        if gen.do_sample:
            kwargs.update(temperature=gen.temperature, top_k=gen.top_k, top_p=gen.top_p)
        else:  # the model's own generation_config may hold sampling settings; greedy/beam must not warn
            kwargs.update(temperature=None, top_k=None, top_p=None)
        out = metered(flops).generate(model, batch, **kwargs)
        new = out if self.seq2seq else out[:, batch["input_ids"].shape[1] :]
        return [t.strip() for t in self.tok.batch_decode(new, skip_special_tokens=True)]


@dataclass
class Example:
    source: str  # the text the template wraps
    target: str  # what training teaches
    references: list[str]  # what the generated text is scored against (the target, or several)


class GenerationTask(Task):
    """A task whose output is text: subclasses read their rows and score the decoded text."""

    families = tuple(LM_FAMILIES)
    select_metric = "rougeL"
    default_prompt: ClassVar[str] = "{input}"
    column_roles = (ColumnRole("text"), ColumnRole("target", input=False))

    splits: dict[str, list[Example]]

    @abstractmethod
    def read(self, dd: DatasetDict, split: str) -> list[Example]:
        """Examples of one split; raise UserError on bad rows."""

    @abstractmethod
    def score(self, predictions: list[str], references: list[list[str]]) -> dict[str, float]: ...

    def load_data(self) -> None:
        dd = load_splits(self.spec.data)
        self.require_columns({s: dd[s].column_names for s in SPLITS}, self.checked_roles())
        self.splits = {s: self.read(dd, s) for s in SPLITS}

    def predict_split(self, rows: list[dict[str, Any]], root: Path | None = None) -> list[Example]:
        """Read as a data split is (tables linearized, prompts built), with a placeholder target."""
        cols = list(self.input_columns().values())
        ds = Dataset.from_list([{**{c: r.get(c) for c in cols}, self.column("target"): "-"} for r in rows])
        return self.read(DatasetDict({PREDICT: ds}), PREDICT)

    def text_values(self, dd: DatasetDict, split: str, role: str) -> list[Any]:
        col = self.column(role)
        values = dd[split][col][:]  # one Arrow read, not row by row
        bad = next((i for i, v in enumerate(values) if v is None or (isinstance(v, str) and not v.strip())), None)
        if bad is not None:
            raise UserError(f"{role} column '{col}' in {split} row {bad + 1} is empty; fill or drop that row")
        return values

    def references(self, dd: DatasetDict, split: str, targets: list[str]) -> list[list[str]]:
        """Each example's references: the references column where the split has it, else its target."""
        col = self.column("references")
        if col is None or col not in dd[split].column_names:
            return [[t] for t in targets]
        out = []
        for i, (t, refs) in enumerate(zip(targets, dd[split][col][:])):
            refs = [refs] if isinstance(refs, str) else [r for r in (refs or []) if isinstance(r, str) and r.strip()]
            out.append(refs or [t])
        return out

    @property
    def train_size(self) -> int:
        return len(self.splits["train"])

    def load_model(self, spec: ModelSpec) -> tuple[nn.Module, Any]:
        tok, config = load_text_model_config(self, spec)
        lm = LM_FAMILIES[self.family]
        extra = 0 if lm.encoder_decoder else self.spec.max_target_length  # a decoder's target shares its window
        max_length = fit_max_length(self.spec, spec.name, tok, config, extra)
        self.context_window = position_limit(tok, config)
        model = models.load_pretrained(lm.auto, spec, **self.model_kwargs)
        model.config.pad_token_id = tok.pad_token_id
        self.peft_task_type = lm.peft_task_type
        self.head_modules = []  # the LM head is the model's own
        self.tokenizer = tok
        self.codec = PairCodec(tok, self.family, self.spec.prompt or self.default_prompt, max_length,
                               self.spec.max_target_length)
        self._encoded: dict[str, list[dict[str, list[int]]]] = self.shared_encodings(spec)
        return model, tok

    def _encode(self, split: str) -> list[dict[str, list[int]]]:
        if split not in self._encoded:
            self._encoded[split] = [self.codec.train_row(e.source, e.target) for e in self.splits[split]]
        return self._encoded[split]

    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        collate = self.codec.collate
        if getattr(self, "packing", False):  # train.packing: the same examples, in as few rows as fit the window
            window = self.codec.max_length + self.codec.max_target_length
            collate = partial(packing.pack, capacity=window, pad_id=self.tokenizer.pad_token_id)
        return endless_batches(self._encode("train"), batch_size, seed, collate)

    @torch.inference_mode()
    def evaluate(
        self, model: nn.Module, split: str, batch_size: int, flops: Any = None,
        progress: Progress | None = None, limit: int | None = None, score: bool = True,
    ) -> EvalResult:
        meter = metered(flops)
        examples = self.splits[split][:limit]
        rows = self._encode(split)[: len(examples)]
        prompts = [self.codec.prompt(e.source) for e in examples]
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        # By prompt length: generation pads the prompts (and new inputs, without targets, batch alike).
        order = sorted(range(len(examples)), key=lambda i: len(prompts[i]))
        loss_sum, preds = 0.0, [""] * len(examples)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            batch_prompts = [prompts[j] for j in idx]
            # rows hold prompt and target: the target's loss can come from generation's own prefill
            parts = [self.codec.split_row(rows[j]) for j in idx]
            shared = score and all(p == prompts[j] for (p, _), j in zip(parts, idx))
            texts, scored = (self.codec.generate_scored(model, batch_prompts, [t for _, t in parts], self.spec.generation, meter)
                             if shared else (self.codec.generate(model, batch_prompts, self.spec.generation, meter), None))
            if scored is not None:
                loss_sum += float(scored[0] / scored[1]) * len(idx)
            elif score:  # the teacher-forced loss: a pass of its own
                batch = {k: v.to(device) for k, v in self.codec.collate([rows[j] for j in idx]).items()}
                with meter.count(batch):
                    loss_sum += float(lm_loss.loss(model, batch)) * len(idx)
            for j, text in zip(idx, texts):
                preds[j] = text
            if progress:
                progress(i + len(idx), len(examples))
        model.train(was_training)
        refs = [e.references for e in examples]
        if not score:
            return EvalResult(metrics={}, predictions=preds, references=refs, examples=len(examples))
        metrics = self.score(preds, refs)
        metrics["loss"] = loss_sum / max(len(examples), 1)
        return EvalResult(metrics=metrics, predictions=preds, references=refs, examples=len(examples))

    def cut_lengths(self) -> tuple[dict[str, list[int]], int, int] | None:
        lengths = {s: self.codec.source_lengths([e.source for e in v]) for s, v in self.splits.items() if s != PREDICT}
        budget = self.codec.source_budget()
        return lengths, budget, self.codec.max_length - budget

    def demonstrate(self, k: int, seed: int) -> dict[str, Any]:
        picks = np.random.default_rng(seed).choice(len(self.splits["train"]), size=min(k, self.train_size), replace=False)
        return self.codec_demonstrations(self.codec, [(self.splits["train"][i].source, self.splits["train"][i].target) for i in picks])

    def example(self, split: str, i: int) -> tuple[str, str]:
        e = self.splits[split][i]
        return e.source, e.target

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "sizes": {s: len(v) for s, v in self.splits.items()},
                "prompt": self.spec.prompt or self.default_prompt,
                "max_length": getattr(getattr(self, "codec", None), "max_length", self.spec.max_length),
                "generation": self.spec.generation.model_dump()}
