"""Multiple-choice training memory (issue 15 item 9): peak RSS of `peftbench run` on MiniLM at the default
batch (32 questions), before and after a batch's choices were split into passes of at most 32 sequences.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/choice_memory.py --src-before OLD/src [--methods lora,full]

Two tasks: CommonsenseQA (builtin, 5 short choices) and a RACE-like 4-choice task built here from the
shared DialogSum dialogues (a long context; the question "Which summary fits the dialogue?", the right
summary and three from other dialogues), at the default max length (128) and at 512 (race_like_512:
before the change, lora there was killed by the kernel at 23.4 GB RSS on this 24 GB machine). Each run is its own process (peak RSS from
wait4, the whole process) and trains --steps steps; sources alternate (before, after, after, before...).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIALOGSUM = ROOT.parent / "shared" / "datasets" / "dialogsum"


def race_like(folder: Path) -> Path:
    """train from DialogSum's validation split, validation and test from its test split."""
    rng = random.Random(0)
    for split, source, lo, hi in (("train", "validation", 0, 500), ("validation", "test", 0, 100), ("test", "test", 100, 300)):
        rows = [json.loads(line) for line in (DIALOGSUM / f"{source}.jsonl").read_text().splitlines()][lo:hi]
        summaries = [r["summary"] for r in rows]
        with open(folder / f"{split}.jsonl", "w") as f:
            for i, r in enumerate(rows):
                others = rng.sample([s for j, s in enumerate(summaries) if j != i], 3)
                answer = rng.randrange(4)
                choices = others[:answer] + [r["summary"]] + others[answer:]
                f.write(json.dumps({"context": r["dialogue"], "question": "Which summary fits the dialogue?",
                                    "choices": choices, "answer": answer}) + "\n")
    return folder


def one(src: Path, data: str, method: str, steps: int, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "run.yaml"
        cfg.write_text("measure: {latency: false}\n")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(src)}
        cmd = [sys.executable, "-m", "peftbench.cli", "run", "-c", str(cfg), "--task", "multiple_choice", "--data", data,
               "-m", method, "--steps", str(steps), "--eval-every", str(steps), "--max-eval-examples", "64",
               "--samples", "0", "--results-dir", f"{tmp}/r", "--json", *extra]
        t0 = time.perf_counter()
        with open(f"{tmp}/out", "w") as fo, open(f"{tmp}/err", "w") as fe:
            proc = subprocess.Popen(cmd, env=env, stdout=fo, stderr=fe)
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak RSS (ru_maxrss, KiB on Linux)
        wall = time.perf_counter() - t0
        out, err = Path(f"{tmp}/out").read_text(), Path(f"{tmp}/err").read_text()
    if status:
        sys.exit(f"run failed from {src}:\n{err[-3000:]}")
    res = json.loads(out)
    return {"wall": wall, "rss": usage.ru_maxrss * 1024, "peak": res["result"]["costs"]["peak_memory_bytes"],
            "accuracy": res["result"]["test"]["accuracy"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src-before", type=Path, required=True, help="src folder of the commit before the change")
    ap.add_argument("--methods", default="lora,full")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--tasks", default="commonsense_qa,race_like")
    ap.add_argument("--sources", default="before,after", help="before,after or one of them")
    a = ap.parse_args()
    srcs = {"before": a.src_before.resolve(), "after": ROOT / "src"}
    with tempfile.TemporaryDirectory() as tmp:
        race = str(race_like(Path(tmp)))
        tasks = {"commonsense_qa": ("builtin:commonsense_qa", []), "race_like": (race, []),
                 "race_like_512": (race, ["--max-length", "512"])}
        for task in a.tasks.split(","):
            data, extra = tasks[task]
            for i, method in enumerate(a.methods.split(",")):
                order = ["before", "after"] if i % 2 == 0 else ["after", "before"]
                got = {name: one(srcs[name], data, method, a.steps, extra) for name in order if name in a.sources}
                if len(got) == 1:  # one source only (e.g. where before runs out of memory)
                    (name, r), = got.items()
                    print(f"{task:15} {method:5} peak RSS {name} {r['rss'] / 1e9:5.2f} GB  wall {r['wall']:6.1f} s  "
                          f"accuracy {r['accuracy']:.3f}", flush=True)
                    continue
                b, f = got["before"], got["after"]
                print(f"{task:15} {method:5} peak RSS before {b['rss'] / 1e9:5.2f} GB  after {f['rss'] / 1e9:5.2f} GB  "
                      f"({f['rss'] / b['rss']:.2f}x; stored peak {b['peak'] / 1e9:.2f} -> {f['peak'] / 1e9:.2f} GB)  "
                      f"wall {b['wall']:6.1f} s -> {f['wall']:6.1f} s  "
                      f"accuracy {b['accuracy']:.3f} -> {f['accuracy']:.3f}", flush=True)


if __name__ == "__main__":
    main()
