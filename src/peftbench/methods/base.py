"""The Method interface: validated hyper-parameters, apply, save/load, per-step hook."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from peftbench.errors import UserError, suggest


class Params(BaseModel):
    """Hyper-parameters of a method; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class Context:
    """What a method may need to know to apply itself."""

    peft_task_type: str
    model_name_or_path: str
    total_steps: int


class Method:
    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type[Params]] = Params
    default_lr: ClassVar[float | None]
    trains: ClassVar[bool] = True
    can_merge: ClassVar[bool] = False

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        self.params = self.validate(params or {})

    @classmethod
    def validate(cls, params: dict[str, Any]) -> Any:
        try:
            return cls.Params.model_validate(params)
        except ValidationError as err:
            e = err.errors()[0]
            key = ".".join(str(p) for p in e["loc"])
            known = list(cls.Params.model_fields)
            if e["type"] == "extra_forbidden":
                hint = suggest(key, known) or (f" (known: {', '.join(known)})" if known else " (it takes none)")
                raise UserError(f"method '{cls.name}' has no hyper-parameter '{key}'{hint}") from None
            raise UserError(
                f"bad value for {cls.name} hyper-parameter '{key}': {e['msg']} (got {e.get('input')!r})"
            ) from None

    def normalized_params(self) -> dict[str, Any]:
        return self.params.model_dump(mode="json")

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Return the model to train, with exactly the intended parameters trainable."""
        raise NotImplementedError

    def on_step(self, model: nn.Module, step: int) -> None:
        """Called after each optimizer step, before gradients are cleared."""

    def save(self, model: nn.Module, out: Path) -> None:
        raise NotImplementedError

    def load(self, model: nn.Module, src: Path) -> nn.Module:
        """Put a saved run's weights onto a freshly loaded base model."""
        raise NotImplementedError


def head_prefixes(model: nn.Module) -> list[str]:
    """Top-level submodules outside the backbone: the task head (classifier, score, ...)."""
    backbone = getattr(model, "base_model_prefix", "")
    return [n for n, _ in model.named_children() if n != backbone]


def module_suffixes(model: nn.Module) -> list[str]:
    """Names of leaf layers a method could target, by last name component."""
    kinds = ("Linear", "Conv1D", "Conv1d", "Conv2d", "Embedding")
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ in kinds and n})


def check_targets(model: nn.Module, targets: list[str] | str | None, method: str) -> None:
    """Refuse target modules that match nothing, listing what exists."""
    if targets is None or targets == "all-linear":
        return
    names = [n for n, _ in model.named_modules() if n]
    if isinstance(targets, str):
        hit = any(re.fullmatch(targets, n) for n in names)
        missing = [] if hit else [targets]
    else:
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise UserError(
            f"{method} target modules {', '.join(missing)} match nothing in this model; "
            f"layers that exist: {', '.join(module_suffixes(model))}"
        )


class PeftMethod(Method):
    """A method that is one peft config; peft adds the task head to modules_to_save."""

    def peft_config(self, ctx: Context) -> Any:
        raise NotImplementedError

    def targets(self) -> list[str] | str | None:
        return getattr(self.params, "target_modules", None)

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        from peft import get_peft_model

        check_targets(model, self.targets(), self.name)
        return get_peft_model(model, self.peft_config(ctx))

    def save(self, model: nn.Module, out: Path) -> None:
        model.save_pretrained(str(out), safe_serialization=True)

    def load(self, model: nn.Module, src: Path) -> nn.Module:
        from peft import PeftModel

        return PeftModel.from_pretrained(model, str(src))
