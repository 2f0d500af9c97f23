"""Tokenization: chat template, response boundaries, truncation rule, exclusions, padding."""

from __future__ import annotations

import pytest
from helpers import make_tokenizer

from gradproj.core.data import pairs_from_records
from gradproj.core.errors import GradprojError
from gradproj.core.tokens import collate, tokenize_pairs, truncate

FLAT = {"prompt": "what color is the cat", "chosen": "the cat is red", "rejected": "blue"}
CHAT = {"chosen": [{"role": "user", "content": "what color is the cat"},
                   {"role": "assistant", "content": "the cat is red"}],
        "rejected": [{"role": "user", "content": "what color is the cat"},
                     {"role": "assistant", "content": "blue"}]}


@pytest.mark.parametrize("chat_template", [True, False])
def test_chat_and_flat_inputs_give_same_ids_and_tokens(chat_template):
    tok = make_tokenizer(chat_template)
    flat, chat = pairs_from_records([FLAT]), pairs_from_records([CHAT])
    assert flat[0].id == chat[0].id
    a = tokenize_pairs(flat, tok, 64).pairs[0]
    b = tokenize_pairs(chat, tok, 64).pairs[0]
    assert a == b


def test_chat_template_boundary_and_tokens():
    tok = make_tokenizer(chat=True)
    p = tokenize_pairs(pairs_from_records([FLAT]), tok, 64).pairs[0]
    v = tok.convert_ids_to_tokens
    assert v(list(p.prompt_ids)) == ["<user>", "what", "color", "is", "the", "cat", "<eos>",
                                     "<assistant>"]
    assert v(list(p.chosen_ids)) == ["the", "cat", "is", "red", "<eos>"]
    assert v(list(p.rejected_ids)) == ["blue", "<eos>"]


def test_plain_tokenizer_appends_eos():
    tok = make_tokenizer(chat=False)
    p = tokenize_pairs(pairs_from_records([FLAT]), tok, 64).pairs[0]
    assert tok.convert_ids_to_tokens(list(p.prompt_ids)) == ["what", "color", "is", "the", "cat"]
    assert tok.convert_ids_to_tokens(list(p.rejected_ids)) == ["blue", "<eos>"]


def test_truncation_cuts_prompt_from_left_first_then_responses():
    prompt, c, r = list(range(10)), [100, 101, 102], [200]
    assert truncate(prompt, c, r, 20) == (prompt, c, r, False)
    # 13 tokens > 8: prompt keeps its last 8 - 3 = 5 tokens, responses untouched
    assert truncate(prompt, c, r, 8) == ([5, 6, 7, 8, 9], c, r, True)
    # prompt floor (max_length // 2 = 2) reached: responses cut from the right
    assert truncate(prompt, [1, 2, 3, 4], r, 4) == ([8, 9], [1, 2], r, True)
    # a prompt floor that fills max_length leaves no room for a response
    assert truncate(prompt, c, r, 4, max_prompt_length=4) == ([6, 7, 8, 9], [], [], True)


def test_truncated_away_and_identical_pairs_are_excluded_and_reported():
    tok = make_tokenizer(chat=False)
    rows = [FLAT,
            {"prompt": "one two three four five six", "chosen": "yes yes no",
             "rejected": "yes yes yes"}]
    pairs = pairs_from_records(rows)
    res = tokenize_pairs(pairs, tok, max_length=10, max_prompt_length=8)
    # pair 2: prompt 6 tokens, responses of 4 → 10 fits; with max_length 8 and floor 6 the
    # responses are cut to 2 tokens: "yes yes" both → identical
    assert [p.id for p in res.pairs] == [pairs[0].id, pairs[1].id]
    res = tokenize_pairs(pairs, tok, max_length=8, max_prompt_length=6)
    assert res.excluded == {pairs[1].id: "chosen and rejected identical after truncation"}
    assert [p.id for p in res.pairs] == [pairs[0].id] and res.pairs[0].truncated
    res = tokenize_pairs(pairs, tok, max_length=6, max_prompt_length=6)
    assert res.excluded[pairs[1].id] == "response truncated away"
    with pytest.raises(GradprojError, match="--max-length must be >= 2"):
        tokenize_pairs(pairs, tok, max_length=1)


def test_collate_pads_right_and_masks_responses():
    tok = make_tokenizer(chat=False)
    pairs = tokenize_pairs(pairs_from_records([FLAT]), tok, 64).pairs
    b = collate(pairs, pad_id=0)
    assert b.input_ids.shape == (2, 10)     # prompt 5 + longest response 5
    assert b.attention_mask[1].tolist() == [1] * 7 + [0] * 3
    assert b.response_mask[0].tolist() == [0] * 5 + [1] * 5
    assert b.response_mask[1].tolist() == [0] * 5 + [1] * 2 + [0] * 3
    assert b.input_ids[1, 7:].tolist() == [0, 0, 0]
