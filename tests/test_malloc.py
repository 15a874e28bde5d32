"""glibc's mmap threshold fixed at 4 MB (train/malloc.py): freed large blocks go back to the system."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")
glibc = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                           reason="glibc's mallopt")

PROBE = """
import os, sys
from peftbench.train import malloc
fixed = malloc.fix_mmap_threshold() if sys.argv[1] == "fix" else False
page = os.sysconf("SC_PAGE_SIZE")
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
a = bytearray(24 << 20); del a           # glibc (untold) now raises its threshold past 24 MB
b = bytearray(12 << 20)                  # ... so this block comes from the heap
pin = [bytearray(64) for _ in range(1000)]  # small blocks above it keep the heap from shrinking
before = rss(); del b; after = rss()
print(fixed, malloc.fix_mmap_threshold(), (before - after) >> 20)
"""


def probe(mode: str, **env: str) -> tuple[str, str, int]:
    full = {**{k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}, "PYTHONPATH": SRC, **env}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env=full, capture_output=True, text=True, check=True)
    fixed, again, freed = out.stdout.split()
    return fixed, again, int(freed)


@glibc
def test_a_freed_large_block_returns_to_the_system_once_fixed() -> None:
    assert probe("fix") == ("True", "True", 12)  # set once, remembered; the 12 MB went back
    fixed, _, freed = probe("default")
    assert fixed == "False" and freed == 0  # glibc's own way: it stays on the heap


@glibc
def test_the_users_own_setting_stands() -> None:
    assert probe("fix", MALLOC_MMAP_THRESHOLD_="33554432")[:2] == ("False", "False")
    assert probe("fix", PEFTBENCH_MALLOC="0")[:2] == ("False", "False")
