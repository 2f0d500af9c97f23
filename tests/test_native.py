"""The fused float16 × float32 matrix-vector kernel of the mean influence query, against a
float64 reference and the torch path it replaces."""

from __future__ import annotations

import numpy as np
import pytest

from gradproj.store import index as index_mod
from gradproj.store import native


@pytest.fixture(scope="module")
def lib():
    if native.library() is None:
        pytest.skip("no C compiler here: the torch path serves the mean query")
    return native.library()


@pytest.mark.parametrize("k", [1, 15, 16, 64, 200, 8192])
def test_half_matvec_equals_a_float64_reference(lib, k):
    rng = np.random.default_rng(k)
    x = rng.standard_normal((37, k)).astype(np.float16)
    v = rng.standard_normal(k).astype(np.float32)
    out = np.full(37, np.nan, np.float32)
    assert native.half_matvec(x, v, out, threads=2)
    ref = x.astype(np.float64) @ v.astype(np.float64)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_half_matvec_converts_every_kind_of_half(lib):
    """Subnormals, signed zeros, infinities and NaN in the scalar tail (k = 7) and the vector
    body (k = 64) alike."""
    specials = np.array([6e-8, -6e-8, 1e-5, -0.0, 0.0, 3e-7, 65504], np.float16)
    for k in (7, 64):
        x = np.resize(specials, (1, k)).astype(np.float16)
        v = np.ones(k, np.float32)
        out = np.zeros(1, np.float32)
        v[x[0] == 65504] = 0.0       # keep the small values' sum out of 65504's rounding
        assert native.half_matvec(x, v, out, threads=1)
        assert out[0] == pytest.approx(float((x.astype(np.float64) @ v)[0]), rel=1e-6, abs=0)
        big = np.full((1, k), 65504, np.float16)
        assert native.half_matvec(big, np.ones(k, np.float32), out, threads=1)
        assert out[0] == 65504.0 * k
        for bad, want in ((np.inf, np.inf), (np.nan, np.nan)):
            y = x.copy()
            y[0, k - 1] = bad
            assert native.half_matvec(y, np.ones(k, np.float32), out, threads=1)
            assert (np.isnan(out[0]) if np.isnan(want) else out[0] == want)


def test_half_matvec_refuses_other_layouts(lib):
    x = np.ones((4, 8), np.float16)
    out = np.zeros(4, np.float32)
    assert not native.half_matvec(x[:, ::2], np.ones(4, np.float32), out, 1)   # strided
    assert not native.half_matvec(x.astype(np.float32), np.ones(8, np.float32), out, 1)
    assert not native.half_matvec(x, np.ones(8, np.float64), out, 1)


def test_mean_query_is_the_same_with_and_without_the_kernel(tmp_path, monkeypatch):
    """stream_matvec on a store of several shards: the fused kernel and the torch path agree to
    float32 rounding (and the torch path is what runs where there is no compiler)."""
    from gradproj.projection.spec import ProjectorSpec
    from gradproj.store.manifest import ROW_DTYPE
    from gradproj.store.shards import Store, StoreWriter

    rng = np.random.default_rng(0)
    spec = ProjectorSpec(kind="rademacher", k=96).to_dict()
    with StoreWriter(tmp_path / "store", {"projector": spec}) as w:
        for lo in range(0, 300, 128):
            f = rng.standard_normal((min(128, 300 - lo), 96)).astype(np.float16)
            rows = np.zeros(len(f), ROW_DTYPE)
            rows["id"] = [f"r{i}" for i in range(lo, lo + len(f))]
            w.add_shard(f, rows)
        w.finish()
    store = Store(tmp_path / "store")
    assert len(store.shards) == 3
    feats = store.features()
    v = np.random.default_rng(1).standard_normal((96, 1)).astype(np.float32)
    fused = index_mod.stream_matvec(store, v)
    monkeypatch.setattr(native, "library", lambda: None)
    plain = index_mod.stream_matvec(store, v)
    ref = feats.astype(np.float64) @ v.astype(np.float64)
    np.testing.assert_allclose(plain, ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(fused, ref, rtol=1e-5, atol=1e-4)
