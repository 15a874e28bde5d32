"""Model families as types: what a language-model family loads as, and which strategy a task uses per family.

A task picks its strategy once, when the model loads (`Strategies.pick`); nothing after
that asks which family it runs on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM


@dataclass(frozen=True)
class LMFamily:
    """A family that writes text with its own LM head."""

    auto: Any  # the transformers Auto class of the model with its LM head
    peft_task_type: str
    encoder_decoder: bool  # the prompt goes to an encoder and the target to a decoder (else one sequence)


LM_FAMILIES: dict[str, LMFamily] = {
    "decoder": LMFamily(AutoModelForCausalLM, "CAUSAL_LM", encoder_decoder=False),
    "seq2seq": LMFamily(AutoModelForSeq2SeqLM, "SEQ_2_SEQ_LM", encoder_decoder=True),
}

S = TypeVar("S")


@dataclass(frozen=True)
class Strategies(Generic[S]):
    """A task's strategy per model family; `in_context` overrides it where the LM itself must score
    (in-context methods: no new head, since a head reads no demonstrations)."""

    by_family: Mapping[str, type[S]]
    in_context: Mapping[str, type[S]] = field(default_factory=dict)

    def pick(self, family: str, lm_scoring: bool = False) -> type[S]:
        if lm_scoring and family in self.in_context:
            return self.in_context[family]
        return self.by_family[family]
