"""The options of run, compare and sweep, each declared once, and how flags become config overrides.

A Flag names its parameter, type, help and the dotted config key it sets; `with_options`
gives a command the flags meant for it, and `overrides` turns the values given into one
nested config overlay. A flag without a key (--results-dir, --force) is the command's own.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import typer
import yaml

from peftbench.config import deep_merge, load_yaml, nest, parse_yaml
from peftbench.errors import UserError
from peftbench.report.constraints import KINDS

DEFAULT_METHODS = "base,head,full,lora,ia3,prompt"
# The bundled default comparison's budget: 64 steps of 32 (~0.6 epoch of TweetEval emotion)
# keeps six methods within 5 minutes on 2 CPU cores. Any budget flag or config replaces it.
MAIN_JOB_STEPS = 64
RESULTS_DIR = "./peftbench-results"
RUN, COMPARE, SWEEP, REPORT = "run", "compare", "sweep", "report"


def _results_dir(value: str | Path) -> Path:
    """--results-dir as a Path; '' would become '.' and scatter runs in the current folder."""
    if isinstance(value, str) and not value.strip():
        raise typer.BadParameter(f"the results folder is empty ({value!r}); give a folder, e.g. --results-dir {RESULTS_DIR}")
    return Path(value)


def results_dir_option(help: str = "Results folder.") -> Any:
    """The --results-dir option every command that reads or writes the store takes."""
    return typer.Option(RESULTS_DIR, help=help, parser=_results_dir)


def _pairs(items: list[str], flag: str, example: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} {item!r} is not KEY=VALUE; write it like {flag} {example}")
        pairs.append((key.strip(), value.strip()))
    return pairs


def _yaml_value(flag: str, item: str, value: str, example: str) -> Any:
    """A flag's KEY=VALUE value read as YAML (numbers, lists, true/false), refused in one line if it is not."""
    try:
        return parse_yaml(value)
    except yaml.YAMLError:
        raise UserError(f"{flag} {item!r}: the value is not valid YAML; check its brackets and quotes "
                        f"(e.g. {flag} '{example}')") from None


def _params(items: list[str]) -> dict[str, Any]:
    """--param KEY=VALUE as method.params."""
    params = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"--param {item!r} must look like KEY=VALUE (e.g. --param r=16)")
        k, v = item.split("=", 1)
        params[k.strip()] = _yaml_value("--param", item, v, "target_modules=[query, value]")
    return params


def _columns(items: list[str]) -> dict[str, str]:
    """--column ROLE=NAME as task.data keys (checked by the config schema)."""
    from peftbench.config import DataSpec

    roles = sorted(k.removesuffix("_column") for k in DataSpec.model_fields if k.endswith("_column"))
    columns = {}
    for role, name in _pairs(items, "--column", "target=summary"):
        role = role.replace("-", "_")
        if role not in roles:
            raise UserError(f"--column: unknown role {role!r}; roles: {', '.join(roles)}")
        columns[f"{role}_column"] = name
    return columns


def _generation(items: list[str]) -> dict[str, Any]:
    return {key: _yaml_value("--generation", f"{key}={value}", value, "num_beams=4") if value else value
            for key, value in _pairs(items, "--generation", "num_beams=4")}


def _only_if_set(on: bool) -> bool | None:
    return on or None  # only an explicit flag turns it on; a config file's true stands otherwise


@dataclass(frozen=True)
class Flag:
    """One option, declared once for every command in `commands`."""

    name: str  # the parameter; the flag is --name with dashes
    type: Any
    key: str | None  # the dotted config key it sets; None: the command uses the value itself
    help: str
    default: Any = None
    short: str | None = None  # a one-letter alias such as -t
    commands: tuple[str, ...] = (RUN, COMPARE)
    help_for: Mapping[str, str] = field(default_factory=dict)  # a command's own wording, where it differs
    to_config: Callable[[Any], Any] | None = None  # the key's value from the flag's (default: the same)
    parser: Callable[[str], Any] | None = None  # checks and converts the text given

    def option(self, command: str) -> Any:
        decls = (f"--{self.name.replace('_', '-')}", self.short) if self.short else ()
        default = list(self.default) if isinstance(self.default, list) else self.default
        return typer.Option(default, *decls, help=self.help_for.get(command, self.help), parser=self.parser)


