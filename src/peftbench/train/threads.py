"""Torch's intra-op threads and OpenMP's wait policy for the machine as it is when a run starts.

The thread count changes how torch splits its reductions, so it changes a run's numbers in the last
digits: a run keeps torch's own count (OMP_NUM_THREADS, else the cores) unless asked, so the same
config gives the same scores on an idle and on a busy machine. `--threads N` fixes it; `--threads
auto` opts into the cores free when each run starts (`os.sched_getaffinity` less other work's load):
faster on a shared machine, at the price of numbers that depend on that load.

The wait policy (OMP_WAIT_POLICY) does not change numbers, so it adapts by itself: on a machine other
work also uses, spin-waiting OpenMP threads fight it for the cores (a step ran 5-8x slower with 2
spinning threads on 2 busy cores). It is read once, when torch loads its OpenMP runtime: `start` sets
it before torch is imported, passive when other work runs, else libgomp's default (spin a while,
then sleep). Nothing here imports torch at module level, so the command line can call `start` first.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

SHARED_LOAD = 0.5  # other work's load from which the machine counts as shared (half a core kept busy)
LOAD_WINDOW = 60.0  # seconds: the time constant of the kernel's 1-minute load average
POLICIES = ("auto", "active", "passive")


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def choose(cores: int, other_load: float, cap: int | None = None) -> int:
    """Threads for `cores` usable cores with `other_load` runnable elsewhere: the free cores, rounded
    half up (a load of 0.4 leaves a core free, 0.6 does not), at least 1, at most `cap` (default: cores)."""
    cap = cores if cap is None else min(cap, cores)
    free = cores - max(other_load, 0.0) if math.isfinite(other_load) else 1
    return max(1, min(cap, math.floor(free + 0.5)))


def is_shared(other_load: float) -> bool:
    return not math.isfinite(other_load) or other_load >= SHARED_LOAD


class OwnLoad:
    """This process's share of the load average, modelled as the kernel's exponential average of
    its CPU use: a `compare` must not count its previous run as other work."""

    def __init__(self, clock: Any = time.monotonic, cpu: Any = time.process_time) -> None:
        self.clock, self.cpu = clock, cpu
        self.t, self.used = clock(), cpu()
        self.load = min(self.used / LOAD_WINDOW, float(usable_cores()))  # start-up: within the last minute

    def now(self) -> float:
        t, used = self.clock(), self.cpu()
        dt = t - self.t
        if dt > 0:
            keep = math.exp(-dt / LOAD_WINDOW)
            self.load = self.load * keep + (used - self.used) / dt * (1 - keep)
            self.t, self.used = t, used
        return self.load


_own = OwnLoad()
_state: dict[str, Any] = {"fixed": None, "auto": False}  # fixed: (count, why) from --threads or a sweep worker


SAMPLE = 0.1  # seconds of /proc/stat sampling: what other processes keep busy now


def _busy_ticks() -> tuple[int, int] | None:
    """(busy, total) CPU ticks of the whole machine since boot, from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle and iowait
    return sum(ticks[:8]) - idle, sum(ticks[:8])


def busy_now(window: float = SAMPLE) -> float | None:
    """Cores other processes keep busy right now: LoadWindow over a short sleep. None where /proc/stat is missing."""
    probe = LoadWindow()
    if probe.ticks is None:
        return None
    time.sleep(window)
    return probe.other()


class LoadWindow:
    """What other processes kept busy over a stretch of time (a short sleep, or latency timing): the
    machine's busy share over the window times its cores, less this process's own CPU time, in cores."""

    def __init__(self) -> None:
        self.ticks, self.own, self.t = _busy_ticks(), time.process_time(), time.monotonic()

    def other(self) -> float | None:
        b, own, t = _busy_ticks(), time.process_time() - self.own, time.monotonic() - self.t
        if self.ticks is None or b is None or b[1] == self.ticks[1] or t <= 0:
            return None
        share = (b[0] - self.ticks[0]) / (b[1] - self.ticks[1])
        return max(0.0, share * (os.cpu_count() or 1) - own / t)

    def machine(self, threads: int) -> dict[str, Any]:
        """The load while timing, and whether it was busy: other work plus this run's threads above the
        cores it may use (by half a core or more), so the run waited for cores. Without /proc/stat: the
        1-minute load average (which counts this process too) above the cores."""
        cores, other = usable_cores(), self.other()
        try:
            average: float | None = os.getloadavg()[0]
        except (AttributeError, OSError):
            average = None
        if other is not None:
            busy = other + threads >= cores + SHARED_LOAD
        else:
            busy = average is not None and average > cores
        return {"other_load": None if other is None else round(other, 2), "cores": cores, "threads": threads,
                "load_average": None if average is None else round(average, 2), "busy": busy}


