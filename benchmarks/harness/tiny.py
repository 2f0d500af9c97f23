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


SMOLLM2 = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
               num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
               rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, pad_token_id=0,
               bos_token_id=1, eos_token_id=2)
"""SmolLM2-135M's LlamaConfig: a random model of it costs per pair what the real one does."""


def smollm2_lora_layout(layers: int = 30) -> list[tuple[str, int]]:
    """The LoRA (r=8 on q_proj [576 → 576], v_proj [576 → 192]) layout of SmolLM2-135M as peft
    names it: 460,800 entries in 4·layers pieces."""
    out = []
    for i in range(layers):
        for module, d_out in (("q_proj", 576), ("v_proj", 192)):
            base = f"base_model.model.model.layers.{i}.self_attn.{module}"
            out += [(f"{base}.lora_A.default.weight", 8 * 576),
                    (f"{base}.lora_B.default.weight", d_out * 8)]
    return out


def random_smollm2(device="cpu", layers: int = 30, seed: int = 0, lora_b_std: float = 0.02):
    """A seeded random-init model of SmolLM2-135M's architecture (``layers`` of 30) with LoRA
    r=8, α=16 on q_proj, v_proj and B ~ N(0, lora_b_std²) (a trained-looking adapter), in eval
    mode on ``device``: the peft model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, LlamaConfig

    from benchmarks.harness.step import perturb_lora_b

    torch.manual_seed(seed)
    with torch.device(device):
        base = AutoModelForCausalLM.from_config(
            LlamaConfig(**{**SMOLLM2, "num_hidden_layers": layers}),
            attn_implementation="eager", dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj",
                                            "v_proj"], lora_dropout=0.0, bias="none",
                                            task_type="CAUSAL_LM"))
    perturb_lora_b(model, lora_b_std, seed)
    model.eval()
    return model


def random_token_pairs(n: int, seed: int = 0, vocab: int = 49152, lengths=(24, 40)):
    """``n`` TokenizedPairs of seeded random token ids in [3, vocab): prompt, chosen and
    rejected each of a length drawn from ``lengths`` (inclusive)."""
    import torch

    from gradproj.core.tokens import TokenizedPair

    g = torch.Generator().manual_seed(seed)

    def ids():
        m = int(torch.randint(lengths[0], lengths[1] + 1, (1,), generator=g))
        return tuple(int(v) for v in torch.randint(3, vocab, (m,), generator=g))

    return [TokenizedPair(f"pair-{i}", ids(), ids(), ids()) for i in range(n)]
