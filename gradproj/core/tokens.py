"""Turn preference pairs into token ids: chat template, response mask, truncation, padding.

A pair becomes two sequences, ``prompt + chosen`` and ``prompt + rejected``; only response tokens
count in log π(y|x). The format is trl's (``DPOTrainer._prepare_dataset``, trl 1.16), so a pair is
scored in the tokens it will be trained on:

- a *conversational* pair is rendered with the chat template (the prompt with the generation
  prompt, then prompt + response);
- a *plain-text* pair is never templated: ``tokenizer(prompt)`` and ``tokenizer(prompt + response
  + eos_token)`` (the EOS is appended unless the response already ends with it).

Either way the response starts where the tokenized prompt and the tokenized whole diverge (so
tokens that merge across the boundary are never lost). Which template is used is the
``chat_template`` setting: ``auto`` (the tokenizer's), ``off`` (none: conversational pairs are
refused) or a Jinja file.

Truncation to ``max_length`` tokens removes prompt tokens from the left first, down to a floor of
``max_prompt_length`` tokens (default ``max_length // 2``), then response tokens from the right.
Pairs whose response is truncated away, or whose two responses become identical, are excluded
and reported — never silently scored.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gradproj.core.data import PreferencePair
from gradproj.core.errors import BadInput, GradprojError


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of one pair; the sequences are ``prompt_ids + chosen_ids`` and ``+ rejected_ids``."""

    id: str
    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    truncated: bool = False
    """True when any token of this pair was cut to fit ``max_length``."""


@dataclass
class TokenizeResult:
    pairs: list[TokenizedPair]
    excluded: dict[str, str] = field(default_factory=dict)
    """pair id → why it was left out (e.g. ``response truncated away``)."""

    @property
    def n_truncated(self) -> int:
        return sum(p.truncated for p in self.pairs)


@dataclass
class PairBatch:
    """B pairs as 2B right-padded rows: rows [0, B) are prompt+chosen, rows [B, 2B) prompt+rejected."""

    ids: list[str]
    input_ids: torch.Tensor       # [2B, T] long
    attention_mask: torch.Tensor  # [2B, T] long, 0 on padding
    response_mask: torch.Tensor   # [2B, T] float, 1 where the token is a response token

    def __len__(self) -> int:
        return len(self.ids)

    def response_lengths(self) -> torch.Tensor:
        """[2B] fp32: response tokens per row (|y_w| for rows [0, B), |y_l| after)."""
        return self.response_mask.float().sum(-1)

    def to(self, device) -> PairBatch:
        return PairBatch(self.ids, self.input_ids.to(device), self.attention_mask.to(device),
                         self.response_mask.to(device))


def _ids(out) -> list[int]:
    """input ids from whatever apply_chat_template / __call__ returned."""
    if hasattr(out, "keys"):
        out = out["input_ids"]
    if out and isinstance(out[0], list):
        out = out[0]
    return list(out)


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def resolve_chat_template(setting: str, tokenizer) -> str | None:
    """The template text ``setting`` means for ``tokenizer``: ``auto`` → the tokenizer's own (None
    when it has none), ``off`` → None, anything else → the contents of that Jinja file."""
    if setting == "auto":
        return getattr(tokenizer, "chat_template", None) or None
    if setting == "off":
        return None
    try:
        return Path(setting).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise BadInput(f"--chat-template {setting}: cannot read the template file "
                       f"({type(err).__name__})") from None


def template_record(setting: str, tokenizer) -> dict:
    """What an artefact records of the template used: the setting's kind and the sha256 of the
    template text (None when no template is used)."""
    text = resolve_chat_template(setting, tokenizer)
    kind = setting if setting in ("auto", "off") else "file"
    return {"mode": kind,
            "sha256": hashlib.sha256(text.encode()).hexdigest()[:16] if text else None}


def check_formattable(pairs: Sequence[PreferencePair], template: str | None, setting: str) -> None:
    """Refuse conversational pairs when no template applies (trl could not train them either)."""
    if template is not None:
        return
    for pair in pairs:
        if pair.conversational:
            why = ("--chat-template off" if setting == "off"
                   else "the tokenizer has no chat template")
            raise BadInput(f"{pair.source}: the pair is conversational (message lists) and "
                           f"{why}: give a template with --chat-template FILE")


def render_pair(pair: PreferencePair, tokenizer,
                template: str | None = None) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, chosen ids, rejected ids) before truncation, as trl tokenizes the pair
    (see the module docstring); ``template`` is the chat template text for a conversational
    pair (:func:`resolve_chat_template`; None: the tokenizer's)."""
    if pair.conversational:
        template = template or resolve_chat_template("auto", tokenizer)
        check_formattable([pair], template, "auto")
        prompt = list(pair.prompt)
        kw = {"tokenize": True, "return_dict": True, "chat_template": template}
        p_ids = _ids(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, **kw))
        c_full = _ids(tokenizer.apply_chat_template(prompt + list(pair.chosen), **kw))
        r_full = _ids(tokenizer.apply_chat_template(prompt + list(pair.rejected), **kw))
    else:
        eos = tokenizer.eos_token or ""

        def whole(response: str) -> list[int]:
            if not response.endswith(eos):
                response += eos
            return _ids(tokenizer(text=pair.prompt_text + response))

        p_ids = _ids(tokenizer(text=pair.prompt_text))
        c_full, r_full = whole(pair.chosen_text), whole(pair.rejected_text)
    n = min(_common_prefix(p_ids, c_full), _common_prefix(p_ids, r_full))
    return p_ids[:n], c_full[n:], r_full[n:]


