"""Can the model learn the preference in a data source? The question to ask before measuring a
selection rule on it: where one epoch of warm-up DPO does not generalise to held-out pairs of
the same source, no score can separate a flipped pair from a clean one, and no rule can beat
another.

For each source (the generated task, each BIG-bench task): the held-out metrics of the base
model (a fresh adapter, so the policy is the reference: margin 0, loss log 2, and the policy
accuracy is the base model's own preference) and of the warm-up θ trained from it on the
source's training pairs (the objective and training settings given: those of the experiment
the source is for). A source is *learnable* when θ's held-out reward accuracy reaches
:data:`MIN_ACCURACY` and its held-out loss falls below :data:`MAX_LOSS`.

    rows = [measure(loaded, src, TrainSettings(lr=2e-3), pref, work) for src in sources]
    print(markdown(rows))
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from gradproj.core.data import PreferencePair, pairs_from_records
from gradproj.core.model import LoadedModel
from gradproj.core.objectives import PreferenceSettings
from gradproj.evaluation.runner import Continuation, HeldOut
from gradproj.demo.synthetic import make_records
from benchmarks.harness.tables import markdown_table
from gradproj.training.train import TrainSettings

MIN_ACCURACY = 0.65
"""Held-out reward accuracy θ must reach for a source to count as learnable."""
MAX_LOSS = 0.69
"""Held-out DPO loss θ must fall below (log 2 ≈ 0.693 is a margin of 0)."""
METRICS = ("accuracy", "policy_accuracy", "mean_margin", "mean_loss")


@dataclass
class Source:
    name: str
    train: list[PreferencePair]
    test: list[PreferencePair]


def synthetic_source(n_train: int, n_test: int, seed: int = 0) -> Source:
    """The generated task (gradproj.demo.synthetic), no flips."""
    return Source("generated", pairs_from_records(make_records(n_train, seed, "train")),
                  pairs_from_records(make_records(n_test, seed + 3, "test")))


def split_by(records: dict[str, list[dict]], column: str = "task", min_pairs: int = 1,
             prefix: str = "", max_train: int | None = None,
             max_test: int | None = None) -> list[Source]:
    """One :class:`Source` per value of ``column`` in the ``train`` and ``test`` record lists
    (e.g. BIG-bench pairs by task), in order of first appearance, each cut to its first
    ``max_train`` / ``max_test`` records; values with fewer than ``min_pairs`` training or
    test pairs are left out."""
    groups: dict[str, dict[str, list[dict]]] = defaultdict(lambda: {"train": [], "test": []})
    for split in ("train", "test"):
        for r in records[split]:
            groups[r[column]][split].append(r)
    return [Source(prefix + name,
                   pairs_from_records(g["train"][:max_train], origin=f"<{name} train>"),
                   pairs_from_records(g["test"][:max_test], origin=f"<{name} test>"))
            for name, g in groups.items()
            if len(g["train"]) >= min_pairs and len(g["test"]) >= min_pairs]


def is_learnable(theta: dict) -> bool:
    return theta["accuracy"] >= MIN_ACCURACY and theta["mean_loss"] < MAX_LOSS


def measure(loaded: LoadedModel, source: Source, training: TrainSettings,
            pref: PreferenceSettings, work: str | Path, batch_size: int = 8) -> dict:
    """Base and warm-up θ metrics of ``source`` on its held-out pairs. ``loaded`` must hold a
    fresh adapter (B = 0); its weights are put back afterwards, so sources can follow one
    another on one loaded model."""
    cont = Continuation(loaded, HeldOut(loaded, source.test, pref, batch_size), training, pref,
                        work)
    try:
        base = cont.evaluate().to_dict()
        done = cont(source.train, training.seed, f"theta-{source.name}")
    finally:
        cont.reset()
    return row(source.name, len(source.train), len(source.test), base, done.result.to_dict(),
               done.train_seconds)


def row(source: str, n_train: int, n_test: int, base: dict, theta: dict,
        train_seconds: float | None = None) -> dict:
    """One row of the table: held-out metrics (EvalResult.to_dict) of base and θ."""
    return {"source": source, "n_train": n_train, "n_test": n_test, "base": base,
            "theta": theta, "learnable": is_learnable(theta), "train_seconds": train_seconds}


def markdown(rows: list[dict]) -> str:
    """The learnability table: one row per source, learnable ones marked."""
    def pct(x):
        return f"{x:.3f}"

    return markdown_table(
        ["source", "train / test pairs", "base policy acc.", "θ reward acc.", "θ policy acc.",
         "θ margin", "base → θ loss", "learnable"],
        [[r["source"], f"{r['n_train']} / {r['n_test']}", pct(r["base"]["policy_accuracy"]),
          pct(r["theta"]["accuracy"]), pct(r["theta"]["policy_accuracy"]),
          f"{r['theta']['mean_margin']:+.3f}",
          f"{r['base']['mean_loss']:.3f} → {r['theta']['mean_loss']:.3f}",
          "**yes**" if r["learnable"] else "no"] for r in rows])
