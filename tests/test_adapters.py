"""Parallel and sequential bottleneck adapters on every model family (tiny random models)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from peftbench.errors import UserError
from peftbench.measure.flops import FlopMeter
from peftbench.methods import get_method
from peftbench.methods.base import Context

H = 32  # hidden size of every tiny model
# arch -> (auto class, from_pretrained kwargs, family, head modules, blocks, blocks with cross-attention)
ARCHS = {
    "bert": ("AutoModelForSequenceClassification", {"num_labels": 3}, "encoder", ["classifier"], 2, 0),
    "gpt2": ("AutoModelForCausalLM", {}, "decoder", [], 2, 0),
    "llama": ("AutoModelForCausalLM", {}, "decoder", [], 2, 0),
    "t5": ("AutoModelForSeq2SeqLM", {}, "seq2seq", [], 4, 2),
    "bart": ("AutoModelForSeq2SeqLM", {}, "seq2seq", [], 4, 2),
    "vit": ("AutoModelForImageClassification", {}, "vision", ["classifier"], 2, 0),
}
# Every spot in a block: parallel beside attention and FFN, sequential after both (houlsby).
EVERYWHERE = [("parallel_adapter", {"placement": "both"}), ("bottleneck_adapter", {"placement": "houlsby"})]


_loaded: dict[str, nn.Module] = {}


def load(tiny_models, arch: str) -> nn.Module:
    """A fresh copy of the tiny `arch` model with its new head (seed 0), in eval mode."""
    if arch not in _loaded:
        import transformers
        from transformers.utils import logging

        auto, kwargs, *_ = ARCHS[arch]
        verbosity = logging.get_verbosity()
        logging.set_verbosity_error()  # not the load report of the new head
        try:
            torch.manual_seed(0)
            _loaded[arch] = getattr(transformers, auto).from_pretrained(tiny_models(arch), **kwargs).eval()
        finally:
            logging.set_verbosity(verbosity)
    return copy.deepcopy(_loaded[arch])


def context(arch: str) -> Context:
    _, _, family, heads, *_ = ARCHS[arch]
    return Context(None, arch, 10, family=family, head_modules=heads)


def batch(arch: str, n: int = 2, length: int = 7) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    if arch == "vit":
        return {"pixel_values": torch.randn(n, 3, 32, 32, generator=g)}
    ids = torch.randint(4, 40, (n, length), generator=g)
    out = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if ARCHS[arch][2] == "seq2seq":
        out["decoder_input_ids"] = torch.randint(4, 40, (n, 5), generator=g)
    return out


def logits(model: nn.Module, arch: str) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch(arch)).logits


def with_cross(arch: str, params: dict) -> dict:
    return {**params, "cross_attention": True} if ARCHS[arch][5] else params


def adapter_params(model: nn.Module, method: str) -> dict[str, nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if f".{method}." in n}


@pytest.mark.parametrize("method,params", EVERYWHERE)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_fresh_adapters_leave_outputs_exact_and_every_hook_is_live(tiny_models, arch, method, params) -> None:
    model = load(tiny_models, arch)
    before = logits(model, arch)
    model = get_method(method)(with_cross(arch, params)).apply(model, context(arch))
    assert torch.equal(logits(model, arch), before)  # up-projections start at zero
    kinds = {n.split(f".{method}.")[1].split(".")[0] for n in adapter_params(model, method)}
    assert kinds == {"attention", "ffn"} | ({"cross_attention"} if ARCHS[arch][5] else set())
    for kind in kinds:  # each kind of adapter, made non-zero alone, changes the outputs
        ups = [p for n, p in adapter_params(model, method).items() if f".{kind}.up." in n]
        with torch.no_grad():
            for p in ups:
                p.normal_()
            assert not torch.allclose(logits(model, arch), before), f"{kind} adapters have no effect"
            for p in ups:
                p.zero_()


@pytest.mark.parametrize("method,params", EVERYWHERE)
@pytest.mark.parametrize("arch", list(ARCHS))
def test_trains_only_adapters_and_head_then_reloads_identically(tiny_models, arch, method, params, tmp_path: Path) -> None:
    model = load(tiny_models, arch)
    trained = get_method(method)({**with_cross(arch, params), "bottleneck_size": 8, "non_linearity": "tanh", "dropout": 0.1})
    model = trained.apply(model, context(arch))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(3):
        model(**batch(arch)).logits.float().pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    changed = {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}
    heads = tuple(h + "." for h in ARCHS[arch][3])
    assert changed == set(adapter_params(model, method)) | {n for n in before if n.startswith(heads)}

    trained.save(model.eval(), tmp_path / "adapter")
    assert sorted(f.name for f in (tmp_path / "adapter").iterdir()) == ["adapters.json", "adapters.safetensors"]
    fresh = load(tiny_models, arch)  # the same base (tiny BERT's pooler is new and random, yet no head)
    with torch.no_grad():  # another head: the saved one must win
        for h in ARCHS[arch][3]:
            for p in fresh.get_submodule(h).parameters():
                p.normal_()
    reloaded = get_method(method)().load(fresh, tmp_path / "adapter")  # the saved placement, not the default
    torch.testing.assert_close(logits(reloaded, arch), logits(model, arch), rtol=0, atol=1e-6)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_trainable_parameter_count_is_exact(tiny_models, arch) -> None:
    blocks, cross = ARCHS[arch][4], ARCHS[arch][5]
    cases = [  # method, params, bottleneck width, adapters
        ("parallel_adapter", {}, H // 2, blocks),  # defaults: FFN only, reduction factor 2
        ("parallel_adapter", {"placement": "both", "bottleneck_size": 5}, 5, 2 * blocks),
        ("bottleneck_adapter", {}, H // 16, blocks),  # defaults: pfeiffer, reduction factor 16
        ("bottleneck_adapter", with_cross(arch, {"placement": "houlsby", "reduction_factor": 4}), H // 4, 2 * blocks + cross),
    ]
    for method, params, b, adapters in cases:
        model = get_method(method)(params).apply(load(tiny_models, arch), context(arch))
        head = sum(p.numel() for h in ARCHS[arch][3] for p in model.get_submodule(h).parameters())
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable == adapters * (H * b + b + b * H + H) + head, (method, params)


@pytest.mark.parametrize("arch", ["bert", "gpt2"])
def test_adapters_add_their_forward_flops(tiny_models, arch) -> None:
    def forward_flops(model: nn.Module) -> int:
        meter = FlopMeter()
        with torch.no_grad():
            meter.forward(model, batch(arch))
        return meter.forward_flops

    base = forward_flops(load(tiny_models, arch))
    tokens = batch(arch)["input_ids"].numel()
    for method, params, b, adapters in [("parallel_adapter", {"placement": "both"}, 16, 4), ("bottleneck_adapter", {}, 2, 2)]:
        model = get_method(method)(params).apply(load(tiny_models, arch), context(arch))
        assert forward_flops(model) - base == adapters * 2 * tokens * (2 * H * b)  # down and up matmuls


def test_deep_copy_runs_its_own_adapters(tiny_models) -> None:
    model = get_method("bottleneck_adapter")().apply(load(tiny_models, "bert"), context("bert"))
    before = logits(model, "bert")
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in adapter_params(twin, "bottleneck_adapter").values():
            p.normal_()
    assert torch.equal(logits(model, "bert"), before)
    assert not torch.allclose(logits(twin, "bert"), before)


def test_defaults_follow_the_papers_and_normalize_idempotently() -> None:
    par, seq = get_method("parallel_adapter")(), get_method("bottleneck_adapter")()
    assert (par.params.placement, par.params.reduction_factor, par.params.scaling) == ("ffn", 2, 4.0)
    assert (seq.params.placement, seq.params.reduction_factor, seq.params.scaling) == ("pfeiffer", 16, 1.0)
    for cls in (type(par), type(seq)):
        for params in ({}, {"bottleneck_size": 8}, {"reduction_factor": None}):
            once = cls(params).normalized_params()
            assert cls(once).normalized_params() == once
            assert (once["reduction_factor"] is None) == ("bottleneck_size" in params)


@pytest.mark.parametrize("method,params,words", [
    ("parallel_adapter", {"reduction_factor": 0}, "reduction_factor"),
    ("parallel_adapter", {"bottleneck_size": -3}, "bottleneck_size"),
    ("parallel_adapter", {"reduction_factor": 4, "bottleneck_size": 8}, "not both"),
    ("parallel_adapter", {"placement": "houlsby"}, "'ffn', 'attention' or 'both'"),
    ("bottleneck_adapter", {"placement": "ffn"}, "'houlsby' or 'pfeiffer'"),
    ("bottleneck_adapter", {"non_linearity": "swish"}, "non_linearity"),
    ("bottleneck_adapter", {"scaling": 0}, "scaling"),
    ("bottleneck_adapter", {"dropout": 1.0}, "dropout"),
    ("bottleneck_adapter", {"reduction": 8}, "did you mean 'reduction_factor'"),
    ("parallel_adapter", {"adapter_size": 8}, "did you mean 'bottleneck_size'"),
    ("parallel_adapter", {"lora_r": 8}, "has no hyper-parameter 'lora_r'"),
])
def test_bad_hyper_parameters_are_refused(method, params, words) -> None:
    with pytest.raises(UserError, match="^[^\n]*$") as err:
        get_method(method)(params)
    assert words in str(err.value)


def test_models_it_cannot_serve_are_refused_in_one_line(tiny_models, tmp_path: Path) -> None:
    method = get_method("parallel_adapter")
    with pytest.raises(UserError, match="found no transformer blocks.*use lora or ia3"):
        method().apply(nn.Sequential(nn.ModuleList([nn.Linear(4, 4)])), context("bert"))
    with pytest.raises(UserError, match="leaves no bottleneck for hidden size 32"):
        method({"reduction_factor": 64}).apply(load(tiny_models, "bert"), context("bert"))
    with pytest.raises(UserError, match="no cross-attention"):
        method({"cross_attention": True}).apply(load(tiny_models, "gpt2"), context("gpt2"))
    saver = method()
    model = saver.apply(load(tiny_models, "bert"), context("bert"))
    with pytest.raises(UserError, match="already has parallel_adapter adapters"):
        method().apply(model, context("bert"))
    saver.save(model, tmp_path)
    with pytest.raises(UserError, match="load it with that method"):
        get_method("bottleneck_adapter")().load(load(tiny_models, "bert"), tmp_path)
    with pytest.raises(UserError, match="does not fit this model"):
        method().load(load(tiny_models, "gpt2"), tmp_path)
