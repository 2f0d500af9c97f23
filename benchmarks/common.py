"""Shared helpers of the benchmarks: this checkout's machine info and quiet libraries
(benchmarks.harness.measure), JSON writing, markdown tables, SmolLM2 loading.

Not gradproj code: nothing here is imported by the package.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.harness import measure
from benchmarks.harness import tables
from gradproj.core.atomic import write_atomic

end_of_run, interleaved, median = measure.end_of_run, measure.interleaved, measure.median
machine_line, rss_gib, timed = measure.machine_line, measure.rss_gib, measure.timed
quiet = measure.quiet
markdown_table = tables.markdown_table


def machine_info(packages=()) -> dict:
    """benchmarks.harness.measure.machine_info of this checkout."""
    return measure.machine_info(ROOT, packages)


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(data, indent=2, default=float) + "\n")


def log(msg: str) -> None:
    print(msg, flush=True)


def load_smollm2(device: str = "cpu", max_tokens: int | None = None):
    """The embedded SmolLM2-135M-Instruct with a fresh LoRA r=8 on q_proj, v_proj; ``max_tokens``:
    the token budget of a forward pass (pairs grouped by length: less padding, same results)."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("TQDM_DISABLE", "1")
    from gradproj.core.model import LoraSettings, ModelSettings, load_model

    loaded = load_model(ModelSettings(model="smollm2", device=device, max_tokens=max_tokens,
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
