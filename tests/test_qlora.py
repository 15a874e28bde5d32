"""QLoRA: one clear refusal where it cannot run (no CUDA, no bitsandbytes); training on a GPU."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
from typer.testing import CliRunner

import peftbench.runner  # noqa: F401  (import torch/transformers outside the captured streams)
from peftbench.cli import app
from peftbench.errors import UserError
from peftbench.methods import get_method
from peftbench.methods import qlora
from peftbench.methods.base import Context

pytestmark = pytest.mark.timeout(300)

# What peftbench.cli.main() does before it runs the app (CliRunner calls the app itself).
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

NO_CUDA = "method 'qlora' needs a CUDA GPU (4-bit weights through bitsandbytes); this machine has none — use lora"
HAS_CUDA = torch.cuda.is_available()
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


def ctx(head: list[str] | None = None) -> Context:
    return Context("SEQ_CLS", "tiny", 10, family="encoder", head_modules=head or ["classifier"])


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def cuda_without_bnb(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else find_spec(name, *a))


# -- refusals, before any model is loaded ------------------------------------------------


def test_check_refuses_a_machine_without_cuda(no_cuda: None) -> None:
    m = get_method("qlora")({})
    with pytest.raises(UserError) as err:
        m.check(ctx())
    assert str(err.value) == NO_CUDA
    with pytest.raises(UserError, match=re.escape(NO_CUDA)):
        qlora.QLora.preflight()  # a classmethod: no instance, no model needed


def test_load_kwargs_refuses_before_loading(no_cuda: None) -> None:
    with pytest.raises(UserError, match=re.escape(NO_CUDA)):
        get_method("qlora")({}).load_kwargs()


def test_refuses_without_bitsandbytes_naming_the_pip_command(cuda_without_bnb: None) -> None:
    with pytest.raises(UserError) as err:
        get_method("qlora")({}).check(ctx())
    msg = str(err.value)
    assert "bitsandbytes" in msg and "pip install 'bitsandbytes>=0.45'" in msg and "\n" not in msg


def test_refuses_an_old_bitsandbytes(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else find_spec(name, *a))
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.41.0")
    with pytest.raises(UserError, match=r"bitsandbytes 0\.45 or newer \(installed: 0\.41\.0\).*pip install"):
        get_method("qlora")({}).check(ctx())


def test_load_kwargs_ask_for_nf4_double_quant_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qlora.QLora, "preflight", classmethod(lambda cls: None))
    q = get_method("qlora")({}).load_kwargs()["quantization_config"]
    assert q.load_in_4bit and not q.load_in_8bit
    assert q.bnb_4bit_quant_type == "nf4" and q.bnb_4bit_use_double_quant
    assert q.bnb_4bit_compute_dtype == torch.bfloat16
    assert "classifier" in q.llm_int8_skip_modules and "score" in q.llm_int8_skip_modules  # heads stay trainable


def test_apply_refuses_a_model_not_loaded_in_4bit(monkeypatch: pytest.MonkeyPatch, tiny_model: str) -> None:
    """QLoRA over full-precision weights would silently be LoRA: a caller that forgot load_kwargs is a bug."""
    from transformers import AutoModelForSequenceClassification

    monkeypatch.setattr(qlora.QLora, "preflight", classmethod(lambda cls: None))
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model, num_labels=3, ignore_mismatched_sizes=True)
    with pytest.raises(RuntimeError, match="load_kwargs"):
        get_method("qlora")({}).apply(model, ctx())


def test_takes_lora_hyper_parameters() -> None:
    params = get_method("qlora")({"r": 4, "alpha": 8}).normalized_params()
    assert params["r"] == 4 and params["alpha"] == 8 and params["gradient_checkpointing"] is True
    with pytest.raises(UserError, match="did you mean 'alpha'"):
        get_method("qlora")({"lora_alpha": 8})


# -- through the CLI ----------------------------------------------------------------------


def cli_args(tiny_model: str, tiny_data: Path, res: Path) -> list[str]:
    return ["run", "--method", "qlora", "--model", tiny_model, "--data", str(tiny_data), "--steps", "2",
            "--batch-size", "8", "--max-length", "32", "--results-dir", str(res)]


def assert_one_error_line(stderr: str, exit_code: int, output: str) -> str:
    shown = f"exit {exit_code}\nstderr: {stderr!r}"
    assert exit_code == 2, shown
    assert "Traceback" not in output, shown
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    return lines[0]


@pytest.mark.skipif(HAS_CUDA, reason="the refusal is for machines without CUDA")
def test_cli_refuses_without_cuda_and_stores_nothing(tiny_model: str, tiny_data: Path, tmp_path: Path) -> None:
    res = tmp_path / "results"
    r = CliRunner().invoke(app, cli_args(tiny_model, tiny_data, res))
    assert not (r.exception and not isinstance(r.exception, SystemExit)), f"uncaught {r.exception!r}"
    line = assert_one_error_line(r.stderr, r.exit_code, r.output)
    assert line == f"error: {NO_CUDA}"
    assert not res.exists(), "a refused run must not create the results folder"


@pytest.mark.skipif(HAS_CUDA, reason="the refusal is for machines without CUDA")
def test_installed_command_refuses_without_cuda(tiny_model: str, tiny_data: Path, tmp_path: Path) -> None:
    """The real console script: what a user's terminal shows, library warnings included."""
    exe = Path(sys.executable).with_name("peftbench")
    if not exe.exists():
        pytest.skip("the peftbench console script is not installed in this environment")
    res = tmp_path / "results"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    p = subprocess.run([str(exe), *cli_args(tiny_model, tiny_data, res)], capture_output=True, text=True,
                       env=env, timeout=240)
    line = assert_one_error_line(p.stderr, p.returncode, p.stdout + p.stderr)
    assert line == f"error: {NO_CUDA}"
    assert not res.exists()


