"""benchmarks/bench_learnability.py end to end on a tiny model and hand-made BIG-bench-style
records: one row per source (the generated task first), the JSON, and the table spliced into a
results file between its markers."""

from __future__ import annotations

import json

from helpers import load_benchmark


def _records(task, n, split):
    return [{"id": f"{task}-{split}-{i}", "task": task, "prompt": f"{task} question {i}",
             "chosen": "yes", "rejected": "no"} for i in range(n)]


def test_bench_learnability_writes_one_row_per_source(tiny_char_llama, tmp_path, monkeypatch):
    from gradproj.core.model import ModelSettings, load_model
    from benchmarks.harness import bigbench
    from benchmarks.harness import learnability as L

    bench = load_benchmark("bench_learnability")
    monkeypatch.setattr(bench.C, "load_smollm2",
                        lambda: load_model(ModelSettings(model=tiny_char_llama, device="cpu")))
    asked = {}

    def fake_pairs(tasks, seed, max_train, max_test):
        asked.update(tasks=list(tasks), max_train=max_train, max_test=max_test)
        return {"train": _records("aa", 12, "train") + _records("bb", 8, "train")
                + _records("cc", 3, "train"),
                "test": _records("aa", 8, "test") + _records("bb", 11, "test")}

    monkeypatch.setattr(bigbench, "bigbench_pairs", fake_pairs)
    results = tmp_path / "results.md"
    results.write_text(f"intro\n{bench.BEGIN}\nold\n{bench.END}\nafter\n")
    out = tmp_path / "learn.json"
    assert bench.main(["--tasks", "aa,bb,cc", "--n-train", "8", "--n-test", "8",
                       "--max-length", "48", "--threads", "1", "--json", str(out),
                       "--results-md", str(results)]) == 0
    assert asked == {"tasks": ["aa", "bb", "cc"], "max_train": 24, "max_test": 24}
    data = json.loads(out.read_text())
    # cc has too few pairs (3 train, 0 test) and is left out; each source is cut to 8 / 8
    assert [r["source"] for r in data["rows"]] == ["generated", "bigbench:aa", "bigbench:bb"]
    assert [(r["n_train"], r["n_test"]) for r in data["rows"]] == [(8, 8)] * 3
    for r in data["rows"]:
        assert r["base"]["accuracy"] == 0.0
        assert r["learnable"] == L.is_learnable(r["theta"])
    text = results.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{bench.END}\nafter\n")
    assert "old" not in text and text.count("| bigbench:") == 2 and "| generated |" in text

    # --resume keeps the rows of the same settings and measures only the missing sources
    data["rows"][1]["marker"] = "kept"
    data_bb = data["rows"].pop(2)
    out.write_text(json.dumps(data))
    common = ["--tasks", "aa,bb,cc", "--n-test", "8", "--max-length", "48", "--threads", "1",
              "--json", str(out), "--results-md", str(results), "--resume"]
    assert bench.main(["--n-train", "8", *common]) == 0
    again = json.loads(out.read_text())
    assert [r["source"] for r in again["rows"]] == ["generated", "bigbench:aa", "bigbench:bb"]
    assert again["rows"][1]["marker"] == "kept" and "marker" not in again["rows"][2]
    assert again["rows"][2]["theta"] == data_bb["theta"]          # the same measurement again
    assert bench.main(["--n-train", "6", *common]) == 0         # other settings: all measured
    assert all("marker" not in r for r in json.loads(out.read_text())["rows"])
