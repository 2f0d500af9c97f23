"""Shared helpers of bench_build.py and bench_projection.py: machine and commit info, timing,
median of interleaved repeats, JSON writing, benchmark-sized chat records, markdown tables.

Not gradproj code: nothing here is imported by the package or the tests.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------ machine

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_gib() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return float("nan")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True).stdout.strip()
        return out + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine_info() -> dict:
    """nproc, CPU model, RAM, load average at start, torch version and threads, commit, date."""
    import torch

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "ram_gib": _ram_gib(),
        "loadavg_at_start": load,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def machine_line(info: dict) -> str:
    return (f"{info['nproc']} × {info['cpu_model']}, {info['ram_gib']} GiB RAM, "
            f"torch {info['torch']} ({info['torch_threads']} threads), load average at start "
            f"{info['loadavg_at_start']}; commit `{info['commit']}`, {info['date']}")


# ------------------------------------------------------------------------------ timing

def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of one call."""
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def median(xs: Sequence[float]) -> float:
    xs = [x for x in xs if x == x]
    return float(statistics.median(xs)) if xs else float("nan")


def interleaved(variants: dict[str, Callable[[], float]], repeats: int,
                log: Callable[[str], None] = print) -> dict[str, list[float]]:
    """Run every variant once per repeat, rotating the order each repeat so that load drifts
    affect them alike; each callable returns its own measured seconds. Returns name → list."""
    names = list(variants)
    out: dict[str, list[float]] = {n: [] for n in names}
    for rep in range(repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            s = variants[name]()
            out[name].append(s)
            log(f"  repeat {rep + 1}/{repeats}  {name:<28s} {s:9.3f} s")
    return out


def rss_gib() -> dict:
    """Current and peak resident memory of this process (GiB), from /proc/self/status."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = round(int(rest.split()[0]) / 2**20, 2)
    except OSError:
        pass
    return out


def end_of_run() -> dict:
    """What every benchmark JSON ends with: the load average and this process's memory."""
    return {"loadavg_at_end": [round(x, 2) for x in os.getloadavg()], "memory_gib": rss_gib()}


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=float) + "\n")
    os.replace(tmp, path)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def log(msg: str) -> None:
    print(msg, flush=True)


# ------------------------------------------------------------------------------ data

_FILLER = ("please", "think", "it", "through", "carefully", "and", "then", "state", "the",
           "final", "result", "in", "one", "short", "clear", "sentence", "for", "a", "student",
           "who", "is", "checking", "their", "homework", "tonight")
_EXPLAIN = " I worked it out step by step and checked the result once more before answering."


def sized_records(n: int, seed: int, prefix: str, tokenizer, target: int = 64) -> list[dict]:
    """``n`` chat records of gradproj.synthetic's families, lengthened so that prompt + chosen
    is about ``target`` tokens under the tokenizer's chat template: both answers get the same
    explanation sentence and the question gets filler words until the chosen sequence reaches
    ``target`` tokens (the rejected one differs by a token or two)."""
    from gradproj.core.data import pairs_from_records
    from gradproj.experiments.synthetic import make_records
    from gradproj.core.tokens import render_pair

    rng = random.Random(seed)
    out = []
    for rec in make_records(n, seed, prefix):
        base_q = rec["chosen"][1]["content"]
        for side in ("chosen", "rejected"):
            rec[side][2]["content"] += _EXPLAIN
        start = rng.randrange(len(_FILLER))
        words: list[str] = []
        while True:
            q = base_q + (" " + " ".join(words).capitalize() + "." if words else "")
            for side in ("chosen", "rejected"):
                rec[side][1]["content"] = q
            p, c, _ = render_pair(pairs_from_records([rec])[0], tokenizer)
            if len(p) + len(c) >= target or len(words) >= 4 * len(_FILLER):
                break
            words.append(_FILLER[(start + len(words)) % len(_FILLER)])
        out.append(rec)
    return out


def token_stats(tokenized_pairs) -> dict:
    """Sequence lengths (prompt + response) of chosen and rejected rows."""
    import numpy as np

    c = np.array([len(p.prompt_ids) + len(p.chosen_ids) for p in tokenized_pairs])
    r = np.array([len(p.prompt_ids) + len(p.rejected_ids) for p in tokenized_pairs])
    resp = np.array([len(p.chosen_ids) for p in tokenized_pairs]
                    + [len(p.rejected_ids) for p in tokenized_pairs])
    return {"pairs": len(c), "chosen_mean": float(c.mean()), "chosen_min": int(c.min()),
            "chosen_max": int(c.max()), "rejected_mean": float(r.mean()),
            "rejected_min": int(r.min()), "rejected_max": int(r.max()),
            "response_mean": float(resp.mean())}


def load_smollm2(device: str = "cpu"):
    """The embedded SmolLM2-135M-Instruct with a fresh LoRA r=8 on q_proj, v_proj."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TQDM_DISABLE", "1")
    from gradproj.core.model import LoraSettings, ModelSettings, load_model

    loaded = load_model(ModelSettings(model="smollm2", device=device,
                                      lora=LoraSettings(r=8, targets=("q_proj", "v_proj"))))
    release_memory()
    return loaded


def release_memory() -> None:
    """gc, then hand freed heap pages back to the OS (glibc), so that the RSS left over from
    loading and de-quantizing the GGUF file does not crowd a shared machine."""
    import gc

    from gradproj.core.memory import release_heap

    gc.collect()
    release_heap()


def perturb_lora_b(loaded, std: float = 1e-3, seed: int = 0) -> None:
    """Give the fresh adapter's B factors (zero at init) small N(0, std²) values so that the
    adapter is non-trivial (lora_A gradients are exactly zero while B = 0)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in loaded.model.named_parameters():
            if p.requires_grad and ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
