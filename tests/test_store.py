"""The store: atomic shards, resume after SIGKILL, checksums, the build lock, inspect."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import random_rows, write_jsonl

from gradproj.store.build import StoreSettings, build_store
from gradproj.cli import main
from gradproj.core.data import load_pairs
from gradproj.core.errors import GradprojError
from gradproj.core.model import ModelSettings, load_model
from gradproj.core.objectives import PreferenceSettings
from gradproj.store.manifest import ROW_DTYPE
from gradproj.store.shards import Store, StoreLock, StoreWriter



SETTINGS = StoreSettings(proj_dim=64, batch_size=3, shard_size=5, proj_batch=4)
PREF = PreferenceSettings(max_length=32)


@pytest.fixture
def pairs_file(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", random_rows(23))


def _build(model_dir, pairs_file, out, **kw):
    loaded = load_model(ModelSettings(model=model_dir, device="cpu"))
    return build_store(loaded, load_pairs(pairs_file), kw.pop("settings", SETTINGS), out, pref=PREF,
                       progress=False, **kw)


def test_build_writes_shards_rows_and_manifest(tiny_llama, pairs_file, tmp_path):
    store = _build(tiny_llama, pairs_file, tmp_path / "s")
    assert store.complete and len(store) == 23 and len(store.shards) == 5
    assert [s.rows for s in store.shards] == [5, 5, 5, 5, 3]
    assert store.ids() == [f"p{i}" for i in range(23)]
    feats = store.features()
    assert feats.dtype == np.float16 and feats.shape == (23, 64)
    assert np.allclose(store.rows["norm"], np.linalg.norm(feats.astype(np.float32), axis=1))
    assert store.status_counts() == {"ok": 23}
    # fresh adapter: policy = reference, loss = log 2 for every pair
    assert np.allclose(store.rows["loss"], np.log(2), atol=1e-6)
    assert np.array_equal(store.rows["policy_chosen"], store.rows["ref_chosen"])
    assert not (tmp_path / "s" / "lock").exists()
    m = store.manifest
    assert m["projector"]["k"] == 64 and m["objective"] == {"name": "dpo", "beta": 0.1,
                                                             "params": {}}
    assert m["preference"]["max_length"] == 32 and m["schema_version"] == 2
    assert all(np.load(tmp_path / "s" / "shards" / f"{s.name}.rows.npy",
                       allow_pickle=False).dtype == ROW_DTYPE for s in store.shards)
    blocks = list(store.blocks(max_rows=4))
    assert np.array_equal(np.concatenate([b for _, b in blocks]), feats)
    assert [start for start, _ in blocks][:3] == [0, 4, 5]


def test_existing_store_needs_resume(tiny_llama, pairs_file, tmp_path):
    _build(tiny_llama, pairs_file, tmp_path / "s")
    with pytest.raises(GradprojError, match="a store already exists here"):
        _build(tiny_llama, pairs_file, tmp_path / "s")
    with pytest.raises(GradprojError, match="cannot resume: field 'projector' differs"):
        _build(tiny_llama, pairs_file, tmp_path / "s", resume=True,
               settings=StoreSettings(proj_dim=32, batch_size=3, shard_size=5))


def test_corrupt_or_missing_shard_is_refused(tiny_llama, pairs_file, tmp_path):
    _build(tiny_llama, pairs_file, tmp_path / "s")
    path = tmp_path / "s" / "shards" / "00002.grads.npy"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(GradprojError, match="shard 00002 is corrupt"):
        Store(tmp_path / "s")
    path.unlink()
    with pytest.raises(GradprojError, match=r"shard 00002 is missing \(00002.grads.npy\)"):
        Store(tmp_path / "s")


def test_unchanged_shards_are_not_hashed_again(tiny_llama, pairs_file, tmp_path):
    _build(tiny_llama, pairs_file, tmp_path / "s")
    files = sorted((tmp_path / "s" / "shards").glob("*.npy"))
    assert len(files) == 10
    # just-written files are never remembered as verified (mtime granularity), so ...
    (tmp_path / "s" / "verified.json").unlink(missing_ok=True)
    for f in files:
        os.utime(f)                        # "just written", whatever the build's speed
    assert Store(tmp_path / "s").hashed_files == 10
    old = time.time() - 60
    for f in files:
        os.utime(f, (old, old))
    assert Store(tmp_path / "s").hashed_files == 10          # ... the first open of old files
    assert Store(tmp_path / "s").hashed_files == 0           # remembered
    assert Store(tmp_path / "s", verify=True).hashed_files == 10
    assert Store(tmp_path / "s", verify=False).hashed_files == 0
    # a file changed since (new mtime) is hashed again and the corruption is found
    data = bytearray(files[4].read_bytes())
    data[-1] ^= 0x01
    files[4].write_bytes(bytes(data))
    with pytest.raises(GradprojError, match=f"shard {files[4].name[:5]} is corrupt"):
        Store(tmp_path / "s")
    # a file replaced by another (new inode), even with the old size and mtime
    data[-1] ^= 0x01
    tmp = files[4].with_name("x.tmp")
    tmp.write_bytes(bytes(data))
    os.utime(tmp, (old, old))
    os.replace(tmp, files[4])
    assert Store(tmp_path / "s").hashed_files == 1
    # a damaged record is ignored (everything hashed again), never a crash
    (tmp_path / "s" / "verified.json").write_text("[]")
    assert Store(tmp_path / "s").hashed_files == 10


def test_projection_overflowing_float16_is_flagged_not_stored_as_inf(tiny_llama, pairs_file):
    from gradproj.store.build import FeatureComputer
    from gradproj.core.tokens import tokenize_pairs

    loaded = load_model(ModelSettings(model=tiny_llama, device="cpu"))
    fc = FeatureComputer(loaded, SETTINGS, PREF.objective())
    project = fc.projector.project

    def huge_row_1(merged):
        out = project(merged)
        out[1] = 1e6           # beyond float16's 65504
        return out

    fc.projector.project = huge_row_1
    tok = tokenize_pairs(load_pairs(pairs_file), loaded.tokenizer, 32).pairs[:6]
    feats, rows = fc.features(tok)        # one projection call (proj_batch 4 < 2 batches of 3)
    fc.close()
    assert np.isfinite(feats).all() and fc.overflowed == 1
    assert rows["status"].tolist() == [0, 1, 0, 0, 0, 0]
    assert (feats[1] == 0).all() and rows["norm"][1] == 0


def test_second_builder_is_refused(tmp_path):
    with StoreLock(tmp_path / "s"):
        with pytest.raises(GradprojError, match="another build is writing this store"):
            with StoreWriter(tmp_path / "s", {"x": 1}):
                pass
    # a second process too (flock is per open file description)
    with StoreLock(tmp_path / "s2"):
        code = ("import sys; from gradproj.store.shards import StoreLock\n"
                f"try:\n    StoreLock(__import__('pathlib').Path({str(tmp_path / 's2')!r}))"
                ".__enter__()\nexcept Exception as e:\n    print(e); sys.exit(3)")
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert res.returncode == 3 and "another build is writing" in res.stdout


def _cli_build(model_dir, pairs_file, out, resume=False):
    args = [sys.executable, "-m", "gradproj", "build-store", "--model", model_dir, "--data",
            pairs_file, "--out", str(out), "--proj-dim", "64", "--batch-size", "3",
            "--shard-size", "5", "--proj-batch", "4", "--max-length", "32", "--device", "cpu"]
    return args + (["--resume"] if resume else [])


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume_equals_clean_build(tiny_llama, pairs_file,
                                                                 tmp_path):
    clean = _build(tiny_llama, pairs_file, tmp_path / "clean")
    rng = random.Random(0)
    out = tmp_path / "killed"
    kills = 0
    for target_rows in (5, 10, 15):
        proc = subprocess.Popen(_cli_build(tiny_llama, pairs_file, out, resume=out.exists()),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        manifest = out / "manifest.json"
        delay = rng.uniform(0.0, 0.3)   # land anywhere inside the next shard
        while proc.poll() is None:
            try:
                rows = json.loads(manifest.read_text())["rows"]
            except (OSError, json.JSONDecodeError, KeyError):
                rows = 0
            if rows >= target_rows:
                time.sleep(delay)
                os.kill(proc.pid, signal.SIGKILL)
                kills += 1
                break
            time.sleep(0.005)
        proc.wait()
    assert kills >= 2
    res = subprocess.run(_cli_build(tiny_llama, pairs_file, out, resume=True),
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    resumed = Store(out)
    assert resumed.complete and resumed.ids() == clean.ids()
    assert np.array_equal(resumed.features(), clean.features())
    assert np.array_equal(resumed.rows, clean.rows)


def test_inspect_shows_the_store(tiny_llama, pairs_file, tmp_path):
    _build(tiny_llama, pairs_file, tmp_path / "s")
    res = CliRunner().invoke(main, ["inspect", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert "23 in 5 shards; ok: 23" in res.output and "kind=rademacher" in res.output
    assert "k=64" in res.output and "(complete, schema 2)" in res.output
    assert "objective    dpo (beta=0.1), gradient sgd, max_length 32" in res.output
    res = CliRunner().invoke(main, ["inspect", str(tmp_path)])
    assert res.exit_code == 2 and "not a gradproj store" in res.stderr


def _as_schema_1(root):
    """Rewrite a store as gradproj wrote it before objectives (schema 1): rows without
    lengths, the manifest's ``loss`` {name, beta} and loss/beta/max_length in its settings."""
    from gradproj.store.manifest import ROW_DTYPE_V1
    from gradproj.store.shards import sha256_file

    m = json.loads((root / "manifest.json").read_text())
    for shard in m["shards"]:
        path = root / "shards" / f"{shard['name']}.rows.npy"
        rows = np.load(path)
        old = np.zeros(len(rows), ROW_DTYPE_V1)
        for name in ROW_DTYPE_V1.names:
            old[name] = rows[name]
        np.save(path, old)
        shard["rows_sha256"] = sha256_file(path)
    objective = m.pop("objective")
    m.pop("preference")
    m["loss"] = {"name": objective["name"], "beta": objective["beta"]}
    m["settings"].update(loss=objective["name"], beta=objective["beta"],
                         max_length=m["max_length"])
    m["schema_version"] = 1
    (root / "manifest.json").write_text(json.dumps(m))
    (root / "verified.json").unlink(missing_ok=True)


