"""Tests of gradproj.projection (hash projectors) and gradproj.trak_projectors (traker adapters)."""

from __future__ import annotations

import math
import random

import pytest
import torch

from gradproj.core.errors import GradprojError
from helpers import entry_reference as _entry_reference
from gradproj.projection.base import HashProjector, SJLTProjector, projection_block
from gradproj.projection.factory import make_projector, projector_from_spec
from gradproj.projection.spec import PROJECTION_VERSION, ProjectorSpec, layout_hash

HASH_KINDS = ["rademacher", "gaussian", "sjlt"]
LAYOUT = [("layers.0.q_proj.lora_A.weight", 640), ("layers.0.q_proj.lora_B.weight", 960),
          ("layers.1.v_proj.lora_A.weight", 33), ("layers.1.v_proj.lora_B.weight", 1500)]
P = sum(n for _, n in LAYOUT)
HAS_CUDA = torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests make many small tensors; one intra-op thread keeps them fast even when other
    processes share the cores (OpenMP barriers stall on a descheduled thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def split(x: torch.Tensor) -> dict[str, torch.Tensor]:
    return dict(zip([n for n, _ in LAYOUT], x.split([n for _, n in LAYOUT], dim=1), strict=True))


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> None:
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()))


# ------------------------------------------------------------------ hash blocks vs reference

