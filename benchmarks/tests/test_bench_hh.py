"""benchmarks/bench_hh.py's pieces against hand-computed answers: the split of the rows that fit,
the seed-paired differences, and the IF = σ(−IRM) · alignment decomposition."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
from helpers import make_char_tokenizer

from benchmarks import bench_hh
from gradproj.attribution.scores import ScoreTable
from gradproj.core.objectives import PreferenceSettings


def hh_row(i: int, extra: str = "") -> dict:
    return {"chosen": f"\n\nHuman: q{i}{extra}\n\nAssistant: yes",
            "rejected": f"\n\nHuman: q{i}{extra}\n\nAssistant: no"}


def test_splits_keep_only_rows_that_fit_and_are_disjoint(tmp_path):
    """A character tokenizer: a row fits when prompt + longer answer ≤ max_length characters.
    Rows 3 and 7 are made too long; the split is seeded, disjoint, and flips the asked share."""
    path = tmp_path / "hh.jsonl.gz"
    rows = [hh_row(i, "x" * 200 if i in (3, 7) else "") for i in range(20)]
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    tok = make_char_tokenizer()
    pref = PreferenceSettings(max_length=64)
    data = bench_hh.load_splits(path, tok, pref, 8, 2, 6, 0.25, split_seed=3)
    assert (data["n_rows"], data["n_fit"]) == (20, 18)
    ids = {k: [p.id for p in v] for k, v in data["pairs"].items()}
    assert [len(v) for v in ids.values()] == [8, 2, 6]
    every = sum(ids.values(), [])
    assert len(set(every)) == 16 and not {"hh-3", "hh-7"} & set(every)
    assert len(data["flipped"]) == 2 and data["flipped"] <= set(ids["train"])
    for p in data["pairs"]["train"]:            # a flipped pair answers "no" as chosen
        assert p.chosen[-1]["content"].strip() == ("no" if p.id in data["flipped"] else "yes")
    again = bench_hh.load_splits(path, tok, pref, 8, 2, 6, 0.25, split_seed=3)
    assert {k: [p.id for p in v] for k, v in again["pairs"].items()} == ids
    with pytest.raises(SystemExit, match="only 18 pairs fit 64 tokens; 19 asked for"):
        bench_hh.load_splits(path, tok, pref, 11, 2, 6, 0.0, split_seed=3)


def test_paired_differences_by_hand():
    """Δ = rule − baseline per seed; the mean and t interval (t_{0.975, 2} = 4.302653)."""
    runs = []
    for s, (a, r, t) in enumerate([(0.50, 0.52, 0.55), (0.60, 0.58, 0.66), (0.55, 0.55, 0.58)]):
        for rule, acc in (("all", a), ("random", r), ("tif", t)):
            runs.append({"rule": rule, "seed": s, "accuracy": acc, "policy_accuracy": acc,
                         "mean_loss": 1 - acc})
    out = bench_hh.paired(runs, ("all", "random", "tif"))
    d = np.array([0.05, 0.06, 0.03])
    half = 4.302653 * d.std(ddof=1) / np.sqrt(3)
    m, lo, hi = out["tif"]["all"]["accuracy"]
    assert m == pytest.approx(d.mean()) and (lo, hi) == pytest.approx(
        (d.mean() - half, d.mean() + half), rel=1e-5)
    assert out["tif"]["all"]["mean_loss"][0] == pytest.approx(-d.mean())
    assert out["tif"]["random"]["accuracy"][0] == pytest.approx(np.mean([0.03, 0.08, 0.03]))
    assert "all" not in out and set(out["random"]) == {"all"}


def test_decomposition_recovers_the_alignment():
    """IF built as σ(−h) · a from known margins h and alignments a: the decomposition gives back
    corr(h, a), and corr(IRM, IF) takes the sign of whichever factor dominates."""
    rng = np.random.default_rng(0)
    h = rng.normal(0, 2, 400)
    for a, sign in ((1.0 + 0.0 * h, -1), (0.5 * h, +1)):     # constant > 0; growing with h
        table = ScoreTable([f"p{i}" for i in range(len(h))])
        table.add("irm", table.ids, h)
        table.add("if", table.ids, a / (1 + np.exp(h)))
        table.add("lossdiff", table.ids, a / (1 + np.exp(h)))
        c = bench_hh.correlations(table)
        assert np.sign(c["irm"]["pearson"]) == sign
        d = c["decomposition"]
        assert d["pearson_irm_weight"] < -0.8
        if sign > 0:
            assert d["pearson_irm_alignment"] == pytest.approx(1.0)
            assert d["share_alignment_positive"] == pytest.approx((h > 0).mean())
        else:
            assert d["share_alignment_positive"] == 1.0
            assert d["mean_alignment_low_irm"] == pytest.approx(1.0)


def test_seed_means_of_correlations_are_taken_on_fishers_z_scale():
    """Three seeds' Pearson r: the mean is tanh(mean atanh r), its t interval on the z scale
    (t_{0.975, 2} = 4.302653), so it stays inside [−1, 1]; accuracies are plain means."""
    rs = [0.5, 0.7, 0.95]
    seeds = [{"seed": i, "theta": {"accuracy": a, "policy_accuracy": a, "mean_loss": 1 - a},
              "correlations": {n: {"pearson": r, "spearman": r} for n in ("irm", "lossdiff")},
              "auroc_clean_vs_flipped": None} for i, (r, a) in enumerate(zip(rs, (0.5, 0.6, 0.7)))]
    res = bench_hh.summarise({"runs": [], "seeds": seeds})
    z = np.arctanh(rs)
    half = 4.302653 * z.std(ddof=1) / np.sqrt(3)
    assert res["seed_means"]["pearson_irm_if"] == pytest.approx(
        [np.tanh(z.mean()), np.tanh(z.mean() - half), np.tanh(z.mean() + half)])
    assert -1 < res["seed_means"]["pearson_irm_if"][1] and res["seed_means"]["pearson_irm_if"][2] < 1
    assert res["seed_means"]["theta_accuracy"][0] == pytest.approx(0.6)
    assert res["rules"] == [] and res["paired"] == {}


def test_merge_joins_disjoint_seeds_and_refuses_other_settings():
    def part(seeds, lr=1e-3):
        return {"settings": {"lr": lr, "seeds": seeds, "json": "x", "work": "w", "threads": 1},
                "data": {"file": "f"}, "machine": {"commit": "c"}, "base": {}, "seconds": 10.0 * len(seeds),
                "seeds": [{"seed": s, "theta": {"accuracy": 0.5 + s / 10, "policy_accuracy": 0.5,
                                                "mean_loss": 0.69},
                           "correlations": {n: {"pearson": 0.1 * s, "spearman": 0.1 * s}
                                            for n in ("irm", "lossdiff")}} for s in seeds],
                "runs": [{"rule": rule, "seed": s, "accuracy": 0.5, "policy_accuracy": 0.5,
                          "mean_loss": 0.69 - 0.01 * s * (rule == "tif"), "kept": 1,
                          "flips_removed": 0, "flipped_in_kept": 0, "overlap_tif": 1,
                          "mean_margin": 0, "train_seconds": 1, "eval_seconds": 1}
                         for s in seeds for rule in ("all", "tif")]}

    res = bench_hh.merge([part([3, 4]), part([0, 1, 2])])
    assert [s["seed"] for s in res["seeds"]] == [0, 1, 2, 3, 4] and len(res["runs"]) == 10
    assert res["settings"]["seeds"] == [0, 1, 2, 3, 4] and res["seconds"] == 30.0
    assert [p["seeds"] for p in res["parts"]] == [[3, 4], [0, 1, 2]]
    assert res["seed_means"]["theta_accuracy"][0] == pytest.approx(0.7)
    assert res["paired"]["tif"]["all"]["mean_loss"][0] == pytest.approx(-0.02)
    with pytest.raises(SystemExit, match="other settings"):
        bench_hh.merge([part([0]), part([1], lr=2e-3)])
    with pytest.raises(SystemExit, match="a seed is in two parts"):
        bench_hh.merge([part([0, 1]), part([1])])
