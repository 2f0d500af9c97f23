"""Evidence on real human preference data: Anthropic HH-RLHF (harmless-base, test split, shipped in
benchmarks/data/hh-rlhf/, MIT) with the embedded SmolLM2-135M-Instruct.

Design (one setting = one ``--flip`` rate; ``make bench`` runs 0 and 0.25):

1. Data: every pair of the file whose longer row fits ``--max-length`` tokens untruncated (HH
   transcripts are long: truncating would score another text than trl trains on), split once
   (``--split-seed``) into train / val / test; ``--flip`` of the training pairs swapped.
2. Per seed s: warm-up θ from a fresh LoRA whose initialisation is drawn with seed s, trained
   with data order s; θ_V from θ on val; IRM, LossDiff, the store (projection seed s), IF, TIF.
3. Per seed and rule: continue from θ on the rule's ``--keep`` selection (data order s; the
   random rule draws with s) and evaluate on the held-out test pairs (reference log-probs once).

Reported: learnability (base vs θ per seed on the test pairs); per rule held-out reward
accuracy, policy accuracy and DPO loss (mean ± std over seeds) and the seed-paired differences of
every rule against ``all`` and ``random`` with 95 % t intervals; per seed the correlations of
IRM and LossDiff with IF (Pearson with a Fisher interval, Spearman with a bootstrap interval) and
θ's margin distribution on the training pairs; with flips, the AUROC (clean > flipped) per score.

    .venv/bin/python -m benchmarks.bench_hh --flip 0 --json docs/benchmarks/hh_clean.json
    .venv/bin/python -m benchmarks.bench_hh --quick          # 2 seeds, small sizes, minutes
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks import common as C

DATA = C.ROOT / "benchmarks" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
RULES = ("all", "random", "tif", "lossdiff-irm", "reward-gap", "top-if", "lossdiff", "irm")
DEFAULT_RULES = RULES[:5]
QUICK = {"n_train": 32, "n_val": 8, "n_test": 48, "seeds": [0, 1], "proj_dim": 1024}
METRICS = ("accuracy", "policy_accuracy", "mean_loss")
"""Held-out metrics compared between rules (reward accuracy, policy accuracy, DPO loss)."""


def say(msg: str) -> None:
    C.log(f"[{time.strftime('%H:%M:%S')}] {msg}")


def read_records(path: Path) -> list[dict]:
    """The file's records (read and validated by :func:`gradproj.load_pairs`) with an ``id``:
    ``hh-<row>``, the 0-based number of the record in the file."""
    from gradproj.core.data import load_pairs

    return [dict(p.record, id=f"hh-{i}") for i, p in enumerate(load_pairs(path))]


def load_splits(path: Path, tokenizer, pref, n_train: int, n_val: int, n_test: int,
                flip: float, split_seed: int) -> dict:
    """Train / val / test pairs of the rows that fit ``pref.max_length`` untruncated, shuffled
    with ``split_seed``; ``flip`` of train swapped (seed split_seed + 1). Also the share of all
    rows that fit."""
    from gradproj.core.data import pairs_from_records
    from gradproj.evaluation.noise import flip_records

    records = read_records(path)
    pairs = pairs_from_records(records, origin=str(path))
    tok = pref.tokenize(pairs, tokenizer)
    fits = {p.id for p in tok.pairs if not p.truncated} - set(tok.excluded)
    kept = [r for r in records if r["id"] in fits]
    random.Random(split_seed).shuffle(kept)
    need = n_train + n_val + n_test
    if len(kept) < need:
        raise SystemExit(f"{path}: only {len(kept)} pairs fit {pref.max_length} tokens; "
                         f"{need} asked for")
    train, flipped = flip_records(kept[:n_train], flip, split_seed + 1)
    split = {"train": train, "val": kept[n_train:n_train + n_val],
             "test": kept[n_train + n_val:need]}
    return {"pairs": {k: pairs_from_records(v, origin=f"{path.name} {k}") for k, v in
                      split.items()},
            "flipped": frozenset(flipped), "n_rows": len(records), "n_fit": len(kept)}


def with_lora_seed(loaded, seed: int):
    """``loaded`` whose next fresh adapter is initialised with ``seed`` (a copy of its settings;
    the model object is shared)."""
    settings = replace(loaded.settings, lora=replace(loaded.settings.lora, seed=seed))
    return replace(loaded, settings=settings)


def margin_summary(margins) -> dict:
    m = np.asarray(margins, float)
    m = m[np.isfinite(m)]
    q = np.quantile(m, [0.1, 0.25, 0.5, 0.75, 0.9]) if len(m) else [float("nan")] * 5
    return {"share_positive": float((m > 0).mean()) if len(m) else float("nan"),
            "mean": float(m.mean()) if len(m) else float("nan"),
            **{f"q{int(p * 100)}": float(v) for p, v in zip((0.1, 0.25, 0.5, 0.75, 0.9), q)}}


def correlations(table) -> dict:
    """Pearson (Fisher 95 % interval) and Spearman (bootstrap 95 % interval) of IRM and of
    LossDiff with IF, over the pairs where both are finite."""
    from benchmarks.harness.stats import bootstrap_spearman_ci, fisher_ci
    from gradproj.evaluation.stats import pearson, spearman

    out = {}
    f = np.asarray(table["if"], float)
    for name in ("irm", "lossdiff"):
        x = np.asarray(table[name], float)
        ok = np.isfinite(x) & np.isfinite(f)
        r = pearson(x[ok], f[ok])
        out[name] = {"pearson": r, "pearson_ci95": list(fisher_ci(r, int(ok.sum()))),
                     "spearman": spearman(x[ok], f[ok]),
                     "spearman_ci95": list(bootstrap_spearman_ci(x[ok], f[ok])), "n": int(ok.sum())}
    # IF(d) = σ(−h_d) · ⟨∇h_d, −∇L_V⟩ for the DPO loss ℓ = −log σ(h): a weight that falls with the
    # margin h = IRM, times the alignment of d's margin gradient with the validation descent
    # direction. The sign of corr(IRM, IF) is the contest of the two (docs/results.md).
    h = np.asarray(table["irm"], float)
    ok = np.isfinite(h) & np.isfinite(f)
    h, weight = h[ok], 1.0 / (1.0 + np.exp(h[ok]))            # σ(−h)
    align = f[ok] / weight
    half = h >= np.median(h)
    out["decomposition"] = {
        "pearson_irm_alignment": pearson(h, align),
        "spearman_irm_alignment": spearman(h, align),
        "pearson_irm_weight": pearson(h, weight),
        "share_alignment_positive": float((align > 0).mean()),
        "mean_alignment_high_irm": float(align[half].mean()),
        "mean_alignment_low_irm": float(align[~half].mean())}
    return out


def seed_stage(args, loaded, data: dict, heldout, seed: int, work: Path,
               evaluate_theta: bool = True) -> tuple[dict, object]:
    """θ, θ_V, scores, store and IF for one seed; its statistics (θ's held-out metrics when
    ``evaluate_theta``) and the model at θ."""
    from benchmarks.harness.scoring import score_run, score_statistics
    from gradproj.core.model import reattach
    from gradproj.store.build import StoreSettings
    from gradproj.training.train import TrainSettings

    training = TrainSettings(epochs=args.warm_epochs, lr=args.lr, batch_size=args.batch,
                             seed=seed)
    store = StoreSettings(proj_dim=args.proj_dim, batch_size=args.batch, seed=seed)
    scored = score_run(with_lora_seed(loaded, seed), data["pairs"]["train"],
                       data["pairs"]["val"], work, training, store, heldout.pref,
                       aux_epochs=args.aux_epochs, log=lambda m: say(f"seed {seed}: {m}"))
    model = reattach(scored.loaded, scored.theta)
    theta = heldout.evaluate(model).to_dict() if evaluate_theta else None
    table = scored.table
    st = score_statistics(table, data["flipped"])
    is_flip = st["is_flip"]
    row = {"seed": seed, "theta": theta, "correlations": correlations(table),
           "margin_theta": margin_summary(table["irm"]),
           "margin_theta_flipped": margin_summary(table["irm"][is_flip]) if is_flip.any()
           else None,
           "auroc_clean_vs_flipped": st["auroc_clean_vs_flipped"] if is_flip.any() else None,
           "train_losses": json.loads((Path(scored.theta) / "train.json").read_text())["losses"],
           "stages_seconds": scored.seconds, "table": table}
    c = row["correlations"]
    say(f"seed {seed}: " + (f"θ reward acc {theta['accuracy']:.3f}, policy acc "
                             f"{theta['policy_accuracy']:.3f}, loss {theta['mean_loss']:.4f}; "
                             if theta else "") +
        f"Pearson(IRM, IF) {c['irm']['pearson']:+.3f}, Spearman {c['irm']['spearman']:+.3f}")
    return row, model


def paired(runs: list[dict], rules, baselines=("all", "random")) -> dict:
    """rule → baseline → metric → (mean, low, high) of the seed-paired difference."""
    from gradproj.evaluation.stats import paired_difference_ci

    by = {(r["rule"], r["seed"]): r for r in runs}
    out: dict = {}
    for rule in rules:
        for base in baselines:
            seeds = sorted(s for (ru, s) in by if ru == rule and (base, s) in by)
            if rule in baselines[:baselines.index(base) + 1] or not seeds:   # once a pair
                continue
            out.setdefault(rule, {})[base] = {
                k: list(paired_difference_ci([by[rule, s][k] for s in seeds],
                                             [by[base, s][k] for s in seeds]))
                for k in METRICS}
    return out


def summarise(res: dict) -> dict:
    """The JSON's derived parts (rules, paired differences, seed means), from its raw rows."""
    from benchmarks.harness.tables import aggregate
    from gradproj.evaluation.stats import mean_ci

    runs, seeds = res["runs"], res["seeds"]
    res["rules"] = aggregate(runs, RULES)
    res["paired"] = paired(runs, RULES)

    def over_seeds(get):
        return list(mean_ci([get(s) for s in seeds]))

    def correlation_over_seeds(get):
        """Mean and t interval on Fisher's z scale, back in r (stays inside [−1, 1])."""
        z = np.arctanh(np.clip([get(s) for s in seeds], -0.999999, 0.999999))
        return [float(np.tanh(v)) for v in mean_ci(z)]

    with_theta = [s for s in seeds if s.get("theta")]
    res["seed_means"] = {"theta_" + k: list(mean_ci([s["theta"][k] for s in with_theta]))
                         for k in METRICS}
    for name in ("irm", "lossdiff"):
        for k in ("pearson", "spearman"):
            res["seed_means"][f"{k}_{name}_if"] = correlation_over_seeds(
                lambda s, n=name, k=k: s["correlations"][n][k])
    if seeds and seeds[0].get("auroc_clean_vs_flipped"):
        for name in seeds[0]["auroc_clean_vs_flipped"]:
            res["seed_means"][f"auroc_{name}"] = over_seeds(
                lambda s, n=name: s["auroc_clean_vs_flipped"][n])
    return res


