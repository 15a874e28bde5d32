"""Studies without a babysitter: `compare --detach` runs on after the terminal closes, and
`results --watch` shows the stored runs until none is running.

A detached study is the same command line, minus --detach, in its own session (a closed terminal's
hangup does not reach it), with its output in a log under the results folder. Stopped or killed, the
same command resumes it: finished runs are found by their config hash, a killed run goes on from its
last checkpoint (runner.py).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from peftbench.errors import UserError

DETACH = "--detach"


def detach(results_dir: Path, console: Console, argv: list[str] | None = None) -> subprocess.Popen:
    """Start this command line again without --detach, in the background; say where its log is."""
    args = list(sys.argv[1:] if argv is None else argv)
    if DETACH not in args:  # called from Python rather than the command line: nothing to re-execute
        raise UserError(f"{DETACH} re-runs the command line it was given; run it from the shell, e.g. "
                        "peftbench compare --methods lora,ia3 --detach")
    args = [a for a in args if a != DETACH]
    logs = Path(results_dir, "logs")
    try:
        logs.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot write the log folder {logs} ({e.strerror}); pass a writable --results-dir") from None
    log = logs / f"compare-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PEFTBENCH_DETACHED": "1"}
    with open(log, "ab") as out:
        out.write(f"$ peftbench {shlex.join(args)}\n".encode())
        out.flush()
        proc = subprocess.Popen([sys.executable, "-m", "peftbench.cli", *args], stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, env=env)
    log.with_suffix(".pid").write_text(f"{proc.pid}\n")  # results --watch waits while it lives
    where = shlex.quote(str(results_dir))
    for line in (f"detached: running in the background as pid {proc.pid}; it goes on if this terminal closes",
                 f"log: {log}",
                 f"follow it: tail -f {shlex.quote(str(log))}   (or: peftbench results --watch --results-dir {where})",
                 f"stop it: kill {proc.pid}; the same command, run again, resumes where it stopped"):
        console.print(line, highlight=False, soft_wrap=True)
    return proc


def watch(results_dir: Path, console: Console, interval: float = 5.0, count: int | None = None,
          sleep: Callable[[float], None] = time.sleep) -> int:
    """Print the stored runs every `interval` seconds until none is running (or `count` tables, or Ctrl-C).
    Returns how many tables were printed."""
    from peftbench.report.tables import runs_table
    from peftbench.store import Store

    shown = 0
    try:
        while True:
            studies = detached_alive(results_dir)
            try:
                with Store.open_existing(results_dir) as store:  # opening marks runs whose process died interrupted
                    rows = store.list()
            except UserError:
                if not studies:  # nothing stored and nothing on its way
                    raise
                rows = []  # a detached study still checking its methods: no run stored yet
            running = sum(r.status == "running" for r in rows)
            if console.is_terminal:
                console.clear()
            console.print(runs_table(rows))
            shown += 1
            go_on = bool(running or studies)  # a detached study between runs has none running for a moment
            state = f"{running} running, {sum(r.status == 'done' for r in rows)} done"
            if studies:
                state += f", detached stud{'ies' if len(studies) > 1 else 'y'} {', '.join(map(str, studies))} alive"
            state += f"; refreshing every {interval:g} s (Ctrl-C stops)" if go_on else "; none running, so watching stops"
            console.print(f"{time.strftime('%H:%M:%S')} {state}", highlight=False)
            if not go_on or (count is not None and shown >= count):
                return shown
            sleep(interval)
    except KeyboardInterrupt:  # the runs go on: only the watching stops
        return shown


def detached_alive(results_dir: Path) -> list[int]:
    """Pids of detached studies of this results folder that are still running (their .pid files in logs/)."""
    out = []
    for f in sorted(Path(results_dir, "logs").glob("*.pid")):
        try:
            pid = int(f.read_text().strip())
        except (OSError, ValueError):
            continue
        if _alive(pid):
            out.append(pid)
    return out


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent to reap it."""
    from peftbench.store.sqlite import pid_alive

    if not pid_alive(pid):
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): alive as far as we can tell
