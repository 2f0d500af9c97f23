"""Tokenization: chat template, response boundaries, truncation rule, exclusions, padding."""

from __future__ import annotations

import pytest
from helpers import make_tokenizer

from gradproj.core.data import pairs_from_records
from gradproj.core.errors import BadInput, GradprojError
from gradproj.core.tokens import collate, tokenize_pairs, truncate

FLAT = {"prompt": "what color is the cat", "chosen": " the cat is red", "rejected": " blue"}
CHAT = {"chosen": [{"role": "user", "content": "what color is the cat"},
                   {"role": "assistant", "content": "the cat is red"}],
        "rejected": [{"role": "user", "content": "what color is the cat"},
                     {"role": "assistant", "content": "blue"}]}
HH = {"chosen": "what color is the cat <assistant> the cat is red",
      "rejected": "what color is the cat <assistant> blue"}


def trl_tokens(record, tok):
    """(prompt_ids, chosen_ids, rejected_ids) as trl 1.16's DPOTrainer prepares the record."""
    from types import SimpleNamespace

    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(output_dir="unused", max_length=None, report_to="none", use_cpu=True,
                     bf16=False)
    ds = DPOTrainer._prepare_dataset(SimpleNamespace(_tokenizer=tok), Dataset.from_list([record]),
                                     tok, args, "train")
    return tuple(tuple(ds[0][k]) for k in ("prompt_ids", "chosen_ids", "rejected_ids"))


@pytest.mark.parametrize("record", [FLAT, CHAT, HH], ids=["flat", "chat", "hh-implicit"])
@pytest.mark.parametrize("chat_template", [True, False], ids=["template", "no-template"])
def test_tokens_equal_trls(record, chat_template):
    """The same tokens as trl trains on: conversational pairs templated, plain text not."""
    tok = make_tokenizer(chat_template)
    pairs = pairs_from_records([record])
    if pairs[0].conversational and not chat_template:
        with pytest.raises(BadInput, match="conversational .* no chat template"):
            tokenize_pairs(pairs, tok, 64)
        return
    p = tokenize_pairs(pairs, tok, 64).pairs[0]
    assert (p.prompt_ids, p.chosen_ids, p.rejected_ids) == trl_tokens(record, tok)


def test_plain_text_is_never_templated():
    """A plain pair gets the same tokens whether or not the tokenizer has a chat template."""
    pairs = pairs_from_records([FLAT])
    a = tokenize_pairs(pairs, make_tokenizer(chat=True), 64).pairs[0]
    b = tokenize_pairs(pairs, make_tokenizer(chat=False), 64).pairs[0]
    assert a == b


def test_chat_template_boundary_and_tokens():
    tok = make_tokenizer(chat=True)
    p = tokenize_pairs(pairs_from_records([CHAT]), tok, 64).pairs[0]
    v = tok.convert_ids_to_tokens
    assert v(list(p.prompt_ids)) == ["<user>", "what", "color", "is", "the", "cat", "<eos>",
                                     "<assistant>"]
    assert v(list(p.chosen_ids)) == ["the", "cat", "is", "red", "<eos>"]
    assert v(list(p.rejected_ids)) == ["blue", "<eos>"]


def test_chat_template_off_and_file(tmp_path):
    tok = make_tokenizer(chat=True)
    pairs = pairs_from_records([CHAT])
    with pytest.raises(BadInput, match="conversational .* --chat-template off"):
        tokenize_pairs(pairs, tok, 64, chat_template="off")
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }} {% endfor %}")
    p = tokenize_pairs(pairs, tok, 64, chat_template=str(template)).pairs[0]
    # the file's template (no roles, no EOS) replaces the tokenizer's
    assert tok.convert_ids_to_tokens(list(p.prompt_ids)) == ["what", "color", "is", "the", "cat"]
    assert tok.convert_ids_to_tokens(list(p.chosen_ids)) == ["the", "cat", "is", "red"]
    with pytest.raises(BadInput, match="cannot read the template file"):
        tokenize_pairs(pairs, tok, 64, chat_template=str(tmp_path / "missing.jinja"))


def test_plain_tokenizer_appends_eos():
    tok = make_tokenizer(chat=False)
    p = tokenize_pairs(pairs_from_records([FLAT]), tok, 64).pairs[0]
    assert tok.convert_ids_to_tokens(list(p.prompt_ids)) == ["what", "color", "is", "the", "cat"]
    assert tok.convert_ids_to_tokens(list(p.rejected_ids)) == ["blue", "<eos>"]
    ends = pairs_from_records([dict(FLAT, chosen=" red<eos>")])   # already ends with EOS
    assert tokenize_pairs(ends, tok, 64).pairs[0].chosen_ids == tuple(
        tok.convert_tokens_to_ids(["red", "<eos>"]))


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
            {"prompt": "one two three four five six", "chosen": " yes yes no",
             "rejected": " yes yes yes"}]
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
