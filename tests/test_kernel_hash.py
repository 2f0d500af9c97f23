"""The fused projection kernel's hashing (gradproj.kernels), checked on the CPU.

The kernel makes its tiles of R with the formulas of :func:`gradproj.kernels.emulate_tile`
(numpy uint32, no Triton needed): these tests hold that mirror to the torch reference
(``projection_block``) and to the scalar ``_entry_reference``. When triton is importable, the
kernel itself also runs here under Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors)
against ``HashProjector``; CI has no triton, so that part is skipped there.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from gradproj.core.errors import GradprojError
from gradproj.projection.counter_hash import GAUSS_TAG as _GAUSS_TAG
from gradproj.projection.counter_hash import MAX_NUMEL
from gradproj.projection.counter_hash import MUL1 as _MUL1
from gradproj.projection.counter_hash import MUL2 as _MUL2
from helpers import entry_reference as _entry_reference
from gradproj.projection.counter_hash import param_keys as _keys
from gradproj.projection.kernels import Segment, emulate_tile, plan_work, triton_available
from gradproj.projection.kernels import triton_projection as tp
from gradproj.projection.base import projection_block
from gradproj.projection.spec import ProjectorSpec

ROOT = Path(__file__).resolve().parents[1]
CASES = [  # (seed, parameter name, k, c0, c1, numel)
    (0, "a.weight", 64, 0, 256, 256),
    (12345, "model.layers.3.self_attn.q_proj.lora_B.default.weight", 37, 45, 1045, 5000),
    (-7, "x", 5, 31, 33, 64),
    (3, "huge", 16, MAX_NUMEL - 300, MAX_NUMEL - 1, MAX_NUMEL),   # words near 2^27
    (99, "odd", 130, 1, 2, 3),
]


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[1][:8]}-{c[3]}")
def test_emulated_tile_matches_torch_reference(kind, case) -> None:
    seed, name, k, c0, c1, numel = case
    keys = _keys(seed, name, kind)
    ref = projection_block(ProjectorSpec(kind, k, seed=seed), name, numel, c0, c1).numpy()
    tile = emulate_tile(keys, kind, 0, k, c0, c1)
    assert tile.shape == ref.shape and tile.dtype == np.float32
    if kind == "rademacher":
        np.testing.assert_array_equal(tile, ref)        # ±1 exactly, bit for bit
    else:   # same float32 formulas; numpy's and torch's log/cos/sin may differ by an ulp
        np.testing.assert_allclose(tile, ref, rtol=0, atol=4e-6)


@pytest.mark.parametrize("kind", ["rademacher", "gaussian"])
def test_emulated_rows_and_entries_match_scalar_reference(kind) -> None:
    rng = np.random.default_rng(0)
    for seed, name, _, c0, c1, _ in CASES:
        keys = _keys(seed, name, kind)
        r0 = int(rng.integers(0, 1000))
        tile = emulate_tile(keys, kind, r0, r0 + 3, c0, c1)   # a row window, not from 0
        for _ in range(5):
            i, j = int(rng.integers(0, 3)), int(rng.integers(0, c1 - c0))
            want = _entry_reference(seed, name, r0 + i, c0 + j, kind)
            assert tile[i, j] == pytest.approx(want, abs=4e-6)


def test_kernel_literals_are_the_reference_constants() -> None:
    """The Triton kernel spells the hash constants as literals: tie them to projection's."""
    src = inspect.getsource(tp)
    for const in (_MUL1, _MUL2, _GAUSS_TAG):
        assert f"0x{const:08X}" in src
    assert "3.7450702829239286e-07" in src and 3.7450702829239286e-07 == 2 * math.pi * 2**-24
    assert "5.960464477539063e-08" in src and 5.960464477539063e-08 == 2.0**-24


def _covered(seg: np.ndarray) -> list[tuple[int, int, int]]:
    return [(int(r[1]), int(r[2]), int(r[0])) for r in seg]


