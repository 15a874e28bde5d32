"""Parameter counts and bytes on disk."""

from __future__ import annotations

from pathlib import Path

from torch import nn


def count_parameters(model: nn.Module) -> dict[str, float]:
    # Deduplicate shared tensors (tied embeddings) by identity.
    seen: dict[int, tuple[int, bool]] = {}
    for p in model.parameters():
        seen[id(p)] = (p.numel(), p.requires_grad)
    total = sum(n for n, _ in seen.values())
    trainable = sum(n for n, t in seen.values() if t)
    return {"total": total, "trainable": trainable, "trainable_pct": 100.0 * trainable / max(total, 1)}


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
