"""Fused hash projection ``y = R x / √k`` in one Triton kernel: R is never materialised.

Each program owns a tile of ``BLOCK_K`` rows of R (output coordinates) and ``BLOCK_B`` rows of
the batch, and walks over a list of column *segments* (a segment is a run of columns of one
parameter, with that parameter's two 32-bit hash keys). For every ``BLOCK_N`` columns it makes
the ``[BLOCK_K, BLOCK_N]`` tile of R in registers from the counter-based hash of
:mod:`gradproj.projection.counter_hash` — the same ``word(r, w)`` in native uint32 arithmetic
(Triton's uint32 multiply wraps mod 2³²; the int64 trick of the torch reference is not needed) —
and multiplies it with the ``[BLOCK_N, BLOCK_B]`` tile of xᵀ on the tensor cores (bf16/fp16
operands, fp32 accumulation). Programs that share rows add their partial sums into the fp32
output with atomics, so the last bits of the result depend on the scheduling (as cuBLAS split-K
does); the values are the reference's to within the precision bound:

* ``rademacher``: entries ±1 are exact in 16 bits; the only rounding is x's.
* ``gaussian``: the entry is made in fp32 (Box–Muller, same formulas as the reference; the GPU's
  log/sqrt/cos/sin differ from torch's by a few ulp), then rounded to the 16-bit type.
* ``precision="split"`` (the default for fp32 x): x (and the gaussian entry) is split in two
  bfloat16 parts, ``v = hi + lo`` (16 significant bits), and the kernel makes 2 (rademacher:
  R·x_hi + R·x_lo) or 3 (gaussian: + R_lo·x_hi) tensor-core products — about fp32 accuracy
  (relative error ~1e-5 or less) at 2–3× the matmul cost, which the hashing mostly hides.
* ``precision="bf16"`` / ``"fp16"``: one product with x and R rounded to that type (relative
  error ~2⁻⁹ / 2⁻¹¹ per entry of x).

Columns are counted within each parameter, so a parameter can be cut into calls at any column
offset (``col_offset``) and the calls' outputs summed; :func:`project_pieces_triton` does that by
itself so that no single buffer or launch exceeds ``max_elements`` (the gradient dimension of one
call may exceed 2³¹ elements; offsets inside the kernel are 64-bit).

:func:`emulate_tile` is the kernel's tile generation transcribed to numpy uint32 arithmetic, step
by step (it needs no Triton and no GPU); the CPU tests compare it with the torch reference, and
the kernel (under ``TRITON_INTERPRET=1`` or on CUDA) with both.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from gradproj.core.errors import GradprojError
from gradproj.projection.counter_hash import GAUSS_TAG, MAX_K, MAX_NUMEL, MUL1, MUL2, param_keys
from gradproj.projection.spec import ProjectorSpec

try:  # Triton is optional: nothing here needs it except the kernel itself.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the machine
    triton = tl = None

KIND_CODES = {"rademacher": 0, "gaussian": 1}
PRECISIONS = ("auto", "split", "bf16", "fp16")
DISABLE_ENV = "GRADPROJ_NO_TRITON"
WORD_BITS = 32            # rademacher: one hash word per 32 columns
TWO_PI_2M24 = 2.0 * math.pi * 2.0 ** -24
MAX_GRID_Y = 65535        # CUDA limit of grid dimensions 1 and 2


CONFIG_ENV = "GRADPROJ_TRITON_CONFIG"


@dataclass(frozen=True)
class KernelConfig:
    """Tile sizes and launch options (powers of two; block_n a multiple of 32).

    Compiled for sm_90 without spills at the default (about 175 registers a thread with
    BLOCK_B = 64); larger block_n spills. ``GRADPROJ_TRITON_CONFIG=block_k,block_n,num_warps,
    num_stages[,per_element]`` overrides the default (benchmarks/gpu_check.py times a few)."""

    block_k: int = 128
    block_n: int = 32
    num_warps: int = 8
    num_stages: int = 2
    per_element: bool = False
    """rademacher: hash one word per *entry* (32× the hashing, no [K, W, 32] → [K, N] reshape)
    instead of one per 32 entries; which is faster depends on how Triton lays out the reshape."""

    def __post_init__(self):
        for name in ("block_k", "block_n", "num_warps"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1 and v & (v - 1) == 0):
                raise GradprojError(f"kernel config {name} must be a power of two, got {v!r}")
        if self.block_k < 16 or self.block_n < WORD_BITS or self.num_stages < 1:
            raise GradprojError(f"kernel config needs block_k >= 16, block_n >= {WORD_BITS}, "
                                f"num_stages >= 1: {self}")

    @classmethod
    def parse(cls, text: str) -> KernelConfig:
        """``"128,32,8,2"`` or ``"128,32,8,2,1"`` (the last: per_element)."""
        try:
            v = [int(t) for t in text.split(",")]
            if len(v) not in (4, 5):
                raise ValueError(f"{len(v)} values")
            return cls(*v[:4], per_element=bool(v[4]) if len(v) > 4 else False)
        except (TypeError, ValueError) as err:
            raise GradprojError(f"{CONFIG_ENV}={text!r}: expected block_k,block_n,num_warps,"
                                f"num_stages[,per_element] ({err})") from None


DEFAULT_CONFIG = KernelConfig()


def default_config() -> KernelConfig:
    """``GRADPROJ_TRITON_CONFIG`` when set, else :data:`DEFAULT_CONFIG`."""
    text = os.environ.get(CONFIG_ENV, "").strip()
    return KernelConfig.parse(text) if text else DEFAULT_CONFIG


def triton_importable() -> bool:
    return triton is not None


def triton_disabled() -> bool:
    """True when ``GRADPROJ_NO_TRITON`` is set to anything but '' or '0'."""
    return os.environ.get(DISABLE_ENV, "") not in ("", "0")


def triton_available() -> bool:
    """Whether the fused kernel can and may run here: CUDA present, triton importable, and
    ``GRADPROJ_NO_TRITON`` not set."""
    return triton is not None and not triton_disabled() and torch.cuda.is_available()


# ---------------------------------------------------------------------------- numpy mirror

def _np_mix32(h: np.ndarray) -> np.ndarray:
    """lowbias32 on a uint32 array (numpy wraps uint32 products mod 2³², like the kernel)."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(MUL1)
    h = h ^ (h >> np.uint32(15))
    h = h * np.uint32(MUL2)
    return h ^ (h >> np.uint32(16))