def truncate(prompt: list[int], chosen: list[int], rejected: list[int], max_length: int,
             max_prompt_length: int | None = None):
    """Fit ``prompt + response`` into ``max_length`` for both responses (see module docstring).

    Returns (prompt, chosen, rejected, truncated).
    """
    longest = max(len(chosen), len(rejected))
    if len(prompt) + longest <= max_length:
        return prompt, chosen, rejected, False
    floor = max_length // 2 if max_prompt_length is None else max_prompt_length
    keep = max(max_length - longest, min(len(prompt), floor))
    prompt = prompt[len(prompt) - keep:] if keep > 0 else []
    room = max_length - len(prompt)
    return prompt, chosen[:room], rejected[:room], True


def tokenize_pairs(pairs: Sequence[PreferencePair], tokenizer, max_length: int = 512,
                   max_prompt_length: int | None = None,
                   chat_template: str = "auto") -> TokenizeResult:
    """Tokenize, truncate and filter ``pairs``; excluded pairs are reported in ``.excluded``.

    ``chat_template``: ``auto``, ``off`` or a template file (see :func:`resolve_chat_template`);
    conversational pairs without a template are refused before any is tokenized.
    """
    if max_length < 2:
        raise GradprojError(f"--max-length must be >= 2, got {max_length}")
    template = resolve_chat_template(chat_template, tokenizer)
    check_formattable(pairs, template, chat_template)
    result = TokenizeResult(pairs=[])
    for pair in pairs:
        p, c, r = render_pair(pair, tokenizer, template)
        p, c, r, cut = truncate(p, c, r, max_length, max_prompt_length)
        if not c or not r:
            result.excluded[pair.id] = "response truncated away"
        elif c == r:
            result.excluded[pair.id] = "chosen and rejected identical after truncation"
        elif not p:
            # log π(y|x) needs one token of context to predict the first response token from.
            result.excluded[pair.id] = "no prompt token left"
        else:
            result.pairs.append(TokenizedPair(pair.id, tuple(p), tuple(c), tuple(r), cut))
    return result


def collate(pairs: Sequence[TokenizedPair], pad_id: int) -> PairBatch:
    """Right-pad B pairs into a [2B, T] batch (chosen rows first, then rejected rows)."""
    seqs, masks = [], []
    for side in ("chosen_ids", "rejected_ids"):
        for p in pairs:
            resp = getattr(p, side)
            seqs.append(list(p.prompt_ids) + list(resp))
            masks.append([0.0] * len(p.prompt_ids) + [1.0] * len(resp))
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    response = torch.zeros((len(seqs), width), dtype=torch.float32)
    for i, (s, m) in enumerate(zip(seqs, masks)):
        input_ids[i, :len(s)] = torch.tensor(s)
        attention[i, :len(s)] = 1
        response[i, :len(m)] = torch.tensor(m)
    return PairBatch([p.id for p in pairs], input_ids, attention, response)


def batches(pairs: Sequence[TokenizedPair], batch_size: int, pad_id: int):
    """Yield PairBatch objects of up to ``batch_size`` pairs, in order."""
    for i in range(0, len(pairs), batch_size):
        yield collate(pairs[i:i + batch_size], pad_id)


def longest_row(pair: TokenizedPair) -> int:
    """Tokens of the pair's longer sequence: ``|prompt| + max(|chosen|, |rejected|)``."""
    return len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))


def token_batches(pairs: Sequence[TokenizedPair], batch_size: int, pad_id: int,
                  max_tokens: int | None = None):
    """Yield (positions in ``pairs``, PairBatch) covering every pair exactly once.

    Without ``max_tokens``: consecutive groups of ``batch_size`` pairs, in order (as
    :func:`batches`). With it: the pairs sorted by :func:`longest_row` (longest first, ties in
    input order) and cut greedily so that a batch's padded size 2·B·T stays within
    ``max_tokens`` (and B ≤ ``batch_size``); a pair longer than the budget alone forms a batch
    of one. Per-pair results do not depend on the grouping: callers scatter each batch's
    outputs back to its positions, so outputs keep the input order.
    """
    if max_tokens is None:
        for i in range(0, len(pairs), batch_size):
            yield list(range(i, min(i + batch_size, len(pairs)))), collate(
                pairs[i:i + batch_size], pad_id)
        return
    for group in budget_groups([longest_row(p) for p in pairs], max_tokens, batch_size):
        yield group, collate([pairs[j] for j in group], pad_id)


def budget_groups(lengths: Sequence[int], max_tokens: int,
                  batch_size: int | None = None) -> list[list[int]]:
    """Positions of pairs of the given longer-row lengths, sorted longest first (ties in input
    order) and cut greedily so that each group's padded size 2·B·T stays within ``max_tokens``
    (and B ≤ ``batch_size``); a pair longer than the budget alone forms a group of one."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    group: list[int] = []
    for i in order:
        # sorted longest first: the group's padded length is its first pair's
        if group and ((batch_size is not None and len(group) + 1 > batch_size)
                      or 2 * (len(group) + 1) * lengths[group[0]] > max_tokens):
            groups.append(group)
            group = []
        group.append(i)
    if group:
        groups.append(group)
    return groups
