"""The local inputs of a cluster sweep: the data files and model folders its configs name, shipped to the workers.

Each distinct local path is packed once (tar bytes), put into Ray's object store once, and
unpacked at most once per node (sweep/remote.py keeps a per-node copy keyed by the bytes' digest).
Built-in data, the bundled models and hub ids are names every node resolves by itself.
Inputs above SHIP_LIMIT in all are refused before anything runs: they belong on storage
every node can read, named by the same path on each node (then pass --shared-inputs).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peftbench.errors import UserError

SHIP_LIMIT = 512 * 2**20  # bytes shipped in all; more belongs on storage every node reads
PATH_KEYS = (("model", "name"), ("task", "data", "source"), ("task", "data", "train_file"),
             ("task", "data", "validation_file"), ("task", "data", "test_file"))
NAMES = ("default", "smollm2")  # model names peftbench resolves itself (config.DEFAULT_MODEL, models.SMOLLM2)


@dataclass(frozen=True)
class Input:
    """One shipped file or folder: where the worker finds its bytes and what to call its copy."""

    key: str  # digest of the tar bytes: the node-local copy's folder name
    name: str  # the file's or folder's own name
    folder: bool
    ref: Any  # a Ray ObjectRef of the tar bytes


def _get(config: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for k in keys:
        config = config.get(k) if isinstance(config, dict) else None
    return config


def local_paths(configs: list[dict[str, Any]]) -> list[str]:
    """The config values, in first-seen order, that name an existing local file or folder."""
    seen: dict[str, None] = {}
    for config in configs:
        for keys in PATH_KEYS:
            value = _get(config, keys)
            if not isinstance(value, str) or value in NAMES or value.startswith("builtin:"):
                continue
            if Path(value).expanduser().exists():
                seen.setdefault(value, None)
    return list(seen)


def size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def check_size(paths: list[str], limit: int | None = None) -> None:
    """Refuse (one line) inputs too large to ship through Ray's object store."""
    limit = SHIP_LIMIT if limit is None else limit
    sizes = {p: size(Path(p).expanduser()) for p in paths}
    total = sum(sizes.values())
    if total > limit:
        largest = max(sizes, key=sizes.__getitem__)
        raise UserError(f"the sweep's local inputs are {total / 2**20:.0f} MiB (largest: '{largest}', "
                        f"{sizes[largest] / 2**20:.0f} MiB), more than the {limit // 2**20} MiB the ray backend ships "
                        "to its workers; put them on storage every node can read (the same path or a URI on each node) "
                        "and pass --shared-inputs")


def ship(paths: list[str], put: Any) -> dict[str, Input]:
    """Pack each path and put its bytes into the object store (put: ray.put); config value -> Input."""
    from peftbench.store.shipped import pack

    out = {}
    for value in paths:
        path = Path(value).expanduser()
        data = pack(path)
        out[value] = Input(hashlib.sha256(data).hexdigest()[:16], path.resolve().name, path.is_dir(), put(data))
    return out


def rewrite(config: dict[str, Any], copies: dict[str, str]) -> dict[str, Any]:
    """The config with each shipped path replaced by its local copy's."""
    import copy

    config = copy.deepcopy(config)
    for keys in PATH_KEYS:
        parent = _get(config, keys[:-1])
        if isinstance(parent, dict) and parent.get(keys[-1]) in copies:
            parent[keys[-1]] = copies[parent[keys[-1]]]
    return config


def version_mismatch(node: str, theirs: dict[str, str]) -> str | None:
    """Why a worker's result cannot be stored under the driver's config hash (which includes
    major.minor of these packages), or None when they agree."""
    from peftbench.runner import versions
    from peftbench.store.folder import HASHED_VERSIONS

    ours = versions()

    def mm(v: Any) -> str:
        return ".".join(str(v).split(".")[:2])

    diff = [f"{k} {theirs.get(k)} (here {ours.get(k)})" for k in HASHED_VERSIONS if mm(theirs.get(k)) != mm(ours.get(k))]
    if not diff:
        return None
    return (f"node {node} has {', '.join(diff)}; install the same peftbench, torch, transformers and peft versions "
            "on every node")
