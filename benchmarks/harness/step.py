"""A hand-written training step (the floor a store build is timed against) and adapter snapshots.

One step on a batch of B pairs (a :class:`gradproj.core.tokens.PairBatch`, 2B rows):

    reference  r = log π_ref(rows)        no grad, adapter off (skipped for reference-free losses)
    policy     π = log π_θ(rows)          with grad
    loss       L = (1/B) Σ_i ℓ(θ; d_i)    ℓ the objective on PairLogProbs.from_rows(π, r, |y|)
    update     ∇_θ L, then optimizer.step()   (θ = the trainable LoRA weights)

This is the work of one trl DPOTrainer step without trl's per-step machinery.
"""

from __future__ import annotations

import torch

from gradproj.core.logprobs import PairLogProbs, adapter_disabled, sequence_logprobs
from gradproj.core.objectives import Objective
from gradproj.core.tokens import PairBatch
from gradproj.evaluation.state import restore, snapshot, trainable  # noqa: F401


def objective_step(model, batch: PairBatch, objective: Objective,
                   optimizer: torch.optim.Optimizer) -> torch.Tensor:
    """One optimizer step of the mean objective over ``batch`` (see the module docstring);
    ``batch`` must be on the model's device. Returns L (detached scalar). The model is in train
    mode during the step and in eval mode after it."""
    b = len(batch)
    model.train()
    if objective.needs_reference:
        with torch.no_grad(), adapter_disabled(model):
            ref = sequence_logprobs(model, batch)
    else:
        ref = torch.zeros(2 * b, device=batch.input_ids.device)
    policy = sequence_logprobs(model, batch)
    lp = PairLogProbs.from_rows(policy, (ref[:b], ref[b:]), batch.response_lengths())
    loss = objective(lp).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    model.eval()
    return loss.detach()


@torch.no_grad()
def perturb_lora_b(model, std: float = 1e-3, seed: int = 0) -> None:
    """Set every trainable LoRA B factor (zero at init) to seeded N(0, std²) values, so that a
    fresh adapter is non-trivial (lora_A gradients are exactly zero while B = 0)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in trainable(model).items():
        if ".lora_B." in name:
            p.copy_(torch.randn(p.shape, generator=g) * std)


def step_seconds(loaded, pairs, pref, batch_size: int, lr: float, repeats: int = 5) -> float:
    """Median seconds of :func:`objective_step` (AdamW at ``lr``) on the first ``batch_size``
    of ``pairs`` (PreferencePairs, tokenized with ``pref``), after one warm-up step. Changes
    the adapter: snapshot and restore it around the call."""
    import time

    from gradproj.core.tokens import collate
    from benchmarks.harness.measure import median

    tok = pref.tokenize(pairs[:batch_size], loaded.tokenizer)
    batch = collate(tok.pairs, loaded.tokenizer.pad_token_id).to(loaded.device)
    opt = torch.optim.AdamW(list(trainable(loaded.model).values()), lr=lr)
    cuda = loaded.device.type == "cuda"
    times = []
    for _ in range(repeats + 1):
        if cuda:
            torch.cuda.synchronize(loaded.device)
        t = time.perf_counter()
        objective_step(loaded.model, batch, pref.objective(), opt)
        if cuda:
            torch.cuda.synchronize(loaded.device)
        times.append(time.perf_counter() - t)
    return median(times[1:])
