"""The command line: one-line errors with exit code 2, and the working commands on tiny models."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import SAMPLE, write_jsonl

from gradproj.cli import main

GOOD = {"prompt": "one plus two", "chosen": "three", "rejected": "four"}


def _run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _bad_cases(tmp_path):
    """(file, expected message after 'gradproj: error: ')."""
    cases = []

    def jsonl(name, rows):
        return write_jsonl(tmp_path / name, rows)

    p = jsonl("empty_chosen.jsonl", [GOOD, dict(GOOD, chosen="  ")])
    cases.append((p, f"{p}:2: field 'chosen' is empty"))
    p = jsonl("missing.jsonl", [{"prompt": "a", "chosen": "b"}])
    cases.append((p, f"{p}:1: field 'rejected' is missing"))
    p = jsonl("nonstr.jsonl", [dict(GOOD, chosen=3)])
    cases.append((p, f"{p}:1: field 'chosen' must be a string or a list of {{role, content}} "
                     "messages"))
    p = jsonl("same.jsonl", [dict(GOOD, rejected="three")])
    cases.append((p, f"{p}:1: field 'rejected' is identical to 'chosen'"))
    p = jsonl("dup.jsonl", [dict(GOOD, id="x"), dict(GOOD, id="x", chosen="two")])
    cases.append((p, f"{p}:2: field 'id' duplicates the id of line 1"))
    p = tmp_path / "badjson.jsonl"
    p.write_text(json.dumps(GOOD) + "\n{not json\n")
    cases.append((str(p), f"{p}:2: invalid JSON"))
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"prompt": "caf\xe9"}\n')
    cases.append((str(p), f"{p}:2: line is not valid UTF-8"))
    p = tmp_path / "empty.jsonl"
    p.write_text("")
    cases.append((str(p), f"{p}: no preference pairs (the dataset is empty)"))
    p = tmp_path / "pairs.txt"
    p.write_text("x")
    cases.append((str(p), f"{p}: unsupported file type '.txt'"))
    missing = str(tmp_path / "nope.jsonl")
    cases.append((missing, f"{missing}: no such file"))
    return cases


@pytest.mark.parametrize("command", ["evaluate", "train"])
def test_bad_input_exits_2_with_one_line(command, tmp_path):
    for path, expected in _bad_cases(tmp_path):
        args = [command, "--model", str(tmp_path / "no-model"), "--data", path]
        if command == "train":
            args += ["--out", str(tmp_path / "out")]
        result = _run(*args)
        assert result.exit_code == 2, (path, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr
        assert lines[0].startswith(f"gradproj: error: {expected}"), (lines[0], expected)
        assert not (tmp_path / "out").exists()    # nothing written


def test_bad_model_and_options_exit_2(tmp_path, sample_jsonl):
    result = _run("evaluate", "--model", str(tmp_path), "--data", sample_jsonl)
    assert result.exit_code == 2
    assert result.stderr.strip() == f"gradproj: error: {tmp_path}: not a model folder (no config.json)"
    result = _run("train", "--data", sample_jsonl, "--out", str(tmp_path / "o"), "--lr", "-1")
    assert result.exit_code == 2
    assert result.stderr.strip() == "gradproj: error: --lr must be > 0, got -1.0"
    result = _run("evaluate", "--data", sample_jsonl, "--field", "answer=x")
    assert result.exit_code == 2 and "answer=x" in result.stderr


def test_train_then_evaluate(tiny_llama, sample_jsonl, tmp_path):
    out = tmp_path / "theta"
    result = _run("train", "--model", tiny_llama, "--data", sample_jsonl, "--out", str(out),
                  "--epochs", "4", "--lr", "0.05", "--batch-size", "3", "--max-length", "64",
                  "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "8 steps" in result.stdout and (out / "optimizer.safetensors").is_file()
    # a second run into the same folder is refused without --force
    again = _run("train", "--model", tiny_llama, "--data", sample_jsonl, "--out", str(out))
    assert again.exit_code == 2 and "use --force" in again.stderr
    metrics = tmp_path / "m.json"
    result = _run("evaluate", "--model", tiny_llama, "--adapter", str(out), "--data",
                  sample_jsonl, "--max-length", "64", "--out", str(metrics), "--device", "cpu")
    assert result.exit_code == 0, result.output
    got = json.loads(metrics.read_text())
    assert got["n"] == len(SAMPLE) and got["accuracy"] == 1.0 and got["mean_margin"] > 0
    assert "accuracy" in result.stdout


def test_demo_runs_on_a_tiny_model(tiny_char_llama, tmp_path):
    result = _run("demo", "--model", tiny_char_llama, "--n-train", "8", "--n-test", "4",
                  "--out", str(tmp_path / "demo"), "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "θ + lossdiff-irm" in result.stdout and "warm-up θ" in result.stdout
    saved = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert saved["before"]["accuracy"] == 0.0        # h = 0 before any training
    assert [r["rule"] for r in saved["rules"]] == ["all", "random", "top-if", "tif", "lossdiff",
                                                   "irm", "lossdiff-irm"]
    assert saved["rules"][0]["kept"] == 8 and saved["rules"][1]["kept"] == 5
    assert saved["rules"][0]["flips_removed"] == 0.0
    flipped = json.loads((tmp_path / "demo" / "flipped.json").read_text())
    assert len(flipped) == 2


def test_every_command_documents_its_options():
    for command in ("train", "evaluate", "demo", "build-store", "inspect", "influence",
                    "select", "score", "compare"):
        result = _run(command, "--help")
        assert result.exit_code == 0 and "--" in result.output
