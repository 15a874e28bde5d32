"""fp32 CPU matmuls through oneDNN (train/matmul.py): the choice, the numbers, the counted FLOPs, the record."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from peftbench.cli import app
from peftbench.errors import UserError
from peftbench.measure.flops import counter
from peftbench.store import Store
from peftbench.train import matmul

needs_onednn = pytest.mark.skipif(not matmul.available(), reason="no oneDNN linear in this torch build or CPU")


def ops(fn) -> set[str]:
    """The matmul ops a forward + backward ran, as the FLOP counter saw them."""
    with counter() as fc:
        fn()
    return {str(op) for op in fc.get_flop_counts()["Global"]}


@given(st.text(max_size=12))
def test_parse_takes_the_three_choices_and_refuses_the_rest(text: str) -> None:
    if text.strip().lower() in matmul.CHOICES or not text:
        assert matmul.parse(text) == (text.strip().lower() or "auto")
    else:
        with pytest.raises(UserError, match="--matmul .* is not one of auto, onednn, torch"):
            matmul.parse(text)


@needs_onednn
def test_auto_takes_onednn_on_cpus_mkl_runs_generic_code_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(matmul.ENV, raising=False)
    monkeypatch.setattr(matmul, "cpu_vendor", lambda: "AuthenticAMD")
    assert matmul.resolve()[0] == "onednn"
    monkeypatch.setattr(matmul, "cpu_vendor", lambda: "GenuineIntel")
    assert matmul.resolve() == ("torch", "auto: GenuineIntel CPU")
    assert matmul.resolve("onednn")[0] == "onednn"
    monkeypatch.setenv(matmul.ENV, "torch")
    assert matmul.resolve() == ("torch", "--matmul torch")


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(5, 16), (3, 7, 16)])
def test_onednn_linear_matches_torchs_forward_and_gradients(keep_matmul, shape: tuple[int, ...], bias: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    w, b = torch.randn(8, 16, generator=gen), torch.randn(8, generator=gen) if bias else None
    weights = torch.randn(*shape[:-1], 8, generator=gen)  # a loss whose gradient differs per output

    def run(backend: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        matmul.install(backend)
        leaves = [t.clone().requires_grad_() for t in (x, w, b) if t is not None]
        y = F.linear(*leaves) if bias else F.linear(*leaves, None)
        (y.square() * weights).sum().backward()
        return y.detach(), [t.grad for t in leaves]

    (y1, g1), (y2, g2) = run("torch"), run("onednn")
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-5)
    for a, b_ in zip(g2, g1):
        torch.testing.assert_close(a, b_, rtol=1e-5, atol=1e-4)  # fp32 sums in another order
    assert ops(lambda: F.linear(x, w, b)) == {"mkldnn._linear_pointwise"}


@needs_onednn
def test_a_frozen_weight_gets_no_gradient_and_a_strided_input_works(keep_matmul) -> None:
    matmul.install("onednn")
    base = torch.randn(16, 6)
    x = base.t().requires_grad_()  # a transposed view, as a backward pass hands on
    w = torch.randn(4, 16)
    F.linear(x, w).sum().backward()
    torch.testing.assert_close(x.grad, w.sum(0).expand(6, 16).clone())
    assert w.grad is None


@needs_onednn
def test_what_oneDNN_does_not_take_keeps_torchs_path(keep_matmul) -> None:
    w = torch.randn(4, 16)
    cases = [lambda: F.linear(torch.randn(3, 16).double(), w.double()), lambda: F.linear(torch.randn(16), w)]  # 1-D input
    matmul.install("torch")
    want = [ops(case) for case in cases]
    matmul.install("onednn")
    assert [ops(case) for case in cases] == want and "mkldnn._linear_pointwise" not in set().union(*want)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 runs: autocast must see torch's linear
        out = F.linear(torch.randn(3, 16), w)
    assert out.dtype == torch.bfloat16
    matmul.install("torch")
    assert F.linear is matmul._torch_linear


@needs_onednn
def test_ensure_keeps_an_explicit_choice(keep_matmul, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(matmul, "cpu_vendor", lambda: "AuthenticAMD")
    monkeypatch.delenv(matmul.ENV, raising=False)
    matmul.uninstall()
    assert matmul.ensure()["backend"] == "onednn"  # the first model load installs the default
    matmul.install("torch")
    assert matmul.ensure() == {"backend": "torch", "why": "--matmul torch"}


@needs_onednn
def test_a_training_step_counts_the_same_flops_either_way(keep_matmul, tiny_models) -> None:
    """Budgets and MFU read counted FLOPs: routing linears through oneDNN must count exactly what torch's mm/addmm count."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    from peftbench.measure.flops import phase_flops

    path = tiny_models("bert")
    batch = {"input_ids": torch.randint(5, 60, (4, 9)), "attention_mask": torch.ones(4, 9, dtype=torch.long),
             "labels": torch.tensor([0, 1, 0, 1])}
    figures, losses = {}, {}
    for backend in ("torch", "onednn"):
        matmul.install(backend)
        torch.manual_seed(0)
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
        for name, model in (("full", model), ("lora", get_peft_model(model, LoraConfig(r=2, target_modules=["query", "value"])))):
            model.train()
            torch.manual_seed(1)
            with counter() as fc:
                loss = model(**batch).loss
                loss.backward()
            figures[backend, name] = (phase_flops(fc, "forward"), phase_flops(fc, "backward"))
            losses[backend, name] = loss.item()
    for name in ("full", "lora"):
        assert figures["onednn", name] == figures["torch", name] and figures["torch", name][1] > 0
        assert losses["onednn", name] == pytest.approx(losses["torch", name], rel=1e-5)


@needs_onednn
def test_the_flag_chooses_and_the_run_records_it(tiny_config_args: list[str], tmp_path: Path, keep_matmul,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(matmul.ENV, raising=False)
    scores = {}
    for choice in ("torch", "onednn"):
        res = CliRunner().invoke(app, ["run", *tiny_config_args, "--matmul", choice, "--force", "--json"],
                                 catch_exceptions=False)
        assert res.exit_code == 0, res.output
        result = Store(tmp_path).get(json.loads(res.stdout)["run_id"]).result
        assert result["threads"]["matmul"] == {"backend": choice, "why": f"--matmul {choice}"}
        scores[choice] = result["validation"]["loss"]
    assert scores["onednn"] == pytest.approx(scores["torch"], rel=1e-4)
    bad = CliRunner().invoke(app, ["run", *tiny_config_args, "--matmul", "blas"])
    assert bad.exit_code == 2 and "--matmul 'blas' is not one of auto, onednn, torch" in bad.output


@needs_onednn
def test_called_as_peft_calls_it_keywords_and_in_place_additions(keep_matmul) -> None:
    """peft's tuners call F.linear(input=..., weight=..., bias=...) and add to its output in place (AdaLoRA)."""
    matmul.install("onednn")
    x, w = torch.randn(2, 3, 16, requires_grad=True), torch.randn(4, 16, requires_grad=True)
    out = F.linear(input=x, weight=w, bias=None)
    out += 1.0
    out.sum().backward()
    torch.testing.assert_close(w.grad, x.detach().sum((0, 1)).expand(4, 16).clone(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, w.detach().sum(0).expand(2, 3, 16).clone(), rtol=1e-5, atol=1e-5)
