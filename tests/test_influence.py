"""Influence from the store against exact gradients; FAISS paths; TIF; mismatch refusal."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from helpers import random_rows, saved_adapter, write_jsonl
from scipy.stats import spearmanr

from gradproj.store.build import StoreSettings, build_store
from gradproj.cli import main
from gradproj.core.data import load_pairs
from gradproj.core.logprobs import pair_logprobs, sequence_logprobs
from gradproj.core.objectives import DPO, PreferenceSettings
from gradproj.core.errors import GradprojError
from gradproj.store.index import (
    IndexSettings,
    build_index,
    search,
    search_refined,
    stream_extremes,
    stream_topk,
)
from gradproj.attribution.influence import (
    InfluenceSettings,
    ValidationFeatures,
    compute_influence,
    mean_influence,
    tif_mask,
    top_influences,
    validation_features,
)
from gradproj.core.model import ModelSettings, load_model
from gradproj.projection.spec import ProjectorSpec
from gradproj.store.manifest import ROW_DTYPE, STATUS
from gradproj.store.shards import Store, StoreWriter
from gradproj.core.tokens import collate, tokenize_pairs

PREF32 = PreferenceSettings(max_length=32)


def _exact_grad(loaded, pairs):
    """∇_θ of the mean DPO loss over ``pairs`` (LoRA params, flattened), by plain autograd."""
    params = list(loaded.lora_parameters().values())
    tok = tokenize_pairs(pairs, loaded.tokenizer, 32).pairs
    batch = collate(tok, loaded.tokenizer.pad_token_id)
    ref = pair_logprobs(loaded.model, tok, loaded.tokenizer.pad_token_id)
    lp = sequence_logprobs(loaded.model, batch)
    n = len(tok)
    ref.policy_chosen, ref.policy_rejected = lp[:n], lp[n:]
    loss = DPO(0.1)(ref).mean()
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]).double()


@pytest.fixture(scope="module")
def built(tiny_llama, tmp_path_factory):
    root = tmp_path_factory.mktemp("infl")
    adapter = saved_adapter(tiny_llama, root / "adapter")
    train = write_jsonl(root / "train.jsonl", random_rows(40, seed=1))
    val = write_jsonl(root / "val.jsonl", random_rows(6, seed=7))
    loaded = load_model(ModelSettings(model=tiny_llama, adapter=adapter, device="cpu"))
    settings = StoreSettings(proj_dim=1024, batch_size=4, shard_size=16)
    store = build_store(loaded, load_pairs(train), settings, root / "store", pref=PREF32,
                        progress=False)
    return {"root": root, "loaded": loaded, "store": store, "train": train, "val": val,
            "adapter": adapter, "model": tiny_llama}


def test_store_if_tracks_exact_unprojected_if(built):
    loaded, store = built["loaded"], built["store"]
    val_pairs = load_pairs(built["val"])
    val = validation_features(store, loaded, val_pairs)
    projected = mean_influence(store, val)
    gv = _exact_grad(loaded, val_pairs)
    exact = np.array([float(_exact_grad(loaded, [p]) @ gv) for p in load_pairs(built["train"])])
    rho = spearmanr(projected, exact).statistic
    assert rho >= 0.95, rho
    # and the scale is right (the projection is unbiased): relative error of the vector
    assert np.linalg.norm(projected - exact) / np.linalg.norm(exact) < 0.25


def test_flat_faiss_equals_plain_matmul(built):
    store = built["store"]
    q = np.random.default_rng(0).standard_normal((5, store.k)).astype(np.float32)
    scores, ids = search(build_index(store), q, 10)
    full = store.features().astype(np.float32) @ q.T                    # [N, M]
    expected = np.argsort(-full, axis=0, kind="stable")[:10].T
    assert np.array_equal(ids, expected)
    assert np.allclose(scores, np.take_along_axis(full.T, expected, 1), rtol=1e-5, atol=1e-6)
    s2, i2 = stream_topk(store, q, 10, block_rows=7)
    assert np.array_equal(i2, expected)
    s3, i3 = stream_topk(store, q, 10, block_rows=7, largest=False)
    assert np.array_equal(i3, np.argsort(full, axis=0, kind="stable")[:10].T)


def _synthetic_store(path, n=3000, k=64, seed=0, bad=(), feats=None, bad_value=0.0):
    """A store written directly: clustered low-rank features (like real gradients); rows in
    ``bad`` are stored with status non-finite and every value ``bad_value`` (a build stores
    zeros; a large value checks that they are skipped, not just out-scored)."""
    rng = np.random.default_rng(seed)
    if feats is None:
        centers = rng.standard_normal((20, k))
        feats = centers[rng.integers(0, 20, n)] + 0.3 * rng.standard_normal((n, k))
    feats = np.array(feats, dtype=np.float64)
    status = np.zeros(n, np.uint8)
    feats[list(bad)], status[list(bad)] = bad_value, STATUS["non-finite"]
    spec = ProjectorSpec(kind="rademacher", k=k)
    with StoreWriter(path, {"projector": spec.to_dict()}) as w:
        for lo in range(0, n, 1000):
            with np.errstate(over="ignore"):     # a value beyond float16 stays inf
                f = feats[lo:lo + 1000].astype(np.float16)
            rows = np.zeros(len(f), ROW_DTYPE)
            rows["id"] = [f"r{i}" for i in range(lo, lo + len(f))]
            rows["norm"] = np.linalg.norm(f.astype(np.float32), axis=1)
            rows["status"] = status[lo:lo + 1000]
            w.add_shard(f, rows)
        w.finish()
    return Store(path)


@pytest.mark.parametrize("block_rows", [7, None])
def test_stream_extremes_match_a_brute_force_sort(tmp_path, block_rows):
    bad = [3, 500, 2999]
    store = _synthetic_store(tmp_path / "s", n=3000, bad=bad, bad_value=40.0)
    rng = np.random.default_rng(3)
    q = rng.standard_normal((6, store.k)).astype(np.float32)
    q[:, :32] = np.abs(q[:, :32])       # the bad rows score far above every other (high side)
    q[3:, :] = -np.abs(q[3:, :])        # ... and far below (low side) for the last queries
    scale = rng.uniform(0.5, 2.0, len(store)).astype(np.float32)
    valid = store.column("status") == 0
    assert valid.sum() == 3000 - len(bad)
    got = stream_extremes(store, q, 12, block_rows, valid=valid, row_scale=scale)
    full = (store.features().astype(np.float64) @ q.T.astype(np.float64)) * scale[:, None]
    for side, sign in (("high", -1), ("low", 1)):
        masked = np.where(valid[:, None], full, np.inf * sign)
        expected = np.argsort(sign * masked, axis=0, kind="stable")[:12].T
        scores, rows = got[side]
        assert np.array_equal(rows, expected)
        assert np.allclose(scores, np.take_along_axis(masked.T, expected, 1), rtol=1e-4)
    # fewer valid rows than top_k: the missing entries are (NaN, -1)
    small = _synthetic_store(tmp_path / "t", n=5, bad=[1, 2], bad_value=40.0)
    s, i = stream_topk(small, q, 4, valid=small.column("status") == 0)
    assert i.shape == (6, 4) and (i[:, 3] == -1).all() and np.isnan(s[:, 3]).all()
    assert set(i[0, :3]) == {0, 3, 4}
    assert stream_topk(small, q, 8)[1].shape == (6, 5)        # min(top_k, N) wide


@pytest.mark.parametrize("settings", [
    InfluenceSettings(top_k=5),                                          # FAISS flat
    InfluenceSettings(top_k=5, memory_budget_mb=0.01),                  # exact streaming
    InfluenceSettings(top_k=5, normalize=True),                          # cosine, streaming
    InfluenceSettings(top_k=5, index=IndexSettings("ivf-pq", nlist=8, m=16, nprobe=8)),
], ids=["flat", "stream", "cosine", "ivf-pq"])
def test_top_influences_never_list_nonfinite_rows(tmp_path, settings):
    # every finite row has a positive score: the zero rows of non-finite gradients would be the
    # "most harmful" if they were not skipped. Row 7 holds inf with status ok (a store built
    # before overflow was flagged): it is skipped too.
    rng = np.random.default_rng(4)
    n, bad = 2000, list(range(0, 2000, 97))
    feats = np.abs(rng.standard_normal((n, 64))) + 0.1
    feats[7, 0] = 1e6                                   # beyond float16: stored as inf
    store = _synthetic_store(tmp_path / "s", n=n, bad=bad, feats=feats)
    assert store.column("status")[7] == 0 and np.isinf(store.column("norm")[7])
    q = np.abs(rng.standard_normal((2, 64))).astype(np.float32) + 0.1
    val = ValidationFeatures(["v0", "v1"], q, {})
    out = top_influences(store, val, settings)
    banned = {f"r{i}" for i in bad + [7]}
    ok = np.setdiff1d(np.arange(n), bad + [7])
    f = store.features().astype(np.float64)[ok]
    if settings.normalize:
        f = f / np.linalg.norm(f, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    full = f @ q.T.astype(np.float64)
    for m, row in enumerate(out):
        for side in ("helpful", "harmful"):
            assert len(row[side]) == 5
            assert not banned & {h["id"] for h in row[side]}
            assert all(h["score"] > 0 for h in row[side])
            if settings.index.kind == "flat":     # exact paths: the true top 5 of the ok rows
                order = np.argsort(-full[:, m] if side == "helpful" else full[:, m])[:5]
                assert [h["id"] for h in row[side]] == [f"r{i}" for i in ok[order]]
    assert np.isnan(mean_influence(store, val)[bad + [7]]).all()


@pytest.mark.slow
def test_ivf_pq_recall_at_10(tmp_path):
    store = _synthetic_store(tmp_path / "s", n=10000)
    q = np.random.default_rng(1).standard_normal((50, store.k)).astype(np.float32)
    _, exact = search(build_index(store, IndexSettings("flat")), q, 10)
    index = build_index(store, IndexSettings("ivf-pq", nlist=32, m=32, nprobe=8))
    _, raw = search(index, q, 10)
    _, refined = search_refined(index, store, q, 10, refine=10)

    def recall(found):
        return np.mean([len(set(a) & set(e)) / 10 for a, e in zip(found, exact)])

    print(f"IVF-PQ recall@10 vs flat: {recall(raw):.3f} raw, {recall(refined):.3f} re-ranked")
    assert recall(refined) >= 0.9 and recall(refined) >= recall(raw)

    # the same index split into 4 files and searched through IndexShards: same answers
    from gradproj.store.index import load_or_build_index
    sharded = load_or_build_index(store, IndexSettings("ivf-pq", nlist=32, m=32, nprobe=8,
                                                       part_rows=2500))
    assert len(list((tmp_path / "s").glob("index-ivfpq-32-32.part*.faiss"))) == 4
    s_raw, i_raw = search(sharded, q, 10)
    assert recall(i_raw) == recall(raw)
    _, s_ref = search_refined(sharded, store, q, 10, refine=10)
    assert recall(s_ref) == recall(refined)


def test_blocks_under_a_memory_budget_give_the_same_result(tmp_path):
    store = _synthetic_store(tmp_path / "s", n=2500)
    rng = np.random.default_rng(2)
    val = ValidationFeatures([f"v{i}" for i in range(4)],
                             rng.standard_normal((4, store.k)).astype(np.float32), {})
    whole = mean_influence(store, val, block_rows=65536)
    blocked = mean_influence(store, val, block_rows=333)
    # same values up to float32 summation order, same ranking
    assert np.allclose(blocked, whole, rtol=1e-6, atol=1e-5)
    assert np.array_equal(np.argsort(blocked, kind="stable"), np.argsort(whole, kind="stable"))
    expected = store.features().astype(np.float32) @ val.features.mean(0)
    assert np.allclose(whole, expected, rtol=1e-5, atol=1e-4)
    in_memory = top_influences(store, val, InfluenceSettings(top_k=5))          # FAISS flat
    streamed = top_influences(store, val, InfluenceSettings(top_k=5, memory_budget_mb=0.1,
                                                            block_rows=400))
    for side in ("helpful", "harmful"):
        assert [[h["id"] for h in r[side]] for r in in_memory] == [
            [h["id"] for h in r[side]] for r in streamed]
        assert [h["score"] for r in in_memory for h in r[side]] == pytest.approx(
            [h["score"] for r in streamed for h in r[side]], rel=1e-5)
    assert (tmp_path / "s" / "index-flat.json").is_file()          # saved beside the store
    assert (tmp_path / "s" / "index-flat.faiss").is_file()


def test_index_is_rebuilt_only_when_the_store_changes(tmp_path):
    from gradproj.store.index import load_or_build_index
    store = _synthetic_store(tmp_path / "s", n=1200)
    load_or_build_index(store)
    path = tmp_path / "s" / "index-flat.faiss"
    mtime = path.stat().st_mtime_ns
    load_or_build_index(Store(tmp_path / "s"))
    assert path.stat().st_mtime_ns == mtime
    _synthetic_store(tmp_path / "s2", n=1200, seed=5)
    import shutil
    shutil.rmtree(tmp_path / "s" / "shards")
    shutil.copytree(tmp_path / "s2" / "shards", tmp_path / "s" / "shards")
    shutil.copy(tmp_path / "s2" / "manifest.json", tmp_path / "s" / "manifest.json")
    load_or_build_index(Store(tmp_path / "s"))
    assert path.stat().st_mtime_ns != mtime


def test_tif_mask_is_the_strict_quantile_band():
    scores = np.array([5.0, 1.0, np.nan, 3.0, 2.0, 4.0, 0.0])
    mask, (lo, hi) = tif_mask(scores, (0.2, 0.8))
    finite = scores[np.isfinite(scores)]
    assert (lo, hi) == (np.quantile(finite, 0.2), np.quantile(finite, 0.8))
    assert (lo, hi) == (1.0, 4.0)           # strict: the quantile values themselves are out
    assert mask.tolist() == [False, False, False, True, True, False, False]
    with pytest.raises(GradprojError, match="--tif-band"):
        InfluenceSettings(tif_band=(0.8, 0.2))


def test_query_with_other_model_or_spec_is_refused(built, tmp_path):
    store = built["store"]
    other = load_model(ModelSettings(model=built["model"], adapter=saved_adapter(
        built["model"], tmp_path / "other", seed=9), device="cpu"))
    with pytest.raises(GradprojError, match=r"field 'adapter.fingerprint'"):
        validation_features(store, other, load_pairs(built["val"]))
    fresh = load_model(ModelSettings(model=built["model"], device="cpu"))
    with pytest.raises(GradprojError, match=r"field 'adapter.fingerprint'"):
        validation_features(store, fresh, load_pairs(built["val"]))
    # a store whose projector spec was built differently
    import shutil
    shutil.copytree(store.root, tmp_path / "copy")
    m = json.loads((tmp_path / "copy" / "manifest.json").read_text())
    m["projector"]["seed"] = 3
    (tmp_path / "copy" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(GradprojError, match=r"field 'projector.seed'"):
        validation_features(Store(tmp_path / "copy"), built["loaded"], load_pairs(built["val"]))


def test_tracin_sums_weighted_stores(built):
    store = built["store"]
    val_pairs = load_pairs(built["val"])
    one = compute_influence([store], val_pairs, InfluenceSettings(top_k=3),
                            loaded=[built["loaded"]])
    two = compute_influence([store, store], val_pairs, InfluenceSettings(top_k=0),
                            weights=[0.5, 2.0], loaded=[built["loaded"]] * 2)
    assert np.allclose(two.scores, 2.5 * one.scores, rtol=1e-5)
    assert len(one.topk) == len(one.val_ids) and len(one.topk[0]["helpful"]) == 3
    assert one.rank[np.argmax(one.scores)] == 1


def test_influence_cli_writes_outputs(built, tmp_path):
    out = tmp_path / "inf"
    res = CliRunner().invoke(main, ["influence", "--store", str(built["store"].root), "--val",
                                    built["val"], "--out", str(out), "--top-k", "3",
                                    "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "kept" in res.output
    import pyarrow.parquet as pq
    table = pq.read_table(out / "influence.parquet").to_pydict()
    assert table["id"] == built["store"].ids() and len(table["if"]) == 40
    assert sum(table["tif"]) == json.loads((out / "summary.json").read_text())["tif_kept"]
    assert sorted(table["rank"]) == list(range(1, 41))
    lines = (out / "topk.jsonl").read_text().splitlines()
    assert len(lines) == 6 and len(json.loads(lines[0])["harmful"]) == 3
    res = CliRunner().invoke(main, ["influence", "--store", str(built["store"].root), "--val",
                                    built["val"], "--out", str(out), "--tif-band", "0.9,0.1"])
    assert res.exit_code == 2 and "--tif-band" in res.stderr


def test_adam_store_is_queried_with_plain_validation_gradients(tiny_llama, tmp_path):
    """LESS form: training rows Adam-preconditioned, the validation side plain gradients."""
    from gradproj.training.train import TrainSettings, train_adapter

    train = load_pairs(write_jsonl(tmp_path / "train.jsonl", random_rows(12, seed=3)))
    val = load_pairs(write_jsonl(tmp_path / "val.jsonl", random_rows(4, seed=4)))
    loaded = load_model(ModelSettings(model=tiny_llama, device="cpu"))
    train_adapter(loaded, train, TrainSettings(epochs=1, lr=1e-2, batch_size=4),
                  tmp_path / "theta", pref=PREF32, progress=False)
    loaded = load_model(ModelSettings(model=tiny_llama, adapter=str(tmp_path / "theta"),
                                      device="cpu"))
    stores = {g: build_store(loaded, train, StoreSettings(proj_dim=256, batch_size=4, grad_type=g),
                             tmp_path / g, pref=PREF32, progress=False)
              for g in ("sgd", "adam")}
    assert not np.allclose(stores["sgd"].features(), stores["adam"].features())
    v_sgd = validation_features(stores["sgd"], loaded, val)
    v_adam = validation_features(stores["adam"], loaded, val)
    assert np.array_equal(v_sgd.features, v_adam.features)
