"""The Method interface: validated hyper-parameters, apply, save/load, per-step hook."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, get_args

from pydantic import BaseModel, ConfigDict, ValidationError
from torch import nn

from peftbench.errors import UserError, suggest
from peftbench.methods.prefix_compat import generation_ready
from peftbench.models import FAMILIES


class Params(BaseModel):
    """Hyper-parameters of a method; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")
    # Names other libraries or papers use for a hyper-parameter (peft's lora_alpha, "rank"):
    # too far from ours for a spelling match, so an unknown key is looked up here first.
    other_names: ClassVar[dict[str, str]] = {}


def _message(e: Any) -> str:
    """pydantic's message without its 'Value error, ' prefix (our validators word it fully)."""
    return str(e["msg"]).removeprefix("Value error, ")


def _type_name(t: Any) -> str:
    if t is type(None):
        return "null"
    names = {str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    if t in names:
        return names[t]
    args = get_args(t)
    if getattr(t, "__origin__", None) is list:
        return f"a list of {_type_name(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    return str(t).replace("typing.", "")


@dataclass
class SetupData:
    """The task's first training batches, for an initialisation that reads data (EVA, CorDA). Its forward
    passes are counted on `meter`: the run stores them as setup FLOPs, apart from training."""

    batches: Callable[[int], list[dict[str, Any]]]  # the first n training batches (the run's seed and batch size)
    meter: Any  # measure.flops.FlopMeter

    def forward(self, model: nn.Module, batch: dict[str, Any]) -> Any:
        import torch

        with torch.no_grad():
            return self.meter.forward(model, batch)


@dataclass
class Context:
    """What a method may need to know to apply itself."""

    peft_task_type: str | None  # peft's TaskType; None where peft has none (multiple choice, images)
    model_name_or_path: str
    total_steps: int | None  # None under a FLOPs or seconds budget
    family: str = "encoder"  # encoder | decoder | seq2seq | vision (models.family)
    head_modules: list[str] = field(default_factory=list)  # new task head: trained by every method but base
    data: SetupData | None = None  # training batches for a data-driven initialisation; None outside a run


class Method:
    name: ClassVar[str]
    summary: ClassVar[str]
    Params: ClassVar[type[Params]] = Params
    default_lr: ClassVar[float | None]
    # The new modules' (task head's) rate when train.head_lr is not set; None: they learn at train.lr.
    default_head_lr: ClassVar[float | None] = None
    # Capabilities: what the method needs and allows. Code outside methods/ reads these, never
    # the method's name; `peftbench methods` shows them.
    trains: ClassVar[bool] = True  # False: nothing trains, so it takes no learning rate or budget
    can_merge: ClassVar[bool] = False
    lm_scoring: ClassVar[bool] = False  # needs the task without a new head (an in-context baseline)
    families: ClassVar[tuple[str, ...]] = FAMILIES  # model families it can adapt
    needs_head: ClassVar[bool] = False  # trains the task's new head, so the task must have one
    needs_cuda: ClassVar[bool] = False
    needs_step_budget: ClassVar[bool] = False  # a schedule counted in optimizer steps: no FLOPs or seconds budget
    step_schedule: ClassVar[str] = "schedule"  # what that schedule is, to word the refusal
    frozen_base: ClassVar[bool] = True  # False: every base weight trains, so model.dtype auto keeps float32
    fits: ClassVar[bool] = False  # trains no gradient steps but fits its head in closed form (fit below)

    @classmethod
    def capabilities(cls) -> dict[str, Any]:
        return {"trains": cls.trains, "can_merge": cls.can_merge, "families": list(cls.families),
                "needs_head": cls.needs_head, "needs_cuda": cls.needs_cuda,
                "needs_step_budget": cls.needs_step_budget, "lm_scoring": cls.lm_scoring}

    def __init__(self, params: dict[str, Any] | None = None) -> None:
        self.params = self.validate(params or {})

    @classmethod
    def validate(cls, params: dict[str, Any]) -> Any:
        if not isinstance(params, dict):
            raise UserError(
                f"{cls.name} hyper-parameters must be a mapping of KEY: VALUE (got {params!r}); "
                "use --param KEY=VALUE or method: params: in the config"
            )
        try:
            return cls.Params.model_validate(params)
        except ValidationError as err:
            raise cls._explain(err, params) from None

    @classmethod
    def _explain(cls, err: ValidationError, params: dict[str, Any]) -> UserError:
        """One line naming the hyper-parameter, what is wrong, and the fix."""
        errors = err.errors()
        e = errors[0]
        known = list(cls.Params.model_fields)
        if not e["loc"]:  # a check across several hyper-parameters (a model validator)
            return UserError(f"bad {cls.name} hyper-parameters: {_message(e)}; fix the --param values")
        key = str(e["loc"][0])  # hyper-parameters are flat; deeper parts name union members
        if e["type"] == "extra_forbidden":
            other = cls.Params.other_names.get(key)
            hint = (f" (did you mean '{other}'?)" if other else suggest(key, known)) or (
                f" (known: {', '.join(known)})" if known else " (it takes none)"
            )
            return UserError(f"method '{cls.name}' has no hyper-parameter '{key}'{hint}; see: peftbench methods")
        if sum(1 for x in errors if x["loc"][:1] == (key,)) > 1:  # no member of a union fits
            annotation = cls.Params.model_fields[key].annotation
            problem = "Input should be " + " or ".join(_type_name(a) for a in get_args(annotation) or [annotation])
        else:
            problem = _message(e)
        return UserError(
            f"bad value for {cls.name} hyper-parameter '{key}': {problem} (got {params.get(key, e.get('input'))!r})"
        )

    def normalized_params(self) -> dict[str, Any]:
        return self.params.model_dump(mode="json")

    def check(self, ctx: Context) -> None:
        """Refuse (UserError) a model family or task this method cannot serve."""

    def prepare_task(self, task: Any) -> None:
        """Change how the task builds its inputs (few-shot demonstrations); after untuned samples."""

    def load_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for the base model's from_pretrained (e.g. a quantization config).

        Called before the model is loaded, so a method may refuse (UserError) here what it
        can tell without the model (a missing GPU or package)."""
        return {}

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        """Return the model to train, with exactly the intended parameters trainable."""
        raise NotImplementedError

    def fit(self, model: nn.Module, task: Any, select: str, batch_size: int, meter: Any) -> None:
        """A method that `fits` sets its weights from the training data here (its forward FLOPs on `meter`)."""

    def param_groups(self, model: nn.Module, groups: list[dict[str, Any]], lr: float,
                     heads: tuple[str, ...]) -> list[dict[str, Any]]:
        """The optimizer's parameter groups, for a method that gives some parameters their own rate
        (LoRA+). `heads` marks the new modules' parameter names (they keep the head rate)."""
        return groups

    def optimizer(self, model: nn.Module, groups: list[dict[str, Any]], lr: float,
                  weight_decay: float) -> Any | None:
        """An optimizer of the method's own (LoRA-FA), or None for the configured one."""
        return None

    def on_step(self, model: nn.Module, step: int) -> None:
        """Called after each optimizer step, before gradients are cleared."""

    def train_state(self, model: nn.Module) -> dict[str, Any]:
        """What `on_step` keeps besides the weights, for a mid-run checkpoint: plain tensors, numbers, lists, dicts."""
        return {}

    def load_train_state(self, model: nn.Module, state: dict[str, Any]) -> None:
        """Put back what `train_state` returned, when a run resumes from a checkpoint."""

    def save(self, model: nn.Module, out: Path) -> None:
        raise NotImplementedError

    def load(self, model: nn.Module, src: Path) -> nn.Module:
        """Put a saved run's weights onto a freshly loaded base model."""
        raise NotImplementedError

    def merge(self, model: nn.Module) -> nn.Module:
        """A plain transformers model computing what the adapted one does (can_merge methods).

        Methods that change the model's own weights in place are plain already."""
        if not self.can_merge:
            raise UserError(f"method '{self.name}' cannot be merged into the base weights")
        return model


def module_suffixes(model: nn.Module) -> list[str]:
    """Names of leaf layers a method could target, by last name component."""
    kinds = ("Linear", "Conv1D", "Conv1d", "Conv2d", "Embedding")
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if type(m).__name__ in kinds and n})


