"""Sizes and counts as users type them on the command line: 2GB, 1.5GiB, 500MB, 1M, 250k, 2.5e12, 20ms.

Bytes take SI (kB, MB, GB, TB: powers of 1000) or binary (KiB, MiB, GiB, TiB: powers of 1024) units;
counts take k, M, B/G (billion), T; both take plain numbers and scientific notation. A bad value is
refused in one line naming the flag and an example (peftbench.errors.UserError).
"""

from __future__ import annotations

import math
import re

from peftbench.errors import UserError

BYTE_UNITS: dict[str, float] = {
    "": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
COUNT_UNITS: dict[str, float] = {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "g": 1e9, "t": 1e12}
TIME_UNITS: dict[str, float] = {"": 1, "ms": 1, "s": 1e3}  # in milliseconds

_NUMBER = r"(?P<num>[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+\.)"
_PATTERN = re.compile(rf"^\s*{_NUMBER}\s*(?P<unit>[a-zA-Z]*)\s*$")


def _parse(text: str, units: dict[str, float], flag: str, example: str, kind: str) -> float:
    m = _PATTERN.match(str(text))
    factor = units.get(m.group("unit").lower()) if m else None
    value = float(m.group("num")) * factor if m and factor is not None else math.nan
    if not (0 < value < math.inf):  # nan, zero and overflow all fail here
        shown = ", ".join(u for u in units if u) or "none"
        raise UserError(f"{flag} {text!r} is not a positive {kind}; write it like {flag} {example} (units: {shown})")
    return value


def parse_bytes(text: str, flag: str = "--max-memory", example: str = "2GB") -> float:
    """'2GB' -> 2e9, '1.5GiB' -> 1.5 * 2**30, '500MB' -> 5e8, '1024' -> 1024."""
    return _parse(text, BYTE_UNITS, flag, example, "size in bytes")


def parse_count(text: str, flag: str = "--max-trainable", example: str = "1M") -> float:
    """'1M' -> 1e6, '250k' -> 2.5e5, '2.5e12' -> 2.5e12, '3B' -> 3e9."""
    return _parse(text, COUNT_UNITS, flag, example, "count")


def parse_ms(text: str, flag: str = "--max-latency-ms", example: str = "20") -> float:
    """'20' and '20ms' -> 20.0; '0.02s' -> 20.0 (milliseconds)."""
    return _parse(text, TIME_UNITS, flag, example, "time in milliseconds")


def format_bytes(n: float, binary: bool = False) -> str:
    """3 significant digits: 1.37 MB (or 1.31 MiB when binary)."""
    base, names = (1024.0, ("B", "KiB", "MiB", "GiB", "TiB")) if binary else (1000.0, ("B", "kB", "MB", "GB", "TB"))
    i = 0
    while i < len(names) - 1 and abs(n) >= base ** (i + 1) * (1 - 5e-4):  # 999.9 kB shows as 1 MB, not 1e+03 kB
        i += 1
    return f"{n / base ** i:.3g} {names[i]}"


def format_count(n: float) -> str:
    """3 significant digits: 1.5M, 250k, 22.7M; 2.5e+12 for FLOP-sized numbers."""
    if abs(n) >= 1e15:
        return f"{n:.3g}"
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale * (1 - 5e-4):
            return f"{n / scale:.3g}{suffix}"
    return f"{n:.3g}"


def format_ms(ms: float) -> str:
    return f"{ms:.3g} ms"


def format_flops(n: float) -> str:
    return f"{n:.3g}"
