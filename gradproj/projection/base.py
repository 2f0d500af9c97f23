"""Random projection of flattened per-pair gradients to k dimensions (TRAK-style).

A gradient is the concatenation, in *layout* order, of named parameter pieces (see
:mod:`.spec`); ``P = Σ numel``. Every projector maps ``x ∈ R^P`` to ``y = scale · R x ∈ R^k``
with ``R ∈ R^{k×P}``, chosen so that ``E⟨y_a, y_b⟩ = ⟨a, b⟩``:

* ``rademacher`` (default): ``R[r, c] ∈ {±1}``, ``scale = 1/√k``;
  ``Var⟨y_a, y_b⟩ = (1 + ⟨a,b⟩² − 2 Σ_c a_c² b_c²)/k``.
* ``gaussian``: ``R[r, c] ~ N(0, 1)``, ``scale = 1/√k``; ``Var = (1 + ⟨a,b⟩²)/k``.
* ``sjlt`` (sparse JL / count sketch with s hashes): column c holds
  ``R[:, c] = Σ_{j<s} σ_j(c) e_{b_j(c)}`` (buckets ``b_j`` uniform in ``[0, k)``, signs
  ``σ_j = ±1``, drawn independently, so two of them may share a row), ``scale = 1/√s`` — there
  is no 1/√k; ``Var ≈ (1 + ⟨a,b⟩²)/k``. Cost ``O(B·P·s)`` by ``index_add``.
* ``trak-basic`` / ``trak-cuda``: adapters over traker (see :mod:`.trak`); their matrices come
  from torch's or fast_jl's generator and depend on the device.

The hash kinds' entries come from the counter-based hash of :mod:`.counter_hash` (a pure
function of seed, parameter name, row and column within the parameter), so their output does
not depend on the device, the batch size, the block size or how the caller splits the
parameters. This module holds the base class and the hash projectors; build one from a spec
with :func:`gradproj.projection.factory.projector_from_spec`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

from gradproj.core.errors import GradprojError
from gradproj.projection.counter_hash import (
    gaussian_block,
    param_keys,
    rademacher_block,
    sjlt_hashes,
)
from gradproj.projection.spec import (
    DTYPES,
    HASH_KINDS,
    PROJECTION_VERSION,
    Layout,
    ProjectorSpec,
    check_layout,
    layout_hash,
)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise GradprojError(message)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _sjlt_hashes(spec: ProjectorSpec, name: str, c0: int, c1: int,
                 device: torch.device) -> tuple[Tensor, Tensor]:
    """Buckets int64 [s, c1−c0] in [0, k) and signs float32 [s, c1−c0] of columns c0..c1−1."""
    return sjlt_hashes(param_keys(spec.seed, name, "sjlt"), spec.k, spec.sjlt_s, c0, c1, device)


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
    keys = param_keys(spec.seed, name, spec.kind)
    if spec.kind == "rademacher":
        return rademacher_block(keys, spec.k, col_start, col_stop, device, dtype).contiguous()
    if spec.kind == "gaussian":
        return gaussian_block(keys, spec.k, col_start, col_stop, device).to(dtype)
    buckets, signs = _sjlt_hashes(spec, name, col_start, col_stop, device)
    block = torch.zeros(spec.k, col_stop - col_start, dtype=torch.float32, device=device)
    return block.scatter_add_(0, buckets, signs).to(dtype)


# ---------------------------------------------------------------------------- projectors

class Projector(ABC):
    """``project(grads) = scale · R x``: [B, P] (or a dict of pieces) → [B, k] float32."""

    spec: ProjectorSpec
    layout: tuple[tuple[str, int], ...]

    def __init__(self, spec: ProjectorSpec, layout: Layout, *,
                 device: torch.device | str | None = None) -> None:
        self.layout = check_layout(layout)
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
        """``use_triton``: on CUDA, use the fused Triton kernel (gradproj.projection.kernels) when
        triton is importable and GRADPROJ_NO_TRITON is unset; R is then never stored (cache_mb
        unused)."""
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
        keys = param_keys(self.spec.seed, name, self.spec.kind)
        if self.spec.kind == "gaussian":
            return gaussian_block(keys, k, c0, c1, device).to(self.dtype)
        ws = self._workspace
        if ws is None or ws.device != device:
            ws = self._workspace = torch.empty(k * (self.block_cols + 64), dtype=self.dtype,
                                               device=device)
        return rademacher_block(keys, k, c0, c1, device, self.dtype, ws)

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
            # imported here: the kernels module imports triton, which takes seconds
            from gradproj.projection.kernels import project_pieces_triton, triton_available

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
