"""Optimizers: each one learns, schedules have their shape, biases and norms are not decayed."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from peftbench.config import TrainSpec, parse_config
from peftbench.errors import UserError
from peftbench.train import optim

OPTIMIZERS = ["adamw", "adafactor", "prodigy"]
LR = {"adamw": 1e-2, "adafactor": 1e-2, "prodigy": 1.0}


def regression(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A tiny MLP (with a norm and biases) and a linear target it can fit."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 8, generator=g)
    y = x @ torch.randn(8, 1, generator=g) + 0.5
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 1))
    return model, x, y


def spec(name: str, **kw) -> TrainSpec:
    return TrainSpec(optimizer=name, steps=kw.pop("steps", 20), **kw)


def lrs(name: str, total: int, warmup_ratio: float, lr: float = 1.0) -> list[float]:
    """The learning rate in effect at each optimizer step 1..total."""
    model, _, _ = regression()
    opt, sched = optim.build(model, spec(name, steps=total, warmup_ratio=warmup_ratio), lr, total)
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradients: nothing moves, but the scheduler sees a step was taken
        sched.step()
    return out


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_each_optimizer_decreases_the_loss(name: str) -> None:
    model, x, y = regression()
    steps = 30
    opt, sched = optim.build(model, spec(name, steps=steps, warmup_ratio=0.1), LR[name], steps)
    loss_fn = nn.MSELoss()
    with torch.no_grad():
        first = float(loss_fn(model(x), y))
    for _ in range(steps):
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    with torch.no_grad():
        last = float(loss_fn(model(x), y))
    assert math.isfinite(last) and last < 0.5 * first, f"{name}: loss {first:.4f} -> {last:.4f}"


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_schedule_warms_up_then_decays(name: str) -> None:
    total, ratio = 50, 0.2
    warm = int(ratio * total)
    seen = lrs(name, total, ratio, lr=LR[name])
    assert seen[0] == 0.0
    up, down = seen[: warm + 1], seen[warm:]
    assert all(a < b for a, b in zip(up, up[1:])), "warm-up must rise every step"
    assert seen[warm] == pytest.approx(LR[name]) == max(seen), "the peak is the given rate, at the end of warm-up"
    assert all(a > b for a, b in zip(down, down[1:])), "after warm-up the rate must fall every step"
    assert seen[-1] <= LR[name] / (total - warm) + 1e-12, "by the last step the rate is (nearly) down to zero"


def test_prodigy_anneals_on_a_cosine_the_others_linearly() -> None:
    total, ratio = 100, 0.2
    warm = int(ratio * total)
    quarter = warm + (total - warm) // 4  # a quarter of the way down
    for name in ("adamw", "adafactor"):
        assert lrs(name, total, ratio)[quarter] == pytest.approx(0.75)
    assert lrs("prodigy", total, ratio)[quarter] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_prodigy_safeguards_its_warmup() -> None:
    model, _, _ = regression()
    with_warmup, _ = optim.build(model, spec("prodigy", warmup_ratio=0.1), 1.0, 20)
    g = with_warmup.param_groups[0]
    assert g["safeguard_warmup"] and g["decouple"]
    # Bias correction on top of the safeguard keeps d at d0 for 100+ steps (see optim.py).
    assert not g["use_bias_correction"]
    without, _ = optim.build(model, spec("prodigy", warmup_ratio=0.0), 1.0, 20)
    assert not without.param_groups[0]["safeguard_warmup"]


def test_prodigy_adapts_its_step_size_within_a_short_budget() -> None:
    """With the default warm-up, d must leave its initial 1e-6 within a few dozen steps."""
    model, x, y = regression()
    steps = 30
    opt, sched = optim.build(model, spec("prodigy", steps=steps), 1.0, steps)  # default warmup_ratio
    for _ in range(steps):
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    assert opt.param_groups[0]["d"] > 1e-3


def test_prodigy_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI's --json output is stdout; the optimizer must not write to it."""
    model, _, _ = regression()
    optim.build(model, spec("prodigy", weight_decay=0.1), 1.0, 20)
    assert capsys.readouterr().out == ""


def test_adafactor_uses_the_given_rate() -> None:
    model, _, _ = regression()
    opt, _ = optim.build(model, spec("adafactor"), 3e-3, 20)
    g = opt.param_groups[0]
    assert not g["relative_step"] and not g["scale_parameter"] and not g["warmup_init"]
    assert opt.defaults["lr"] == 3e-3


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_no_weight_decay_on_biases_and_norms(name: str) -> None:
    model, _, _ = regression()
    model[0].weight.requires_grad_(False)  # frozen parameters are left out altogether
    opt, _ = optim.build(model, spec(name, weight_decay=0.05), LR[name], 20)
    decay_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert id(named["0.weight"]) not in decay_of
    assert decay_of[id(named["3.weight"])] == 0.05
    for n in ("0.bias", "1.weight", "1.bias", "3.bias"):  # biases and the LayerNorm's scale and shift
        assert decay_of[id(named[n])] == 0.0, n
    assert len(decay_of) == sum(p.requires_grad for p in model.parameters())


def test_default_lr() -> None:
    assert optim.default_lr("prodigy", 2e-3) == 1.0
    assert optim.default_lr("adamw", 2e-3) == 2e-3
    assert optim.default_lr("adafactor", 5e-4) == 5e-4


def test_missing_prodigyopt_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prodigyopt", None)  # import prodigyopt now raises ImportError
    model, _, _ = regression()
    with pytest.raises(UserError) as err:
        optim.build(model, spec("prodigy"), 1.0, 20)
    msg = str(err.value)
    assert "prodigyopt" in msg and "pip install" in msg and "\n" not in msg
    optim.build(model, spec("adamw"), 1e-3, 20)  # the others do not need it


# Depends on the runner writing `"optimizer": cfg.train.optimizer` into metrics.json
# (the lead's change to peftbench/runner.py); before that line lands it records "adamw".
def test_runner_records_the_optimizer(tiny_config: dict, tmp_path: Path) -> None:
    from peftbench.runner import run

    raw = {**tiny_config, "train": {**tiny_config["train"], "optimizer": "adafactor"}}
    out = run(parse_config(raw), tmp_path)
    metrics = json.loads((out.row.folder / "metrics.json").read_text())
    assert metrics["optimizer"] == "adafactor"
    assert json.loads((out.row.folder / "config.json").read_text())["train"]["optimizer"] == "adafactor"
