"""Turn preference pairs into token ids: chat template, response mask, truncation, padding.

A pair becomes two sequences, ``prompt + chosen`` and ``prompt + rejected``; only response tokens
count in log π(y|x). With a chat template the prompt is rendered with the generation prompt and the
response starts where the rendered prompt and the rendered conversation diverge (so tokens that
merge across the boundary are never lost). Without one, the prompt is the message contents joined
by newlines, the response is `` " " + text`` followed by the EOS token.

Truncation to ``max_length`` tokens removes prompt tokens from the left first, down to a floor of
``max_prompt_length`` tokens (default ``max_length // 2``), then response tokens from the right.
Pairs whose response is truncated away, or whose two responses become identical, are excluded
and reported — never silently scored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from gradproj.core.data import PreferencePair
from gradproj.core.errors import GradprojError


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


def render_pair(pair: PreferencePair, tokenizer) -> tuple[list[int], list[int], list[int]]:
    """(prompt ids, chosen ids, rejected ids) before truncation."""
    if getattr(tokenizer, "chat_template", None):
        prompt = list(pair.prompt)
        p_ids = _ids(tokenizer.apply_chat_template(prompt, add_generation_prompt=True,
                                                   tokenize=True))
        c_full = _ids(tokenizer.apply_chat_template(prompt + list(pair.chosen), tokenize=True))
        r_full = _ids(tokenizer.apply_chat_template(prompt + list(pair.rejected), tokenize=True))
        n = min(_common_prefix(p_ids, c_full), _common_prefix(p_ids, r_full))
        return p_ids[:n], c_full[n:], r_full[n:]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    prompt_text = "\n".join(m["content"] for m in pair.prompt)
    p_ids = _ids(tokenizer(prompt_text)) if prompt_text else []

    def response(msgs):
        text = "\n".join(m["content"] for m in msgs)
        return _ids(tokenizer(" " + text, add_special_tokens=False)) + eos

    return p_ids, response(pair.chosen), response(pair.rejected)


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
                   max_prompt_length: int | None = None) -> TokenizeResult:
    """Tokenize, truncate and filter ``pairs``; excluded pairs are reported in ``.excluded``."""
    if max_length < 2:
        raise GradprojError(f"--max-length must be >= 2, got {max_length}")
    result = TokenizeResult(pairs=[])
    for pair in pairs:
        p, c, r = render_pair(pair, tokenizer)
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
    order = sorted(range(len(pairs)), key=lambda i: -longest_row(pairs[i]))
    group: list[int] = []
    for i in order:
        # sorted longest first: the group's padded length is its first pair's
        if group and (len(group) + 1 > batch_size
                      or 2 * (len(group) + 1) * longest_row(pairs[group[0]]) > max_tokens):
            yield group, collate([pairs[j] for j in group], pad_id)
            group = []
        group.append(i)
    if group:
        yield group, collate([pairs[j] for j in group], pad_id)