def check_targets(model: nn.Module, targets: list[str] | str | None, method: str, key: str = "target modules") -> None:
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
            f"{method} {key} {', '.join(missing)} match nothing in this model; "
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

        self.check(ctx)
        check_targets(model, self.targets(), self.name)
        from peftbench.methods.peft_generic import default_targets

        config = default_targets(self.peft_config(ctx), model)  # all-linear where peft has no default
        if ctx.head_modules:  # peft knows the head of SEQ_CLS only; name it for every task
            config.modules_to_save = sorted(set(config.modules_to_save or []) | set(ctx.head_modules))
        try:
            self.before_wrap(model, config, ctx)
            return generation_ready(self.after_wrap(get_peft_model(model, config), ctx))
        except ValueError as err:
            if "target_modules" not in str(err):
                raise
            kind = getattr(getattr(model, "config", None), "model_type", "this model")
            raise UserError(
                f"{self.name} has no default target modules for {kind} models; pass --param target_modules=NAMES "
                f"(layers that exist: {', '.join(module_suffixes(model))})"
            ) from None

    def before_wrap(self, model: nn.Module, config: Any, ctx: Context) -> None:
        """Work on the base model and the final peft config before peft wraps it (CorDA's statistics)."""

    def after_wrap(self, model: nn.Module, ctx: Context) -> nn.Module:
        """The wrapped model, for a method that initialises it further (EVA) or freezes part of it."""
        return model

    def save(self, model: nn.Module, out: Path) -> None:
        model.save_pretrained(str(out), safe_serialization=True)

    def load(self, model: nn.Module, src: Path) -> nn.Module:
        from peft import PeftModel

        return generation_ready(PeftModel.from_pretrained(model, str(src)))

    def merge(self, model: nn.Module) -> nn.Module:
        super().merge(model)
        merged = model.merge_and_unload()
        # Some tuners (LN-tuning, peft 0.21) leave the head's ModulesToSaveWrapper behind,
        # which saves under keys transformers does not know: put the trained copy in place.
        for name, module in list(merged.named_modules()):
            if type(module).__name__ == "ModulesToSaveWrapper":
                parent, _, leaf = name.rpartition(".")
                trained = module.modules_to_save[module.active_adapter if isinstance(module.active_adapter, str) else module.active_adapter[0]]
                setattr(merged.get_submodule(parent) if parent else merged, leaf, trained)
        return merged
