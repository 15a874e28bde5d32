"""How text classification reads and predicts labels on each kind of model.

Encoders and decoders get a new sequence-classification head (decoders pool their last
non-pad token, so a pad token is set); seq2seq models are used text-to-text, as T5 is:
they learn to write the label's name, and the generated text is matched to a label. An
in-context method on a decoder (no head: a head reads no demonstrations) scores each
label name with the LM instead.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding

from peftbench import models
from peftbench.config import GenerationSpec, ModelSpec
from peftbench.measure.flops import FlopMeter
from peftbench.tasks import pooling
from peftbench.tasks.base import Batch, metered
from peftbench.tasks.families import LM_FAMILIES, Strategies
from peftbench.tasks.generation import PairCodec
from peftbench.tasks.text import PAD_MULTIPLE, fit_max_length, position_limit
from peftbench.train import lm_loss

if TYPE_CHECKING:
    from peftbench.tasks.classification import Classification

LABEL_DECODING = GenerationSpec(num_beams=1, no_repeat_ngram_size=0)  # a label name is short: greedy

Row = dict[str, Any]


class LabelStrategy(ABC):
    """Loads the model for a classification task, encodes its rows and predicts label indices."""

    may_miss: ClassVar[bool] = False  # a prediction can name no label (-1), which scores as wrong
    forward_predicts: ClassVar[bool] = False  # the loss pass gives the predictions too (a head's logits)
    codec: PairCodec | None = None  # the prompt codec, for strategies that read demonstrations

    def __init__(self, task: Classification) -> None:
        self.task = task

    @abstractmethod
    def load(self, spec: ModelSpec, tok: Any, config: Any) -> nn.Module:
        """The model; sets the task's max_length, peft_task_type and head_modules."""

    @abstractmethod
    def encode(self, split: str) -> list[Row]: ...

    @abstractmethod
    def collate(self, rows: list[Row]) -> Batch: ...

    @abstractmethod
    def predict(self, model: nn.Module, rows: list[Row], out: Any, meter: FlopMeter) -> list[int]:
        """Label indices of encoded rows; `out`: the loss pass's output, when forward_predicts."""


class ClassifierHead(LabelStrategy):
    """A new sequence-classification head on an encoder or decoder."""

    forward_predicts = True

    def load(self, spec: ModelSpec, tok: Any, config: Any) -> nn.Module:
        t = self.task
        t.max_length = fit_max_length(t.spec, spec.name, tok, config)
        model, t.head_modules = models.load_with_new_modules(
            AutoModelForSequenceClassification, spec, num_labels=len(t.labels), ignore_mismatched_sizes=True,  # new head
            id2label=dict(enumerate(t.labels)), label2id={l: i for i, l in enumerate(t.labels)}, **t.model_kwargs,
        )
        model.config.pad_token_id = tok.pad_token_id  # decoders find each row's last token by it
        t.pooling = pooling.resolve(t.spec, spec)  # the checkpoint's own, unless task.pooling says otherwise
        t.head_modules = pooling.install(model, t.pooling, t.head_modules)
        t.peft_task_type = "SEQ_CLS"
        self._collate = DataCollatorWithPadding(tok, pad_to_multiple_of=PAD_MULTIPLE, return_tensors="pt")
        return model

    def encode(self, split: str) -> list[Row]:
        t = self.task
        cols = t.splits[split]
        enc = t.tokenizer(cols["text"], cols.get("text_pair"), truncation=True, max_length=t.max_length)
        keys = list(enc.keys())
        return [{**{k: enc[k][i] for k in keys}, "labels": y} for i, y in enumerate(cols["label"])]

    def collate(self, rows: list[Row]) -> Batch:
        return self._collate(rows)

    def predict(self, model: nn.Module, rows: list[Row], out: Any, meter: FlopMeter) -> list[int]:
        return out.logits.argmax(-1).tolist()


class PromptedLabels(LabelStrategy):
    """A language model reads a prompt naming the options; the labels are token sequences."""

    label_ids: list[list[int]]

    def template(self) -> str:
        # Naming the options lets an untuned instruction model (flan-T5) answer with one of them.
        return self.task.spec.prompt or "{input}\nOptions: " + ", ".join(self.task.labels) + ".\nAnswer:"

    def collate(self, rows: list[Row]) -> Batch:
        assert self.codec is not None
        return self.codec.collate([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])