def other_load() -> float:
    """Cores other work keeps busy: sampled now where /proc/stat exists (the 1-minute load average lags a
    minute behind: right after other work ends it still reads busy), else the load average less this
    process's own share; inf where the OS says neither."""
    now = busy_now()
    if now is not None:
        return now
    try:
        total = os.getloadavg()[0]
    except (AttributeError, OSError):
        return math.inf
    return max(0.0, total - _own.now())


def wait_policy() -> str:
    """The policy in force: what OMP_WAIT_POLICY says (active or passive), else libgomp's default."""
    value = os.environ.get("OMP_WAIT_POLICY", "").strip().lower()
    return value if value in ("active", "passive") else "default"


def parse_threads(value: int | str | None) -> int | str | None:
    """--threads: a count of at least 1, or auto; None (not given) keeps torch's own count."""
    from peftbench.errors import UserError

    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None if value is None else "auto"
    try:
        count = int(value)
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise UserError(f"--threads must be a count of at least 1 or auto (got {value!r}); e.g. --threads 2, "
                        "or leave it out to keep torch's own count")
    return count


def start(threads: int | str | None = None, policy: str = "auto") -> str | None:
    """Call before torch is imported (the CLI's run and compare do): fixes --threads and sets the wait
    policy. Returns a note when torch already runs with another policy (it is then kept and recorded)."""
    from peftbench.errors import UserError

    if policy not in POLICIES:
        raise UserError(f"--wait-policy {policy!r} is not one of {', '.join(POLICIES)}; e.g. --wait-policy passive")
    threads = parse_threads(threads)
    _state["auto"] = threads == "auto"  # a flag holds for this command only
    _state["fixed"] = (threads, "--threads") if isinstance(threads, int) else None
    want = policy
    if policy == "auto":
        if "OMP_WAIT_POLICY" in os.environ:  # the user's own setting stands
            return None
        want = "passive" if is_shared(other_load()) else "default"
    if "torch" in sys.modules:  # the OpenMP runtime has read the environment already; only an explicit ask is told
        return None if policy == "auto" or want == wait_policy() else (
            f"wait policy {want} not applied: torch started with {wait_policy()}; set OMP_WAIT_POLICY before Python starts")
    if want != "default":
        os.environ["OMP_WAIT_POLICY"] = want.upper()
    return None


def fix(count: int, why: str) -> None:
    """Every later run in this process uses `count` threads (an explicit flag, or a sweep worker's share)."""
    _state["fixed"] = (count, why)


@dataclass(frozen=True)
class Choice:
    count: int
    wait_policy: str
    why: str  # "torch default", "--threads", "sweep: 4 cores / 2 workers", "auto: 2 cores, other load 0.31"

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "wait_policy": self.wait_policy, "why": self.why}


def default_count() -> int:
    """Torch's own count at start-up (OMP_NUM_THREADS, else its default), before anything here changed it."""
    import torch

    if "default" not in _state:
        _state["default"] = torch.get_num_threads()
    return _state["default"]


def for_run() -> Choice:
    """Set torch's thread count for the run starting now and say what was chosen and why."""
    import torch

    cap = default_count()
    if _state["fixed"]:
        count, why = _state["fixed"]
    elif _state.get("auto"):
        cores, load = usable_cores(), other_load()
        count = choose(cores, load, cap)
        why = f"auto: {cores} cores, other load {load:.2f}"
    else:  # the same count whatever the load: the same numbers
        count, why = cap, "torch default"
    torch.set_num_threads(count)
    return Choice(count, wait_policy(), why)
