"""Benchmark: gradient-store build throughput against a plain DPO training step (the floor).

On the embedded SmolLM2-135M-Instruct (LoRA r=8 on q_proj, v_proj; P = 460 800 trainable
weights), CPU, with generated chat pairs of about 64 tokens per sequence (the generated
families, lengthened: benchmarks.harness.tasks.sized_records; the real token counts are
printed):

* ``train step``  — a hand-written DPO training step on the same PairBatch objects the build
  sees (reference forward, policy forward + backward, AdamW step; the adapter is restored after
  every step, untimed): the floor, a store cannot be much cheaper than one backward pass.
* ``build <kind>`` — ``FeatureComputer(...).features(pairs)`` (per-pair gradients by hooks, then
  projection of every ``proj_batch`` pairs), measured side by side with the training steps
  *inside one run* (benchmarks.harness.buildcost: a step on every batch, just before or just
  after its gradients), which keeps load changes (here up to 2× within minutes) out of the
  ratio. Once per repeat the FeatureComputer runs for real with ``rademacher``; the other
  kinds' projectors (gaussian, sjlt, rademacher with a ``proj_cache_mb`` budget, warm) are
  timed on exactly the captured projection inputs: build(kind) = build(rademacher) −
  projection(rademacher) + projection(kind). (``--direct`` runs the FeatureComputer for every
  kind instead, each with its own interleaved training steps.)
* ``LESS-style`` — a batch-size-1 autograd loop (``per_pair_gradients_loop``) and traker's
  ``BasicProjector`` projecting each gradient on its own. Slow: ``--less-pairs`` per repeat.
* ``trl DPOTrainer`` (``--trl``) — ``train_adapter`` for one epoch on the same pairs
  (``trainer.train()`` only), a reference line.

Each repeat runs every variant once, in an order rotated per repeat; ratios are taken inside a
run (builds) or a repeat (LESS, trl) and the median over repeats is reported. The machine is
shared and noisy: read the ratios, not the absolute seconds.

    .venv/bin/python -m benchmarks.bench_build            # 64 pairs, k = 8192, 3 repeats
    .venv/bin/python -m benchmarks.bench_build --quick    # 8 pairs, k = 2048, no gaussian
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


from benchmarks import common as C  # noqa: E402


def trl_pass(loaded, raw_pairs, settings, pref, lr: float) -> float:
    """Seconds of trainer.train() for one epoch of trl's DPOTrainer (train_adapter); the
    adapter is restored afterwards."""
    from gradproj.evaluation.state import restore, snapshot
    from gradproj.training.train import TrainSettings, train_adapter

    saved = snapshot(loaded.model)
    with tempfile.TemporaryDirectory(prefix="gradproj-bench-build-") as tmp:
        res = train_adapter(loaded, raw_pairs, TrainSettings(epochs=1.0, lr=lr,
                            batch_size=settings.batch_size), Path(tmp) / "adapter", pref=pref,
                            progress=False)
    loaded.model.eval()
    restore(loaded.model, saved)
    return res.seconds


# ------------------------------------------------------------------------------ main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="8 pairs, k=2048, proj_batch=8, 1 LESS pair, no gaussian")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=64, help="target tokens per sequence")
    ap.add_argument("--k", type=int, default=8192)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--proj-batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kinds", default="rademacher,gaussian,sjlt")
    ap.add_argument("--cache-mb", type=float, default=2048.0,
                    help="proj_cache_mb of the 'rademacher cache' variant (0: skip it)")
    ap.add_argument("--less-pairs", type=int, default=2)
    ap.add_argument("--direct", action="store_true",
                    help="run FeatureComputer.features for every kind (one gradient pass each)")
    ap.add_argument("--trl", action="store_true", help="also time trl's DPOTrainer (1 epoch)")
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--json", type=Path, default=C.ROOT / "docs" / "benchmarks" / "bench_build.json")
    args = ap.parse_args(argv)
    if args.quick:
        args.pairs, args.k, args.proj_batch, args.less_pairs = 8, 2048, 8, 1
        args.kinds = "rademacher,sjlt"
        if args.json == C.ROOT / "docs" / "benchmarks" / "bench_build.json":
            args.json = C.ROOT / "docs" / "benchmarks" / "bench_build_quick.json"

    from gradproj.core.data import pairs_from_records
    from gradproj.core.objectives import PreferenceSettings
    from gradproj.core.tokens import tokenize_pairs
    from benchmarks.harness import buildcost
    from benchmarks.harness.step import perturb_lora_b
    from benchmarks.harness.tasks import sized_records, token_stats
    from gradproj.gradients.perpair import lora_layout
    from gradproj.projection.factory import make_projector
    from gradproj.store.build import StoreSettings

    info = C.machine_info()
    C.log(f"machine: {C.machine_line(info)}")
    t0 = time.perf_counter()
    loaded = C.load_smollm2()
    perturb_lora_b(loaded.model, std=4e-3)
    C.log(f"memory after loading: {C.rss_gib()} GiB")
    C.log(f"loaded SmolLM2 in {time.perf_counter() - t0:.1f} s")
    layout = lora_layout(loaded.model)
    P = sum(n for _, n in layout)

    pref = PreferenceSettings(max_length=4 * args.tokens)
    objective = pref.objective()
    records = sized_records(args.pairs, 0, "bench", loaded.tokenizer, args.tokens)
    raw_pairs = pairs_from_records(records, origin="<bench>")
    tok = tokenize_pairs(raw_pairs, loaded.tokenizer, pref.max_length)
    assert not tok.excluded and tok.n_truncated == 0
    pairs = tok.pairs
    stats = token_stats(pairs)
    C.log(f"{len(pairs)} pairs; tokens per sequence: {stats}")

    kinds = [k for k in args.kinds.split(",") if k]
    if kinds[0] != "rademacher" and not args.direct:
        kinds = ["rademacher"] + [k for k in kinds if k != "rademacher"]
    settings = {kind: StoreSettings(proj_dim=args.k, proj_kind=kind, batch_size=args.batch_size,
                                    proj_batch=args.proj_batch)
                for kind in kinds}
    main_settings = settings[kinds[0]]
    others = {} if args.direct else {kind: make_projector(kind, args.k, layout)
                                     for kind in kinds[1:]}
    cache_note = None
    if args.cache_mb > 0 and not args.direct:
        cached = make_projector("rademacher", args.k, layout, cache_mb=args.cache_mb)
        frac = buildcost.cached_share(layout, args.k, args.cache_mb)
        others["rademacher cache"] = cached
        cache_note = {"cache_mb": args.cache_mb, "cached_fraction_of_P": frac,
                      "full_R_mb": P * args.k * 4 / 2**20}
        C.log(f"rademacher cache: {args.cache_mb:.0f} MB holds {100 * frac:.1f}% of R's "
              f"columns (all of R at k={args.k}: {cache_note['full_R_mb']:.0f} MB fp32)")
    trak = make_projector("trak-basic", args.k, layout) if args.less_pairs > 0 else None
    less_pairs = pairs[:args.less_pairs]

    raw: dict[str, list] = {"train": [], "less": [], "trl": []}
    raw.update({f"build {k}": [] for k in kinds})
    raw.update({f"build {k}": [] for k in others})
    step = buildcost.TrainStep(loaded, objective, args.lr)
    warmed = False

    def run_build():
        nonlocal warmed
        if args.direct:
            walls = []
            for kind in kinds:
                r = buildcost.build_pass(loaded, pairs, settings[kind], objective, step)
                r.pop("inputs")
                raw[f"build {kind}"].append(r)
                if kind == kinds[0]:
                    raw["train"].append({"wall": r["train"]})
                walls.append(r["wall"] + r["train"])
                C.log(f"      {kind}: build {r['wall']:.1f} s (gradients {r['gradients']:.1f}"
                      f", projection {r['projection']:.1f}), train steps {r['train']:.1f} s")
            return sum(walls)
        r = buildcost.build_pass(loaded, pairs, main_settings, objective, step)
        inputs = r.pop("inputs")
        raw[f"build {kinds[0]}"].append(r)
        raw["train"].append({"wall": r["train"]})
        C.log(f"      {kinds[0]}: build {r['wall']:.1f} s (gradients {r['gradients']:.1f}, "
              f"projection {r['projection']:.1f}), train steps {r['train']:.1f} s")
        for name, proj in others.items():
            if name == "rademacher cache" and not warmed:
                buildcost.projection_seconds(proj, inputs[:1])   # fill the cache (a one-time cost)
                warmed = True
            s = buildcost.projection_seconds(proj, inputs)
            raw[f"build {name}"].append({
                "wall": r["wall"] - r["projection"] + s, "train": r["train"],
                "gradients": r["gradients"], "projection": s, "derived": True})
            C.log(f"      projection only   {name:<20s} {s:9.3f} s")
        return r["wall"] + r["train"]

    def run_less():
        r = buildcost.less_pass(loaded, less_pairs, trak, objective)
        raw["less"].append(r)
        return r["wall"]

    variants = {"train+build (interleaved per batch)": run_build}
    if trak is not None:
        variants["LESS-style"] = run_less
    if args.trl:
        variants["trl"] = lambda: (raw["trl"].append({"wall": trl_pass(
            loaded, raw_pairs, main_settings, pref, args.lr)}) or raw["trl"][-1]["wall"])
    C.log(f"{args.repeats} repeats of {list(variants)} (rotated order)")
    C.interleaved(variants, args.repeats, C.log)

    # ---------------------------------------------------------------- summary
    n, n_less = len(pairs), len(less_pairs)
    train_s = [r["wall"] for r in raw["train"]]
    rows, table = [], []

    def add(name, runs, count, note=""):
        row = buildcost.summary_row(name, runs, count, n, train_s, note)
        rows.append(row)
        table.append([name, count, f"{row['median_seconds']:.1f}", f"{row['pairs_per_s']:.3f}",
                      f"{row['ratio_to_train_step']:.2f}×",
                      "—" if row["projection_share"] is None
                      else f"{100 * row['projection_share']:.1f}%", note])

    add("DPO train step (hand-written, AdamW)", raw["train"], n,
        "floor; interleaved per batch with the rademacher build")
    derived = "" if args.direct else "gradients of the rademacher run + this projection"
    for kind in kinds:
        add(f"build k={args.k} {kind}", raw[f"build {kind}"], n,
            "FeatureComputer.features" if kind == kinds[0] or args.direct else derived)
    if "rademacher cache" in others:
        add(f"build k={args.k} rademacher, cache {args.cache_mb:.0f} MB",
            raw["build rademacher cache"], n,
            f"{100 * cache_note['cached_fraction_of_P']:.0f}% of R cached, warm; " + derived)
    if raw["less"]:
        add(f"LESS-style bs=1 loop + traker BasicProjector k={args.k}", raw["less"], n_less,
            f"{n_less} pair(s) per repeat")
    if raw["trl"]:
        add("trl DPOTrainer, 1 epoch (train_adapter)", raw["trl"], n, "reference")

    header = ["variant", "pairs", "median s", "pairs/s", "ratio to train step",
              "projection share", "note"]
    md = C.markdown_table(header, table)
    less_detail = ""
    if raw["less"]:
        g = C.median([r["gradients"] for r in raw["less"]]) / n_less
        p = C.median([r["projection"] for r in raw["less"]]) / n_less
        b = C.median([r["gradients"] for r in raw[f"build {kinds[0]}"]]) / n
        less_detail = (f"LESS-style per pair: bs=1 gradients {g:.2f} s, traker projection "
                       f"{p:.2f} s; batched hook gradients (batch {args.batch_size}) "
                       f"{b:.2f} s per pair.")
    C.log("\n" + md + "\n")
    if less_detail:
        C.log(less_detail)
    C.write_json(args.json, {
        "benchmark": "bench_build", "machine": info, "args": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": {"name": "smollm2 (SmolLM2-135M-Instruct)", "lora_r": 8,
                  "targets": ["q_proj", "v_proj"], "P": P,
                  "adapter": "fresh LoRA, B perturbed with N(0, 0.004^2)"},
        "tokens": stats, "cache": cache_note, "rows": rows, "raw": raw,
        "less_detail": less_detail, "markdown": md,
        **C.end_of_run(),
    })
    C.log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
