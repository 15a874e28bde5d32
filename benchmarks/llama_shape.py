"""A Llama-3.2-1B-shaped causal LM with random weights, and synthetic token batches, for the GPU
benchmarks (throughput.py, gpu/qlora_vs_lora.py). Weights do not matter for speed or memory, so
nothing is downloaded: the model is built from its config (Llama-3.2-1B's rope scaling is left
out; it changes no FLOP and no kernel)."""

from __future__ import annotations

import torch
from torch import nn

SEQ, BATCH = 1024, 8
LLAMA_1B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                num_key_value_heads=8, head_dim=64, vocab_size=128256, rope_theta=500000.0, rms_norm_eps=1e-5,
                max_position_embeddings=131072, tie_word_embeddings=True, hidden_act="silu")
LORA = (("r", 16), ("alpha", 32.0), ("target_modules", "all-linear"))  # peftbench lora/qlora params


def llama_1b(dtype: torch.dtype, device: str, seed: int) -> nn.Module:
    """Built directly in `dtype` on `device` (no fp32 copy on the way)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(**LLAMA_1B, attn_implementation="sdpa")
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(before)


def synthetic_batches(n: int, batch: int = BATCH, seq: int = SEQ, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """n batches of random tokens, every position a target (labels = inputs)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, int(LLAMA_1B["vocab_size"]), (batch, seq), generator=gen)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()})
    return out


def qlora_ready() -> str | None:
    """Why 4-bit QLoRA cannot run here (no CUDA, no bitsandbytes), or None."""
    import importlib.util

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install 'bitsandbytes>=0.45')"
    return None
