"""Optional GPU kernels. Importing this package never needs triton or CUDA.

* :func:`project_pieces_triton` / :func:`project_triton` — the fused hash projection
  (``gradproj.projection.kernels.triton_projection``), equal to
  :class:`gradproj.projection.base.HashProjector` on the same spec within the precision's
  bound;
* :func:`triton_available` — CUDA present, triton importable, ``GRADPROJ_NO_TRITON`` unset;
* :func:`emulate_tile` — the kernel's tile generation in numpy uint32 arithmetic (CPU tests).
"""

from gradproj.projection.kernels.triton_projection import (
    CONFIG_ENV,
    DEFAULT_CONFIG,
    DISABLE_ENV,
    KernelConfig,
    Segment,
    default_config,
    emulate_tile,
    plan_work,
    project_pieces_triton,
    project_triton,
    triton_available,
    triton_disabled,
    triton_importable,
)

__all__ = [
    "CONFIG_ENV", "DEFAULT_CONFIG", "DISABLE_ENV", "KernelConfig", "Segment", "default_config",
    "emulate_tile", "plan_work", "project_pieces_triton", "project_triton", "triton_available",
    "triton_disabled", "triton_importable",
]
