"""How much of each split the length limit cuts, and the limit that would keep 95% of examples whole.

Tasks tell what they cut (`Task.cut_lengths`): per split, each example's untruncated token count of the
part that is cut, the budget it is cut at, and the tokens the rest of the input takes (template, special
tokens). Measured once per process for a task, data and model (reuse.py); stored with every run.
"""

from __future__ import annotations

import math
from typing import Any

WARN_SHARE = 0.10  # more than this share of a split cut: warn
COVER = 0.95

_warned: set[str] = set()


def covering(lengths: list[int], q: float = COVER) -> int:
    """The smallest length that q of the examples fit in."""
    ordered = sorted(lengths)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else 0


def report(cut: tuple[dict[str, list[int]], int, int] | None, limit: int | None, max_length: int) -> dict[str, Any] | None:
    """{"max_length", "shares": split -> share cut, "suggested": max_length covering 95% of train (within the
    model's limit), "limit"}; None where the task cuts nothing it can measure."""
    if cut is None:
        return None
    lengths, budget, fixed = cut
    shares = {s: sum(n > budget for n in v) / len(v) for s, v in lengths.items() if v}
    def fit(v: list[int]) -> int:
        want = -(-(covering(v) + fixed) // 8) * 8  # a multiple of 8, as batches pad
        return min(want, limit) if limit else want

    covers = {s: fit(v) for s, v in lengths.items() if v}
    suggested = fit(lengths.get("train") or [n for v in lengths.values() for n in v])
    return {"max_length": max_length, "shares": shares, "suggested": suggested, "limit": limit, "covers": covers}


def warning(rep: dict[str, Any] | None, key: str) -> str | None:
    """One line when a split has more than 10% of its examples cut; once per process for a setup."""
    if not rep or key in _warned:
        return None
    over = {s: v for s, v in rep["shares"].items() if v > WARN_SHARE}
    if not over:
        return None
    _warned.add(key)
    cut = ", ".join(f"{v:.0%} of {s}" for s, v in over.items())
    # train decides when it is cut; where train fits, the cut splits (their evaluation is what suffers)
    other = max((rep.get("covers") or {}).get(s, 0) for s in over)
    want, which = (rep["suggested"], "train") if rep["suggested"] > rep["max_length"] else (other, " and ".join(over))
    fix = f"--max-length {want} keeps 95% of {which} whole"
    if rep["limit"] and rep["max_length"] >= rep["limit"]:
        fix = "the model's limit allows no more"
    elif rep["limit"] and want >= rep["limit"]:
        fix = f"--max-length {rep['limit']} (the model's limit) keeps the most"
    elif want <= rep["max_length"]:  # never happens for a cut split's own 95%, but say nothing wrong if it does
        fix = "most examples fit already"
    return f"warning: max length {rep['max_length']} cuts {cut}; {fix}"
