"""Fixtures: tiny model folders built from a config (helpers in tests/helpers.py)."""

from __future__ import annotations

import pytest
from helpers import SAMPLE, save_tiny, write_jsonl


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory):
    """Folder of a tiny Llama with a chat-template word tokenizer."""
    return save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama", chat=True)


@pytest.fixture(scope="session")
def tiny_llama_plain(tmp_path_factory):
    """Folder of a tiny Llama whose word tokenizer has no chat template (a base model)."""
    return save_tiny(tmp_path_factory.mktemp("tiny-llama-plain"), "llama", chat=False)


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory):
    """Folder of a tiny GPT-2 with a plain (no chat template) word tokenizer."""
    return save_tiny(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2", chat=False)


@pytest.fixture(scope="session")
def tiny_char_llama(tmp_path_factory):
    """Folder of a tiny Llama with a character-level chat tokenizer (for generated text)."""
    return save_tiny(tmp_path_factory.mktemp("tiny-char-llama"), "llama", chars=True)


@pytest.fixture
def sample_jsonl(tmp_path):
    rows = [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in SAMPLE]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)