ALL = (RUN, COMPARE, SWEEP)
FLAGS: list[Flag] = [
    Flag("method", Optional[str], "method.name", "Method name (default lora; see: peftbench methods).", short="-m", commands=(RUN,)),
    Flag("param", list[str], "method.params", "Method hyper-parameter KEY=VALUE; repeatable.", default=[], short="-p", commands=(RUN,), to_config=_params),
    Flag("model", Optional[str], "model.name", "Hub model id or local folder; 'default' is the bundled all-MiniLM-L6-v2, 'smollm2' the bundled SmolLM2."),
    Flag("trust_remote_code", bool, "model.trust_remote_code", "Allow the model repository's own Python code to run (never from a file).",
         default=False, to_config=_only_if_set, commands=ALL),
    Flag("gguf_file", Optional[str], "model.gguf_file", "A GGUF weights file inside the model folder or repo."),
    Flag("task", Optional[str], "task.kind", "Task kind (default classification; see: peftbench tasks).", short="-t"),
    Flag("data", Optional[str], "task.data.source", "'builtin:tweet_eval_emotion' (or dialogsum, commonsense_qa), a data folder, or a hub dataset name."),
    Flag("column", list[str], "task.data", "Column of a role, ROLE=NAME (text, target, references, question, choices, answer, image, ...); repeatable.", default=[], to_config=_columns),
    Flag("generation", list[str], "task.generation", "Decoding setting KEY=VALUE (max_new_tokens, num_beams, do_sample, temperature, top_k, top_p, repetition_penalty, no_repeat_ngram_size); repeatable.", default=[], short="-g", to_config=_generation),
    Flag("prompt", Optional[str], "task.prompt", "Prompt template with {input}, for decoder and seq2seq models."),
    Flag("max_target_length", Optional[int], "task.max_target_length", "Truncate training targets to this many tokens."),
    Flag("test_fraction", Optional[float], "task.data.test_fraction", "Carve this share of train as the test split when the data has none."),
    Flag("samples", Optional[int], "task.samples", "Test examples stored with untuned and tuned outputs (default 5)."),
    Flag("optimizer", Optional[str], "train.optimizer", "adamw (default), adafactor or prodigy."),
    Flag("precision", Optional[str], "train.precision", "auto (default: bf16 on a GPU that supports it, else fp32), fp32, bf16 or fp16 (CUDA only); trainable weights stay fp32."),
    Flag("dtype", Optional[str], "model.dtype", "dtype of the frozen base: auto (default: float32 on CPU, the precision's half type on a GPU), float32, bfloat16 or float16."),
    Flag("subset", Optional[str], "task.data.subset", "Hub dataset configuration name."),
    Flag("train_file", Optional[str], "task.data.train_file", "Training file (.csv/.json/.jsonl/.parquet)."),
    Flag("validation_file", Optional[str], "task.data.validation_file", "Validation file; carved from train when absent."),
    Flag("test_file", Optional[str], "task.data.test_file", "Test file."),
    Flag("text_column", Optional[str], "task.data.text_column", "Text column name (default: text)."),
    Flag("text_pair_column", Optional[str], "task.data.text_pair_column", "Second text column for pair tasks."),
    Flag("label_column", Optional[str], "task.data.label_column", "Label column name (default: label)."),
    Flag("max_train_examples", Optional[int], "task.data.max_train_examples", "Use only the first N training examples."),
    Flag("max_eval_examples", Optional[int], "task.data.max_eval_examples", "Use only the first N validation and test examples."),
    Flag("max_length", Optional[int], "task.max_length", "Truncate inputs to this many tokens."),
    Flag("lr", Optional[float], "train.lr", "Learning rate (default: the method's).",
         help_for={COMPARE: "One learning rate for every method (default: each method's own)."}),
    Flag("head_lr", Optional[float], "train.head_lr", "Learning rate of the modules the checkpoint did not fill (task head, a new pooler); "
         "default: the method's head rate, else --lr. compare --lr-grid keeps it fixed."),
    Flag("pooling", Optional[str], "task.pooling", "What a classification head reads: cls, mean or last token's hidden states, or model "
         "(the model's own pooler). Default auto: the checkpoint's sentence-transformers pooling, else model."),
    Flag("steps", Optional[int], "train.steps", "Budget in optimizer steps. compare: the reference method (--reference, "
         f"default lora) trains this many and every method gets the training FLOPs it spent ({MAIN_JOB_STEPS} when no "
         "--config/--epochs/--flops/--seconds); --budget steps gives every method these steps instead."),
    Flag("epochs", Optional[float], "train.epochs", "Budget in epochs. run: 1 when no other budget is given. "
         "compare: sets the reference method's FLOPs, as --steps does."),
    Flag("flops", Optional[float], "train.flops", "Budget in measured training FLOPs, e.g. 2.5e12 (training stops at the first step reaching it)."),
    Flag("seconds", Optional[float], "train.seconds", "Budget in training seconds (evaluation excluded)."),
    Flag("batch_size", Optional[int], "train.batch_size", "Training batch size."),
    Flag("eval_batch_size", Optional[int], "train.eval_batch_size", "Evaluation batch size (default 64; lower it for large vocabularies)."),
    Flag("grad_accum", Optional[int], "train.grad_accum", "Gradient accumulation steps."),
    Flag("packing", bool, "train.packing", "Pack several examples per row without padding (decoder text generation training).",
         default=False, to_config=_only_if_set),
    Flag("eval_every", Optional[int], "train.eval_every", "Validate every N steps (default: 4 points per run)."),
    Flag("checkpoint_every", Optional[int], "train.checkpoint_every", "Save a checkpoint every N optimizer steps; a killed run resumes from it (0: never; default: every ~5 minutes for runs estimated over 10)."),
    Flag("seed", Optional[int], "train.seed", "Random seed."),
    Flag("gradient_checkpointing", bool, "train.gradient_checkpointing", "Recompute activations in the backward pass: less memory, ~1/3 more compute (model FLOPs unchanged; hardware FLOPs stored too).", default=False, to_config=_only_if_set),
    Flag("forgetting", bool, "measure.forgetting", "Measure forgetting: the change of the LM loss on a general-text sample "
         "(WikiText-2) from before tuning to after (encoders: masked LM through the checkpoint's MLM head).",
         default=False, to_config=_only_if_set),
    Flag("peak_tflops", Optional[float], "measure.peak_tflops", "The device's peak TFLOP/s that MFU divides by (default: a table of known GPUs; on CPU a cached matmul probe)."),
    Flag("threads", Optional[str], None, "Torch threads: a count, or auto for the cores free when each run starts "
         "(faster on a busy machine, but scores then vary with the load in the last digits). Default: torch's own count."),
    Flag("matmul", Optional[str], None, "Who multiplies fp32 matrices on a CPU: auto (default: oneDNN on x86 CPUs not made by "
         "Intel, where MKL runs its generic code and oneDNN is ~2x faster; else torch's own), onednn, or torch (MKL on x86). "
         "Changes scores in the last digits, as a thread count does; each run records it."),
    Flag("wait_policy", str, None, "OpenMP wait policy: auto (default: passive when other work loads the machine), active or passive.",
         default="auto"),
    Flag("force", bool, None, "Re-run configs that already finished.", default=False, commands=ALL,
         help_for={RUN: "Re-run even if this exact config already finished."}),
    Flag("results_dir", Path, None, "Results folder (SQLite + run folders).", default=RESULTS_DIR, commands=ALL,
         parser=_results_dir),
    Flag("report_to", Optional[str], None, "Also log runs to tensorboard, mlflow and/or wandb (comma-separated; offline, under the results folder).",
         commands=ALL, help_for={SWEEP: "Also log runs to tensorboard, mlflow and/or wandb (offline)."}),
]

