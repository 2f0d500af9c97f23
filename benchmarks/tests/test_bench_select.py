"""benchmarks/bench_select.py end to end on a tiny model and two hand-made sources: per-source
learnability, label noise at two rates (the extra rate at --noise-n-train pairs), every rule
× seed continued from θ with paired differences, the JSON, the PNG and the report."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
from helpers import is_png, load_benchmark


def _records(task, n, split):
    return [{"id": f"{task}-{split}{i}", "prompt": f"{task} q{i}?", "chosen": f" yes {i}",
             "rejected": f" no {i}"} for i in range(n)]


def test_bench_select_end_to_end(tiny_char_llama, tmp_path, monkeypatch):
    import gradproj.core.model as model_mod
    from gradproj.core.data import pairs_from_records
    from gradproj.evaluation.noise import flip_records
    from benchmarks.harness import learnability
    from benchmarks.harness import suite
    from benchmarks.harness.tasks import Task

    bench = load_benchmark("bench_select")
    real_load = model_mod.load_model
    monkeypatch.setattr(model_mod, "load_model", lambda settings: real_load(
        dataclasses.replace(settings, model=tiny_char_llama)))
    asked = []

    def fake_task(args, flip, n_train=None):
        n = n_train or args.n_train
        asked.append((flip, n))
        train = [r for k in range(n // 2) for r in (_records("aa", n // 2, "t")[k],
                                                    _records("bb", n // 2, "t")[k])]
        train, flipped = flip_records(train, flip, 1)
        test = _records("aa", 4, "x") + _records("bb", 4, "x")
        return Task(pairs_from_records(train), pairs_from_records(_records("aa", 4, "v")),
                    pairs_from_records(test), frozenset(flipped),
                    pairs_from_records(_records("bb", 4, "w")), "hand-made")

    monkeypatch.setattr(bench, "load_task", fake_task)
    out, png = tmp_path / "s.json", tmp_path / "s.png"
    bench.main(["--n-train", "16", "--noise", "0.5", "--noise-n-train", "12", "--flip", "0.25",
                "--rules", "all", "random", "lossdiff-irm", "--seeds", "0", "1", "--batch", "4",
                "--proj-dim", "64", "--max-length", "64", "--max-tokens", "300", "--no-cost", "--work",
                str(tmp_path / "work"), "--json", str(out), "--png", str(png)])
    assert asked == [(0.25, 16), (0.5, 12)]
    res = json.loads(out.read_text())
    assert [(r["source"], r["n_train"], r["n_test"]) for r in res["learnability"]] == [
        ("aa", 8, 4), ("bb", 8, 4)]
    for r in res["learnability"]:       # a fresh adapter is the reference: margin 0, log 2
        assert r["base"]["mean_loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert r["base"]["accuracy"] == 0.0
        assert r["learnable"] == learnability.is_learnable(r["theta"])
    assert {k: (n["n_train"], n["n_flipped"]) for k, n in res["noise"].items()} == {
        "0.25": (16, 4), "0.50": (12, 6)}
    assert sorted((r["rule"], r["seed"]) for r in res["runs"]) == sorted(
        (rule, s) for rule in ("all", "random", "lossdiff-irm") for s in (0, 1))
    kept = {r["rule"]: r["kept"] for r in res["runs"]}
    # random keeps round(0.64·16); a band intersection keeps ≈ that (selection's bisection)
    assert kept["all"] == 16 and kept["random"] == 10 and abs(kept["lossdiff-irm"] - 10.24) <= 1
    assert is_png(png)
    text = "\n".join(suite.render_select(res))
    assert "| aa | 8 / 4 |" in text and "Paired difference to `all`" in text
    assert "| 50% | 6 of 12 |" in text
