"""``gradproj plan``: what a run will need before anything heavy runs (gradproj.plan)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from gradproj.cli.commands import handle_errors
from gradproj.cli.options import flatten, settings_from, settings_options
from gradproj.core.data import DataSettings
from gradproj.core.errors import BadInput
from gradproj.core.model import ModelSettings
from gradproj.core.objectives import PreferenceSettings
from gradproj.plan import THROUGHPUT_FILE
from gradproj.store.build import StoreSettings

ULTRAFEEDBACK_PAIRS = 61135
"""Pairs in UltraFeedback-binarized's train_prefs split (the paper's training set)."""
STORE_OPTIONS = ("proj_dim", "batch_size", "proj_batch")


def _dtype(ms: ModelSettings) -> str:
    """The compute dtype a run with these settings uses: ``auto`` is bfloat16 on a CUDA device
    (quantized bases compute in bfloat16 too), float32 on a CPU."""
    if ms.dtype != "auto":
        return ms.dtype
    if ms.quantization or ms.device.startswith("cuda"):
        return "bfloat16"
    if ms.device == "auto":
        import torch

        return "bfloat16" if torch.cuda.is_available() else "float32"
    return "float32"


def _lora(ms: ModelSettings) -> tuple[tuple[str, ...], int]:
    """(targets, r) of a fresh LoRA, or of the --adapter folder's adapter_config.json."""
    if ms.adapter is None:
        return ms.lora.targets, ms.lora.r
    path = Path(ms.adapter) / "adapter_config.json"
    try:
        cfg = json.loads(path.read_text())
        return tuple(cfg["target_modules"]), int(cfg["r"])
    except (OSError, ValueError, KeyError) as err:
        raise BadInput(f"{path}: cannot read the adapter's r and target_modules ({err})") from None


@click.command()
@flatten(settings_options(ModelSettings), settings_options(DataSettings),
         settings_options(PreferenceSettings, only=("max_length",)),
         settings_options(StoreSettings, only=STORE_OPTIONS))
@click.option("--data", default=None, type=click.Path(),
              help="Pairs to plan for (lengths from the model's tokenizer, else estimated); "
                   "without it every row is --max-length tokens.")
@click.option("--pairs", default=None, type=int,
              help=f"Pairs when there is no --data (default {ULTRAFEEDBACK_PAIRS:,}, "
                   "UltraFeedback-binarized train_prefs).")
@click.option("--throughput", default=str(THROUGHPUT_FILE), type=click.Path(),
              show_default=True, help="Measured FLOP rates by machine (benchmarks/bench_scale.py).")
@click.option("--machine", default=None,
              help="Machine whose measured rate gives the time (default: this one; a GPU's name "
                   "such as 'NVIDIA H200').")
@click.option("--gpu-memory", default=None, type=float, metavar="GIB",
              help="Say, per stage, whether a pass fits a GPU of this much memory and which "
                   "settings would (token budget, checkpointing, 4-bit base, length).")
@click.option("--gpu", default=None, metavar="NAME",
              help="A GPU from the table (H100, H200, A100-80GB, A100-40GB, L40S, RTX4090): "
                   "its memory for the verdict (unless --gpu-memory) and an estimated time "
                   "from its published bf16 peak.")
@handle_errors
def plan(data, pairs, throughput, machine, gpu_memory, gpu, **kw):
    """Parameters, LoRA size, store size, peak memory per device (training step and store build;
    float32, bfloat16, 4-bit; with and without checkpointing) and, where a throughput is
    recorded for the machine, the expected time. Reads a config, never the weights."""
    from gradproj import plan as p

    ms = settings_from(ModelSettings, kw)
    max_length = settings_from(PreferenceSettings, kw, only=("max_length",)).max_length
    store = settings_from(StoreSettings, kw, only=STORE_OPTIONS)
    data_settings = settings_from(DataSettings, kw)
    arch, tokenizer = p.load_architecture(ms.model, ms.trust_remote_code)
    if data is not None:
        if pairs is not None:
            raise BadInput("give --data or --pairs, not both")
        lengths, how = p.pair_lengths(data_settings.load(data), tokenizer, max_length)
        if not lengths:
            raise BadInput(f"{data}: no pairs")
    else:
        lengths = [max_length] * (pairs or ULTRAFEEDBACK_PAIRS)
        how = "every row --max-length tokens; no --data" + (
            "" if pairs else f", {ULTRAFEEDBACK_PAIRS:,} pairs as UltraFeedback")
    targets, r = _lora(ms)
    device = "cuda" if ms.device.startswith("cuda") or ms.quantization else "cpu"
    chosen = p.Precision(_dtype(ms), ms.quantization or "full", ms.grad_checkpointing,
                         "eager" if ms.attn_implementation == "eager" else "sdpa")
    result = p.make_plan(arch, source=ms.model, targets=targets, r=r, k=store.proj_dim,
                         lengths=lengths, lengths_from=how, batch_size=store.batch_size,
                         max_tokens=ms.max_tokens, chosen=chosen, proj_batch=store.proj_batch,
                         throughput=p.read_throughput(throughput),
                         machine=machine or p.machine_key(device), device=device)
    click.echo(p.format_plan(result))
    gpus = p.gpu_table()
    if gpu is not None and gpu not in gpus:
        raise BadInput(f"--gpu {gpu}: not in the table (known: "
                       f"{', '.join(k for k in gpus if not k.startswith(('_', 'assumed')))})")
    if gpu is not None and gpu_memory is None:
        gpu_memory = gpus[gpu]["memory_gib"]
    if gpu_memory is not None:
        rows, tokens = max(result.batches, key=lambda rt: (rt[0] * rt[1], rt[1]))
        fits = p.fit_verdict(arch, gpu_bytes=gpu_memory * 2**30, chosen=chosen,
                             pairs=rows // 2, tokens=tokens, targets=targets, r=r,
                             k=store.proj_dim, proj_batch=store.proj_batch)
        click.echo("\n" + "\n".join(p.format_verdict(fits, gpu_memory, chosen)))
    if gpu is not None:
        eff = gpus["assumed_efficiency"]
        secs = p.gpu_seconds(arch, result.batches, gpus[gpu], eff,
                             checkpointing=chosen.checkpointing, P=result.lora, k=store.proj_dim)
        click.echo(f"\nestimated time on one {gpus[gpu]['name']} (ESTIMATE: published bf16 peak "
                   f"{gpus[gpu]['bf16_flops_per_s'] / 1e12:.0f} TFLOP/s × an assumed efficiency "
                   f"of {eff:.0%}, not yet measured on a GPU):")
        click.echo(f"  store build          {p.duration(secs['build']):>10s}")
        click.echo(f"  one training epoch   {p.duration(secs['train']):>10s}")
