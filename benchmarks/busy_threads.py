"""Threads on a busy CPU (issue 14 item 6): `peftbench run -m lora` with 2 threads and an active
wait policy, against the default (torch's own count, the wait policy chosen by load) and against
`--threads auto` (the count chosen by load too), with a competing CPU burner and without.

Each arm is a separate `peftbench run` process (the wait policy is read once per process) on fresh
results folders; arms alternate (A B A B ...). The busy phase first starts a one-core Python busy
loop and waits until the 1-minute load average has taken it in, as the automatic choice reads it.
Reported per arm: the median wall and CPU time of the whole process and the run's stored training
seconds, plus the threads and wait policy the run recorded. Runs skip latency and validate once
(64 examples), so training is most of what differs.

Run:  HF_HUB_OFFLINE=1 python benchmarks/busy_threads.py [--steps 6] [--pairs 3] [--phases busy,idle]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ARMS = {"2 threads, active": ["--threads", "2", "--wait-policy", "active"], "default": [],
        "--threads auto": ["--threads", "auto"]}
BURN = "while True: pass"


def run_once(extra: list[str], steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = os.path.join(tmp, "run.yaml")  # training is what is compared: one validation point, no latency
        with open(config, "w") as f:
            f.write("measure: {latency: false}\n")
        cmd = [sys.executable, "-m", "peftbench.cli", "run", "-c", config, "-m", "lora", "--steps", str(steps),
               "--eval-every", str(steps), "--max-eval-examples", "64", "--samples", "0",
               "--results-dir", os.path.join(tmp, "r"), "--json", *extra]
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        env.pop("OMP_WAIT_POLICY", None)
        before, load, t = resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg()[0], time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout
        wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
    res = json.loads(out)["result"]
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "train": res["costs"]["train_seconds"], "threads": res["threads"], "load": load}


def phase(name: str, steps: int, pairs: int) -> None:
    burner = None
    if name == "busy":
        burner = subprocess.Popen([sys.executable, "-c", BURN])
        start = os.getloadavg()[0]
        t = time.monotonic()
        while time.monotonic() - t < 90 and os.getloadavg()[0] < start + 0.8:  # the average lags ~1 minute
            time.sleep(5)
    try:
        got: dict[str, list[dict]] = {a: [] for a in ARMS}
        for i in range(pairs):
            for a in (list(ARMS) if i % 2 == 0 else list(ARMS)[::-1]):
                r = run_once(ARMS[a], steps)
                got[a].append(r)
                print(f"  {name} {a}: wall {r['wall']:.1f} s, cpu {r['cpu']:.1f} s, train {r['train']:.1f} s, "
                      f"load {r['load']:.2f}, {r['threads']}", flush=True)
        print(f"{name} (median of {pairs}):")
        for a, rs in got.items():
            med = {k: statistics.median(r[k] for r in rs) for k in ("wall", "cpu", "train")}
            chosen = sorted({(r["threads"]["count"], r["threads"]["wait_policy"]) for r in rs})
            print(f"  {a:18} wall {med['wall']:6.1f} s  cpu {med['cpu']:6.1f} s  train {med['train']:6.1f} s  "
                  f"threads/policy {chosen}")
    finally:
        if burner:
            burner.kill()
            burner.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--phases", default="busy,idle")
    args = ap.parse_args()
    print(f"cores {len(os.sched_getaffinity(0))}, load {os.getloadavg()}")
    for name in args.phases.split(","):
        phase(name, args.steps, args.pairs)


if __name__ == "__main__":
    main()
