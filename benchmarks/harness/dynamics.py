"""What one more epoch on every pair does, step by step: after every optimizer step of a run
continued from θ, the held-out metrics and the loss on probe sets of training pairs — the
flipped ones (as trained on, i.e. with their wrong label) and clean ones. It shows why the
``all`` rule is the most erratic: how far its held-out loss moves with the data order, and
whether the flipped pairs are being fitted while it moves.

    probes = {"heldout": cont.heldout, "flipped": HeldOut(loaded, flipped_pairs, pref),
              "clean": HeldOut(loaded, clean_pairs, pref)}
    runs = [trajectory(cont, train, seed, probes) for seed in (0, 1, 2)]
    print(markdown(runs))
"""

from __future__ import annotations

import math

from gradproj.core.data import PreferencePair
from gradproj.evaluation.runner import Continuation, HeldOut
from gradproj.evaluation.stats import pearson
from benchmarks.harness.tables import markdown_table


def _point(step: int, probes: dict[str, HeldOut], loaded) -> dict:
    row = {"step": step}
    for name, held in probes.items():
        r = held.evaluate(loaded)
        row[name] = {"loss": r.mean_loss, "accuracy": r.accuracy, "margin": r.mean_margin}
    return row


def trajectory(cont: Continuation, pairs: list[PreferencePair], seed: int,
               probes: dict[str, HeldOut], name: str = "all") -> dict:
    """Continue from θ on ``pairs`` with data-order ``seed``; every probe's loss, reward
    accuracy and margin at θ (step 0) and after every step. ``cont`` is left at θ."""
    cont.reset()
    points = [_point(0, probes, cont.loaded)]
    done = cont(pairs, seed, f"{name}-s{seed}",
                on_step=lambda step: points.append(_point(step, probes, cont.loaded)))
    cont.reset()
    return {"seed": seed, "steps": points, "train_losses": done.train.losses,
            "batches": done.train.batches, "final": done.result.to_dict()}


def composition(run: dict, flipped: set[str] | frozenset[str], probe: str = "heldout") -> dict:
    """Step by step: flipped pairs in the step's batch, and the change of ``probe``'s loss over
    the step; and their Pearson correlation over the steps (nan when either is constant)."""
    losses = [p[probe]["loss"] for p in run["steps"]]
    n_flipped = [sum(i in flipped for i in b) for b in run["batches"]][:len(losses) - 1]
    change = [b - a for a, b in zip(losses, losses[1:])][:len(n_flipped)]
    return {"flipped_in_batch": n_flipped, "loss_change": change,
            "pearson": pearson(n_flipped, change) if len(change) > 2 else math.nan}


def summary(run: dict, probe: str = "heldout") -> dict:
    """Of one trajectory: ``probe``'s loss at θ, at the end, its lowest and highest over the
    steps, and the step-to-step changes' largest rise."""
    losses = [p[probe]["loss"] for p in run["steps"]]
    rises = [b - a for a, b in zip(losses, losses[1:])]
    return {"start": losses[0], "end": losses[-1], "min": min(losses), "max": max(losses),
            "largest_rise": max(rises) if rises else math.nan}


def markdown(runs: list[dict], flipped: set[str] | frozenset[str] | None = None) -> str:
    """Per seed: held-out loss at θ → end (range over the steps, largest one-step rise), the
    flipped / clean probes' loss at θ → end and, given the ``flipped`` ids, the correlation of
    a step's flipped pairs with its held-out loss change (:func:`composition`)."""
    rows = []
    for run in runs:
        h = summary(run)
        cells = [run["seed"], len(run["steps"]) - 1,
                 f"{h['start']:.3f} → {h['end']:.3f}", f"{h['min']:.3f} – {h['max']:.3f}",
                 f"{h['largest_rise']:+.3f}"]
        for probe in ("flipped", "clean"):
            if probe in run["steps"][0]:
                s = summary(run, probe)
                cells.append(f"{s['start']:.3f} → {s['end']:.3f}")
        if flipped is not None and run.get("batches"):
            c = composition(run, flipped)
            worst = max(range(len(c["loss_change"])), key=c["loss_change"].__getitem__)
            cells += [f"{c['pearson']:+.2f}",
                      f"{c['flipped_in_batch'][worst]} of {len(run['batches'][worst])}"]
        rows.append(cells)
    header = ["seed", "steps", "held-out loss θ → end", "held-out range over steps",
              "largest one-step rise"]
    header += [f"{p} train pairs: loss θ → end" for p in ("flipped", "clean")
               if runs and p in runs[0]["steps"][0]]
    if flipped is not None and runs and runs[0].get("batches"):
        header += ["corr(flipped in batch, held-out loss change)",
                   "flipped in the batch of the largest rise"]
    return markdown_table(header, rows)
