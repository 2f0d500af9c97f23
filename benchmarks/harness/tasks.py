"""The data of an experiment: training pairs with a known share flipped, clean validation pairs
(optionally a second, disjoint validation set: a "new query"), clean held-out test pairs.

Two sources, one seeding scheme (seed s): ``synthetic`` — :mod:`gradproj.demo.synthetic`'s
generated families (train from s, val s + 2, test s + 3, second val s + 4); ``bigbench`` —
:mod:`benchmarks.harness.bigbench` pairs (task-stratified splits of seed s; the second
validation set is every other pair of a validation split twice the size). In both, the flipped
training pairs are drawn with seed s + 1 (:func:`gradproj.evaluation.noise.flip_records`).
"""

from __future__ import annotations

import random
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


_FILLER = ("please", "think", "it", "through", "carefully", "and", "then", "state", "the",
           "final", "result", "in", "one", "short", "clear", "sentence", "for", "a", "student",
           "who", "is", "checking", "their", "homework", "tonight")
_EXPLAIN = " I worked it out step by step and checked the result once more before answering."


def sized_records(n: int, seed: int, prefix: str, tokenizer, target: int = 64) -> list[dict]:
    """``n`` chat records of :func:`make_records`' families, lengthened so that prompt + chosen
    is about ``target`` tokens under the tokenizer's chat template: both answers get the same
    explanation sentence and the question gets filler words until the chosen sequence reaches
    ``target`` tokens (the rejected one differs by a token or two)."""
    from gradproj.core.tokens import render_pair

    rng = random.Random(seed)
    out = []
    for rec in make_records(n, seed, prefix):
        base_q = rec["chosen"][1]["content"]
        for side in ("chosen", "rejected"):
            rec[side][2]["content"] += _EXPLAIN
        start = rng.randrange(len(_FILLER))
        words: list[str] = []
        while True:
            q = base_q + (" " + " ".join(words).capitalize() + "." if words else "")
            for side in ("chosen", "rejected"):
                rec[side][1]["content"] = q
            p, c, _ = render_pair(pairs_from_records([rec])[0], tokenizer)
            if len(p) + len(c) >= target or len(words) >= 4 * len(_FILLER):
                break
            words.append(_FILLER[(start + len(words)) % len(_FILLER)])
        out.append(rec)
    return out


def token_stats(tokenized_pairs) -> dict:
    """Sequence lengths (prompt + response tokens) of the chosen and rejected rows of
    tokenized pairs: mean, min, max of each, and the mean response length."""
    import numpy as np

    c = np.array([len(p.prompt_ids) + len(p.chosen_ids) for p in tokenized_pairs])
    r = np.array([len(p.prompt_ids) + len(p.rejected_ids) for p in tokenized_pairs])
    resp = np.array([len(p.chosen_ids) for p in tokenized_pairs]
                    + [len(p.rejected_ids) for p in tokenized_pairs])
    return {"pairs": len(c), "chosen_mean": float(c.mean()), "chosen_min": int(c.min()),
            "chosen_max": int(c.max()), "rejected_mean": float(r.mean()),
            "rejected_min": int(r.min()), "rejected_max": int(r.max()),
            "response_mean": float(resp.mean())}