class TextToText(PromptedLabels):
    """Seq2seq: learn to write the label's name; the generated text is matched to a label."""

    may_miss = True

    def load(self, spec: ModelSpec, tok: Any, config: Any) -> nn.Module:
        t, lm = self.task, LM_FAMILIES["seq2seq"]
        t.max_length = fit_max_length(t.spec, spec.name, tok, config)
        model = models.load_pretrained(lm.auto, spec, **t.model_kwargs)
        t.peft_task_type = lm.peft_task_type
        t.head_modules = []
        self.codec = PairCodec(tok, "seq2seq", self.template(), t.max_length, t.spec.max_target_length)
        self.label_ids = [self.codec.target(name) for name in t.labels]
        self.longest = max(len(ids) for ids in self.label_ids)
        t.context_window = position_limit(tok, config)
        return model

    def encode(self, split: str) -> list[Row]:
        t = self.task
        assert self.codec is not None
        return [{"input_ids": self.codec.prompt(t.source(split, i)), "labels": self.label_ids[y]}
                for i, y in enumerate(t.splits[split]["label"])]

    def predict(self, model: nn.Module, rows: list[Row], out: Any, meter: FlopMeter) -> list[int]:
        assert self.codec is not None
        texts = self.codec.generate(model, [r["input_ids"] for r in rows], LABEL_DECODING, meter, self.longest)
        return [self.task.match_label(text) for text in texts]


class LabelScorer(PromptedLabels):
    """A decoder without a head: each label name is scored by its mean token log-probability
    after the prompt (for in-context baselines, whose demonstrations a head cannot read)."""

    def load(self, spec: ModelSpec, tok: Any, config: Any) -> nn.Module:
        t, lm = self.task, LM_FAMILIES["decoder"]
        self.label_ids = [tok(" " + name, add_special_tokens=False)["input_ids"] for name in t.labels]
        longest = max(len(ids) for ids in self.label_ids)
        t.max_length = fit_max_length(t.spec, spec.name, tok, config, extra=longest)
        model = models.load_pretrained(lm.auto, spec, **t.model_kwargs)
        model.config.pad_token_id = tok.pad_token_id
        t.peft_task_type, t.head_modules = lm.peft_task_type, []
        self.codec = PairCodec(tok, "decoder", self.template(), t.max_length, longest + 1)
        t.context_window = position_limit(tok, config)
        return model

    def encode(self, split: str) -> list[Row]:
        """Prompt + the gold label's tokens, the loss on those only."""
        t = self.task
        assert self.codec is not None
        golds = t.splits[split]["label"]
        prompts = [self.codec.prompt(t.source(split, i)) for i in range(len(golds))]
        return [
            {"input_ids": p + self.label_ids[y], "labels": [-100] * len(p) + self.label_ids[y], "prompt": p, "gold": y}
            for p, y in zip(prompts, golds)
        ]

    def predict(self, model: nn.Module, rows: list[Row], out: Any, meter: FlopMeter) -> list[int]:
        return self.score_labels(model, [r["prompt"] for r in rows], meter).argmax(-1).tolist()

    def score_labels(self, model: nn.Module, prompts: list[list[int]], flops: FlopMeter | None) -> torch.Tensor:
        """[examples, labels] mean log-probability of each label's tokens after its prompt."""
        assert self.codec is not None
        rows = [{"input_ids": p + ids, "labels": [-100] * len(p) + ids} for p in prompts for ids in self.label_ids]
        batch = self.codec.collate(rows)
        labels = batch.pop("labels").to(next(model.parameters()).device)
        batch = {k: v.to(labels.device) for k, v in batch.items()}
        with metered(flops).count(batch):
            sums, counts = lm_loss.logprobs(model, batch, labels, seq2seq=False)
        return (sums / counts).view(len(prompts), len(self.label_ids))


LABEL_STRATEGIES: Strategies[LabelStrategy] = Strategies(
    {"encoder": ClassifierHead, "decoder": ClassifierHead, "seq2seq": TextToText},
    in_context={"decoder": LabelScorer},
)
