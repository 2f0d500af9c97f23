"""Validation before work: every input is checked to hold scorable pairs (and a template for
conversational pairs) before anything trains, and a run that fails before its first stage
completes leaves --out as it found it, so the corrected rerun goes through."""

from __future__ import annotations

import json

from click.testing import CliRunner
from helpers import random_rows, write_jsonl

from gradproj.cli import main


def _select(model, train, val, out, *extra):
    return CliRunner().invoke(main, ["select", "--model", model, "--device", "cpu", "--train",
                                     train, "--val", val, "--out", str(out), "--batch-size", "4",
                                     "--lr", "0.01", *extra])


def test_unscorable_validation_set_is_refused_before_training(tiny_llama, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", random_rows(8))
    # training rows fit in 16 tokens; these keep 12 prompt tokens, leaving 4 for responses that
    # differ only in their fifth token
    long = "the cat sat on the mat and the dog ran on the mat"
    val = write_jsonl(tmp_path / "val.jsonl", [
        {"prompt": long, "chosen": " the cat sat on red", "rejected": " the cat sat on blue"},
        {"prompt": long + " or", "chosen": " a dog ran on red", "rejected": " a dog ran on no"}])
    res = _select(tiny_llama, train, val, tmp_path / "o", "--max-length", "16",
                  "--max-prompt-length", "12")
    assert res.exit_code == 2
    assert res.stderr.strip() == (f"gradproj: error: {val}: no pair is scorable at --max-length "
                                  "16 (2 × chosen and rejected identical after truncation)")
    assert not (tmp_path / "o").exists()


def test_a_run_failing_before_its_first_stage_leaves_out_as_found(tiny_llama, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", random_rows(8))
    val = write_jsonl(tmp_path / "val.jsonl", random_rows(4, seed=1))
    out = tmp_path / "o"
    res = _select(tiny_llama, train, val, out, "--group-by", "domain")   # fails after the claim
    assert res.exit_code == 2 and "domain" in res.stderr
    assert not out.exists()
    out.mkdir()                                  # a folder the user made: kept, left empty
    assert _select(tiny_llama, train, val, out, "--group-by", "domain").exit_code == 2
    assert out.is_dir() and list(out.iterdir()) == []
    # the corrected rerun, with other settings, is not refused as "a run with other inputs"
    res = _select(tiny_llama, train, val, out, "--max-length", "48", "--method", "irm")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "run.json").read_text())["pref"]["max_length"] == 48


def test_a_later_failure_keeps_what_the_run_computed(tiny_llama, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", random_rows(8))
    val = write_jsonl(tmp_path / "val.jsonl", random_rows(4, seed=1))
    out = tmp_path / "o"
    assert _select(tiny_llama, train, val, out, "--method", "irm").exit_code == 0
    assert _select(tiny_llama, train, val, out, "--group-by", "domain").exit_code == 2
    assert (out / "run.json").is_file() and (out / "theta" / "adapter_config.json").is_file()


def test_a_response_ending_on_a_user_turn_is_refused_in_one_line(tiny_llama, tmp_path):
    user, bot = ({"role": "user", "content": "hi"}, {"role": "assistant", "content": "yes"})
    no = {"role": "assistant", "content": "no"}
    rows = [{"chosen": [user, bot], "rejected": [user, no]},
            {"chosen": [user, bot, user], "rejected": [user, no]}]
    train = write_jsonl(tmp_path / "train.jsonl", rows)
    res = _select(tiny_llama, train, train, tmp_path / "o")
    assert res.exit_code == 2
    assert res.stderr.strip() == (f"gradproj: error: {train}:2: field 'chosen' must end on an "
                                  "assistant message, ends on a 'user' message (trl would train "
                                  "on it as the completion)")
    assert not (tmp_path / "o").exists()
