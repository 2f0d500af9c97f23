"""The fused Triton projection kernel against the torch reference, on CUDA.

Fresh random inputs at several shapes; the kernel's output is compared with ``HashProjector``
on the same GPU and on the CPU (the CPU one on the first rows of R only: a row of R depends on
(seed, name, row, column), not on k, so ``y[:, :k']·√k = y'·√k'`` for the k'-row projection).
Bounds (‖out − ref‖ / ‖ref‖): fp32 x with ``precision="split"`` < 1e-5 (rademacher; gaussian
< 5e-5, its entries also differ by the GPU's log/cos/sin), x rounded to bfloat16 < 1e-2.
"""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from gradproj.projection.counter_hash import param_keys as _keys
from gradproj.projection.base import HashProjector, projection_block
from gradproj.projection.spec import ProjectorSpec

HAS_KERNEL = torch.cuda.is_available() and importlib.util.find_spec("triton") is not None
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not HAS_KERNEL, reason="needs CUDA and triton")]

NAME = "model.layers.0.self_attn.q_proj.lora_A.default.weight"
SEED = 1234
BOUND = {("rademacher", "split"): 1e-5, ("gaussian", "split"): 5e-5}


def split_bound(kind: str, numel: int) -> float:
    """Bound of the fp32 ("split") path against float64: the base bound, or the error of fp32
    accumulation over ``numel`` terms (~2^-24·√numel; measured on an H100: 7.4e-5 rademacher
    and 2.2e-4 gaussian at numel 2^20, k 8192 — the torch fp32 reference is ~3e-5 off too)."""
    scale = 3.0 if kind == "gaussian" else 1.0
    return max(BOUND[(kind, "split")], scale * 1.5e-7 * math.sqrt(numel))
_CPU: dict[tuple[str, int, int], HashProjector] = {}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def poison_allocator(mib: int = 256) -> None:
    """Leave NaN in the memory the caching allocator hands out next (uninitialised reads
    show up as NaN)."""
    junk = torch.full((mib << 18,), float("nan"), device="cuda")
    del junk


