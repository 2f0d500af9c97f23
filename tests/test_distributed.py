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
@pytest.mark.slow
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
    # merge copies rows: exactly the parts' rows, in order
    parts = np.concatenate([Store(tmp_path / "a").features(), Store(tmp_path / "b").features()])
    assert np.array_equal(merged.features(), parts)
    # the parts were batched differently from the single build (20 is not a multiple of the
    # batch size 3), so padding differs and the float sums may differ in the last float16 bit
    ref = single.features().astype(np.float32)
    diff = np.abs(merged.features().astype(np.float32) - ref).max()
    assert diff <= 1e-4 * np.abs(ref).max(), diff     # measured: 4.8e-7 of 0.029
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


def test_sharded_scores_merge_into_the_one_process_table(tiny_llama, tmp_path):
    """score_pairs(shard=(r, w)) for every r, merged, is bitwise the one-process table (also
    when a rank gets no batch), with the pairs excluded by tokenization in the meta once."""
    from helpers import saved_adapter

    from gradproj.attribution.scores import merge_score_tables, score_pairs
    from gradproj.core.data import pairs_from_records
    from gradproj.core.model import ModelSettings, load_model
    from gradproj.core.objectives import PreferenceSettings

    theta = saved_adapter(tiny_llama, tmp_path / "theta", seed=1)
    aux = saved_adapter(tiny_llama, tmp_path / "aux", seed=2)
    rows = random_rows(7, seed=5) + [{"prompt": "a " * 40, "chosen": "b", "rejected": "c"}]
    pairs = pairs_from_records(rows)
    loaded = load_model(ModelSettings(model=tiny_llama, adapter=theta, device="cpu"))
    pref = PreferenceSettings(max_length=32)
    whole = score_pairs(loaded, pairs, aux, pref, batch_size=2)
    assert whole.meta["excluded"]                  # the long prompt is excluded
    for world in (2, 3, 5):                        # 4 batches: rank 4 of 5 gets none
        parts = [score_pairs(loaded, pairs, aux, pref, batch_size=2, shard=(r, world))
                 for r in range(world)]
        merged = merge_score_tables(parts, pairs)
        assert merged.ids == whole.ids and merged.meta == whole.meta
        assert set(merged.columns) == set(whole.columns)
        for name, col in whole.columns.items():
            assert np.array_equal(merged.columns[name], col, equal_nan=True), (world, name)


# --- select under torchrun: every stage across 2 gloo ranks equals one process -------------

SELECT_ARGS = ["--max-length", "96", "--batch-size", "4", "--lr", "0.01", "--proj-dim", "128",
               "--device", "cpu", "--method", "lossdiff-irm", "--with-if"]
STAGE_LINES = ("gradproj: stage warm-up θ: ranks 0,1 (data-parallel, 2 pairs per rank per step)",
               "gradproj: stage auxiliary θ_V: ranks 0,1 (data-parallel, 2 pairs per rank",
               "gradproj: stage scores: ranks 0,1 (batches b % 2 == r of 4 pairs)",
               "gradproj: stage store: ranks 0,1 (shards i % 2 == r)",
               "gradproj: stage influence: rank 0 (ranks 1 wait)",
               "gradproj: stage selection, outputs, report: rank 0")


@pytest.fixture(scope="module")
def select_task(tmp_path_factory):
    from gradproj.demo.synthetic import flip_records, make_records

    root = tmp_path_factory.mktemp("dist-select")
    train, _ = flip_records(make_records(24, 0, "train"), 0.25, 1)   # 6 steps of 4 pairs
    return {"train": write_jsonl(root / "train.jsonl", train),
            "val": write_jsonl(root / "val.jsonl", make_records(8, 2, "val"))}  # 2 steps


def _select_cmd(model, task, out, nproc, *extra):
    args = ["select", "--model", model, "--train", task["train"], "--val", task["val"],
            "--out", str(out), *SELECT_ARGS, *extra]
    if nproc == 1:
        return [sys.executable, "-m", "gradproj", *args]
    return [str(TORCHRUN), "--standalone", f"--nproc_per_node={nproc}", "-m", "gradproj", *args]


