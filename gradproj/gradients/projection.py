"""Random projection of flattened per-pair gradients to k dimensions (TRAK-style).

A gradient is the concatenation, in *layout* order, of named parameter pieces: the layout is an
ordered tuple of ``(name, numel)`` and ``P = Σ numel``. Every projector maps ``x ∈ R^P`` to
``y = scale · R x ∈ R^k`` with ``R ∈ R^{k×P}``, chosen so that ``E⟨y_a, y_b⟩ = ⟨a, b⟩``:

* ``rademacher`` (default): ``R[r, c] ∈ {±1}``, ``scale = 1/√k``;
  ``Var⟨y_a, y_b⟩ = (1 + ⟨a,b⟩² − 2 Σ_c a_c² b_c²)/k``.
* ``gaussian``: ``R[r, c] ~ N(0, 1)``, ``scale = 1/√k``; ``Var = (1 + ⟨a,b⟩²)/k``.
* ``sjlt`` (sparse JL / count sketch with s hashes): column c holds
  ``R[:, c] = Σ_{j<s} σ_j(c) e_{b_j(c)}`` (buckets ``b_j`` uniform in ``[0, k)``, signs
  ``σ_j = ±1``, drawn independently, so two of them may share a row), ``scale = 1/√s`` — there
  is no 1/√k; ``Var ≈ (1 + ⟨a,b⟩²)/k``. Cost ``O(B·P·s)`` by ``index_add``.
* ``trak-basic`` / ``trak-cuda``: adapters over traker (see :mod:`gradproj.trak_projectors`);
  their matrices come from torch's or fast_jl's generator and depend on the device.

For the hash kinds, each entry of R is a pure function of ``(seed, parameter name, row r, column
c)`` with c counted *within* the parameter, so the output does not depend on the device, the
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
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor

from gradproj.core.errors import GradprojError

PROJECTION_VERSION = 1
KINDS = ("rademacher", "gaussian", "sjlt", "trak-basic", "trak-cuda")
HASH_KINDS = ("rademacher", "gaussian", "sjlt")
DTYPES = {"float32": torch.float32, "float64": torch.float64,
          "bfloat16": torch.bfloat16, "float16": torch.float16}
MAX_K = 1 << 24          # keeps h·k (sjlt buckets) far inside int64
MAX_NUMEL = 1 << 32      # columns are 32-bit counters

_M32 = 0xFFFFFFFF
_MUL1, _MUL2 = 0x7FEB352D, 0x846CA68B
_MUL1_S, _MUL2_S = _MUL1, _MUL2 - (1 << 32)   # same residues mod 2³², |·| ≤ 2³¹: h·C fits int64
_STREAM = {"rademacher": 0x52414445, "gaussian": 0x47415553, "sjlt": 0x534A4C54}
_COL_TAG = 0xC01DC0DE
_GAUSS_TAG = 0x9E3779B9
Layout = Sequence[tuple[str, int]]


# ---------------------------------------------------------------------------- hashing

def _require(ok: bool, message: str) -> None:
    if not ok:
        raise GradprojError(message)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _mix32_int(h: int) -> int:
    """lowbias32 on a Python int in [0, 2³²) (the scalar reference)."""
    h ^= h >> 16
    h = (h * _MUL1) & _M32
    h ^= h >> 15
    h = (h * _MUL2) & _M32
    return h ^ (h >> 16)


def _mix32(h: Tensor) -> Tensor:
    """lowbias32 in place on an int64 tensor with values in [0, 2³²); returns ``h``."""
    tmp = torch.empty_like(h)
    h.bitwise_xor_(torch.bitwise_right_shift(h, 16, out=tmp))
    h.mul_(_MUL1_S).bitwise_and_(_M32)
    h.bitwise_xor_(torch.bitwise_right_shift(h, 15, out=tmp))
    h.mul_(_MUL2_S).bitwise_and_(_M32)
    return h.bitwise_xor_(torch.bitwise_right_shift(h, 16, out=tmp))


def _hash64(text: str) -> tuple[int, int]:
    """Stable hash of a string as two 32-bit halves (blake2b; ``hash()`` is salted per run)."""
    h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")
    return h & _M32, h >> 32


def _keys(seed: int, name: str, kind: str) -> tuple[int, int]:
    """(row_key, col_key): 64 bits of (seed, name) in all, so that two parameters share a
    block with probability 2⁻⁶⁴, not 2⁻³²."""
    (s0, s1), (n0, n1) = _hash64(f"seed:{seed}"), _hash64(f"param:{name}")
    row_key = _mix32_int(s0 ^ n0 ^ _STREAM[kind])
    return row_key, _mix32_int(_mix32_int(row_key ^ _COL_TAG) ^ s1 ^ n1)


def _word_hashes(keys: tuple[int, int], r0: int, r1: int, w0: int, w1: int,
                 device: torch.device) -> Tensor:
    """``word(r, w)`` for r in [r0, r1) and w in [w0, w1): int64 [r1 − r0, w1 − w0]."""
    rows = _mix32(torch.arange(r0, r1, dtype=torch.int64, device=device) ^ keys[0])
    cols = _mix32(torch.arange(w0, w1, dtype=torch.int64, device=device) ^ keys[1])
    return _mix32(rows[:, None] ^ cols[None, :])


def _entry_reference(seed: int, name: str, row: int, col: int, kind: str, *,
                     k: int | None = None, sjlt_s: int = 4) -> float:
    """Scalar pure-Python value of the unscaled ``R[row, col]`` (``k`` needed for sjlt)."""
    row_key, col_key = _keys(seed, name, kind)

    def word(r: int, w: int) -> int:
        return _mix32_int(_mix32_int(row_key ^ r) ^ _mix32_int(col_key ^ w))

    if kind == "rademacher":
        return -1.0 if (word(row, col >> 5) >> (col & 31)) & 1 else 1.0
    if kind == "gaussian":
        h1 = word(row, col >> 1)
        h2 = _mix32_int(h1 ^ _GAUSS_TAG)
        u1, u2 = ((h1 >> 8) + 1) / 2**24, (h2 >> 8) / 2**24
        radius, angle = math.sqrt(-2.0 * math.log(u1)), 2.0 * math.pi * u2
        return radius * (math.cos(angle) if col % 2 == 0 else math.sin(angle))
    _require(kind == "sjlt" and k is not None, f"no reference entries for '{kind}' (k={k})")
    hs = [word(j, col) for j in range(sjlt_s)]
    return float(sum(1 - 2 * (h & 1) for h in hs if (h * k) >> 32 == row))


_SIGN_TABLES: dict[tuple[torch.device, torch.dtype], Tensor] = {}


def _sign_table(device: torch.device, dtype: torch.dtype) -> Tensor:
    """[256, 8]: row b holds ``1 − 2·bit_i(b)`` for i < 8 (one byte → 8 Rademacher signs)."""
    key = (device, dtype)
    if key not in _SIGN_TABLES:
        bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1
        _SIGN_TABLES[key] = (1 - 2 * bits).to(device=device, dtype=dtype).contiguous()
    return _SIGN_TABLES[key]


def _rademacher_block(keys: tuple[int, int], k: int, c0: int, c1: int, device: torch.device,
                      dtype: torch.dtype, out: Tensor | None = None) -> Tensor:
    """[k, c1−c0] signs: one word hash per 32 columns, expanded byte-wise through a table, into
    ``out`` if given (a flat buffer of ≥ k·(c1−c0+62) entries; reusing one is much faster)."""
    w0, w1 = c0 >> 5, ((c1 - 1) >> 5) + 1
    words = _word_hashes(keys, 0, k, w0, w1, device)                          # [k, W]
    shifts = torch.tensor([0, 8, 16, 24], dtype=torch.int64, device=device)
    byte_idx = ((words[:, :, None] >> shifts) & 255).reshape(-1)            # [k·W·4]
    n = k * (w1 - w0) * 32
    out = torch.empty(n, dtype=dtype, device=device) if out is None else out[:n]
    torch.index_select(_sign_table(device, dtype), 0, byte_idx, out=out.view(-1, 8))
    return out.view(k, (w1 - w0) * 32)[:, c0 - 32 * w0: c1 - 32 * w0]


def _gaussian_block(keys: tuple[int, int], k: int, c0: int, c1: int,
                    device: torch.device) -> Tensor:
    """[k, c1−c0] float32 N(0, 1): Box–Muller on two 24-bit uniforms per pair of columns
    (on CPU in slices of rows small enough for the int64 temporaries to stay in cache)."""
    m0, m1 = c0 >> 1, ((c1 - 1) >> 1) + 1
    pairs = torch.empty(k, m1 - m0, 2, dtype=torch.float32, device=device)
    step = k if device.type != "cpu" else max(1, (1 << 17) // (m1 - m0))
    for r0 in range(0, k, step):
        r1 = min(r0 + step, k)
        h1 = _word_hashes(keys, r0, r1, m0, m1, device)                     # [rows, M]
        h2 = _mix32(h1 ^ _GAUSS_TAG).bitwise_right_shift_(8)
        angle = h2.to(torch.float32).mul_(2.0 * math.pi * 2.0**-24)         # 2π·u2
        radius = h1.bitwise_right_shift_(8).add_(1).to(torch.float32)       # 2²⁴·u1
        radius.mul_(2.0**-24).log_().mul_(-2.0).sqrt_()
        torch.mul(torch.cos(angle), radius, out=pairs[r0:r1, :, 0])
        torch.mul(angle.sin_(), radius, out=pairs[r0:r1, :, 1])
    return pairs.view(k, 2 * (m1 - m0))[:, c0 - 2 * m0: c1 - 2 * m0]


def _sjlt_hashes(spec: ProjectorSpec, name: str, c0: int, c1: int,
                 device: torch.device) -> tuple[Tensor, Tensor]:
    """Buckets int64 [s, c1−c0] in [0, k) and signs float32 [s, c1−c0] of columns c0..c1−1."""
    h = _word_hashes(_keys(spec.seed, name, "sjlt"), 0, spec.sjlt_s, c0, c1, device)
    signs = (1 - 2 * (h & 1)).to(torch.float32)
    return (h * spec.k) >> 32, signs


def projection_block(spec: ProjectorSpec, name: str, numel: int, col_start: int, col_stop: int,
                     device: torch.device | str | None = None, *,
                     dtype: torch.dtype = torch.float32) -> Tensor:
    """Unscaled block ``R[:, col_start:col_stop]`` of parameter ``name``: [k, col_stop − col_start].

    Entries are ±1 (rademacher), N(0, 1) (gaussian) or ``Σ_j σ_j [b_j = r]`` (sjlt, usually 0
    or ±1). Multiply by 1/√k (dense) or 1/√s (sjlt) to get the projection.
    """
    _require(spec.kind in HASH_KINDS, f"projection kind '{spec.kind}' has no hash blocks")
    _require(0 <= col_start < col_stop <= numel, f"block columns [{col_start}, {col_stop}) "
             f"are outside parameter '{name}' of {numel} entries")
    device = torch.device(device or "cpu")
    keys = _keys(spec.seed, name, spec.kind)
    if spec.kind == "rademacher":
        return _rademacher_block(keys, spec.k, col_start, col_stop, device, dtype).contiguous()
    if spec.kind == "gaussian":
        return _gaussian_block(keys, spec.k, col_start, col_stop, device).to(dtype)
    buckets, signs = _sjlt_hashes(spec, name, col_start, col_stop, device)
    block = torch.zeros(spec.k, col_stop - col_start, dtype=torch.float32, device=device)
    return block.scatter_add_(0, buckets, signs).to(dtype)


# ---------------------------------------------------------------------------- spec and layout

def _check_layout(layout: Layout) -> tuple[tuple[str, int], ...]:
    out: dict[str, int] = {}
    for item in layout:
        _require(isinstance(item, (tuple, list)) and len(item) == 2,
                 f"layout entries must be (name, numel) pairs, got {item!r}")
        name, numel = item
        _require(isinstance(name, str) and name != "", f"bad layout name {name!r}")
        _require(_is_int(numel) and 1 <= numel <= MAX_NUMEL,
                 f"parameter '{name}' has numel {numel!r}; expected an int in [1, 2^32]")
        _require(name not in out, f"parameter '{name}' appears twice in the layout")
        out[name] = numel
    _require(bool(out), "the parameter layout is empty")
    return tuple(out.items())


def layout_hash(layout: Layout) -> str:
    """sha256 (hex) of the JSON list ``[[name, numel], ...]`` in layout order."""
    text = json.dumps([list(p) for p in _check_layout(layout)], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class ProjectorSpec:
    """Everything that determines R (with the layout); stored beside the projected gradients."""

    kind: str
    k: int
    seed: int = 0
    layout_hash: str = ""
    sjlt_s: int = 4
    dtype: str = "float32"
    version: int = PROJECTION_VERSION

    def __post_init__(self) -> None:
        _require(self.kind in KINDS, f"unknown projection kind '{self.kind}' "
                                     f"(expected one of {', '.join(KINDS)})")
        _require(_is_int(self.k) and 1 <= self.k <= MAX_K,
                 f"projection dimension k must be an int in [1, {MAX_K}], got {self.k!r}")
        _require(_is_int(self.seed), f"projection seed must be an int, got {self.seed!r}")
        _require(_is_int(self.sjlt_s) and self.sjlt_s >= 1,
                 f"sjlt_s must be an int >= 1, got {self.sjlt_s!r}")
        _require(self.dtype in DTYPES, f"unknown projection dtype '{self.dtype}' "
                                       f"(expected one of {', '.join(DTYPES)})")
        _require(isinstance(self.layout_hash, str) and _is_int(self.version),
                 "projector spec has a malformed layout_hash or version")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ProjectorSpec:
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        _require(not unknown, f"projector spec has unknown field(s): {', '.join(unknown)}")
        missing = [n for n in ("kind", "k") if n not in d]
        _require(not missing, f"projector spec lacks field(s): {', '.join(missing)}")
        return cls(**dict(d))

    def diff(self, other: ProjectorSpec) -> list[str]:
        """Names of the fields whose values differ, in declaration order."""
        return [f.name for f in fields(self) if getattr(self, f.name) != getattr(other, f.name)]


# ---------------------------------------------------------------------------- projectors

class Projector(ABC):
    """``project(grads) = scale · R x``: [B, P] (or a dict of pieces) → [B, k] float32."""

    spec: ProjectorSpec
    layout: tuple[tuple[str, int], ...]

    def __init__(self, spec: ProjectorSpec, layout: Layout, *,
                 device: torch.device | str | None = None) -> None:
        self.layout = _check_layout(layout)
        lh = layout_hash(self.layout)
        _require(spec.layout_hash in ("", lh), "projector spec was made for a different "
                                               "parameter layout (layout_hash differs)")
        _require(spec.version == PROJECTION_VERSION, f"projector spec has version {spec.version};"
                 f" this gradproj implements projection version {PROJECTION_VERSION}")
        self.spec = replace(spec, layout_hash=lh)
        self.device = torch.device(device) if device is not None else None
        self.dim = sum(n for _, n in self.layout)
        self._numel = dict(self.layout)

    def project(self, grads: Mapping[str, Tensor] | Tensor) -> Tensor:
        """Project a batch: ``grads`` is a [B, P] tensor in layout order, or a dict
        ``name → [B, numel_name]`` over any subset of the layout (missing pieces count as zero,
        so projections of a partition of the names sum to the projection of the whole).
        Returns [B, k] float32 on the device of ``grads``."""
        pieces = self._pieces(grads)
        with torch.no_grad():
            return self._project(pieces, pieces[0][1].shape[0], pieces[0][1].device).float()

    @abstractmethod
    def _project(self, pieces: list[tuple[str, Tensor]], batch: int,
                 device: torch.device) -> Tensor:
        """Sum of the pieces' projections, [batch, k] on ``device``."""

    def _pieces(self, grads: Mapping[str, Tensor] | Tensor) -> list[tuple[str, Tensor]]:
        """Validated ``(name, [B, numel])`` pieces in layout order."""
        if isinstance(grads, Tensor):
            _require(grads.dim() == 2 and grads.shape[1] == self.dim, f"expected a "
                     f"[B, {self.dim}] gradient tensor, got shape {tuple(grads.shape)}")
            parts = grads.split(list(self._numel.values()), dim=1)
            pieces = list(zip(self._numel, parts, strict=True))
        else:
            _require(isinstance(grads, Mapping), f"cannot project a {type(grads).__name__}")
            unknown = [n for n in grads if n not in self._numel]
            _require(not unknown, f"gradient piece {unknown[:1]} is not in the layout")
            pieces = [(n, grads[n]) for n in self._numel if n in grads]
        _require(bool(pieces), "no gradient pieces to project")
        for name, t in pieces:
            _require(isinstance(t, Tensor) and t.is_floating_point() and t.dim() >= 2,
                     f"gradient piece '{name}' must be a floating-point [B, ...] tensor")
        batch, device = pieces[0][1].shape[0], pieces[0][1].device
        for name, t in pieces:
            _require(t.shape[0] == batch and t.device == device, f"gradient piece '{name}' has "
                     f"batch {t.shape[0]} on {t.device}; expected {batch} on {device}")
            n = math.prod(t.shape[1:])
            _require(n == self._numel[name], f"gradient piece '{name}' has {n} entries per "
                     f"row; the layout says {self._numel[name]}")
        return [(name, t.flatten(1)) for name, t in pieces]

    def _cached_names(self, bytes_per_col: int, cache_mb: float) -> set[str]:
        """Parameters, in layout order, whose whole R fits in what is left of the budget."""
        left, names = cache_mb * 2**20, set()
        for name, numel in self.layout:
            if numel * bytes_per_col <= left:
                names.add(name)
                left -= numel * bytes_per_col
        return names


