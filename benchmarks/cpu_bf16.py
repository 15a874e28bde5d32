"""`--precision bf16` against fp32 on this CPU (issue 14 item 8): CPU time of one LoRA training step.

Both arms run peftbench's own pieces in one process: runner.prepare (task, data, model, LoRA),
the run's autocast (train/precision.py), lm_loss.loss, backward and AdamW, on the same batches.
Steps alternate fp32 / bf16 / fp32 / ... after untimed warm-up steps; CPU time (process_time) at a
fixed thread count, so other work on the machine does not distort the ratio; the median per arm.
bf16 helps only where the CPU has bf16 matrix units (AMX, `amx_bf16` in /proc/cpuinfo); AVX-512
BF16 alone converts and multiplies in vector units.

Run:  HF_HUB_OFFLINE=1 python benchmarks/cpu_bf16.py [--model smollm2] [--pairs 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from peftbench.config import RunConfig  # noqa: E402
from peftbench.runner import normalize, prepare  # noqa: E402
from peftbench.train import lm_loss, precision  # noqa: E402


def arm(model_name: str, task: str, prec: str, batch_size: int) -> tuple[torch.nn.Module, torch.optim.Optimizer, dict]:
    raw = {"model": {"name": model_name}, "task": {"kind": task, "samples": 0},
           "method": {"name": "lora"}, "train": {"precision": prec, "steps": 8, "batch_size": batch_size}}
    if task == "summarization":
        raw["task"]["data"] = {"source": "builtin:dialogsum"}
    cfg, method = normalize(RunConfig.model_validate(raw))
    prep = prepare(cfg, method, samples=False)
    model = prep.model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = next(prep.task.train_batches(batch_size, 0))
    return model, opt, batch


def step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict, prec: str) -> float:
    t = time.process_time()
    with precision.autocast(prec, "cpu"):
        loss = lm_loss.loss(model, batch)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.process_time() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default", help="default (MiniLM, classification) or smollm2 (DialogSum)")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    flags = open("/proc/cpuinfo").read().split() if os.path.exists("/proc/cpuinfo") else []
    print(f"cpu flags: avx512_bf16={'avx512_bf16' in flags} amx_bf16={'amx_bf16' in flags}; torch {torch.__version__}, "
          f"{args.threads} thread(s)")
    task = "summarization" if args.model == "smollm2" else "classification"
    arms = {p: arm(args.model, task, p, args.batch_size) for p in ("fp32", "bf16")}
    shape = tuple(next(iter(arms["fp32"][2].values())).shape)
    for p, (m, o, b) in arms.items():  # warm-up: oneDNN's first-call setup, the optimizer's state
        for _ in range(2):
            step(m, o, b, p)
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for i in range(args.pairs):
        for p in (("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32")):
            m, o, b = arms[p]
            times[p].append(step(m, o, b, p))
    med = {p: statistics.median(v) for p, v in times.items()}
    for p, v in times.items():
        print(f"{p}: median {med[p]:.3f} s CPU per step ({', '.join(f'{x:.3f}' for x in v)})")
    print(f"model {args.model}, batch {shape}: bf16 / fp32 = {med['bf16'] / med['fp32']:.2f}x")


if __name__ == "__main__":
    main()
