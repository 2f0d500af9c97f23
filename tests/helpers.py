"""Shared test helpers: tiny models and tokenizers built from a config (never downloaded),
sample pairs, oracles (token loops), files. Fixtures live in conftest.py."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from gradproj.projection.counter_hash import GAUSS_TAG, mix32_int, param_keys

WORDS = ("the a cat dog sat ran on mat red blue green is was and or not yes no what which "
         "color animal big small one two three four five six seven eight nine ten plus equals "
         "answer question good bad very sure ok hello").split()
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>", "<user>", "<assistant>", "<system>"]
CHAT_TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} <eos> {% endfor %}"
                 "{% if add_generation_prompt %}<assistant> {% endif %}")


def make_tokenizer(chat: bool = False):
    """A whitespace word-level tokenizer over WORDS; with ``chat`` it has a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<bos>", eos_token="<eos>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def make_char_tokenizer():
    """One token per printable ASCII character (covers any generated text), with a chat template."""
    import string

    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(SPECIALS + list(string.printable))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("<[a-z]+>|."), behavior="isolated")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>",
                                   bos_token="<bos>", eos_token="<eos>")
    fast.chat_template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}<eos>{% endfor %}" \
                         "{% if add_generation_prompt %}<assistant>{% endif %}"
    return fast


def make_model(arch: str, vocab_size: int, seed: int = 0):
    """A 2-layer, hidden-32 random Llama or GPT-2 causal LM (eager attention)."""
    from transformers import AutoModelForCausalLM, GPT2Config, LlamaConfig

    torch.manual_seed(seed)
    if arch == "llama":
        cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                          num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=128, pad_token_id=0)
    else:
        cfg = GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                         pad_token_id=0)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")