def _scores(out: Path) -> dict:
    import pyarrow.parquet as pq

    return pq.read_table(out / "scores.parquet").to_pydict()


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to python")
@pytest.mark.slow
def test_two_rank_select_keeps_the_pairs_of_one_process(tiny_char_llama, select_task, tmp_path):
    runs = {}
    for nproc in (1, 2):
        start = time.perf_counter()
        res = subprocess.run(_select_cmd(tiny_char_llama, select_task, tmp_path / f"n{nproc}",
                                         nproc), capture_output=True, text=True, env=_env(),
                             timeout=400)
        assert res.returncode == 0, res.stderr[-3000:]
        runs[nproc] = res
        print(f"{nproc} process(es): {time.perf_counter() - start:.1f}s")
    one, two = tmp_path / "n1", tmp_path / "n2"

    # same kept ids
    kept = [json.loads((d / "selection.json").read_text())["kept_ids"] for d in (one, two)]
    assert kept[0] == kept[1] and len(kept[0]) > 0

    # the training steps saw the same pairs: per-step losses of θ and θ_V agree to 1e-5
    for name in ("theta", "theta_v"):
        la, lb = (json.loads((d / name / "train.json").read_text())["losses"] for d in (one, two))
        assert len(la) == len(lb) and np.allclose(la, lb, rtol=1e-5, atol=0), (name, la, lb)

    # same scores. The reference log-probs (base model, no training) are bitwise equal: rank r
    # scores the one-process run's batches b % 2 == r, so every forward pass is the same. The
    # adapters differ in the last float bits (DDP sums the two half-batch gradients in another
    # order than one backward over the whole batch), so the other columns get a tolerance of
    # 1e-4 of the column's scale (max |value|) plus the float32 rounding floor of a margin
    # β·(Σ log π − Σ log π_ref ...): β·ε32·(sum of |summed log-probs| of a pair); the margins
    # of an almost untrained tiny model are ~1e-2 while each log-prob is ~1e2.
    a, b = _scores(one), _scores(two)
    assert a["id"] == b["id"] and set(a) == set(b)
    for name in ("ref_chosen_logps", "ref_rejected_logps"):
        assert np.array_equal(a[name], b[name]), name
    beta = 0.1
    floor = beta * np.finfo(np.float32).eps * 4 * np.nanmax(np.abs(a["ref_chosen_logps"]
                                                                  + a["ref_rejected_logps"]))
    for name in sorted(set(a) - {"id"}):
        x, y = np.asarray(a[name], float), np.asarray(b[name], float)
        assert np.array_equal(np.isnan(x), np.isnan(y)), name
        delta, scale = np.nanmax(np.abs(x - y)), np.nanmax(np.abs(x))
        print(f"{name:18s} max|Δ| {delta:.3g}  scale {scale:.3g}  max|Δ|/scale "
              f"{delta / max(scale, 1e-30):.3g}  max elementwise |Δ|/|x| "
              f"{np.nanmax(np.abs(x - y) / np.maximum(np.abs(x), 1e-30)):.3g}")
        assert delta <= 1e-4 * scale + (floor if name != "if" else 0), name

    # the stores (built at θ of each run) agree within float16 storage precision
    fa, fb = (Store(d / "store").features().astype(np.float32) for d in (one, two))
    print(f"store max|Δ| {np.abs(fa - fb).max():.3g} scale {np.abs(fa).max():.3g}")
    assert np.allclose(fa, fb, rtol=1e-2, atol=1e-3 * np.abs(fa).max())

    # the log names the ranks of every stage; the summary is printed once; a single process
    # prints no stage lines
    for line in STAGE_LINES:
        assert line in runs[2].stderr, line
    assert runs[2].stdout.count("lossdiff-irm: kept") == 1
    assert "gradproj: stage" not in runs[1].stderr
    # rank 0 alone wrote the adapters (no temporary folders left by the other rank)
    assert not [p.name for p in two.iterdir() if p.name.startswith(".")]
    assert (two / "theta" / "train.json").is_file() and (two / "config.yaml").is_file()


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun is not installed next to python")
def test_two_rank_select_refuses_an_odd_batch(tiny_char_llama, select_task, tmp_path):
    res = subprocess.run(_select_cmd(tiny_char_llama, select_task, tmp_path / "odd", 2,
                                     "--batch-size", "3"),
                         capture_output=True, text=True, env=_env(), timeout=300)
    assert res.returncode != 0
    assert "gradproj: error: --batch-size 3 does not divide among 2 processes" in res.stderr
