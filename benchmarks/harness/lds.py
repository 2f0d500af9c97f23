"""Linear datamodeling score (LDS, TRAK): does Σ IF over a subset predict retraining on it?

With S random subsets A_1..A_S of the n training pairs (each of size ⌊n/2⌋), L_s the validation
loss after continuing from θ on A_s alone (:class:`gradproj.evaluation.runner.Continuation`), and
IF [n] an influence estimate (IF > 0: helpful),

    LDS = Spearman_s( Σ_{d∈A_s} IF(d), −L_s )

with a bootstrap interval over subsets. Training noise bounds what any prediction can reach:
retraining some subsets with other data-order seeds gives the [subsets × seeds] table A of
:func:`noise_floor`, whose subset × seed interaction is the noise that reorders subsets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gradproj.core.data import PreferencePair
from gradproj.evaluation.runner import Continuation
from benchmarks.harness.stats import bootstrap_spearman_ci
from gradproj.evaluation.stats import pearson, spearman


def half_subsets(n: int, count: int, seed: int = 0) -> list[np.ndarray]:
    """``count`` random subsets of range(n), each of ⌊n/2⌋ sorted indices (seeded)."""
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(n, n // 2, replace=False)) for _ in range(count)]


@dataclass
class Retrained:
    subsets: list[np.ndarray]
    losses: np.ndarray
    """[S] validation loss of every subset at the seed of record."""
    runs: list[dict]
    """Per subset at the seed of record: val_loss, val_accuracy, train_loss_last."""
    repeats: dict[int, list[float]] = field(default_factory=dict)
    """Subset index → validation losses at the other data-order seeds."""
    same_seed_abs_diff: float = float("nan")
    """|L_0 − L_0'|: subset 0 retrained once more at the seed of record (0: deterministic)."""
    timings: list[dict] = field(default_factory=list)
    """Per run: wall (train_adapter), train (trainer.train only), steps."""


def retrain_subsets(cont: Continuation, train: list[PreferencePair], subsets: list[np.ndarray],
                    seed: int, noise_subsets: int = -1, noise_seeds: int = 2,
                    log: Callable[[str], None] | None = None) -> Retrained:
    """Continue from θ on every subset at ``seed``; then the first ``noise_subsets`` (-1: all)
    at seeds seed+1 … seed+noise_seeds; then subset 0 again at ``seed``. θ is restored after."""
    timings: list[dict] = []

    def run(sub, s) -> dict:
        done = cont([train[j] for j in sub], s)
        timings.append({"wall": done.train_seconds, "train": done.train.seconds,
                        "steps": done.train.steps})
        return {"val_loss": done.result.mean_loss, "val_accuracy": done.result.accuracy,
                "train_loss_last": done.train.losses[-1] if done.train.losses else float("nan")}

    runs = []
    for i, sub in enumerate(subsets):
        runs.append(run(sub, seed))
        if log is not None and (i == 0 or (i + 1) % 10 == 0 or i + 1 == len(subsets)):
            log(f"  subset {i + 1}/{len(subsets)}: val loss {runs[-1]['val_loss']:.5f}")
    m = len(subsets) if noise_subsets < 0 else min(noise_subsets, len(subsets))
    repeats = {i: [run(subsets[i], seed + 1 + s)["val_loss"] for s in range(noise_seeds)]
               for i in range(m)}
    again = run(subsets[0], seed)["val_loss"]
    cont.reset()
    losses = np.array([r["val_loss"] for r in runs])
    return Retrained(subsets, losses, runs, repeats, abs(again - float(losses[0])), timings)


def run_costs(timings: list[dict], bare_step: float) -> dict:
    """Median cost of one retraining run from :attr:`Retrained.timings`: ``wall_median``
    (train_adapter), ``train_median`` (trainer.train), ``overhead_median`` (setup + save),
    ``step_median`` (per optimizer step), and ``trl_overhead_estimate`` = wall − steps ·
    ``bare_step`` (a hand-written step's seconds: benchmarks.harness.step.step_seconds)."""
    from benchmarks.harness.measure import median

    steps = timings[0]["steps"]
    out = {"runs": len(timings), "steps_per_run": steps,
           "wall_median": median([x["wall"] for x in timings]),
           "train_median": median([x["train"] for x in timings]),
           "overhead_median": median([x["wall"] - x["train"] for x in timings])}
    out["step_median"] = out["train_median"] / max(steps, 1)
    out["bare_step"] = bare_step
    out["trl_overhead_estimate"] = out["wall_median"] - steps * bare_step
    return out


