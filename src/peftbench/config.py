"""Run configuration: validated pydantic specs, YAML loading, and the config hash.

A RunConfig is everything that determines a run's result; its hash keys the store.
"""

from __future__ import annotations

from pathlib import Path
import types
import typing
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from peftbench.errors import UserError, suggest

DEFAULT_MODEL = "default"  # the bundled all-MiniLM-L6-v2
DEFAULT_DATA = "builtin:tweet_eval_emotion"


def _numeric(annotation: Any) -> bool:
    """True for int / float fields (optional or not); bool is an int to Python, so YAML's true would pass."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        return bool not in args and any(_numeric(a) for a in args)
    return False


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic's lax mode reads true as 1: `steps: true` would train one step.
        if isinstance(value, bool) and info.field_name and _numeric(cls.model_fields[info.field_name].annotation):
            raise ValueError("must be a number, not true/false")
        return value


class ModelSpec(Spec):
    name: str = DEFAULT_MODEL  # hub id, local directory, "default" (MiniLM) or "smollm2"
    revision: str | None = None
    gguf_file: str | None = None  # a GGUF file inside the folder/repo (dequantized on load)
    trust_remote_code: bool = False  # only ever True when the user asks
    # The frozen base's dtype (train/precision.py); auto: float32 on CPU, the precision's half type on CUDA.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class DataSpec(Spec):
    # "builtin:<name>", a local file/dir (CSV, JSON, JSONL, Parquet), or a hub dataset name.
    source: str = DEFAULT_DATA
    subset: str | None = None  # hub configuration name
    train_file: str | None = None  # explicit per-split files override `source`
    validation_file: str | None = None
    test_file: str | None = None
    # Column of each role; None: the built-in dataset's own name, else the task's default.
    text_column: str | None = None  # the input text (tweet, dialogue, article, table)
    text_pair_column: str | None = None
    label_column: str | None = None
    target_column: str | None = None  # text to generate (summary, title, distractors)
    references_column: str | None = None  # several reference targets per example, when the data has them
    question_column: str | None = None
    choices_column: str | None = None
    answer_column: str | None = None
    image_column: str | None = None
    test_fraction: float | None = Field(None, gt=0.0, lt=0.9)  # carve test from train when there is none
    validation_fraction: float = Field(0.1, gt=0.0, lt=0.5)
    max_train_examples: int | None = Field(None, ge=1)
    max_eval_examples: int | None = Field(None, ge=1)


class GenerationSpec(Spec):
    """Decoding for tasks scored on generated text.

    Plain greedy decoding of small models falls into loops ("Ghana Ghana Ghana ..."). The
    defaults stop them: a 1.2 repetition penalty on generated tokens (CTRL's value; the
    prompt is exempt, so names can be copied from the source) and no 5-gram twice. A
    3-gram ban would be too strict: "#Person1#" is four tokens, and a summary names it often.
    """

    max_new_tokens: int = Field(64, ge=1, le=4096)
    num_beams: int = Field(1, ge=1, le=32)
    do_sample: bool = False
    temperature: float = Field(1.0, gt=0.0, le=10.0)
    top_k: int = Field(50, ge=0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    repetition_penalty: float = Field(1.2, ge=1.0, le=10.0)
    no_repeat_ngram_size: int = Field(5, ge=0, le=32)


class TaskSpec(Spec):
    kind: str = "classification"
    data: DataSpec = DataSpec()
    max_length: int = Field(128, ge=8, le=8192)  # input tokens (prompt and source text)
    max_target_length: int = Field(128, ge=1, le=4096)  # target tokens in training
    prompt: str | None = None  # template with {input}, for decoder and seq2seq models; None: the task's
    generation: GenerationSpec = GenerationSpec()
    samples: int = Field(5, ge=0, le=100)  # test examples stored with untuned and tuned outputs
    # What a classification head reads (tasks/pooling.py): auto resolves to the checkpoint's own pooling
    # (sentence-transformers' 1_Pooling) or "model" (the model's own pooler, as before); hashed unless "model".
    pooling: Literal["auto", "model", "cls", "mean", "last"] = "auto"

    @model_validator(mode="after")
    def _prompt_has_input(self) -> TaskSpec:
        if self.prompt is not None and self.prompt.count("{input}") != 1:
            raise ValueError("task.prompt must contain {input} exactly once, where the example's text goes")
        return self


class MethodSpec(Spec):
    name: str = "lora"
    params: dict[str, Any] = {}


class TrainSpec(Spec):
    lr: float | None = Field(None, gt=0.0, allow_inf_nan=False)  # None: the method's default
    # Rate of the modules the checkpoint did not fill (task head, a new pooler); None: the method's
    # default_head_lr, else train.lr. Hashed only where it differs from train.lr (train/optim.py).
    head_lr: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    grad_accum: int = Field(1, ge=1)
    steps: int | None = Field(None, ge=1)  # budget: optimizer steps ...
    epochs: float | None = Field(None, gt=0.0, allow_inf_nan=False)  # ... or epochs (steps wins if both) ...
    flops: float | None = Field(None, gt=0.0, allow_inf_nan=False)  # ... or measured training FLOPs ...
    seconds: float | None = Field(None, gt=0.0, allow_inf_nan=False)  # ... or training wall seconds (evaluation excluded)
    warmup_ratio: float = Field(0.06, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.01, ge=0.0, allow_inf_nan=False)
    max_grad_norm: float | None = Field(1.0, gt=0.0, allow_inf_nan=False)
    eval_every: int | None = Field(None, ge=1)  # None: 4 points per run
    select_metric: str | None = None  # validation metric that picks the checkpoint; None: the task's
    optimizer: Literal["adamw", "adafactor", "prodigy"] = "adamw"
    # Autocast precision (train/precision.py); auto: bf16 on a CUDA GPU that supports it, else fp32.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    seed: int = Field(0, ge=0, le=2**32 - 1)  # numpy and the data order take 32-bit seeds
    test: bool = True  # score the test split at the end; False for learning-rate search runs
    # Optimizer steps between mid-run checkpoints, which a killed run resumes from (train/checkpoint.py).
    # None ("auto"): on for runs estimated over 10 minutes; 0: off. Not hashed: it changes no result.
    checkpoint_every: int | None = Field(None, ge=0, strict=True)
    # Recompute activations in the backward pass (less memory, ~1/3 more compute); hashed only when on.
    gradient_checkpointing: bool = False
    packing: bool = False  # decoder text generation: examples packed into rows without padding (train/packing.py)

    @field_validator("checkpoint_every", mode="before")
    @classmethod
    def _auto(cls, value: Any) -> Any:
        return None if value == "auto" else value

    @model_validator(mode="after")
    def _default_budget(self) -> TrainSpec:
        if self.flops is not None or self.seconds is not None:
            if self.flops is not None and self.seconds is not None:
                raise ValueError("give one compute budget: train.flops or train.seconds, not both")
            if self.steps is not None or self.epochs is not None:
                raise ValueError("a train.flops or train.seconds budget replaces train.steps/epochs; drop those")
        elif self.steps is None and self.epochs is None:
            self.epochs = 1.0
        return self

    @property
    def budget(self) -> tuple[str, float]:
        """The budget's kind (steps, epochs, flops or seconds) and size."""
        for kind in ("flops", "seconds", "steps", "epochs"):
            if (value := getattr(self, kind)) is not None:
                return kind, float(value)
        raise AssertionError("a TrainSpec always has a budget")


