"""benchmarks.harness.bigbench and its command line benchmarks/bigbench_pairs.py on a tiny fake
BIG-bench sdist built here (no network, no real archive): pair content, skipped examples, seeded
splits, stratification, caps, the refusals and the written files."""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

from benchmarks import bigbench_pairs as cli  # noqa: E402

from gradproj.core.data import load_pairs  # noqa: E402
from benchmarks.harness import bigbench as bb

TASKS = ("alpha", "beta", "gamma")

ALPHA = {  # a task_prefix, no options in the prompt; four examples that are not usable pairs
    "name": "alpha", "task_prefix": "Answer yes or no: ", "append_choices_to_input": False,
    "examples": [{"input": f"is {i} even?", "target_scores": {"yes": int(i % 2 == 0),
                                                              "no": int(i % 2 == 1)}}
                 for i in range(10)] + [
        {"input": "is fire hot?", "target_scores": {"yes": 1, "sure": 1, "no": 0}},  # 10
        {"input": "is ice cold?", "target_scores": {"yes": 1, "indeed": 1}},          # 11
        {"input": "name a colour", "target": "red"},                                   # 12
        {"input": "is 2 even?", "target_scores": {"yes": 1, "no": 0}},                 # 13
        {"input": "is 7 big?", "target_scores": {"yes": 0, "no": 0}},                  # 14
    ]}
BETA = {  # BIG-bench defaults: options listed after "choice:", "Q:"/"A:" prefixes
    "name": "beta",
    "examples": [{"input": f"which animal is number {i}?",
                  "target_scores": {"cat": 1, "dog": 0, "cow": 0.0}} for i in range(10)]}
GAMMA = {  # the question only in the output prefix (as in anachronisms)
    "name": "gamma", "example_input_prefix": "\n", "append_choices_to_input": False,
    "example_output_prefix": "\nIs this old? ",
    "examples": [{"input": f"A story number {i}.", "target_scores": {"Yes": 1, "No": 0}}
                 for i in range(5)]}
RESERVED = {"name": "harmless", "examples": BETA["examples"]}


def make_archive(path: Path) -> Path:
    """A tar.gz laid out like the bigbench sdist, with the fake tasks and a reserved one."""
    members = {"alpha": ALPHA, "beta": BETA, "gamma": GAMMA, "hhh_alignment/harmless": RESERVED}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            raw = json.dumps(data).encode()
            info = tarfile.TarInfo(f"bigbench-1.0.0/bigbench/benchmark_tasks/{name}/task.json")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


@pytest.fixture
def archive(tmp_path):
    return make_archive(tmp_path / bb.ARCHIVE_NAME)


def pairs(archive, out, **kw):
    """Splits and meta written to ``out`` for the fake tasks."""
    settings = bb.PairSettings(tasks=TASKS, **kw)
    splits, meta, _, _ = bb.prepare(settings, cache_dir=out.parent, archive=archive, out=out)
    return splits, meta


def by_id(splits):
    return {r["id"]: r for records in splits.values() for r in records}


def test_pair_content(archive, tmp_path):
    records = by_id(pairs(archive, tmp_path / "out")[0])
    assert records["alpha-0"] == {"id": "alpha-0", "task": "alpha",
                                  "prompt": "Answer yes or no:\nQ: is 0 even?\nA:",
                                  "chosen": "yes", "rejected": "no"}
    assert records["gamma-3"]["prompt"] == "A story number 3.\nIs this old?"
    beta = records["beta-4"]
    assert beta["prompt"].startswith("Q: which animal is number 4?\n  choice: ")
    assert beta["prompt"].endswith("\nA:")
    assert sorted(beta["prompt"].split("\n")[1:4]) == ["  choice: cat", "  choice: cow",
                                                       "  choice: dog"]
    assert beta["chosen"] == "cat" and beta["rejected"] in ("dog", "cow")


def test_several_correct_options_are_picked_by_seed():
    records = [bb.example_pair("alpha", 10, ALPHA, ALPHA["examples"][10], seed)[0]
               for seed in range(20)]
    assert {r["chosen"] for r in records} == {"yes", "sure"}
    assert {r["rejected"] for r in records} == {"no"}


