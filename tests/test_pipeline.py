"""gradproj select end to end on a tiny model: outputs, reuse, refusal to overwrite, compare."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from helpers import write_jsonl

import gradproj.pipeline.run as pipeline
from gradproj.cli import main
from gradproj.demo.synthetic import flip_records, make_records


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    train, flipped = flip_records(make_records(24, 0, "train"), 0.25, 1)
    return {"train": write_jsonl(root / "train.jsonl", train),
            "val": write_jsonl(root / "val.jsonl", make_records(6, 2, "val")),
            "flipped": flipped}


def _select(model, task, out, *extra):
    args = ["select", "--model", model, "--train", task["train"], "--val", task["val"],
            "--out", str(out), "--max-length", "96", "--batch-size", "4", "--lr", "0.01",
            "--proj-dim", "128", "--device", "cpu", *extra]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def test_select_writes_outputs_and_reuses_them(tiny_char_llama, task, tmp_path, monkeypatch):
    out = tmp_path / "sel"
    res = _select(tiny_char_llama, task, out)
    assert res.exit_code == 0, res.output
    assert "computed: warm-up θ, auxiliary θ_V, scores" in res.output
    for name in ("theta/adapter_config.json", "theta_v/adapter_config.json", "scores.parquet",
                 "selection.json", "selected.jsonl", "report.md", "scatter.png", "run.json"):
        assert (out / name).is_file(), name
    info = json.loads((out / "selection.json").read_text())
    assert info["method"] == "lossdiff-irm" and abs(info["kept"] - 0.64 * 24) <= 1
    assert sum(info["drop_reasons"].values()) >= info["dropped"]
    selected = [json.loads(x) for x in (out / "selected.jsonl").read_text().splitlines()]
    assert [r["id"] for r in selected] == info["kept_ids"]
    assert set(selected[0]) == {"id", "chosen", "rejected"}        # input format kept

    # a second run with another method trains nothing: only the store and IF are new
    def no_training(*a, **k):
        raise AssertionError("training ran again")
    monkeypatch.setattr(pipeline, "train_adapter", no_training)
    res = _select(tiny_char_llama, task, out, "--method", "tif")
    assert res.exit_code == 0, res.output
    assert "computed: store, influence" in res.output
    info = json.loads((out / "selection.json").read_text())
    assert info["method"] == "tif" and info["overlap_with_tif"] == 1.0
    assert (out / "if_hist.png").is_file() and (out / "influence" / "influence.parquet").is_file()
    res = _select(tiny_char_llama, task, out, "--method", "random", "--keep", "0.5")
    assert res.exit_code == 0 and "reused everything" in res.output
    assert json.loads((out / "selection.json").read_text())["kept"] == 12

    # other inputs into the same folder are refused without --force
    res = _select(tiny_char_llama, task, out, "--lr", "0.02")
    assert res.exit_code == 2 and "holds a run with other inputs (training differ)" in res.stderr
    assert (out / "theta").is_dir()           # nothing lost


def test_compare_two_runs(tiny_char_llama, task, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _select(tiny_char_llama, task, a).exit_code == 0
    assert _select(tiny_char_llama, task, b, "--seed", "1", "--lr", "0.02").exit_code == 0
    res = CliRunner().invoke(main, ["compare", str(a), str(b), "--out", str(tmp_path / "c.json")])
    assert res.exit_code == 0, res.output
    got = json.loads((tmp_path / "c.json").read_text())
    assert got["n_common"] == 24 and {"irm", "lossdiff"} <= set(got["scores"])
    # expected values computed independently from the two folders' files (pyarrow + scipy)
    import math

    import pyarrow.parquet as pq
    from scipy import stats

    ta, tb = (pq.read_table(d / "scores.parquet").to_pydict() for d in (a, b))
    irm_b = dict(zip(tb["id"], tb["irm"]))
    both = [(x, irm_b[i]) for i, x in zip(ta["id"], ta["irm"])
            if math.isfinite(x) and math.isfinite(irm_b[i])]
    assert got["scores"]["irm"]["n"] == len(both) >= 3
    assert got["scores"]["irm"]["spearman"] == pytest.approx(
        stats.spearmanr(*zip(*both)).statistic, abs=1e-12)
    kept = [set(json.loads((d / "selection.json").read_text())["kept_ids"]) for d in (a, b)]
    assert got["selection_overlap"] == pytest.approx(len(kept[0] & kept[1]) / min(map(len, kept)))
    same = CliRunner().invoke(main, ["compare", str(a), str(a), "--out", str(tmp_path / "d.json")])
    assert json.loads((tmp_path / "d.json").read_text())["scores"]["irm"]["spearman"] == \
        pytest.approx(1.0)


def test_a_run_folder_of_an_older_schema_is_refused_in_one_line(task, tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"model": {}, "training": {"beta": 0.1}}))
    res = _select("unused-model", task, out)
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        f"gradproj: error: {out}: a run folder of schema version 1 (this gradproj writes 3): "
        "rerun with --force to recompute it, or use another --out")
    assert json.loads((out / "run.json").read_text())["training"] == {"beta": 0.1}


def test_config_yaml_replays_a_selection(tiny_char_llama, task, tmp_path):
    """select writes config.yaml; --config reruns it into a new folder with the same result,
    and options on the command line override the file."""
    import yaml

    out = tmp_path / "first"
    res = _select(tiny_char_llama, task, out, "--method", "lossdiff-irm", "--keep", "0.5")
    assert res.exit_code == 0, res.output
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["command"] == "select" and config["settings"]["keep"] == 0.5
    assert config["settings"]["train_path"] == task["train"]
    assert config["gradproj_version"] and "torch" in config["packages"]
    again = CliRunner().invoke(main, ["select", "--config", str(out / "config.yaml"), "--out",
                                      str(tmp_path / "second")], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    first = json.loads((out / "selection.json").read_text())
    second = json.loads((tmp_path / "second" / "selection.json").read_text())
    assert second["kept_ids"] == first["kept_ids"] and second["settings"] == first["settings"]
    # a flag on the command line wins over the file
    third = CliRunner().invoke(main, ["select", "--config", str(out / "config.yaml"), "--out",
                                      str(out), "--method", "irm"], catch_exceptions=False)
    assert third.exit_code == 0, third.output
    assert json.loads((out / "selection.json").read_text())["method"] == "irm"
    # a config of another command is refused
    wrong = CliRunner().invoke(main, ["train", "--config", str(out / "config.yaml")])
    assert wrong.exit_code == 2 and "is a config of 'gradproj select'" in wrong.output
