"""Random projections of flattened per-pair gradients (TRAK-style), one subpackage:

- :mod:`.spec` — the projector's spec (kind, k, seed, layout of named parameter pieces) and its hash;
- :mod:`.counter_hash` — the counter-based hash: R's entries as a pure function of (seed,
  parameter, row, column), so a projection does not depend on device, batch or block size;
- :mod:`.base` — the projector base class and the hash projectors (rademacher, gaussian, sjlt);
- :mod:`.trak` — adapters over traker's BasicProjector / CudaProjector;
- :mod:`.kernels` — the fused Triton kernel of the hash projectors (GPU);
- :mod:`.factory` — :func:`~.factory.projector_from_spec`, the one way to build a projector.
"""
