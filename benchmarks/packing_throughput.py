"""Training tokens/s, packed (train.packing) vs padded, SmolLM2 + LoRA on DialogSum (issue 13 item 5).

The same micro-batches (the task's own length-grouped batches, one seed) are collated both ways; each
repetition runs one padded step and one packed step (forward + backward), alternating which goes
first. Time is the process's CPU time (time.process_time) at a fixed thread count; tokens are real
tokens (padding out). Printed: per-rep tokens/s, then the median and range of each and of the ratio.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/packing_throughput.py [--reps 5] [--batch 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

from lm_memory import prepared


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=768)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from peftbench.train import lm_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    task, model = prepared(args.max_length)
    model.train()
    streams = {}
    for packed in (False, True):
        task.packing = packed  # type: ignore[attr-defined]
        streams[packed] = task.train_batches(args.batch, seed=0)  # type: ignore[attr-defined]

    def step(batch: dict[str, torch.Tensor]) -> tuple[int, float]:
        t0 = time.process_time()
        lm_loss.loss(model, batch).backward()
        model.zero_grad(set_to_none=True)
        return task.batch_tokens(batch), time.process_time() - t0  # type: ignore[attr-defined]

    for packed in (False, True):  # warm-up (first-call allocations), not timed
        step(next(streams[packed]))
    rates: dict[bool, list[float]] = {False: [], True: []}
    for rep in range(args.reps):
        batches = {p: next(streams[p]) for p in (False, True)}
        for packed in ((False, True) if rep % 2 == 0 else (True, False)):
            tokens, seconds = step(batches[packed])
            rates[packed].append(tokens / seconds)
        b = batches
        print(f"rep {rep + 1}: padded {tuple(b[False]['input_ids'].shape)} {rates[False][-1]:7.1f} tok/s, "
              f"packed {tuple(b[True]['input_ids'].shape)} {rates[True][-1]:7.1f} tok/s")
    ratios = [p / q for p, q in zip(rates[True], rates[False])]
    for name, vals in (("padded tok/s", rates[False]), ("packed tok/s", rates[True]), ("packed/padded", ratios)):
        print(f"{name:>14}: median {statistics.median(vals):8.2f}  range {min(vals):8.2f} .. {max(vals):8.2f}")


if __name__ == "__main__":
    main()
