"""What a gradient-store build costs against the floor, a plain training step, measured side by
side inside one run so that load changes on a shared machine hit both alike.

* :class:`TrainStep` — one hand-written step (:func:`benchmarks.harness.step.objective_step`)
  on a PairBatch, the adapter restored after it (untimed): every build gradient is taken at the
  same weights.
* :func:`build_pass` — one real ``FeatureComputer.features`` run (per-pair gradients by hooks,
  one backward per batch, then projection of every ``proj_batch`` pairs) whose gradient callable
  is wrapped so that a training step on the very same PairBatch runs just before (even batches)
  or just after (odd batches) it. Build time = features() wall time − the training steps. The
  projection inputs are recorded, so that other projectors can be timed on exactly those
  buffers (:func:`projection_seconds`): build(kind) = build − projection + projection(kind).
* :func:`less_pass` — what LESS does: a batch-size-1 autograd loop
  (``per_pair_gradients_loop``) and a projector called on each gradient on its own.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from gradproj.core.model import LoadedModel
from gradproj.core.objectives import Objective
from gradproj.core.tokens import PairBatch, TokenizedPair, collate
from benchmarks.harness.measure import median
from gradproj.evaluation.state import restore, snapshot, trainable
from benchmarks.harness.step import objective_step
from gradproj.gradients.perpair import per_pair_gradients_loop
from gradproj.store.build import FeatureComputer, StoreSettings


class TrainStep:
    """Callable: seconds of one training step on a batch, the adapter restored afterwards."""

    def __init__(self, loaded: LoadedModel, objective: Objective, lr: float):
        self.loaded, self.objective = loaded, objective
        self.saved = snapshot(loaded.model)
        self.opt = torch.optim.AdamW(list(trainable(loaded.model).values()), lr=lr)

    def __call__(self, batch: PairBatch) -> float:
        t0 = time.perf_counter()
        objective_step(self.loaded.model, batch.to(self.loaded.device), self.objective, self.opt)
        seconds = time.perf_counter() - t0
        restore(self.loaded.model, self.saved)
        return seconds


class RecordingProjector:
    """Stands in for a FeatureComputer's projector: records each input [B, P], then projects."""

    def __init__(self, inner):
        self.inner, self.inputs = inner, []

    def project(self, grads):
        self.inputs.append(grads)
        return self.inner.project(grads)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class InterleavedSteps:
    """Stands in for FeatureComputer.grads: a training step on the same batch runs before (even
    calls) or after (odd calls) the per-pair gradients; both are timed separately."""

    def __init__(self, inner, step: TrainStep):
        self.inner, self.step = inner, step
        self.train_s: list[float] = []
        self.grad_s: list[float] = []

    def __call__(self, batch, *args, **kwargs):
        train_first = len(self.grad_s) % 2 == 0
        if train_first:
            self.train_s.append(self.step(batch))
        t0 = time.perf_counter()
        out = self.inner(batch, *args, **kwargs)
        self.grad_s.append(time.perf_counter() - t0)
        if not train_first:
            self.train_s.append(self.step(batch))
        return out

    def close(self):
        self.inner.close()


def build_pass(loaded: LoadedModel, pairs: list[TokenizedPair], settings: StoreSettings,
               objective: Objective, step: TrainStep) -> dict:
    """One FeatureComputer.features run with a training step interleaved per batch: ``wall``
    (features() minus the steps), ``train`` (Σ steps), ``gradients`` (Σ per-pair gradient
    calls), ``projection`` (the computer's projection seconds), ``inputs`` (projection inputs)."""
    fc = FeatureComputer(loaded, settings, objective)
    tee, inter = RecordingProjector(fc.projector), InterleavedSteps(fc.grads, step)
    fc.projector, fc.grads = tee, inter
    try:
        t0 = time.perf_counter()
        feats, _ = fc.features(pairs)
        wall = time.perf_counter() - t0
    finally:
        fc.close()
    if feats.shape != (len(pairs), settings.proj_dim):
        raise RuntimeError(f"features of shape {feats.shape}, expected "
                           f"{(len(pairs), settings.proj_dim)}")
    train = sum(inter.train_s)
    return {"wall": wall - train, "train": train, "gradients": sum(inter.grad_s),
            "projection": fc.seconds["projection"], "inputs": tee.inputs}


