"""What one training step and one validation pass of the main job cost, plain and counted, at N threads.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/step_costs.py --threads 2
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/step_costs.py --threads 1

MiniLM + LoRA (peftbench's defaults) on TweetEval emotion, built by runner.prepare as a run builds it.
Training: the first 6 batches of 32 (forward, loss and backward), plain and under a fresh FlopMeter
(every pass counted, as a run's first pass of each shape is), alternated, 5 rounds; validation: the whole
split (374 tweets, batch 64), plain and with a fresh meter, alternated, 3 rounds. Prints median wall seconds,
and the first batch's loss, which must not depend on counting. Run it at 1 and 2 threads to see how far
torch's two threads already use two cores (BENCHMARKS.md, "The work itself is over 3 minutes").
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from peftbench.config import RunConfig  # noqa: E402
from peftbench.measure.flops import FlopMeter  # noqa: E402
from peftbench.runner import normalize, prepare  # noqa: E402
from peftbench.train import lm_loss  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    cfg, method = normalize(RunConfig.model_validate({"method": {"name": "lora"}, "task": {"samples": 0}, "train": {"steps": 8}}))
    prep = prepare(cfg, method, samples=False)
    model, task = prep.model.train(), prep.task
    batches = task.train_batches(32, 0)
    picked = [next(batches) for _ in range(6)]

    def step(b: dict, counted: bool) -> tuple[float, float]:
        t = time.perf_counter()
        torch.manual_seed(0)  # the same dropout masks in both arms
        with FlopMeter(enabled=counted).count(b):
            loss = lm_loss.loss(model, b)
            loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - t, loss.item()

    for b in picked[:2]:
        step(b, False)  # warm-up
    train: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(a.rounds):
        for counted in (False, True):
            train[counted] += [step(b, counted)[0] for b in picked]
    losses = {counted: step(picked[0], counted)[1] for counted in (False, True)}

    def validate(counted: bool) -> float:
        t = time.perf_counter()
        task.evaluate(model, "validation", 64, FlopMeter(enabled=counted))
        return time.perf_counter() - t

    validate(False)
    val: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(max(1, a.rounds - 2)):
        for counted in (False, True):
            val[counted].append(validate(counted))
    print(f"{a.threads} thread(s); batch shapes {[tuple(b['input_ids'].shape) for b in picked]}")
    print(f"training step: plain {statistics.median(train[False]):.3f} s, counted {statistics.median(train[True]):.3f} s (median of {len(train[False])})")
    print(f"validation pass: plain {statistics.median(val[False]):.3f} s, counted {statistics.median(val[True]):.3f} s (median of {len(val[False])})")
    print(f"first batch's loss: plain {losses[False]!r}, counted {losses[True]!r}")


if __name__ == "__main__":
    main()
