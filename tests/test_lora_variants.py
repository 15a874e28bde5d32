"""Issue 17 item 3: LoRA's initialisations (PiSSA, OLoRA, EVA, LoftQ, CorDA, orthogonal, gaussian), LoRA+
and LoRA-FA. Each trains, saves an adapter for the unchanged base and reloads to the same outputs; the
data-driven inits count their forward passes as setup FLOPs; the optimizers give the rates they promise."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.config import parse_config
from peftbench.measure.flops import FlopMeter
from peftbench.runner import config_hash, normalize, prepare
from peftbench.store import Store
from peftbench.train import optim
from peftbench.train.budget import Budget
from peftbench.train.loop import train

INITS = ["gaussian", "pissa", "pissa_niter_2", "olora", "eva", "loftq", "corda", "orthogonal"]


def bnb() -> bool:
    """LoftQ runs only where peft's quantiser can: bitsandbytes and a CUDA GPU."""
    from peft.import_utils import is_bnb_4bit_available

    return bool(is_bnb_4bit_available()) and torch.cuda.is_available()


def prepared(tiny_config: dict, params: dict, **train: object):
    raw = {**tiny_config, "method": {"name": "lora", "params": params}, "train": {**tiny_config["train"], **train}}
    cfg, method = normalize(parse_config(raw))
    return cfg, method, prepare(cfg, method, samples=False)


