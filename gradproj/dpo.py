"""DPO core: response log-probs, the implicit reward margin, and pairwise losses.

For a pair d = (x, y_w, y_l), with policy π_θ (adapter on) and reference π_ref (adapter off):

    h_θ(d) = β · [(log π_θ(y_w|x) − log π_ref(y_w|x)) − (log π_θ(y_l|x) − log π_ref(y_l|x))]
    DPO:  ℓ(θ; d) = −log σ(h_θ(d))
    SLiC: ℓ(θ; d) = max(0, δ − h_θ(d))

log π(y|x) is the sum of the log-probs of the response tokens only.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .errors import GradprojError
from .tokens import PairBatch, TokenizedPair, batches


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """log p(token_t | tokens_<t) for t ≥ 1: [R, T, V] logits, [R, T] ids → [R, T-1] fp32."""
    logits = logits[:, :-1].float()
    target = input_ids[:, 1:].unsqueeze(-1)
    return (logits.gather(-1, target).squeeze(-1) - torch.logsumexp(logits, dim=-1))


def sequence_logprobs(model, batch: PairBatch) -> torch.Tensor:
    """Σ over response tokens of log π(y_t | x, y_<t) for every row: [2B] fp32.

    Rows [0, B) are the chosen responses, rows [B, 2B) the rejected ones.
    """
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    return (token_logprobs(logits, batch.input_ids) * batch.response_mask[:, 1:]).sum(-1)


@dataclass
class PairLogProbs:
    """Response log-probs of N pairs under the policy and the reference, each [N] fp32."""

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    ref_chosen: torch.Tensor
    ref_rejected: torch.Tensor

    def __len__(self) -> int:
        return len(self.policy_chosen)

    def as_numpy(self) -> dict[str, np.ndarray]:
        return {k: v.detach().float().cpu().numpy() for k, v in vars(self).items()}


class PairwiseLoss(ABC):
    """A loss of the implicit reward margin h_θ(d); one small class per loss."""

    name: ClassVar[str]

    def __init__(self, beta: float = 0.1):
        if not beta > 0:
            raise GradprojError(f"--beta must be > 0, got {beta}")
        self.beta = float(beta)

    def margin(self, lp: PairLogProbs) -> torch.Tensor:
        """h = β[(π_w − ref_w) − (π_l − ref_l)], [N]."""
        return self.beta * ((lp.policy_chosen - lp.ref_chosen)
                            - (lp.policy_rejected - lp.ref_rejected))

    @abstractmethod
    def from_margin(self, h: torch.Tensor) -> torch.Tensor:
        """Per-pair loss ℓ(h), [N] → [N]."""

    def __call__(self, lp: PairLogProbs) -> torch.Tensor:
        return self.from_margin(self.margin(lp))

    def settings(self) -> dict:
        return {"loss": self.name, "beta": self.beta}


class DPOLoss(PairwiseLoss):
    """ℓ = −log σ(h) (computed as softplus(−h), stable for large |h|)."""

    name = "dpo"

    def from_margin(self, h):
        return F.softplus(-h)


class SLiCLoss(PairwiseLoss):
    """ℓ = max(0, δ − h): a hinge on the margin (SLiC-HF with the reference-normalised margin)."""

    name = "slic"

    def __init__(self, beta: float = 0.1, delta: float = 1.0):
        super().__init__(beta)
        self.delta = float(delta)

    def from_margin(self, h):
        return torch.clamp(self.delta - h, min=0.0)

    def settings(self) -> dict:
        return {**super().settings(), "delta": self.delta}


LOSSES = {cls.name: cls for cls in (DPOLoss, SLiCLoss)}


def make_loss(name: str = "dpo", beta: float = 0.1) -> PairwiseLoss:
    if name not in LOSSES:
        raise GradprojError(f"--loss must be one of {', '.join(LOSSES)}, got {name!r}")
    return LOSSES[name](beta)


def adapter_disabled(model):
    """Context in which ``model`` is the reference policy (peft adapter off)."""
    if hasattr(model, "disable_adapter"):
        return model.disable_adapter()
    return contextlib.nullcontext()


@torch.no_grad()
def response_logprobs(model, pairs: Sequence[TokenizedPair], pad_id: int, batch_size: int = 8,
                      reference: bool = False, progress=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen, rejected) response log-probs of ``pairs``, each [N] fp32 on CPU.

    ``reference=True`` evaluates with the adapter disabled (π_ref). ``progress`` is an optional
    callable taking the number of pairs just done.
    """
    device = next(model.parameters()).device
    chosen, rejected = [], []
    ctx = adapter_disabled(model) if reference else contextlib.nullcontext()
    with ctx:
        for batch in batches(pairs, batch_size, pad_id):
            lp = sequence_logprobs(model, batch.to(device)).cpu()
            chosen.append(lp[:len(batch)])
            rejected.append(lp[len(batch):])
            if progress is not None:
                progress(len(batch))
    if not chosen:
        return torch.zeros(0), torch.zeros(0)
    return torch.cat(chosen), torch.cat(rejected)


def pair_logprobs(model, pairs: Sequence[TokenizedPair], pad_id: int, batch_size: int = 8,
                  reference: tuple[torch.Tensor, torch.Tensor] | None = None,
                  progress=None) -> PairLogProbs:
    """Policy and reference log-probs of ``pairs``; pass ``reference`` to reuse computed ones."""
    if reference is None:
        reference = response_logprobs(model, pairs, pad_id, batch_size, True, progress)
    pc, pr = response_logprobs(model, pairs, pad_id, batch_size, False, progress)
    return PairLogProbs(pc, pr, reference[0], reference[1])