def fenced_out(batch: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(out, its enclosing buffer): out [B, k] zeros with row stride k + 64, inside a buffer of
    sentinels 7.0 that the kernel must not touch."""
    big = torch.full((batch + 2, k + 64), 7.0, device="cuda")
    out = big[1:batch + 1, :k]
    out.zero_()
    return out, big


def check_fence(big: torch.Tensor, batch: int, k: int) -> None:
    mask = torch.ones_like(big, dtype=torch.bool)
    mask[1:batch + 1, :k] = False
    assert bool((big[mask] == 7.0).all()), "the kernel wrote outside out"


def cpu_projector(kind: str, numel: int, k_cpu: int) -> HashProjector:
    key = (kind, numel, k_cpu)
    if key not in _CPU:   # R kept whole (cache_mb): one CPU generation per kind and shape
        # float64: the fp32 CPU sum over 2^20 columns is itself ~5e-5 off, above the kernel's
        _CPU[key] = HashProjector(ProjectorSpec(kind, k_cpu, seed=SEED, dtype="float64"),
                                  [(NAME, numel)], cache_mb=8 * k_cpu * numel / 2**20 + 1)
    return _CPU[key]


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize("numel", [1000, 4096 * 3 + 17, 1 << 20])
@pytest.mark.parametrize("k", [512, 8192])
@pytest.mark.parametrize("batch", [1, 16, 64])
def test_kernel_matches_reference(kind: str, numel: int, k: int, batch: int) -> None:
    from gradproj.projection.kernels import project_pieces_triton

    g = torch.Generator(device="cuda").manual_seed(numel * 31 + k + batch)
    x = torch.randn(batch, numel, device="cuda", generator=g)
    spec = ProjectorSpec(kind, k, seed=SEED)
    # the torch reference (use_triton=False: HashProjector would dispatch to the kernel on CUDA)
    ref_gpu = HashProjector(ProjectorSpec(kind, k, seed=SEED, dtype="float64"), [(NAME, numel)],
                            use_triton=False).project({NAME: x.double()})
    xb = x.bfloat16()
    ref_gpu_b = HashProjector(spec, [(NAME, numel)], use_triton=False).project(
        {NAME: xb.float()})
    assert torch.isfinite(ref_gpu).all()

    results = {}
    for label, inp, precision, ref in (("split", x, "split", ref_gpu),
                                       ("bf16", x, "bf16", ref_gpu),
                                       ("bf16-input", xb, None, ref_gpu_b)):
        poison_allocator()
        out, big = fenced_out(batch, k)
        project_pieces_triton(spec, [(NAME, inp)], out=out, precision=precision)
        torch.cuda.synchronize()
        check_fence(big, batch, k)
        assert torch.isfinite(out).all(), label
        results[label] = out.clone()
        bound = split_bound(kind, numel) if label == "split" else 1e-2
        assert rel(out, ref) < bound, (label, rel(out, ref))

    # accumulate-into: out already holding values gets the projection added
    base = torch.randn(batch, k, device="cuda", generator=g)
    acc = project_pieces_triton(spec, [(NAME, x)], out=base.clone())
    assert rel(acc - base, ref_gpu) < 10 * split_bound(kind, numel)

    # the CPU reference, on the first rows of R
    k_cpu = min(k, 512) if numel < (1 << 20) else 64
    ref_cpu = cpu_projector(kind, numel, k_cpu).project({NAME: x.cpu().double()})
    ref_cpu = ref_cpu * math.sqrt(k_cpu / k)
    assert rel(results["split"][:, :k_cpu].cpu(), ref_cpu) < split_bound(kind, numel)
    assert rel(results["bf16"][:, :k_cpu].cpu(), ref_cpu) < 1e-2


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_many_pieces_cut_into_buffers_equal_one_launch(kind: str) -> None:
    """A LoRA-like layout, projected with buffers far smaller than the gradient (parameters cut
    by columns, several launches) and in one launch: same result, equal to the reference."""
    from gradproj.projection.kernels import KernelConfig, project_pieces_triton

    layout = [(f"layers.{i}.{m}.lora_{ab}.weight", n) for i in range(6)
              for m, (na, nb) in (("q_proj", (4608, 4608)), ("v_proj", (4608, 1536)))
              for ab, n in (("A", na), ("B", nb))]
    g = torch.Generator(device="cuda").manual_seed(7)
    pieces = [(name, torch.randn(24, n, device="cuda", generator=g)) for name, n in layout]
    spec = ProjectorSpec(kind, 4096, seed=3)
    ref = HashProjector(spec, layout, use_triton=False).project(dict(pieces))
    one = project_pieces_triton(spec, pieces)
    cut = project_pieces_triton(spec, pieces, max_elements=24 * 3000)
    alt = project_pieces_triton(spec, pieces, config=KernelConfig(64, 64, 4, 2, per_element=True))
    for out in (one, cut, alt):
        assert rel(out, ref) < BOUND[(kind, "split")]


def test_gradient_over_2_31_elements() -> None:
    """One parameter with B·numel > 2^31: cut by columns (default buffers), and in a single
    launch whose offsets pass 2^31 (64-bit indexing)."""
    from gradproj.projection.kernels import project_pieces_triton

    kind, k, batch, numel = "rademacher", 64, 2, (1 << 30) + 4099
    name = "huge.weight"
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(batch, numel, device="cuda", generator=g, dtype=torch.bfloat16)
    spec = ProjectorSpec(kind, k, seed=SEED)
    ref = torch.zeros(batch, k, dtype=torch.float64, device="cuda")
    step = 1 << 24
    for c0 in range(0, numel, step):
        c1 = min(c0 + step, numel)
        block = projection_block(spec, name, numel, c0, c1, device="cuda")
        ref += x[:, c0:c1].double() @ block.double().T      # float64: 2^30 terms a row
        del block
    ref /= math.sqrt(k)
    cut = project_pieces_triton(spec, [(name, x)])
    whole = project_pieces_triton(spec, [(name, x)], max_elements=1 << 40)
    for out in (cut, whole):
        assert rel(out, ref) < split_bound(kind, numel)


def test_single_piece_api_with_offsets() -> None:
    from gradproj.projection.kernels import project_triton

    kind, k, numel = "gaussian", 512, 10_000
    g = torch.Generator(device="cuda").manual_seed(1)
    x = torch.randn(16, numel, device="cuda", generator=g)
    spec = ProjectorSpec(kind, k, seed=SEED)
    ref = HashProjector(spec, [(NAME, numel)], use_triton=False).project({NAME: x})
    out = torch.zeros(16, k, device="cuda")
    keys = _keys(SEED, NAME, kind)
    for c0, c1 in ((0, 3333), (3333, 3334), (3334, 10_000)):
        project_triton(x[:, c0:c1], keys, k, kind, col_offset=c0, out=out)
    assert rel(out, ref) < BOUND[(kind, "split")]
