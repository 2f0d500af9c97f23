"""Measuring runs on a shared machine: what the machine is, wall time, process memory, and the
machine's own limits (memory bandwidth, matmul FLOP/s, disk read) to compare a cost against;
:func:`quiet` keeps library logging, warnings and progress bars out of a measured run.

Linux-specific where it reads /proc; every reader degrades to NaN / None / False elsewhere.
Times on a shared machine drift with load: :func:`interleaved` rotates the order of the variants
each repeat so that a drift hits them alike, and the load average is recorded at start and end.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import platform
import statistics
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

# ------------------------------------------------------------------------------ machine


def _proc_field(path: str, key: str) -> str | None:
    """The value after ``key:`` on the first line of a /proc file that starts with ``key``."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def git_commit(repo: str | Path) -> str:
    """Short commit of ``repo``'s HEAD, with ``-dirty`` when tracked files are modified."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=repo, capture_output=True, text=True).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(repo: str | Path = ".", packages: Sequence[str] = ()) -> dict:
    """nproc, CPU model, RAM, load average at start, python, torch (version, threads, GPU),
    the versions of ``packages``, ``repo``'s commit and the UTC date."""
    import importlib

    import torch

    mem = _proc_field("/proc/meminfo", "MemTotal")
    info = {
        "nproc": os.cpu_count(),
        "cpu_model": _proc_field("/proc/cpuinfo", "model name") or platform.processor()
        or platform.machine(),
        "ram_gib": round(int(mem.split()[0]) / 2**20, 1) if mem else float("nan"),
        "loadavg_at_start": loadavg(),
        "python": platform.python_version(), "numpy": np.__version__,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    for name in packages:
        info[name] = getattr(importlib.import_module(name), "__version__", None)
    info["commit"] = git_commit(repo)
    info["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return info


def machine_line(info: dict) -> str:
    """One line of :func:`machine_info` for a log or a report."""
    return (f"{info['nproc']} × {info['cpu_model']}, {info['ram_gib']} GiB RAM, "
            f"torch {info['torch']} ({info['torch_threads']} threads), load average at start "
            f"{info['loadavg_at_start']}; commit `{info['commit']}`, {info['date']}")


# ------------------------------------------------------------------------------ time

def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of one call."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def median(xs: Sequence[float]) -> float:
    """Median of the non-NaN values (NaN when there are none)."""
    xs = [x for x in xs if x == x]
    return float(statistics.median(xs)) if xs else float("nan")


def repeat_seconds(fn: Callable[[], object], n: int) -> list[float]:
    """Seconds of each of ``n`` calls."""
    return [timed(fn)[0] for _ in range(n)]


def interleaved(variants: dict[str, Callable[[], float]], repeats: int,
                log: Callable[[str], None] = print) -> dict[str, list[float]]:
    """Run every variant once per repeat, the order rotated by one each repeat; each callable
    returns its own measured seconds. Returns name → [repeats] seconds."""
    names = list(variants)
    out: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            s = variants[name]()
            out[name].append(s)
            log(f"  repeat {rep + 1}/{repeats}  {name:<28s} {s:9.3f} s")
    return out


@contextlib.contextmanager
def quiet(threads: int | None = None):
    """torch threads (when given); no progress bars, warnings or library logging below ERROR;
    all restored afterwards (benchmarks' main() is also called in-process by tests)."""
    import torch
    from transformers.utils import logging as hf_logging

    old_threads, bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    loggers = [logging.getLogger(n) for n in ("transformers", "trl", "peft", "datasets",
                                              "gradproj")]
    levels = [lg.level for lg in loggers]
    if threads:
        torch.set_num_threads(threads)
    hf_logging.disable_progress_bar()
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.set_num_threads(old_threads)
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
        if bars:
            hf_logging.enable_progress_bar()


# ------------------------------------------------------------------------------ memory

def proc_status(keys: Sequence[str] = ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem")
                ) -> dict[str, int]:
    """Fields of /proc/self/status in bytes (VmRSS: resident, VmHWM: its peak, RssAnon ...)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in keys:
                    out[key] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    return out


def rss_gib() -> dict:
    """Current (VmRSS) and peak (VmHWM) resident memory of this process, GiB."""
    return {k: round(v / 2**30, 2) for k, v in proc_status(("VmRSS", "VmHWM")).items()}


def end_of_run() -> dict:
    """What a benchmark's JSON ends with: the load average and this process's memory."""
    return {"loadavg_at_end": loadavg(), "memory_gib": rss_gib()}


class PeakSampler:
    """Samples RssAnon / RssFile every ``interval`` s in a thread while in the ``with`` block;
    ``peak`` holds the highest of each (VmHWM gives the exact peak of the total)."""

    def __init__(self, interval: float = 0.002):
        self.interval = interval
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        s = proc_status(tuple(self.peak))
        for key in self.peak:
            self.peak[key] = max(self.peak[key], s.get(key, 0))

    def _run(self):
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()


def _write_proc(path: str, text: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(text)
        return True
    except OSError:
        return False


def reset_peak_rss() -> bool:
    """Reset VmHWM (peak RSS) of this process (``echo 5 > /proc/self/clear_refs``)."""
    return _write_proc("/proc/self/clear_refs", "5")


def drop_caches() -> bool:
    """Drop the page cache (root only); False when not permitted."""
    os.sync()
    return _write_proc("/proc/sys/vm/drop_caches", "3")


# ------------------------------------------------------------------------------ limits

def bandwidth_and_flops(k: int, m: int, gib: float = 0.5, repeats: int = 5) -> dict:
    """Memory read bandwidth (bytes/s: the faster of a torch sum over all threads and a numpy
    sum, over a ``gib`` GiB float32 array) and fp32 matmul FLOP/s of [4096, k] @ [k, m]."""
    import torch

    def bandwidth():
        a = np.ones(int(gib * 2**28), np.float32)
        return max(a.nbytes / median(repeat_seconds(torch.from_numpy(a).sum, repeats)),
                   a.nbytes / median(repeat_seconds(a.sum, repeats)))

    x, w = torch.randn(4096, k), torch.randn(k, m)
    bw = bandwidth()
    return {"bandwidth": bw,
            "matmul_flops": 2 * 4096 * k * m / median(repeat_seconds(lambda: x @ w, repeats)[1:])}


def _read_rates(repeats: int) -> dict:
    import torch

    a = np.ones(2**29, np.float32)                  # 2 GiB, every page touched
    b = np.zeros_like(a)
    ta = torch.from_numpy(a)
    return {"bw_torch_sum": a.nbytes / median(repeat_seconds(ta.sum, repeats)),   # all threads
            "bw_numpy_sum": a.nbytes / median(repeat_seconds(a.sum, repeats)),    # one thread
            "bw_numpy_copy": 2 * a.nbytes / median(repeat_seconds(lambda: np.copyto(b, a),
                                                                    repeats))}


def _cast_rates(k: int, block_rows: int, repeats: int) -> dict:
    import torch

    h = np.random.default_rng(0).standard_normal((block_rows, k), dtype=np.float32).astype(
        np.float16)
    th = torch.from_numpy(h)
    f = np.zeros(h.shape, np.float32)               # into memory already mapped: no faults
    tf = torch.from_numpy(f)
    casts = {"cast_numpy_f16_f32": lambda: h.astype(np.float32),
             "cast_torch_f16_f32": th.float,
             "cast_numpy_into_f16_f32": lambda: np.copyto(f, h),
             "cast_torch_into_f16_f32": lambda: tf.copy_(th)}
    return {name: h.nbytes / median(repeat_seconds(fn, repeats)) for name, fn in casts.items()}


def _matmul_rates(k: int, m: int, block_rows: int, repeats: int) -> dict:
    import torch

    x, w, y = torch.randn(4096, k), torch.randn(k, m), torch.randn(block_rows, k)
    x @ w
    return {"matmul_flops_nn": 2 * 4096 * k * m / median(repeat_seconds(lambda: x @ w,
                                                                         max(repeats, 9))),
            "matmul_flops_nt": 2 * m * k * block_rows / median(repeat_seconds(lambda: w.T @ y.T,
                                                                              repeats))}


def machine_limits(k: int, m: int, block_rows: int, repeats: int = 5) -> dict:
    """The limits of a streaming query over [N, k] float16 blocks of ``block_rows`` rows times
    [k, m]: read bandwidth (torch and numpy sums of 2 GiB, numpy copy), float16 → float32 casts
    of a block (into fresh and into mapped memory; source bytes/s), and fp32 matmul FLOP/s in
    both shapes ([4096, k] @ [k, m] and [m, k] @ [block_rows, k]ᵀ); ``bandwidth`` and
    ``matmul_flops`` are the higher of each."""
    out = {**_read_rates(repeats), **_cast_rates(k, block_rows, repeats),
           **_matmul_rates(k, m, block_rows, repeats)}
    out["matmul_flops"] = max(out["matmul_flops_nn"], out["matmul_flops_nt"])
    out["bandwidth"] = max(out["bw_torch_sum"], out["bw_numpy_sum"])
    return out


def disk_read_rate(files: Sequence[Path]) -> float | None:
    """Sequential read rate (bytes/s) of ``files`` right after a page-cache drop (None when
    the cache cannot be dropped)."""
    if not drop_caches():
        return None
    buf = bytearray(1 << 24)
    total, t = 0, time.perf_counter()
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    return total / (time.perf_counter() - t)
