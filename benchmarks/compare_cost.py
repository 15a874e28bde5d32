"""Where the README's default comparison spends its time, by peftbench's own phase timers (issue 14 item 7).

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/compare_cost.py [--reps 2] [--src OLD/src] [--together --threads 1] [-- compare args]

Runs `peftbench compare` (the README's main job unless compare args follow `--`) in a fresh
results folder, as a subprocess, and prints each phase's share of the CPU and wall time
(measure/phases.py; `other` is start-up, imports and the store) and the whole. With --src, the
same comparison also runs from another source tree (e.g. a checkout of an older commit), the
two alternating, so before and after are measured side by side; test scores must be identical.
With --together --threads 1 the two trees run at the same time, one core each: for long comparisons
(the SmolLM2 example), where CPU time, each child's own (wait4), is the figure to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEAK = Path(os.environ.get("PEFTBENCH_CACHE_DIR")
            or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peftbench") / "peak.json"


def one(src: Path, args: list[str], threads: int | None, keep: Path | None = None) -> dict:
    """One comparison from the source tree `src`: wall, CPU, phases and test scores (results kept in `keep`).
    Each starts with no dequantised GGUF weights cached (a first run's cost, the worst case); the cached
    peak FLOP/s probe (peak.json) is copied in, as a user's machine has it after its first run."""
    with tempfile.TemporaryDirectory() as tmp:
        Path(f"{tmp}/cache").mkdir()
        if PEAK.exists():
            shutil.copy(PEAK, f"{tmp}/cache/peak.json")
        if keep is not None:
            shutil.rmtree(keep, ignore_errors=True)
            keep.mkdir(parents=True)
            Path(f"{tmp}/r").symlink_to(keep.resolve(), target_is_directory=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(src), "PEFTBENCH_PHASES": f"{tmp}/phases.json",
               "PEFTBENCH_CACHE_DIR": f"{tmp}/cache"}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        t0 = time.perf_counter()
        with open(f"{tmp}/out", "w") as out, open(f"{tmp}/err", "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", "peftbench.cli", "compare", "--results-dir", f"{tmp}/r", "--json", *args],
                                    env=env, stdout=out, stderr=err)
            _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time, whatever else runs beside it
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status):
            raise RuntimeError(f"compare failed from {src}:\n{Path(f'{tmp}/err').read_text()[-3000:]}")
        phases = json.loads(Path(f"{tmp}/phases.json").read_text()) if Path(f"{tmp}/phases.json").exists() else {}
        stdout = Path(f"{tmp}/out").read_text()
    cpu = usage.ru_utime + usage.ru_stime
    runs = json.loads(stdout)["runs"]
    scores = {r["method"]: {k: v for k, v in r.items() if k.startswith("test_")} for r in runs}
    return {"wall": wall, "cpu": cpu, "phases": phases, "scores": scores}


def show_phases(res: dict) -> None:
    phases = dict(res["phases"])
    phases["other"] = {"cpu": res["cpu"] - sum(p["cpu"] for p in phases.values()),
                       "wall": res["wall"] - sum(p["wall"] for p in phases.values()), "count": 1}
    print(f"{'phase':18} {'cpu s':>8} {'share':>6} {'wall s':>8} {'share':>6} {'times':>6}")
    for name, p in sorted(phases.items(), key=lambda kv: -kv[1]["cpu"]):
        print(f"{name:18} {p['cpu']:8.1f} {p['cpu'] / res['cpu']:6.1%} {p['wall']:8.1f} {p['wall'] / res['wall']:6.1%} {p['count']:6}")
    print(f"{'whole':18} {res['cpu']:8.1f} {'':6} {res['wall']:8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=1, help="comparisons per source tree, alternating")
    ap.add_argument("--src", type=Path, help="another source tree to run side by side (e.g. an older checkout's src)")
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS for the runs (default: as peftbench chooses)")
    ap.add_argument("--together", action="store_true",
                    help="run the two trees at the same time, each rep (use with --threads 1 on 2 cores: a core each)")
    ap.add_argument("--keep", type=Path, help="keep this source tree's last results here (then: peftbench report --results-dir)")
    ap.add_argument("compare_args", nargs="*", help="arguments for peftbench compare (after --)")
    a = ap.parse_args()
    trees = {"this": ROOT / "src", **({"other": a.src.resolve()} if a.src else {})}
    results: dict[str, list[dict]] = {k: [] for k in trees}
    for rep in range(a.reps):
        order = list(trees.items()) if rep % 2 == 0 else list(reversed(trees.items()))
        try:
            if a.together:  # each arm runs to its end even if the other fails
                with ThreadPoolExecutor(len(order)) as pool:
                    futures = [pool.submit(one, src, a.compare_args, a.threads, a.keep if name == "this" else None) for name, src in order]
                done = [f.result() for f in futures]
            else:
                done = [one(src, a.compare_args, a.threads, a.keep if name == "this" else None) for name, src in order]
        except RuntimeError as e:
            sys.exit(str(e))
        for (name, _), res in zip(order, done):
            results[name].append(res)
            print(f"rep {rep + 1} {name}: wall {res['wall']:.1f} s, cpu {res['cpu']:.1f} s", flush=True)
    for name, runs in results.items():
        print(f"\n== {name} ({trees[name]}): median of {len(runs)}; wall {[round(r['wall']) for r in runs]}, cpu {[round(r['cpu']) for r in runs]}")
        if runs[0]["phases"]:
            show_phases(min(runs, key=lambda r: r["cpu"]) if len(runs) > 1 else runs[0])
        print(f"median wall {statistics.median(r['wall'] for r in runs):.1f} s, median cpu {statistics.median(r['cpu'] for r in runs):.1f} s")
    if a.src:
        same = all(r["scores"] == results["this"][0]["scores"] for rs in results.values() for r in rs)
        ratio = [t["cpu"] / o["cpu"] for t, o in zip(results["this"], results["other"])]
        wall = [t["wall"] / o["wall"] for t, o in zip(results["this"], results["other"])]
        print(f"\nthis / other: cpu {statistics.median(ratio):.2f}x (range {min(ratio):.2f}-{max(ratio):.2f}), "
              f"wall {statistics.median(wall):.2f}x (range {min(wall):.2f}-{max(wall):.2f}); test scores identical: {same}")
    print("\nscores:", json.dumps(results["this"][0]["scores"]))


if __name__ == "__main__":
    main()
