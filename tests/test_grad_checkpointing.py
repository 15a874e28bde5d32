"""Issue 13 item 2: gradient checkpointing for every method, model FLOPs vs hardware FLOPs.

With checkpointing on, a step's outputs and gradients are those without it, its model FLOPs
(forward + backward) are the same, and its hardware FLOPs add exactly the recomputed forward
of the checkpointed layers.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import set_checkpoint_early_stop
from torch.utils.flop_counter import FlopCounterMode
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.errors import UserError
from peftbench.measure.flops import FlopMeter
from peftbench.methods import get_method
from peftbench.methods.base import Context
from peftbench.store import Store
from peftbench.train import grad_checkpointing

ARCHS = {  # arch -> (auto class, kwargs, family, head modules)
    "bert": ("AutoModelForSequenceClassification", {"num_labels": 3}, "encoder", ["classifier"]),
    "gpt2": ("AutoModelForCausalLM", {}, "decoder", []),
    "llama": ("AutoModelForCausalLM", {}, "decoder", []),
    "t5": ("AutoModelForSeq2SeqLM", {}, "seq2seq", []),
    "bart": ("AutoModelForSeq2SeqLM", {}, "seq2seq", []),
    "vit": ("AutoModelForImageClassification", {}, "vision", ["classifier"]),
}
TASK_TYPES = {"encoder": "SEQ_CLS", "decoder": "CAUSAL_LM", "seq2seq": "SEQ_2_SEQ_LM", "vision": None}
METHODS = ["lora", "full", "parallel_adapter", "ia3"]
_loaded: dict[str, nn.Module] = {}


def model_with(tiny_models, arch: str, method: str, checkpointing: bool) -> nn.Module:
    """The tiny model with `method` applied (seeded, so both variants start from the same weights), training mode."""
    import transformers
    from transformers.utils import logging

    auto, kwargs, family, heads = ARCHS[arch]
    if arch not in _loaded:
        logging.set_verbosity_error()
        torch.manual_seed(0)
        _loaded[arch] = getattr(transformers, auto).from_pretrained(tiny_models(arch), **kwargs)
    torch.manual_seed(1)
    ctx = Context(TASK_TYPES[family], tiny_models(arch), 10, family, heads)
    model = get_method(method)({}).apply(copy.deepcopy(_loaded[arch]), ctx)
    if checkpointing:
        grad_checkpointing.enable(model, arch)
    return model.train()


def batch(arch: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if arch == "vit":
        return {"pixel_values": torch.randn(2, 3, 32, 32, generator=g), "labels": torch.tensor([0, 1])}
    ids = torch.randint(4, 40, (2, 9), generator=g)
    labels = {"bert": torch.tensor([0, 2]), "t5": ids[:, :5].clone(), "bart": ids[:, :5].clone()}.get(arch, ids)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def step(model: nn.Module, arch: str) -> tuple[FlopMeter, torch.Tensor, dict[str, torch.Tensor]]:
    meter = FlopMeter()
    torch.manual_seed(2)  # dropout is on: the recomputation must replay the same masks
    loss = meter.train_step(model, batch(arch))
    return meter, loss, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def checkpointed_layers_forward(model: nn.Module, arch: str) -> int:
    """Forward FLOPs inside the checkpointed layers, counted per module on a plain forward."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    fc = FlopCounterMode(display=False)
    with fc, torch.no_grad():
        model(**batch(arch))
    counts = fc.get_flop_counts()
    root = type(model).__name__
    return sum(sum(counts.get(f"{root}.{name}", {}).values())
               for name, m in model.named_modules() if isinstance(m, GradientCheckpointingLayer))


@pytest.mark.parametrize("arch,method", [(a, m) for a in ("bert", "gpt2", "llama") for m in METHODS]
                         + [(a, m) for a in ("t5", "bart", "vit") for m in ("lora", "bottleneck_adapter")])
