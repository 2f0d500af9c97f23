"""Response log-probs of preference pairs under the policy (adapter on) and reference (off).

log π(y|x) = Σ_t log π(y_t | x, y_<t) over the response tokens only (prompt tokens masked).
Every objective (gradproj.core.objectives) is a function of these sums and the response
lengths |y|, collected per pair in :class:`PairLogProbs`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from gradproj.core.tokens import PairBatch, TokenizedPair, token_batches


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(token_t | tokens_<t) for t ≥ 1: [R, T, V] logits, [R, T] ids → [R, T-1] fp32."""
    logits = logits[:, :-1].float()
    target = input_ids[:, 1:].unsqueeze(-1)
    return (logits.gather(-1, target).squeeze(-1) - torch.logsumexp(logits, dim=-1))


PLAIN_HEAD = ("llama", "mistral", "qwen2", "gpt2")
"""Model types whose logits are ``output_embeddings(last hidden state)`` with nothing after it
(no soft-capping or scaling): :func:`sequence_logprobs` applies the head to the response
positions only. Others take the full-logits path."""


def _plain_head(model):
    """The output embedding of ``model`` (a peft model, possibly inside DDP) when its logits
    are that head applied to the last hidden state, else None."""
    inner = getattr(model, "module", model)
    if getattr(getattr(inner, "config", None), "model_type", None) not in PLAIN_HEAD:
        return None
    return inner.get_output_embeddings()


def sequence_logprobs(model, batch: PairBatch) -> torch.Tensor:
    """Σ over response tokens of log π(y_t | x, y_<t) for every row: [2B] fp32.

    Rows [0, B) are the chosen responses, rows [B, 2B) the rejected ones. Where the model's
    head is plain (:data:`PLAIN_HEAD`), the vocabulary projection and log-softmax run only at
    the positions that predict a response token (a pair's prompt is most of its tokens); the
    values are those of the full logits (tests/test_logprobs.py, against a token loop).
    """
    mask = batch.response_mask[:, 1:]                  # position t predicts token t + 1
    head = _plain_head(model)
    if head is None:
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       use_cache=False).logits   # no KV cache: memory, and checkpoint recompute
        return (token_logprobs(logits, batch.input_ids) * mask).sum(-1)
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                use_cache=False, logits_to_keep=1, output_hidden_states=True)
    rows, cols = (mask > 0).nonzero(as_tuple=True)
    logits = head(out.hidden_states[-1][rows, cols]).float()          # [n, V]
    target = batch.input_ids[:, 1:][rows, cols].unsqueeze(-1)
    lp = (logits.gather(-1, target).squeeze(-1) - torch.logsumexp(logits, dim=-1)) \
        * mask[rows, cols]
    return torch.zeros(len(mask), dtype=lp.dtype, device=lp.device).index_add(0, rows, lp)


@dataclass
class PairLogProbs:
    """Summed response log-probs of N pairs under the policy and the reference, and the
    response lengths |y| (token counts, for length-normalised objectives); each [N] fp32.

    A reference-free objective leaves the reference at zero (no reference pass is made).
    """

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor
    len_chosen: torch.Tensor
    len_rejected: torch.Tensor

    @classmethod
    def from_rows(cls, policy: torch.Tensor, reference: tuple[torch.Tensor, torch.Tensor],
                  lengths: torch.Tensor) -> PairLogProbs:
        """From [2B] per-row policy log-probs and lengths (chosen rows first) and the
        reference's (chosen [B], rejected [B])."""
        b = len(policy) // 2
        lengths = lengths.to(policy.device, torch.float32)
        return cls(policy[:b], policy[b:], reference[0], reference[1], lengths[:b], lengths[b:])

    def __len__(self) -> int:
        return len(self.policy_chosen)

    def detach(self) -> PairLogProbs:
        return PairLogProbs(*(v.detach() for v in vars(self).values()))

    def select(self, index) -> PairLogProbs:
        """The pairs at ``index`` (a slice, an index tensor or a mask)."""
        return PairLogProbs(*(v[index] for v in vars(self).values()))


def adapter_disabled(model):
    """Context in which ``model`` is the reference policy (peft adapter off)."""
    if hasattr(model, "disable_adapter"):
        return model.disable_adapter()
    return contextlib.nullcontext()


@torch.no_grad()
def response_logprobs(model, pairs: Sequence[TokenizedPair], pad_id: int, batch_size: int = 8,
                      reference: bool = False, progress=None,
                      max_tokens: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) response log-probs of ``pairs``, each [N] fp32 on CPU, in input order.

    ``reference=True`` evaluates with the adapter disabled (π_ref). ``progress`` is an optional
    callable taking the number of pairs just done. ``max_tokens``: batches by a token budget
    (gradproj.core.tokens.token_batches) instead of ``batch_size`` pairs in order.
    """
    device = next(model.parameters()).device
    chosen, rejected = torch.zeros(len(pairs)), torch.zeros(len(pairs))
    ctx = adapter_disabled(model) if reference else contextlib.nullcontext()
    with ctx:
        for where, batch in token_batches(pairs, batch_size, pad_id, max_tokens):
            lp = sequence_logprobs(model, batch.to(device)).float().cpu()
            chosen[where] = lp[:len(batch)]
            rejected[where] = lp[len(batch):]
            if progress is not None:
                progress(len(batch))
    return chosen, rejected


def pair_lengths(pairs: Sequence[TokenizedPair]) -> tuple[torch.Tensor, torch.Tensor]:
    """(|y_w|, |y_l|) response token counts of ``pairs``, each [N] fp32."""
    return (torch.tensor([float(len(p.chosen_ids)) for p in pairs]),
            torch.tensor([float(len(p.rejected_ids)) for p in pairs]))


def pair_logprobs(model, pairs: Sequence[TokenizedPair], pad_id: int, batch_size: int = 8,
                  reference: tuple[torch.Tensor, torch.Tensor] | None = None,
                  progress=None, with_reference: bool = True,
                  max_tokens: int | None = None) -> PairLogProbs:
    """Policy and reference log-probs of ``pairs``; pass ``reference`` to reuse computed ones.

    ``with_reference=False`` (reference-free objectives) skips the reference pass and leaves
    the reference at zero. ``max_tokens``: as in :func:`response_logprobs`.
    """
    if reference is None:
        if with_reference:
            reference = response_logprobs(model, pairs, pad_id, batch_size, True, progress,
                                          max_tokens)
        else:
            reference = (torch.zeros(len(pairs)), torch.zeros(len(pairs)))
    pc, pr = response_logprobs(model, pairs, pad_id, batch_size, False, progress, max_tokens)
    return PairLogProbs(pc, pr, reference[0], reference[1], *pair_lengths(pairs))
