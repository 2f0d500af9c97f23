"""benchmarks.harness.noise, .tasks and .tables on hand-made data (no model)."""

from __future__ import annotations

import numpy as np
import pytest

from gradproj.attribution.selection import Selection
from benchmarks.harness import noise
from benchmarks.harness import tables
from benchmarks.harness import tasks
from gradproj.demo.synthetic import make_records, make_task


def test_flip_records_swaps_the_reported_rows_only():
    rows = make_records(10, 0, "t")
    flipped_rows, ids = noise.flip_records(rows, 0.3, seed=5)
    assert len(ids) == 3
    for before, after in zip(rows, flipped_rows, strict=True):
        swapped = before["id"] in ids
        assert after["chosen"] == (before["rejected"] if swapped else before["chosen"])
        assert after["rejected"] == (before["chosen"] if swapped else before["rejected"])
    assert noise.flip_records(rows, 0.3, seed=5)[1] == ids        # seeded
    assert rows == make_records(10, 0, "t")                       # the input is left alone


def test_selection_stats_hand_example():
    sel = Selection("lossdiff", ["a", "b", "c", "d"], ["a", "b"], {"c": ["x"], "d": ["x"]},
                    bands={"lossdiff": (0.2, 0.8)})
    got = noise.selection_stats(sel, {"b", "c"}, tif_kept=["a", "c"])
    # clean a (kept), d (dropped) vs flipped b (kept), c (dropped): ½ + 1 + 0 + ½ of 4 pairs
    assert got == {"kept": 2, "flips_removed": 0.5, "flipped_in_kept": 0.5, "overlap_tif": 0.5,
                   "keep_auroc": 0.5, "bands": {"lossdiff": [0.2, 0.8]},
                   "drop_reasons": {"x": 2}}


def test_per_task_auroc_counts_only_scored_pairs_of_mixed_tasks():
    ids = ["ta-0", "ta-1", "ta-2", "tb-3", "tb-4", "tc-5", "tc-6"]
    is_flip = np.array([True, False, False, True, False, False, False])
    cols = {"if": np.array([0.1, 0.5, np.nan, 0.9, 0.2, 1.0, 2.0]),
            "lossdiff": np.array([3.0, 1.0, 2.0, 0.0, 1.0, 1.0, 1.0])}
    got = noise.per_task_auroc(ids, cols, is_flip)
    assert set(got) == {"ta", "tb"}                           # tc has no flipped pair
    assert got["ta"] == {"n": 2, "n_flipped": 1, "if": 1.0, "lossdiff": 0.0}
    assert got["tb"] == {"n": 2, "n_flipped": 1, "if": 0.0, "lossdiff": 1.0}
    assert noise.task_names(["a-b-1", "c-2"]).tolist() == ["a-b", "c"]


def test_score_columns_and_means():
    cols = {"if": np.array([1.0, np.nan, 3.0])}
    is_flip = np.array([False, True, True])
    assert noise.score_columns(["x", "y", "z"], cols, is_flip) == {
        "ids": ["x", "y", "z"], "flipped": [False, True, True], "if": [1.0, None, 3.0]}
    assert noise.score_means(cols, is_flip)["if"] == {"clean": 1.0, "flipped": 3.0,
                                                      "std": 1.0}


def test_noise_table_rows():
    entry = {"flip": 0.25, "n_flipped": 8,
             "auroc_clean_vs_flipped": {"if": 0.61, "lossdiff": 0.55, "irm": 0.4},
             "rules": {"tif": {"flips_removed": 0.5, "keep_auroc": 0.6}},
             "per_task_auroc": {"a": {"n": 4, "n_flipped": 2, "if": 1.0, "lossdiff": 0.5,
                                      "irm": 0.0},
                                "b": {"n": 5, "n_flipped": 1, "if": 0.25, "lossdiff": 0.75,
                                      "irm": 0.5}}}
    lines = noise.noise_lines({"0.25": entry}, keep=0.64, rules=["tif"])
    assert "| 25% | 8 | 0.610 | 0.550 | 0.400 | 50% (0.60) |" in lines
    assert "| a | 1.00 / 0.50 / 0.00 (2/4) |" in lines
    assert lines[-1].endswith("flips removed 1 − keep = 36%.")


def test_synthetic_task_is_make_task_plus_a_second_validation_set():
    task = tasks.load_task("synthetic", 12, 4, 5, 0.25, seed=3, second_val=True)
    ref = make_task(n_train=12, n_val=4, n_test=5, flip=0.25, seed=3)
    for name in ("train", "val", "test"):
        assert [p.record for p in getattr(task, name)] == [p.record for p in getattr(ref, name)]
    assert task.flipped == ref.flipped and len(task.flipped) == 3
    assert [p.id for p in task.val2] == [f"val2-{i:05d}" for i in range(4)]
    assert tasks.load_task("synthetic", 12, 4, 5, 0.25, seed=3).val2 == []


def test_bigbench_task_splits_the_validation_pairs_in_two(monkeypatch):
    import benchmarks.harness.bigbench as bb

    asked = []

    def fake(tasks, seed, max_train, max_val, max_test, cache_dir):
        asked.append(tasks)

        def rows(split, n):
            return [{"id": f"t-{split}{i}", "prompt": "q", "chosen": "y", "rejected": "n"}
                    for i in range(n)]
        return {"train": rows("tr", max_train), "val": rows("va", max_val),
                "test": rows("te", max_test)}

    monkeypatch.setattr(bb, "bigbench_pairs", fake)
    task = tasks.load_task("bigbench", 8, 3, 2, 0.5, seed=1, second_val=True)
    assert [p.id for p in task.val] == ["t-va0", "t-va2", "t-va4"]
    assert [p.id for p in task.val2] == ["t-va1", "t-va3", "t-va5"]
    assert len(task.flipped) == 4 and task.source.startswith("BIG-bench")
    tasks.load_task("bigbench", 8, 3, 2, 0.5, tasks=["navigate", "snarks"])
    assert asked == [bb.DEFAULT_TASKS, ("navigate", "snarks")]
    with pytest.raises(Exception, match="data must be one of"):
        tasks.load_task("nope", 1, 1, 1, 0.0)


def test_markdown_table_and_downstream_table():
    assert tables.markdown_table(["a", "b"], [[1, "x"]]) == "| a | b |\n|---|---|\n| 1 | x |"
    r = {"policy_accuracy": 0.5, "accuracy": 0.25, "mean_loss": 0.7}
    rule = {"rule": "tif", "kept": 6, "flips_removed": 0.5, "flips_removed_std": 0.0,
            "flipped_in_kept": 0.25, "flipped_in_kept_std": 0.0, "overlap_tif": 1.0,
            "overlap_tif_std": 0.0, "policy_accuracy": 0.625, "policy_accuracy_std": 0.05,
            "accuracy": 0.5, "accuracy_std": 0.0, "mean_loss": 0.6, "mean_loss_std": 0.01,
            "train_seconds": 3.2, "policy_accuracy_vs_all": [0.125, -0.1, 0.35]}
    lines = tables.downstream_lines({"base": r, "theta": r, "theta_v": r, "rules": [rule],
                                     "settings": {"seeds": [0, 1]}})
    assert ("| θ + tif | 6 | 50% | 25% | 1.00 | 0.625 ± 0.050 | +0.125 (-0.100, +0.350) | "
            "0.500 | 0.6000 ± 0.0100 | 3 |") in lines[0]
