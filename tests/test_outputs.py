"""What select hands to a trainer: UltraFeedback-layout input by split, the selected dataset with
scores and gradproj's reference columns, scores_all, the card (trl on the selection:
test_trl_roundtrip.py)."""

from __future__ import annotations

import json

import datasets
import pytest
from click.testing import CliRunner
from helpers import ultrafeedback_like

from gradproj.cli import main
from gradproj.core.errors import BadInput
from gradproj.pipeline.outputs import load_selection, push_selection


@pytest.fixture(scope="module")
def uf_run(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("uf")
    data = ultrafeedback_like(root / "uf")
    out = root / "sel"
    res = CliRunner().invoke(main, [
        "select", "--model", tiny_llama, "--device", "cpu", "--train", data,
        "--train-split", "train_prefs", "--val", data, "--val-split", "test_prefs",
        "--out", str(out), "--max-length", "64", "--batch-size", "4", "--lr", "0.01",
        "--proj-dim", "64", "--with-if", "--group-by", "source"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return {"data": data, "out": out, "model": tiny_llama}


def test_selected_dataset_has_the_original_columns_scores_and_reference(uf_run):
    out = uf_run["out"]
    selected = datasets.load_from_disk(str(out / "selected"))
    info = json.loads((out / "selection.json").read_text())
    assert len(selected) == info["kept"] and selected["id"] == info["kept_ids"]
    original = datasets.load_from_disk(uf_run["data"])["train_prefs"]
    for column in ("prompt_id", "score_chosen", "score_rejected", "source", "messages"):
        assert column in selected.column_names, column
    assert {"irm", "lossdiff", "if", "tif", "gradproj_ref_chosen_logps",
            "gradproj_ref_rejected_logps"} <= set(selected.column_names)
    assert "ref_chosen_logps" not in selected.column_names    # trl 1.16 would refuse it
    by_prompt_id = {r["prompt_id"]: r for r in original}
    for row in selected:
        src = by_prompt_id[row["prompt_id"]]
        assert row["source"] == src["source"] and row["score_chosen"] == src["score_chosen"]
        # trl's explicit-prompt conversational form of the same conversation
        assert row["prompt"] + row["chosen"] == src["chosen"]
        assert row["prompt"] + row["rejected"] == src["rejected"]
    assert load_selection(out)["id"] == selected["id"]
    parquet = datasets.Dataset.from_parquet(str(out / "selected.parquet"))
    assert parquet["id"] == selected["id"] and parquet["irm"] == selected["irm"]
    card = (out / "selected" / "README.md").read_text()
    assert f"{len(selected)} of {info['n_scorable']} scorable pairs kept" in card
    assert "| irm |" in card and '"name": "dpo"' in card


def test_scores_all_has_every_row_with_kept_and_reasons(uf_run):
    out = uf_run["out"]
    info = json.loads((out / "selection.json").read_text())
    every = datasets.Dataset.from_parquet(str(out / "scores_all.parquet"))
    assert len(every) == info["n"] == 12
    kept = [r["id"] for r in every if r["kept"]]
    assert kept == info["kept_ids"]
    assert all((r["drop_reasons"] == []) == r["kept"] for r in every)


def test_push_to_hub_fails_in_one_line_without_a_hub(uf_run, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BadInput, match=r"^--push-to-hub me/sel: cannot push to the hub \("):
        push_selection(uf_run["out"], "me/sel")


def test_group_by_counts_each_value(uf_run):
    out = uf_run["out"]
    info = json.loads((out / "selection.json").read_text())
    original = datasets.load_from_disk(uf_run["data"])["train_prefs"]
    rows = {r["group"]: r for r in info["groups"]["rows"]}
    assert info["groups"]["column"] == "source"
    assert {g: r["pairs"] for g, r in rows.items()} == {
        s: original["source"].count(s) for s in set(original["source"])}
    kept = set(info["kept_ids"])
    selected = datasets.load_from_disk(str(out / "selected"))
    for group, row in rows.items():
        assert row["kept"] == sum(s == group for s in selected["source"])
        assert row["kept_share"] == pytest.approx(row["kept"] / row["pairs"])
    assert len(kept) == sum(r["kept"] for r in rows.values())
    report = (out / "report.md").read_text()
    assert "## By source" in report and "![kept share by source](groups.png)" in report
    assert (out / "groups.png").is_file()


def test_group_by_a_missing_column_fails_before_any_work(uf_run, tmp_path):
    res = CliRunner().invoke(main, [
        "select", "--model", uf_run["model"], "--device", "cpu", "--train", uf_run["data"],
        "--train-split", "train_prefs", "--val", uf_run["data"], "--val-split", "test_prefs",
        "--out", str(tmp_path / "g"), "--group-by", "domain"])
    assert res.exit_code == 2
    assert res.stderr.strip() == (f"gradproj: error: {uf_run['data']}:1: field 'domain' is "
                                  "missing (--group-by domain)")
    assert not (tmp_path / "g" / "theta").exists()

