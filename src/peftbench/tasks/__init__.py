"""Task kinds: one module each, registered by name."""

from __future__ import annotations

from peftbench.errors import UserError, suggest
from peftbench.tasks.base import Task

REGISTRY: dict[str, type[Task]] = {}


def register(cls: type[Task]) -> type[Task]:
    REGISTRY[cls.kind] = cls
    return cls


def get_task(kind: str) -> type[Task]:
    if kind not in REGISTRY:
        raise UserError(f"unknown task kind '{kind}'{suggest(kind, REGISTRY)}; known: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[kind]


from peftbench.tasks import classification, distractors, summarization  # noqa: E402,F401  (register themselves)
from peftbench.tasks import image_classification  # noqa: E402,F401
from peftbench.tasks import multiple_choice  # noqa: E402,F401