class HashProjector(Projector):
    """Dense rademacher / gaussian projection ``y = R x / √k``, generated blockwise on the fly.

    At most a [k, block_cols] block of R exists at a time (made on the grads' device, then
    ``acc += x_block @ R_blockᵀ`` in fp32, or fp64 when ``dtype='float64'``), unless
    ``cache_mb`` lets whole parameters' [k, numel] blocks be kept (taken in layout order while
    they fit; each made once, on first use, on ``device`` if given). Not thread-safe: blocks
    are written into one reused buffer. On CUDA, results match the CPU to fp32 rounding only
    while TF32 matmuls are off (torch's default)."""

    def __init__(self, spec: ProjectorSpec, layout: Layout, *, block_cols: int = 4096,
                 cache_mb: float = 0.0, device: torch.device | str | None = None,
                 use_triton: bool = True) -> None:
        """``use_triton``: on CUDA, use the fused Triton kernel (gradproj.kernels) when triton is
        importable and GRADPROJ_NO_TRITON is unset; R is then never stored (cache_mb unused)."""
        _require(spec.kind in ("rademacher", "gaussian"),
                 f"HashProjector does rademacher or gaussian, not '{spec.kind}'")
        _require(_is_int(block_cols) and block_cols >= 1, f"bad block_cols {block_cols!r}")
        super().__init__(spec, layout, device=device)
        self.block_cols = min(block_cols, max(self._numel.values()))
        self.dtype = DTYPES[self.spec.dtype]
        self._cache_names = self._cached_names(spec.k * self.dtype.itemsize, cache_mb)
        self._cache: dict[str, Tensor] = {}
        self._workspace: Tensor | None = None
        self.use_triton = use_triton

    def _block(self, name: str, c0: int, c1: int, device: torch.device) -> Tensor:
        k = self.spec.k
        keys = _keys(self.spec.seed, name, self.spec.kind)
        if self.spec.kind == "gaussian":
            return _gaussian_block(keys, k, c0, c1, device).to(self.dtype)
        ws = self._workspace
        if ws is None or ws.device != device:
            ws = self._workspace = torch.empty(k * (self.block_cols + 64), dtype=self.dtype,
                                               device=device)
        return _rademacher_block(keys, k, c0, c1, device, self.dtype, ws)

    def _full(self, name: str, device: torch.device) -> Tensor:
        """The cached [k, numel] R of ``name`` (made blockwise on first use)."""
        if name not in self._cache:
            where, numel = self.device or device, self._numel[name]
            full = torch.empty(self.spec.k, numel, dtype=self.dtype, device=where)
            for c0 in range(0, numel, self.block_cols):
                c1 = min(c0 + self.block_cols, numel)
                full[:, c0:c1] = self._block(name, c0, c1, where)
            self._cache[name] = full
        return self._cache[name].to(device)

    def _project(self, pieces: list[tuple[str, Tensor]], batch: int,
                 device: torch.device) -> Tensor:
        if self.use_triton and device.type == "cuda" and self.spec.dtype != "float64":
            from gradproj.gradients.kernels import project_pieces_triton, triton_available

            if triton_available():
                return project_pieces_triton(self.spec, pieces)
        acc_dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        acc = torch.zeros(batch, self.spec.k, dtype=acc_dtype, device=device)
        for name, x in pieces:
            x = x.to(self.dtype)
            cached = name in self._cache_names
            for c0 in range(0, x.shape[1], x.shape[1] if cached else self.block_cols):
                c1 = x.shape[1] if cached else min(c0 + self.block_cols, x.shape[1])
                r = self._full(name, device) if cached else self._block(name, c0, c1, device)
                if x.dtype == acc_dtype:
                    acc.addmm_(x[:, c0:c1], r.T)
                else:   # half precision: matmul in dtype, sums in fp32
                    acc.add_((x[:, c0:c1] @ r.T).to(acc_dtype))
        return acc.mul_(1.0 / math.sqrt(self.spec.k))


