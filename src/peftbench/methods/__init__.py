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
    base, paren, rest = name.partition("(")
    if paren and base.strip() in REGISTRY and rest.endswith(")"):  # compare's spelling, given where one method is
        params = " ".join(f"-p {p.strip()}" for p in rest[:-1].split(",") if p.strip())
        raise UserError(f"method '{name}' gives parameters in compare's --methods spelling; for one method "
                        f"write: -m {base.strip()} {params} (or method: {{name: {base.strip()}, params: ...}})")
    if name not in REGISTRY:
        raise UserError(
            f"unknown method '{name}'{suggest(name, REGISTRY)}; known: {', '.join(REGISTRY)} "
            "(see: peftbench methods)"
        )
    return REGISTRY[name]


from peftbench.methods import baselines, lora, ia3, prompts, lycoris, vera, selective, adapters, qlora, probe  # noqa: E402,F401
from peftbench.methods import peft_generic  # noqa: E402  (last: hand-written names above win)

peft_generic.register_all(REGISTRY)
