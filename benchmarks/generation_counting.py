"""Counted generation against plain `generate` (issue 14 item 2): SmolLM2 + LoRA on DialogSum.

One arm is the prediction pass of evaluation (GenerationTask.evaluate, score=False) with a fresh
FlopMeter (its shape figures start empty every time: the worst case, as a run's first pass); the
other the same pass with counting off. Alternated, CPU time (time.process_time) at 1 thread.
The first repetition also runs the old way (a FlopCounterMode around every generate call) and
checks that the FLOPs are the same integer.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/generation_counting.py [--reps 5] [--n 16] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class Whole:
    """peftbench before issue 14: a counter around the whole generate call."""

    def __init__(self) -> None:
        self.forward_flops = 0

    def generate(self, model: Any, batch: dict, **kwargs: Any) -> Any:
        from peftbench.measure.flops import counter

        with counter() as fc:
            out = model.generate(**batch, **kwargs)
        self.forward_flops += fc.get_total_flops()
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--n", type=int, default=16, help="test prompts per pass")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    args = ap.parse_args()

    import torch

    from peftbench import runner
    from peftbench.config import parse_config
    from peftbench.measure.flops import FlopMeter

    torch.set_num_threads(1)
    cfg = parse_config({"model": {"name": "smollm2"}, "method": {"name": "lora"},
                        "task": {"kind": "summarization", "data": {"source": "builtin:dialogsum"}, "max_length": 320,
                                 "generation": {"max_new_tokens": args.max_new_tokens}}})
    cfg, method = runner.normalize(cfg)
    task, model = (p := runner.prepare(cfg, method, samples=False)).task, p.model

    def one(meter: Any) -> tuple[float, list[str]]:
        t0 = time.process_time()
        preds = task.evaluate(model, "test", args.batch, meter, limit=args.n, score=False).predictions
        return time.process_time() - t0, preds

    one(FlopMeter(enabled=False))  # warm-up
    ratios = []
    for rep in range(args.reps):
        arms = ["plain", "counted"] if rep % 2 == 0 else ["counted", "plain"]
        if rep == 0:
            arms.append("whole")
        meters = {"plain": FlopMeter(enabled=False), "counted": FlopMeter(), "whole": Whole()}
        secs, preds = {}, {}
        for arm in arms:
            secs[arm], preds[arm] = one(meters[arm])
        assert len({tuple(p) for p in preds.values()}) == 1, "counting changed the generated text"
        ratios.append(secs["counted"] / secs["plain"])
        calls = meters["counted"].calls
        line = (f"rep {rep + 1}: plain {secs['plain']:.1f} s, counted {secs['counted']:.1f} s, ratio {ratios[-1]:.3f}; "
                f"{calls.counted_calls} forwards counted, {calls.reused_calls} reused")
        if "whole" in secs:
            same = meters["whole"].forward_flops == meters["counted"].forward_flops
            line += (f"; old counter {secs['whole']:.1f} s ({secs['whole'] / secs['plain']:.2f}x), FLOPs "
                     f"{meters['counted'].forward_flops} vs {meters['whole'].forward_flops}: {'identical' if same else 'DIFFER'}")
        print(line, flush=True)
    print(f"counted / plain CPU time: median {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}, "
          f"{args.reps} alternated pairs; {args.n} prompts, batch {args.batch}, {args.max_new_tokens} new tokens)")


if __name__ == "__main__":
    main()
