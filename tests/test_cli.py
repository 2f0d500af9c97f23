"""The command line: one-line errors with exit code 2, and the working commands on tiny models."""

from __future__ import annotations

import json
import typing
from dataclasses import MISSING, dataclass, fields

import click
import pytest
from click.testing import CliRunner
from helpers import SAMPLE, write_jsonl

from gradproj.attribution.influence import InfluenceSettings
from gradproj.cli import main
from gradproj.cli.options import settings_from, settings_options
from gradproj.core.data import DataSettings
from gradproj.core.errors import BadInput
from gradproj.core.model import ModelSettings
from gradproj.core.objectives import OBJECTIVES, PreferenceSettings
from gradproj.evaluation.ablate import AblateSettings
from gradproj.demo.run import DemoSettings
from gradproj.core.settings import (
    Settings,
    at_least_one,
    field_choices,
    option_name,
    parse_floats,
    setting,
)
from gradproj.pipeline.run import SelectSettings
from gradproj.store.build import StoreSettings
from gradproj.training.train import TrainSettings

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


@pytest.mark.slow
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


COMMAND_SETTINGS = {
    "train": (ModelSettings, DataSettings, PreferenceSettings, TrainSettings),
    "evaluate": (ModelSettings, DataSettings, PreferenceSettings),
    "build-store": (ModelSettings, DataSettings, PreferenceSettings, StoreSettings),
    "influence": (DataSettings, InfluenceSettings),
    "select": (ModelSettings, PreferenceSettings, SelectSettings),
    "score": (ModelSettings, PreferenceSettings),
    "ablate": (ModelSettings, PreferenceSettings, AblateSettings),
    "demo": (DemoSettings,),
}


def _leaf_fields(cls, prefix=""):
    """(option name, field) of every command-line field of a settings class, nested ones too."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if not f.metadata.get("cli", True):
            continue
        kind = hints[f.name]
        if isinstance(kind, type) and issubclass(kind, Settings):
            sub = f.metadata.get("option")
            yield from _leaf_fields(kind, prefix + (f"{f.name}_" if sub is None else sub))
        else:
            yield option_name(prefix + (f.metadata.get("option") or f.name)), f


@pytest.mark.parametrize("command", list(COMMAND_SETTINGS))
def test_options_are_generated_from_the_settings_fields(command):
    """Each setting's option, help, default and choices come from its dataclass field."""
    params = {p.opts[0]: p for p in _command(command).params}
    for cls in COMMAND_SETTINGS[command]:
        for name, f in _leaf_fields(cls):
            assert name in params, (command, name)
            param = params[name]
            assert param.help == f.metadata["help"] and f.metadata["help"], (command, name)
            if field_choices(f):
                assert list(param.type.choices) == [str(c) for c in field_choices(f)]
            if f.default not in (MISSING, None) and not f.metadata.get("multiple"):
                want = f.default if not isinstance(f.default, tuple) else ",".join(
                    map(str, f.default))
                assert param.default == want, (command, name, param.default)


def test_loss_option_lists_exactly_the_registered_objectives():
    for command in ("train", "evaluate", "build-store", "select", "score"):
        loss = next(p for p in _command(command).params if p.name == "loss")
        assert list(loss.type.choices) == list(OBJECTIVES), command
        assert any(p.name == "loss_param" and p.multiple for p in _command(command).params)


@dataclass(frozen=True)
class Inner(Settings):
    width: int = setting(3, "Width.", check=at_least_one)


@dataclass(frozen=True)
class Outer(Settings):
    band: tuple = setting((0.1, 0.9), "Band.", parse=parse_floats)
    name: str = setting("a", "Name.", choices=("a", "b"))
    flag: bool = setting(False, "Flag.")
    inner: Inner = setting(default_factory=Inner)
    hidden: int = setting(7, "Python only.", cli=False)


def test_generated_options_round_trip_a_nested_settings_class():
    got = {}

    @click.command()
    @settings_options(Outer)
    def cmd(**kw):
        got["value"] = settings_from(Outer, kw)
        got["left"] = kw

    res = CliRunner().invoke(cmd, ["--band", "0.2,0.5", "--name", "b", "--flag",
                                   "--inner-width", "5"])
    assert res.exit_code == 0, res.output
    assert got["value"] == Outer(band=(0.2, 0.5), name="b", flag=True, inner=Inner(width=5))
    assert got["left"] == {}
    CliRunner().invoke(cmd, [])
    assert got["value"] == Outer()
    res = CliRunner().invoke(cmd, ["--name", "c"])
    assert res.exit_code == 2 and "'c' is not one of 'a', 'b'" in res.output
    with pytest.raises(BadInput, match="--width must be >= 1, got 0"):
        Outer(inner=Inner(width=0))
    res = CliRunner().invoke(cmd, ["--inner-width", "0"])
    assert isinstance(res.exception, BadInput)
    assert str(res.exception) == "--inner-width must be >= 1, got 0"
    assert _run("train", "--data", "x", "--out", "y", "--lora-r", "0").stderr.strip() == (
        "gradproj: error: --lora-r must be >= 1, got 0")
    assert "--hidden" not in CliRunner().invoke(cmd, ["--help"]).output


