"""Peak RSS of SmolLM2 scoring runs through the CLI, old code against new (issue 14 item 3).

Each case is one `peftbench run -m base` (no training: the untuned model's samples, validation and test
scoring) in its own subprocess, at the default evaluation batch size (64); its peak RSS is the child's
ru_maxrss (os.wait4), model loading included. Cases:
  mc:        multiple choice on builtin:commonsense_qa (a batch: 64 // 5 = 12 questions, their 60 choices)
  dialogsum: summarization on builtin:dialogsum (a batch of 64: the teacher-forced loss pass, then generation)
--examples N per split (default: one batch of each: 12 questions, 64 dialogues); generation is capped at
--new-tokens (the loss pass, not decoding, is where full-vocabulary logits were).
Each source tree given runs every case (alternating), so "before" and "after" see the same machine.
The GGUF cache (PEFTBENCH_CACHE_DIR) is a fresh temporary folder per run unless --warm-cache.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/lm_scoring_memory.py --src before=/work/main/src --src after=src
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GB = 1024**3
CASES = {
    "mc": ["--task", "multiple_choice", "--data", "builtin:commonsense_qa"],
    "dialogsum": ["--task", "summarization", "--data", "builtin:dialogsum"],
}


def measure(src: str, case: str, examples: int, threads: int, cache: str | None, new_tokens: int) -> tuple[int, float, int]:
    """(peak RSS in bytes, wall seconds, exit code) of one CLI run."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()), "HF_HUB_OFFLINE": "1",
               "PEFTBENCH_CACHE_DIR": cache or str(Path(tmp, "cache")), "OMP_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "peftbench.cli", "run", "--model", "smollm2", *CASES[case], "-m", "base",
               "--max-eval-examples", str(examples), "--results-dir", str(Path(tmp, "results"))]
        if case == "dialogsum":
            cmd += ["-g", f"max_new_tokens={new_tokens}"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        stderr = proc.stderr.read() if proc.stderr else ""
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            print(f"{case} with {src} failed (exit {code}):\n{stderr[-2000:]}", file=sys.stderr)
        return usage.ru_maxrss * 1024, seconds, code


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", action="append", required=True, metavar="NAME=PATH", help="a source tree (its src folder); repeatable")
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--examples", type=int, default=None, help="--max-eval-examples (default: one default-size batch)")
    ap.add_argument("--new-tokens", type=int, default=16, help="DialogSum's max_new_tokens")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warm-cache", action="store_true", help="share one GGUF cache folder across the runs")
    args = ap.parse_args()
    trees = dict(s.split("=", 1) for s in args.src)
    shared = tempfile.mkdtemp(prefix="peftbench-cache-") if args.warm_cache else None
    print(f"{'case':<10} {'tree':<8} {'peak RSS':>10} {'wall s':>8}")
    for case in args.cases:
        for name, src in trees.items():  # alternating: each case runs every tree back to back
            examples = args.examples or (12 if case == "mc" else 64)
            peak, seconds, code = measure(src, case, examples, args.threads, shared, args.new_tokens)
            flag = "" if code == 0 else f"  (exit {code})"
            print(f"{case:<10} {name:<8} {peak / GB:>7.2f} GB {seconds:>8.1f}{flag}", flush=True)


if __name__ == "__main__":
    main()
