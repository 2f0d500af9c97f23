"""Adapters over traker's projectors, for comparison with gradproj's own hash projectors.

Both take the [B, P] concatenation of the pieces in layout order (pieces missing from a dict
count as zero) and return ``y = R_trak x / √k`` so that, as for every gradproj kind,
``E⟨y_a, y_b⟩ = ⟨a, b⟩`` (traker itself returns ``R_trak x`` unscaled). Both use Rademacher
matrices (``ProjectionType.rademacher``), traker's default on CUDA. Unlike the hash kinds,
``R_trak`` comes from torch's generator (``trak-basic``: one seed per block of 100 output
rows) or from fast_jl's kernel (``trak-cuda``), so the same seed gives a different matrix on a
different device type; it does not depend on the batch size.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from gradproj.core.errors import GradprojError
from gradproj.projection.base import Projector
from gradproj.projection.spec import Layout, ProjectorSpec

TRAK_BLOCK_SIZE = 100   # traker's default; part of what determines R_trak, so fixed here


class _TrakProjector(Projector):
    """Common part: concatenate the pieces, call traker's ``project``, scale by 1/√k."""

    kind = ""
    _proj: Any   # traker's projector, made by the subclass

    def __init__(self, spec: ProjectorSpec, layout: Layout, *,
                 device: torch.device | str | None = None) -> None:
        if spec.kind != self.kind:
            raise GradprojError(f"{type(self).__name__} does {self.kind}, not '{spec.kind}'")
        if spec.dtype != "float32":
            raise GradprojError(f"{self.kind} projects in float32 only, not {spec.dtype}")
        super().__init__(spec, layout, device=device)
        self._offsets: dict[str, int] = {}
        offset = 0
        for name, numel in self.layout:
            self._offsets[name] = offset
            offset += numel

    def _project(self, pieces: list[tuple[str, Tensor]], batch: int,
                 device: torch.device) -> Tensor:
        where = self.device or device
        if len(pieces) == len(self.layout):
            flat = torch.cat([t for _, t in pieces], dim=1).to(where, torch.float32)
        else:
            flat = torch.zeros(batch, self.dim, dtype=torch.float32, device=where)
            for name, t in pieces:
                flat[:, self._offsets[name]: self._offsets[name] + t.shape[1]] = t
        out = self._proj.project(flat.contiguous(), model_id=0)
        return (out.to(torch.float32) / math.sqrt(self.spec.k)).to(device)


class TrakBasicProjector(_TrakProjector):
    """traker's ``BasicProjector`` (blockwise ``torch.Generator`` Rademacher matrix), kept on
    ``device`` (default CPU): a [P, 100] float32 block lives there between calls."""

    kind = "trak-basic"

    def __init__(self, spec: ProjectorSpec, layout: Layout, *,
                 device: torch.device | str | None = None) -> None:
        super().__init__(spec, layout, device=device or "cpu")
        try:
            from trak.projectors import BasicProjector, ProjectionType
        except ImportError as err:
            raise GradprojError("trak-basic needs the traker package") from err
        self._proj = BasicProjector(grad_dim=self.dim, proj_dim=spec.k, seed=spec.seed,
                                    proj_type=ProjectionType.rademacher, device=self.device,
                                    block_size=TRAK_BLOCK_SIZE, dtype=torch.float32)


class TrakCudaProjector(_TrakProjector):
    """traker's ``CudaProjector`` (fast_jl kernel); needs fast_jl and a CUDA device."""

    kind = "trak-cuda"
    _MISSING = "trak-cuda needs the fast_jl package and a CUDA device"

    def __init__(self, spec: ProjectorSpec, layout: Layout, *,
                 device: torch.device | str | None = None, max_batch_size: int = 32) -> None:
        try:
            import fast_jl  # noqa: F401
        except (ImportError, OSError) as err:
            raise GradprojError(self._MISSING) from err
        device = torch.device(device or "cuda")
        if not torch.cuda.is_available() or device.type != "cuda":
            raise GradprojError(self._MISSING)
        super().__init__(spec, layout, device=device)
        from trak.projectors import CudaProjector, ProjectionType

        try:
            self._proj = CudaProjector(grad_dim=self.dim, proj_dim=spec.k, seed=spec.seed,
                                       proj_type=ProjectionType.rademacher, device=device,
                                       max_batch_size=max_batch_size)
        except (RuntimeError, ValueError, ModuleNotFoundError) as err:
            raise GradprojError(f"trak-cuda cannot run here: {err}") from err
