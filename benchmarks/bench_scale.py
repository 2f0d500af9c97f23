"""Store build against a DPO training step at real sizes (gradproj.experiments.scale).

Published architectures (benchmarks/configs/, random weights: the same cost per pair as the
real models), one batch of --pairs pairs with rows of T tokens: a training step (reference
forward, forward, backward, AdamW) and the store build of the same batch (per-pair LoRA
gradients, one backward, projection to k), alternating. Prints pairs/s, peak memory (VmHWM on a
CPU, max_memory_allocated on CUDA) beside `gradproj plan`'s estimate, build/train ratios and the
hours for UltraFeedback's 61,135 pairs on one device; merges the results and the measured FLOP
rates (what `gradproj plan` scales time by) into --out, and plots peak memory against T.

    # this CPU: the 1B architecture, checkpointed, T = 256 and 1024
    PYTHONPATH=. python benchmarks/bench_scale.py --arch llama-3.2-1b --tokens 256,1024 \\
        --dtype float32 --checkpointing --repeats 1
    # a GPU (benchmarks/gpu_check.sh): 1B and 8B, bf16, T = 1024 and 2048; then a 4-bit base
    python benchmarks/bench_scale.py --device cuda --dtype bfloat16 --checkpointing \\
        --arch llama-3.2-1b,llama-3.1-8b --tokens 1024,2048 --warmup 1 --repeats 3
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradproj.experiments import scale  # noqa: E402
from gradproj.experiments.measure import machine_info, machine_line  # noqa: E402
from gradproj.pipeline.plan import machine_key  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="llama-3.2-1b", help="comma-separated configs")
    ap.add_argument("--tokens", default="256,1024", help="comma-separated T")
    ap.add_argument("--pairs", type=int, default=1, help="pairs a batch")
    ap.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    ap.add_argument("--checkpointing", action="store_true")
    ap.add_argument("--quantized", choices=("4bit", "8bit"), default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--budget-s", type=float, default=float("inf"),
                    help="start no further run once this much time has gone")
    ap.add_argument("--out", default=str(ROOT / "docs" / "bench_scale.json"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "bench_scale.png"))
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    info = machine_info(ROOT, ("transformers", "peft"))
    machine = machine_key(args.device)
    print(f"{machine}: {machine_line(info)}", flush=True)
    start, results = time.perf_counter(), []
    for arch in args.arch.split(","):
        for tokens in (int(t) for t in args.tokens.split(",")):
            if time.perf_counter() - start > args.budget_s:
                print(f"skipped {arch} T={tokens}: time budget ({args.budget_s:.0f} s) spent")
                continue
            print(f"{arch} T={tokens} {args.dtype} {args.quantized or ''} "
                  f"checkpointing={args.checkpointing}", flush=True)
            try:
                results.append(scale.compare(
                    arch, tokens, pairs=args.pairs, dtype=args.dtype,
                    checkpointing=args.checkpointing, repeats=args.repeats,
                    warmup=args.warmup, how="cuda" if cuda else "rss", k=args.k,
                    device=args.device, quantized=args.quantized))
            except Exception as err:   # noqa: BLE001 - report, keep the runs done
                if not cuda or "out of memory" not in str(err).lower() and not isinstance(
                        err, ImportError):
                    raise
                print(f"  {arch} T={tokens}: {type(err).__name__}: {str(err)[:200]}")
                continue
            data = scale.save(args.out, machine, info, results)
    if not results:
        return 1
    mine = data["runs"][machine]["results"]
    scale.plot_memory(mine, args.plot)
    print(f"\n{machine_line(info)}\n{scale.PAPER}\n\n{scale.markdown(results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
