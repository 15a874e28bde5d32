"""Every tuner the installed peft registers, as a method under its peft name (issue 17 items 1-2).

Hyper-parameters, defaults and help come from the peft config dataclass, so a new peft release's
tuner appears without code changes. Hand-written methods keep their names; tuners that make no
sense for one task's comparison are listed with the reason (`unsuited`).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
import sys
import textwrap
import typing
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, ValidationError, create_model
from torch import nn

from peftbench.errors import UserError
from peftbench.methods.base import Context, Params, PeftMethod
from peftbench.methods.lora import Lora
from peftbench.models import FAMILIES

# peft names whose hand-written peftbench method has another name.
HAND_WRITTEN_AS = {"prompt_tuning": "prompt", "prefix_tuning": "prefix"}

# Why a tuner is no single-task method (peft's docs for each).
UNSUITED = {
    "mixed": "peft's PeftMixedModel stacks adapters of several types; compare each type on its own instead",
    "xlora": "a gated mixture of LoRA experts trained beforehand; it needs existing adapters, not one task tuned from scratch",
    "poly": "multi-task routing over shared skills; it needs a task id per example",
    "multitask_prompt_tuning": "multi-task prompts; it needs a task id per example and source-task prompts to start from",
    "cpt": "context-aware prompt tuning of in-context examples; it needs per-token ICL template masks a task does not have",
    "trainable_tokens": "trains the embeddings of chosen (new) tokens, not an adaptation to a task",
    "cartridge": "a KV-cache prefix distilled from a corpus by self-study, not trained on a task's labels",
    # peft 0.21.2 on tiny GPT-2 and Llama: crashes under a classification head, and under peftbench's chunked
    # LM loss (which runs the LM head itself); it ran only as a plain causal LM with peft computing the loss.
    "shadow": "its shadow state rides the decoder loop into the model's own LM head: it fails under a task head "
              "and under peftbench's chunked LM loss",
}
# Tuners whose peft docs restrict them to decoder-only language models.
DECODER_ONLY = {"adaption_prompt"}
# Fields peftbench sets itself: peft's bookkeeping, and the task head (modules_to_save).
_OWN = {f.name for f in dataclasses.fields(__import__("peft").PeftConfig)} | {"modules_to_save"}
# Hand-written methods that adapt GPT-2's Conv1D layers (see the matrix in README.md).
CONV1D_HAND_WRITTEN = ("lora", "ia3", "adalora", "vera")

UNSUITED_FOUND: dict[str, str] = {}  # filled by register_all: every unsuited tuner this peft has


def _peft_name(peft_type: Any) -> str:
    return str(getattr(peft_type, "value", peft_type)).lower()


def _summary(tuner_cls: Any, config_cls: type) -> str:
    """First sentence of the tuner's docstring, else the config's."""
    for doc in (getattr(tuner_cls, "__doc__", None), config_cls.__doc__):
        text = " ".join((doc or "").split())
        if text and not text.startswith("This is the configuration class"):
            return re.split(r"(?<=\.)\s", text, maxsplit=1)[0][:160]
    return f"peft's {config_cls.__name__}"


def _field(name: str, f: dataclasses.Field, hint: Any) -> tuple[Any, Any]:
    """(type, pydantic Field) for one config field: peft's default and help; ranges peft's docs imply."""
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    limits: dict[str, float] = {}
    if name.endswith("dropout"):
        limits = {"ge": 0.0, "lt": 1.0}
    elif name == "r" and isinstance(default, int):
        limits = {"ge": min(1, default)}  # OFT's 0 means: size blocks by oft_block_size instead
    help_ = (f.metadata or {}).get("help", "")
    if name == "target_modules" and default is None:
        help_ = "null: peft's per-model default, or 'all-linear' where peft has none; " + help_
    if default is None:  # peft often types a None default as its other values only
        hint = typing.Optional[hint]
    return hint, Field(default, description=" ".join(str(help_).split()), **limits)


def params_model(name: str, config_cls: type) -> type[Params]:
    """A Params model (unknown keys refused) built from the config dataclass's own fields."""
    hints = typing.get_type_hints(config_cls)
    fields = {}
    for f in dataclasses.fields(config_cls):
        if f.name in _OWN or f.name.startswith("_"):
            continue
        hint, spec = _field(f.name, f, hints.get(f.name, Any))
        try:  # a type pydantic cannot check (a torch dtype, a callable) is taken as given
            create_model("probe", __config__=ConfigDict(arbitrary_types_allowed=True), x=(hint, spec))
        except Exception:  # noqa: BLE001 - pydantic raises several kinds for unknown types
            hint = Any
        fields[f.name] = (hint, spec)
    model = create_model(f"{name}Params", __base__=Params, **fields)
    model.model_config.update(protected_namespaces=(), arbitrary_types_allowed=True)
    model.model_rebuild(force=True)
    aliases = {"rank": "r", "targets": "target_modules"} | {
        "dropout": n for n in fields if n.endswith("_dropout")} | {"alpha": n for n in fields if n.endswith("_alpha")}
    model.other_names = {k: v for k, v in aliases.items() if v in fields}
    return model


