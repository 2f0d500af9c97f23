"""A preference task generated from templates, with a known set of flipped (mislabelled) pairs.

Each prompt is a small arithmetic or comparison question; ``chosen`` states the right answer and
``rejected`` a wrong one in the same words, so the pair differs only in correctness. A flipped
pair has chosen and rejected swapped: label noise whose identity is known, so a selection rule can
be graded by the share of flips it removes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from gradproj.core.data import PreferencePair, pairs_from_records
from gradproj.evaluation.noise import flip_records


def _addition(rng: random.Random):
    a, b = rng.randint(2, 49), rng.randint(2, 49)
    wrong = a + b + rng.choice([-10, -2, -1, 1, 2, 10])
    q = f"What is {a} + {b}? Answer with the sum."
    return q, f"{a} + {b} = {a + b}.", f"{a} + {b} = {wrong}."


def _comparison(rng: random.Random):
    a, b = rng.sample(range(1, 100), 2)
    q = f"Which number is larger, {a} or {b}?"
    big, small = max(a, b), min(a, b)
    return q, f"The larger number is {big}.", f"The larger number is {small}."


def _counting(rng: random.Random):
    word = rng.choice(["apple", "cat", "star", "cup", "tree", "book"])
    n = rng.randint(2, 7)
    wrong = n + rng.choice([-1, 1, 2])
    q = f"How many times does the word '{word}' appear here: {' '.join([word] * n)}?"
    return q, f"It appears {n} times.", f"It appears {wrong} times."


def _parity(rng: random.Random):
    n = rng.randint(1, 200)
    right, wrong = ("even", "odd") if n % 2 == 0 else ("odd", "even")
    return f"Is {n} even or odd?", f"{n} is {right}.", f"{n} is {wrong}."


FAMILIES = (_addition, _comparison, _counting, _parity)


@dataclass
class SyntheticTask:
    train: list[PreferencePair]
    val: list[PreferencePair]
    test: list[PreferencePair]
    flipped: frozenset[str]
    """Ids of the training pairs whose chosen and rejected were swapped."""


SYSTEM = "Answer briefly."


def make_records(n: int, seed: int, prefix: str) -> list[dict]:
    """``n`` clean chat records {id, chosen, rejected}, families in rotation.

    The conversation opens with a short system message, which keeps sequences short (a chat
    template's default system prompt can be longer than the question).
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        q, c, r = FAMILIES[i % len(FAMILIES)](rng)
        prompt = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}]
        rows.append({"id": f"{prefix}-{i:05d}",
                     "chosen": prompt + [{"role": "assistant", "content": c}],
                     "rejected": prompt + [{"role": "assistant", "content": r}]})
    return rows


def make_task(n_train: int = 96, n_val: int = 24, n_test: int = 48, flip: float = 0.25,
              seed: int = 0) -> SyntheticTask:
    """Train (with ``flip`` of its pairs swapped), clean validation and clean test pairs."""
    train, flipped = flip_records(make_records(n_train, seed, "train"), flip, seed + 1)
    return SyntheticTask(
        train=pairs_from_records(train, origin="<synthetic train>"),
        val=pairs_from_records(make_records(n_val, seed + 2, "val"), origin="<synthetic val>"),
        test=pairs_from_records(make_records(n_test, seed + 3, "test"), origin="<synthetic test>"),
        flipped=frozenset(flipped))
