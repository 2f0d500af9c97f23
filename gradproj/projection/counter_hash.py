"""The counter-based hash that makes the entries of the random projection matrices R.

For the hash kinds, each entry of R is a pure function of ``(seed, parameter name, row r, column
c)`` with c counted *within* the parameter, so a projection does not depend on the device, the
batch size, the block size or how the caller splits the parameters. The hash is murmur-style
32-bit mixing (Wellons' "lowbias32") done in int64 torch arithmetic (portable to Triton)::

    mix(h)    = h ^= h>>16; h = h·0x7feb352d mod 2³²; h ^= h>>15; h = h·0x846ca68b mod 2³²;
                h ^= h>>16
    S0, S1    = 32-bit halves of blake2b64("seed:<seed>"); N0, N1 likewise of "param:<name>"
    row_key   = mix(S0 ^ N0 ^ STREAM[kind]);  col_key = mix(mix(row_key ^ COL_TAG) ^ S1 ^ N1)
    word(r,w) = mix(mix(row_key ^ r) ^ mix(col_key ^ w))

* rademacher: ``R[r, c] = +1`` if bit ``c mod 32`` of ``word(r, ⌊c/32⌋)`` is 0, else ``−1``.
* gaussian: ``h1 = word(r, ⌊c/2⌋)``, ``h2 = mix(h1 ^ GAUSS_TAG)``,
  ``u1 = (⌊h1/2⁸⌋ + 1)/2²⁴ ∈ (0, 1]``, ``u2 = ⌊h2/2⁸⌋/2²⁴``; Box–Muller
  ``R[r, c] = √(−2 ln u1) · (cos 2πu2 if c even else sin 2πu2)``.
* sjlt: ``h = word(j, c)`` for ``j < s``; ``b_j(c) = ⌊h·k / 2³²⌋``, ``σ_j(c) = 1 − 2·(h & 1)``.

A product of a value below 2³² with a constant C is kept inside int64 by multiplying with
``C − 2³²`` when ``C ≥ 2³¹`` (same residue mod 2³², magnitude below 2⁶³), then masking.

This module knows keys, rows and columns only (no spec, no layout): :mod:`.projection` builds
projectors on it, and :mod:`.kernels` makes the same entries in a fused Triton kernel (which
spells ``MUL1``, ``MUL2`` and ``GAUSS_TAG`` as literals).
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor


MAX_K = 1 << 24          # keeps h·k (sjlt buckets) far inside int64
MAX_NUMEL = 1 << 32      # columns are 32-bit counters
MUL1, MUL2 = 0x7FEB352D, 0x846CA68B     # lowbias32's multipliers
GAUSS_TAG = 0x9E3779B9                  # h2 = mix(h1 ^ GAUSS_TAG) (gaussian's second uniform)

_M32 = 0xFFFFFFFF
_MUL1_S, _MUL2_S = MUL1, MUL2 - (1 << 32)     # same residues mod 2³², |·| ≤ 2³¹: h·C fits int64
_STREAM = {"rademacher": 0x52414445, "gaussian": 0x47415553, "sjlt": 0x534A4C54}
_COL_TAG = 0xC01DC0DE


def mix32_int(h: int) -> int:
    """lowbias32 on a Python int in [0, 2³²) (the scalar reference)."""
    h ^= h >> 16
    h = (h * MUL1) & _M32
    h ^= h >> 15
    h = (h * MUL2) & _M32
    return h ^ (h >> 16)


def mix32(h: Tensor) -> Tensor:
    """lowbias32 in place on an int64 tensor with values in [0, 2³²); returns ``h``."""
    tmp = torch.empty_like(h)
    h.bitwise_xor_(torch.bitwise_right_shift(h, 16, out=tmp))
    h.mul_(_MUL1_S).bitwise_and_(_M32)
    h.bitwise_xor_(torch.bitwise_right_shift(h, 15, out=tmp))
    h.mul_(_MUL2_S).bitwise_and_(_M32)
    return h.bitwise_xor_(torch.bitwise_right_shift(h, 16, out=tmp))


def hash64(text: str) -> tuple[int, int]:
    """Stable hash of a string as two 32-bit halves (blake2b; ``hash()`` is salted per run)."""
    h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return h & _M32, h >> 32


def param_keys(seed: int, name: str, kind: str) -> tuple[int, int]:
    """(row_key, col_key) of parameter ``name`` for ``kind``: 64 bits of (seed, name) in all,
    so that two parameters share a block with probability 2⁻⁶⁴, not 2⁻³²."""
    (s0, s1), (n0, n1) = hash64(f"seed:{seed}"), hash64(f"param:{name}")
    row_key = mix32_int(s0 ^ n0 ^ _STREAM[kind])
    return row_key, mix32_int(mix32_int(row_key ^ _COL_TAG) ^ s1 ^ n1)


def word_hashes(keys: tuple[int, int], r0: int, r1: int, w0: int, w1: int,
                device: torch.device) -> Tensor:
    """``word(r, w)`` for r in [r0, r1) and w in [w0, w1): int64 [r1 − r0, w1 − w0]."""
    rows = mix32(torch.arange(r0, r1, dtype=torch.int64, device=device) ^ keys[0])
    cols = mix32(torch.arange(w0, w1, dtype=torch.int64, device=device) ^ keys[1])
    return mix32(rows[:, None] ^ cols[None, :])


_SIGN_TABLES: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def _sign_table(device: torch.device, dtype: torch.dtype) -> Tensor:
    """[256, 8]: row b holds ``1 − 2·bit_i(b)`` for i < 8 (one byte → 8 Rademacher signs)."""
    key = (device, dtype)
    if key not in _SIGN_TABLES:
        bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1
        _SIGN_TABLES[key] = (1 - 2 * bits).to(device=device, dtype=dtype).contiguous()
    return _SIGN_TABLES[key]


def rademacher_block(keys: tuple[int, int], k: int, c0: int, c1: int, device: torch.device,
                     dtype: torch.dtype, out: Tensor | None = None) -> Tensor:
    """[k, c1−c0] signs: one word hash per 32 columns, expanded byte-wise through a table, into
    ``out`` if given (a flat buffer of ≥ k·(c1−c0+62) entries; reusing one is much faster)."""
    w0, w1 = c0 >> 5, ((c1 - 1) >> 5) + 1
    words = word_hashes(keys, 0, k, w0, w1, device)                           # [k, W]
    shifts = torch.tensor([0, 8, 16, 24], dtype=torch.int64, device=device)
    byte_idx = ((words[:, :, None] >> shifts) & 255).reshape(-1)            # [k·W·4]
    n = k * (w1 - w0) * 32
    out = torch.empty(n, dtype=dtype, device=device) if out is None else out[:n]
    torch.index_select(_sign_table(device, dtype), 0, byte_idx, out=out.view(-1, 8))
    return out.view(k, (w1 - w0) * 32)[:, c0 - 32 * w0: c1 - 32 * w0]


def gaussian_block(keys: tuple[int, int], k: int, c0: int, c1: int,
                   device: torch.device) -> Tensor:
    """[k, c1−c0] float32 N(0, 1): Box–Muller on two 24-bit uniforms per pair of columns
    (on CPU in slices of rows small enough for the int64 temporaries to stay in cache)."""
    m0, m1 = c0 >> 1, ((c1 - 1) >> 1) + 1
    pairs = torch.empty(k, m1 - m0, 2, dtype=torch.float32, device=device)
    step = k if device.type != "cpu" else max(1, (1 << 17) // (m1 - m0))
    for r0 in range(0, k, step):
        r1 = min(r0 + step, k)
        h1 = word_hashes(keys, r0, r1, m0, m1, device)                      # [rows, M]
        h2 = mix32(h1 ^ GAUSS_TAG).bitwise_right_shift_(8)
        angle = h2.to(torch.float32).mul_(2.0 * math.pi * 2.0**-24)         # 2π·u2
        radius = h1.bitwise_right_shift_(8).add_(1).to(torch.float32)       # 2²⁴·u1
        radius.mul_(2.0**-24).log_().mul_(-2.0).sqrt_()
        torch.mul(torch.cos(angle), radius, out=pairs[r0:r1, :, 0])
        torch.mul(angle.sin_(), radius, out=pairs[r0:r1, :, 1])
    return pairs.view(k, 2 * (m1 - m0))[:, c0 - 2 * m0: c1 - 2 * m0]


def sjlt_hashes(keys: tuple[int, int], k: int, s: int, c0: int, c1: int,
                device: torch.device) -> tuple[Tensor, Tensor]:
    """Buckets int64 [s, c1−c0] in [0, k) and signs float32 [s, c1−c0] of columns c0..c1−1
    (``keys``: the parameter's sjlt keys, :func:`param_keys` with kind ``'sjlt'``)."""
    h = word_hashes(keys, 0, s, c0, c1, device)
    signs = (1 - 2 * (h & 1)).to(torch.float32)
    return (h * k) >> 32, signs
