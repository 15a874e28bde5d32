"""Tiny random-weight models of every family, saved as local folders, for unit tests.

Each text model gets a word-level tokenizer over VOCAB (lower-cased, split on spaces
and punctuation), so tests run offline in seconds. Weights are random: tests check
behaviour (shapes, training, saving, refusals), never quality.
"""

from __future__ import annotations

from pathlib import Path

import torch

from conftest import FILLER, WORDS

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
EXTRA = (
    "summary summarize dialogue person1 person2 # : , . ? ! ; | - asks tells about lunch meeting tomorrow "
    "bob alice carol dave wants to go buy a car book train ticket office call later yes no okay "
    "question answer choices options distractors article wrong right table title row col city year "
    "population name team score red blue green 0 1 2 3 4 5 6 7 8 9 label text"
).split()
VOCAB = SPECIALS + sorted({w for ws in WORDS.values() for w in ws} | set(FILLER) | set(EXTRA))
FAMILY_OF = {"gpt2": "decoder", "llama": "decoder", "t5": "seq2seq", "bart": "seq2seq", "vit": "vision", "bert": "encoder"}


def word_tokenizer(max_length: int = 256, template: str | None = None):
    """template: special tokens added around a text, as the real family's tokenizer does
    (T5: "$A </s>", BART: "<s> $A </s>"); None adds nothing (GPT-2, as its real tokenizer)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    if template:
        specials = [(t, VOCAB.index(t)) for t in SPECIALS if t in template.split()]
        tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>",
        model_max_length=max_length,
    )


def build(arch: str, root: Path) -> str:
    """Save a tiny random `arch` model (plus tokenizer or image processor) under root; return its path."""
    import transformers as tf

    torch.manual_seed(0)
    root.mkdir(parents=True, exist_ok=True)
    n = len(VOCAB)
    ids = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)
    if arch == "gpt2":
        model = tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=n, n_embd=32, n_layer=2, n_head=4, n_positions=256, **ids))
    elif arch == "llama":
        model = tf.LlamaForCausalLM(tf.LlamaConfig(
            vocab_size=n, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, **ids))
    elif arch == "t5":
        model = tf.T5ForConditionalGeneration(tf.T5Config(
            vocab_size=n, d_model=32, d_ff=64, d_kv=8, num_layers=2, num_heads=4, decoder_start_token_id=0,
            pad_token_id=0, eos_token_id=3))
    elif arch == "bart":
        model = tf.BartForConditionalGeneration(tf.BartConfig(
            vocab_size=n, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=256,
            decoder_start_token_id=3, forced_eos_token_id=3, **ids))
    elif arch == "bert":
        model = tf.BertForMaskedLM(tf.BertConfig(
            vocab_size=n, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=256, pad_token_id=0))
    elif arch == "vit":
        cfg = tf.ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=64, num_channels=3)
        tf.ViTForImageClassification(cfg).save_pretrained(root)
        tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(root)
        return str(root)
    else:
        raise ValueError(arch)
    model.save_pretrained(root)
    word_tokenizer(template={"t5": "$A </s>", "bart": "<s> $A </s>"}.get(arch)).save_pretrained(root)
    return str(root)