def test_plan_work_cuts_on_chunk_multiples_and_packs_small_segments() -> None:
    segs = [Segment(0, 0, 100, (1, 2)), Segment(100, 7, 77, (3, 4)),
            Segment(170, 1000, 1300, (5, 6)), Segment(470, 0, 40, (7, 8))]
    seg, work = plan_work(segs, 128)
    assert seg.dtype == np.int64 and seg.shape[1] == 6
    # every column of every segment exactly once, in order, x columns following along
    by_key: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
    for row in seg:
        x_col, cb, ce, cs, k0, k1 = (int(v) for v in row)
        assert cb < ce and cs == cb - cb % 32 and ce - cs <= 128 + 31
        assert cb // 128 == (ce - 1) // 128                      # never crosses a multiple
        by_key.setdefault((k0, k1), []).append((cb, ce, x_col))
    for s in segs:
        parts = by_key[s.keys]
        assert parts[0][0] == s.c_begin and parts[-1][1] == s.c_end
        assert all(a[1] == b[0] for a, b in zip(parts, parts[1:], strict=False))
        assert all(x == s.x_col + cb - s.c_begin for cb, _, x in parts)
    # work items tile the segment table, in order, about 128 columns each
    assert work[0, 0] == 0 and work[-1, 1] == len(seg)
    assert all(work[i, 1] == work[i + 1, 0] for i in range(len(work) - 1))
    assert len(work) < len(seg)                   # small segments were packed together
    with pytest.raises(GradprojError):
        plan_work(segs, 100)                      # not a multiple of 32
    with pytest.raises(GradprojError):
        plan_work([Segment(0, 5, 5, (0, 0))], 64)


def test_triton_can_be_forced_off(monkeypatch) -> None:
    """With triton importable and CUDA present (both faked), the kernel is available unless
    GRADPROJ_NO_TRITON=1; without either it never is."""
    monkeypatch.setattr(tp, "triton", object())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("GRADPROJ_NO_TRITON", "0")
    assert triton_available()
    monkeypatch.setenv("GRADPROJ_NO_TRITON", "1")
    assert not triton_available()
    monkeypatch.setenv("GRADPROJ_NO_TRITON", "0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert not triton_available()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(tp, "triton", None)
    assert not triton_available()


def test_pieces_are_refused_when_malformed() -> None:
    spec = ProjectorSpec("rademacher", 8)
    with pytest.raises(GradprojError):
        tp.project_pieces_triton(ProjectorSpec("sjlt", 8), [("a", torch.zeros(2, 3))])
    with pytest.raises(GradprojError):
        tp.project_pieces_triton(spec, [])
    with pytest.raises(GradprojError):
        tp.project_pieces_triton(spec, [("a", torch.zeros(2, 3))],
                                 out=torch.zeros(2, 9))
    with pytest.raises(GradprojError):
        tp.project_pieces_triton(spec, [("a", torch.zeros(2, 3)), ("b", torch.zeros(3, 3))])
    with pytest.raises(GradprojError):
        tp.project_triton(torch.zeros(2, 3), (1, 2), 8, "gaussian", col_offset=MAX_NUMEL - 2)


# ---------------------------------------------------------------------------- interpreter

# Run in a child process: TRITON_INTERPRET must be set before triton decorates the kernel.
# Two shims for Triton 3.6's interpreter (the compiled kernel needs neither): its tl.dot
# multiplies bfloat16 operands as their raw uint16 bit patterns, and it converts scalar loop
# bounds with int(ndarray of shape (1,)), which numpy >= 2.4 refuses.
INTERPRETER_SCRIPT = textwrap.dedent("""
    import json, math, sys, warnings
    import numpy as np
    import torch
    import triton.language as tl
    from triton.runtime import interpreter as itp

    warnings.simplefilter("ignore")
    _dot = itp.InterpreterBuilder.create_dot

    def create_dot(self, a, b, d, *args):
        if a.dtype.scalar == tl.bfloat16:
            a = self.cast_impl(a, tl.float32)
        if b.dtype.scalar == tl.bfloat16:
            b = self.cast_impl(b, tl.float32)
        return _dot(self, a, b, d, *args)

    itp.InterpreterBuilder.create_dot = create_dot
    _patch = itp._patch_lang_tensor

    def patch_tensor(tensor, scope):
        _patch(tensor, scope)
        scope.set_attr(tensor, "__index__",
                       lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    itp._patch_lang_tensor = patch_tensor

    from gradproj.projection.counter_hash import param_keys as _keys
    from gradproj.projection.kernels import KernelConfig, project_pieces_triton, project_triton
    from gradproj.projection.base import HashProjector, projection_block
    from gradproj.projection.spec import ProjectorSpec

    SMALL = KernelConfig(block_k=32, block_n=64, num_warps=4)
    PER_ELEMENT = KernelConfig(block_k=32, block_n=32, num_warps=4, per_element=True)
    LAYOUT = [("l0.q.lora_A", 640), ("l0.q.lora_B", 960), ("l1.v.lora_A", 33),
              ("l1.v.lora_B", 1500)]
    results = []

    def rel(a, b):
        return float((a.double() - b.double()).norm() / b.double().norm())

    g = torch.Generator().manual_seed(0)
    for kind in ("rademacher", "gaussian"):
        for k, batch in ((200, 5), (64, 17)):
            x = torch.randn(batch, sum(n for _, n in LAYOUT), generator=g)
            pieces = dict(zip([n for n, _ in LAYOUT],
                              x.split([n for _, n in LAYOUT], dim=1)))
            spec = ProjectorSpec(kind, k, seed=11)
            ref = HashProjector(spec, LAYOUT).project(pieces)
            for prec, config, max_el in (("split", SMALL, 1 << 27), ("bf16", SMALL, 1 << 27),
                                         ("split", PER_ELEMENT, 1 << 27),
                                         ("split", SMALL, 37 * 64)):
                out = project_pieces_triton(spec, list(pieces.items()), precision=prec,
                                            config=config, max_elements=max_el)
                results.append(dict(what="pieces", kind=kind, k=k, batch=batch,
                                    precision=prec, per_element=config.per_element,
                                    max_elements=max_el, rel=rel(out, ref)))
            # one parameter cut at an unaligned column, accumulated into one out buffer
            name, numel = "big.weight", 3000
            xb = torch.randn(batch, numel, generator=g)
            refb = HashProjector(spec, [(name, numel)]).project({name: xb})
            keys = _keys(11, name, kind)
            out = torch.zeros(batch, k)
            for c0, c1 in ((0, 1001), (1001, 1990), (1990, 3000)):
                project_triton(xb[:, c0:c1], keys, k, kind, col_offset=c0, out=out,
                               config=SMALL)
            results.append(dict(what="cut", kind=kind, k=k, batch=batch, precision="split",
                                rel=rel(out, refb)))
            # columns near 2^32 (the hash's counter limit), bf16 input
            c0 = (1 << 32) - 100
            xh = torch.randn(batch, 90, generator=g).bfloat16()
            block = projection_block(spec, "top", 1 << 32, c0, c0 + 90)
            refh = xh.float() @ block.T / math.sqrt(k)
            out = project_triton(xh, _keys(11, "top", kind), k, kind, col_offset=c0,
                                 config=SMALL)
            results.append(dict(what="top", kind=kind, k=k, batch=batch, precision="auto",
                                rel=rel(out, refh)))
        # the tile itself: one-hot inputs (x = I) give out[b, r] = R[r, c0 + b] exactly
        spec = ProjectorSpec(kind, 37, seed=5)
        for c0, prec in ((45, "split"), (3 * 32, "bf16"), ((1 << 32) - 70, "split")):
            eye = torch.eye(70)
            out = project_triton(eye, _keys(5, "t.w", kind), 37, kind, col_offset=c0,
                                 scale=1.0, precision=prec, config=SMALL)
            block = projection_block(spec, "t.w", 1 << 32, c0, c0 + 70)
            want = block.T if prec == "split" else block.T.bfloat16().float()
            results.append(dict(what="tile", kind=kind, k=37, batch=70, precision=prec,
                                max_abs=float((out - want).abs().max()),
                                rel=rel(out, want)))
    print("RESULTS " + json.dumps(results))
""")


def _run_interpreter() -> list[dict]:
    env = dict(os.environ, TRITON_INTERPRET="1", GRADPROJ_NO_TRITON="")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", INTERPRETER_SCRIPT], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS "))
    return json.loads(line[len("RESULTS "):])


@pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                    reason="triton is not installed (the kernel's interpreter run needs it)")
def test_kernel_under_triton_interpreter_matches_hash_projector() -> None:
    results = _run_interpreter()
    assert len(results) == 2 * (2 * 6 + 3)
    for r in results:
        if r["what"] == "tile":   # rademacher ±1 bit for bit; gaussian to the split's 2^-17,
            bound = (0.0 if r["kind"] == "rademacher"     # or one bf16 ulp (|entry| < 8)
                     else 1e-4 if r["precision"] == "split" else 2.0**-5)
            assert r["max_abs"] <= bound, r
            continue
        # split: x (and gaussian R) as two bfloat16 parts; the interpreter rounds them less
        # carefully than the GPU does (which gives ~3e-6). bf16: one part, ~2^-9 per entry.
        bound = 1e-2 if r["precision"] in ("bf16", "auto") else 1e-4
        assert r["rel"] < bound, r


def test_kernel_config_parses_and_overrides_from_env(monkeypatch) -> None:
    from gradproj.projection.kernels import CONFIG_ENV, DEFAULT_CONFIG, KernelConfig, default_config

    assert KernelConfig.parse("64,64,4,3,1") == KernelConfig(64, 64, 4, 3, per_element=True)
    monkeypatch.setenv(CONFIG_ENV, "256,32,8,1")
    assert default_config() == KernelConfig(256, 32, 8, 1)
    monkeypatch.setenv(CONFIG_ENV, "")
    assert default_config() == DEFAULT_CONFIG
    for bad in ("128,48,8,2", "128,32", "a,b,c,d", "8,32,4,2"):
        with pytest.raises(GradprojError):
            KernelConfig.parse(bad)
