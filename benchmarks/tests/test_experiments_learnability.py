"""benchmarks.harness.learnability: base and warm-up θ metrics of a source against training
and evaluating the same way by hand, on a tiny Llama; splitting records by task; the table."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import SAMPLE

from gradproj.core.data import pairs_from_records
from gradproj.core.model import ModelSettings, load_model
from gradproj.core.objectives import PreferenceSettings
from benchmarks.harness import learnability as L
from gradproj.training.evaluate import evaluate
from gradproj.training.train import TrainSettings, train_adapter

PREF = PreferenceSettings(max_length=64)
TRAINING = TrainSettings(epochs=2.0, lr=5e-2, batch_size=2, seed=3)


def _pairs():
    return pairs_from_records([{"id": f"s{i}", "prompt": p, "chosen": c, "rejected": r}
                               for i, (p, c, r) in enumerate(SAMPLE)])


def test_measure_equals_training_and_evaluating_by_hand(tiny_llama, tmp_path):
    pairs = _pairs()
    source = L.Source("sample", pairs[:4], pairs[4:])
    loaded = load_model(ModelSettings(model=tiny_llama, device="cpu"))
    fresh = {n: p.detach().clone() for n, p in loaded.model.named_parameters() if p.requires_grad}
    row = L.measure(loaded, source, TRAINING, PREF, tmp_path / "work", batch_size=2)
    # the base model: a fresh adapter is the reference, margin 0, loss log 2
    assert row["base"]["accuracy"] == 0.0
    assert row["base"]["mean_loss"] == pytest.approx(math.log(2), abs=1e-6)
    # the adapter is fresh again afterwards
    for n, p in loaded.model.named_parameters():
        if p.requires_grad:
            assert torch.equal(p, fresh[n]), n
    # θ: the same training and evaluation on another loaded copy
    other = load_model(ModelSettings(model=tiny_llama, device="cpu"))
    train_adapter(other, pairs[:4], TRAINING, tmp_path / "by-hand", pref=PREF, progress=False)
    expected = evaluate(other, pairs[4:], PREF, batch_size=2).to_dict()
    for key in L.METRICS:
        assert row["theta"][key] == pytest.approx(expected[key], abs=1e-5), key
    own = evaluate(other, pairs[:4], PREF, batch_size=2)   # it learned its own pairs
    assert own.mean_loss < math.log(2) and own.accuracy == 1.0
    assert (row["n_train"], row["n_test"]) == (4, 2)
    assert row["learnable"] == L.is_learnable(row["theta"])


def test_split_by_task_keeps_order_and_drops_small_tasks():
    def rec(i, task):
        return {"id": f"{task}-{i}", "task": task, "prompt": "q", "chosen": f"a{i}",
                "rejected": f"b{i}"}

    records = {"train": [rec(0, "x"), rec(1, "y"), rec(2, "x"), rec(3, "z")],
               "test": [rec(4, "y"), rec(5, "x"), rec(6, "z"), rec(7, "z"), rec(8, "x")]}
    sources = L.split_by(records, "task", min_pairs=1, prefix="bb:")
    assert [s.name for s in sources] == ["bb:x", "bb:y", "bb:z"]
    assert [p.id for p in sources[0].train] == ["x-0", "x-2"]
    assert [p.id for p in sources[2].test] == ["z-6", "z-7"]
    assert [s.name for s in L.split_by(records, "task", min_pairs=2)] == ["x"]
    capped = L.split_by(records, "task", max_train=1, max_test=1)
    assert [([p.id for p in s.train], [p.id for p in s.test]) for s in capped] == [
        (["x-0"], ["x-5"]), (["y-1"], ["y-4"]), (["z-3"], ["z-6"])]


def test_learnable_thresholds_and_table():
    theta = {"accuracy": 0.65, "policy_accuracy": 0.7, "mean_margin": 0.2, "mean_loss": 0.6899}
    assert L.is_learnable(theta)
    assert not L.is_learnable({**theta, "accuracy": 0.6499})
    assert not L.is_learnable({**theta, "mean_loss": 0.69})
    base = {"accuracy": 0.0, "policy_accuracy": 0.52, "mean_margin": 0.0,
            "mean_loss": math.log(2)}
    table = L.markdown([{"source": "bb:navigate", "n_train": 80, "n_test": 40, "base": base,
                         "theta": theta, "learnable": True}])
    assert table.splitlines()[2] == ("| bb:navigate | 80 / 40 | 0.520 | 0.650 | 0.700 | +0.200 | "
                                     "0.693 → 0.690 | **yes** |")
