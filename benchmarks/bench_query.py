"""Benchmark: cost of an influence query over a gradient store, against the machine's limits.

Part 1 (synthetic stores of N random rows of k = 8192 float16 features, M = 256 validation
vectors): the queries ``mean`` (one influence query: a pass over the store times ḡ), ``matvec``
(the full [N, M] score matrix), ``topk`` (per-pair top-10), ``mean_numpy`` (NumPy's own
``block @ v`` over the same memory maps) and ``mean_ref`` (a torch-cast
reference that is not gradproj code), each in its own subprocess so that its peak memory is its
own: the first pass after a page-cache drop (``cold``, when permitted), then ``--repeats`` warm
passes (median), as fractions of the machine's memory bandwidth and matmul FLOP/s measured in
the same run (benchmarks.harness.querycost and .measure give the definitions).

Part 2 (embedded SmolLM2-135M-Instruct, CPU): a store of ``--pairs`` synthetic training pairs is
built (= recomputing every training gradient from scratch), then a new 100-pair validation set
is answered from it (validation gradients + IF + TIF + top-k, ``compute_influence``); the ratio
of the two is the point of keeping the store.

    .venv/bin/python -m benchmarks.bench_query            # full: N = 10k, 100k, 500k; 2000 pairs
    .venv/bin/python -m benchmarks.bench_query --quick    # N = 10k, 50k; 200 pairs

The SmolLM2 build is first timed on 64 pairs; when the requested build would take longer than
--budget-min minutes, --fallback-pairs pairs are built instead (and the cost of 2000 pairs is
reported as an extrapolation, labelled so).

Stores are written under --tmp (default /tmp/gradproj-bench-query) and deleted at the end.
Times on a shared machine are noisy: compare the ratios, not the absolute seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]

from benchmarks.harness import measure
from benchmarks.harness import tables
from benchmarks.harness import querycost as qc
from benchmarks.harness.measure import drop_caches  # noqa: E402
from benchmarks.harness.plots import query_plot  # noqa: E402

K = 8192
M = 256
TOP_K = 10
SHARD_ROWS = 16384


def in_subprocess(flag: str, payload: dict) -> dict:
    """This script run as ``--<flag> JSON`` in a fresh process (its own heap and peak memory);
    the last line it prints, parsed."""
    cmd = [sys.executable, "-m", "benchmarks.bench_query", flag, json.dumps(payload)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    if proc.returncode:
        raise RuntimeError(f"{flag} {payload} failed (rc {proc.returncode}):\n"
                           f"{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_worker(store: Path, query: str, repeats: int, cold: bool) -> dict:
    dropped = drop_caches() if cold else False
    res = in_subprocess("--worker", {"store": str(store), "query": query, "repeats": repeats})
    return dict(res, cold=dropped)


# ------------------------------------------------------------------------------ part 1

def synthetic_part(sizes, repeats, tmp: Path, verify_n: int) -> list[dict]:
    rows = []
    for n in sizes:
        root = tmp / f"store-{n}"
        shutil.rmtree(root, ignore_errors=True)
        print(f"[N={n}] writing store ({n * K * 2 / 1e9:.2f} GB) ...", flush=True)
        info = qc.random_store(root, n, K, SHARD_ROWS)
        print(f"[N={n}]   written in {info['seconds']:.1f} s "
              f"({info['bytes'] / info['seconds'] / 1e9:.2f} GB/s incl. sha256 + fsync)",
              flush=True)
        entry = {"n": n, "store_bytes": info["bytes"], "write_seconds": info["seconds"],
                 "disk_bytes": info["disk_bytes"], "queries": {}}
        if n == verify_n:
            from gradproj.store.shards import Store
            t = time.perf_counter()
            Store(root, verify=True)
            entry["verify_warm_seconds"] = time.perf_counter() - t
            if drop_caches():
                t = time.perf_counter()
                Store(root, verify=True)
                entry["verify_cold_seconds"] = time.perf_counter() - t
            entry["disk_read_bps"] = measure.disk_read_rate(
                sorted((root / "shards").glob("*.grads.npy")))
            print(f"[N={n}]   verify (sha256): warm {entry['verify_warm_seconds']:.1f} s, cold "
                  f"{entry.get('verify_cold_seconds', float('nan')):.1f} s; disk read "
                  f"{(entry['disk_read_bps'] or float('nan')) / 1e9:.2f} GB/s", flush=True)
        for query in qc.QUERIES:
            reference = query in qc.REFERENCES
            res = run_worker(root, query, repeats if not reference else max(2, repeats - 1),
                             cold=not reference)
            warm = res["times"][1:]
            qc.limit_fractions(res, n, K, M, res["local_limits"])
            entry["queries"][query] = res
            print(f"[N={n}]   {query:15s} first {res['first']:7.2f} s "
                  f"({'cold' if res['cold'] else 'not cold'}), warm median "
                  f"{res['warm_median']:7.2f} s [{', '.join(f'{x:.2f}' for x in warm)}]  "
                  f"bw {res['bytes_frac']:.1%}"
                  + (f"  flop {res['flop_frac']:.1%}" if "flop_frac" in res else "")
                  + f"  peak +RSS {res['peak_rss_increase'] / 2**20:.0f} MiB "
                  f"(anon +{res['peak_anon_increase'] / 2**20:.0f}, out "
                  f"{res['output_bytes'] / 2**20:.0f})  err {res['rel_err']:.1e}", flush=True)
        shutil.rmtree(root)
        rows.append(entry)
    return rows


# ------------------------------------------------------------------------------ part 2

def smollm_part(n_train: int, n_val: int, tmp: Path, repeats: int, budget_min: float,
                fallback: int, estimate: bool = True) -> dict:
    """benchmarks.harness.querycost.build_versus_answer, each step in its own process with
    the model loaded anew (load time not counted): the resident memory of a process computing
    gradients grows by ~0.4 GiB per batch of 8 pairs here (freed heap glibc keeps; see
    git history of docs/results_query.md), and one process doing every step was OOM-killed at 14 GiB."""
    def run_step(step, root, **kw):
        return in_subprocess("--smollm-step", {"step": step, "root": root, **kw})

    out = {"machine": measure.machine_info(ROOT),
           "settings": {"proj_dim": K, "max_length": 64, "batch_size": 8},
           **qc.build_versus_answer(run_step, n_train, n_val, tmp, repeats, budget_min,
                                    fallback, estimate, log=lambda m: print(m, flush=True))}
    out["machine"]["loadavg_end"] = os.getloadavg()
    return out


# ------------------------------------------------------------------------------ report

def save(args, results: dict) -> dict:
    """Write --json (merged into the existing file's other parts with --update) and --png."""
    if args.update and args.json.is_file():
        results = qc.merge_results(results, json.loads(args.json.read_text()))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    if "synthetic" in results:
        query_plot(results, args.png)
    return results


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="N = 10k, 50k; 200 SmolLM2 pairs")
    p.add_argument("--repeats", type=int, default=3, help="warm passes per query (median)")
    p.add_argument("--sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    p.add_argument("--pairs", type=int, default=None, help="SmolLM2 training pairs")
    p.add_argument("--val-pairs", type=int, default=100)
    p.add_argument("--budget-min", type=float, default=25.0,
                   help="largest SmolLM2 store build (minutes, estimated on 64 pairs) ...")
    p.add_argument("--fallback-pairs", type=int, default=500,
                   help="... else build this many pairs (fewer if they would take over half "
                   "the budget; the 2000-pair cost is then extrapolated)")
    p.add_argument("--smollm-repeats", type=int, default=2,
                   help="times the validation set is answered from the SmolLM2 store (median)")
    p.add_argument("--skip-synthetic", action="store_true")
    p.add_argument("--skip-smollm", action="store_true")
    p.add_argument("--update", action="store_true",
                   help="keep the parts of an existing --json that this run skips (e.g. rerun "
                   "only the SmolLM2 part with --skip-synthetic --update)")
    p.add_argument("--tmp", type=Path, default=Path("/tmp/gradproj-bench-query"))
    p.add_argument("--json", type=Path, default=ROOT / "docs" / "benchmarks" / "bench_query.json")
    p.add_argument("--png", type=Path, default=ROOT / "docs" / "benchmarks" / "bench_query.png")
    p.add_argument("--skip-estimate", action="store_true",
                   help="build --pairs SmolLM2 pairs without the 64-pair estimate first")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--smollm-step", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.worker:
        w = json.loads(args.worker)
        print(json.dumps(qc.query_cost(w["store"], w["query"], w["repeats"], M, TOP_K)))
        return
    if args.smollm_step:
        print(json.dumps(qc.smollm2_step(**json.loads(args.smollm_step), k=K, top_k=TOP_K)))
        return

    sizes = args.sizes or ([10_000, 50_000] if args.quick else [10_000, 100_000, 500_000])
    pairs = args.pairs or (200 if args.quick else 2000)
    verify_n = 100_000 if 100_000 in sizes else max(sizes)
    args.tmp.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(args.tmp).free
    if not args.skip_synthetic and free < max(sizes) * K * 2 * 1.2:
        sys.exit(f"{args.tmp}: {free / 1e9:.1f} GB free, the {max(sizes):,}-row store needs "
                 f"{max(sizes) * K * 2 / 1e9:.1f} GB")

    t_start = time.perf_counter()
    results = {"machine": measure.machine_info(ROOT), "quick": args.quick, "k": K, "M": M,
               "top_k": TOP_K, "shard_rows": SHARD_ROWS, "repeats": args.repeats,
               "drop_caches_permitted": drop_caches()}
    print(json.dumps(results["machine"]), flush=True)
    print(f"drop_caches permitted: {results['drop_caches_permitted']}", flush=True)
    try:
        lim0 = measure.machine_limits(K, M, SHARD_ROWS)
        print(f"limits: {json.dumps({k: f'{v:.3g}' for k, v in lim0.items()})}", flush=True)
        if not args.skip_synthetic:
            results["synthetic"] = synthetic_part(sizes, args.repeats, args.tmp, verify_n)
            lim1 = measure.machine_limits(K, M, SHARD_ROWS)
            print(f"limits (end): {json.dumps({k: f'{v:.3g}' for k, v in lim1.items()})}")
            results["limits_start"], results["limits_end"] = lim0, lim1
            # the higher of the two measurements (the conservative choice); the fractions in
            # the table use the limits measured inside each query's own process instead
            lim = {k: max(lim0[k], lim1[k]) for k in lim0}
            for e in results["synthetic"]:
                for r in e["queries"].values():
                    qc.limit_fractions(r, e["n"], K, M, lim, suffix="_global")
            results["limits"] = lim
            save(args, results)                         # keep part 1 if part 2 is cut short
        else:
            results["limits"] = lim0
        if not args.skip_smollm:
            results["smollm2"] = smollm_part(pairs, args.val_pairs, args.tmp,
                                             args.smollm_repeats, args.budget_min,
                                             args.fallback_pairs, not args.skip_estimate)
    finally:
        shutil.rmtree(args.tmp, ignore_errors=True)
    results["total_seconds"] = time.perf_counter() - t_start
    results["machine"]["loadavg_end"] = os.getloadavg()
    results = save(args, results)
    print()
    print(tables.query_cost_table(results, M, SHARD_ROWS))
    print(f"\nwrote {args.json}" + (f", {args.png}" if "synthetic" in results else "")
          + f" in {results['total_seconds'] / 60:.1f} min")


if __name__ == "__main__":
    main()