MERGE_FREE = ("seeds", "json", "work", "threads", "eval_theta", "merge", "replot")
"""Settings that may differ between the parts of one run (:func:`merge`)."""


def merge(parts: list[dict]) -> dict:
    """One result from runs of the same setting over disjoint seeds (run side by side): seeds
    and runs joined in seed order, the derived parts recomputed; ``seconds`` is the longest
    part's, ``parts`` records each one's seeds and time."""
    first = parts[0]
    same = {k: v for k, v in first["settings"].items() if k not in MERGE_FREE}
    for part in parts[1:]:
        other = {k: v for k, v in part["settings"].items() if k not in MERGE_FREE}
        if other != same or part["data"] != first["data"]:
            raise SystemExit("bench_hh --merge: the parts were run with other settings or data")
    seeds = sorted((s for p in parts for s in p["seeds"]), key=lambda s: s["seed"])
    if len({s["seed"] for s in seeds}) != len(seeds):
        raise SystemExit("bench_hh --merge: a seed is in two parts")
    res = dict(first, seeds=seeds, runs=[r for p in parts for r in p["runs"]],
               seconds=max(p["seconds"] for p in parts),
               partial=any(p.get("partial") for p in parts),
               parts=[{"seeds": [s["seed"] for s in p["seeds"]], "seconds": p["seconds"],
                       "machine": p["machine"]} for p in parts])
    res["settings"] = dict(first["settings"], seeds=[s["seed"] for s in seeds])
    return summarise(res)


