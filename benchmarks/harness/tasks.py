"""The data of an experiment: training pairs with a known share flipped, clean validation pairs
(optionally a second, disjoint validation set: a "new query"), clean held-out test pairs.

Two sources, one seeding scheme (seed s): ``synthetic`` — :mod:`gradproj.demo.synthetic`'s
generated families (train from s, val s + 2, test s + 3, second val s + 4); ``bigbench`` —
:mod:`benchmarks.harness.bigbench` pairs (task-stratified splits of seed s; the second
validation set is every other pair of a validation split twice the size). In both, the flipped
training pairs are drawn with seed s + 1 (:func:`gradproj.evaluation.noise.flip_records`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gradproj.core.data import PreferencePair, pairs_from_records
from gradproj.core.errors import BadInput
from gradproj.evaluation.noise import flip_records
from gradproj.demo.synthetic import make_records

SOURCES = {"synthetic": "gradproj.synthetic (arithmetic, comparison, counting, parity)",
           "bigbench": "BIG-bench 1.0.0 multiple-choice tasks (benchmarks.harness.bigbench)"}


@dataclass
class Task:
    train: list[PreferencePair]
    val: list[PreferencePair]
    test: list[PreferencePair]
    flipped: frozenset[str]
    """Ids of the training pairs whose chosen and rejected were swapped."""
    val2: list[PreferencePair] = field(default_factory=list)
    """A second clean validation set (empty unless asked for)."""
    source: str = ""


def load_task(data: str, n_train: int, n_val: int, n_test: int, flip: float, seed: int = 0, *,
              second_val: bool = False, cache_dir=None, tasks=None) -> Task:
    """The task of ``data`` (synthetic | bigbench) at these sizes; see the module docstring.

    BIG-bench sizes are caps (a task-stratified prefix), so splits may be smaller; ``tasks``
    names the BIG-bench tasks (default: benchmarks.harness.bigbench.DEFAULT_TASKS), e.g. the
    learnable ones of benchmarks.harness.learnability.
    """
    if data == "synthetic":
        records = {"train": make_records(n_train, seed, "train"),
                   "val": make_records(n_val, seed + 2, "val"),
                   "val2": make_records(n_val, seed + 4, "val2") if second_val else [],
                   "test": make_records(n_test, seed + 3, "test")}
    elif data == "bigbench":
        from benchmarks.harness.bigbench import DEFAULT_TASKS, bigbench_pairs

        splits = bigbench_pairs(tuple(tasks or DEFAULT_TASKS), seed=seed, max_train=n_train,
                                max_val=(2 if second_val else 1) * n_val, max_test=n_test,
                                cache_dir=cache_dir)
        val = splits["val"]
        records = {"train": splits["train"], "val": val[0::2] if second_val else val,
                   "val2": val[1::2] if second_val else [], "test": splits["test"]}
        empty = [k for k, v in records.items() if not v and (k != "val2" or second_val)]
        if empty:
            raise BadInput(f"BIG-bench gave an empty {empty[0]} split")
    else:
        raise BadInput(f"data must be one of {', '.join(SOURCES)}, got {data!r}")
    records["train"], flipped = flip_records(records["train"], flip, seed + 1)
    pairs = {name: pairs_from_records(rows, origin=f"<{data} {name}>") if rows else []
             for name, rows in records.items()}
    return Task(pairs["train"], pairs["val"], pairs["test"], frozenset(flipped),
                pairs["val2"], SOURCES[data])
