"""Shared helpers of the benchmarks: this checkout's machine info (gradproj.experiments.measure),
quiet libraries, JSON writing, markdown tables, SmolLM2 loading.

Not gradproj code: nothing here is imported by the package.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from gradproj.experiments import measure, tables  # noqa: E402

end_of_run, interleaved, median = measure.end_of_run, measure.interleaved, measure.median
machine_line, rss_gib, timed = measure.machine_line, measure.rss_gib, measure.timed
markdown_table = tables.markdown_table


def machine_info(packages=()) -> dict:
    """gradproj.experiments.measure.machine_info of this checkout."""
    return measure.machine_info(ROOT, packages)


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


def log(msg: str) -> None:
    print(msg, flush=True)


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