def run(args) -> dict:
    from gradproj.core.objectives import PreferenceSettings
    from gradproj.evaluation.runner import Continuation, HeldOut, continue_on_rules
    from gradproj.training.train import TrainSettings

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    info = C.machine_info(packages=("transformers", "trl", "peft"))
    say(C.machine_line(info))
    loaded = C.load_smollm2(max_tokens=args.max_tokens)
    pref = PreferenceSettings(max_length=args.max_length)
    data = load_splits(Path(args.data), loaded.tokenizer, pref, args.n_train, args.n_val,
                       args.n_test, args.flip, args.split_seed)
    n = {k: len(v) for k, v in data["pairs"].items()}
    say(f"{Path(args.data).name}: {data['n_fit']} of {data['n_rows']} pairs fit "
        f"{args.max_length} tokens; train {n['train']} ({len(data['flipped'])} flipped), "
        f"val {n['val']}, test {n['test']}")
    heldout = HeldOut(loaded, data["pairs"]["test"], pref, args.batch)
    base = heldout.evaluate(loaded).to_dict()
    say(f"base: policy acc {base['policy_accuracy']:.3f}, loss {base['mean_loss']:.4f}")
    res = {"settings": {k: v for k, v in vars(args).items() if k not in ("json", "work")},
           "data": {"file": str(Path(args.data).relative_to(C.ROOT))
                    if Path(args.data).resolve().is_relative_to(C.ROOT) else str(args.data),
                    "n_rows": data["n_rows"], "n_fit": data["n_fit"], **n,
                    "n_flipped": len(data["flipped"])},
           "machine": info, "base": base, "seeds": [], "runs": []}

    def save(partial: bool) -> None:
        res["seconds"] = time.perf_counter() - t0
        res["partial"] = partial
        C.write_json(Path(args.json), summarise(res))

    for seed in args.seeds:
        row, model = seed_stage(args, loaded, data, heldout, seed, work / f"seed-{seed}",
                                evaluate_theta=args.eval_theta == "all" or seed == args.seeds[0])
        table = row.pop("table")
        res["seeds"].append(row)
        cont = Continuation(model, heldout, TrainSettings(
            epochs=args.cont_epochs, lr=args.lr, batch_size=args.batch, seed=seed), pref,
            work / f"seed-{seed}" / "continued")

        def on_row(r):
            say(f"seed {r['seed']} {r['rule']:12s} kept {r['kept']:3d}  reward acc "
                f"{r['accuracy']:.3f}  policy acc {r['policy_accuracy']:.3f}  loss "
                f"{r['mean_loss']:.4f}  ({r['train_seconds']:.0f}s + {r['eval_seconds']:.0f}s)")
            res["runs"].append(r)
            save(partial=True)

        continue_on_rules(cont, table, data["pairs"]["train"], args.rules, args.keep, (seed,),
                          data["flipped"], on_row=on_row)
        loaded = cont.loaded
        shutil.rmtree(work / f"seed-{seed}", ignore_errors=True)
    save(partial=False)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(DATA), help="HH-RLHF-layout .jsonl(.gz)")
    ap.add_argument("--flip", type=float, default=0.0, help="share of training pairs swapped")
    ap.add_argument("--n-train", type=int, default=96)
    ap.add_argument("--n-val", type=int, default=32)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--split-seed", type=int, default=0)
    ap.add_argument("--rules", nargs="+", default=list(DEFAULT_RULES), choices=RULES)
    ap.add_argument("--keep", type=float, default=0.64)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--warm-epochs", type=float, default=1.0)
    ap.add_argument("--aux-epochs", type=float, default=1.0)
    ap.add_argument("--cont-epochs", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=2048,
                    help="token budget of a forward pass (length-grouped batches, same results)")
    ap.add_argument("--proj-dim", type=int, default=2048)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true",
                    help=f"small sizes where not given: {QUICK}")
    ap.add_argument("--eval-theta", choices=("all", "first"), default="all",
                    help="evaluate θ on the test pairs at every seed, or at the first only")
    ap.add_argument("--merge", nargs="+", type=Path, default=None, metavar="PART",
                    help="only join these results of disjoint seeds into --json")
    ap.add_argument("--replot", action="store_true",
                    help="only recompute the derived parts of --json from its rows and print it")
    ap.add_argument("--work", default="/tmp/gradproj-bench-hh")
    ap.add_argument("--json", default=str(C.ROOT / "runs" / "bench_hh.json"))
    args = ap.parse_args(argv)
    if args.quick:      # the quick sizes, where not given
        for k, v in QUICK.items():
            if ap.get_default(k) == getattr(args, k):
                setattr(args, k, v)
    if args.merge:
        res = merge([json.loads(p.read_text()) for p in args.merge])
        C.write_json(Path(args.json), res)
    elif args.replot:
        res = summarise(json.loads(Path(args.json).read_text()))
        C.write_json(Path(args.json), res)
    else:
        with C.quiet(args.threads):
            res = run(args)
    from benchmarks.harness.hh import report

    print("\n".join(report(res)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
