"""Building blocks for small causal LMs made here: a byte-level BPE tokenizer trained on given
text, and GPT-2 / Llama configs of a given size (random weights until trained)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

EOS = "<|endoftext|>"


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Any:
    """A byte-level BPE (every byte string encodes; nothing is ever unknown), wrapped as a
    transformers fast tokenizer so `save_pretrained` writes the files the runtime loads."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=[EOS],
                            show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token=EOS, eos_token=EOS,
                                   pad_token=EOS)


def build_model(family: str, vocab_size: int, *, layers: int, hidden: int, heads: int,
                context: int, kv_heads: int | None = None, init_std: float = 0.02,
                dropout: float = 0.0) -> Any:
    """A randomly initialised GPT2LMHeadModel or LlamaForCausalLM. Dropout defaults to 0: the
    models here train for minutes on a few megabytes, far from overfitting."""
    import torch  # noqa: F401 - transformers needs it loaded
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if family == "gpt2":
        cfg = GPT2Config(vocab_size=vocab_size, n_positions=context, n_embd=hidden, n_layer=layers,
                         n_head=heads, initializer_range=init_std, bos_token_id=0, eos_token_id=0,
                         resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
        return GPT2LMHeadModel(cfg).eval()
    if family == "llama":
        cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 3,
                          num_hidden_layers=layers, num_attention_heads=heads,
                          num_key_value_heads=kv_heads or heads, max_position_embeddings=context,
                          initializer_range=init_std, bos_token_id=0, eos_token_id=0, pad_token_id=0,
                          attention_dropout=dropout)
        return LlamaForCausalLM(cfg).eval()
    raise ValueError(f"unknown family {family!r}; use 'gpt2' or 'llama'")


def save(model: Any, tokenizer: Any, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder
