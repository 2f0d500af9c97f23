"""gradproj ablate: every rule × seed continued from θ and evaluated; summary statistics by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import is_png, write_jsonl
from scipy import stats

from gradproj.cli import main
from gradproj.evaluation.ablate import AblateSettings, summarize
from gradproj.demo.synthetic import make_records


def _runs():
    """Hand-made runs: 2 rules + the baselines, 3 seeds."""
    loss = {"all": [0.60, 0.50, 0.70], "random": [0.55, 0.52, 0.58], "tif": [0.40, 0.45, 0.41]}
    return [{"rule": r, "seed": s, "kept": 10, "accuracy": 0.5, "policy_accuracy": 0.5 + s / 10,
             "mean_margin": 0.1, "mean_loss": v} for r, vs in loss.items() for s, v in enumerate(vs)]


def test_summary_statistics_equal_a_hand_computation():
    summary = {r["rule"]: r for r in summarize(_runs(), ["all", "random", "tif"])}
    tif = summary["tif"]
    assert tif["mean_loss"] == pytest.approx(np.mean([0.40, 0.45, 0.41]))
    assert tif["mean_loss_std"] == pytest.approx(np.std([0.40, 0.45, 0.41], ddof=1))
    d = np.array([0.40, 0.45, 0.41]) - np.array([0.60, 0.50, 0.70])
    half = stats.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert tif["mean_loss_vs_all"] == pytest.approx((d.mean(), d.mean() - half, d.mean() + half))
    d = np.array([0.40, 0.45, 0.41]) - np.array([0.55, 0.52, 0.58])
    assert tif["mean_loss_vs_random"][0] == pytest.approx(d.mean())
    assert "mean_loss_vs_all" not in summary["all"]            # no difference to itself
    assert summary["random"]["mean_loss_vs_all"][0] == pytest.approx(np.mean([-0.05, 0.02, -0.12]))


def test_settings_parse_rules_and_refuse_unknown_ones():
    from gradproj.cli.options import settings_from

    s = settings_from(AblateSettings, {"methods": "all, tif", "keep": 0.5, "seeds": 2,
                                       "continue_epochs": None})
    assert s.methods == ("all", "tif")
    res = CliRunner().invoke(main, ["ablate", "--train", "t", "--val", "v", "--test", "x",
                                    "--out", "o", "--methods", "all,best"])
    assert res.exit_code == 2
    assert res.stderr.strip().startswith("gradproj: error: --methods: unknown rule 'best'")


@pytest.mark.slow
def test_ablate_runs_every_rule_and_seed(tiny_char_llama, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", make_records(16, 0, "train"))
    val = write_jsonl(tmp_path / "val.jsonl", make_records(4, 1, "val"))
    test = write_jsonl(tmp_path / "test.jsonl", make_records(6, 2, "test"))
    out = tmp_path / "ab"
    res = CliRunner().invoke(main, [
        "ablate", "--model", tiny_char_llama, "--device", "cpu", "--train", train, "--val", val,
        "--test", test, "--out", str(out), "--methods", "all,random,tif,lossdiff-irm",
        "--keep", "0.5", "--seeds", "2", "--max-length", "96", "--batch-size", "4",
        "--lr", "0.01", "--proj-dim", "64"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    record = json.loads((out / "ablation.json").read_text())
    assert [(r["rule"], r["seed"]) for r in record["runs"]] == [
        (rule, seed) for seed in (0, 1) for rule in ("all", "random", "tif", "lossdiff-irm")]
    assert {r["rule"]: r["kept"] for r in record["runs"]} == {
        "all": 16, "random": 8, "tif": 8, "lossdiff-irm": 8}
    assert [r["rule"] for r in record["summary"]] == ["all", "random", "tif", "lossdiff-irm"]
    lossdiff = [r["mean_loss"] for r in record["runs"] if r["rule"] == "lossdiff-irm"]
    row = record["summary"][3]
    assert row["mean_loss"] == pytest.approx(np.mean(lossdiff))
    assert row["mean_loss_std"] == pytest.approx(np.std(lossdiff, ddof=1))
    text = (out / "ablation.md").read_text()
    assert "| lossdiff-irm | 8 |" in text and "Paired difference to `random`" in text
    assert is_png(out / "ablation.png") and (out / "config.yaml").is_file()
    # the same folder serves select afterwards: θ, θ_V and the scores are reused
    res = CliRunner().invoke(main, [
        "select", "--model", tiny_char_llama, "--device", "cpu", "--train", train, "--val", val,
        "--out", str(out), "--keep", "0.5", "--max-length", "96", "--batch-size", "4",
        "--lr", "0.01", "--proj-dim", "64"], catch_exceptions=False)
    assert res.exit_code == 0 and "reused everything" in res.output, res.output


def test_group_comparison_lines_put_rules_side_by_side():
    from gradproj.evaluation.ablate import group_comparison_lines

    groups = {"all": [{"group": "a", "pairs": 4, "kept_share": 1.0, "flips_removed": 0.0},
                      {"group": "b", "pairs": 2, "kept_share": 1.0, "flips_removed": None}],
              "tif": [{"group": "a", "pairs": 4, "kept_share": 0.5, "flips_removed": 1.0},
                      {"group": "b", "pairs": 2, "kept_share": 0.5, "flips_removed": None}]}
    lines = group_comparison_lines(groups, "source")
    assert lines[0] == "## Kept share by source (seed 0) — flips removed in brackets"
    assert lines[2:] == ["| source | pairs | all | tif |", "|---|---|---|---|",
                         "| a | 4 | 1.00 (0.00) | 0.50 (1.00) |", "| b | 2 | 1.00 | 0.50 |", ""]
