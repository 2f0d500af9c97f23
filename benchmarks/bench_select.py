"""Benchmark: selection rules on the embedded SmolLM2 with a generated task and flipped pairs.

The paper's pipeline (the same as ``gradproj demo``, larger and repeated over seeds):

1. A task (benchmarks.harness.tasks, ``--data``): train pairs with ``--flip`` of them swapped
   (known label noise), clean validation (and a second one) and clean held-out test pairs.
2. Warm up θ (``--warm-epochs`` of DPO on train from a fresh LoRA), train θ_V (``--aux-epochs``
   on val from θ); 3. score every training pair: IRM and LossDiff (forward passes), a gradient
   store at θ, IF / TIF (2-3: benchmarks.harness.scoring).
4. For each rule (all, random, top-if, tif, lossdiff, irm, lossdiff-irm) at the same keep
   fraction: continue DPO from θ on its selection for ``--cont-epochs`` and evaluate on the test
   pairs; repeated for every seed in ``--seeds`` (gradproj.evaluation.runner).

Design: one task, one θ, one θ_V and one score table (all seeded with ``--task-seed``); the seed
of a repetition changes only the continued training (shuffling of its pairs) and the pairs the
``random`` rule draws. So the std over seeds is training noise of the continued stage, not the
noise of the task, θ or the scores, and not the sampling noise of the finite test set (the same
test pairs are used throughout; its binomial standard error is reported separately).

Reported (tables: benchmarks.harness.tables and .noise): per rule the pairs kept, the flipped
pairs removed and left, the overlap with TIF, and held-out policy accuracy, reward accuracy and
DPO loss (mean ± std over seeds, and the seed-paired difference to ``all``; also for the base
model, θ and θ_V); LossDiff and IRM against IF (paper: Pearson 0.77, 0.67); the AUROC of every
score and rule for clean vs flipped pairs at every --noise rate; the cost of a second query;
the wall time of every stage.

    .venv/bin/python -m benchmarks.bench_select          # 96 train / 24 val / 48 test, 3 seeds
    .venv/bin/python -m benchmarks.bench_select --quick  # 32 / 8 / 16, 1 seed (a few minutes)

Writes ``--json`` (default docs/benchmarks/bench_select.json) and ``--png`` (docs/benchmarks/bench_select.png);
artifacts (pairs, adapters, store) go to ``--work`` (default /tmp/gradproj-bench-select).
Timings on a shared 2-core machine are noisy; the load average is recorded at start and end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path



from benchmarks import common as C  # noqa: E402

from benchmarks.harness import learnability
from benchmarks.harness import noise as label_noise
from benchmarks.harness import tables
from benchmarks.harness.plots import select_plot  # noqa: E402

RULES = tables.RULES


def say(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load_task(args, flip: float, n_train: int | None = None):
    """``--data``'s task (``n_train`` training pairs, default --n-train), ``flip`` of it
    flipped, with a second validation set (seeded)."""
    from benchmarks.harness.tasks import load_task as load

    return load(args.data, n_train or args.n_train, args.n_val, args.n_test, flip,
                args.task_seed,
                second_val=True, cache_dir=args.bigbench_cache,
                tasks=args.bigbench_tasks.split(",") if args.bigbench_tasks else None)


def score_stage(args, loaded, task, work: Path, label: str) -> dict:
    """θ, θ_V, IRM + LossDiff, the store and IF for one task, score statistics and every
    rule's selection (the random rule: the first seed's draw); benchmarks.harness.scoring."""
    from gradproj.attribution.selection import select
    from gradproj.core.objectives import PreferenceSettings
    from benchmarks.harness.scoring import score_run, score_statistics
    from gradproj.store.build import StoreSettings
    from gradproj.training.train import TrainSettings

    training = TrainSettings(epochs=args.warm_epochs, lr=args.lr, batch_size=args.batch,
                             seed=args.task_seed)
    store_settings = StoreSettings(proj_dim=args.proj_dim, batch_size=args.batch)
    pref = PreferenceSettings(max_length=args.max_length)
    scored = score_run(loaded, task.train, task.val, work, training, store_settings, pref,
                       aux_epochs=args.aux_epochs, log=lambda m: say(label + m))
    st = score_statistics(scored.table, task.flipped)
    tif_kept = select(scored.table, "tif", args.keep).kept
    sels = {rule: select(scored.table, rule, args.keep, seed=args.seeds[0]) for rule in RULES}
    st["selection_summary"] = {rule: label_noise.selection_stats(sel, task.flipped, tif_kept)
                               for rule, sel in sels.items()}
    c, a = st["correlations"], st["auroc_clean_vs_flipped"]
    say(f"{label}Pearson with IF: lossdiff {c['lossdiff']['pearson_if']:.3f}, irm "
        f"{c['irm']['pearson_if']:.3f}; AUROC clean>flipped: "
        + ", ".join(f"{k} {v:.3f}" for k, v in a.items()))
    return dict(st, scored=scored, training=training, pref=pref, store_settings=store_settings)


def run(args) -> dict:
    from gradproj.core.model import ModelSettings, load_model, reattach
    from gradproj.core.objectives import PreferenceSettings
    from gradproj.core.tokens import tokenize_pairs
    from gradproj.evaluation.runner import Continuation, HeldOut, continue_on_rules
    from benchmarks.harness.scoring import second_query_cost

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t_all = time.perf_counter()
    stages: dict[str, float] = {}
    info = C.machine_info(packages=("transformers", "trl", "peft"))
    say(f"machine: {C.machine_line(info)}; device {args.device}")
    task = load_task(args, args.flip)
    say(f"task ({args.data}): {len(task.train)} train ({len(task.flipped)} flipped), "
        f"{len(task.val)} val, {len(task.val2)} second val, {len(task.test)} test")

    t = time.perf_counter()
    loaded = load_model(ModelSettings(model="smollm2", device=args.device,
                                      max_tokens=args.max_tokens))
    stages["model load"] = time.perf_counter() - t
    say(f"model loaded in {stages['model load']:.1f}s on {loaded.device}")

    t = time.perf_counter()
    heldout = HeldOut(loaded, task.test, PreferenceSettings(max_length=args.max_length),
                      args.batch)
    base = heldout.evaluate(loaded).to_dict()
    stages["test reference log-probs + base eval"] = time.perf_counter() - t
    n_trunc = {"test": heldout.n_truncated}
    for name in ("train", "val"):
        n_trunc[name] = tokenize_pairs(getattr(task, name), loaded.tokenizer,
                                       args.max_length).n_truncated
    say(f"base: policy acc {base['policy_accuracy']:.3f}, loss {base['mean_loss']:.4f}")
    # per source task: base now, θ after warm-up (the learnability of each pooled source)
    names = label_noise.task_names([p.id for p in task.test])
    groups = {t: [p for p, n in zip(task.test, names) if n == t] for t in dict.fromkeys(names)}
    per_task = {t: HeldOut(loaded, ps, heldout.pref, args.batch) for t, ps in groups.items()
                if len(groups) > 1}
    base_by_task = {t: h.evaluate(loaded).to_dict() for t, h in per_task.items()}

    # ---- label-noise detection at every --noise rate (each: its own θ, θ_V, store, scores)
    noise, stage = {}, None
    for rate in sorted(set(args.noise) | {args.flip}):
        t_task = task if rate == args.flip else load_task(args, rate, args.noise_n_train)
        label = "" if rate == args.flip else f"[flip {rate:.0%}] "
        st = score_stage(args, loaded, t_task, work / f"flip-{rate:.2f}", label)
        loaded = st["scored"].loaded          # reattach used the previous handle up
        noise[f"{rate:.2f}"] = {
            "flip": rate, "n_train": len(t_task.train), "n_flipped": len(t_task.flipped),
            "auroc_clean_vs_flipped": st["auroc_clean_vs_flipped"],
            "correlations": st["correlations"], "per_task_auroc": st["per_task_auroc"],
            "score_table": label_noise.score_columns(st["scored"].table.ids, st["cols"],
                                                     st["is_flip"]),
            "rules": {rule: {k: v for k, v in r.items() if k in
                             ("kept", "flips_removed", "flipped_in_kept", "keep_auroc")}
                      for rule, r in st["selection_summary"].items()},
            "stages_seconds": st["scored"].seconds}
        if rate == args.flip:
            stage = st
            stages.update(st["scored"].seconds)
        else:
            shutil.rmtree(work / f"flip-{rate:.2f}", ignore_errors=True)
    scored, training, is_flip, cols = (stage["scored"], stage["training"], stage["is_flip"],
                                       stage["cols"])
    scored = replace(scored, loaded=loaded)          # the handle the last stage left
    cost = None
    if args.cost:
        cost, loaded = second_query_cost(scored, task.train, task.val2, training,
                                         stage["pref"], args.aux_epochs)
        say("second query: store {store_answer_s:.1f}s, LossDiff {lossdiff_answer_s:.1f}s "
            "(θ_V {lossdiff_aux_training_s:.1f} + forward {lossdiff_forward_s:.1f}), IF without "
            "a store {if_without_store_s:.1f}s".format(**cost))

    model = reattach(loaded, scored.theta)
    warm = heldout.evaluate(model).to_dict()
    aux_model = reattach(model, scored.theta_v)
    aux = heldout.evaluate(aux_model).to_dict()
    say(f"θ: policy acc {warm['policy_accuracy']:.3f}; θ_V: {aux['policy_accuracy']:.3f}")
    model = reattach(aux_model, scored.theta)
    n_train_by_task = Counter(label_noise.task_names([p.id for p in task.train]))
    learnable = [learnability.row(t, n_train_by_task[t], len(groups[t]), base_by_task[t],
                                  h.evaluate(model).to_dict()) for t, h in per_task.items()]
    p = warm["policy_accuracy"]
    res = {
        "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                     if k not in ("json", "png", "work", "replot")},
        "training": {**asdict(training), "max_length": args.max_length},
        "store": {**asdict(stage["store_settings"]), "max_length": args.max_length},
        "design": "one task, one θ, one θ_V and one score table (task seed "
                  f"{args.task_seed}); seeds {list(args.seeds)} change only the continued "
                  "training's shuffling and the random rule's draw",
        "data": task.source, "machine": info, "n_truncated": n_trunc,
        "task": {"n_train": len(task.train), "n_flipped": len(task.flipped),
                 "n_val": len(task.val), "n_val2": len(task.val2), "n_test": len(task.test)},
        "test_se_at_theta": math.sqrt(p * (1 - p) / len(task.test)),
        "base": base, "theta": warm, "theta_v": aux, "learnability": learnable,
        "train_losses": {name: json.loads((Path(path) / "train.json").read_text())["losses"]
                         for name, path in (("theta", scored.theta), ("theta_v", scored.theta_v))},
        "score_means": label_noise.score_means(cols, is_flip),
        "correlations": stage["correlations"],
        "auroc_clean_vs_flipped": stage["auroc_clean_vs_flipped"], "paper": tables.PAPER,
        "noise": noise, "cost": cost,
        "score_table": label_noise.score_columns(scored.table.ids, cols, is_flip),
    }
    partial_path = work / "partial.json"     # results so far (survives a crash or a kill)
    runs: list[dict] = []

    def save_partial(row=None):
        if row is not None:
            say(f"seed {row['seed']} {row['rule']:13s} kept {row['kept']:3d} flips rm "
                f"{row['flips_removed']:.0%}  pref {row['policy_accuracy']:.3f} reward "
                f"{row['accuracy']:.3f} loss {row['mean_loss']:.4f}  "
                f"({row['train_seconds']:.0f}s train, {row['eval_seconds']:.0f}s eval)")
            runs.append(row)
        finish(res, runs, stages, t_all, partial=True)
        partial_path.write_text(json.dumps(res, indent=2, ensure_ascii=False))

    save_partial()
    res["selections"] = stage["selection_summary"]
    cont = Continuation(model, heldout,
                        replace(training, epochs=args.cont_epochs), heldout.pref,
                        work / "continued")
    continue_on_rules(cont, scored.table, task.train, args.rules, args.keep, args.seeds,
                      task.flipped, on_row=save_partial)
    return finish(res, runs, stages, t_all)


def finish(res: dict, runs: list[dict], stages: dict, t_all: float, partial: bool = False):
    from benchmarks.harness.tables import aggregate

    res["runs"] = runs
    res["rules"] = aggregate(runs, RULES)
    res["stages_seconds"] = dict(stages)
    res["stages_seconds"]["continued training (all rules, all seeds)"] = sum(
        r["train_seconds"] for r in runs)
    res["stages_seconds"]["evaluation after continued training"] = sum(
        r["eval_seconds"] for r in runs)
    res["total_seconds"] = time.perf_counter() - t_all
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    res["partial"] = partial
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help="32 train / 8 val / 16 test pairs, 1 seed, proj dim 1024")
    ap.add_argument("--n-train", type=int, default=96)
    ap.add_argument("--n-val", type=int, default=24)
    ap.add_argument("--n-test", type=int, default=48)
    ap.add_argument("--data", choices=("synthetic", "bigbench"), default="synthetic",
                    help="generated task, or BIG-bench multiple-choice pairs "
                         "(benchmarks/bigbench_pairs.py; downloads the 358 MB archive once)")
    ap.add_argument("--bigbench-cache", default=None,
                    help="cache folder of bigbench_pairs (default $GRADPROJ_CACHE or "
                         "~/.cache/gradproj)")
    ap.add_argument("--bigbench-tasks", default=None,
                    help="comma-separated BIG-bench tasks (default: bigbench_pairs' seven), "
                         "e.g. the learnable ones of bench_learnability.py")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--flip", type=float, default=0.25,
                    help="label-noise rate of the main run (downstream rules, cost)")
    ap.add_argument("--noise", type=float, nargs="*", default=[0.10, 0.25, 0.40],
                    help="label-noise rates for the detection table (each its own θ, θ_V, "
                         "store and scores)")
    ap.add_argument("--noise-n-train", type=int, default=None,
                    help="training pairs of the extra --noise rates (default --n-train; the "
                         "--flip run, which the rules train on, always has --n-train)")
    ap.add_argument("--no-cost", dest="cost", action="store_false",
                    help="skip answering the second validation set (store vs LossDiff)")
    ap.add_argument("--keep", type=float, default=0.64)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--task-seed", type=int, default=0,
                    help="seed of the task, the warm-up θ and θ_V (fixed across --seeds)")
    ap.add_argument("--warm-epochs", type=float, default=1.0)
    ap.add_argument("--aux-epochs", type=float, default=1.0)
    ap.add_argument("--cont-epochs", type=float, default=1.0,
                    help="epochs of continued training per rule (the paper uses 2)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--proj-dim", type=int, default=2048)
    ap.add_argument("--max-tokens", type=int, default=None,
                    help="token budget of a forward pass in scoring, the store build and "
                         "evaluation: pairs sorted by length, less padding (results unchanged)")
    ap.add_argument("--rules", nargs="*", default=list(RULES), choices=RULES,
                    help="rules to continue training on (none: scores, correlations and "
                         "selections only)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: on a shared, oversubscribed 2-core "
                         "machine one thread was 2-4x faster than two)")
    ap.add_argument("--replot", metavar="JSON",
                    help="only re-render the table and PNG from a results JSON")
    ap.add_argument("--work", default="/tmp/gradproj-bench-select")
    ap.add_argument("--json", default=str(C.ROOT / "docs" / "benchmarks" / "bench_select.json"))
    ap.add_argument("--png", default=str(C.ROOT / "docs" / "benchmarks" / "bench_select.png"))
    args = ap.parse_args(argv)
    if args.quick:
        args.n_train, args.n_val, args.n_test = 32, 8, 16
        args.seeds, args.proj_dim = [0], 1024
    if args.device == "auto":
        import torch
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.seeds = tuple(args.seeds)

    if args.replot:
        from benchmarks.harness.tables import reaggregate

        res = reaggregate(json.loads(Path(args.replot).read_text()), RULES)
        if Path(args.replot).resolve() != Path(args.json).resolve():
            Path(args.json).write_text(json.dumps(res, indent=2, ensure_ascii=False))
    else:
        with C.quiet(args.threads):
            res = run(args)
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2, ensure_ascii=False))
    print()
    if res["rules"]:
        select_plot(res, Path(args.png))
    print("\n".join(tables.select_report(res, tables.present_rules(res))))
    print(f"wrote {args.json} and {args.png}")


if __name__ == "__main__":
    main()