def projection_seconds(projector, inputs: list[torch.Tensor]) -> float:
    """Seconds of what FeatureComputer does with each recorded buffer, for ``projector``:
    project, then ``.float().cpu().numpy().astype(float16)``."""
    t0 = time.perf_counter()
    for merged in inputs:
        projector.project(merged).float().cpu().numpy().astype(np.float16)
    return time.perf_counter() - t0


def less_pass(loaded: LoadedModel, pairs: list[TokenizedPair], projector,
              objective: Objective) -> dict:
    """LESS-style: one pair at a time, autograd gradient then its own projection (``projector``
    with a ``layout``); seconds of each part and in all."""
    pad = loaded.tokenizer.pad_token_id
    names = [n for n, _ in projector.layout]
    tg = tp = 0.0
    for p in pairs:
        t0 = time.perf_counter()
        g = per_pair_gradients_loop(loaded.model, objective, collate([p], pad).to(loaded.device))
        t1 = time.perf_counter()
        projector.project(torch.cat([g[n] for n in names], dim=1)).float().cpu().numpy().astype(
            np.float16)
        t2 = time.perf_counter()
        tg, tp = tg + t1 - t0, tp + t2 - t1
    return {"wall": tg + tp, "gradients": tg, "projection": tp}


def summary_row(name: str, runs: list[dict], count: int, n: int, train_s: list[float],
                note: str = "") -> dict:
    """One variant's line of the build benchmark: ``runs`` (one dict per repeat: ``wall`` and,
    for a build, ``train``, ``gradients`` and ``projection`` seconds) of ``count`` pairs, against
    training steps over ``n`` pairs. The ratio of pairs/s to the training steps' is taken against
    the training steps of the same run (builds), else of the same repeat (``train_s``: LESS,
    trl); medians over repeats."""
    walls = [r["wall"] for r in runs]
    trains = [r.get("train", t) for r, t in zip(runs, train_s)]
    ratios = [(count / w) / (n / t) for w, t in zip(walls, trains)]
    share = [r["projection"] / r["wall"] for r in runs if "projection" in r]
    return {"variant": name, "pairs": count, "median_seconds": median(walls),
            "pairs_per_s": count / median(walls), "ratio_to_train_step": median(ratios),
            "ratio_per_repeat": ratios, "projection_share": median(share) if share else None,
            "gradient_seconds": median([r["gradients"] for r in runs if "gradients" in r])
            if share else None,
            "projection_seconds": median([r["projection"] for r in runs]) if share else None,
            "note": note}


def cached_share(layout, k: int, cache_mb: float, bytes_per_value: int = 4) -> float:
    """Share of the P columns whose R a HashProjector with ``cache_mb`` keeps (its rule: whole
    [k, numel] parameter blocks, in layout order, each taken if it fits in what is left)."""
    left, kept = cache_mb * 2**20, 0
    for _, numel in layout:
        cost = numel * k * bytes_per_value
        kept, left = (kept + numel, left - cost) if cost <= left else (kept, left)
    return kept / sum(numel for _, numel in layout)


class PrebuiltProjector:
    """The limit of a projection without generating R: y = x Rᵀ/√k with one prebuilt [k, S]
    ±1 fp32 block (S columns fitting ``budget_mb``) reused for every column block of x [B, P]:
    the FLOPs and the streaming of one prebuilt [k, P] matrix, without holding it."""

    def __init__(self, k: int, P: int, budget_mb: float, seed: int = 0):
        self.k = k
        self.S = max(1, min(P, int(budget_mb * 2**20 // (4 * k))))
        g = torch.Generator().manual_seed(seed)
        self.R = torch.randint(0, 2, (k, self.S), generator=g, dtype=torch.float32) * 2 - 1

    def project(self, x: torch.Tensor) -> torch.Tensor:
        acc = torch.zeros(x.shape[0], self.k)
        for c0 in range(0, x.shape[1], self.S):
            c1 = min(c0 + self.S, x.shape[1])
            acc.addmm_(x[:, c0:c1], self.R[:, :c1 - c0].T)
        return acc.mul_(1.0 / self.k ** 0.5)
