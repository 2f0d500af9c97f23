"""Exact (unprojected) per-pair gradients and influence: the reference a store is measured by.

For pairs d_1..d_n and validation pairs v_1..v_m, with g = ∇_θ ℓ over the LoRA weights θ
(P entries, flattened in :func:`gradproj.gradients.perpair.lora_layout` order):

    G [n, P] = (g(d_1); …; g(d_n)),   V [m, P] likewise,   ḡ_V = (1/m) Σ_j g(v_j)
    IF(d_i) = ⟨g(d_i), ḡ_V⟩                                   (float64 dot products)

LESS-style Adam preconditioning Γ (:func:`gradproj.gradients.perpair.adam_precondition`, the
warm-up's AdamW moments) gives two more variants: ⟨Γ g(d_i), ḡ_V⟩ (``adam·sgd``, what a
``grad_type="adam"`` store approximates) and ⟨Γ g(d_i), mean_j Γ g(v_j)⟩ (``adam·adam``).
Gradients come from :class:`gradproj.gradients.perpair.PerPairGradients` (one backward per
batch); memory is n·P·4 bytes, so this is for small models or few pairs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from gradproj.core.errors import GradprojError
from gradproj.core.objectives import Objective
from gradproj.core.tokens import TokenizedPair, batches
from gradproj.gradients.perpair import PerPairGradients, adam_precondition, lora_layout


def exact_gradients(loaded, pairs: Sequence[TokenizedPair], objective: Objective,
                    batch_size: int = 8, device=None) -> torch.Tensor:
    """G [n, P] fp32: the per-pair gradients of ``pairs`` at ``loaded``'s adapter, on
    ``device`` (default: the model's). A non-finite gradient is an error."""
    out = []
    with PerPairGradients(loaded.model, objective) as ppg:
        for b in batches(pairs, batch_size, loaded.tokenizer.pad_token_id):
            pg = ppg(b.to(loaded.device))
            if not bool(pg.finite.all()):
                bad = [i for i, ok in zip(pg.ids, pg.finite.tolist()) if not ok]
                raise GradprojError(f"non-finite per-pair gradient of pair {bad[0]}")
            out.append(pg.flat() if device is None else pg.flat().to(device))
    return torch.cat(out)


def influence(G: torch.Tensor, V: torch.Tensor) -> np.ndarray:
    """IF [n] float64 = G ḡ_V with ḡ_V the mean row of V; G [n, P], V [m, P]."""
    return (G.double() @ V.double().mean(0)).cpu().numpy()


def precondition(X: torch.Tensor, layout: list[tuple[str, int]], state: dict,
                 meta: dict) -> torch.Tensor:
    """Γ X [n, P]: Adam preconditioning of flat gradients, piece by piece of ``layout``."""
    parts, start = {}, 0
    for name, numel in layout:
        parts[name] = X[:, start:start + numel]
        start += numel
    if start != X.shape[1]:
        raise GradprojError(f"layout covers {start} entries, the gradients have {X.shape[1]}")
    return torch.cat(list(adam_precondition(parts, state, meta).values()), dim=1)


def exact_influences(loaded, train: Sequence[TokenizedPair], val: Sequence[TokenizedPair],
                     objective: Objective, batch_size: int = 8,
                     adapter_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """IF of every training pair ([n] float64 each): ``exact`` and, with the ``adapter_dir``
    of a gradproj-trained adapter (its optimizer state), ``exact adam·sgd`` and
    ``exact adam·adam``."""
    G = exact_gradients(loaded, train, objective, batch_size)
    V = exact_gradients(loaded, val, objective, batch_size)
    out = {"exact": influence(G, V)}
    if adapter_dir is not None:
        from gradproj.training.train import load_optimizer_state

        state, meta = load_optimizer_state(adapter_dir)
        layout = lora_layout(loaded.model)
        GA = precondition(G, layout, state, meta)
        out["exact adam·sgd"] = influence(GA, V)
        out["exact adam·adam"] = influence(GA, precondition(V, layout, state, meta))
    return out


def projection_fidelity(G: torch.Tensor, V: torch.Tensor, projector, seed_label=None) -> dict:
    """How well one projector P keeps exact influence: with IF = G ḡ_V (exact, float64) and
    ÎF = (P G)(P ḡ_V) for G [n, P], V [m, P] (on the projector's device): Spearman, Pearson,
    relative error ‖ÎF − IF‖/‖IF‖, the share of pairs whose sign is kept, and the seconds of
    the projection."""
    import time

    from gradproj.evaluation.stats import pearson, spearman

    want = influence(G, V)
    t = time.perf_counter()
    Y = projector.project(torch.cat([G, V.mean(0)[None]])).double()
    seconds = time.perf_counter() - t
    est = (Y[:-1] @ Y[-1]).cpu().numpy()
    return {"seed": seed_label, "spearman": spearman(want, est), "pearson": pearson(want, est),
            "rel_error": float(np.linalg.norm(est - want) / np.linalg.norm(want)),
            "sign_agreement": float(np.mean(np.sign(est) == np.sign(want))), "seconds": seconds}