class MeasureSpec(Spec):
    """Inference measurements taken after training (they change what is stored, so they are hashed)."""

    latency: bool = True  # latency at batch 1 and throughput at batch `latency_batch`, merged too when possible
    latency_batch: int = Field(32, ge=1)
    latency_repeats: int = Field(5, ge=1)  # timed repeats at least; more until the median's 95% interval is within 5%
    latency_max_repeats: int = Field(10, ge=1)  # ... or this many (measure/latency.py; twice the 5 timed before)
    # ... or, once a series' timed repeats add up to this many seconds, as soon as it has 3 (fewer than
    # latency_repeats when each takes seconds: a 135M decoder generating on one core took ~10 s a call)
    latency_seconds: float = Field(20.0, gt=0.0, allow_inf_nan=True)
    forgetting: bool = False  # LM loss on general text before and after tuning (measure/forgetting.py)
    # The device's peak TFLOP/s for MFU, replacing the known-GPU table or the CPU probe. Not hashed:
    # it changes no trained number, and the result records the peak it used.
    peak_tflops: float | None = Field(None, gt=0.0, allow_inf_nan=False)


# Keys added after runs were stored, left out of canonical() while at their default so those runs keep their hash.
NEW_AT_DEFAULT_UNHASHED = (("train", "gradient_checkpointing"), ("train", "packing"), ("measure", "latency_max_repeats"),
                           ("train", "head_lr"), ("task", "pooling"), ("measure", "forgetting"),
                           ("measure", "latency_seconds"))


