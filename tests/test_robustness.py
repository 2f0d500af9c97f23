"""The robustness corpus: what real preference data holds, each case with its documented outcome.

Scored or dropped with a reason (select exits 0, nothing else is lost):
  over-long prompt          → kept, prompt cut from the left (``truncated``)
  over-long responses       → kept, responses cut from the right (``truncated``)
  identical after truncation→ dropped: ``excluded:chosen and rejected identical after truncation``
  duplicate content, 2 ids  → both kept as separate pairs (ids differ)
  multi-turn transcript     → implicit prompt (HH-RLHF): the shared prefix, split as trl does
  non-ASCII text            → scored like any text
  extra columns             → carried unchanged into OUT/selected
Refused at load, in one line naming file, line and field, before any work (exit 2):
  empty response, identical chosen and rejected, duplicate ids.
"""

from __future__ import annotations

import json

import datasets
import pytest
from click.testing import CliRunner
from helpers import write_jsonl

from gradproj.cli import main

LONG = "x" * 200
HH = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: 2 + 3?\n\nAssistant:"


def _pair(i, prompt="What is 2 + 2?", chosen="4.", rejected="5.", **extra):
    return {"id": f"r{i:02d}", "prompt": prompt, "chosen": chosen, "rejected": rejected, **extra}


def corpus():
    rows = [_pair(i, f"What is {i} + {i}?", f"{2 * i}.", f"{2 * i + 1}.") for i in range(10)]
    rows += [
        _pair(10, prompt="Context: " + LONG + " What is 1 + 1?", chosen="2.", rejected="3."),
        _pair(11, chosen="Yes " + LONG, rejected="No " + LONG),
        _pair(12, chosen=LONG + " A", rejected=LONG + " B"),          # same after the cut
        _pair(13, prompt="Same?", chosen="Yes.", rejected="No."),
        _pair(14, prompt="Same?", chosen="Yes.", rejected="No."),      # same content, new id
        {"id": "r15", "chosen": HH + " 5", "rejected": HH + " 6"},
        _pair(16, prompt="Qu'est-ce que 2 + 2 ? 😀", chosen="Quatre — 4.", rejected="Cinq."),
        _pair(17, source="forum", score_chosen=9.5, tags=["a", "b"]),
    ]
    return rows


@pytest.fixture(scope="module")
def run(tiny_char_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    train = write_jsonl(root / "train.jsonl", corpus())
    val = write_jsonl(root / "val.jsonl", [_pair(50 + i, f"What is {i} * 2?", f"{2 * i}.",
                                                  f"{2 * i + 2}.") for i in range(4)])
    out = root / "sel"
    res = CliRunner().invoke(main, [
        "select", "--model", tiny_char_llama, "--device", "cpu", "--train", train, "--val", val,
        "--out", str(out), "--max-length", "64", "--batch-size", "4", "--lr", "0.01",
        "--proj-dim", "64", "--method", "lossdiff-irm", "--with-if"], catch_exceptions=False)
    return {"res": res, "out": out, "model": tiny_char_llama, "root": root, "val": val}


def test_awkward_pairs_never_abort_select(run):
    assert run["res"].exit_code == 0, run["res"].output
    info = json.loads((run["out"] / "selection.json").read_text())
    assert info["n"] == 18
    assert info["unscorable"] == {
        "r12": "excluded:chosen and rejected identical after truncation"}
    assert info["n_scorable"] == 17 and info["drop_reasons"][
        "excluded:chosen and rejected identical after truncation"] == 1
    assert abs(info["kept"] - 0.64 * 17) <= 1
    report = (run["out"] / "report.md").read_text()
    assert "| r12 | excluded:chosen and rejected identical after truncation |" in report
    assert "18 pairs in the input; 1 could not be scored" in report


def test_every_other_case_is_scored(run):
    every = datasets.Dataset.from_parquet(str(run["out"] / "scores_all.parquet"))
    scored = {r["id"] for r in every if r["irm"] is not None and r["lossdiff"] is not None
              and r["if"] is not None}
    assert scored == {f"r{i:02d}" for i in range(18)} - {"r12"}
    by_id = {r["id"]: r for r in every}
    # multi-turn transcript: the prompt is every turn before the last answer; strings stay strings
    assert (by_id["r15"]["prompt"], by_id["r15"]["chosen"]) == (HH, " 5")
    # extra columns travel unchanged (None in rows without them); non-ASCII text survives
    assert by_id["r17"]["source"] == "forum" and by_id["r17"]["tags"] == ["a", "b"]
    assert by_id["r16"]["source"] is None
    assert by_id["r16"]["prompt"] == "Qu'est-ce que 2 + 2 ? 😀"
    # duplicate content under two ids: two pairs, equal scores
    assert by_id["r13"]["irm"] == pytest.approx(by_id["r14"]["irm"])
    selected = datasets.load_from_disk(str(run["out"] / "selected"))
    assert set(selected.column_names) >= {"source", "score_chosen", "tags"}
    truncated = set(json.loads((run["out"] / "theta" / "train.json").read_text())["excluded"])
    assert truncated == {"r12"}


@pytest.mark.parametrize("row,message", [
    (_pair(90, chosen="  "), "train.jsonl:2: field 'chosen' is empty"),
    (_pair(91, rejected="4."), "train.jsonl:2: field 'rejected' is identical to 'chosen'"),
    (_pair(0), "train.jsonl:2: field 'id' duplicates the id of line 1"),
], ids=["empty-response", "identical", "duplicate-id"])
def test_malformed_rows_are_refused_in_one_line_before_any_work(run, row, message, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [_pair(0), row])
    res = CliRunner().invoke(main, ["select", "--model", run["model"], "--device", "cpu",
                                    "--train", train, "--val", run["val"],
                                    "--out", str(tmp_path / "o")])
    assert res.exit_code == 2
    assert res.stderr.strip() == f"gradproj: error: {tmp_path}/{message}"
    assert not (tmp_path / "o").exists()