# The verdict's constraints (report/constraints.py), read by compare and report as text, parsed there.
FLAGS += [Flag(name, Optional[str], None, kind.help, commands=(COMPARE, REPORT)) for name, kind in KINDS.items()]


def flags_for(command: str) -> list[Flag]:
    return [f for f in FLAGS if command in f.commands]


def with_options(command: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Give a command its FLAGS after its own parameters; they reach it as one `opts` dict."""
    flags = flags_for(command)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values() if p.name != "opts"]
        shared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.option(command), annotation=f.type)
                  for f in flags]

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            opts = {f.name: kwargs.pop(f.name) for f in flags}
            return fn(**kwargs, opts=opts)

        wrapper.__signature__ = inspect.Signature(own + shared)  # type: ignore[attr-defined]  # what Typer reads
        wrapper.__annotations__ = {p.name: p.annotation for p in own + shared}
        return wrapper

    return decorate


def overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """The flags given (by parameter name) as one nested config overlay; unset ones (None, none repeated) add nothing."""
    over: dict[str, Any] = {}
    # Flags that expand into several keys go last, so --column text=X wins over --text-column Y.
    for flag in sorted((f for f in FLAGS if f.key and f.name in values), key=lambda f: f.to_config is not None):
        value = values[flag.name]
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        value = flag.to_config(value) if flag.to_config else value
        if value is not None:
            over = deep_merge(over, nest(flag.key, value))
    return over


BUDGET_KEYS = ("steps", "epochs", "flops", "seconds")


def build_config(config: Optional[Path], values: Mapping[str, Any], command: str = "run") -> tuple[dict[str, Any], Any]:
    """YAML (if any) overlaid with the flags the user gave; returns (raw config, its methods: list).

    A budget flag replaces the file's budget (as a sweep axis does); a file that is empty, a run config
    listing `methods:`, or two training lengths at once are refused: each would be silently ignored."""
    raw = load_yaml(config) if config else {}
    if config and not raw:
        raise UserError(f"config file '{config}' is empty; give model:, task:, method: or train: in it, or drop --config")
    methods = raw.pop("methods", None)
    if methods is not None and command == "run":
        raise UserError(f"config file '{config}' lists methods:, which `peftbench run` does not read; give one method "
                        "as method: {name: ...}, or compare them with: peftbench compare --config FILE")
    if methods is not None and "method" in raw:
        raise UserError(f"config file '{config}' gives both method: and methods:; keep methods: (each entry may "
                        "carry params:) and drop method:")
    over = overrides(values)
    train = raw.get("train")
    if isinstance(train, dict) and set(over.get("train", {})) & set(BUDGET_KEYS):
        raw = {**raw, "train": {k: v for k, v in train.items() if k not in BUDGET_KEYS}}
    merged = deep_merge(raw, over)
    length = merged.get("train") if isinstance(merged.get("train"), dict) else {}
    if length.get("steps") is not None and length.get("epochs") is not None:
        raise UserError("give one training length: train.steps (--steps) or train.epochs (--epochs), not both")
    return merged, methods