def _model_type(model: nn.Module) -> str:
    return str(getattr(getattr(model, "config", None), "model_type", "this"))


def _peft_mapping(config: Any, model: nn.Module) -> bool:
    """Whether peft has a default target-module list for this tuner and model type that names layers it has.

    (peft 0.21's lists for some tuners name ViT's query/value, which transformers 5 calls q_proj/v_proj.)"""
    from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING
    from peft.tuners.tuners_utils import BaseTuner
    from peft.utils import constants

    tuner = PEFT_TYPE_TO_TUNER_MAPPING.get(config.peft_type)
    if not (isinstance(tuner, type) and issubclass(tuner, BaseTuner)):  # adaption prompts find their layers themselves
        return True
    mapping = getattr(tuner, "target_module_mapping", None)
    if mapping is None:  # IA3 keeps its mapping as a module constant
        mapping = getattr(constants, f"TRANSFORMERS_MODELS_TO_{_peft_name(config.peft_type).upper()}_TARGET_MODULES_MAPPING", {})
    names = mapping.get(_model_type(model))
    if names is None or isinstance(names, str):  # none, or a regex peft matches itself
        return names is not None
    layers = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    return any(t in layers for t in names)


def default_targets(config: Any, model: nn.Module) -> Any:
    """target_modules null means peft's per-model default; where peft has none, every linear layer."""
    if getattr(config, "target_modules", "") is not None or _peft_mapping(config, model):
        return config
    config.target_modules = "all-linear"
    if getattr(config, "feedforward_modules", "") is None:  # IA3: scale every target's output
        config.feedforward_modules = []
    return config


@functools.lru_cache(maxsize=1)
def conv1d_methods() -> tuple[str, ...]:
    """Methods that adapt a transformers Conv1D layer: hand-written ones plus generic tuners that pass a probe."""
    import torch
    from transformers.pytorch_utils import Conv1D

    from peftbench.methods import REGISTRY

    ok = list(CONV1D_HAND_WRITTEN)
    for name, cls in REGISTRY.items():
        if not issubclass(cls, GenericTuner) or DECODER_ONLY & {name} or cls.prompt_learning:
            continue
        probe = nn.Sequential()
        probe.add_module("c_attn", Conv1D(256, 256))  # 256 wide: every peft default fits it
        try:
            from peft import inject_adapter_in_model

            config = cls.config_cls(target_modules=["c_attn"])
            inject_adapter_in_model(config, probe)(torch.zeros(1, 256))
            ok.append(name)
        except Exception:  # noqa: BLE001 - any failure means: not for Conv1D
            pass
    return tuple(ok)


class GenericTuner(PeftMethod):
    """One peft tuner, configured from its dataclass; subclasses are made by register_all."""

    config_cls: ClassVar[type]
    peft_name: ClassVar[str]
    prompt_learning: ClassVar[bool] = False
    default_lr = Lora.default_lr  # LoRA's figure until chosen on validation (methods/tuned_lrs.py)
    lr_tuned: ClassVar[bool] = False
    tuned: ClassVar[Any] = None  # tuned_lrs.Tuned where the procedure ran

    @classmethod
    def validate(cls, params: dict[str, Any]) -> Any:
        p = super().validate(params)
        try:  # peft's own checks (__post_init__), worded as one line
            cls.config_cls(**cls.peft_kwargs(p))
        except (ValueError, TypeError) as err:
            raise UserError(f"bad {cls.name} hyper-parameters: {str(err).splitlines()[0]}; fix the --param values") from None
        return p

    @staticmethod
    def peft_kwargs(p: Params) -> dict[str, Any]:
        """The values the user set, as validated (nested peft dataclasses stay dataclasses); peft fills the rest."""
        return {k: getattr(p, k) for k in p.model_fields_set}

    def check(self, ctx: Context) -> None:
        if ctx.family not in self.families:
            raise UserError(f"method '{self.name}' adapts {'/'.join(self.families)} models and this model is of the "
                            f"{ctx.family} family; use lora, ia3 or full instead")
        if ctx.head_modules and "modules_to_save" not in {f.name for f in dataclasses.fields(self.config_cls)}:
            raise UserError(f"method '{self.name}' cannot train this task's new head (peft's {self.config_cls.__name__} "
                            "saves no extra modules); use it on a generation task, or use lora")
        if self.prompt_learning and ctx.peft_task_type is None:
            raise UserError(f"method '{self.name}' needs one of peft's task types (text classification, causal or "
                            "seq2seq generation); use lora or ia3 for this task")

    def peft_config(self, ctx: Context) -> Any:
        return self.config_cls(task_type=ctx.peft_task_type, **self.peft_kwargs(self.params))

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        try:
            return super().apply(model, ctx)
        except (ValueError, TypeError, NotImplementedError, AttributeError, RuntimeError) as err:
            raise self._refusal(model, err) from None

    def before_wrap(self, model: nn.Module, config: Any, ctx: Context) -> None:
        """peft's AdaptionPromptConfig has no defaults for its sizes (it then fails comparing int and None).
        Here, after apply's family check, so an encoder hears that it is not a decoder."""
        missing = [k for k in ("adapter_len", "adapter_layers") if self.peft_name == "adaption_prompt"
                   and getattr(config, k, None) is None]
        if missing:
            layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
            raise UserError(f"adaption_prompt needs {' and '.join(missing)}: pass --param adapter_len=N (adapter tokens "
                            "per layer; LLaMA-Adapter used 10) --param adapter_layers=N (top layers to adapt"
                            + (f"; this model has {layers})" if layers else ")"))

    def _refusal(self, model: nn.Module, err: Exception) -> UserError:
        """peft's failure to build this tuner on this model, as one line with the fix."""
        line, kind = (str(err).splitlines() or [type(err).__name__])[0].rstrip("."), _model_type(model)
        if "Conv1D" in line:
            works = ", ".join(conv1d_methods())
            return UserError(f"{self.name} does not support this {kind} model's Conv1D layers (GPT-2-style); "
                             f"use {works}, or a model with nn.Linear layers")
        if re.search(r"not supported|does not support|unsupported", line, re.I):
            return UserError(f"{self.name} cannot adapt this {kind} model: {line}; use lora or ia3")
        if isinstance(err, ValueError):  # a hyper-parameter that does not fit the model's shapes
            return UserError(f"{self.name} cannot adapt this {kind} model with these hyper-parameters: {line}; "
                             "change them with --param KEY=VALUE (see: peftbench methods)")
        return UserError(f"peft's {self.name} failed on this {kind} model ({type(err).__name__}: {line}); use lora or ia3")


