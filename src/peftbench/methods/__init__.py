"""PEFT methods: one module per family, each registering its methods by name."""

from __future__ import annotations

from peftbench.errors import UserError, suggest
from peftbench.methods.base import Method

REGISTRY: dict[str, type[Method]] = {}
REFERENCE = "lora"  # compare's default reference: its steps set the equal FLOPs budget when it is compared


def register(cls: type[Method]) -> type[Method]:
    REGISTRY[cls.name] = cls
    return cls


def get_method(name: str) -> type[Method]:
    if name not in REGISTRY:
        raise UserError(
            f"unknown method '{name}'{suggest(name, REGISTRY)}; known: {', '.join(REGISTRY)} "
            "(see: peftbench methods)"
        )
    return REGISTRY[name]


from peftbench.methods import baselines, lora, ia3, prompts, lycoris, vera, selective, adapters, qlora, probe  # noqa: E402,F401
from peftbench.methods import peft_generic  # noqa: E402  (last: hand-written names above win)

peft_generic.register_all(REGISTRY)