def store_influence(loaded, train: list[PreferencePair], val: list[PreferencePair], settings,
                    pref, folder) -> tuple[np.ndarray, float]:
    """(IF [n] of every training pair, in ``train`` order (NaN: not in the store), seconds)
    from a store built at ``folder`` with ``settings`` — the float16 path a user runs."""
    import time

    from gradproj.attribution.influence import mean_influence, validation_features
    from gradproj.store.build import build_store

    t = time.perf_counter()
    store = build_store(loaded, train, settings, folder, pref=pref, progress=False)
    scores = mean_influence(store, validation_features(store, loaded, val)).astype(np.float64)
    pos = {pid: i for i, pid in enumerate(store.ids())}
    ordered = np.array([scores[pos[p.id]] if p.id in pos else np.nan for p in train])
    return ordered, time.perf_counter() - t


def lds_row(if_scores, retrained: Retrained, bootstrap: int = 2000, seed: int = 0) -> dict:
    """LDS of one influence estimate (``if_scores`` [n], NaN rows count as 0 in the sums):
    ``lds``, its bootstrap ``ci_low``/``ci_high``, ``pearson``, ``subset_sums`` [S] and, with
    ≥ 4 repeated subsets, ``lds_seed_mean`` against the loss averaged over data-order seeds."""
    scores = np.asarray(if_scores, float)
    sums = np.array([np.nansum(scores[s]) for s in retrained.subsets])
    target = -retrained.losses
    lo, hi = bootstrap_spearman_ci(sums, target, bootstrap, seed)
    row = {"lds": spearman(sums, target), "ci_low": lo, "ci_high": hi,
           "pearson": pearson(sums, target), "subset_sums": sums.tolist()}
    idx = [i for i in sorted(retrained.repeats) if retrained.repeats[i]]
    if len(idx) >= 4:
        mean_target = -np.array([np.mean([retrained.losses[i]] + retrained.repeats[i])
                                 for i in idx])
        lo, hi = bootstrap_spearman_ci(sums[idx], mean_target, bootstrap, seed)
        row.update({"lds_seed_mean": spearman(sums[idx], mean_target),
                    "seed_mean_ci_low": lo, "seed_mean_ci_high": hi,
                    "seed_mean_subsets": len(idx)})
    return row


def noise_floor(losses: np.ndarray, repeats: dict[int, list[float]], pred: np.ndarray) -> dict:
    """How much of the val-loss spread across subsets is training noise.

    ``losses`` [S]: val loss of every subset at the seed of record; ``repeats``: subset index →
    val losses at the other data-order seeds; ``pred`` [S]: a prediction per subset (Σ IF).
    With A the [m, seeds] table of the repeated subsets (column 0: the seed of record):

    * ``sd_within_subset_seeds``: pooled SD over seeds of the same subset (all training noise);
    * ``seed_offsets``: mean loss of each seed minus the seed of record's (a shift common to all
      subsets, which cannot change a ranking at one seed);
    * ``sd_residual``: SD of the two-way residual A − row mean − column mean + grand mean
      (the subset × seed interaction: the noise that reorders subsets); ``ceiling`` =
      √(1 − sd_residual² / sd_across²) bounds the correlation of any prediction with the loss
      at one seed;
    * ``seed_rank_agreement``: Spearman of the losses at the seed of record and at each other
      seed, over the repeated subsets;
    * ``lds_repeated_subsets``: Spearman(pred, −loss) over the repeated subsets against each
      seed's losses and against their mean over seeds.
    """
    across = float(np.std(losses, ddof=1))
    out: dict = {"sd_across_subsets": across}
    idx = sorted(i for i, v in repeats.items() if v)
    if len(idx) < 2:
        return out
    A = np.array([[losses[i]] + list(repeats[i]) for i in idx])
    m, s = A.shape
    within_var = float(np.mean(np.var(A, axis=1, ddof=1)))
    resid = A - A.mean(1, keepdims=True) - A.mean(0, keepdims=True) + A.mean()
    resid_var = float((resid ** 2).sum() / ((m - 1) * (s - 1)))
    p = np.asarray(pred)[idx]
    out.update({
        "n_subsets": m, "seeds_per_subset": s,
        "sd_within_subset_seeds": math.sqrt(within_var),
        "seed_offsets": (A.mean(0) - A.mean(0)[0]).tolist(),
        "sd_residual": math.sqrt(resid_var),
        "ratio_residual_over_across": math.sqrt(resid_var) / across if across else float("nan"),
        "ceiling": math.sqrt(max(0.0, 1.0 - resid_var / across ** 2)) if across else float("nan"),
        "seed_rank_agreement": [spearman(A[:, 0], A[:, j]) for j in range(1, s)],
        "lds_repeated_subsets": {"per_seed": [spearman(p, -A[:, j]) for j in range(s)],
                                 "seed_mean": spearman(p, -A.mean(1))},
    })
    return out
