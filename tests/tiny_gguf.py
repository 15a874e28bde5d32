"""A tiny quantised llama GGUF: SmolLM2's tokenizer metadata (taken from the installed bundled GGUF),
one layer of width 64, random weights in Q8_0 / Q4_1 / F32 as llama.cpp writes them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

DIMS = {"block_count": 1, "embedding_length": 64, "feed_forward_length": 128, "attention.head_count": 2,
        "attention.head_count_kv": 1, "rope.dimension_count": 32, "context_length": 256}


def write_tiny_gguf(source: Path, out: Path, seed: int = 0, vocab: int = 1024) -> Path:
    """A GGUF at `out` with `source`'s first `vocab` tokens (and the merges among them), its other
    general metadata, and tiny random quantised tensors."""
    import gguf
    from gguf import GGMLQuantizationType as Q
    from gguf import GGUFValueType as V

    reader = gguf.GGUFReader(source)
    writer = gguf.GGUFWriter(out, arch="llama")
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()[:vocab]
    kept = set(tokens)
    merges = [m for m in reader.fields["tokenizer.ggml.merges"].contents() if m.replace(" ", "") in kept
              and all(part in kept for part in m.split(" "))]
    cut = {"tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": merges,
           "tokenizer.ggml.token_type": reader.fields["tokenizer.ggml.token_type"].contents()[:vocab]}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key.startswith("llama."):
            continue
        types = field.types
        value = cut.get(key, field.contents())
        writer.add_key_value(key, value, types[0], sub_type=types[-1] if types[0] == V.ARRAY else None)
    for key, value in DIMS.items():
        writer.add_key_value(f"llama.{key}", value, V.UINT32)
    writer.add_key_value("llama.vocab_size", vocab, V.UINT32)
    writer.add_key_value("llama.rope.freq_base", 100000.0, V.FLOAT32)
    writer.add_key_value("llama.attention.layer_norm_rms_epsilon", 1e-5, V.FLOAT32)
    rng = np.random.default_rng(seed)
    h, ff, kv = DIMS["embedding_length"], DIMS["feed_forward_length"], h_kv(DIMS)

    def add(name: str, shape: tuple[int, ...], qtype: Q) -> None:
        data = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        if qtype == Q.F32:
            writer.add_tensor(name, data)
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)

    add("token_embd.weight", (vocab, h), Q.Q8_0)
    add("output_norm.weight", (h,), Q.F32)
    for name, shape, qtype in [("attn_norm", (h,), Q.F32), ("ffn_norm", (h,), Q.F32), ("attn_q", (h, h), Q.Q4_1),
                               ("attn_k", (kv, h), Q.Q4_1), ("attn_v", (kv, h), Q.Q4_1), ("attn_output", (h, h), Q.Q4_1),
                               ("ffn_gate", (ff, h), Q.Q4_1), ("ffn_up", (ff, h), Q.Q4_1), ("ffn_down", (h, ff), Q.Q8_0)]:
        add(f"blk.0.{name}.weight", shape, qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def h_kv(dims: dict[str, int]) -> int:
    """Rows of the k and v projections: kv heads x head width."""
    return dims["attention.head_count_kv"] * dims["embedding_length"] // dims["attention.head_count"]