def test_an_internal_error_is_reported_as_a_bug(monkeypatch, sample_jsonl, tmp_path):
    import gradproj.training.evaluate as ev

    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(ev, "evaluate", broken)
    monkeypatch.setattr("gradproj.core.model.load_model", lambda settings: None)
    result = CliRunner().invoke(main, ["evaluate", "--data", sample_jsonl])
    assert result.exit_code == 1
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "gradproj: internal error (a bug in gradproj, please report it with the traceback "
        "above): RuntimeError: boom")


def _command(name):
    return main.commands[name]


def test_objective_is_recorded_end_to_end_and_a_mismatch_is_refused(tiny_llama, sample_jsonl,
                                                                    tmp_path):
    """train, build-store and select with --loss ipo carry one objective record; build-store
    with --loss dpo on the IPO adapter is refused in one line (exit 2) unless forced."""
    common = ["--model", tiny_llama, "--device", "cpu", "--max-length", "64"]
    ipo = ["--loss", "ipo", "--beta", "0.5"]
    theta = tmp_path / "theta"
    res = _run("train", *common, *ipo, "--data", sample_jsonl, "--out", str(theta),
               "--batch-size", "3")
    assert res.exit_code == 0, res.output
    res = _run("build-store", *common, *ipo, "--adapter", str(theta), "--data", sample_jsonl,
               "--out", str(tmp_path / "store"), "--proj-dim", "32")
    assert res.exit_code == 0, res.output
    res = _run("select", *common, *ipo, "--adapter", str(theta), "--train", sample_jsonl,
               "--val", sample_jsonl, "--out", str(tmp_path / "sel"), "--batch-size", "3",
               "--proj-dim", "32", "--with-if")
    assert res.exit_code == 0, res.output
    record = {"name": "ipo", "beta": 0.5, "params": {}}
    assert json.loads((theta / "train.json").read_text())["objective"] == record
    assert json.loads((tmp_path / "store" / "manifest.json").read_text())["objective"] == record
    selection = json.loads((tmp_path / "sel" / "selection.json").read_text())
    assert selection["objective"] == record
    assert json.loads((tmp_path / "sel" / "theta_v" / "train.json").read_text())[
        "objective"] == record
    assert json.loads((tmp_path / "sel" / "store" / "manifest.json").read_text())[
        "objective"] == record

    res = _run("build-store", *common, "--loss", "dpo", "--adapter", str(theta), "--data",
               sample_jsonl, "--out", str(tmp_path / "store-dpo"), "--proj-dim", "32")
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        f"gradproj: error: adapter {theta}: made with objective ipo (beta=0.5), requested dpo "
        "(beta=0.1) (use --force-objective to allow this)")
    assert not (tmp_path / "store-dpo").exists()
    res = _run("build-store", *common, "--loss", "dpo", "--adapter", str(theta), "--data",
               sample_jsonl, "--out", str(tmp_path / "store-dpo"), "--proj-dim", "32",
               "--force-objective")
    assert res.exit_code == 0, res.output
    res = _run("score", *common, "--loss", "simpo", "--adapter", str(theta), "--train",
               sample_jsonl, "--val", sample_jsonl, "--out", str(tmp_path / "score-simpo"))
    assert res.exit_code == 2 and "made with objective ipo" in res.stderr


@pytest.mark.parametrize("command", ["evaluate", "ablate", "demo"])
def test_single_process_commands_refuse_torchrun(command, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = {"evaluate": ["--data", "x"], "demo": [],
            "ablate": ["--train", "t", "--val", "v", "--test", "x", "--out", "o"]}[command]
    res = CliRunner().invoke(main, [command, *args])
    assert res.exit_code == 2
    assert res.stderr.strip() == (f"gradproj: error: gradproj {command} runs in one process; run "
                                  "it without torchrun (select, score, train, influence and "
                                  "build-store run across ranks)")
