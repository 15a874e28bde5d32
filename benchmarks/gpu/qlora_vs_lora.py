"""QLoRA (4-bit NF4 base through bitsandbytes, peftbench's qlora method) vs 16-bit LoRA (bf16 base)
on a GPU: peak memory and training tokens/s over a few steps of peftbench's own loop
(issue 13, item 8). The model is Llama-3.2-1B-shaped with random weights (benchmarks/llama_shape.py),
bf16 autocast, sequence 1024, LoRA r 16 on all linear layers for both. QLoRA keeps peftbench's default
gradient checkpointing (its memory recipe); LoRA runs without, as by default.

Prints a small table (and --out FILE writes it as JSON). Without CUDA or bitsandbytes it says why
and exits 0. Under ~90 s on an H200.
Run:  python benchmarks/gpu/qlora_vs_lora.py [--steps 6] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: throughput.py, llama_shape.py

import torch  # noqa: E402

from llama_shape import llama_1b, qlora_ready  # noqa: E402


def measure(name: str, steps: int, warmup: int, tmp: str) -> dict[str, object]:
    import throughput

    case = throughput.CASES[name]
    setup = throughput.Setup(case, warmup + steps, tmp)
    model = setup.model()
    out = throughput.run_peftbench(model, setup.method, setup.spec, setup.batches, setup.device, warmup, None)
    out["peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
    del model, setup
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6, help="timed optimizer steps per method (default 6)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed first steps (default 2)")
    ap.add_argument("--out", default=None, help="also write the table as JSON to this file")
    args = ap.parse_args(argv)
    if why := qlora_ready():
        print(f"qlora_vs_lora: skipped: {why}")
        return 0
    from peftbench.measure import efficiency

    peak = efficiency.gpu_peak(torch.cuda.get_device_name(), "bf16")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="qlora-") as tmp:
        llama_1b(torch.bfloat16, "cuda", 0).save_pretrained(tmp)  # from_pretrained quantizes it to 4-bit
        torch.cuda.empty_cache()
        for name in ("llama1b-qlora", "llama1b-lora"):
            rows[name.split("-")[1]] = r = measure(name, args.steps, args.warmup, tmp)
            torch.cuda.empty_cache()
            r["mfu"] = r["model_flops"] / r["seconds"] / peak.flops if peak.flops else None
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.steps} timed steps of 8 x 1024 tokens")
    print(f"{'method':8s} {'tokens/s':>10s} {'peak alloc GiB':>15s} {'peak reserved GiB':>18s} {'MFU':>7s} {'last loss':>10s}")
    for k, r in rows.items():
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        print(f"{k:8s} {r['tokens_per_s']:10.0f} {r['peak_bytes'] / 2**30:15.2f} {r['peak_reserved_bytes'] / 2**30:18.2f}"
              f" {mfu:>7s} {r['losses'][-1]:10.4f}")
    q, lo = rows["qlora"], rows["lora"]
    print(f"qlora / lora: memory {q['peak_bytes'] / lo['peak_bytes']:.2f}x, tokens/s {q['tokens_per_s'] / lo['tokens_per_s']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