def test_a_schema_1_store_still_opens_and_answers_queries(tiny_llama, pairs_file, tmp_path):
    from gradproj.attribution.influence import compute_influence
    from gradproj.attribution.scores import irm_from_store

    new = _build(tiny_llama, pairs_file, tmp_path / "new")
    old_root = tmp_path / "old"
    _build(tiny_llama, pairs_file, old_root)
    _as_schema_1(old_root)
    old = Store(old_root)
    assert old.manifest["objective"] == {"name": "dpo", "beta": 0.1, "params": {}}
    assert old.manifest["schema_version_on_disk"] == 1
    assert np.isnan(old.rows["len_chosen"]).all() and np.isnan(old.column("len_rejected")).all()
    assert np.array_equal(old.rows["loss"], new.rows["loss"])
    assert irm_from_store(old)[1].tolist() == irm_from_store(new)[1].tolist()
    val = load_pairs(pairs_file)[:4]
    a = compute_influence([old], val, device="cpu")
    b = compute_influence([new], val, device="cpu")
    assert np.array_equal(a.scores, b.scores)
    res = CliRunner().invoke(main, ["inspect", str(old_root)])
    assert res.exit_code == 0 and "schema 1" in res.output

    m = json.loads((old_root / "manifest.json").read_text())
    m["schema_version"] = 3
    (old_root / "manifest.json").write_text(json.dumps(m))
    res = CliRunner().invoke(main, ["inspect", str(old_root)])
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        f"gradproj: error: {old_root / 'manifest.json'}: schema version 3 is not one this "
        "gradproj reads (1, 2): rebuild the store with gradproj build-store")
