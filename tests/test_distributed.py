"""torchrun builds (gloo on CPU): equal to a one-process build, per-rank resume, store merge."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import random_rows, write_jsonl

from gradproj.cli import main
from gradproj.core.errors import GradprojError
from gradproj.store.shards import Store, merge_stores

TORCHRUN = Path(sys.executable).with_name("torchrun")
ARGS = ["--proj-dim", "64", "--batch-size", "3", "--shard-size", "5", "--proj-batch", "4",
        "--max-length", "32", "--device", "cpu"]


def _cmd(model, data, out, nproc, resume=False):
    base = ["build-store", "--model", model, "--data", data, "--out", str(out), *ARGS]
    if resume:
        base.append("--resume")
    if nproc == 1:
        return [sys.executable, "-m", "gradproj", *base]
    return [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", "-m", "gradproj", *base]


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("dist") / "train.jsonl", random_rows(33, seed=3))


@pytest.fixture(scope="module")
def single(tiny_llama, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "s"
    res = subprocess.run(_cmd(tiny_llama, data, out, 1), capture_output=True, text=True,
                         env=_env())
    assert res.returncode == 0, res.stderr
    return Store(out)


def _same(a: Store, b: Store):
    assert a.ids() == b.ids()
    assert np.array_equal(a.features(), b.features())
    assert np.array_equal(a.rows, b.rows)
    assert [vars(s) for s in a.shards] == [vars(s) for s in b.shards]


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to python")
def test_two_rank_gloo_build_equals_one_process(tiny_llama, data, single, tmp_path):
    out = tmp_path / "two"
    res = subprocess.run(_cmd(tiny_llama, data, out, 2), capture_output=True, text=True,
                         env=_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    two = Store(out)
    assert two.complete and two.manifest["world_size"] == 2
    _same(two, single)
    owners = {int(s["name"]) % 2 for s in json.loads(
        (out / "ranks" / "rank-001-of-002.json").read_text())["shards"]}
    assert owners == {1}                        # rank 1 wrote the odd shards


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to python")
def test_killed_rank_resumes(tiny_llama, data, single, tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(tiny_llama, data, out, 2), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=_env())
    manifest = out / "ranks" / "rank-001-of-002.json"
    killed = False
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        try:
            if json.loads(manifest.read_text())["rows"] >= 5:
                pid = int((out / "lock-rank-1").read_text().split()[1])
                os.kill(pid, signal.SIGKILL)    # rank 1 dies mid-build
                killed = True
                break
        except (OSError, ValueError, KeyError, IndexError):
            pass
        time.sleep(0.005)
    proc.wait(timeout=120)
    assert killed and proc.returncode != 0
    assert not (out / "manifest.json").exists()
    res = subprocess.run(_cmd(tiny_llama, data, out, 2, resume=True), capture_output=True,
                         text=True, env=_env(), timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    _same(Store(out), single)


def test_merge_joins_same_spec_and_refuses_others(tiny_llama, single, tmp_path):
    rows = random_rows(33, seed=3)
    a = write_jsonl(tmp_path / "a.jsonl", rows[:20])
    b = write_jsonl(tmp_path / "b.jsonl", rows[20:])
    for name, path in (("a", a), ("b", b)):
        res = CliRunner().invoke(main, ["build-store", "--model", tiny_llama, "--data", path,
                                        "--out", str(tmp_path / name), *ARGS])
        assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["store", "merge", str(tmp_path / "a"), str(tmp_path / "b"),
                                    "--out", str(tmp_path / "ab")])
    assert res.exit_code == 0, res.output
    merged = Store(tmp_path / "ab")
    assert merged.ids() == single.ids()
    assert np.array_equal(merged.features(), single.features())
    with pytest.raises(GradprojError, match="pair id 'p0' is also in"):
        merge_stores([Store(tmp_path / "a"), Store(tmp_path / "a")], tmp_path / "aa")
    shutil.copytree(tmp_path / "b", tmp_path / "b2")
    m = json.loads((tmp_path / "b2" / "manifest.json").read_text())
    m["projector"]["k"] = 128
    (tmp_path / "b2" / "manifest.json").write_text(json.dumps(m))
    res = CliRunner().invoke(main, ["store", "merge", str(tmp_path / "a"), str(tmp_path / "b2"),
                                    "--out", str(tmp_path / "ab2")])
    assert res.exit_code == 2 and "cannot merge: field 'projector' differs" in res.stderr
    assert not (tmp_path / "ab2").exists()