class RunConfig(Spec):
    model: ModelSpec = ModelSpec()
    task: TaskSpec = TaskSpec()
    method: MethodSpec = MethodSpec()
    train: TrainSpec = TrainSpec()
    measure: MeasureSpec = MeasureSpec()

    def canonical(self) -> dict[str, Any]:
        """What determines the result (stored and hashed). How often a run checkpoints changes nothing
        in it, nor the peak that MFU divides by. Keys added later are left out at the value every
        earlier run had (gradient_checkpointing and packing off, a resolved fp32 precision and float32 dtype),
        so such configs keep their hashes; other values (bf16, float16, ...) enter it."""
        out = self.model_dump(mode="json", exclude={"train": {"checkpoint_every"}, "measure": {"peak_tflops"}})
        for section, key in NEW_AT_DEFAULT_UNHASHED:
            if out[section][key] == type(getattr(self, section)).model_fields[key].default:
                del out[section][key]
        if out["train"].get("precision") == "fp32":
            del out["train"]["precision"]
        if out["model"].get("dtype") == "float32":
            del out["model"]["dtype"]
        if out["task"].get("pooling") == "model":  # what every earlier run used
            del out["task"]["pooling"]
        return out


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at a location, to suggest a fix for a misspelled key."""
    cur: Any = model
    for part in loc[:-1]:
        field = getattr(cur, "model_fields", {}).get(part)
        if field is None or not isinstance(field.annotation, type):
            return []
        cur = field.annotation
    return list(getattr(cur, "model_fields", {}))


def explain(err: ValidationError, model: type[BaseModel], where: str = "config") -> UserError:
    """Turn pydantic's report into one line naming the key, the problem and the fix."""
    e = err.errors()[0]
    loc = tuple(e["loc"])
    key = ".".join(str(p) for p in loc)
    if e["type"] == "extra_forbidden":
        known = _fields_at(model, loc)
        hint = suggest(str(loc[-1]), known) or f" (known keys: {', '.join(known)})"
        return UserError(f"unknown {where} key '{key}'{hint}; fix or remove it")
    msg = str(e["msg"]).removeprefix("Value error, ")  # our validators word their message fully
    if not loc:  # a check across several keys
        return UserError(f"bad {where}: {msg}")
    return UserError(f"bad {where} value for '{key}': {msg} (got {e.get('input')!r})")


def parse_config(data: dict[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise explain(err, RunConfig) from None


def load_yaml(path: str | Path, kind: str = "config file", flag: str = "--config",
              holds: str = "model:, task:, method:, train:") -> dict[str, Any]:
    """A YAML mapping from a file (a run config, or a sweep file), refused in one line if it is not one."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{kind} '{p}' does not exist; check the path given to {flag}")
    try:
        data = parse_yaml(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise UserError(f"{kind} '{p}' is not UTF-8 text (bad byte at offset {err.start}); save it as UTF-8") from None
    except OSError as err:
        raise UserError(f"cannot read {kind} '{p}': {err.strerror or err}; check its permissions") from None
    except DuplicateKey as dup:
        raise UserError(f"{kind} '{p}' repeats the key '{dup.key}' (line {dup.line}); keep one of them") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{kind} '{p}' is not valid YAML{line}; fix the syntax") from None
    if not isinstance(data, dict):
        raise UserError(f"{kind} '{p}' must hold a mapping ({holds})")
    if _asks_remote_code(data):  # a shared or downloaded file must never run a model's own code
        raise UserError(
            f"{kind} '{p}' sets trust_remote_code; a file cannot allow remote code: remove the key and pass "
            "--trust-remote-code on the command line (peftbench run / compare) if you trust the model's code"
        )
    return data


class DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"duplicate key {key!r} at line {line}")
        self.key, self.line = key, line


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping holding a key twice (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise DuplicateKey(key, key_node.start_mark.line + 1)
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                pass
        return super().construct_mapping(node, deep)


def parse_yaml(text: str) -> Any:
    """yaml.safe_load, refusing duplicate keys at any depth (DuplicateKey, a YAMLError)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)


def _asks_remote_code(node: Any) -> bool:
    """True if any mapping in a loaded file sets trust_remote_code to anything but false/null."""
    if isinstance(node, dict):
        return any((k == "trust_remote_code" and v not in (False, None)) or _asks_remote_code(v) for k, v in node.items())
    if isinstance(node, list):
        return any(_asks_remote_code(v) for v in node)
    return False


def nest(key: str, value: Any) -> dict[str, Any]:
    """A dotted config key and its value as nested mappings: nest("train.lr", 1e-3) == {"train": {"lr": 1e-3}}."""
    out: Any = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def flatten(d: dict[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested mappings as dotted keys (the inverse of nest); empty mappings stay values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, dict) and v:
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