def save_tiny(path, arch: str = "llama", chat: bool = False, seed: int = 0,
              chars: bool = False) -> str:
    tok = make_char_tokenizer() if chars else make_tokenizer(chat)
    model = make_model(arch, len(tok), seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


SAMPLE = [   # responses start with a space, as plain-text preference data does: trl (and
    # gradproj) tokenize prompt + response as one string
    ("what color is the cat", " the cat is red", " the cat is blue and green"),
    ("one plus two", " three", " four"),
    ("is the dog big", " yes the dog is very big", " no"),
    ("what animal sat on the mat", " the cat sat on the mat", " the dog ran"),
    ("two plus two", " four", " five or six"),
    ("hello", " hello sure", " bad"),
]


def write_jsonl(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


def perturb_lora(model, seed=1):
    """Give LoRA B non-zero values so the policy differs from the reference."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)


def loop_logprob(model, prompt, response):
    """Σ_t log p(response_t | prompt, response_<t), one forward per token, float64 sums."""
    total = 0.0
    seq = list(prompt)
    for tok in response:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([seq])).logits[0, -1].double()
        total += (logits.log_softmax(-1)[tok]).item()
        seq.append(tok)
    return total


ROW_WORDS = "the a cat dog sat ran on mat red blue green big small".split()


def random_rows(n, seed=0):
    """n flat pairs of random words, ids p0..p{n-1}; the rejected one is the chosen plus 'not'."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        p = " ".join(rng.choices(ROW_WORDS, k=rng.randint(2, 8)))
        c = " " + " ".join(rng.choices(ROW_WORDS, k=rng.randint(1, 6)))
        out.append({"id": f"p{i}", "prompt": p, "chosen": c, "rejected": c + " not"})
    return out


def saved_adapter(model_dir, path, seed=1):
    """A saved non-trivial adapter (LoRA B non-zero)."""
    from gradproj.core.model import ModelSettings, load_model

    loaded = load_model(ModelSettings(model=model_dir, device="cpu"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in loaded.model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    loaded.model.save_pretrained(str(path))
    return str(path)


def score_table(ids, **columns):
    """A ScoreTable with the given ids and float columns (no model needed)."""
    import numpy as np

    from gradproj.attribution.scores import ScoreTable

    return ScoreTable(list(ids), {k: np.asarray(v, dtype=float) for k, v in columns.items()})


def run_folder(path, table, kept_ids=None):
    """A select-run folder holding scores.parquet (and selection.json when ``kept_ids``)."""
    path.mkdir(parents=True, exist_ok=True)
    table.write(path / "scores.parquet")
    if kept_ids is not None:
        (path / "selection.json").write_text(json.dumps({"kept_ids": list(kept_ids)}))
    return path


def is_png(path) -> bool:
    """Whether ``path`` starts with the PNG signature and opens as an image."""
    with open(path, "rb") as f:
        if f.read(8) != b"\x89PNG\r\n\x1a\n":
            return False
    import matplotlib.image

    return matplotlib.image.imread(path).ndim == 3


def ultrafeedback_like(path, n_train: int = 12, n_test: int = 6, seed: int = 0) -> str:
    """A local DatasetDict in the UltraFeedback-binarized layout (splits train_prefs and
    test_prefs; prompt, prompt_id, chat-message lists in chosen/rejected/messages,
    score_chosen, score_rejected and an extra ``source`` column), saved with save_to_disk."""
    import datasets

    rng = random.Random(seed)

    def row(i):
        prompt = " ".join(rng.choices(ROW_WORDS, k=rng.randint(3, 6)))
        good = " ".join(rng.choices(ROW_WORDS, k=rng.randint(1, 5)))
        bad = good + " not " + rng.choice(ROW_WORDS)
        user = {"role": "user", "content": prompt}
        return {"prompt": prompt, "prompt_id": f"uf{i:03d}",
                "chosen": [user, {"role": "assistant", "content": good}],
                "rejected": [user, {"role": "assistant", "content": bad}],
                "messages": [user, {"role": "assistant", "content": good}],
                "score_chosen": float(rng.randint(6, 10)), "score_rejected": float(rng.randint(1, 5)),
                "source": rng.choice(["evol_instruct", "sharegpt", "flan"])}

    rows = [row(i) for i in range(n_train + n_test)]
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_list(rows[:n_train]),
                          "test_prefs": datasets.Dataset.from_list(rows[n_train:])}
                         ).save_to_disk(str(path))
    return str(path)


def make_qwen2(vocab_size: int, seed: int = 0):
    """A 2-layer, hidden-32 random Qwen2 causal LM (biases on q/k/v, grouped-query attention)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=vocab_size, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, pad_token_id=0, tie_word_embeddings=False)
    return AutoModelForCausalLM.from_config(cfg)


def save_tiny_qwen2(path, chat: bool = False, seed: int = 0) -> str:
    """Folder of a tiny Qwen2 (see make_qwen2) with the word tokenizer."""
    tok = make_tokenizer(chat)
    make_qwen2(len(tok), seed).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def load_benchmark(name: str):
    """The module benchmarks/<name>.py (the benchmarks package of the checkout)."""
    import importlib

    return importlib.import_module(f"benchmarks.{name}")


def entry_reference(seed: int, name: str, row: int, col: int, kind: str, *,
                    k: int | None = None, sjlt_s: int = 4) -> float:
    """Scalar pure-Python value of the unscaled ``R[row, col]`` (``k`` needed for sjlt)."""
    row_key, col_key = param_keys(seed, name, kind)

    def word(r: int, w: int) -> int:
        return mix32_int(mix32_int(row_key ^ r) ^ mix32_int(col_key ^ w))

    if kind == "rademacher":
        return -1.0 if (word(row, col >> 5) >> (col & 31)) & 1 else 1.0
    if kind == "gaussian":
        h1 = word(row, col >> 1)
        h2 = mix32_int(h1 ^ GAUSS_TAG)
        u1, u2 = ((h1 >> 8) + 1) / 2**24, (h2 >> 8) / 2**24
        radius, angle = math.sqrt(-2.0 * math.log(u1)), 2.0 * math.pi * u2
        return radius * (math.cos(angle) if col % 2 == 0 else math.sin(angle))
    if not (kind == "sjlt" and k is not None):
        raise ValueError(f"no reference entries for '{kind}' (k={k})")
    hs = [word(j, col) for j in range(sjlt_s)]
    return float(sum(1 - 2 * (h & 1) for h in hs if (h * k) >> 32 == row))
