"""Dequantised GGUF models cached as plain Hugging Face folders (safetensors), keyed by the GGUF file's sha256.

Dequantising SmolLM2's GGUF takes ~11 s a load; the same tensors read from safetensors take a fraction of a
second. The first load of a GGUF file writes <cache>/gguf/<sha256>/ (config.json, model.safetensors in
float32, the tokenizer's files) and later loads read that folder. Hashing 100 MB takes ~0.3 s, so a file's
hash is remembered by (path, size, mtime).

An entry is built in a temporary folder and renamed into place, so a killed process never leaves half of
one; its manifest (written last) lists every file's size, and an entry that does not match it is rebuilt.
The cache lives in PEFTBENCH_CACHE_DIR, else $XDG_CACHE_HOME/peftbench, else ~/.cache/peftbench;
PEFTBENCH_GGUF_CACHE=0 turns it off. `peftbench cache info` / `peftbench cache clear` show and empty it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

MANIFEST = "peftbench-gguf.json"
HASHES = "hashes.json"
MB = 1024**2


def cache_root() -> Path:
    """peftbench's user cache folder (measure/efficiency.py keeps its CPU peak there too)."""
    root = os.environ.get("PEFTBENCH_CACHE_DIR")
    return Path(root) if root else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "peftbench"


def gguf_root() -> Path:
    return cache_root() / "gguf"


def enabled() -> bool:
    return os.environ.get("PEFTBENCH_GGUF_CACHE", "1") not in ("0", "false", "no", "off")


def _write_json(path: Path, data: Any) -> None:
    """Atomically: a reader sees the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def file_hash(path: Path) -> str:
    """sha256 of a file, remembered by its resolved path, size and mtime (a changed file is hashed again)."""
    path = path.resolve()
    st = path.stat()
    index = gguf_root() / HASHES
    known = _read_json(index)
    key = str(path)
    entry = known.get(key)
    if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns:
        return str(entry["sha256"])
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(8 * MB), b""):
            h.update(block)
    known = _read_json(index)  # another process may have added its own files meanwhile
    known[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}
    _write_json(index, known)
    return h.hexdigest()


def locate(name: str, gguf: str, revision: str | None) -> Path | None:
    """The GGUF file on this machine: in a local folder, as a path, or already in the hub cache; else None."""
    candidate = Path(name).expanduser() / gguf  # an absolute gguf path stays itself
    if candidate.is_file():
        return candidate
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(name, gguf, revision=revision)
    except Exception:  # not a hub id either: the plain GGUF path reports it
        return None
    return Path(found) if isinstance(found, str) else None


def entry_ok(folder: Path) -> bool:
    """Every file the manifest lists is there at its size (a truncated or deleted file fails)."""
    files = _read_json(folder / MANIFEST).get("files")
    if not isinstance(files, dict) or not files:
        return False
    return all((folder / f).is_file() and (folder / f).stat().st_size == size for f, size in files.items())


def _build(name: str, gguf: str, revision: str | None, into: Path) -> None:
    """Dequantise once (config, tokenizer, float32 weights) and save them as a Hugging Face folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    kw: dict[str, Any] = {"gguf_file": gguf, "revision": revision}
    config = AutoConfig.from_pretrained(name, **kw)
    auto = AutoModelForSeq2SeqLM if getattr(config, "is_encoder_decoder", False) else AutoModelForCausalLM
    model = auto.from_pretrained(name, dtype=torch.float32, **kw)
    # Without GGUF matmul kernels transformers dequantises every weight; its GGUF "quantizer" then only
    # refuses to save. The weights are plain float32 tensors: saved as a plain model.
    if getattr(model, "hf_quantizer", None) is not None and any(not p.is_floating_point() for p in model.parameters()):
        raise ValueError("GGUF weights kept quantised (kernels installed): not cached")
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(into, safe_serialization=True)
    try:
        AutoTokenizer.from_pretrained(name, **kw).save_pretrained(into)
    except (OSError, ValueError, KeyError, TypeError):  # a GGUF without a tokenizer: the weights still cache
        pass


def folder_for(name: str, gguf: str, revision: str | None) -> Path | None:
    """The cached Hugging Face folder of a GGUF model, built on first use; None where caching cannot apply
    (cache off, file not on this machine, cache folder not writable, a model type this cannot rebuild)."""
    if not enabled():
        return None
    path = locate(name, gguf, revision)
    if path is None:
        return None
    try:
        digest = file_hash(path)
        final = gguf_root() / digest
        if entry_ok(final):
            return final
        return _create(name, gguf, revision, path, final)
    except OSError as err:  # e.g. a read-only home: load from the GGUF as before
        print(f"peftbench: not caching the dequantised GGUF ({err})", file=sys.stderr)
        return None


def _create(name: str, gguf: str, revision: str | None, path: Path, final: Path) -> Path | None:
    root = final.parent
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".building-"))
    try:
        try:
            _build(name, gguf, revision, tmp)
        except (ValueError, KeyError, TypeError):  # transformers cannot rebuild it: the plain path reports why
            return None
        files = {f.name: f.stat().st_size for f in tmp.iterdir() if f.is_file()}
        _write_json(tmp / MANIFEST, {"gguf": str(path.resolve()), "files": files})
        if final.exists():  # damaged (entry_ok said no) or built meanwhile by another process
            if entry_ok(final):
                return final
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:  # another process renamed its copy first
            if not entry_ok(final):
                raise
        size = sum(files.values())
        print(f"peftbench: cached the dequantised {path.name} ({size / MB:.0f} MB) in {final}; cache total "
              f"{total_size() / MB:.0f} MB (see: peftbench cache info; free it: peftbench cache clear)", file=sys.stderr)
        return final
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def entries() -> list[tuple[Path, str, int]]:
    """(folder, source GGUF path, bytes) of every cache entry, damaged ones included."""
    root = gguf_root()
    if not root.is_dir():
        return []
    out = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
        out.append((folder, str(_read_json(folder / MANIFEST).get("gguf", "?")), size))
    return out


def total_size() -> int:
    return sum(size for _, _, size in entries())


def clear() -> tuple[int, int]:
    """Removes every entry (and the remembered hashes); returns (entries, bytes) freed."""
    found = entries()
    for folder, _, _ in found:
        shutil.rmtree(folder, ignore_errors=True)
    (gguf_root() / HASHES).unlink(missing_ok=True)
    return len(found), sum(size for _, _, size in found)
