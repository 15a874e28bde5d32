"""Peak RSS of SmolLM2's LM loss on DialogSum, full-vocabulary logits vs chunked (issue 13 item 4).

Each measurement runs in a fresh subprocess (peak RSS is per process): the bundled SmolLM2-135M with
LoRA, DialogSum at max length 320 + 64 target tokens (as BENCHMARKS.md's DialogSum run that peaked
at 13.3 GB), then one of
  eval:  the teacher-forced loss pass of evaluation on a test batch of 64 (inference mode);
  train: one training step (forward + backward) on a training batch.
Printed per case: the process's peak RSS (model loading included), the peak during the pass alone
(VmHWM reset just before it; measure/memory.py) and the loss, which must agree between the two paths.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/lm_memory.py [--eval-batch 64] [--train-batch 8]
"""

from __future__ import annotations

import argparse
import json
import resource
import os
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

GB = 1024**3


def prepared(max_length: int, max_target_length: int = 128) -> tuple[object, object]:
    """(task, LoRA-wrapped SmolLM2) as a run prepares them."""
    from peftbench import runner
    from peftbench.config import parse_config

    cfg = parse_config({"model": {"name": "smollm2"}, "method": {"name": "lora"},
                        "task": {"kind": "summarization", "data": {"source": "builtin:dialogsum"}, "max_length": max_length,
                                 "max_target_length": max_target_length}})
    cfg, method = runner.normalize(cfg)
    prep = runner.prepare(cfg, method, samples=False)
    return prep.task, prep.model


def child(case: str, chunked: bool, batch_size: int, max_length: int, max_target_length: int) -> None:
    import torch

    from peftbench.measure.memory import peak_bytes, reset_peak
    from peftbench.train import lm_loss

    torch.manual_seed(0)
    lm_loss.ENABLED = chunked
    task, model = prepared(max_length, max_target_length)
    split = "test" if case == "eval" else "train"  # validation holds only 50 rows
    batch = task.codec.collate(task._encode(split)[:batch_size])  # type: ignore[attr-defined]
    cpu = torch.device("cpu")
    reset_peak(cpu)
    t0 = time.perf_counter()
    if case == "eval":
        model.eval()
        with torch.inference_mode():
            loss = lm_loss.loss(model, batch)
    else:
        model.train()
        loss = lm_loss.loss(model, batch)
        loss.backward()
    seconds = time.perf_counter() - t0
    pass_peak = peak_bytes(cpu)[0]
    process_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"case": case, "chunked": chunked, "batch": list(batch["input_ids"].shape), "loss": float(loss),
                      "pass_peak": pass_peak, "process_peak": process_peak, "seconds": seconds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval-batch", type=int, default=64)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=320)
    ap.add_argument("--max-target-length", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", nargs="+", default=["eval:full", "eval:chunked", "train:full", "train:chunked"],
                    help="which of eval:full eval:chunked train:full train:chunked to run")
    ap.add_argument("--child", nargs=2, metavar=("CASE", "CHUNKED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import torch

        torch.set_num_threads(args.threads)
        case, chunked = args.child[0], args.child[1] == "1"
        child(case, chunked, args.eval_batch if case == "eval" else args.train_batch, args.max_length, args.max_target_length)
        return
    print(f"{'case':<6} {'loss path':<10} {'batch':>10} {'peak RSS (process)':>19} {'peak RSS (pass)':>16} "
          f"{'loss':>9} {'seconds':>8}")
    for name in args.cases:
        case, path = name.split(":")
        chunked = path == "chunked"
        cmd = [sys.executable, __file__, "--child", case, "1" if chunked else "0", "--eval-batch", str(args.eval_batch),
               "--train-batch", str(args.train_batch), "--max-length", str(args.max_length),
               "--max-target-length", str(args.max_target_length), "--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name} failed (exit {out.returncode}):\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"{case:<6} {path:<10} {'x'.join(map(str, r['batch'])):>10} "
              f"{r['process_peak'] / GB:>16.2f} GB {r['pass_peak'] / GB:>13.2f} GB {r['loss']:>9.5f} {r['seconds']:>8.1f}")


if __name__ == "__main__":
    main()
