"""gradproj.evaluation.runner and .lds: continue from θ and evaluate, on a tiny Llama; the
LDS statistics on hand-made retraining results."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import SAMPLE, perturb_lora

from gradproj.attribution.scores import ScoreTable
from gradproj.attribution.selection import select
from gradproj.core.data import pairs_from_records
from gradproj.core.model import ModelSettings, load_model
from gradproj.core.objectives import PreferenceSettings
from benchmarks.harness import lds
from benchmarks.harness import tables
from gradproj.evaluation import runner
from gradproj.evaluation.state import trainable
from gradproj.training.evaluate import evaluate
from gradproj.training.train import TrainSettings

PREF = PreferenceSettings(max_length=64)
TRAINING = TrainSettings(epochs=1.0, lr=5e-2, batch_size=2, seed=0)


@pytest.fixture(scope="module")
def cont(tiny_llama, tmp_path_factory):
    loaded = load_model(ModelSettings(model=tiny_llama, device="cpu"))
    perturb_lora(loaded.model)                      # θ: a non-trivial adapter
    pairs = pairs_from_records([{"id": f"s{i}", "prompt": p, "chosen": c, "rejected": r}
                                for i, (p, c, r) in enumerate(SAMPLE)])
    heldout = runner.HeldOut(loaded, pairs[4:], PREF)
    return runner.Continuation(loaded, heldout, TRAINING, PREF,
                               tmp_path_factory.mktemp("runs")), pairs


def test_heldout_reuses_the_reference_without_changing_the_numbers(cont):
    c, pairs = cont
    assert c.evaluate() == evaluate(c.loaded, pairs[4:], PREF)


def test_every_run_starts_from_theta(cont):
    c, pairs = cont
    theta = {n: p.clone() for n, p in trainable(c.loaded.model).items()}
    a = c(pairs[:4], seed=0)
    moved = any(not torch.equal(p, theta[n]) for n, p in trainable(c.loaded.model).items())
    b = c(pairs[:4], seed=0)
    assert moved and a.result == b.result           # reset to θ: the same run twice
    assert a.train.steps == 2 and a.train_seconds > 0 and a.eval_seconds > 0
    other = c(pairs[:2], seed=0)
    assert other.result.mean_loss != a.result.mean_loss
    c.reset()
    assert all(torch.equal(p, theta[n]) for n, p in trainable(c.loaded.model).items())
    assert not list(c.work.iterdir())               # adapters removed (keep_adapters=False)
    assert a.row()["final_train_loss"] == a.train.losses[-1]


def test_continue_on_rules_selects_trains_and_reports(cont):
    c, pairs = cont
    train = pairs[:4]
    table = ScoreTable([p.id for p in train])
    for name, values in (("irm", [0.1, 0.4, 0.2, 0.3]), ("lossdiff", [0.3, 0.1, 0.4, 0.2]),
                         ("if", [1.0, 2.0, 3.0, 4.0])):
        table.add(name, table.ids, np.array(values))
    seen = []
    rows = runner.continue_on_rules(c, table, train, ["all", "random", "top-if"], keep=0.5,
                                    seeds=(0, 1), flipped={"s0"}, on_row=seen.append)
    assert [(r["rule"], r["seed"]) for r in rows] == [
        ("all", 0), ("random", 0), ("top-if", 0), ("all", 1), ("random", 1), ("top-if", 1)]
    assert seen == rows
    assert [r["kept"] for r in rows] == [4, 2, 2, 4, 2, 2]
    top = rows[2]                                  # top-if keeps s2, s3: s0 removed
    assert top["flips_removed"] == 1.0 and top["overlap_tif"] == pytest.approx(
        len({"s2", "s3"} & set(select(table, "tif", 0.5).kept)) / 2)
    agg = tables.aggregate(rows, ["all", "random", "top-if"])
    assert [a["rule"] for a in agg] == ["all", "random", "top-if"]
    acc = [r["policy_accuracy"] for r in rows if r["rule"] == "top-if"]
    assert agg[2]["policy_accuracy"] == pytest.approx(np.mean(acc))
    d = [r["policy_accuracy"] - a["policy_accuracy"] for r, a in zip(rows[2::3], rows[0::3],
                                                                   strict=True)]
    assert agg[2]["policy_accuracy_vs_all"][0] == pytest.approx(np.mean(d))
    assert "policy_accuracy_vs_all" not in agg[0]


def test_retrain_subsets_is_deterministic_and_counts_its_runs(cont):
    c, pairs = cont
    subsets = lds.half_subsets(4, 3, seed=1)
    assert all(len(s) == 2 and list(s) == sorted(set(s)) for s in subsets)
    done = lds.retrain_subsets(c, pairs[:4], subsets, seed=0, noise_subsets=2, noise_seeds=1)
    assert done.same_seed_abs_diff == 0.0
    assert len(done.timings) == 3 + 2 + 1 and sorted(done.repeats) == [0, 1]
    assert done.losses.tolist() == [r["val_loss"] for r in done.runs]
    costs = lds.run_costs(done.timings, bare_step=0.01)
    assert costs["runs"] == 6 and costs["steps_per_run"] == 1
    assert costs["trl_overhead_estimate"] == pytest.approx(costs["wall_median"] - 0.01)


def test_lds_row_and_noise_floor_on_hand_made_losses():
    subsets = [np.array([0, 1]), np.array([1, 2]), np.array([2, 3]), np.array([0, 3]),
               np.array([0, 2])]
    if_scores = np.array([1.0, 2.0, 4.0, 8.0])       # Σ IF per subset: 3, 6, 12, 9, 5
    losses = np.array([0.9, 0.7, 0.1, 0.4, 0.8])     # lower where Σ IF is higher: LDS = 1
    offsets = [0.0, 0.05]                            # seed 2 shifts every subset alike
    repeats = {i: [losses[i] + offsets[1]] for i in range(5)}
    done = lds.Retrained(subsets, losses, [], repeats)
    row = lds.lds_row(if_scores, done, bootstrap=50, seed=0)
    assert row["lds"] == pytest.approx(1.0) and row["lds_seed_mean"] == pytest.approx(1.0)
    assert row["subset_sums"] == [3.0, 6.0, 12.0, 9.0, 5.0]
    floor = lds.noise_floor(losses, repeats, np.array(row["subset_sums"]))
    assert floor["sd_residual"] == pytest.approx(0.0, abs=1e-12)   # no subset × seed noise
    assert floor["ceiling"] == pytest.approx(1.0)
    assert floor["seed_offsets"] == pytest.approx(offsets)
    assert floor["sd_within_subset_seeds"] == pytest.approx(0.05 / math.sqrt(2))
    noisy = {i: [losses[i] + (0.3 if i % 2 else -0.3)] for i in range(5)}
    floor = lds.noise_floor(losses, noisy, np.array(row["subset_sums"]))
    assert 0 < floor["ceiling"] < 1 and floor["sd_residual"] > 0
