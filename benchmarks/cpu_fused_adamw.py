"""Fused against foreach (today's CPU default) AdamW for full fine-tuning of MiniLM on CPU (issue 14).

The same parameters (all of all-MiniLM-L6-v2 plus a 4-class head, peftbench's two weight-decay
groups) and the same fixed gradients go through N optimizer steps with each implementation,
alternating; reported: the median CPU time of a step and whether the weights end bit-identical.
If they do not, stored results of full fine-tuning would change, so CPU runs stay unfused.

Run:  HF_HUB_OFFLINE=1 python benchmarks/cpu_fused_adamw.py [--repeats 3] [--steps 6] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForSequenceClassification  # noqa: E402

from peftbench import models  # noqa: E402
from peftbench.config import ModelSpec  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = AutoModelForSequenceClassification.from_pretrained(models.resolve(ModelSpec()), num_labels=4)
    gen = torch.Generator().manual_seed(0)
    grads = [[torch.randn(p.shape, generator=gen) * 1e-3 for p in base.parameters()] for _ in range(3)]
    times: dict[bool, list[float]] = {False: [], True: []}
    final: dict[bool, list[torch.Tensor]] = {}
    for rep in range(args.repeats):
        for fused in ((False, True) if rep % 2 == 0 else (True, False)):
            params = list(copy.deepcopy(base).parameters())
            groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": 0.01},
                      {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
            opt = torch.optim.AdamW(groups, lr=1e-4, **({"fused": True} if fused else {}))
            for s in range(args.steps):
                for p, g in zip(params, grads[s % 3]):
                    p.grad = g.clone()
                t = time.process_time()
                opt.step()
                times[fused].append(time.process_time() - t)
            final[fused] = [p.detach() for p in params]
    same = all(torch.equal(a, b) for a, b in zip(final[False], final[True]))
    diff = max((a - b).abs().max().item() for a, b in zip(final[False], final[True]))
    n = sum(p.numel() for p in base.parameters())
    for fused in (False, True):
        print(f"{'fused' if fused else 'foreach'}: median {statistics.median(times[fused]):.4f} s CPU per step "
              f"({n / 1e6:.1f}M parameters, {args.threads} thread(s))")
    print(f"weights bit-identical after {args.steps} steps: {same} (max abs difference {diff:.3g})")


if __name__ == "__main__":
    main()
