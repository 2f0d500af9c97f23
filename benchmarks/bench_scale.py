"""Store build against a DPO training step at real sizes (benchmarks.harness.scale).

Random-weight models of published architectures (benchmarks/configs/: the real models' cost
per pair), one batch of --pairs pairs of T tokens a row: a training step and the store build of
that batch, alternating. Prints pairs/s, peak memory (VmHWM on a CPU, max_memory_allocated on
CUDA) beside `gradproj plan`'s estimate, build/train ratios and hours for UltraFeedback's 61,135
pairs; merges results and FLOP rates (what `gradproj plan` scales time by) into --out; plots
peak memory against T. GPU use: benchmarks/gpu_check.sh. This CPU:

    python -m benchmarks.bench_scale --arch llama-3.2-1b --tokens 256,1024 \\
        --dtype float32 --checkpointing --repeats 2 --plan-check
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.harness import scale
from benchmarks.harness.measure import machine_info, machine_line  # noqa: E402
from gradproj.plan import machine_key  # noqa: E402


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
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks" / "bench_scale.json"))
    ap.add_argument("--plot", default=str(ROOT / "docs" / "benchmarks" / "bench_scale.png"))
    ap.add_argument("--plan-check", action="store_true",
                    help="also check gradproj plan's peaks at the PLAN_SIZES (torch allocations)")
    ap.add_argument("--results-md", default=None,
                    help="write the tables between its bench_scale markers (default: "
                         "docs/results.md when --out is the default docs/benchmarks/bench_scale.json)")
    a = ap.parse_args(argv)
    info, machine = machine_info(ROOT, ("transformers", "peft")), machine_key(a.device)
    print(f"{machine}: {machine_line(info)}", flush=True)
    results = scale.sweep(
        a.arch.split(","), [int(t) for t in a.tokens.split(",")], out=a.out, machine=machine,
        info=info, budget_s=a.budget_s, pairs=a.pairs, dtype=a.dtype, k=a.k,
        checkpointing=a.checkpointing, repeats=a.repeats, warmup=a.warmup, device=a.device,
        how="cuda" if a.device.startswith("cuda") else "rss", quantized=a.quantized,
        log=lambda line: print(line, flush=True))
    if a.plan_check:
        scale.save_plan_check(a.out, machine, [scale.check_plan(size) for size in scale.PLAN_SIZES])
    if not results and not a.plan_check:
        return 1
    if results and Path(a.out) == ROOT / "docs" / "benchmarks" / "bench_scale.json":
        # the rates gradproj plan reads ship with the package
        from gradproj.plan import THROUGHPUT_FILE, read_throughput, write_throughput

        for stage, record in read_throughput(a.out).get(machine, {}).items():
            write_throughput(THROUGHPUT_FILE, machine, stage, record)
    runs = scale.load_runs(a.out, machine)
    scale.plot_memory(runs, a.plot)
    text = scale.report(a.out, machine, Path(a.plot).name)
    print(text)
    results_md = a.results_md or (ROOT / "docs" / "results.md"
                                  if Path(a.out) == ROOT / "docs" / "benchmarks" / "bench_scale.json" else None)
    if results_md and scale.write_results(results_md, text):
        print(f"tables written into {results_md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
