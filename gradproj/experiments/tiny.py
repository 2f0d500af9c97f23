"""A tiny random Llama with a character-level chat tokenizer, built from a config (nothing is
downloaded): for experiments that retrain many times (the LDS harness) and must stay cheap.

Tokenizer: one token per printable ASCII character plus the chat specials, so any generated text
tokenizes; chat template ``<role>content<eos>`` per message. Model: LlamaConfig with hidden 64,
intermediate 128, 2 layers, 4 heads, eager attention, seeded weights.
"""

from __future__ import annotations

import string
from pathlib import Path

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>", "<user>", "<assistant>", "<system>")
ROLE_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<eos>{% endfor %}"
                 "{% if add_generation_prompt %}<assistant>{% endif %}")
DESCRIPTION = "random LlamaConfig hidden 64, intermediate 128, 2 layers, 4 heads, char tokenizer"


def char_tokenizer():
    """A fast word-level tokenizer whose words are single characters and ``<special>`` tags."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    symbols = list(SPECIAL_TOKENS) + list(string.printable)
    core = Tokenizer(models.WordLevel(vocab=dict(zip(symbols, range(len(symbols)))),
                                      unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("<[a-z]+>|."), behavior="isolated")
    specials = dict(zip(("pad_token", "unk_token", "bos_token", "eos_token"), SPECIAL_TOKENS))
    wrapped = PreTrainedTokenizerFast(tokenizer_object=core, **specials)
    wrapped.chat_template = ROLE_TEMPLATE
    return wrapped


def save_tiny_llama(folder: str | Path, seed: int = 0) -> str:
    """Save the tiny Llama (seeded) and its tokenizer to ``folder``; returns the folder."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    tok = char_tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                      max_position_embeddings=256, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)