class SJLTProjector(Projector):
    """Sparse JL ``y = R x / √s``: ``y[:, b_j(c)] += σ_j(c) · x[:, c] / √s`` for j < s.

    Columns go in chunks of ``block_cols``; ``cache_mb`` keeps the buckets and signs of whole
    parameters (12·s bytes per column) in layout order while they fit. Sums are fp32 (fp64
    when ``dtype='float64'``)."""

    def __init__(self, spec: ProjectorSpec, layout: Layout, *, block_cols: int = 4096,
                 cache_mb: float = 0.0, device: torch.device | str | None = None) -> None:
        _require(spec.kind == "sjlt", f"SJLTProjector does sjlt, not '{spec.kind}'")
        _require(_is_int(block_cols) and block_cols >= 1, f"bad block_cols {block_cols!r}")
        super().__init__(spec, layout, device=device)
        self.block_cols = block_cols
        self._cache_names = self._cached_names(12 * spec.sjlt_s, cache_mb)
        self._cache: dict[str, tuple[Tensor, Tensor]] = {}

    def _hashes(self, name: str, c0: int, c1: int, device: torch.device) -> tuple[Tensor, Tensor]:
        if name not in self._cache_names:
            return _sjlt_hashes(self.spec, name, c0, c1, device)
        if name not in self._cache:
            where = self.device or device
            self._cache[name] = _sjlt_hashes(self.spec, name, 0, self._numel[name], where)
        buckets, signs = self._cache[name]
        return buckets[:, c0:c1].to(device), signs[:, c0:c1].to(device)

    def _project(self, pieces: list[tuple[str, Tensor]], batch: int,
                 device: torch.device) -> Tensor:
        dtype = torch.float64 if self.spec.dtype == "float64" else torch.float32
        acc = torch.zeros(batch, self.spec.k, dtype=dtype, device=device)
        for name, x in pieces:
            for c0 in range(0, x.shape[1], self.block_cols):
                c1 = min(c0 + self.block_cols, x.shape[1])
                buckets, signs = self._hashes(name, c0, c1, device)
                src = x[:, None, c0:c1].to(dtype) * signs.to(dtype)           # [B, s, cols]
                acc.index_add_(1, buckets.reshape(-1), src.reshape(batch, -1))
        return acc.mul_(1.0 / math.sqrt(self.spec.sjlt_s))


