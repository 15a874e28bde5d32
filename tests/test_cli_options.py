"""The option table (cli/options.py): every flag is in --help, sets a real config key, and round-trips."""

from __future__ import annotations

import string
from typing import Any

import pytest
import typer.main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.cli.options import COMPARE, FLAGS, RUN, SWEEP, build_config, flags_for
from peftbench.config import DataSpec, GenerationSpec, RunConfig, flatten, parse_config
from peftbench.methods import REGISTRY

BUDGETS = ("steps", "epochs", "flops", "seconds")  # one at a time: the config refuses two
WIDE = {"COLUMNS": "300", "TERMINAL_WIDTH": "300"}  # long help lines stay whole


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def keyed(command: str) -> list[Any]:
    return [f for f in flags_for(command) if f.key]


@pytest.mark.parametrize("command", [RUN, COMPARE, SWEEP])
def test_every_option_of_the_table_is_in_help(command: str) -> None:
    res = CliRunner().invoke(app, [command, "--help"], env=WIDE)
    assert res.exit_code == 0, res.output
    for f in flags_for(command):
        assert flag(f.name) in res.stdout, f"{flag(f.name)} missing from `{command} --help`"
        assert f.help_for.get(command, f.help)[:40] in res.stdout


def test_flag_names_are_unique_and_run_and_compare_share_the_rest() -> None:
    names = [f.name for f in FLAGS]
    assert len(names) == len(set(names))
    assert {f.name for f in keyed(COMPARE)} <= {f.name for f in keyed(RUN)}
    # A sweep file holds its configs; remote code can only be allowed on the command line.
    assert {f.name for f in flags_for(SWEEP)} == {"force", "results_dir", "report_to", "trust_remote_code"}


@pytest.mark.parametrize("f", [f for f in FLAGS if f.key], ids=lambda f: f.name)
def test_every_config_key_exists(f: Any) -> None:
    model: Any = RunConfig
    for part in f.key.split("."):
        assert isinstance(model, type) and issubclass(model, BaseModel), f"{f.key}: {part} is inside a value"
        assert part in model.model_fields, f"{f.key}: no '{part}' in {model.__name__}"
        model = model.model_fields[part].annotation


# -- round trip: random valid values, given as a user types them, land in the config ---------------

WORD = st.text(string.ascii_letters + string.digits + "_./", min_size=1, max_size=10).filter(lambda s: s[0] not in "-.")
POSITIVE = st.floats(min_value=1e-6, max_value=1e15, allow_nan=False, allow_infinity=False)
SCALARS: dict[str, st.SearchStrategy] = {
    "method": st.sampled_from(sorted(REGISTRY)), "model": WORD, "gguf_file": WORD, "task": WORD, "data": WORD,
    "prompt": st.builds(lambda a, b: f"{a}{{input}}{b}", WORD, WORD), "max_target_length": st.integers(1, 4096),
    "test_fraction": st.floats(min_value=0.001, max_value=0.899), "samples": st.integers(0, 100),
    "optimizer": st.sampled_from(["adamw", "adafactor", "prodigy"]), "subset": WORD, "train_file": WORD,
    "validation_file": WORD, "test_file": WORD, "text_column": WORD, "text_pair_column": WORD, "label_column": WORD,
    "max_train_examples": st.integers(1, 10**6), "max_eval_examples": st.integers(1, 10**6),
    "max_length": st.integers(8, 8192), "lr": POSITIVE, "steps": st.integers(1, 10**6), "epochs": POSITIVE,
    "flops": POSITIVE, "seconds": POSITIVE, "batch_size": st.integers(1, 4096), "eval_batch_size": st.integers(1, 4096),
    "grad_accum": st.integers(1, 64), "eval_every": st.integers(1, 10**6), "checkpoint_every": st.integers(0, 10**6), "seed": st.integers(0, 2**31),
    "trust_remote_code": st.booleans(), "gradient_checkpointing": st.booleans(), "peak_tflops": POSITIVE,
    "precision": st.sampled_from(["auto", "fp32", "bf16", "fp16"]),
    "dtype": st.sampled_from(["auto", "float32", "bfloat16", "float16"]),
    "packing": st.booleans(),
    "head_lr": POSITIVE, "pooling": st.sampled_from(["auto", "model", "cls", "mean", "last"]),  # issue 16 items 3, 4
    "forgetting": st.booleans(),  # issue 17 item 5
}
GENERATION = {
    "max_new_tokens": st.integers(1, 4096), "num_beams": st.integers(1, 32), "do_sample": st.booleans(),
    "temperature": st.floats(min_value=0.01, max_value=10.0), "top_k": st.integers(0, 1000),
    "top_p": st.floats(min_value=0.01, max_value=1.0), "repetition_penalty": st.floats(min_value=1.0, max_value=10.0),
    "no_repeat_ngram_size": st.integers(0, 32),
}
ROLES = sorted(k.removesuffix("_column") for k in DataSpec.model_fields if k.endswith("_column"))
MAPPINGS: dict[str, st.SearchStrategy] = {  # repeated KEY=VALUE flags: {argv key: (config key suffix, value)}
    "column": st.dictionaries(st.sampled_from(ROLES), WORD, max_size=4).map(
        lambda d: {r: (f"{r}_column", v) for r, v in d.items()}),
    "generation": st.fixed_dictionaries({}, optional=GENERATION).map(lambda d: {k: (k, v) for k, v in d.items()}),
    "param": st.dictionaries(st.from_regex(r"[a-z][a-z_]{0,8}", fullmatch=True), st.integers(-1000, 1000), max_size=3).map(
        lambda d: {k: (k, v) for k, v in d.items()}),
}


def text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else repr(value) if isinstance(value, float) else str(value)


def test_every_config_flag_has_a_strategy() -> None:
    assert {f.name for f in FLAGS if f.key} == set(SCALARS) | set(MAPPINGS)
    assert set(GENERATION) == set(GenerationSpec.model_fields)


@st.composite
def given_flags(draw: Any, command: str) -> tuple[list[str], dict[str, Any]]:
    """argv for some of a command's flags, and the dotted config keys they must set."""
    budget = draw(st.sampled_from([None, *BUDGETS]))
    argv: list[str] = []
    expected: dict[str, Any] = {}
    repeated: dict[str, Any] = {}  # --column text=X wins over --text-column Y, wherever each stands
    for f in keyed(command):
        if f.name in BUDGETS and f.name != budget or f.name not in BUDGETS and not draw(st.booleans()):
            continue
        if f.name in MAPPINGS:
            for k, (suffix, v) in draw(MAPPINGS[f.name]).items():
                argv += [flag(f.name), f"{k}={text(v)}"]
                repeated[f"{f.key}.{suffix}"] = v
            continue
        value = draw(SCALARS[f.name])
        argv += ([flag(f.name)] if value else []) if f.type is bool else [flag(f.name), text(value)]
        expected[f.key] = value
    return argv, {**expected, **repeated}


@pytest.mark.parametrize("command", [RUN, COMPARE])
@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_random_valid_flags_round_trip_into_the_config(command: str, data: Any) -> None:
    argv, expected = data.draw(given_flags(command))
    click_cmd = typer.main.get_command(app).commands[command]
    params = click_cmd.make_context(command, list(argv)).params
    raw, _ = build_config(None, {f.name: params[f.name] for f in flags_for(command)})
    got = flatten(parse_config(raw).model_dump(mode="json"))  # all keys (canonical() leaves out checkpoint_every)
    for key, value in expected.items():
        assert got[key] == value, (key, argv)