def emulate_tile(keys: tuple[int, int], kind: str, r0: int, r1: int, c0: int, c1: int
                 ) -> np.ndarray:
    """Unscaled ``R[r0:r1, c0:c1]`` of one parameter, made as the kernel makes it (float32).

    Mirrors ``_hash_projection_kernel``: row hashes once per program, column hashes per word,
    ``word = mix(row_hash ^ col_hash)`` on a [rows, words] tile; rademacher expands each word
    to 32 columns by a [rows, words, 32] shift and a reshape, then puts the bit in the sign of
    the float32 1.0 (``bit << 31 | 0x3F800000``: ±1.0); gaussian does Box–Muller in float32 on a
    [rows, pairs] tile and interleaves cos (even columns) and sin (odd columns).
    """
    if kind not in KIND_CODES:
        raise GradprojError(f"no fused kernel for projection kind '{kind}'")
    start = c0 - c0 % WORD_BITS                       # tiles start on a word boundary
    stop = -(-c1 // WORD_BITS) * WORD_BITS
    rows = np.arange(r0, r1, dtype=np.uint32)
    row_hash = _np_mix32(rows ^ np.uint32(keys[0]))                          # [K]
    if kind == "rademacher":
        w = np.arange(start >> 5, stop >> 5, dtype=np.uint64).astype(np.uint32)
        words = _np_mix32(row_hash[:, None] ^ _np_mix32(w ^ np.uint32(keys[1]))[None, :])
        shifts = np.arange(32, dtype=np.uint32)
        sign = (words[:, :, None] >> shifts[None, None, :]) << np.uint32(31)  # [K, W, 32]
        sign = sign.reshape(len(rows), -1)                                     # [K, N]
        tile = (sign | np.uint32(0x3F800000)).view(np.float32)               # ±1.0
    else:
        m = np.arange(start >> 1, stop >> 1, dtype=np.uint64).astype(np.uint32)
        h1 = _np_mix32(row_hash[:, None] ^ _np_mix32(m ^ np.uint32(keys[1]))[None, :])
        h2 = _np_mix32(h1 ^ np.uint32(GAUSS_TAG))
        angle = (h2 >> np.uint32(8)).astype(np.float32) * np.float32(TWO_PI_2M24)
        u1 = ((h1 >> np.uint32(8)) + np.uint32(1)).astype(np.float32) * np.float32(2.0 ** -24)
        radius = np.sqrt(np.log(u1) * np.float32(-2.0))
        tile = np.stack([np.cos(angle) * radius, np.sin(angle) * radius], axis=-1)
        tile = tile.reshape(len(rows), -1).astype(np.float32)              # interleave
    return tile[:, c0 - start: c1 - start]


# ---------------------------------------------------------------------------- planning

@dataclass(frozen=True)
class Segment:
    """Columns ``[c_begin, c_end)`` of one parameter (hash columns), found in the x buffer
    starting at column ``x_col``."""

    x_col: int
    c_begin: int
    c_end: int
    keys: tuple[int, int]


def plan_work(segments: Sequence[Segment], chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut segments into pieces of at most ``chunk`` columns (cuts on multiples of ``chunk``
    within the parameter) and pack consecutive pieces into work items of about ``chunk``
    columns. Returns (seg_table int64 [S, 6] = x_col, c_begin, c_end, c_start, key0, key1 with
    c_start = c_begin rounded down to 32; work int64 [W, 2] = first and end row of seg_table)."""
    if chunk < 1 or chunk % WORD_BITS:
        raise GradprojError(f"chunk must be a positive multiple of {WORD_BITS}, got {chunk}")
    rows: list[tuple[int, int, int, int, int, int]] = []
    for s in segments:
        if not 0 <= s.c_begin < s.c_end <= MAX_NUMEL:
            raise GradprojError(f"bad segment columns [{s.c_begin}, {s.c_end})")
        c = s.c_begin
        while c < s.c_end:
            e = min(s.c_end, (c // chunk + 1) * chunk)
            rows.append((s.x_col + c - s.c_begin, c, e, c - c % WORD_BITS,
                         s.keys[0], s.keys[1]))
            c = e
    work: list[tuple[int, int]] = []
    lo, cols = 0, 0
    for i, (_, _, ce, cs, _, _) in enumerate(rows):
        span = ce - cs
        if i > lo and cols + span > chunk:
            work.append((lo, i))
            lo, cols = i, 0
        cols += span
    if rows:
        work.append((lo, len(rows)))
    return (np.array(rows, dtype=np.int64).reshape(-1, 6),
            np.array(work, dtype=np.int64).reshape(-1, 2))


def _pow2_at_least(n: int, lo: int) -> int:
    return max(lo, 1 << max(0, (n - 1).bit_length()))


def _block_b(batch: int) -> int:
    return min(64, _pow2_at_least(batch, 16))


def _choose_chunk(total_cols: int, n_row_tiles: int, n_b_tiles: int, device: torch.device,
                  block_n: int) -> int:
    """Columns per work item: enough programs to fill the GPU (~8 per SM) without making the
    atomic traffic (one [BLOCK_K, BLOCK_B] add per program) large; a multiple of block_n."""
    sms = (torch.cuda.get_device_properties(device).multi_processor_count
           if device.type == "cuda" else 4)
    want = max(1, -(-8 * sms // max(1, n_row_tiles * n_b_tiles)))
    chunk = -(-total_cols // want)
    chunk = max(chunk, 16 * block_n, -(-total_cols // MAX_GRID_Y))
    return -(-chunk // block_n) * block_n


# ---------------------------------------------------------------------------- the kernel

if triton is not None:

    @triton.jit
    def _mix32(h):
        h = h ^ (h >> 16)
        h = h * 0x7FEB352D
        h = h ^ (h >> 15)
        h = h * 0x846CA68B
        h = h ^ (h >> 16)
        return h

    @triton.jit
    def _hash_projection_kernel(
            x_ptr, stride_xb, out_ptr, stride_ob, seg_ptr, work_ptr, n_batch, n_rows, scale,
            KIND: tl.constexpr, SPLIT: tl.constexpr, DOT_DTYPE: tl.constexpr,
            PER_ELEMENT: tl.constexpr,
            BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_r = tl.program_id(0)
        pid_w = tl.program_id(1)
        pid_b = tl.program_id(2)
        rows = pid_r * BLOCK_K + tl.arange(0, BLOCK_K)                       # int32
        r_ok = rows < n_rows
        bs = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
        b_ok = bs < n_batch
        x_rows = x_ptr + bs.to(tl.int64) * stride_xb                        # [BLOCK_B]
        s_lo = tl.load(work_ptr + 2 * pid_w)
        s_hi = tl.load(work_ptr + 2 * pid_w + 1)
        acc = tl.zeros([BLOCK_K, BLOCK_B], dtype=tl.float32)
        for s in range(s_lo, s_hi):
            x_col = tl.load(seg_ptr + 6 * s)
            c_begin = tl.load(seg_ptr + 6 * s + 1)
            c_end = tl.load(seg_ptr + 6 * s + 2)
            c_start = tl.load(seg_ptr + 6 * s + 3)
            key0 = tl.load(seg_ptr + 6 * s + 4).to(tl.uint32)
            key1 = tl.load(seg_ptr + 6 * s + 5).to(tl.uint32)
            row_hash = _mix32(rows.to(tl.uint32) ^ key0)                    # [BLOCK_K]
            for c in range(c_start, c_end, BLOCK_N):
                cols = tl.arange(0, BLOCK_N).to(tl.int64) + c               # hash columns
                c_ok = (cols >= c_begin) & (cols < c_end)
                xp = x_rows[None, :] + (x_col - c_begin + cols)[:, None]
                xt = tl.load(xp, mask=c_ok[:, None] & b_ok[None, :], other=0.0)
                xt = xt.to(tl.float32)                                       # [BLOCK_N, BLOCK_B]
                x_hi = xt.to(DOT_DTYPE, fp_downcast_rounding="rtne")
                if KIND == 0:  # rademacher: bit c % 32 of word(r, c // 32)
                    if PER_ELEMENT:
                        w = (cols >> 5).to(tl.uint32)
                        words = _mix32(row_hash[:, None] ^ _mix32(w ^ key1)[None, :])
                        sh = (cols & 31).to(tl.uint32)
                        sign = (words >> sh[None, :]) << 31                  # [BLOCK_K, BLOCK_N]
                    else:
                        w = ((c >> 5) + tl.arange(0, BLOCK_N // 32)).to(tl.uint32)
                        words = _mix32(row_hash[:, None] ^ _mix32(w ^ key1)[None, :])
                        sh = tl.arange(0, 32).to(tl.uint32)
                        sign = (words[:, :, None] >> sh[None, None, :]) << 31  # [K, W, 32]
                        sign = tl.reshape(sign, [BLOCK_K, BLOCK_N])
                    # the bit becomes the float32 sign of 1.0: ±1.0, exact in every type
                    r_hi = (sign | 0x3F800000).to(tl.float32, bitcast=True).to(DOT_DTYPE)
                    acc = tl.dot(r_hi, x_hi, acc)
                    if SPLIT:
                        x_lo = (xt - x_hi.to(tl.float32)).to(DOT_DTYPE, fp_downcast_rounding="rtne")
                        acc = tl.dot(r_hi, x_lo, acc)
                else:  # gaussian: Box–Muller on word(r, c // 2), cos for even c, sin for odd
                    m = ((c >> 1) + tl.arange(0, BLOCK_N // 2)).to(tl.uint32)
                    h1 = _mix32(row_hash[:, None] ^ _mix32(m ^ key1)[None, :])
                    h2 = _mix32(h1 ^ 0x9E3779B9)
                    angle = (h2 >> 8).to(tl.float32) * 3.7450702829239286e-07   # 2π·2⁻²⁴
                    u1 = ((h1 >> 8) + 1).to(tl.float32) * 5.960464477539063e-08   # 2⁻²⁴
                    radius = tl.sqrt(tl.log(u1) * -2.0)
                    g = tl.interleave(tl.cos(angle) * radius, tl.sin(angle) * radius)
                    r_hi = g.to(DOT_DTYPE, fp_downcast_rounding="rtne")
                    acc = tl.dot(r_hi, x_hi, acc)
                    if SPLIT:
                        x_lo = (xt - x_hi.to(tl.float32)).to(DOT_DTYPE, fp_downcast_rounding="rtne")
                        r_lo = (g - r_hi.to(tl.float32)).to(DOT_DTYPE, fp_downcast_rounding="rtne")
                        acc = tl.dot(r_hi, x_lo, acc)
                        acc = tl.dot(r_lo, x_hi, acc)
        acc = acc * scale
        optr = out_ptr + bs[None, :].to(tl.int64) * stride_ob + rows[:, None]
        tl.atomic_add(optr, acc, mask=r_ok[:, None] & b_ok[None, :], sem="relaxed")


def _dot_dtype(precision: str, x_dtype: torch.dtype) -> tuple[torch.dtype, bool]:
    """(16-bit operand type, split?) for a precision and the input's dtype."""
    if precision not in PRECISIONS:
        raise GradprojError(f"precision must be one of {', '.join(PRECISIONS)}, "
                            f"got {precision!r}")
    if precision == "auto":
        precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(x_dtype, "split")
    if precision == "split":
        return torch.bfloat16, True
    return (torch.bfloat16 if precision == "bf16" else torch.float16), False


def _launch(x: Tensor, segments: Sequence[Segment], k: int, kind: str, out: Tensor,
            scale: float, precision: str, config: KernelConfig | None) -> None:
    if triton is None:
        raise GradprojError("the fused projection kernel needs the triton package")
    batch = x.shape[0]
    if batch == 0:
        return
    dot_dtype, split = _dot_dtype(precision, x.dtype)
    cfg = config or default_config()
    bb = _block_b(batch)
    n_r, n_b = -(-k // cfg.block_k), -(-batch // bb)
    if n_b > MAX_GRID_Y:
        raise GradprojError(f"batch of {batch} rows is too large for one launch")
    total = sum(s.c_end - s.c_begin for s in segments)
    chunk = _choose_chunk(total, n_r, n_b, x.device, cfg.block_n)
    seg_np, work_np = plan_work(segments, chunk)
    while len(work_np) > MAX_GRID_Y:      # many tiny parameters: pack more per program
        chunk *= 2
        seg_np, work_np = plan_work(segments, chunk)
    seg_t = torch.from_numpy(seg_np).to(x.device)
    work_t = torch.from_numpy(work_np).to(x.device)
    grid = (n_r, len(work_np), n_b)
    _hash_projection_kernel[grid](
        x, x.stride(0), out, out.stride(0), seg_t, work_t, batch, k, float(scale),
        KIND=KIND_CODES[kind], SPLIT=split, DOT_DTYPE=_TL_DTYPES[dot_dtype],
        PER_ELEMENT=cfg.per_element, BLOCK_K=cfg.block_k,
        BLOCK_B=bb, BLOCK_N=cfg.block_n, num_warps=cfg.num_warps, num_stages=cfg.num_stages)


_TL_DTYPES = ({torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
              if tl is not None else {})


def _check_out(out: Tensor | None, batch: int, k: int, device: torch.device) -> Tensor:
    if out is None:
        return torch.zeros(batch, k, dtype=torch.float32, device=device)
    if (out.dtype != torch.float32 or tuple(out.shape) != (batch, k) or out.device != device
            or out.stride(1) != 1):
        raise GradprojError(f"out must be a float32 [{batch}, {k}] tensor on {device} with "
                            "contiguous rows")
    return out


def _check_k_kind(k: int, kind: str) -> None:
    if kind not in KIND_CODES:
        raise GradprojError(f"no fused kernel for projection kind '{kind}'")
    if not (isinstance(k, int) and 1 <= k <= MAX_K):
        raise GradprojError(f"k must be an int in [1, {MAX_K}], got {k!r}")


def project_triton(x: Tensor, keys: tuple[int, int], k: int, kind: str, col_offset: int = 0,
                   out: Tensor | None = None, *, scale: float | None = None,
                   precision: str = "auto", config: KernelConfig | None = None) -> Tensor:
    """``out += scale · x R[:, col_offset : col_offset + n]ᵀ`` for one parameter's piece.

    ``x``: [B, n] (any float dtype; on CUDA, or on CPU under ``TRITON_INTERPRET=1``), the
    parameter's columns ``col_offset .. col_offset + n − 1``; ``keys``: its (row_key, col_key)
    for ``kind`` (:func:`gradproj.projection.counter_hash.param_keys`); ``scale`` defaults to
    1/√k. ``out``: a float32 [B, k] buffer accumulated into (zeros when not given). Returns
    ``out``.
    """
    _check_k_kind(k, kind)
    if x.dim() != 2 or not x.is_floating_point():
        raise GradprojError(f"x must be a floating-point [B, n] tensor, got {tuple(x.shape)}")
    n = x.shape[1]
    if not (0 <= col_offset and col_offset + n <= MAX_NUMEL):
        raise GradprojError(f"columns [{col_offset}, {col_offset + n}) outside [0, 2^32)")
    out = _check_out(out, x.shape[0], k, x.device)
    if n == 0 or x.shape[0] == 0:
        return out
    if x.stride(1) != 1:
        x = x.contiguous()
    scale = 1.0 / math.sqrt(k) if scale is None else scale
    _launch(x, [Segment(0, col_offset, col_offset + n, (int(keys[0]), int(keys[1])))], k, kind,
            out, scale, precision, config)
    return out


def project_pieces_triton(spec: ProjectorSpec, pieces: Sequence[tuple[str, Tensor]], *,
                          out: Tensor | None = None, precision: str | None = None,
                          max_elements: int = 1 << 27,
                          config: KernelConfig | None = None) -> Tensor:
    """``Σ_pieces R_name x_name / √k``: [B, k] float32, the fused equivalent of
    ``HashProjector(spec, layout)._project(pieces, ...)`` for rademacher and gaussian specs.

    ``pieces``: ``(parameter name, [B, numel_name])`` on one device (each piece holds all of
    its parameter's columns). ``precision`` defaults to ``"split"`` (≈ fp32) for a float32 or
    float64 spec and to the spec's 16-bit type otherwise. Pieces are copied, in the operand
    type, into buffers of at most ``max_elements`` entries (a parameter larger than that is
    cut by columns), one launch per buffer; a single contiguous-row piece that fits is used as
    it is.
    """
    _check_k_kind(spec.k, spec.kind)
    if not pieces:
        raise GradprojError("no gradient pieces to project")
    batch, device = pieces[0][1].shape[0], pieces[0][1].device
    out = _check_out(out, batch, spec.k, device)
    if precision is None:
        precision = {"bfloat16": "bf16", "float16": "fp16"}.get(spec.dtype, "split")
    dot_dtype, split = _dot_dtype(precision, torch.float32)
    buf_dtype = torch.float32 if split else dot_dtype
    scale = 1.0 / math.sqrt(spec.k)
    cols_per_buf = max(WORD_BITS, (max_elements // max(1, batch)) // WORD_BITS * WORD_BITS)
    if batch == 0:
        return out

    group: list[tuple[Tensor, int, int, tuple[int, int]]] = []   # (x view, c0, c1, keys)
    used = 0

    def flush() -> None:
        nonlocal used
        if not group:
            return
        if len(group) == 1 and group[0][0].stride(1) == 1:   # no copy: the kernel casts
            view, c0, c1, keys = group[0]
            _launch(view, [Segment(0, c0, c1, keys)], spec.k, spec.kind, out, scale,
                    precision, config)
        else:
            buf = torch.empty(batch, used, dtype=buf_dtype, device=device)
            segs, at = [], 0
            for view, c0, c1, keys in group:
                buf[:, at: at + c1 - c0].copy_(view)
                segs.append(Segment(at, c0, c1, keys))
                at += c1 - c0
            _launch(buf, segs, spec.k, spec.kind, out, scale, precision, config)
        group.clear()
        used = 0

    for name, x in pieces:
        if x.dim() != 2 or x.shape[0] != batch or x.device != device:
            raise GradprojError(f"gradient piece '{name}' must be [{batch}, numel] on {device}")
        keys = param_keys(spec.seed, name, spec.kind)
        n, c = x.shape[1], 0
        while c < n:
            if used >= cols_per_buf:
                flush()
            take = min(n - c, cols_per_buf - used)
            group.append((x[:, c: c + take], c, c + take, keys))
            used += take
            c += take
    flush()
    return out


__all__ = [
    "CONFIG_ENV", "DEFAULT_CONFIG", "KernelConfig", "Segment", "default_config", "emulate_tile",
    "plan_work", "project_pieces_triton", "project_triton", "triton_available",
    "triton_disabled", "triton_importable",
]
