"""Benchmark: projector speed against traker's BasicProjector and a prebuilt GEMM, and the
fidelity of projected inner products over real SmolLM2 LoRA gradients.

Part 1, speed (CPU). P = the real SmolLM2-135M LoRA layout (r=8 on q_proj, v_proj; 120
pieces, P = 460 800), a fixed random batch x [B, P] (B = 64), for k in {512, 2048, 8192}:

``rademacher`` (HashProjector, R generated blockwise on every call), ``rademacher cache``
(``cache_mb`` = --cache-mb, warm; the share of R cached is printed), ``gaussian``, ``sjlt``
(s = 4), ``traker Basic`` (``trak.projectors.BasicProjector``, rademacher, block_size 100, fp32,
called directly: it regenerates its [P, 100] blocks on every call when k > 100) and the
``GEMM limit`` (benchmarks.harness.buildcost.PrebuiltProjector: no generation, a prebuilt R
block of --gemm-mb reused over the columns). Repeats run every variant once in a rotated order;
the table gives median seconds and the median of the per-repeat ratios to the GEMM limit.

Part 2, fidelity. Per-pair DPO-loss gradients of the LoRA weights (exact, fp32, unprojected:
benchmarks.harness.exact) for --train-pairs pairs of the generated task (25 % flipped) and
--val-pairs validation pairs (benchmarks.harness.tasks), at a non-trivial adapter: the fresh
LoRA with B set to N(0, 0.004²) (B = 0 at init makes every lora_A gradient zero). v = the mean
validation gradient; exact scores g_i·v against projected (P g_i)·(P v) for every kind
(rademacher, gaussian, sjlt, trak-basic) and k in {512, 2048, 8192}: Spearman, Pearson and the
share of pairs whose score keeps its sign, one projection seed (0). The PNG has Spearman vs k
per kind and the speed table as a plot.

    .venv/bin/python -m benchmarks.bench_projection           # full
    .venv/bin/python -m benchmarks.bench_projection --quick   # k = 512 only, 40 + 8 pairs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


from benchmarks import common as C  # noqa: E402
import torch  # noqa: E402

KINDS = ("rademacher", "gaussian", "sjlt", "trak-basic")


# ------------------------------------------------------------------------------ speed

class TrakDirect:
    def __init__(self, k: int, P: int, seed: int = 0):
        from trak.projectors import BasicProjector, ProjectionType

        self.proj = BasicProjector(grad_dim=P, proj_dim=k, seed=seed,
                                   proj_type=ProjectionType.rademacher,
                                   device=torch.device("cpu"), block_size=100,
                                   dtype=torch.float32)

    def project(self, x):
        return self.proj.project(x, model_id=0)


def speed_part(layout, ks, batch, repeats, cache_mb, gemm_mb) -> tuple[list, dict]:
    from benchmarks.harness.buildcost import PrebuiltProjector, cached_share
    from gradproj.projection.factory import make_projector

    P = sum(n for _, n in layout)
    x = torch.randn(batch, P, generator=torch.Generator().manual_seed(1))
    rows, raw = [], {}
    for k in ks:
        C.log(f"speed: k={k}, P={P}, batch={batch}")
        cached = make_projector("rademacher", k, layout, cache_mb=cache_mb)
        frac = cached_share(layout, k, cache_mb)
        projs = {
            "GEMM limit (prebuilt R)": PrebuiltProjector(k, P, gemm_mb),
            "ours rademacher": make_projector("rademacher", k, layout),
            f"ours rademacher, cache {cache_mb:.0f} MB": cached,
            "ours gaussian": make_projector("gaussian", k, layout),
            "ours sjlt (s=4)": make_projector("sjlt", k, layout),
            "traker BasicProjector": TrakDirect(k, P),
        }
        C.log(f"  rademacher cache {cache_mb:.0f} MB holds {100 * frac:.1f}% of R "
              f"(all of R: {P * k * 4 / 2**20:.0f} MB); GEMM block S = "
              f"{projs['GEMM limit (prebuilt R)'].S} columns")
        t, _ = C.timed(lambda c=cached: c.project(x[:1]))   # fill the cache: one-time cost
        C.log(f"  cache fill: {t:.1f} s (one time, not in the table)")

        def variant(p):
            return lambda: C.timed(lambda: p.project(x))[0]

        reps = repeats if k >= 8192 else max(repeats, 5)   # small k is cheap: more repeats
        times = C.interleaved({n: variant(p) for n, p in projs.items()}, reps, C.log)
        gemm = times["GEMM limit (prebuilt R)"]
        for name, ts in times.items():
            ratios = [a / b for a, b in zip(ts, gemm)]
            rows.append({"k": k, "variant": name, "median_seconds": C.median(ts),
                         "ratio_to_gemm": C.median(ratios), "seconds": ts,
                         "cached_fraction": frac if "cache" in name else None})
        raw[k] = times
        del projs, cached
    return rows, raw


# ------------------------------------------------------------------------------ fidelity

def fidelity_part(loaded, layout, ks, n_train, n_val, batch_size, data="synthetic",
                  seeds=(0,), cache=None, max_length=512) -> tuple[list, dict]:
    """Exact scores g_i·v against projected (P g_i)·(P v) for every kind and k
    (benchmarks.harness.exact.projection_fidelity), mean ± std over projection seeds; pairs
    of the task of ``data`` (synthetic: 25 % flipped; BIG-bench: clean)."""
    from gradproj.core.objectives import make_objective
    from gradproj.core.tokens import tokenize_pairs
    from benchmarks.harness.exact import exact_gradients, influence, projection_fidelity
    from gradproj.evaluation.stats import mean_std
    from benchmarks.harness.tasks import token_stats
    from benchmarks.harness.tasks import load_task
    from gradproj.projection.factory import make_projector

    task = load_task(data, n_train, n_val, 1, 0.25 if data == "synthetic" else 0.0, 0,
                     cache_dir=cache)
    tr = tokenize_pairs(task.train, loaded.tokenizer, max_length).pairs
    va = tokenize_pairs(task.val, loaded.tokenizer, max_length).pairs
    C.log(f"fidelity: gradients of {len(tr)} train + {len(va)} validation pairs")
    dpo = make_objective("dpo", 0.1)
    t, G = C.timed(lambda: exact_gradients(loaded, tr, dpo, batch_size, device="cpu"))
    _, V = C.timed(lambda: exact_gradients(loaded, va, dpo, batch_size, device="cpu"))
    C.log(f"  gradients: {t:.0f} s for {len(tr)} pairs; |g| median "
          f"{G.norm(dim=1).median():.3g}")
    exact = influence(G, V)
    flipped_share = len(task.flipped) / max(1, len(task.train))
    rows, info = [], {"n_train": len(tr), "n_val": len(va), "tokens": token_stats(tr),
                      "exact_mean": float(exact.mean()), "exact_std": float(exact.std()),
                      "flipped_share": flipped_share, "data": data, "seeds": list(seeds)}
    for k in ks:
        for kind in KINDS:
            per_seed = [projection_fidelity(G, V, make_projector(kind, k, layout, seed=seed),
                                            seed) for seed in seeds]
            row = {"k": k, "kind": kind, "per_seed": per_seed}
            for key in ("spearman", "pearson", "rel_error", "sign_agreement", "seconds"):
                row[key], row[key + "_std"] = mean_std([r[key] for r in per_seed])
            rows.append(row)
            C.log(f"  k={k:5d} {kind:<11s} spearman {row['spearman']:.4f}±"
                  f"{row['spearman_std']:.4f}  pearson {row['pearson']:.4f}±"
                  f"{row['pearson_std']:.4f}  rel.err {row['rel_error']:.3f}  sign agreement "
                  f"{row['sign_agreement']:.3f}  ({row['seconds']:.1f} s per seed)")
    return rows, info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="k=512 only, 40 + 8 pairs")
    ap.add_argument("--ks", default="512,2048,8192")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache-mb", type=float, default=2048.0)
    ap.add_argument("--gemm-mb", type=float, default=1024.0)
    ap.add_argument("--train-pairs", type=int, default=200)
    ap.add_argument("--val-pairs", type=int, default=20)
    ap.add_argument("--grad-batch", type=int, default=8)
    ap.add_argument("--fid-ks", default="512,1024,2048,4096,8192",
                    help="k values of the fidelity part")
    ap.add_argument("--fid-seeds", default="0,1,2", help="projection seeds (mean ± std)")
    ap.add_argument("--data", choices=("synthetic", "bigbench"), default="synthetic",
                    help="pairs of the fidelity part (bigbench: benchmarks/bigbench_pairs.py)")
    ap.add_argument("--bigbench-cache", default=None)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-fidelity", action="store_true")
    ap.add_argument("--json", type=Path, default=C.ROOT / "docs" / "benchmarks" / "bench_projection.json")
    ap.add_argument("--png", type=Path, default=C.ROOT / "docs" / "benchmarks" / "bench_projection.png")
    args = ap.parse_args(argv)
    if args.quick:
        args.ks, args.train_pairs, args.val_pairs = "512", 40, 8
        args.fid_ks, args.fid_seeds = "512,2048", "0"
        if args.json == C.ROOT / "docs" / "benchmarks" / "bench_projection.json":
            args.json = C.ROOT / "docs" / "benchmarks" / "bench_projection_quick.json"
        if args.png == C.ROOT / "docs" / "benchmarks" / "bench_projection.png":
            args.png = C.ROOT / "docs" / "benchmarks" / "bench_projection_quick.png"
    ks = [int(k) for k in args.ks.split(",")]
    fid_ks = [int(k) for k in args.fid_ks.split(",")]
    seeds = [int(x) for x in args.fid_seeds.split(",")]

    from benchmarks.harness.plots import projection_plot
    from benchmarks.harness.tables import fidelity_table, speed_table
    from benchmarks.harness.step import perturb_lora_b
    from gradproj.gradients.perpair import lora_layout

    info = C.machine_info()
    C.log(f"machine: {C.machine_line(info)}")
    loaded = C.load_smollm2()
    perturb_lora_b(loaded.model, std=4e-3)
    C.log(f"memory after loading: {C.rss_gib()} GiB")
    layout = lora_layout(loaded.model)
    P = sum(n for _, n in layout)

    speed_rows, speed_raw, fid_rows, fid_info = [], {}, [], {}
    if not args.skip_fidelity:
        fid_rows, fid_info = fidelity_part(loaded, layout, fid_ks, args.train_pairs,
                                           args.val_pairs, args.grad_batch, args.data, seeds,
                                           args.bigbench_cache, args.max_length)
    if not args.skip_speed:
        speed_rows, speed_raw = speed_part(layout, ks, args.batch, args.repeats,
                                           args.cache_mb, args.gemm_mb)

    md_speed = speed_table(speed_rows) if speed_rows else ""
    md_fid = fidelity_table(fid_rows, fid_ks, len(seeds) > 1) if fid_rows else ""
    C.log("\n" + md_speed + "\n\n" + md_fid + "\n")
    if fid_rows:
        projection_plot(args.png, fid_rows, speed_rows, fid_ks, ks)
        C.log(f"wrote {args.png}")
    C.write_json(args.json, {
        "benchmark": "bench_projection", "machine": info,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "P": P, "layout_pieces": len(layout),
        "adapter": "fresh LoRA r=8 (q_proj, v_proj), B perturbed with N(0, 0.004^2)",
        "speed": speed_rows, "speed_raw": {str(k): v for k, v in speed_raw.items()},
        "fidelity": fid_rows, "fidelity_info": fid_info,
        "markdown_speed": md_speed, "markdown_fidelity": md_fid,
        **C.end_of_run(),
    })
    C.log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
