"""benchmarks/bench_dynamics.py end to end on a tiny model: a trajectory per seed with every
probe at every step, the JSON, the PNG and the table spliced between the markers."""

from __future__ import annotations

import json

from helpers import is_png, load_benchmark


def test_bench_dynamics_writes_a_trajectory_per_seed(tiny_char_llama, tmp_path, monkeypatch):
    from gradproj.core.model import ModelSettings, load_model

    bench = load_benchmark("bench_dynamics")
    monkeypatch.setattr(bench.C, "load_smollm2",
                        lambda: load_model(ModelSettings(model=tiny_char_llama, device="cpu")))
    results = tmp_path / "results.md"
    results.write_text(f"a\n{bench.BEGIN}\n{bench.END}\nb\n")
    out, png = tmp_path / "d.json", tmp_path / "d.png"
    assert bench.main(["--n-train", "16", "--n-test", "6", "--probe", "3", "--seeds", "0", "1",
                       "--batch", "4", "--max-length", "96", "--threads", "1", "--json",
                       str(out), "--png", str(png), "--results-md", str(results)]) == 0
    data = json.loads(out.read_text())
    assert (data["n_train"], data["n_flipped"], data["n_test"]) == (16, 4, 6)
    assert [r["seed"] for r in data["runs"]] == [0, 1]
    for run in data["runs"]:
        assert [p["step"] for p in run["steps"]] == [0, 1, 2, 3, 4]     # 16 pairs, batch 4
        assert all({"heldout", "flipped", "clean"} <= set(p) for p in run["steps"])
    for run, comp in zip(data["runs"], data["composition"]):
        assert len(run["batches"]) == 4 and sum(map(len, run["batches"])) == 16
        assert sum(comp["flipped_in_batch"]) == 4          # every flipped pair in one batch
    # both seeds start from the same θ
    assert data["runs"][0]["steps"][0] == data["runs"][1]["steps"][0]
    assert is_png(png)
    text = results.read_text()
    assert text.count("| 0 | 4 |") == 1 and text.count("| 1 | 4 |") == 1 and text.endswith("b\n")
