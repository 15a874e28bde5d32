"""glibc's malloc settings against peak RSS and CPU time (issue 15 item 9's finding): one `peftbench` command
run as separate processes with glibc's defaults and with large allocations mmapped (returned on free),
alternated; median CPU time (the child's rusage), peak RSS and wall per arm.

    HF_HUB_OFFLINE=1 PAIRS=3 .venv/bin/python benchmarks/malloc_threshold.py run -c nolatency.yaml -m lora \
        --steps 16 --eval-every 16 --max-eval-examples 128 --samples 0
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

ARMS = {"glibc default": {},
        "mmap>=1MB, trim 16MB": {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "16777216"},
        "mmap>=4MB": {"MALLOC_MMAP_THRESHOLD_": "4194304"}}


def one(args: list[str], extra_env: dict[str, str]) -> tuple[float, float, float]:
    """CPU seconds, peak RSS (GB) and wall seconds of one `peftbench ARGS` process."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "HF_HUB_OFFLINE": "1", **extra_env}
        t = time.perf_counter()
        p = subprocess.Popen([sys.executable, "-m", "peftbench.cli", *args, "--results-dir", f"{tmp}/r"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _, status, ru = os.wait4(p.pid, 0)
        if status:
            sys.exit(f"peftbench {' '.join(args)} failed with {extra_env}")
        return ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024 / 1e9, time.perf_counter() - t


def main() -> None:
    args = sys.argv[1:]
    got: dict[str, list[tuple[float, float, float]]] = {a: [] for a in ARMS}
    for i in range(int(os.environ.get("PAIRS", "3"))):
        for a in (list(ARMS) if i % 2 == 0 else list(ARMS)[::-1]):
            got[a].append(one(args, ARMS[a]))
            print(a, got[a][-1], flush=True)
    for a, rs in got.items():
        cpu = [r[0] for r in rs]
        print(f"{a:24} cpu {statistics.median(cpu):7.1f} s ({min(cpu):.1f}-{max(cpu):.1f})  "
              f"peak {statistics.median(r[1] for r in rs):5.2f} GB  wall {statistics.median(r[2] for r in rs):6.1f} s")


if __name__ == "__main__":
    main()
