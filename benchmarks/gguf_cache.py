"""Loading the bundled SmolLM2 GGUF as a run loads it (config, tokenizer and model through
models.load_pretrained): without the cache (PEFTBENCH_GGUF_CACHE=0, as before), the first load with it
(dequantise, then write the cache) and the second (the cached safetensors folder).

Each load runs in a fresh subprocess at 1 torch thread and reports its CPU time (time.process_time, so
other work on the machine does not count), after the modules both paths import are imported (a run pays
those either way); rounds alternate uncached, first, second, each round with a new empty cache.

Run:  HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/gguf_cache.py [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def child() -> None:
    import time

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from peftbench import models
    from peftbench.config import ModelSpec

    import transformers.models.llama.modeling_llama  # noqa: F401  # imports: not part of a load
    import transformers.tokenization_utils_tokenizers  # noqa: F401

    torch.set_num_threads(1)
    spec = ModelSpec(name=models.SMOLLM2)
    t0, w0 = time.process_time(), time.perf_counter()
    for auto in (AutoConfig, AutoTokenizer, AutoModelForCausalLM):
        models.load_pretrained(auto, spec)
    print(json.dumps({"cpu": time.process_time() - t0, "wall": time.perf_counter() - w0}))


def load(cache: str, enabled: bool = True) -> dict[str, float]:
    env = {**os.environ, "PEFTBENCH_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1",
           "PEFTBENCH_GGUF_CACHE": "1" if enabled else "0"}
    out = subprocess.run([sys.executable, __file__, "--child"], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3, help="rounds")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child()
        return
    rounds: dict[str, list[float]] = {"uncached": [], "first": [], "second": []}
    for i in range(args.pairs):
        with tempfile.TemporaryDirectory() as cache:
            got = {"uncached": load(cache, enabled=False), "first": load(cache), "second": load(cache)}
        for k, r in got.items():
            rounds[k].append(r["cpu"])
        print(f"round {i + 1}: " + ", ".join(f"{k} {r['cpu']:.2f} s CPU ({r['wall']:.1f} s wall)" for k, r in got.items()),
              flush=True)
    m = {k: statistics.median(v) for k, v in rounds.items()}
    print(f"median CPU time: uncached {m['uncached']:.2f} s, first {m['first']:.2f} s, second {m['second']:.2f} s: "
          f"second {m['first'] / m['second']:.1f}x faster than first, {m['uncached'] / m['second']:.1f}x than uncached")


if __name__ == "__main__":
    main()
