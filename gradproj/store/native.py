"""A fused float16 matrix × float32 vector product for the mean influence query, compiled on
first use.

The mean query IF = X ḡ reads every stored row once; in torch it is a float16 → float32 cast into
a buffer followed by a matrix-vector product, which writes and reads the row twice more and
reaches about a quarter of the memory bandwidth on a 2-core CPU. :func:`half_matvec` does the cast
inside the dot product (AVX-512 or F16C/AVX2 intrinsics where the CPU has them, a portable C loop
elsewhere), one row per iteration, rows split across OpenMP threads, float32 accumulation in
independent lanes: out[i] = Σ_j float(x[i, j]) · v[j].

The C source below is compiled once per machine with the system C compiler
(``cc -O3 -march=native -fopenmp``) into ``$GRADPROJ_CACHE/kernels`` (default
``~/.cache/gradproj/kernels``), named by the hash of the source and the CPU's flags, written to a
temporary name and renamed. Where there is no compiler, or ``GRADPROJ_NATIVE=0``,
:func:`half_matvec` returns False and the caller takes the torch path (same result to float32
rounding).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from functools import lru_cache
from pathlib import Path

import numpy as np

SOURCE = r"""
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__F16C__)
#include <immintrin.h>
#endif

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) { bits = sign; }
        else {                                   /* subnormal: normalise */
            exp = 1;
            while (!(man & 0x400)) { man <<= 1; exp--; }
            man &= 0x3ff;
            bits = sign | ((exp + 112) << 23) | (man << 13);
        }
    } else if (exp == 31) { bits = sign | 0x7f800000 | (man << 13); }
    else { bits = sign | ((exp + 112) << 23) | (man << 13); }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static float row_dot(const uint16_t *x, const float *v, int64_t k) {
    int64_t j = 0;
    float s = 0.0f;
#if defined(__AVX512F__)
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
    __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (; j + 64 <= k; j += 64) {
        a0 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + j))),
                             _mm512_loadu_ps(v + j), a0);
        a1 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + j + 16))),
                             _mm512_loadu_ps(v + j + 16), a1);
        a2 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + j + 32))),
                             _mm512_loadu_ps(v + j + 32), a2);
        a3 = _mm512_fmadd_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(x + j + 48))),
                             _mm512_loadu_ps(v + j + 48), a3);
    }
    s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
#elif defined(__F16C__) && defined(__AVX2__) && defined(__FMA__)
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; j + 16 <= k; j += 16) {
        a0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + j))),
                             _mm256_loadu_ps(v + j), a0);
        a1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(x + j + 8))),
                             _mm256_loadu_ps(v + j + 8), a1);
    }
    __m256 t = _mm256_add_ps(a0, a1);
    __m128 q = _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
    q = _mm_add_ps(q, _mm_movehl_ps(q, q));
    q = _mm_add_ss(q, _mm_shuffle_ps(q, q, 1));
    s = _mm_cvtss_f32(q);
#endif
    for (; j < k; j++) s += half_to_float(x[j]) * v[j];
    return s;
}

void half_matvec(const uint16_t *x, const float *v, float *out, int64_t n, int64_t k,
                 int threads) {
    #pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t i = 0; i < n; i++) out[i] = row_dot(x + i * k, v, k);
}
"""


def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return ""


def cache_dir() -> Path:
    root = os.environ.get("GRADPROJ_CACHE") or Path.home() / ".cache" / "gradproj"
    return Path(root) / "kernels"


@lru_cache(maxsize=1)
def library():
    """The compiled kernel (ctypes), or None where it cannot be had (no compiler, disabled)."""
    if os.environ.get("GRADPROJ_NATIVE", "1") == "0":
        return None
    key = hashlib.sha256((SOURCE + platform.machine() + _cpu_flags()).encode()).hexdigest()[:16]
    path = cache_dir() / f"half_matvec-{key}.so"
    if not path.is_file():
        cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        if cc is None:
            return None
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            src, lib = Path(tmp) / "half_matvec.c", Path(tmp) / path.name
            src.write_text(SOURCE)
            cmd = [cc, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", str(src), "-o",
                   str(lib)]
            if subprocess.run(cmd, capture_output=True).returncode:
                return None
            os.replace(lib, path)
    try:
        lib = ctypes.CDLL(str(path))
    except OSError:
        return None
    lib.half_matvec.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    lib.half_matvec.restype = None
    return lib


def half_matvec(x: np.ndarray, v: np.ndarray, out: np.ndarray, threads: int) -> bool:
    """out[:] = x @ v for a C-contiguous float16 [n, k] ``x`` (a memory-mapped block is read in
    place), float32 [k] ``v`` and float32 [n] ``out``; False (nothing done) when the kernel is
    unavailable or the arrays are not in that layout."""
    lib = library()
    if (lib is None or x.dtype != np.float16 or not x.flags.c_contiguous or x.ndim != 2
            or v.dtype != np.float32 or not v.flags.c_contiguous or v.shape != (x.shape[1],)
            or out.dtype != np.float32 or not out.flags.c_contiguous
            or out.shape != (x.shape[0],)):
        return False
    lib.half_matvec(x.ctypes.data, v.ctypes.data, out.ctypes.data, x.shape[0], x.shape[1],
                    max(1, int(threads)))
    return True