def logits(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits


@pytest.mark.parametrize("init", INITS)
def test_each_init_trains_and_its_adapter_reloads_on_the_unchanged_base(tiny_config, tmp_path, init):
    if init == "loftq" and not bnb():
        pytest.skip("LoftQ needs bitsandbytes and a CUDA GPU: its refusal is tested below")
    params = {"init": init, "init_batches": 2, **({"r": 4} if init == "eva" else {})}  # EVA: r x rho ≤ the batch's 8 rows
    cfg, method, prep = prepared(tiny_config, params)
    task, model = prep.task, prep.model
    batch = next(iter(task.train_batches(8, 0)))
    train(model, method, task, cfg.train, cfg.train.lr, Budget("steps", 3), torch.device("cpu"), FlopMeter(), FlopMeter())
    want = logits(model, batch)
    method.save(model, tmp_path / "adapter")
    fresh, _ = task.load_model(cfg.model)  # the checkpoint's own weights, untouched by pissa/olora/corda/loftq
    got = logits(method.load(fresh, tmp_path / "adapter"), batch)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert (prep.setup_flops > 0) == (init in ("eva", "corda"))  # only they read data before training


def test_pissa_starts_where_the_base_is_and_its_saved_adapter_is_plain_lora(tiny_config, tmp_path):
    """PiSSA moves W's top singular part into BA: the wrapped model computes what the base does, and the saved
    adapter (for the unchanged base) is a plain LoRA of twice the rank."""
    cfg, method, prep = prepared(tiny_config, {"init": "pissa", "r": 4})
    batch = next(iter(prep.task.train_batches(8, 0)))
    base, _ = prep.task.load_model(cfg.model)
    torch.manual_seed(cfg.train.seed)
    base_out = logits(base, batch)
    head = [n for n in prep.task.head_modules]
    adapted = logits(prep.model, batch)
    # the new head is random in both, and initialised from the same seed only if drawn first: compare features
    assert head and adapted.shape == base_out.shape
    inner = prep.model.base_model.model
    a = inner.bert(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state
    b = base.bert(**{k: v for k, v in batch.items() if k != "labels"}).last_hidden_state
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    method.save(prep.model, tmp_path / "a")
    import json

    saved = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert saved["r"] == 8 and saved["init_lora_weights"] is True


def test_eva_counts_setup_flops_and_redistributes_ranks(tiny_config):
    _, _, prep = prepared(tiny_config, {"init": "eva", "r": 4, "eva_rho": 2.0, "init_batches": 3})
    ranks = {m.r["default"] for m in prep.model.modules() if hasattr(m, "lora_A") and "default" in getattr(m, "r", {})}
    assert prep.setup_flops > 0
    assert sum(1 for _ in ranks) >= 1 and max(ranks) <= 8  # at most rho x r per layer


def test_loraplus_raises_b_only_and_the_head_keeps_its_rate(tiny_config):
    cfg, method, prep = prepared(tiny_config, {"loraplus_lr_ratio": 16.0}, head_lr=5e-2, lr=1e-3)
    opt, _ = optim.build(prep.model, cfg.train, 1e-3, 4, heads=prep.task.head_modules, method=method)
    rate = {n: g["lr"] for g in opt.param_groups for p in g["params"] for n, q in prep.model.named_parameters() if q is p}
    assert rate and all(v == pytest.approx(16e-3) for n, v in rate.items() if "lora_B" in n)
    assert all(v == pytest.approx(1e-3) for n, v in rate.items() if "lora_A" in n)
    assert all(v == pytest.approx(5e-2) for n, v in rate.items() if "classifier" in n)
    assert {n for n, p in prep.model.named_parameters() if p.requires_grad} == set(rate)


def test_lora_fa_freezes_a_and_steps_b_with_peft_s_optimizer(tiny_config):
    from peft.optimizers.lorafa import LoraFAOptimizer

    cfg, method, prep = prepared(tiny_config, {"lora_fa": True}, head_lr=5e-2)
    model = prep.model
    assert not any(p.requires_grad for n, p in model.named_parameters() if "lora_A" in n)
    opt, _ = optim.build(model, cfg.train, cfg.train.lr, 4, heads=prep.task.head_modules, method=method)
    assert isinstance(opt, LoraFAOptimizer)
    assert {g["lr"] for g in opt.param_groups} == {cfg.train.lr, 5e-2}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(model, method, prep.task, cfg.train, cfg.train.lr, Budget("steps", 2), torch.device("cpu"), FlopMeter(), FlopMeter())
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    assert any("lora_B" in n for n in changed) and any("classifier" in n for n in changed)
    assert not any("lora_A" in n for n in changed)


def test_plain_lora_keeps_its_hash(tiny_config):
    """The new hyper-parameters at their defaults are left out of the stored params: stored LoRA runs are found again."""
    plain, _ = normalize(parse_config(tiny_config))
    assert set(plain.method.params) == {"r", "alpha", "dropout", "target_modules", "use_dora", "use_rslora", "bias"}
    pissa, _ = normalize(parse_config({**tiny_config, "method": {"name": "lora", "params": {"init": "pissa"}}}))
    assert pissa.method.params["init"] == "pissa" and config_hash(pissa) != config_hash(plain)


@pytest.mark.parametrize("param,words", [
    ("init=svd", "unknown init 'svd'"),
    ("init=pissa_niter_x", "unknown init 'pissa_niter_x'"),
    ("init=orthogonal,r=5", "needs an even rank r (got 5)"),
    ("lora_fa=true,loraplus_lr_ratio=16", "keep one of them"),
    ("lora_fa=true,use_dora=true", "does not apply with use_dora"),
    ("loftq_bits=3", "loftq_bits"),
])
def test_bad_variant_settings_are_one_line(tiny_model, tiny_data, tmp_path, param, words):
    params = [x for kv in param.split(",") for x in ("--param", kv)]
    res = CliRunner().invoke(app, ["run", "-m", "lora", *params, "--model", tiny_model, "--data", str(tiny_data),
                                   "--steps", "1", "--results-dir", str(tmp_path)])
    assert res.exit_code == 2 and words in res.stderr and res.stderr.count("error:") == 1, res.output
    assert "Traceback" not in res.output and not Store(tmp_path).list()


def test_loftq_without_a_gpu_or_bitsandbytes_is_refused_in_one_line(tiny_model, tiny_data, tmp_path):
    if bnb():
        pytest.skip("bitsandbytes and a GPU are here: LoftQ runs (tested above)")
    res = CliRunner().invoke(app, ["run", "-m", "lora", "--param", "init=loftq", "--model", tiny_model, "--data",
                                   str(tiny_data), "--steps", "1", "--results-dir", str(tmp_path)])
    why = "needs a CUDA GPU" if not torch.cuda.is_available() else "pip install 'peftbench[qlora]'"
    assert res.exit_code == 2 and why in res.stderr and "Traceback" not in res.output
    assert not Store(tmp_path).list()


def test_qlora_refuses_inits_that_change_its_4bit_base():
    from peftbench.errors import UserError
    from peftbench.methods import get_method

    with pytest.raises(UserError, match="init pissa changes the base weights"):
        get_method("qlora").validate({"init": "pissa"})
    get_method("qlora").validate({"init": "eva"})


def test_a_run_stores_eva_s_setup_flops(tiny_model, tiny_data, tmp_path):
    res = CliRunner().invoke(app, ["run", "-m", "lora", "--param", "init=eva", "--param", "r=4", "--model", tiny_model,
                                   "--data", str(tiny_data), "--steps", "2", "--batch-size", "8", "--max-length", "32",
                                   "--results-dir", str(tmp_path)])
    assert res.exit_code == 0, res.output
    [row] = Store(tmp_path).list("done")
    costs = row.result["costs"]
    assert costs["setup_flops"] > 0 and costs["train_flops"] > 0
    assert row.config["method"]["params"]["init"] == "eva"
    shown = CliRunner().invoke(app, ["report", "--results-dir", str(tmp_path)])
    assert shown.exit_code == 0 and "setup FLOPs" in shown.output, shown.output
