"""The trainable (LoRA) parameters of a model: list them, copy them, put a copy back."""

from __future__ import annotations

import torch


def trainable(model) -> dict[str, torch.nn.Parameter]:
    """name → parameter of every trainable (LoRA) parameter of ``model``, in model order."""
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def snapshot(model) -> dict[str, torch.Tensor]:
    """Detached copies of the trainable parameters (restore them with :func:`restore`)."""
    return {n: p.detach().clone() for n, p in trainable(model).items()}


@torch.no_grad()
def restore(model, state: dict[str, torch.Tensor]) -> None:
    """Copy ``state`` back into the trainable parameters in place and clear their ``.grad``."""
    for name, p in trainable(model).items():
        p.copy_(state[name])
        p.grad = None
