"""Smoke test of benchmarks/bench_lds.py: main() end to end in a tiny configuration."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_lds.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_lds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_lds_tiny_run_writes_json_and_png(tmp_path):
    pytest.importorskip("matplotlib")
    bench = _load()
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
    for row in data["lds"]:
        if row["variant"].startswith("−#flipped"):   # a reference, NaN if no spread of flips
            continue
        for key in ("lds", "lds_seed_mean"):
            assert math.isfinite(row[key]) and -1.0 <= row[key] <= 1.0, (row["variant"], key)
        assert row["ci_low"] <= row["ci_high"]
    assert len(data["subsets"]) == 6
    for sub in data["subsets"]:
        assert len(sub["pairs"]) == 8 and math.isfinite(sub["val_loss"])
    assert [len(s["val_loss_other_seeds"] or []) for s in data["subsets"]] == [1] * 4 + [0] * 2
    assert data["noise_floor"]["seeds_per_subset"] == 2
    assert png.stat().st_size > 0
