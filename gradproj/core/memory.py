"""Give freed heap memory back to the operating system.

Per-pair gradient passes allocate and free hundreds of MB of differently sized tensors per
batch. glibc keeps the freed pages, fragmented, so a long build's resident memory grew by
~0.36 GiB per batch of 8 SmolLM2 pairs (measured by benchmarks/bench_query.py) until the process was
killed; ``gc.collect()`` does not help, ``malloc_trim(0)`` does (+6 MiB per batch left).
"""

from __future__ import annotations

import ctypes
import ctypes.util

_libc = None


def _malloc_trim():
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
        except (OSError, AttributeError):
            _libc = False          # not glibc (macOS, musl): nothing to do
    return getattr(_libc, "malloc_trim", None) if _libc else None


def release_heap() -> None:
    """``malloc_trim(0)`` where glibc provides it; a no-op elsewhere. Cheap (milliseconds)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
