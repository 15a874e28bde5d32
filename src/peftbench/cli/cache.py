"""`peftbench cache info` and `peftbench cache clear`: the dequantised GGUF models peftbench keeps."""

from __future__ import annotations

import json

import typer

from peftbench.cli.common import friendly, out

cache_app = typer.Typer(help="Show or empty the cache of dequantised GGUF models.", no_args_is_help=True)
MB = 1024**2


@cache_app.command("info")
@friendly
def cache_info(json_out: bool = typer.Option(False, "--json", help="Print as JSON.")) -> None:
    """List cached models: folder, source GGUF file, size, and the total."""
    from peftbench import gguf_cache

    found = gguf_cache.entries()
    total = sum(size for _, _, size in found)
    if json_out:
        print(json.dumps({"folder": str(gguf_cache.gguf_root()), "bytes": total,
                          "entries": [{"folder": str(f), "gguf": g, "bytes": s} for f, g, s in found]}, indent=2))
        return
    for folder, gguf, size in found:
        out.print(f"{size / MB:9.1f} MB  {folder.name[:16]}  {gguf}", markup=False, highlight=False, soft_wrap=True)
    out.print(f"{total / MB:9.1f} MB in {len(found)} cached model(s) under {gguf_cache.gguf_root()}"
              " (free it: peftbench cache clear)", markup=False, highlight=False, soft_wrap=True)


@cache_app.command("clear")
@friendly
def cache_clear() -> None:
    """Delete every cached model (the next load of a GGUF file dequantises it again)."""
    from peftbench import gguf_cache

    n, size = gguf_cache.clear()
    out.print(f"removed {n} cached model(s), {size / MB:.1f} MB, from {gguf_cache.gguf_root()}",
              markup=False, highlight=False, soft_wrap=True)
