"""Every failure as one line: what went wrong, the fix, and an exit code.

Bad input and faults of the machine (disk full, permissions, a damaged database) are the
user's to fix: one line, exit 2. Anything else is a peftbench bug: one line naming the log
file that holds its traceback, exit 1 (with --debug the traceback is printed instead).
"""

from __future__ import annotations

import errno
import os
import pickle
import sqlite3
import tempfile
import time
import traceback
from pathlib import Path

from peftbench.errors import UserError

INPUT, BUG, INTERRUPTED = 2, 1, 130

_OS_FIXES = {
    errno.ENOSPC: "free some disk space or pass another --results-dir",
    errno.EDQUOT: "free some disk space or pass another --results-dir",
    errno.EFBIG: "the file size limit was reached (ulimit -f); raise it or pass another folder",
    errno.EACCES: "check its permissions or pass a folder you can write",
    errno.EPERM: "check its permissions or pass a folder you can write",
    errno.EROFS: "the filesystem is read-only: pass a folder you can write",
    errno.ENOTDIR: "a part of the path is a file, not a folder: pass another path",
    errno.EISDIR: "it is a folder: pass a file path",
    errno.EEXIST: "something is already there: pass another path",
    errno.ENOENT: "check the path",
}


def os_line(e: OSError) -> str:
    what = e.strerror or str(e)
    where = f" ({e.filename})" if e.filename else ""
    return f"{what}{where}: {_OS_FIXES.get(e.errno or 0, 'check the path and the disk')}"


def sqlite_line(e: sqlite3.Error) -> str:
    text = str(e)
    if "full" in text or "disk I/O" in text:
        fix = "the disk may be full or failing: free some space or pass another --results-dir"
    elif "readonly" in text or "unable to open" in text:
        fix = "check the results folder's permissions or pass another --results-dir"
    elif "locked" in text or "busy" in text:
        fix = "another process holds the results database; retry when it has finished"
    else:
        fix = "rebuild the index with: peftbench results --rebuild"
    return f"results database: {text}: {fix}"


def crash_log(e: BaseException) -> Path | None:
    """The traceback in a file the user can attach to a bug report; None if nowhere is writable."""
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peftbench" / "logs"
    text = "".join(traceback.format_exception(e))
    for folder in (cache, Path(tempfile.gettempdir()) / "peftbench"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(text)
            return folder / name
        except OSError:
            continue
    return None


def describe(e: BaseException) -> tuple[str, int]:
    """(the line to print, the exit code) for an exception that reached the command line."""
    if isinstance(e, UserError):
        return str(e), INPUT
    if isinstance(e, OSError):
        return os_line(e), INPUT
    if isinstance(e, sqlite3.Error):
        return sqlite_line(e), INPUT
    if isinstance(e, pickle.UnpicklingError):  # torch.load(weights_only=True) refusing a file
        return f"refused to load a file that is not plain weights ({str(e).splitlines()[0]})", INPUT
    if type(e).__name__ == "SafetensorError":
        if "I/O error" in str(e):  # writing or reading failed, not the file's content
            return f"weights could not be written or read ({e}): the disk may be full; free some space", INPUT
        return f"a weights file is damaged or not safetensors ({e}): train the run again with --force", INPUT
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":  # host RAM, or torch's CUDA OOM
        return "out of memory: lower --batch-size or the task's max_length, or pick a smaller model", INPUT
    if isinstance(e, RecursionError):
        return "the input is too deeply nested to read: flatten it", INPUT
    log = crash_log(e)
    where = f"; the traceback is in {log}" if log else ""
    return (f"internal error ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): this is a peftbench bug"
            f"{where}; rerun with --debug to print it", BUG)
