"""Every method trains, touches only its own parameters, and reloads identically."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from peftbench.config import parse_config
from peftbench.measure.flops import FlopMeter
from peftbench.methods import REGISTRY, get_method
from peftbench.methods.base import Context
from peftbench.runner import normalize
from peftbench.tasks import get_task
from peftbench.train.budget import Budget
from peftbench.train.loop import train

# Which parameters (by name) each method may change; the classifier head trains under all but base.
HEAD = r"classifier"
INTENDED = {
    "base": None,
    "few_shot": None,
    "head": HEAD,
    "linear_probe": HEAD,  # fitted, not trained: the head's weights only
    "full": r".*",
    "lora": rf"lora_|{HEAD}",
    "adalora": rf"lora_|{HEAD}",
    "ia3": rf"ia3_|{HEAD}",
    "prefix": rf"prompt_encoder|{HEAD}",
    "prompt": rf"prompt_encoder|{HEAD}",
    "p_tuning": rf"prompt_encoder|{HEAD}",
    "qlora": rf"lora_|{HEAD}",
    "loha": rf"hada_|{HEAD}",
    "lokr": rf"lokr_|{HEAD}",
    "vera": rf"vera_lambda_|{HEAD}",
    "ln_tuning": rf"ln_tuning_layers|{HEAD}",
    "bitfit": rf"\.bias$|{HEAD}",
    "parallel_adapter": rf"\.parallel_adapter\.|{HEAD}",
    "bottleneck_adapter": rf"\.bottleneck_adapter\.|{HEAD}",
}


def build(raw: dict, method: str, steps: int = 6, params: dict | None = None):
    raw = {**raw, "method": {"name": method, "params": params or {}}, "train": {**raw["train"], "steps": steps}}
    cfg, m = normalize(parse_config(raw))
    task = get_task(cfg.task.kind)(cfg.task, m.load_kwargs())
    task.load_data()
    torch.manual_seed(0)
    model, _ = task.load_model(cfg.model)
    model = m.apply(model, Context(task.peft_task_type, cfg.model.name, steps, task.family, task.head_modules))
    return cfg, m, task, model


def test_every_registered_method_is_covered() -> None:
    from peftbench.methods.peft_generic import GenericTuner  # each covered in test_peft_generic.py

    assert {n for n, c in REGISTRY.items() if not issubclass(c, GenericTuner)} == set(INTENDED)


@pytest.mark.parametrize("method", list(INTENDED))
def test_only_intended_parameters_change(tiny_config: dict, method: str) -> None:
    if method == "qlora" and not torch.cuda.is_available():
        pytest.skip("QLoRA needs CUDA")
    if method == "few_shot":
        pytest.skip("few_shot needs a decoder or seq2seq model: see test_generation and test_matrix")
    steps = 12 if method == "adalora" else 4
    cfg, m, task, model = build(tiny_config, method, steps)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, m, task, cfg.train, cfg.train.lr or 0.0, Budget("steps", steps), torch.device("cpu"), FlopMeter(), FlopMeter())
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    if INTENDED[method] is None:
        assert not changed
        return
    pattern = re.compile(INTENDED[method])
    stray = {n for n in changed if not pattern.search(n)}
    assert not stray, f"{method} changed parameters it should not: {sorted(stray)[:5]}"
    assert any(HEAD in n for n in changed), f"{method} did not train the classifier head"
    if method not in ("head", "full", "linear_probe"):
        assert any(HEAD not in n for n in changed), f"{method} trained only the head"
    if method == "full":
        assert any("encoder.layer.0.attention" in n for n in changed)


@pytest.mark.parametrize("method", list(INTENDED))
def test_save_then_load_gives_identical_outputs(tiny_config: dict, method: str, tmp_path: Path) -> None:
    if method == "qlora" and not torch.cuda.is_available():
        pytest.skip("QLoRA needs CUDA")
    if method == "few_shot":
        pytest.skip("few_shot needs a decoder or seq2seq model: see test_generation and test_matrix")
    steps = 12 if method == "adalora" else 3
    cfg, m, task, model = build(tiny_config, method, steps)
    train(model, m, task, cfg.train, cfg.train.lr or 0.0, Budget("steps", steps), torch.device("cpu"), FlopMeter(), FlopMeter())
    m.save(model, tmp_path / "adapter")
    assert any(f.suffix == ".safetensors" for f in (tmp_path / "adapter").iterdir())
    assert not list((tmp_path / "adapter").glob("*.bin")), "weights must be saved as safetensors"

    torch.manual_seed(123)  # a different head init: the saved weights must win
    fresh, _ = task.load_model(cfg.model)
    reloaded = get_method(method)(cfg.method.params).load(fresh, tmp_path / "adapter")
    batch = next(task.train_batches(8, seed=5))
    model.eval(), reloaded.eval()
    with torch.no_grad():
        a, b = model(**batch).logits, reloaded(**batch).logits
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_adalora_reallocates_ranks_every_step(tiny_config: dict) -> None:
    """HF Trainer never calls update_and_allocate; peftbench's loop must."""
    steps = 20
    cfg, m, task, model = build(tiny_config, "adalora", steps)
    calls = []
    orig = model.base_model.update_and_allocate
    model.base_model.update_and_allocate = lambda step: (calls.append(step), orig(step))[1]
    spec = cfg.train.model_copy(update={"eval_every": steps})  # keep the final (pruned) weights
    train(model, m, task, spec, 1e-2, Budget("steps", steps), torch.device("cpu"), FlopMeter(), FlopMeter())
    assert calls == list(range(1, steps + 1))
    # After the budget, ranks were masked: some singular values are exactly zero.
    e = [p for n, p in model.named_parameters() if "lora_E" in n]
    assert e and any((p == 0).any() for p in e)


