"""Smoke test of benchmarks/bench_lds.py: main() end to end in a tiny configuration."""

from __future__ import annotations

import json
import math

import pytest
from helpers import load_benchmark


def test_bench_lds_tiny_run_writes_json_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    bench = load_benchmark("bench_lds")
    out, png = tmp_path / "lds.json", tmp_path / "lds.png"
    assert bench.main(["--train-pairs", "16", "--val-pairs", "6", "--subsets", "6",
                       "--ks", "64,100000", "--extra-k", "64", "--proj-seeds", "1",
                       "--noise-subsets", "4", "--noise-seeds", "1", "--bootstrap", "50",
                       "--json", str(out), "--png", str(png)]) == 0
    data = json.loads(out.read_text())
    assert {"benchmark", "machine", "args", "settings", "theta", "per_run", "noise_floor",
            "lds", "table", "subsets", "pairs", "seconds"} <= set(data)
    assert data["settings"]["ks"] == [64]            # k > P is dropped
    assert data["theta"]["lora_b_max"] > 0           # θ is a non-trivial adapter
    assert data["determinism_same_seed_abs_diff"] == 0.0
    variants = {(r["variant"], r["k"], r["grad_type"]) for r in data["lds"]}
    P = data["settings"]["P"]
    assert {("exact", P, "sgd"), ("exact adam·sgd", P, "adam"), ("exact adam·adam", P, "adam"),
            ("store rademacher", 64, "sgd"), ("store sjlt", 64, "sgd"),
            ("store gaussian", 64, "sgd"), ("store rademacher", 64, "adam")} <= variants
    # each LDS is Spearman's ρ of the subsets' summed IF against −(validation loss), recomputed
    # here from the per-subset numbers the JSON holds (scipy, independent of gradproj's stats)
    from scipy.stats import spearmanr

    from benchmarks.harness.tables import lds_row_name

    target = [-s["val_loss"] for s in data["subsets"]]
    for row in data["lds"]:
        if row["variant"].startswith("−#flipped"):   # a reference, NaN if no spread of flips
            continue
        sums = [s["sum_if"][lds_row_name(row)] for s in data["subsets"]]
        assert row["lds"] == pytest.approx(spearmanr(sums, target).statistic, abs=1e-12)
        assert row["ci_low"] <= row["ci_high"]
    assert len(data["subsets"]) == 6
    for sub in data["subsets"]:
        assert len(sub["pairs"]) == 8 and math.isfinite(sub["val_loss"])
    assert [len(s["val_loss_other_seeds"] or []) for s in data["subsets"]] == [1] * 4 + [0] * 2
    assert data["noise_floor"]["seeds_per_subset"] == 2
    assert png.stat().st_size > 0


def test_bigbench_data_flips_the_requested_share(monkeypatch):
    """--data bigbench: pairs come from benchmarks.harness.bigbench (stubbed here: the archive
    is 358 MB), --flip of the training pairs are swapped, the validation pairs are left alone."""
    import benchmarks.harness.bigbench

    def records(split, n):
        return [{"id": f"task-{split}-{i}", "prompt": f"Q{i}?", "chosen": "right",
                 "rejected": "wrong"} for i in range(n)]

    asked = {}

    def fake(tasks, seed, max_train, max_val, max_test, cache_dir):
        asked.update(seed=seed, max_train=max_train, max_val=max_val, cache_dir=cache_dir)
        return {"train": records("train", max_train), "val": records("val", max_val),
                "test": records("test", max_test)}

    monkeypatch.setattr(benchmarks.harness.bigbench, "bigbench_pairs", fake)
    bench = load_benchmark("bench_lds")
    args = bench.parse_args(["--model", "smollm2", "--data", "bigbench", "--train-pairs", "20",
                             "--val-pairs", "6", "--flip", "0.25", "--bigbench-cache", "/c"])
    assert args.lora_targets == "q_proj,v_proj"
    assert args.json.name == "bench_lds_smollm2.json"      # the tiny model's JSON is kept
    train, val, flipped = bench.load_pairs(args)
    assert asked == {"seed": 0, "max_train": 20, "max_val": 6, "cache_dir": "/c"}
    assert len(train) == 20 and len(val) == 6 and len(flipped) == 5
    for p in train:
        swapped = (p.record["chosen"], p.chosen[-1]["content"]) == ("wrong", "wrong")
        assert swapped == (p.id in flipped)
    assert all(p.chosen[-1]["content"] == "right" for p in val)
