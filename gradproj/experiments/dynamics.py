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
from gradproj.experiments.runner import Continuation, HeldOut
from gradproj.experiments.tables import markdown_table


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
            "final": done.result.to_dict()}


def summary(run: dict, probe: str = "heldout") -> dict:
    """Of one trajectory: ``probe``'s loss at θ, at the end, its lowest and highest over the
    steps, and the step-to-step changes' largest rise."""
    losses = [p[probe]["loss"] for p in run["steps"]]
    rises = [b - a for a, b in zip(losses, losses[1:])]
    return {"start": losses[0], "end": losses[-1], "min": min(losses), "max": max(losses),
            "largest_rise": max(rises) if rises else math.nan}


def markdown(runs: list[dict]) -> str:
    """Per seed: held-out loss at θ → end (range over the steps, largest one-step rise) and the
    flipped / clean probes' loss at θ → end."""
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
        rows.append(cells)
    header = ["seed", "steps", "held-out loss θ → end", "held-out range over steps",
              "largest one-step rise"]
    header += [f"{p} train pairs: loss θ → end" for p in ("flipped", "clean")
               if runs and p in runs[0]["steps"][0]]
    return markdown_table(header, rows)