def _only_raises(fn: Any) -> bool:
    """A method whose body (past its docstring) is a bare raise: peft's way of saying 'not supported'."""
    try:
        body = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0].body
    except (OSError, TypeError, SyntaxError):
        return False
    body = body[1:] if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) else body
    return bool(body) and isinstance(body[0], ast.Raise)


def mergeable(tuner_cls: Any) -> bool:
    """Whether peft folds this tuner into the base weights: it unloads, and no layer's merge only raises."""
    if tuner_cls is None or not hasattr(tuner_cls, "merge_and_unload"):
        return False
    package = tuner_cls.__module__.rpartition(".")[0]
    for mod_name, mod in list(sys.modules.items()):
        if mod is None or not mod_name.startswith(package + "."):
            continue
        for obj in vars(mod).values():
            if isinstance(obj, type) and obj.__module__ == mod_name and "merge" in vars(obj) and _only_raises(vars(obj)["merge"]):
                return False
    return True


def make_method(peft_type: Any, config_cls: type, tuner_cls: Any) -> type[GenericTuner]:
    from peft.config import PromptLearningConfig

    name = _peft_name(peft_type)
    prompt = issubclass(config_cls, PromptLearningConfig)
    families = ("decoder",) if name in DECODER_ONLY else tuple(f for f in FAMILIES if f != "vision") if prompt else FAMILIES
    try:
        validated = params_model(name, config_cls)
    except (TypeError, ValueError, ValidationError) as err:  # a config pydantic cannot model at all
        raise UserError(f"peft's {config_cls.__name__} cannot be read as peftbench hyper-parameters: {err}") from None
    from peftbench.methods.tuned_lrs import MEASURED

    tuned = MEASURED.get(name)  # a rate chosen on validation, or None where the tuner learned at none tried
    return type(f"Generic_{name}", (GenericTuner,), {
        "name": name, "peft_name": name, "config_cls": config_cls, "Params": validated, "families": families,
        "prompt_learning": prompt, "can_merge": mergeable(tuner_cls), "summary": _summary(tuner_cls, config_cls) + " (peft, generic)",
        **({"default_lr": tuned.lr, "lr_tuned": True, "tuned": tuned} if tuned else {}),
    })


def register_all(registry: dict[str, type]) -> dict[str, type[GenericTuner]]:
    """Register every tuner of the installed peft not hand-written here and not unsuited; note the unsuited."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    UNSUITED_FOUND.clear()
    UNSUITED_FOUND["mixed"] = UNSUITED["mixed"]
    added = {}
    for peft_type, config_cls in PEFT_TYPE_TO_CONFIG_MAPPING.items():
        name = _peft_name(peft_type)
        if name in UNSUITED:
            UNSUITED_FOUND[name] = UNSUITED[name]
            continue
        existing = registry.get(HAND_WRITTEN_AS.get(name, name))
        if existing is None or issubclass(existing, GenericTuner):
            added[name] = registry[name] = make_method(peft_type, config_cls, PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type))
    conv1d_methods.cache_clear()
    return added