# -- on a GPU -----------------------------------------------------------------------------


@pytest.mark.skipif(not (HAS_CUDA and HAS_BNB), reason="QLoRA trains only on a CUDA GPU with bitsandbytes installed")
def test_trains_lora_over_4bit_weights_and_reloads(tiny_config: dict, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    from peftbench.config import parse_config
    from peftbench.measure.flops import FlopMeter
    from peftbench.runner import normalize
    from peftbench.tasks import get_task
    from peftbench.train.budget import Budget
    from peftbench.train.loop import train

    steps = 4
    raw = {**tiny_config, "method": {"name": "qlora", "params": {"r": 4}},
           "train": {**tiny_config["train"], "steps": steps, "eval_every": steps}}
    cfg, m = normalize(parse_config(raw))
    task = get_task(cfg.task.kind)(cfg.task)
    task.load_data()
    task.load_model(cfg.model)  # the tokenizer and batching; the model itself is loaded in 4-bit below

    def load_4bit():
        torch.manual_seed(0)
        return AutoModelForSequenceClassification.from_pretrained(
            cfg.model.name, num_labels=len(task.labels), ignore_mismatched_sizes=True, **m.load_kwargs()
        )

    base = load_4bit()
    assert base.is_loaded_in_4bit
    assert any(type(x).__name__ == "Linear4bit" for x in base.modules())
    assert type(base.classifier).__name__ == "Linear", "the head must stay in full precision"
    model = m.apply(base, Context(task.peft_task_type, cfg.model.name, steps, head_modules=["classifier"]))
    device = torch.device("cuda")
    model.to(device)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = train(model, m, task, cfg.train, cfg.train.lr, Budget("steps", steps), device, FlopMeter(), FlopMeter())
    assert out.steps == steps
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert changed and all(re.search(r"lora_|classifier", n) for n in changed), sorted(changed)[:5]
    assert any("lora_" in n for n in changed) and any("classifier" in n for n in changed)

    m.save(model, tmp_path / "adapter")
    reloaded = get_method("qlora")(cfg.method.params).load(load_4bit(), tmp_path / "adapter")
    batch = {k: v.to(device) for k, v in next(task.train_batches(8, seed=5)).items()}
    model.eval(), reloaded.eval()
    with torch.no_grad():
        a, b = model(**batch).logits, reloaded(**batch).logits
    torch.testing.assert_close(a.float(), b.float(), rtol=0, atol=1e-5)
