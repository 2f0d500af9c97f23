"""Shared helpers of the benchmarks: this checkout's machine info (gradproj.experiments.measure),
quiet libraries, JSON writing, markdown tables, benchmark-sized chat records, SmolLM2 loading.

Not gradproj code: nothing here is imported by the package.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gradproj.experiments.measure import (  # noqa: E402,F401  (used as C.<name>)
    end_of_run, interleaved, machine_line, median, rss_gib, timed)


def machine_info(packages=()) -> dict:
    """gradproj.experiments.measure.machine_info of this checkout."""
    from gradproj.experiments.measure import machine_info as info

    return info(ROOT, packages)


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