@pytest.mark.parametrize("kind", HASH_KINDS)
def test_block_matches_scalar_reference(kind: str) -> None:
    rng = random.Random(kind)
    for seed, name, k in [(0, "a.weight", 64), (12345, "model.layers.3.lora_B", 37), (-7, "x", 2)]:
        spec = ProjectorSpec(kind, k, seed=seed, sjlt_s=3)
        c0, c1 = 45, 45 + 1000   # start and stop not aligned to the 32-column hash words
        block = projection_block(spec, name, 5000, c0, c1)
        assert block.shape == (k, c1 - c0) and block.dtype == torch.float32
        for _ in range(150):
            r, c = rng.randrange(k), rng.randrange(c0, c1)
            want = _entry_reference(seed, name, r, c, kind, k=k, sjlt_s=3)
            assert block[r, c - c0].item() == pytest.approx(want, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("kind", HASH_KINDS)
def test_block_is_independent_of_blocking(kind: str) -> None:
    spec = ProjectorSpec(kind, 48, seed=3)
    whole = projection_block(spec, "w", 700, 0, 700)
    parts = torch.cat([projection_block(spec, "w", 700, a, b)
                       for a, b in [(0, 1), (1, 31), (31, 64), (64, 333), (333, 700)]], dim=1)
    assert torch.equal(whole, parts)


def test_block_bounds_are_checked() -> None:
    spec = ProjectorSpec("rademacher", 8)
    for c0, c1 in [(-1, 4), (4, 4), (0, 11)]:
        with pytest.raises(GradprojError):
            projection_block(spec, "w", 10, c0, c1)
    with pytest.raises(GradprojError):
        projection_block(ProjectorSpec("trak-basic", 8), "w", 10, 0, 4)


def test_rademacher_entries_are_balanced_signs() -> None:
    block = projection_block(ProjectorSpec("rademacher", 256, seed=1), "p", 1 << 20, 100, 4196)
    assert set(block.unique().tolist()) == {-1.0, 1.0}
    assert abs(block.mean().item()) < 5 / math.sqrt(block.numel())
    # neighbouring columns (same hash word) and rows are uncorrelated
    assert abs((block[:, :-1] * block[:, 1:]).mean().item()) < 5 / math.sqrt(block.numel())
    assert abs((block[:-1] * block[1:]).mean().item()) < 5 / math.sqrt(block.numel())


def test_gaussian_entries_are_standard_normal() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    block = projection_block(ProjectorSpec("gaussian", 256, seed=1), "p", 1 << 20, 7, 4103)
    n = block.numel()
    assert torch.isfinite(block).all()
    assert abs(block.mean().item()) < 5 / math.sqrt(n)
    assert abs(block.std().item() - 1) < 5 * math.sqrt(2 / n)
    assert abs((block[:, 0::2] * block[:, 1::2]).mean().item()) < 5 / math.sqrt(n / 2)
    assert scipy_stats.kstest(block.flatten()[:50_000].double().numpy(), "norm").pvalue > 1e-4


def test_sjlt_block_columns_have_s_signed_entries() -> None:
    spec = ProjectorSpec("sjlt", 4096, seed=2, sjlt_s=4)
    block = projection_block(spec, "p", 5000, 0, 5000)
    # with k = 4096 two of the 4 buckets of a column rarely collide: |entries| sum to 4
    assert (block.abs().sum(0) <= 4).all()
    assert (block.abs().sum(0) == 4).float().mean() > 0.99
    assert abs(block.sum().item()) < 5 * math.sqrt(4 * 5000)


def test_name_and_seed_change_the_block() -> None:
    spec = ProjectorSpec("rademacher", 32, seed=0)
    a = projection_block(spec, "layers.0.lora_A", 512, 0, 512)
    assert not torch.equal(a, projection_block(spec, "layers.1.lora_A", 512, 0, 512))
    assert not torch.equal(a, projection_block(ProjectorSpec("rademacher", 32, seed=1),
                                               "layers.0.lora_A", 512, 0, 512))
    # rows are counters of their own: the first rows do not depend on k
    wide = projection_block(ProjectorSpec("rademacher", 64, seed=0), "layers.0.lora_A", 512, 0, 512)
    assert torch.equal(wide[:32], a)


# ------------------------------------------------------------------ projector invariances

@pytest.mark.parametrize("kind", HASH_KINDS)
def test_projector_equals_block_matmul(kind: str) -> None:
    k, x = 96, randn(5, P, seed=1)
    proj = make_projector(kind, k, LAYOUT, seed=9)
    blocks = torch.cat([projection_block(proj.spec, n, m, 0, m) for n, m in LAYOUT], dim=1)
    scale = 1 / math.sqrt(4 if kind == "sjlt" else k)
    close(proj.project(x), x @ blocks.T * scale)


@pytest.mark.parametrize("kind", HASH_KINDS)
def test_same_seed_same_output_however_computed(kind: str) -> None:
    k, x = 128, randn(6, P, seed=2)
    base = make_projector(kind, k, LAYOUT, seed=5)
    y = base.project(x)
    assert y.shape == (6, k) and y.dtype == torch.float32
    close(torch.cat([base.project(x[i:i + 1]) for i in range(6)]), y)           # batch size
    for block_cols in (1, 33, 100_000):                                          # block size
        close(make_projector(kind, k, LAYOUT, seed=5, block_cols=block_cols).project(x), y)
    pieces = split(x)
    close(base.project(pieces), y)                                               # dict vs tensor
    close(sum(base.project({n: t}) for n, t in pieces.items()), y)               # chunkings
    half = dict(list(pieces.items())[:2])
    close(base.project(half) + base.project({n: t for n, t in pieces.items() if n not in half}), y)
    cached = make_projector(kind, k, LAYOUT, seed=5, cache_mb=1.0)               # cache on
    close(cached.project(x), y)
    close(cached.project(x), y)                                                  # cache warm
    close(make_projector(kind, k, LAYOUT, seed=5, dtype="float64").project(x), y)
    assert not torch.allclose(make_projector(kind, k, LAYOUT, seed=6).project(x), y, atol=1e-2)
    renamed = [("renamed" if i == 0 else n, m) for i, (n, m) in enumerate(LAYOUT)]
    y_renamed = make_projector(kind, k, renamed, seed=5).project(x)
    assert not torch.allclose(y_renamed, y, atol=1e-2)
    close(y_renamed - make_projector(kind, k, renamed[:1], seed=5).project(x[:, :640]),
          y - base.project({LAYOUT[0][0]: x[:, :640]}), rtol=1e-4)


def test_cache_budget_takes_parameters_in_layout_order() -> None:
    # k=64 float32: 256 bytes per column; 0.5 MiB holds 2048 columns
    proj = HashProjector(ProjectorSpec("rademacher", 64), LAYOUT, cache_mb=0.5)
    assert proj._cache_names == {LAYOUT[0][0], LAYOUT[1][0], LAYOUT[2][0]}
    assert HashProjector(ProjectorSpec("rademacher", 64), LAYOUT)._cache_names == set()
    sj = SJLTProjector(ProjectorSpec("sjlt", 64), LAYOUT, cache_mb=1.0)
    assert sj._cache_names == {n for n, _ in LAYOUT}


def test_pieces_may_keep_their_shape() -> None:
    proj = make_projector("rademacher", 16, [("a", 12), ("b", 5)])
    x = randn(3, 17, seed=4)
    close(proj.project({"a": x[:, :12].reshape(3, 3, 4), "b": x[:, 12:]}), proj.project(x))


@pytest.mark.parametrize("bad", [
    lambda: randn(2, P + 1), lambda: randn(P), lambda: {"nope": randn(2, 3)}, lambda: {},
    lambda: {LAYOUT[0][0]: randn(2, 641)}, lambda: [1, 2],
    lambda: {LAYOUT[0][0]: randn(2, 640), LAYOUT[2][0]: randn(3, 33)},
    lambda: {LAYOUT[2][0]: torch.ones(2, 33, dtype=torch.int64)},
])
def test_bad_gradients_are_refused(bad) -> None:
    with pytest.raises(GradprojError):
        make_projector("rademacher", 8, LAYOUT).project(bad())


# ------------------------------------------------------------------ JL property

@pytest.mark.parametrize("kind", HASH_KINDS)
@pytest.mark.parametrize("k", [256, 1024])
def test_inner_products_are_unbiased_with_jl_variance(kind: str, k: int) -> None:
    n_seeds, dim, rho = 200, 5000, 0.6     # 200 independent seeds
    a = randn(dim, seed=10, dtype=torch.float64)
    a /= a.norm()
    o = randn(dim, seed=11, dtype=torch.float64)
    o -= (o @ a) * a
    o /= o.norm()
    b = rho * a + math.sqrt(1 - rho**2) * o
    ab = torch.stack([a, b]).float()
    layout = [("w", dim)]
    errs = []
    for seed in range(n_seeds):
        y = make_projector(kind, k, layout, seed=seed, block_cols=dim).project(ab).double()
        errs.append(float(y[0] @ y[1]) - rho)
    err = torch.tensor(errs, dtype=torch.float64)
    sq = float((a * a * b * b).sum())
    # exact variances: rademacher (1+ρ²−2Σa²b²)/k, gaussian (1+ρ²)/k, sjlt (1+ρ²−(2/s)Σa²b²)/k
    cross = {"rademacher": 2 * sq, "gaussian": 0.0, "sjlt": 2 * sq / 4}[kind]
    theory = (1 + rho**2 - cross) / k
    var = float(err.var())
    assert 0.5 * theory < var < 1.5 * theory <= 1.5 * 2 / k
    assert abs(float(err.mean())) < 4 * math.sqrt(var / n_seeds)


# ------------------------------------------------------------------ spec and layout

def test_spec_round_trip_and_diff() -> None:
    spec = ProjectorSpec("sjlt", 512, seed=3, layout_hash=layout_hash(LAYOUT), sjlt_s=2)
    d = spec.to_dict()
    assert d["version"] == PROJECTION_VERSION and d["kind"] == "sjlt"
    assert ProjectorSpec.from_dict(d) == spec
    assert spec.diff(spec) == []
    other = ProjectorSpec("sjlt", 256, seed=3, layout_hash="", sjlt_s=2)
    assert spec.diff(other) == ["k", "layout_hash"]
    assert ProjectorSpec("rademacher", 8).diff(ProjectorSpec("gaussian", 8, seed=1)) == [
        "kind", "seed"]


@pytest.mark.parametrize("kwargs", [
    {"kind": "fourier", "k": 8}, {"kind": "rademacher", "k": 0}, {"kind": "rademacher", "k": 2.0},
    {"kind": "rademacher", "k": True}, {"kind": "sjlt", "k": 8, "sjlt_s": 0},
    {"kind": "rademacher", "k": 8, "dtype": "int8"}, {"kind": "rademacher", "k": 8, "seed": "0"},
    {"kind": "rademacher", "k": 1 << 30},
])
def test_invalid_spec_is_refused(kwargs: dict) -> None:
    with pytest.raises(GradprojError):
        ProjectorSpec(**kwargs)


def test_from_dict_refuses_unknown_or_missing_fields() -> None:
    with pytest.raises(GradprojError, match="unknown"):
        ProjectorSpec.from_dict({"kind": "rademacher", "k": 8, "colour": "red"})
    with pytest.raises(GradprojError, match="lacks"):
        ProjectorSpec.from_dict({"kind": "rademacher"})


def test_layout_hash() -> None:
    h = layout_hash(LAYOUT)
    assert len(h) == 64 and h == layout_hash([list(p) for p in LAYOUT])
    assert h != layout_hash([("other", 640)] + LAYOUT[1:])
    assert h != layout_hash([(LAYOUT[0][0], 641)] + LAYOUT[1:])
    assert h != layout_hash(LAYOUT[::-1])
    for bad in ([], [("a", 0)], [("a", 3), ("a", 4)], [("", 3)], [("a", 2.5)], ["a"]):
        with pytest.raises(GradprojError):
            layout_hash(bad)


def test_projector_spec_and_layout_must_agree() -> None:
    proj = make_projector("gaussian", 32, LAYOUT, seed=4, sjlt_s=2)
    assert proj.spec.layout_hash == layout_hash(LAYOUT) and proj.layout == tuple(LAYOUT)
    again = projector_from_spec(ProjectorSpec.from_dict(proj.spec.to_dict()), LAYOUT)
    x = randn(2, P, seed=5)
    close(again.project(x), proj.project(x))
    with pytest.raises(GradprojError, match="layout"):
        projector_from_spec(proj.spec, LAYOUT[:2])
    with pytest.raises(GradprojError, match="version"):
        projector_from_spec(ProjectorSpec("rademacher", 8, version=PROJECTION_VERSION + 1), LAYOUT)
    with pytest.raises(GradprojError):
        HashProjector(ProjectorSpec("sjlt", 8), LAYOUT)
    with pytest.raises(GradprojError):
        SJLTProjector(ProjectorSpec("rademacher", 8), LAYOUT)
    with pytest.raises(GradprojError):
        make_projector("rademacher", 8, LAYOUT, block_cols=0)


# ------------------------------------------------------------------ traker adapters

def test_trak_basic_adapter_preserves_inner_products() -> None:
    pytest.importorskip("trak")
    k = 512
    proj = make_projector("trak-basic", k, LAYOUT, seed=1)
    assert proj.spec.kind == "trak-basic"
    x = randn(4, P, seed=6)
    x /= x.norm(dim=1, keepdim=True)
    x[1] = 0.8 * x[0] + 0.6 * x[1]
    y = proj.project(x)
    assert y.shape == (4, k) and y.dtype == torch.float32
    assert torch.allclose(y @ y.T, x @ x.T, atol=6 * math.sqrt(2 / k))
    close(sum(proj.project({n: t}) for n, t in split(x).items()), y, rtol=1e-4)
    close(proj.project(x[2:]), y[2:])
    with pytest.raises(GradprojError):
        make_projector("trak-basic", 8, LAYOUT, dtype="float64")


def _has_fast_jl() -> bool:
    try:
        import fast_jl  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


@pytest.mark.skipif(HAS_CUDA and _has_fast_jl(), reason="fast_jl and CUDA are present")
def test_trak_cuda_needs_fast_jl_and_cuda() -> None:
    with pytest.raises(GradprojError, match="fast_jl"):
        make_projector("trak-cuda", 512, LAYOUT)


# ------------------------------------------------------------------ CUDA

@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("kind", HASH_KINDS)
def test_cuda_matches_cpu(kind: str) -> None:
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False   # TF32 would round x to 10-bit mantissas
    try:
        _check_cuda_matches_cpu(kind)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


def _check_cuda_matches_cpu(kind: str) -> None:
    x = randn(7, P, seed=8)
    for cache_mb in (0.0, 64.0):
        proj = make_projector(kind, 256, LAYOUT, seed=3, block_cols=1000, cache_mb=cache_mb)
        cpu, gpu = proj.project(x), proj.project(x.cuda())
        assert gpu.device.type == "cuda"
        close(gpu.cpu(), cpu, rtol=1e-4)
    spec = ProjectorSpec(kind, 64, seed=3)
    assert torch.allclose(projection_block(spec, "w", 999, 5, 999, "cuda").cpu(),
                          projection_block(spec, "w", 999, 5, 999, "cpu"), rtol=1e-5, atol=1e-5)
