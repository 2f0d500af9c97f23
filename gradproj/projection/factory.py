"""Projectors by name: the one factory over gradproj's hash projectors and traker's adapters.

``make_projector(kind, k, layout)`` and ``projector_from_spec(spec, layout)`` return a
:class:`~gradproj.projection.base.Projector` (``project(grads) = scale · R x``, [B, P] or
a dict of pieces → [B, k] float32): :class:`HashProjector` for rademacher and gaussian,
:class:`SJLTProjector` for sjlt, traker's adapters (:mod:`.trak`) for trak-basic and trak-cuda.
"""

from __future__ import annotations

import torch

from gradproj.projection.base import HashProjector, Projector, SJLTProjector
from gradproj.projection.spec import Layout, ProjectorSpec, layout_hash
from gradproj.projection.trak import TrakBasicProjector, TrakCudaProjector


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