def test_same_outputs_gradients_and_model_flops_hardware_flops_add_the_recomputation(tiny_models, arch, method):
    off, loss_off, grads_off = step(model_with(tiny_models, arch, method, False), arch)
    ckpt = model_with(tiny_models, arch, method, True)
    on, loss_on, grads_on = step(ckpt, arch)

    assert torch.equal(loss_on, loss_off)
    assert grads_on.keys() == grads_off.keys() and grads_on
    for name, g in grads_off.items():
        torch.testing.assert_close(grads_on[name], g, rtol=1e-5, atol=1e-6, msg=name)
    # Model FLOPs: forward + backward, the same with checkpointing on; nothing recomputed without it.
    assert (on.forward_flops, on.backward_flops, on.total) == (off.forward_flops, off.backward_flops, off.total)
    assert off.recompute_flops == 0 and off.hardware_total == off.total
    # Hardware FLOPs: plus what the backward pass recomputed, which is the checkpointed layers' forward
    # (torch stops a recomputation early once the backward has what it needs, e.g. before Llama's last
    # MLP matmul; with early stop off it reruns each layer's whole forward).
    layers = checkpointed_layers_forward(ckpt, arch)
    assert on.hardware_total == on.total + on.recompute_flops
    assert 0 < on.recompute_flops <= layers < on.forward_flops
    with set_checkpoint_early_stop(False):
        full, _, _ = step(model_with(tiny_models, arch, method, True), arch)
    assert full.recompute_flops == layers and full.total == off.total


def test_prompt_methods_and_evaluation_under_checkpointing(tiny_models):
    """Prompt tuning trains through checkpointed layers too; in eval mode nothing is recomputed."""
    off, loss_off, grads_off = step(model_with(tiny_models, "gpt2", "prompt", False), "gpt2")
    model = model_with(tiny_models, "gpt2", "prompt", True)
    on, loss_on, grads_on = step(model, "gpt2")
    assert torch.equal(loss_on, loss_off) and on.total == off.total and on.recompute_flops > 0
    for name, g in grads_off.items():
        torch.testing.assert_close(grads_on[name], g, rtol=1e-5, atol=1e-6)
    meter = FlopMeter()
    model.eval()
    meter.forward(model, batch("gpt2"))
    assert meter.forward_flops > 0 and meter.recompute_flops == 0


def test_a_model_without_checkpointing_support_is_refused(tiny_models):
    model = model_with(tiny_models, "bert", "lora", False)
    grad_checkpointing.transformers_model(model).supports_gradient_checkpointing = False
    with pytest.raises(UserError, match="does not support gradient checkpointing; drop --gradient-checkpointing"):
        grad_checkpointing.enable(model, "tiny-bert")


def cli(*args: str) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, list(args))
    return res.exit_code, res.stdout, res.stderr


def run_args(tiny_model: str, tiny_data: Path, results: Path, *extra: str) -> list[str]:
    return ["run", "--model", tiny_model, "--data", str(tiny_data), "--max-length", "32", "--steps", "3",
            "--batch-size", "8", "--eval-batch-size", "16", "--results-dir", str(results), "--json", *extra]


@pytest.mark.parametrize("method", ["lora", "full"])
def test_cli_run_stores_model_and_hardware_flops(tiny_model, tiny_data, tmp_path, method):
    code, plain, _ = cli(*run_args(tiny_model, tiny_data, tmp_path, "-m", method))
    assert code == 0, plain
    code, ckpt, _ = cli(*run_args(tiny_model, tiny_data, tmp_path, "-m", method, "--gradient-checkpointing"))
    assert code == 0, ckpt
    plain, ckpt = json.loads(plain), json.loads(ckpt)
    assert not ckpt["skipped"] and ckpt["run_id"] != plain["run_id"]  # a config of its own
    a, b = plain["result"]["costs"], ckpt["result"]["costs"]
    assert a["train_hardware_flops"] == a["train_flops"]
    assert b["train_flops"] == a["train_flops"] and b["train_forward_flops"] == a["train_forward_flops"]
    assert b["train_hardware_flops"] > b["train_flops"]
    assert ckpt["result"]["test"] == plain["result"]["test"]  # the same training, step for step
    assert ckpt["result"]["validation"] == plain["result"]["validation"]
    with Store(tmp_path) as store:
        configs = {r.run_id: r.config for r in store.list()}
    assert configs[ckpt["run_id"]]["train"]["gradient_checkpointing"] is True
    assert "gradient_checkpointing" not in configs[plain["run_id"]]["train"]  # older configs keep their hash


def test_cli_refuses_checkpointing_a_model_that_cannot(tiny_model, tiny_data, tmp_path, monkeypatch):
    from transformers import BertPreTrainedModel

    monkeypatch.setattr(BertPreTrainedModel, "supports_gradient_checkpointing", False)
    code, out, err = cli(*run_args(tiny_model, tiny_data, tmp_path, "--gradient-checkpointing"))
    assert code == 2 and "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]  # after the weights' load bar
    assert len(errors) == 1 and "does not support gradient checkpointing; drop --gradient-checkpointing" in errors[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
