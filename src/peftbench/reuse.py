"""What the runs of one process share: a study prepares once (compare, sweep).

Runs of a study differ in method, learning rate or seed; what does not depend on those is built
by the first run that needs it and reused by the others, in this process only:
- the data splits as read from disk (`splits`), and each split's tokenization (`encodings`),
- the untuned model's sample predictions (`untuned`),
- FLOP counts per batch shape (`flop_cache`), per model, task, method and checkpointing.

Runs stay independent: a reused piece is exactly what the run would have built itself. The
untuned predictions are keyed by the random state they started from and give back the state
they left, so a run continues as if it had computed them. The base model is not kept: from
safetensors, transformers maps the file (the page cache) and loads MiniLM in 0.035 s, against
0.39 s for a deep copy of a kept one; GGUF files are dequantised once into a safetensors cache
(models.py).
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from peftbench.measure.flops import Shape

class Recent(OrderedDict):  # type: ignore[type-arg]
    """A dict that keeps its `size` most recently used entries: a long sweep over many datasets or
    models holds the few it is working on, not all it has seen."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def __getitem__(self, k: Any) -> Any:
        self.move_to_end(k)
        return super().__getitem__(k)

    def __setitem__(self, k: Any, v: Any) -> None:
        super().__setitem__(k, v)
        self.move_to_end(k)
        while len(self) > self.size:
            self.popitem(last=False)

    def setdefault(self, k: Any, default: Any = None) -> Any:
        if k not in self:
            self[k] = default
        return self[k]


ENABLED = True  # off: every run builds everything itself (tests and benchmarks compare the two)
_splits: Recent = Recent(4)
_encodings: Recent = Recent(8)
_untuned: Recent = Recent(64)
_flops: dict[str, dict[Shape, tuple[int, ...]]] = {}
_memo: dict[tuple[str, str], Any] = {}
_said: set[str] = set()


def key(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=repr)


def clear() -> None:
    """Forget everything (tests; a long-lived process that changed files on disk)."""
    for cache in (_splits, _encodings, _untuned, _flops, _memo, _said):
        cache.clear()


def stamp(*paths: Any) -> list[Any]:
    """Size and modification time of the local files at `paths` (a folder's files, one level): a file
    rewritten at the same path is read anew. Names that are no local path (hub ids) add nothing."""
    out: list[Any] = []
    for value in paths:
        path = Path(value).expanduser() if isinstance(value, str) and not value.startswith("builtin:") else None
        if path is None or not path.exists():
            continue
        for f in sorted(path.iterdir()) if path.is_dir() else [path]:
            st = f.stat()
            out.append([str(f), st.st_size, st.st_mtime_ns])
    return out


def data_stamp(spec: Any) -> list[Any]:
    return stamp(*(getattr(spec, n, None) for n in ("source", "train_file", "validation_file", "test_file")))


def splits(spec: Any, load: Callable[[], Any]) -> Any:
    """The data splits of a data spec, read once; each caller gets its own DatasetDict (datasets are immutable)."""
    from datasets import DatasetDict

    if not ENABLED:
        return load()
    k = key(spec.model_dump(mode="json"), data_stamp(spec))
    if k not in _splits:
        _splits[k] = load()
    return DatasetDict(dict(_splits[k]))


def encodings(*parts: Any) -> dict[str, Any]:
    """A split -> encoded rows dict shared by every task instance that encodes alike (`parts` say how)."""
    return _encodings.setdefault(key(*parts), {}) if ENABLED else {}


def _rng_digest() -> str:
    return hashlib.sha1(torch.get_rng_state().numpy().tobytes()).hexdigest()


def untuned(parts: tuple[Any, ...], compute: Callable[[], list[Any]]) -> list[Any]:
    """The untuned sample predictions for a run's setup (`parts`), computed once per random state."""
    if not ENABLED or torch.cuda.is_available():  # CUDA generators would need the same care; not worth it there
        return compute()
    k = key(*parts, _rng_digest())
    if k not in _untuned:
        preds = compute()
        _untuned[k] = (preds, torch.get_rng_state())
    preds, after = _untuned[k]
    torch.set_rng_state(after)
    return list(preds)


def flop_cache(cfg: Any, kind: str) -> dict[Shape, tuple[int, ...]]:
    """FLOPs per batch shape for runs that compute alike: same model, task, method (and its settings),
    checkpointing and packing. Rate, seed and budget change which shapes come, not what one costs."""
    if not ENABLED:
        return {}
    c = cfg.canonical()
    train = {k: c["train"].get(k) for k in ("gradient_checkpointing", "packing", "precision")}
    return _flops.setdefault(key(kind, c["model"], stamp(cfg.model.name), c["task"], c["method"], train), {})


def memo(kind: str, k: str, compute: Callable[[], Any]) -> Any:
    """Any other measure of a setup, computed once per process (e.g. the truncation report)."""
    if not ENABLED:
        return compute()
    if (kind, k) not in _memo:
        _memo[kind, k] = compute()
    return _memo[kind, k]


def first_time(line: str) -> bool:
    """True the first time a note is asked about in this process: a study says it once, not per run."""
    new = line not in _said
    _said.add(line)
    return new
