"""The Task interface: data, the model class it needs, batching and metrics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from peftbench.config import ModelSpec, TaskSpec

Batch = dict[str, torch.Tensor]


@dataclass
class EvalResult:
    metrics: dict[str, float]
    predictions: list[Any] = field(default_factory=list)
    references: list[Any] = field(default_factory=list)
    examples: int = 0


class Task(ABC):
    kind: ClassVar[str]
    peft_task_type: ClassVar[str]  # peft's TaskType for get_peft_model

    def __init__(self, spec: TaskSpec) -> None:
        self.spec = spec

    @abstractmethod
    def load_data(self) -> None:
        """Read and validate every split; raise UserError on bad data."""

    @abstractmethod
    def load_model(self, spec: ModelSpec) -> tuple[nn.Module, Any]:
        """Base model (with the task's head) and its tokenizer or processor."""

    @abstractmethod
    def train_batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        """Endless shuffled training batches, reshuffled each epoch from the seed."""

    @abstractmethod
    def evaluate(
        self, model: nn.Module, split: str, batch_size: int, flops: Any = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> EvalResult:
        """Score a split; forward FLOPs go to `flops` (an eval meter); progress(done, total)."""

    @property
    @abstractmethod
    def train_size(self) -> int: ...

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}
