"""Model families are strategies picked once per family, never `family ==` branches in task code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import peftbench.tasks
from peftbench.tasks import REGISTRY
from peftbench.tasks.choice_strategies import (
    CHOICE_STRATEGIES, ChoiceClassifier, DecoderChoiceScorer, Seq2SeqChoiceScorer,
)
from peftbench.tasks.families import LM_FAMILIES
from peftbench.tasks.label_strategies import LABEL_STRATEGIES, ClassifierHead, LabelScorer, TextToText

TASKS_DIR = Path(peftbench.tasks.__file__).parent


@pytest.mark.parametrize("family, lm_scoring, want", [
    ("encoder", False, ClassifierHead), ("decoder", False, ClassifierHead), ("seq2seq", False, TextToText),
    ("encoder", True, ClassifierHead),  # a head reads no demonstrations: few_shot refuses it later
    ("decoder", True, LabelScorer), ("seq2seq", True, TextToText),
])
def test_classification_strategy_per_family(family: str, lm_scoring: bool, want: type) -> None:
    assert LABEL_STRATEGIES.pick(family, lm_scoring) is want


@pytest.mark.parametrize("family, want", [
    ("encoder", ChoiceClassifier), ("decoder", DecoderChoiceScorer), ("seq2seq", Seq2SeqChoiceScorer),
])
def test_multiple_choice_strategy_per_family(family: str, want: type) -> None:
    assert CHOICE_STRATEGIES.pick(family) is want
    assert CHOICE_STRATEGIES.pick(family, lm_scoring=True) is want


def test_lm_families() -> None:
    assert LM_FAMILIES["decoder"].peft_task_type == "CAUSAL_LM" and not LM_FAMILIES["decoder"].encoder_decoder
    assert LM_FAMILIES["seq2seq"].peft_task_type == "SEQ_2_SEQ_LM" and LM_FAMILIES["seq2seq"].encoder_decoder


def test_no_family_branches_in_task_modules() -> None:
    branch = re.compile(r"family\s*(==|!=)|(==|!=)\s*['\"](encoder|decoder|seq2seq|vision)['\"]")
    found = [f"{p.name}:{n}" for p in sorted(TASKS_DIR.rglob("*.py"))
             for n, line in enumerate(p.read_text().splitlines(), 1) if branch.search(line)]
    assert found == []


def test_no_optional_meter_pattern_in_task_modules() -> None:
    """Passes go through a (possibly disabled) FlopMeter, not `flops.forward(...) if flops is not None else ...`."""
    found = [p.name for p in TASKS_DIR.rglob("*.py") if re.search(r"if flops is not None else (model|flops)", p.read_text())]
    assert found == []


def test_every_task_declares_its_column_roles() -> None:
    for kind, cls in REGISTRY.items():
        roles = [r.name for r in cls.column_roles]
        assert roles and len(set(roles)) == len(roles), kind
        assert any(r.input for r in cls.column_roles), kind  # predict reads at least one
        assert cls.default_columns == {r.name: r.default for r in cls.column_roles if r.default}, kind
        assert set(cls.column_docs()) == set(roles), kind
    mc = REGISTRY["multiple_choice"].column_docs()
    assert mc["text"] == "article / context (optional)" and mc["answer"].startswith("answerKey / answer / label — a label (A, B")
    assert "--column choices=a,b,c,d" in mc["choices"]  # the formats are documented where the roles are