def projector_from_spec(spec: ProjectorSpec, layout: Layout, *, cache_mb: float = 0.0,
                        block_cols: int = 4096,
                        device: torch.device | str | None = None) -> Projector:
    """The projector a stored spec describes (its layout_hash, if set, must match ``layout``)."""
    if spec.kind in ("rademacher", "gaussian"):
        return HashProjector(spec, layout, block_cols=block_cols, cache_mb=cache_mb,
                             device=device)
    if spec.kind == "sjlt":
        return SJLTProjector(spec, layout, block_cols=block_cols, cache_mb=cache_mb,
                             device=device)
    from gradproj.gradients.trak import TrakBasicProjector, TrakCudaProjector

    cls = TrakBasicProjector if spec.kind == "trak-basic" else TrakCudaProjector
    return cls(spec, layout, device=device)


def make_projector(kind: str, k: int, layout: Layout, *, seed: int = 0, sjlt_s: int = 4,
                   cache_mb: float = 0.0, block_cols: int = 4096,
                   device: torch.device | str | None = None,
                   dtype: str = "float32") -> Projector:
    """Build a projector; its ``spec.layout_hash`` is filled from ``layout``."""
    spec = ProjectorSpec(kind=kind, k=k, seed=seed, layout_hash=layout_hash(layout),
                         sjlt_s=sjlt_s, dtype=dtype)
    return projector_from_spec(spec, layout, cache_mb=cache_mb, block_cols=block_cols,
                               device=device)