def test_skipped_examples_are_counted(archive, tmp_path):
    splits, meta = pairs(archive, tmp_path / "out")
    assert meta["skipped"] == {"alpha": {"no wrong option": 1, "no target_scores": 1,
                                         "duplicate": 1, "no correct option": 1},
                               "beta": {}, "gamma": {}}
    ids = by_id(splits)
    assert len(ids) == 11 + 10 + 5
    assert not {"alpha-11", "alpha-12", "alpha-13", "alpha-14"} & set(ids)


def test_same_seed_same_splits_other_seed_other_splits(archive, tmp_path):
    first = pairs(archive, tmp_path / "a", seed=3)[0]
    assert pairs(archive, tmp_path / "b", seed=3)[0] == first
    other = pairs(archive, tmp_path / "c", seed=4)[0]
    assert {r["id"] for r in other["test"]} != {r["id"] for r in first["test"]}
    assert by_id(other).keys() == by_id(first).keys()


def test_every_split_holds_every_task(archive, tmp_path):
    splits, meta = pairs(archive, tmp_path / "out", val=0.1, test=0.2)
    # alpha 11 pairs: val round(1.1) = 1, test round(2.2) = 2; gamma 5: at least 1 each
    assert meta["counts"] == {"alpha": {"train": 8, "val": 1, "test": 2},
                              "beta": {"train": 7, "val": 1, "test": 2},
                              "gamma": {"train": 3, "val": 1, "test": 1}}
    for records in splits.values():
        assert {r["task"] for r in records} == set(TASKS)
    assert not set.intersection(*({r["id"] for r in recs} for recs in splits.values()))


def test_caps_take_a_round_robin_subset(archive, tmp_path):
    splits, meta = pairs(archive, tmp_path / "out", max_train=4, max_test=2)
    assert [r["task"] for r in splits["train"]] == ["alpha", "beta", "gamma", "alpha"]
    assert [r["task"] for r in splits["test"]] == ["alpha", "beta"]
    assert len(splits["val"]) == 3
    assert meta["counts"]["alpha"] == {"train": 2, "val": 1, "test": 1}
    full = pairs(archive, tmp_path / "full")[0]
    assert splits["train"] == full["train"][:4]


def test_files_load_with_gradproj(archive, tmp_path):
    splits, _ = pairs(archive, tmp_path / "out")
    for split, records in splits.items():
        loaded = load_pairs(tmp_path / "out" / f"{split}.jsonl")
        assert [p.id for p in loaded] == [r["id"] for r in records]
        assert [p.chosen_text for p in loaded] == [r["chosen"] for r in records]
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["archive"]["sha256"] == bb.sha256_of(archive)
    assert meta["settings"]["tasks"] == list(TASKS)


def test_pairs_are_reused_until_the_settings_change(archive, tmp_path):
    settings = bb.PairSettings(tasks=TASKS)
    first = bb.prepare(settings, archive=archive, out=tmp_path / "out")
    again = bb.prepare(settings, archive=archive, out=tmp_path / "out")
    assert (first[3], again[3]) == (False, True) and again[0] == first[0]
    other = bb.prepare(bb.PairSettings(tasks=TASKS, max_val=1), archive=archive,
                       out=tmp_path / "out")
    assert other[3] is False and len(other[0]["val"]) == 1