def flops_of(tiny_config: dict, method: str, params: dict | None = None) -> tuple[int, int]:
    cfg, m, task, model = build(tiny_config, method, params=params)
    meter = FlopMeter()
    batch = next(task.train_batches(8, seed=0))
    model.train()
    meter.train_step(model, batch)
    return meter.forward_flops, meter.backward_flops


def test_backward_flops_lora_about_forward_full_about_twice(tiny_config: dict) -> None:
    f_fwd, f_bwd = flops_of(tiny_config, "full")
    # r=1 keeps LoRA's own matmuls small beside the 32-wide layers, as r=8 is beside real widths.
    l_fwd, l_bwd = flops_of(tiny_config, "lora", {"r": 1})
    assert 1.9 <= f_bwd / f_fwd <= 2.05  # grad wrt inputs and wrt weights
    assert 0.8 <= l_bwd / l_fwd <= 1.15  # frozen weights: grad wrt inputs only
    assert f_fwd < l_fwd < 1.1 * f_fwd  # LoRA adds a little forward work


def test_flop_meter_counts_each_shape_once(tiny_config: dict) -> None:
    cfg, m, task, model = build(tiny_config, "lora")
    meter = FlopMeter()
    batch = next(task.train_batches(8, seed=0))
    meter.train_step(model, batch)
    once = meter.total
    meter.train_step(model, batch)
    assert meter.counted_shapes == 1 and meter.total == 2 * once


def test_eval_forward_counts_attention_like_training(tiny_config: dict) -> None:
    """With dropout off, CPU SDPA takes a fused kernel torch has no FLOP formula for; we add one."""
    cfg, m, task, model = build(tiny_config, "lora")
    batch = next(task.train_batches(8, seed=0))
    train_meter, eval_meter = FlopMeter(), FlopMeter()
    model.train()
    train_meter.train_step(model, batch)
    model.eval()
    with torch.no_grad():
        eval_meter.forward(model, batch)
    assert eval_meter.forward_flops == train_meter.forward_flops


def test_total_only_counter_matches_flop_counter_mode(tiny_config: dict) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    from peftbench.measure.flops import counter

    cfg, m, task, model = build(tiny_config, "lora")
    batch = next(task.train_batches(8, seed=0))
    with FlopCounterMode(display=False) as ref:
        model(**batch).loss.backward()
    with counter() as ours:
        model(**batch).loss.backward()
    assert ours.get_total_flops() == ref.get_total_flops() > 0