def test_function_uses_the_cache_dir(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("GRADPROJ_CACHE", str(cache))
    (cache / "bigbench").mkdir(parents=True)
    make_archive(cache / "bigbench" / bb.ARCHIVE_NAME)
    splits = bb.bigbench_pairs(tasks=["gamma", "beta"], seed=2)
    assert {r["task"] for r in splits["train"]} == {"gamma", "beta"}
    assert (cache / "bigbench" / "pairs-2" / "meta.json").is_file()


@pytest.mark.parametrize("task", ["hhh_alignment", "hhh_alignment/harmless", "truthful_qa"])
def test_reserved_tasks_are_refused(task, archive, capsys):
    with pytest.raises(bb.BigbenchError, match="reserved for independent evaluation"):
        bb.PairSettings(tasks=("alpha", task))
    assert cli.main(["--tasks", f"alpha,{task}", "--archive", str(archive)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"task '{task}' is reserved" in err


def test_cli_prints_the_table(archive, tmp_path, capsys):
    assert cli.main(["--tasks", "alpha,gamma", "--archive", str(archive),
                    "--out", str(tmp_path / "out"), "--max-train", "5"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["task", "train", "val", "test", "skipped"]
    assert lines[1].split() == ["alpha", "3", "1", "2", "4"]
    assert lines[3].split() == ["total", "5", "2", "3", "4"]


@pytest.mark.parametrize("args, message", [
    (["--tasks", "alpha,nope"], "unknown task 'nope'"),
    (["--tasks", "alpha,alpha"], "task 'alpha' is named twice"),
    (["--tasks", "../alpha"], "bad task name"),
    (["--val", "0.5", "--test", "0.5"], "bad split fractions"),
    (["--max-val", "0"], "--max-val must be at least 1"),
])
def test_bad_input_exits_2(args, message, archive, tmp_path, capsys):
    assert cli.main([*args, "--archive", str(archive), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_too_small_task_is_refused(tmp_path):
    tiny = {"examples": BETA["examples"][:2]}
    with pytest.raises(bb.BigbenchError, match="only 2 usable pairs"):
        bb.split_task("tiny", bb.task_pairs("tiny", tiny, 0)[0], bb.PairSettings())


def test_missing_archive_and_failing_pip(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")

    def no_index(path):
        calls.append(path)
        raise OSError("no route to the index")

    monkeypatch.setattr(bb.subprocess, "run", fake_run)
    monkeypatch.setattr(bb, "fetch_from_index", no_index)      # never the network in a test
    assert cli.main(["--cache-dir", str(tmp_path / "cache")]) == 2
    assert calls[0][1:] == ["-m", "pip", "download", "--no-deps", "bigbench==1.0.0",
                            "-d", str(tmp_path / "cache")]
    assert calls[1] == tmp_path / "cache" / bb.ARCHIVE_NAME       # then the index's JSON API
    err = capsys.readouterr().err.splitlines()
    assert "pip could not download bigbench==1.0.0 (ERROR: No matching distribution" in err[-1]
    assert "nor the index serve it (no route to the index)" in err[-1]
    assert cli.main(["--archive", str(tmp_path / "missing.tar.gz")]) == 2
    assert "no archive at" in capsys.readouterr().err


def _fake_index(monkeypatch, payload: bytes, sha: str, url: str = "../../files/archive.tgz"):
    """urlopen serving a PEP 691 page that lists bb.ARCHIVE_NAME at a relative ``url``."""
    import io
    import urllib.request

    seen = []

    def urlopen(request, timeout=None):
        target = getattr(request, "full_url", request)
        seen.append(target)
        if target.endswith("/bigbench/"):
            page = {"files": [{"filename": bb.ARCHIVE_NAME, "url": url,
                               "hashes": {"sha256": sha}}]}
            return io.BytesIO(json.dumps(page).encode())
        return io.BytesIO(payload)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return seen


def test_fetch_from_index_checks_the_sha256_and_leaves_nothing_behind(tmp_path, monkeypatch):
    import hashlib

    payload = b"archive bytes" * 1000
    good = hashlib.sha256(payload).hexdigest()
    seen = _fake_index(monkeypatch, payload, good)
    target = tmp_path / bb.ARCHIVE_NAME
    bb.fetch_from_index(target, index="https://example.org/simple/")
    assert target.read_bytes() == payload
    assert seen == ["https://example.org/simple/bigbench/", "https://example.org/files/archive.tgz"]
    target.unlink()
    _fake_index(monkeypatch, payload, "0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        bb.fetch_from_index(target, index="https://example.org/simple")
    assert list(tmp_path.iterdir()) == []                 # no partial file left
    _fake_index(monkeypatch, payload, good)
    monkeypatch.setattr(bb, "ARCHIVE_NAME", "other.tar.gz")
    with pytest.raises(KeyError, match="lists no"):
        bb.fetch_from_index(tmp_path / "bigbench-1.0.0.tar.gz", index="https://example.org/simple")
